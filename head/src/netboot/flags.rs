//! Which boot configs want UEFI Secure Boot, and which config is the cluster's default, in
//! memory: DHCP decides between iPXE and shim per packet without a database round trip. Kept
//! current by following `bootconfigs/` and the default-config setting, like the node cache.

use crate::core::db::{Database, KeyValue};
use crate::core::follow::{Change, follow};
use crate::core::schema::{BOOTCONFIGS, DEFAULT_BOOT_CONFIG};
use crate::core::supervisor::{Stage, Supervisor};
use clusterware_shared::api::Node;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The part of a boot config record DHCP needs.
#[derive(serde::Deserialize)]
struct Flag {
    #[serde(default)]
    secure_boot: bool,
}

#[derive(Default)]
struct State {
    /// Boot config name → `secure_boot`.
    configs: HashMap<String, bool>,
    /// The cluster's default boot config.
    default: Option<String>,
}

/// Boot config name → `secure_boot`, and the default config's name.
#[derive(Default)]
pub struct BootFlags {
    state: RwLock<State>,
}

impl BootFlags {
    /// Starts following the boot configs and the default-config setting.
    pub fn spawn(db: Database, sup: &Supervisor) -> Arc<BootFlags> {
        let me = Arc::new(BootFlags::default());
        let (m, d) = (me.clone(), db.clone());
        sup.spawn(Stage::Views, "boot config flags", move |stop| {
            follow(
                d,
                BOOTCONFIGS,
                move |c| {
                    let flag = |kv: &KeyValue| serde_json::from_slice::<Flag>(&kv.value).is_ok_and(|f| f.secure_boot);
                    let mut s = m.state.write().unwrap_or_else(|p| p.into_inner());
                    match c {
                        Change::Reset(kvs) => s.configs = kvs.iter().map(|kv| (kv.key.clone(), flag(kv))).collect(),
                        Change::Put(kv) => {
                            let f = flag(&kv);
                            s.configs.insert(kv.key, f);
                        }
                        Change::Delete(k) => {
                            s.configs.remove(&k);
                        }
                    }
                },
                stop,
            )
        });
        let m = me.clone();
        sup.spawn(Stage::Views, "default boot config", move |stop| {
            follow(
                db,
                DEFAULT_BOOT_CONFIG,
                move |c| {
                    let mut s = m.state.write().unwrap_or_else(|p| p.into_inner());
                    let name = |kv: &KeyValue| String::from_utf8_lossy(&kv.value).into_owned();
                    match c {
                        Change::Reset(kvs) => s.default = kvs.iter().find(|kv| kv.key.is_empty()).map(name),
                        Change::Put(kv) if kv.key.is_empty() => s.default = Some(name(&kv)),
                        Change::Delete(k) if k.is_empty() => s.default = None,
                        _ => {}
                    }
                },
                stop,
            )
        });
        me
    }

    /// Fixed flags, never updated (unit tests).
    pub fn fixed(configs: &[(&str, bool)], default: Option<&str>) -> BootFlags {
        BootFlags {
            state: RwLock::new(State {
                configs: configs.iter().map(|(n, f)| (n.to_string(), *f)).collect(),
                default: default.map(str::to_string),
            }),
        }
    }

    /// Whether `node` boots with Secure Boot: its effective boot config (`_boot_config`, else
    /// the cluster's default) exists and has `secure_boot`.
    pub fn secure_boot(&self, node: &Node) -> bool {
        let s = self.state.read().unwrap_or_else(|p| p.into_inner());
        let name = node.attributes.get("_boot_config").or(s.default.as_ref());
        name.and_then(|n| s.configs.get(n)).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;
    use std::time::Duration;

    fn node(cfg: Option<&str>) -> Node {
        Node {
            uid: "u".into(),
            index: 0,
            name: "n0".into(),
            macs: vec![],
            ip: "10.0.0.5".parse().unwrap(),
            attributes: cfg.map(|c| ("_boot_config".to_string(), c.to_string())).into_iter().collect(),
            created: 0,
        }
    }

    /// The flags follow the database: configs put and deleted, the default set and cleared.
    #[tokio::test]
    async fn follows_the_database() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        db.put("bootconfigs/plain", br#"{"secure_boot":false}"#.to_vec()).await.unwrap();
        let sup = Supervisor::new();
        let f = BootFlags::spawn(db.clone(), &sup);
        let until = async |want: bool, n: &Node| {
            for _ in 0..500 {
                if f.secure_boot(n) == want {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("secure_boot never became {want}");
        };
        db.put("bootconfigs/sb", br#"{"name":"sb","secure_boot":true}"#.to_vec()).await.unwrap();
        until(true, &node(Some("sb"))).await;
        assert!(!f.secure_boot(&node(Some("plain"))));
        assert!(!f.secure_boot(&node(None)), "no default yet");
        db.put(DEFAULT_BOOT_CONFIG, b"sb".to_vec()).await.unwrap();
        until(true, &node(None)).await;
        assert!(!f.secure_boot(&node(Some("plain"))), "_boot_config wins over the default");
        db.delete(DEFAULT_BOOT_CONFIG).await.unwrap();
        until(false, &node(None)).await;
        db.delete("bootconfigs/sb").await.unwrap();
        until(false, &node(Some("sb"))).await;
    }
}
