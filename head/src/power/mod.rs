//! Power control through each node's BMC, by running `ipmitool` (IPMI over LAN, `lanplus` by
//! default) for every node in parallel, at most `power.concurrency` at a time, each under its
//! own deadline. The password goes to ipmitool in its environment (`-E`), never on a command
//! line (which any user can read in /proc), and never into a message or a log line.
//!
//! Cluster secrets (`secrets/<name>`) hold passwords that many nodes share
//! (`_bmc_pass_ref=<name>`); they are never listed with their values.

pub mod routes;

use crate::core::db::{Database, DbError, Txn, TxnOp};
use crate::core::schema;
use crate::core::schema::{SECRETS, SecretRecord};
use clusterware_shared::api::Node;
use clusterware_shared::power::{
    BootDevice, NodePower, PowerAction, PowerOutcome, PowerRequest, SecretInfo, parse_bmc_addr,
};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
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
    db.put(&schema::secret(&name), serde_json::to_vec(&rec).expect("secrets serialise")).await?;
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
    let k = schema::secret(&name);
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

/// How to reach one node's BMC.
struct Bmc {
    host: String,
    port: u16,
    user: String,
    pass: String,
    interface: &'static str,
    cipher: String,
}

/// The node's BMC settings, or why they are incomplete. Never includes the password.
fn bmc_of(node: &Node, secrets: &HashMap<String, String>) -> Result<Bmc, String> {
    let a = &node.attributes;
    let addr = a.get("_bmc_addr").ok_or("no BMC address: set _bmc_addr=HOST[:PORT]")?;
    let (host, port) = parse_bmc_addr(addr).map_err(|e| format!("_bmc_addr: {e}"))?;
    let user = a.get("_bmc_user").ok_or("no BMC user: set _bmc_user")?.clone();
    let pass = match (a.get("_bmc_pass"), a.get("_bmc_pass_ref")) {
        (Some(p), _) => p.clone(),
        (None, Some(r)) => secrets.get(r).cloned().ok_or_else(|| format!("_bmc_pass_ref names no secret {r:?}"))?,
        (None, None) => return Err("no BMC password: set _bmc_pass or _bmc_pass_ref".into()),
    };
    let interface = match a.get("_bmc_protocol").map(String::as_str) {
        None | Some("lanplus") => "lanplus",
        Some("lan") => "lan",
        Some(other) => return Err(format!("_bmc_protocol {other:?} is not lanplus or lan")),
    };
    let cipher = a.get("_bmc_cipher").cloned().unwrap_or_else(|| "3".into());
    if cipher.parse::<u8>().map_or(true, |c| c > 17) {
        return Err(format!("_bmc_cipher {cipher:?} is not a cipher suite number"));
    }
    Ok(Bmc { host, port, user, pass, interface, cipher })
}

/// What one ipmitool run printed, or why it did not finish.
enum Run {
    Done { ok: bool, stdout: String, stderr: String },
    TimedOut,
    NotStarted(String),
}

async fn ipmitool(program: &PathBuf, bmc: &Bmc, args: &[&str], limit: Duration) -> Run {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg("-I")
        .arg(bmc.interface)
        .arg("-H")
        .arg(&bmc.host)
        .arg("-p")
        .arg(bmc.port.to_string())
        .arg("-U")
        .arg(&bmc.user)
        .arg("-E")
        // Verbose: the only way ipmitool tells a wrong password from an unreachable BMC.
        .arg("-v")
        // One second per try, two retries: the deadline below bounds the whole run anyway.
        .arg("-N")
        .arg("1")
        .arg("-R")
        .arg("2");
    if bmc.interface == "lanplus" {
        cmd.arg("-C").arg(&bmc.cipher);
    }
    cmd.args(args)
        .env("IPMI_PASSWORD", &bmc.pass)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Run::NotStarted(format!("cannot run {}: {e}", program.display())),
    };
    let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
    let work = async {
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let ro = async {
            if let Some(s) = out.as_mut() {
                let _ = s.take(64 << 10).read_to_end(&mut o).await;
            }
        };
        let re = async {
            if let Some(s) = err.as_mut() {
                let _ = s.take(64 << 10).read_to_end(&mut e).await;
            }
        };
        tokio::join!(ro, re);
        let status = child.wait().await;
        (status.map(|s| s.success()).unwrap_or(false), o, e)
    };
    match tokio::time::timeout(limit, work).await {
        Ok((ok, o, e)) => Run::Done {
            ok,
            stdout: String::from_utf8_lossy(&o).into_owned(),
            stderr: String::from_utf8_lossy(&e).into_owned(),
        },
        Err(_) => Run::TimedOut,
    }
}

