//! `managedb`: the cluster database as seen from this head. `--heads` lists the heads connected
//! to the shared database; `join`, `leave`, `eject`, `recover` and `convert etcd` change this
//! head's membership (see `clusterware_cli::membership` and the head's `membership` module);
//! `failover` sets automatic failover; `save FILE` and `load FILE` copy the cluster's data as one
//! JSON document, loadable into an empty cluster of either backend.

use clap::Parser;
use clusterware_cli::args::managedb::{Args, Cmd, FailoverCmd};
use clusterware_cli::membership::{self, Start};
use clusterware_cli::{Client, fail, print_json, print_table, run, usage};
use clusterware_shared::api::{ConvertDatabase, DatabaseDump, Failover, FailoverRequest, HeadRef, MembershipChange};
use clusterware_shared::config::{self, Config};
use clusterware_shared::outln;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args = Args::parse();
    run("managedb", || match (&args.cmd, args.heads) {
        (Some(Cmd::Completion(c)), _) => c.print::<Args>(),
        (None, true) => heads(&args),
        (Some(_), true) => Err(usage("--heads goes alone")),
        (None, false) => Err(usage("give --heads or a command (see --help)")),
        (Some(cmd), false) => match cmd {
            Cmd::Save { file } => save(&args, file),
            Cmd::Load { file } => load(&args, file),
            Cmd::Join { ip_head, database_passwd_file, database_passwd } => {
                join(&args, ip_head, database_passwd_file.as_deref(), database_passwd.as_deref())
            }
            Cmd::Leave => change(&args, |c| c.leave(), Some("left")),
            Cmd::Eject { ip_head, force } => {
                let c = Client::new(&args.conn)?;
                let r = c.eject(&HeadRef { head: ip_head.clone(), force: *force })?;
                report(&args, &r);
                Ok(())
            }
            Cmd::Recover => change(&args, |c| c.recover(), Some("serving")),
            Cmd::Convert { .. } => {
                change(&args, |c| c.convert_database(&ConvertDatabase { to: "etcd".into() }), Some("serving"))
            }
            Cmd::Failover { action } => failover(&args, action),
            Cmd::Completion(c) => c.print::<Args>(),
        },
    })
}

fn local_config(args: &Args) -> clusterware_cli::CliResult<(PathBuf, Config)> {
    let path = config::resolve_path(args.conn.config.as_deref());
    let cfg = Config::load(&path).map_err(|e| fail(format!("{e} (run as root on the head)")))?.config;
    Ok((path, cfg))
}

fn report(args: &Args, r: &MembershipChange) {
    if args.json {
        print_json(r);
        return;
    }
    outln!("{}", r.message);
    for w in &r.warnings {
        eprintln!("managedb: warning: {w}");
    }
}

/// A change on the local head; waits until it has restarted into `then`.
fn change(
    args: &Args,
    call: impl FnOnce(&Client) -> clusterware_client::Result<MembershipChange>,
    then: Option<&str>,
) -> clusterware_cli::CliResult<()> {
    let c = Client::new(&args.conn)?;
    let url = c.base().to_string();
    let ca = c.inner().config().ca_pem.clone();
    let before = membership::health(&url, ca.as_deref()).map(|h| h.started_ms);
    let r = call(&c)?;
    if let (true, Some(state)) = (r.restarting, then) {
        // The head restarts in place: only its next start counts.
        if before.is_none() {
            std::thread::sleep(Duration::from_millis(300));
        }
        let e = membership::Expect { state, restarted_after: before, ..Default::default() };
        membership::wait_state(&url, ca.as_deref(), &e, Duration::from_secs(120)).map_err(|last| {
            fail(format!(
                "{} (but the head has not come back as {state} within 120 s; it reports {:?}: see its log)",
                r.message,
                last.map(|h| h.state)
            ))
        })?;
    }
    report(args, &r);
    Ok(())
}

