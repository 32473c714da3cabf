//! The IPMI driver: `ipmitool` (IPMI over LAN, `lanplus` by default) run once per step for one
//! node, under the node's deadline. The password goes to ipmitool in its environment (`-E`),
//! never on a command line (which any user can read in /proc), and never into a message.

use super::{Ask, Login, Outcome};
use clusterware_shared::power::{BmcType, BootDevice, PowerAction};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::time::Instant;

/// How to reach one node's BMC over IPMI.
pub(super) struct Bmc {
    host: String,
    port: u16,
    user: String,
    pass: String,
    interface: &'static str,
    cipher: String,
}

/// The node's IPMI settings, or why they are incomplete. Never includes the password.
pub(super) fn bmc_of(login: &Login, attrs: &std::collections::BTreeMap<String, String>) -> Result<Bmc, String> {
    if login.addr.https {
        return Err("_bmc_addr is a Redfish address (https://) but _bmc_type is ipmi".into());
    }
    // IPMI 2.0's own limits (the attributes take longer values for Redfish BMCs).
    if login.user.len() > 16 {
        return Err(format!("_bmc_user {:?} is longer than IPMI's 16 bytes", login.user));
    }
    if login.pass.len() > 20 {
        return Err("the BMC password is longer than IPMI's 20 bytes".into());
    }
    let interface = match attrs.get("_bmc_protocol").map(String::as_str) {
        None | Some("lanplus") => "lanplus",
        Some("lan") => "lan",
        Some(other) => return Err(format!("_bmc_protocol {other:?} is not lanplus or lan")),
    };
    let cipher = attrs.get("_bmc_cipher").cloned().unwrap_or_else(|| "3".into());
    if cipher.parse::<u8>().map_or(true, |c| c > 17) {
        return Err(format!("_bmc_cipher {cipher:?} is not a cipher suite number"));
    }
    Ok(Bmc {
        host: login.addr.host.clone(),
        port: login.addr.port_or(BmcType::Ipmi),
        user: login.user.clone(),
        pass: login.pass.clone(),
        interface,
        cipher,
    })
}

/// What one ipmitool run printed, or why it did not finish.
enum Run {
    Done { ok: bool, stdout: String, stderr: String },
    TimedOut,
    NotStarted(String),
}

async fn ipmitool(program: &Path, bmc: &Bmc, args: &[&str], limit: Duration) -> Run {
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
            .rfind(|l| !l.is_empty() && !l.starts_with('>') && !l.starts_with("Loading") && !l.starts_with("Running"))
            .unwrap_or("ipmitool failed without a message")
            .to_string()
    });
    let line: String = line.chars().filter(|c| !c.is_control()).take(300).collect();
    if bmc.pass.is_empty() { line } else { line.replace(&bmc.pass, "********") }
}

/// What IPMI cannot do, before anything is sent.
fn unsupported(ask: Ask) -> Option<&'static str> {
    if ask.soft && ask.action == PowerAction::Reset {
        return Some("a graceful restart (reset --soft) is not supported over IPMI: use off --soft, then on");
    }
    if ask.boot == Some(BootDevice::UefiHttp) {
        return Some("UEFI HTTP boot (--uefi-http) is not supported over IPMI, which has no such boot device");
    }
    None
}

