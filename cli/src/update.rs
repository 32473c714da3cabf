//! `scyld-install --update` (`-u`): this head's ClusterWare packages brought up to date, from
//! the package repository apt is configured with or from given `.deb` files, then the head
//! restarted in place on the new programs and waited for until it serves again.
//!
//! Nothing changes until everything that can be checked is: the other heads are up (an update
//! takes this head out of service for a moment, and with another head down that can cost the
//! database its quorum: refused unless `--force`), the package files are ClusterWare's, the
//! packages are installed here. A head under systemd is restarted by the package itself
//! (`try-restart` in its postinst); one started directly is sent SIGHUP, which makes it start
//! again in the same process on the installed program.

use crate::membership::{self, Expect};
use crate::{CliResult, fail};
use clusterware_shared::config::Config;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The packages an update brings up to date (those of them installed).
pub const PACKAGES: [&str; 2] = ["clusterware", "clusterware-node"];

/// What an update did.
#[derive(Debug, serde::Serialize)]
pub struct Updated {
    /// The `clusterware` package's version before and after (Debian versions).
    pub from: String,
    pub to: String,
    /// The head restarted on the new programs (it was serving, and the package changed).
    pub restarted: bool,
    /// The release the head serves with now (absent when it does not run here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serving: Option<String>,
    /// From the restart (under systemd: the end of the package installation, which restarts it)
    /// until the head served again, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_service_secs: Option<f64>,
}

/// The other heads that are down, as `NAME (IP)`, seen by the local head `me` (serving).
fn down_heads(cfg: &Config, me: &str) -> CliResult<Vec<String>> {
    let c = membership::local_client(cfg, 30)?;
    let list = c.heads()?;
    Ok(list.heads.iter().filter(|h| !h.alive && h.name != me).map(|h| format!("{} ({})", h.name, h.ip)).collect())
}

/// The installed version of a package (`None`: not installed).
pub fn installed(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query").args(["-W", "-f=${Status}\t${Version}", package]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (status, version) = text.split_once('\t')?;
    (out.status.success() && status.ends_with(" installed") && !version.is_empty()).then(|| version.to_string())
}

/// Checks a package file: it exists and is one of [`PACKAGES`]. Its absolute path.
fn check_deb(f: &Path) -> CliResult<PathBuf> {
    let abs = std::fs::canonicalize(f).map_err(|e| fail(format!("--deb {}: {e}", f.display())))?;
    let out = Command::new("dpkg-deb")
        .args(["--field"])
        .arg(&abs)
        .arg("Package")
        .output()
        .map_err(|e| fail(format!("cannot run dpkg-deb to read {}: {e}", f.display())))?;
    let name = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !PACKAGES.contains(&name.as_str()) {
        let why = if out.status.success() {
            format!("it is the package {name:?}")
        } else {
            String::from_utf8_lossy(&out.stderr).trim().to_string()
        };
        return Err(fail(format!(
            "--deb {}: not a package of ClusterWare ({}): {why}; nothing was changed",
            f.display(),
            PACKAGES.join(", ")
        )));
    }
    Ok(abs)
}

/// Runs apt-get with its progress on this program's stderr (stdout stays for `--json`).
fn apt_get(args: &[&std::ffi::OsStr]) -> CliResult<()> {
    let err = std::io::stderr();
    let out = std::os::fd::AsFd::as_fd(&err).try_clone_to_owned().map_err(|e| fail(e.to_string()))?;
    let st = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .status()
        .map_err(|e| fail(format!("cannot run apt-get: {e}")))?;
    if !st.success() {
        let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        return Err(fail(format!("apt-get {} failed (its messages are above)", shown.join(" "))));
    }
    Ok(())
}

