//! Node attributes that name another record: `_boot_config` (a boot config), `_preferred_head`
//! (a head of the cluster, alive or not, by name or IP) and `_bmc_pass_ref` (a cluster secret).
//!
//! Setting one that names nothing is refused, unless forced (a boot config or secret may be
//! created afterwards); while one names nothing, node status says so ([`Known::status_problem`]).
//! The records are read from the database by key (this module depends on the schema only, not
//! on the capabilities that write them).

use crate::core::db::Database;
use crate::core::schema::{BOOTCONFIGS, DEFAULT_BOOT_CONFIG, HEADS, HeadRecord, SECRETS};
use crate::registry::{RegistryError, Result};
use clusterware_shared::suggest::did_you_mean;
use std::collections::BTreeSet;

pub const BOOT_CONFIG: &str = "_boot_config";
pub const PREFERRED_HEAD: &str = "_preferred_head";
pub const BMC_PASS_REF: &str = "_bmc_pass_ref";

/// The attributes that name a record.
pub const REFERENCES: [&str; 3] = [BOOT_CONFIG, PREFERRED_HEAD, BMC_PASS_REF];

/// The names the referring attributes can take now (each kind read only when asked for).
#[derive(Debug, Default)]
pub struct Known {
    /// Boot config names, sorted.
    boot_configs: Vec<String>,
    /// The cluster's default boot config.
    default_boot_config: Option<String>,
    /// Head names and addresses, sorted.
    heads: Vec<String>,
    /// Secret names, sorted.
    secrets: Vec<String>,
}

/// The names under `prefix`, sorted (the keys are `prefix<name>`).
async fn names(db: &Database, prefix: &str) -> Result<Vec<String>> {
    let (kvs, _) = db.range(prefix).await?;
    let mut v: Vec<String> = kvs.iter().filter_map(|kv| kv.key.strip_prefix(prefix)).map(str::to_string).collect();
    v.sort();
    Ok(v)
}

impl Known {
    /// Reads what the attributes in `keys` can name (nothing for other keys).
    pub async fn read(db: &Database, keys: &[&str]) -> Result<Known> {
        let mut k = Known::default();
        if keys.contains(&BOOT_CONFIG) {
            k.boot_configs = names(db, BOOTCONFIGS).await?;
            k.default_boot_config =
                db.get(DEFAULT_BOOT_CONFIG).await?.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
        }
        if keys.contains(&PREFERRED_HEAD) {
            let (kvs, _) = db.range(HEADS).await?;
            for kv in &kvs {
                let h: HeadRecord = serde_json::from_slice(&kv.value)
                    .map_err(|e| RegistryError::Corrupt { key: kv.key.clone(), reason: e.to_string() })?;
                k.heads.push(h.name);
                k.heads.push(h.ip.to_string());
            }
            k.heads.sort();
        }
        if keys.contains(&BMC_PASS_REF) {
            k.secrets = names(db, SECRETS).await?;
        }
        Ok(k)
    }

    /// What `key` names, when it is one of [`REFERENCES`]: (the names it may take, what they
    /// are, the command that lists them).
    fn kind(&self, key: &str) -> Option<(&[String], &'static str, &'static str)> {
        match key {
            BOOT_CONFIG => Some((&self.boot_configs, "boot config", "scyld-bootctl ls")),
            PREFERRED_HEAD => Some((&self.heads, "head of the cluster", "scyld-clusterctl heads ls")),
            BMC_PASS_REF => Some((&self.secrets, "secret", "scyld-clusterctl secrets ls")),
            _ => None,
        }
    }

    /// Why `key=value` names nothing, for a refused request (`_boot_config=x names no boot config
    /// (scyld-bootctl ls lists them; did you mean y?)`), or `None` when it names something or
    /// `key` names nothing by design.
    pub fn dangling(&self, key: &str, value: &str) -> Option<String> {
        let (known, what, lister) = self.kind(key)?;
        if known.iter().any(|n| n == value) {
            return None;
        }
        let hint = match did_you_mean(value, known) {
            Some(m) => format!("{lister} lists them; did you mean {m}?"),
            None => format!("{lister} lists them"),
        };
        Some(format!("{key}={value} names no {what} ({hint})"))
    }

