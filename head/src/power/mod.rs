//! Power control through each node's BMC, for every node in parallel, at most
//! `power.concurrency` at a time, each under its own deadline, one result per node. Two drivers:
//! IPMI over LAN through `ipmitool` (`ipmi.rs`) and Redfish over HTTPS (`redfish.rs`), chosen by
//! the node's `_bmc_type` (or an `https://` `_bmc_addr`); without either, a quick probe of
//! `https://ADDR/redfish/v1` picks Redfish when a Redfish service with a trusted certificate
//! answers, IPMI otherwise. One request may mix both. The password never goes on a command line
//! (which any user can read in /proc), into a message or into a log line.
//!
//! Cluster secrets (`secrets/<name>`) hold passwords that many nodes share
//! (`_bmc_pass_ref=<name>`); they are never listed with their values.

mod ipmi;
mod redfish;
pub mod routes;

use crate::core::db::{Database, DbError, Txn, TxnOp};
use crate::core::schema;
use crate::core::schema::{SECRETS, SecretRecord};
use clusterware_shared::api::Node;
use clusterware_shared::power::{
    BmcAddr, BmcType, BootDevice, NodePower, PowerAction, PowerOutcome, PowerRequest, SecretInfo, parse_fingerprint,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

/// See [`RecordError`](crate::core::error::RecordError).
pub type SecretError = crate::core::error::RecordError;

fn check_name(name: &str) -> Result<(), SecretError> {
    clusterware_shared::ids::validate_attr_key(name).map_err(|e| SecretError::Invalid(format!("secret name: {e}")))
}

/// Sets (or replaces) a secret.
pub async fn set_secret(db: &Database, name: &str, value: &str) -> Result<SecretInfo, SecretError> {
    check_name(name)?;
    if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
        return Err(SecretError::Invalid("a secret is 1 to 256 characters, no control characters".into()));
    }
    let rec = SecretRecord { name: name.to_string(), value: value.to_string(), set: crate::core::unix_now() };
    db.put(&schema::secret(name), serde_json::to_vec(&rec).expect("secrets serialise")).await?;
    Ok(SecretInfo { name: rec.name, set: rec.set })
}

/// Every secret's name and when it was set.
pub async fn list_secrets(db: &Database) -> Result<Vec<SecretInfo>, SecretError> {
    let (kvs, _) = db.range(SECRETS).await?;
    Ok(kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<SecretRecord>(&kv.value).ok())
        .map(|r| SecretInfo { name: r.name, set: r.set })
        .collect())
}

pub async fn remove_secret(db: &Database, name: &str) -> Result<SecretInfo, SecretError> {
    check_name(name)?;
    let k = schema::secret(name);
    let r = db.txn(Txn::new().and_then([TxnOp::get(k.clone()), TxnOp::delete(k)])).await?;
    let rec = match r.results.first() {
        Some(crate::core::db::OpResult::Got(kvs)) => {
            kvs.first().and_then(|kv| serde_json::from_slice::<SecretRecord>(&kv.value).ok())
        }
        _ => None,
    };
    let rec = rec.ok_or_else(|| SecretError::NotFound(format!("no secret named {name:?}")))?;
    Ok(SecretInfo { name: rec.name, set: rec.set })
}

/// What one request asks of each node's BMC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub action: PowerAction,
    /// Graceful: `off` as a shutdown the operating system carries out, `reset` as a restart.
    pub soft: bool,
    /// The next boot's device, set first (once).
    pub boot: Option<BootDevice>,
}

/// Where a node's BMC is and who to log in as, whatever its type. Never shown: it holds the
/// password.
struct Login {
    addr: BmcAddr,
    user: String,
    pass: String,
}

/// The node's BMC address and credentials, or why they are incomplete. Never includes the
/// password.
fn login_of(node: &Node, secrets: &HashMap<String, String>) -> Result<Login, String> {
    let a = &node.attributes;
    let addr =
        a.get("_bmc_addr").ok_or("no BMC address: set _bmc_addr=HOST[:PORT] (https://HOST[:PORT] for Redfish)")?;
    let addr = BmcAddr::parse(addr).map_err(|e| format!("_bmc_addr: {e}"))?;
    let user = a.get("_bmc_user").ok_or("no BMC user: set _bmc_user")?.clone();
    let pass = match (a.get("_bmc_pass"), a.get("_bmc_pass_ref")) {
        (Some(p), _) => p.clone(),
        (None, Some(r)) => secrets.get(r).cloned().ok_or_else(|| format!("_bmc_pass_ref names no secret {r:?}"))?,
        (None, None) => return Err("no BMC password: set _bmc_pass or _bmc_pass_ref".into()),
    };
    Ok(Login { addr, user, pass })
}