/// Carries out `ask` on one BMC, each ipmitool run within what is left until `deadline`.
pub(super) async fn run(program: &Path, bmc: &Bmc, ask: Ask, deadline: Instant, limit: Duration) -> Outcome {
    if let Some(why) = unsupported(ask) {
        return Outcome::Failed(why.to_string());
    }
    let left = || deadline.saturating_duration_since(Instant::now());
    let timed_out = || {
        Outcome::Timeout(format!("no answer from the BMC at {}:{} within {} s", bmc.host, bmc.port, limit.as_secs()))
    };
    if let Some(dev) = ask.boot {
        let d = match dev {
            BootDevice::Pxe => "pxe",
            BootDevice::Disk => "disk",
            BootDevice::UefiHttp => unreachable!("refused above"),
        };
        match ipmitool(program, bmc, &["chassis", "bootdev", d], left()).await {
            Run::Done { ok: true, .. } => {}
            Run::Done { stdout, stderr, .. } => {
                return Outcome::Failed(format!("setting the boot device: {}", reason(&stderr, &stdout, bmc)));
            }
            Run::TimedOut => return timed_out(),
            Run::NotStarted(m) => return Outcome::Failed(m),
        }
    }
    let verb = match (ask.action, ask.soft) {
        (PowerAction::Status, _) => "status",
        (PowerAction::On, _) => "on",
        (PowerAction::Off, true) => "soft",
        (PowerAction::Off, false) => "off",
        (PowerAction::Cycle, _) => "cycle",
        (PowerAction::Reset, _) => "reset",
    };
    match ipmitool(program, bmc, &["chassis", "power", verb], left()).await {
        Run::Done { ok: true, stdout, stderr } => {
            if ask.action != PowerAction::Status {
                return Outcome::Ok {
                    power: None,
                    message: match ask.boot {
                        Some(dev) => format!("power {verb}, {}", dev.words()),
                        None => format!("power {verb}"),
                    },
                };
            }
            let text = stdout.to_ascii_lowercase();
            if text.contains("power is on") {
                Outcome::Ok { power: Some("on".into()), message: "power is on".into() }
            } else if text.contains("power is off") {
                Outcome::Ok { power: Some("off".into()), message: "power is off".into() }
            } else {
                Outcome::Failed(format!("the BMC's answer is not a power state: {}", reason(&stderr, &stdout, bmc)))
            }
        }
        Run::Done { stdout, stderr, .. } => Outcome::Failed(reason(&stderr, &stdout, bmc)),
        Run::TimedOut => timed_out(),
        Run::NotStarted(m) => Outcome::Failed(m),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterware_shared::power::BmcAddr;

    fn login(addr: &str, user: &str, pass: &str) -> Login {
        Login { addr: BmcAddr::parse(addr).unwrap(), user: user.into(), pass: pass.into() }
    }

    #[test]
    fn ipmi_settings_and_its_limits() {
        let attrs = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let b = bmc_of(&login("10.1.0.1:6230", "admin", "s3cret"), &attrs(&[])).unwrap();
        assert_eq!((b.host.as_str(), b.port, b.pass.as_str(), b.interface), ("10.1.0.1", 6230, "s3cret", "lanplus"));
        assert_eq!(bmc_of(&login("10.1.0.1", "admin", "pw"), &attrs(&[])).unwrap().port, 623);
        for (l, a, want) in [
            (login("10.1.0.1", "admin", "pw"), attrs(&[("_bmc_protocol", "ssh")]), "is not lanplus or lan"),
            (login("10.1.0.1", "admin", "pw"), attrs(&[("_bmc_cipher", "99")]), "not a cipher suite"),
            (login("10.1.0.1", "admin", &"p".repeat(21)), attrs(&[]), "longer than IPMI's 20 bytes"),
            (login("10.1.0.1", &"u".repeat(17), "pw"), attrs(&[]), "longer than IPMI's 16 bytes"),
            (login("https://10.1.0.1", "admin", "pw"), attrs(&[]), "Redfish address"),
        ] {
            let e = bmc_of(&l, &a).err().unwrap_or_else(|| panic!("{a:?} accepted"));
            assert!(e.contains(want), "{e}");
            assert!(!e.contains(&"p".repeat(21)));
        }
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
    fn what_ipmi_cannot_do_is_said_before_anything_is_sent() {
        let ask = |action, soft, boot| Ask { action, soft, boot };
        assert!(unsupported(ask(PowerAction::Reset, true, None)).unwrap().contains("not supported over IPMI"));
        assert!(
            unsupported(ask(PowerAction::Cycle, false, Some(BootDevice::UefiHttp)))
                .unwrap()
                .contains("not supported over IPMI")
        );
        assert!(unsupported(ask(PowerAction::Off, true, None)).is_none(), "soft off is `chassis power soft`");
        assert!(unsupported(ask(PowerAction::Cycle, false, Some(BootDevice::Pxe))).is_none());
    }
}