    /// What node status says about `key=value` when it names nothing, with what that means for
    /// the node; `_preferred_head` is judged from the cluster view instead (see `agent_channel`).
    pub fn status_problem(&self, key: &str, value: &str) -> Option<String> {
        let near =
            |known: &[String]| did_you_mean(value, known).map(|m| format!(" (did you mean {m}?)")).unwrap_or_default();
        match key {
            BOOT_CONFIG if !self.boot_configs.iter().any(|n| n == value) => {
                let instead = match &self.default_boot_config {
                    Some(d) => format!("cleared, it would boot the cluster default {d}"),
                    None => "the cluster has no default boot config either".to_string(),
                };
                Some(format!(
                    "{key}={value} names no boot config{}: the node boots nothing until it does ({instead})",
                    near(&self.boot_configs)
                ))
            }
            BMC_PASS_REF if !self.secrets.iter().any(|n| n == value) => Some(format!(
                "{key}={value} names no secret{}: power control of the node fails until it does (scyld-clusterctl \
                 secrets set {value})",
                near(&self.secrets)
            )),
            _ => None,
        }
    }
}

/// Refuses attributes that name nothing (all of them in one message), unless `force`.
pub async fn check(db: &Database, attrs: &[(&str, &str)], force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let wanted: BTreeSet<(&str, &str)> = attrs.iter().copied().filter(|(k, _)| REFERENCES.contains(k)).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = wanted.iter().map(|(k, _)| *k).collect::<BTreeSet<_>>().into_iter().collect();
    let known = Known::read(db, &keys).await?;
    let wrong: Vec<String> = wanted.iter().filter_map(|(k, v)| known.dangling(k, v)).collect();
    match wrong.len() {
        0 => Ok(()),
        1 => Err(RegistryError::Invalid(format!("{}; give --force to set it anyway", wrong[0]))),
        _ => Err(RegistryError::Invalid(format!("{}; give --force to set them anyway", wrong.join("; ")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;
    use crate::core::schema;

    #[tokio::test]
    async fn names_are_checked_with_suggestions() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let h = HeadRecord::for_test("head1", 7);
        db.put(&schema::head("head1"), serde_json::to_vec(&h).unwrap()).await.unwrap();
        db.put(&schema::bootconfig("xyzBoot"), b"{}".to_vec()).await.unwrap();
        db.put(&schema::secret("ipmi"), b"{}".to_vec()).await.unwrap();
        let ok = [(BOOT_CONFIG, "xyzBoot"), (PREFERRED_HEAD, "head1"), (PREFERRED_HEAD, "10.0.0.7"), ("rack", "9")];
        check(&db, &ok, false).await.unwrap();
        let e = check(&db, &[(BOOT_CONFIG, "noSuchBoot")], false).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "_boot_config=noSuchBoot names no boot config (scyld-bootctl ls lists them); give --force to set it anyway"
        );
        assert!(matches!(e, RegistryError::Invalid(_)));
        let e = check(&db, &[(BOOT_CONFIG, "xyzbot"), (PREFERRED_HEAD, "head9"), (BMC_PASS_REF, "ipmj")], false)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "_bmc_pass_ref=ipmj names no secret (scyld-clusterctl secrets ls lists them; did you mean ipmi?); \
             _boot_config=xyzbot names no boot config (scyld-bootctl ls lists them; did you mean xyzBoot?); \
             _preferred_head=head9 names no head of the cluster (scyld-clusterctl heads ls lists them; did you mean \
             head1?); give --force to set them anyway"
        );
        check(&db, &[(BOOT_CONFIG, "noSuchBoot")], true).await.unwrap();

        let k = Known::read(&db, &[BOOT_CONFIG, BMC_PASS_REF]).await.unwrap();
        assert_eq!(
            k.status_problem(BOOT_CONFIG, "xyzBot").unwrap(),
            "_boot_config=xyzBot names no boot config (did you mean xyzBoot?): the node boots nothing until it does \
             (the cluster has no default boot config either)"
        );
        assert_eq!(k.status_problem(BOOT_CONFIG, "xyzBoot"), None);
        assert_eq!(
            k.status_problem(BMC_PASS_REF, "bmc").unwrap(),
            "_bmc_pass_ref=bmc names no secret: power control of the node fails until it does (scyld-clusterctl \
             secrets set bmc)"
        );
        db.put(DEFAULT_BOOT_CONFIG, b"xyzBoot".to_vec()).await.unwrap();
        let k = Known::read(&db, &[BOOT_CONFIG]).await.unwrap();
        assert!(
            k.status_problem(BOOT_CONFIG, "gone")
                .unwrap()
                .ends_with("(cleared, it would boot the cluster default xyzBoot)")
        );
    }
}