/// What a driver made of one node.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok { power: Option<String>, message: String },
    Failed(String),
    Timeout(String),
}

/// Checks a power request on its own (before any node is looked up).
pub fn check(req: &PowerRequest) -> Result<(), String> {
    if req.nodes.is_empty() {
        return Err("no nodes selected".into());
    }
    if !(1..=600).contains(&req.timeout_secs) {
        return Err(format!("timeout {} s is not from 1 to 600", req.timeout_secs));
    }
    if req.soft && !matches!(req.action, PowerAction::Off | PowerAction::Reset) {
        return Err("--soft applies to `off` and `reset` only".into());
    }
    if req.boot.is_some() && matches!(req.action, PowerAction::Status | PowerAction::Off) {
        return Err("a boot device applies to on, cycle and reset".into());
    }
    Ok(())
}

/// The action as the command line says it, for the log (`cycle --pxe`, `off --soft`).
pub fn describe(req: &PowerRequest) -> String {
    let mut s = req.action.name().to_string();
    if req.soft {
        s.push_str(" --soft");
    }
    if let Some(dev) = req.boot {
        s.push(' ');
        s.push_str(dev.flag());
    }
    s
}

/// Settings for power commands.
#[derive(Debug, Clone)]
pub struct PowerSettings {
    pub ipmitool: PathBuf,
    pub concurrency: usize,
    /// The CA Redfish BMCs' certificates are checked against (`power.redfish_ca`).
    pub redfish_ca: Option<PathBuf>,
}

/// The longest a probe for a Redfish service may take of a node's deadline.
const PROBE_MAX: Duration = Duration::from_secs(2);

async fn one(
    settings: &PowerSettings,
    trust: &redfish::Trust,
    node: &Node,
    secrets: &HashMap<String, String>,
    ask: Ask,
    limit: Duration,
) -> NodePower {
    let mut res = NodePower {
        uid: node.uid.clone(),
        name: node.name.clone(),
        outcome: PowerOutcome::Failed,
        power: None,
        message: String::new(),
    };
    let deadline = tokio::time::Instant::now() + limit;
    let login = match login_of(node, secrets) {
        Ok(l) => l,
        Err(m) => {
            res.message = m;
            return res;
        }
    };
    let outcome = drive(settings, trust, node, &login, ask, deadline, limit).await;
    let scrub = |m: String| if login.pass.is_empty() { m } else { m.replace(&login.pass, "********") };
    match outcome {
        Outcome::Ok { power, message } => {
            res.outcome = PowerOutcome::Ok;
            res.power = power;
            res.message = scrub(message);
        }
        Outcome::Failed(m) => res.message = scrub(m),
        Outcome::Timeout(m) => {
            res.outcome = PowerOutcome::Timeout;
            res.message = scrub(m);
        }
    }
    res
}

/// Picks the node's driver and runs it.
async fn drive(
    settings: &PowerSettings,
    trust: &redfish::Trust,
    node: &Node,
    login: &Login,
    ask: Ask,
    deadline: tokio::time::Instant,
    limit: Duration,
) -> Outcome {
    let a = &node.attributes;
    let pin = match a.get("_bmc_tls_fingerprint").map(|v| parse_fingerprint(v)) {
        None => None,
        Some(Ok(fp)) => Some(fp),
        Some(Err(e)) => return Outcome::Failed(format!("_bmc_tls_fingerprint: {e}")),
    };
    let target = || redfish::Target {
        host: login.addr.host.clone(),
        port: login.addr.port_or(BmcType::Redfish),
        user: login.user.clone(),
        pass: login.pass.clone(),
        pin,
        system: a.get("_bmc_system").cloned(),
    };
    let (kind, hint) = match a.get("_bmc_type").map(|t| BmcType::parse(t)) {
        Some(Ok(t)) => (t, None),
        Some(Err(e)) => return Outcome::Failed(format!("_bmc_type: {e}")),
        None if login.addr.https => (BmcType::Redfish, None),
        None => {
            let within = PROBE_MAX.min(limit / 4);
            match redfish::probe(trust, &target(), within).await {
                redfish::Probe::Redfish => (BmcType::Redfish, None),
                redfish::Probe::NotRedfish => (BmcType::Ipmi, None),
                redfish::Probe::Untrusted(fp) => (BmcType::Ipmi, Some(fp)),
            }
        }
    };
    match kind {
        BmcType::Redfish => redfish::run(trust, &target(), ask, deadline, limit).await,
        BmcType::Ipmi => {
            let bmc = match ipmi::bmc_of(login, a) {
                Ok(b) => b,
                Err(m) => return Outcome::Failed(m),
            };
            match (ipmi::run(&settings.ipmitool, &bmc, ask, deadline, limit).await, hint) {
                (Outcome::Failed(m), Some(fp)) => Outcome::Failed(format!(
                    "{m} (an HTTPS service at {}:{} has a certificate this head does not trust, SHA-256 {fp}: if it \
                     is a Redfish BMC, set _bmc_type=redfish and give power.redfish_ca, or pin it with \
                     _bmc_tls_fingerprint={fp})",
                    login.addr.host,
                    login.addr.port_or(BmcType::Redfish)
                )),
                (o, _) => o,
            }
        }
    }
}