/// Updates this head: `conf` is its base.ini when it is installed; `debs` the package files to
/// update from (none: the package repository); `force` updates even while another head is down.
pub fn update(conf: Option<&Path>, debs: &[PathBuf], force: bool, say: &dyn Fn(&str)) -> CliResult<Updated> {
    let cfg = match conf.filter(|c| c.exists()) {
        Some(c) => Some(Config::load(c).map_err(|e| fail(e.to_string()))?.config),
        None => None,
    };
    let running = cfg.as_ref().and_then(|c| membership::health(&membership::local_url(c), None));
    let serving = running.filter(|h| h.state == "serving");
    if let (Some(cfg), Some(h)) = (&cfg, &serving) {
        let down = down_heads(cfg, &h.name)?;
        if !down.is_empty() && !force {
            return Err(fail(format!(
                "{} {} down: updating this head now takes a second head out of service, which can cost the cluster \
                 its database quorum and its nodes their fallback. Bring {} back (or remove {} with `managedb eject`) \
                 first, or give --force to update anyway; nothing was changed",
                down.join(", "),
                if down.len() == 1 { "is" } else { "are" },
                if down.len() == 1 { "it" } else { "them" },
                if down.len() == 1 { "it" } else { "them" },
            )));
        }
        if !down.is_empty() {
            say(&format!("updating although {} down (--force)", down.join(", ")));
        }
    }
    let files = debs.iter().map(|d| check_deb(d)).collect::<CliResult<Vec<_>>>()?;
    let from = installed("clusterware").ok_or_else(|| {
        fail(
            "the clusterware package is not installed on this machine (dpkg-query knows no clusterware): a head that \
             runs from a build tree is updated by building and installing the new tree; nothing was changed",
        )
    })?;
    if files.is_empty() {
        say("updating from the package repository (apt-get update, then the newest clusterware packages)");
        apt_get(&["update".as_ref(), "-q".as_ref()])?;
        let mut args: Vec<&std::ffi::OsStr> = vec!["install".as_ref(), "-y".as_ref(), "-q".as_ref()];
        args.push("--only-upgrade".as_ref());
        args.extend(PACKAGES.iter().map(std::ffi::OsStr::new));
        apt_get(&args)?;
    } else {
        say(&format!("updating from {}", files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")));
        let mut args: Vec<&std::ffi::OsStr> = vec!["install".as_ref(), "-y".as_ref(), "-q".as_ref()];
        args.extend(files.iter().map(|f| f.as_os_str()));
        apt_get(&args)?;
    }
    let to = installed("clusterware").unwrap_or_default();
    let mut done = Updated { from, to, restarted: false, serving: None, out_of_service_secs: None };
    let (Some(cfg), Some(before)) = (cfg, serving) else {
        if done.from == done.to {
            say(&format!("clusterware {} is the newest available; nothing was updated", done.to));
        }
        return Ok(done);
    };
    if done.from == done.to {
        say(&format!("clusterware {} is the newest available; the head keeps running", done.to));
        done.serving = Some(before.version);
        return Ok(done);
    }
    // Under systemd the package's postinst restarted it already; a head started directly
    // restarts in place on SIGHUP (on the installed program).
    let url = membership::local_url(&cfg);
    let t0 = Instant::now();
    let now = membership::health(&url, None);
    if now.as_ref().is_some_and(|h| h.started_ms == before.started_ms && h.pid == before.pid) {
        membership::restart_local(&before)?;
        say(&format!("restarting head {} (pid {}) on the new programs", before.name, before.pid));
    }
    let e = Expect {
        state: "serving",
        name: Some(&before.name),
        restarted_after: Some(before.started_ms),
        ..Default::default()
    };
    let h = membership::wait_state(&url, None, &e, Duration::from_secs(180)).map_err(|last| {
        fail(format!(
            "head {} was updated to {} but does not serve again within 180 s (it reports {}); see its log in {}",
            before.name,
            done.to,
            last.map_or("nothing".to_string(), |h| h.state),
            cfg.log_dir.display()
        ))
    })?;
    done.restarted = true;
    done.serving = Some(h.version);
    done.out_of_service_secs = Some((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    Ok(done)
}