/// Why ipmitool failed, in words an administrator can act on; never contains the password.
fn reason(stderr: &str, stdout: &str, bmc: &Bmc) -> String {
    let known = if stderr.contains("RAKP 2 HMAC is invalid") {
        Some("the BMC refused the password".to_string())
    } else if stderr.contains("unauthorized name") {
        Some(format!("the BMC does not know user {:?}", bmc.user))
    } else if stderr.contains("Insufficient privilege") || stderr.contains("insufficient privilege") {
        Some(format!("user {:?} may not control power on this BMC", bmc.user))
    } else if stderr.contains("Unable to establish") {
        Some(format!(
            "no IPMI session with the BMC at {}:{} (unreachable, not an IPMI {} BMC, or cipher suite {} refused)",
            bmc.host,
            bmc.port,
            if bmc.interface == "lanplus" { "2.0" } else { "1.5" },
            bmc.cipher
        ))
    } else {
        None
    };
    let line = known.unwrap_or_else(|| {
        stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('>') && !l.starts_with("Loading") && !l.starts_with("Running"))
            .last()
            .unwrap_or("ipmitool failed without a message")
            .to_string()
    });
    let line: String = line.chars().filter(|c| !c.is_control()).take(300).collect();
    if bmc.pass.is_empty() { line } else { line.replace(&bmc.pass, "********") }
}

/// Checks a power request on its own (before any node is looked up).
pub fn check(req: &PowerRequest) -> Result<(), String> {
    if req.nodes.is_empty() {
        return Err("no nodes selected".into());
    }
    if !(1..=600).contains(&req.timeout_secs) {
        return Err(format!("timeout {} s is not from 1 to 600", req.timeout_secs));
    }
    if req.soft && req.action != PowerAction::Off {
        return Err("--soft applies to `off` only".into());
    }
    if req.boot.is_some() && matches!(req.action, PowerAction::Status | PowerAction::Off) {
        return Err("a boot device applies to on, cycle and reset".into());
    }
    Ok(())
}

/// The action as the command line says it, for the log (`cycle --pxe`, `off --soft`).
pub fn describe(req: &PowerRequest) -> String {
    match (req.action, req.soft, req.boot) {
        (a, true, _) => format!("{} --soft", a.name()),
        (a, _, Some(BootDevice::Pxe)) => format!("{} --pxe", a.name()),
        (a, _, Some(BootDevice::Disk)) => format!("{} --disk", a.name()),
        (a, _, None) => a.name().to_string(),
    }
}

/// Settings for power commands.
#[derive(Debug, Clone)]
pub struct PowerSettings {
    pub ipmitool: PathBuf,
    pub concurrency: usize,
}

async fn one(
    settings: &PowerSettings,
    node: &Node,
    secrets: &HashMap<String, String>,
    action: PowerAction,
    soft: bool,
    boot: Option<BootDevice>,
    limit: Duration,
) -> NodePower {
    let mut res = NodePower {
        uid: node.uid.clone(),
        name: node.name.clone(),
        outcome: PowerOutcome::Failed,
        power: None,
        message: String::new(),
    };
    let bmc = match bmc_of(node, secrets) {
        Ok(b) => b,
        Err(m) => {
            res.message = m;
            return res;
        }
    };
    let deadline = tokio::time::Instant::now() + limit;
    let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
    let timed_out = |res: &mut NodePower| {
        res.outcome = PowerOutcome::Timeout;
        res.message = format!("no answer from the BMC at {}:{} within {} s", bmc.host, bmc.port, limit.as_secs());
    };
    if let Some(dev) = boot {
        let d = match dev {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
        };
        match ipmitool(&settings.ipmitool, &bmc, &["chassis", "bootdev", d], left()).await {
            Run::Done { ok: true, .. } => {}
            Run::Done { stdout, stderr, .. } => {
                res.message = format!("setting the boot device: {}", reason(&stderr, &stdout, &bmc));
                return res;
            }
            Run::TimedOut => {
                timed_out(&mut res);
                return res;
            }
            Run::NotStarted(m) => {
                res.message = m;
                return res;
            }
        }
    }
    let verb = match (action, soft) {
        (PowerAction::Status, _) => "status",
        (PowerAction::On, _) => "on",
        (PowerAction::Off, true) => "soft",
        (PowerAction::Off, false) => "off",
        (PowerAction::Cycle, _) => "cycle",
        (PowerAction::Reset, _) => "reset",
    };
    match ipmitool(&settings.ipmitool, &bmc, &["chassis", "power", verb], left()).await {
        Run::Done { ok: true, stdout, stderr } => {
            if action == PowerAction::Status {
                let text = stdout.to_ascii_lowercase();
                let state = if text.contains("power is on") {
                    Some("on")
                } else if text.contains("power is off") {
                    Some("off")
                } else {
                    None
                };
                match state {
                    Some(s) => {
                        res.outcome = PowerOutcome::Ok;
                        res.power = Some(s.into());
                        res.message = format!("power is {s}");
                    }
                    None => {
                        res.message =
                            format!("the BMC's answer is not a power state: {}", reason(&stderr, &stdout, &bmc));
                    }
                }
            } else {
                res.outcome = PowerOutcome::Ok;
                res.message = match boot {
                    Some(BootDevice::Pxe) => format!("power {verb}, next boot from the network"),
                    Some(BootDevice::Disk) => format!("power {verb}, next boot from disk"),
                    None => format!("power {verb}"),
                };
            }
        }
        Run::Done { stdout, stderr, .. } => res.message = reason(&stderr, &stdout, &bmc),
        Run::TimedOut => timed_out(&mut res),
        Run::NotStarted(m) => res.message = m,
    }
    res
}