/// Runs `ask` on every node, in parallel (bounded), each within `limit`.
pub async fn run(
    db: &Database,
    settings: &PowerSettings,
    nodes: Vec<Arc<Node>>,
    ask: Ask,
    limit: Duration,
) -> Result<Vec<NodePower>, DbError> {
    let secrets: HashMap<String, String> = if nodes.iter().any(|n| n.attributes.contains_key("_bmc_pass_ref")) {
        let (kvs, _) = db.range(SECRETS).await?;
        kvs.iter()
            .filter_map(|kv| serde_json::from_slice::<SecretRecord>(&kv.value).ok())
            .map(|r| (r.name, r.value))
            .collect()
    } else {
        HashMap::new()
    };
    let secrets = Arc::new(secrets);
    // Read for every request, so that a new CA file is used without a restart.
    let trust = Arc::new(redfish::Trust::load(settings.redfish_ca.as_deref()));
    let sem = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(nodes.len());
    for n in nodes {
        let (sem, secrets, settings, trust) = (sem.clone(), secrets.clone(), settings.clone(), trust.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            one(&settings, &trust, &n, &secrets, ask, limit).await
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(r) => out.push(r),
            Err(e) => tracing::error!(error = %e, "power task failed"),
        }
    }
    Ok(out)
}

impl PowerSettings {
    /// The `power.*` section of the configuration.
    pub fn from_config(cfg: &clusterware_shared::config::Config) -> PowerSettings {
        PowerSettings {
            ipmitool: cfg.ipmitool.clone(),
            concurrency: cfg.power_concurrency,
            redfish_ca: cfg.redfish_ca.clone(),
        }
    }
}