fn join(
    args: &Args,
    target: &str,
    pass_file: Option<&std::path::Path>,
    pass: Option<&str>,
) -> clusterware_cli::CliResult<()> {
    let (path, cfg) = local_config(args)?;
    let password = if pass_file.is_some() || pass.is_some() {
        clusterware_cli::password_from(pass_file, pass, "", "")?
    } else {
        cfg.require_admin_pass().map_err(|e| fail(e.to_string()))?.to_string()
    };
    let local = membership::local_url(&cfg);
    let start = match membership::health(&local, None) {
        Some(h) => Start::Running(h),
        None => {
            return Err(fail(format!(
                "the head daemon does not answer at {local}: start it first (systemctl start clusterware)"
            )));
        }
    };
    let json = args.json;
    let say = |m: &str| {
        if !json {
            eprintln!("managedb: {m}");
        }
    };
    let j = membership::join(&path, target, &password, start, &say)?;
    if args.json {
        print_json(&j);
    } else {
        outln!(
            "joined the cluster of {} as etcd member {} ({} members now) in {:.1} s; the other heads take up the new \
             membership by themselves (no restart needed)",
            j.cluster_head,
            j.member_id,
            j.members,
            j.seconds
        );
    }
    Ok(())
}

fn failover(args: &Args, action: &FailoverCmd) -> clusterware_cli::CliResult<()> {
    let c = Client::new(&args.conn)?;
    let f: Failover = match action {
        FailoverCmd::Status => c.failover()?,
        FailoverCmd::Enable { timeout } => {
            c.set_failover(&FailoverRequest { action: "enable".into(), timeout_secs: Some(*timeout) })?
        }
        FailoverCmd::Disable => c.set_failover(&FailoverRequest { action: "disable".into(), timeout_secs: None })?,
        FailoverCmd::Reset => c.set_failover(&FailoverRequest { action: "reset".into(), timeout_secs: None })?,
    };
    if args.json {
        print_json(&f);
        return Ok(());
    }
    outln!(
        "automatic failover: {}, timeout {} s, {}",
        if f.enabled { "enabled" } else { "disabled" },
        f.timeout_secs,
        if f.armed { "armed" } else { "disarmed after an ejection (managedb failover reset arms it again)" }
    );
    if let Some(e) = &f.last {
        outln!(
            "last automatic ejection: {} by {} after {} s down{}",
            e.head,
            e.by,
            e.down_secs,
            e.error.as_ref().map(|m| format!(" (failed: {m})")).unwrap_or_default()
        );
    }
    Ok(())
}

fn heads(args: &Args) -> clusterware_cli::CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list = c.heads()?;
    let warnings = membership::head_warnings(&list, c.inner().config().ca_pem.as_deref());
    if args.json {
        print_json(&serde_json::json!({"heads": list.heads, "warnings": warnings}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .heads
        .iter()
        .map(|h| {
            vec![
                h.name.clone(),
                h.ip.to_string(),
                if h.alive { "connected" } else { "down" }.into(),
                format!("{} {}", h.db_member.backend, h.db_member.state),
                h.version.clone(),
            ]
        })
        .collect();
    print_table(&["NAME", "IP", "STATE", "DATABASE", "RELEASE"], &rows);
    for w in warnings {
        eprintln!("managedb: warning: {w}");
    }
    Ok(())
}

fn save(args: &Args, file: &PathBuf) -> clusterware_cli::CliResult<()> {
    let c = Client::new(&args.conn)?;
    let d = c.save_database()?;
    let body = serde_json::to_vec_pretty(&d).expect("a dump serialises");
    // Temporary file, fsync, rename: a crash never leaves half a dump under the name.
    let tmp = PathBuf::from(format!("{}.part", file.display()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, file)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(format!("cannot write {}: {e}", file.display())));
    }
    if args.json {
        print_json(&serde_json::json!({"file": file, "keys": d.keys.len(), "revision": d.revision}));
    } else {
        outln!(
            "saved {} keys (revision {} of the {} database) to {}",
            d.keys.len(),
            d.revision,
            d.backend,
            file.display()
        );
    }
    Ok(())
}

fn load(args: &Args, file: &PathBuf) -> clusterware_cli::CliResult<()> {
    let text = std::fs::read(file).map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?;
    let d: DatabaseDump = serde_json::from_slice(&text)
        .map_err(|e| fail(format!("{} is not a database dump (malformed or truncated): {e}", file.display())))?;
    let c = Client::new(&args.conn)?;
    let r = c.load_database(&d)?;
    if args.json {
        print_json(&r);
    } else {
        outln!("loaded {} keys from {}", r.loaded, file.display());
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);