/// Runs `action` on every node, in parallel (bounded), each within `limit`.
pub async fn run(
    db: &Database,
    settings: &PowerSettings,
    nodes: Vec<Arc<Node>>,
    action: PowerAction,
    soft: bool,
    boot: Option<BootDevice>,
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
    let sem = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(nodes.len());
    for n in nodes {
        let (sem, secrets, settings) = (sem.clone(), secrets.clone(), settings.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            one(&settings, &n, &secrets, action, soft, boot, limit).await
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
        PowerSettings { ipmitool: cfg.ipmitool.clone(), concurrency: cfg.power_concurrency }
    }
}

/// Starts power control: its routes (it keeps no task).
pub fn start(ctx: &crate::core::Ctx, hub: &Arc<crate::agent_channel::Hub>) {
    let power = PowerSettings::from_config(ctx.config);
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
        let cases: [(&[(&str, &str)], &str); 6] = [
            (&[], "set _bmc_addr"),
            (&[("_bmc_addr", "10.1.0.1")], "set _bmc_user"),
            (&[("_bmc_addr", "10.1.0.1"), ("_bmc_user", "admin")], "set _bmc_pass or _bmc_pass_ref"),
            (
                &[("_bmc_addr", "10.1.0.1"), ("_bmc_user", "admin"), ("_bmc_pass_ref", "ipmi")],
                "names no secret \"ipmi\"",
            ),
            (
                &[("_bmc_addr", "10.1.0.1"), ("_bmc_user", "admin"), ("_bmc_pass", "pw"), ("_bmc_protocol", "ssh")],
                "is not lanplus or lan",
            ),
            (
                &[("_bmc_addr", "10.1.0.1"), ("_bmc_user", "admin"), ("_bmc_pass", "pw"), ("_bmc_cipher", "99")],
                "not a cipher suite",
            ),
        ];
        for (attrs, want) in cases {
            let e = bmc_of(&node(attrs), &none).err().unwrap_or_else(|| panic!("{attrs:?} accepted"));
            assert!(e.contains(want), "{attrs:?}: {e}");
        }
        let secrets = HashMap::from([("ipmi".to_string(), "s3cret".to_string())]);
        let b = bmc_of(
            &node(&[("_bmc_addr", "10.1.0.1:6230"), ("_bmc_user", "admin"), ("_bmc_pass_ref", "ipmi")]),
            &secrets,
        )
        .unwrap();
        assert_eq!((b.host.as_str(), b.port, b.pass.as_str(), b.interface), ("10.1.0.1", 6230, "s3cret", "lanplus"));
    }

    #[test]
    fn ipmitool_failures_in_words_and_never_the_password() {
        let b = Bmc {
            host: "10.1.0.1".into(),
            port: 623,
            user: "admin".into(),
            pass: "s3cret".into(),
            interface: "lanplus",
            cipher: "3".into(),
        };
        assert_eq!(reason("Error: RAKP 2 HMAC is invalid", "", &b), "the BMC refused the password");
        assert!(reason("RAKP 2 message indicates an error : unauthorized name", "", &b).contains("user \"admin\""));
        assert!(reason("Error: Unable to establish IPMI v2 / RMCP+ session", "", &b).contains("10.1.0.1:623"));
        let r = reason("Loading\nsomething odd happened with s3cret\u{7}\n", "", &b);
        assert_eq!(r, "something odd happened with ********");
        assert_eq!(reason("", "", &b), "ipmitool failed without a message");
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
        assert_eq!(describe(&req(PowerAction::Cycle, false, Some(BootDevice::Pxe), 1, 30)), "cycle --pxe");
        assert_eq!(describe(&req(PowerAction::Off, true, None, 1, 30)), "off --soft");
        for (r, want) in [
            (req(PowerAction::Status, false, None, 0, 30), "no nodes selected"),
            (req(PowerAction::Status, false, None, 1, 0), "not from 1 to 600"),
            (req(PowerAction::Status, false, None, 1, 601), "not from 1 to 600"),
            (req(PowerAction::On, true, None, 1, 30), "--soft applies to `off` only"),
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