/// Starts power control: its routes (it keeps no task). A `power.redfish_ca` that cannot be
/// used is said in the log now (and in every Redfish node's result that needs it).
pub fn start(ctx: &crate::core::Ctx, hub: &Arc<crate::agent_channel::Hub>) {
    let power = PowerSettings::from_config(ctx.config);
    if let Some(path) = &power.redfish_ca {
        match redfish::Trust::load(Some(path)).problem() {
            Some(why) => {
                tracing::warn!(%why, "power.redfish_ca cannot be used: Redfish BMCs need _bmc_tls_fingerprint")
            }
            None => {
                tracing::info!(ca = %path.display(), "Redfish BMC certificates are checked against power.redfish_ca")
            }
        }
    }
    ctx.serve(routes::routes(Arc::new(routes::Api { db: ctx.db.clone(), hub: hub.clone(), power })));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::http::HasKind;
    use clusterware_shared::api::ErrorKind;

    fn node(attrs: &[(&str, &str)]) -> Node {
        Node {
            uid: "u".into(),
            index: 0,
            name: "n0".into(),
            macs: vec![],
            ip: "10.0.0.5".parse().unwrap(),
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created: 0,
        }
    }

    #[test]
    fn incomplete_bmc_settings_say_what_to_set() {
        let none = HashMap::new();
        let cases: [(&[(&str, &str)], &str); 5] = [
            (&[], "set _bmc_addr"),
            (&[("_bmc_addr", "10.1.0.1")], "set _bmc_user"),
            (&[("_bmc_addr", "10.1.0.1"), ("_bmc_user", "admin")], "set _bmc_pass or _bmc_pass_ref"),
            (
                &[("_bmc_addr", "10.1.0.1"), ("_bmc_user", "admin"), ("_bmc_pass_ref", "ipmi")],
                "names no secret \"ipmi\"",
            ),
            (&[("_bmc_addr", "http://10.1.0.1"), ("_bmc_user", "admin"), ("_bmc_pass", "pw")], "plain http"),
        ];
        for (attrs, want) in cases {
            let e = login_of(&node(attrs), &none).err().unwrap_or_else(|| panic!("{attrs:?} accepted"));
            assert!(e.contains(want), "{attrs:?}: {e}");
        }
        let secrets = HashMap::from([("ipmi".to_string(), "s3cret".to_string())]);
        let l = login_of(
            &node(&[("_bmc_addr", "https://10.1.0.1:8443"), ("_bmc_user", "admin"), ("_bmc_pass_ref", "ipmi")]),
            &secrets,
        )
        .unwrap();
        assert_eq!(
            (l.addr.host.as_str(), l.addr.port, l.addr.https, l.pass.as_str()),
            ("10.1.0.1", Some(8443), true, "s3cret")
        );
    }

    /// Attributes that pick or configure a driver, checked before anything is sent.
    #[tokio::test]
    async fn bad_driver_attributes_fail_the_node_alone() {
        let settings = PowerSettings { ipmitool: "/nonexistent/ipmitool".into(), concurrency: 4, redfish_ca: None };
        let trust = redfish::Trust::load(None);
        let base = [("_bmc_addr", "127.0.0.1:9"), ("_bmc_user", "admin"), ("_bmc_pass", "s3cret-pw")];
        let ask = Ask { action: PowerAction::Status, soft: false, boot: None };
        for (extra, want) in [
            (("_bmc_type", "ssh"), "_bmc_type: \"ssh\" is not `redfish` or `ipmi`"),
            (("_bmc_tls_fingerprint", "abc"), "_bmc_tls_fingerprint: expected"),
            (("_bmc_type", "ipmi"), "cannot run /nonexistent/ipmitool"),
        ] {
            let mut attrs = base.to_vec();
            attrs.push(extra);
            let r = one(&settings, &trust, &node(&attrs), &HashMap::new(), ask, Duration::from_secs(2)).await;
            assert_eq!(r.outcome, PowerOutcome::Failed, "{r:?}");
            assert!(r.message.contains(want), "{extra:?}: {}", r.message);
        }
        // No _bmc_type: nothing answers HTTPS there, so IPMI.
        let r = one(&settings, &trust, &node(&base), &HashMap::new(), ask, Duration::from_secs(2)).await;
        assert!(r.message.contains("cannot run /nonexistent/ipmitool"), "{r:?}");
        // A password the BMC echoes is never shown.
        let mut attrs = base.to_vec();
        attrs.push(("_bmc_type", "ipmi"));
        attrs[2] = ("_bmc_pass", "ipmitool");
        let r = one(&settings, &trust, &node(&attrs), &HashMap::new(), ask, Duration::from_secs(2)).await;
        assert!(!r.message.contains("ipmitool") && r.message.contains("********"), "{r:?}");
    }

    #[test]
    fn requests_are_checked_before_any_node_is_touched() {
        let req = |action, soft, boot, nodes: usize, timeout_secs| PowerRequest {
            nodes: (0..nodes).map(|i| format!("u{i}")).collect(),
            action,
            soft,
            boot,
            timeout_secs,
        };
        assert!(check(&req(PowerAction::Cycle, false, Some(BootDevice::Pxe), 1, 30)).is_ok());
        assert!(check(&req(PowerAction::Reset, true, Some(BootDevice::UefiHttp), 1, 30)).is_ok());
        assert_eq!(describe(&req(PowerAction::Cycle, false, Some(BootDevice::Pxe), 1, 30)), "cycle --pxe");
        assert_eq!(describe(&req(PowerAction::Off, true, None, 1, 30)), "off --soft");
        assert_eq!(
            describe(&req(PowerAction::Reset, true, Some(BootDevice::UefiHttp), 1, 30)),
            "reset --soft --uefi-http"
        );
        for (r, want) in [
            (req(PowerAction::Status, false, None, 0, 30), "no nodes selected"),
            (req(PowerAction::Status, false, None, 1, 0), "not from 1 to 600"),
            (req(PowerAction::Status, false, None, 1, 601), "not from 1 to 600"),
            (req(PowerAction::On, true, None, 1, 30), "--soft applies to `off` and `reset` only"),
            (req(PowerAction::Cycle, true, None, 1, 30), "--soft applies to `off` and `reset` only"),
            (req(PowerAction::Off, false, Some(BootDevice::Disk), 1, 30), "a boot device applies"),
            (req(PowerAction::Status, false, Some(BootDevice::Pxe), 1, 30), "a boot device applies"),
        ] {
            let e = check(&r).unwrap_err();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn secret_errors_map_to_their_kinds() {
        assert_eq!(SecretError::Invalid("x".into()).kind(), ErrorKind::BadRequest);
        assert_eq!(SecretError::NotFound("x".into()).kind(), ErrorKind::NotFound);
        assert_eq!(SecretError::Db(crate::core::db::DbError::Closed).kind(), ErrorKind::Unavailable);
    }
}
