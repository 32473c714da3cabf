//! `scyld-clusterctl`: cluster-wide views and boot files.
//! `heads ls [-l] [--json]` lists the head nodes; `files ls|upload|rm` manages boot files;
//! `keys add|ls|rm` manages the SSH keys that `scyld-nodectl script update_keys` gives nodes;
//! `secrets set|ls|rm` the BMC passwords nodes name with `_bmc_pass_ref`; `rebalance` evens out
//! the nodes each head parents; `events [-f] [--since] [--kind]` shows the event log.

use clap::Parser;
use clusterware_cli::args::clusterctl::{Args, Cmd, FilesCmd, HeadsCmd, KeysCmd, SecretsCmd, TokensCmd};
use clusterware_cli::{CliResult, Client, human_bytes, print_json, print_table, run, upload_file, usage};
use clusterware_shared::agent::{AddKey, RebalanceRequest, SshKeyList, validate_ssh_key};
use clusterware_shared::api::{FILE_KINDS, FileList};
use clusterware_shared::ids::shown;
use clusterware_shared::outln;
use clusterware_shared::power::SecretList;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-clusterctl", || match &args.cmd {
        Cmd::Heads { cmd: HeadsCmd::Ls { long, bytes } } => heads_ls(&args, *long, *bytes),
        Cmd::Files { cmd: FilesCmd::Ls { long, bytes } } => files_ls(&args, *long, *bytes),
        Cmd::Files { cmd: FilesCmd::Upload { path, name, kind } } => upload(&args, path, name.as_deref(), kind),
        Cmd::Files { cmd: FilesCmd::Rm { ids, force } } => rm(&args, ids, *force),
        Cmd::Keys { cmd: KeysCmd::Add { name, key, file } } => keys_add(&args, name, key.as_deref(), file.as_ref()),
        Cmd::Keys { cmd: KeysCmd::Ls { long } } => keys_ls(&args, *long),
        Cmd::Keys { cmd: KeysCmd::Rm { names } } => keys_rm(&args, names),
        Cmd::Rebalance { dry_run, now: _ } => rebalance(&args, *dry_run),
        Cmd::Secrets { cmd: SecretsCmd::Set { name } } => secret_set(&args, name),
        Cmd::Secrets { cmd: SecretsCmd::Ls } => secrets_ls(&args),
        Cmd::Tokens { cmd: TokensCmd::Create { name } } => token_create(&args, name),
        Cmd::Tokens { cmd: TokensCmd::Ls } => tokens_ls(&args),
        Cmd::Tokens { cmd: TokensCmd::Revoke { names } } => tokens_revoke(&args, names),
        Cmd::Secrets { cmd: SecretsCmd::Rm { names } } => secrets_rm(&args, names),
        Cmd::Events { follow, since, kind, limit } => events(&args, *follow, since.as_deref(), *kind, *limit),
        Cmd::Completion(c) => c.print::<Args>(),
    })
}

/// One event as a line: time, kind, subject, what happened; admin actions with who, from where
/// and the outcome.
fn event_line(e: &clusterware_shared::api::Event) -> String {
    let mut line = format!(
        "{}  {:<6} {:<8} {}: {}",
        clusterware_cli::utc(e.time_ms),
        e.kind.as_str(),
        shown(&e.head),
        shown(&e.subject),
        shown(&e.message)
    );
    if let Some(a) = &e.actor {
        line.push_str(&format!(" [by {}", shown(a)));
        if let Some(f) = &e.from {
            line.push_str(&format!(" from {}", shown(f)));
        }
        line.push(']');
    }
    if let Some(o) = &e.outcome {
        line.push_str(&format!(" => {}", shown(o)));
    }
    line
}

fn events(
    args: &Args,
    follow: bool,
    since: Option<&str>,
    kind: Option<clusterware_cli::args::clusterctl::EventKindArg>,
    limit: u64,
) -> CliResult<()> {
    use clusterware_shared::api::EventQuery;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let since_ms = since.map(|s| clusterware_cli::parse_since(s, now_ms)).transpose().map_err(usage)?;
    let kind = kind.map(Into::into);
    let c = Client::new(&args.conn)?;
    let first = c.events(&EventQuery { since_ms, limit: Some(limit as usize), kind, ..Default::default() })?;
    let show = |e: &clusterware_shared::api::Event| {
        if args.json {
            outln!("{}", serde_json::to_string(e).unwrap_or_default());
        } else {
            outln!("{}", event_line(e));
        }
    };
    if !follow {
        if args.json {
            print_json(&first);
        } else if first.events.is_empty() {
            outln!("no events{}", if since.is_some() || kind.is_some() { " match" } else { " yet" });
        } else {
            for e in &first.events {
                show(e);
            }
        }
        return Ok(());
    }
    // Following: one JSON object per line with --json. The listing's events that come again
    // (those too recent to be settled when it was made) are not shown twice.
    let mut shown_ids: std::collections::HashSet<String> = first.events.iter().map(|e| e.id.clone()).collect();
    for e in &first.events {
        show(e);
    }
    let mut after = first.next.unwrap_or_default();
    // A long poll a little shorter than the request timeout.
    let wait = args.conn.timeout.saturating_sub(5).clamp(1, 25);
    loop {
        let q = EventQuery { after: Some(after.clone()), wait_secs: Some(wait), kind, ..Default::default() };
        let page = c.events(&q)?;
        for e in &page.events {
            if !shown_ids.remove(&e.id) {
                show(e);
            }
        }
        if let Some(n) = page.next {
            after = n;
        }
        // What the listing showed is behind the cursor once it has moved past it.
        shown_ids.retain(|id| *id > after);
    }
}

/// A size as `--bytes` asks: bytes, else KiB, MiB, GiB.
fn size(n: u64, bytes: bool) -> String {
    if bytes { n.to_string() } else { human_bytes(n) }
}

fn heads_ls(args: &Args, long: bool, in_bytes: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list = c.heads()?;
    if args.json {
        print_json(&list);
    } else if long {
        let rows: Vec<Vec<String>> = list
            .heads
            .iter()
            .map(|h| {
                let (files, missing, bad, bytes) = match &h.storage {
                    Some(s) => (s.files.to_string(), s.missing.to_string(), s.bad.to_string(), size(s.bytes, in_bytes)),
                    None => ("-".into(), "-".into(), "-".into(), "-".into()),
                };
                vec![
                    h.name.clone(),
                    h.ip.to_string(),
                    if h.alive { "yes" } else { "NO" }.to_string(),
                    h.version.clone(),
                    format!(
                        "{} {}{}",
                        h.db_member.backend,
                        h.db_member.state,
                        if h.db_member.leader { " (leader)" } else { "" }
                    ),
                    h.db_member.id.clone().unwrap_or_else(|| "-".into()),
                    if h.alive { h.nodes.to_string() } else { "-".into() },
                    files,
                    missing,
                    bad,
                    bytes,
                    h.api_url.clone(),
                ]
            })
            .collect();
        print_table(
            &[
                "NAME",
                "IP",
                "ALIVE",
                "VERSION",
                "DATABASE",
                "MEMBER ID",
                "NODES",
                "FILES",
                "MISSING",
                "BAD",
                "SIZE",
                "API",
            ],
            &rows,
        );
        outln!("mean nodes per alive head: {:.1}", list.mean_nodes);
        if let Some(schema) = list.schema {
            outln!("database schema: {schema}");
        }
        for w in clusterware_cli::membership::head_warnings(&list, c.inner().config().ca_pem.as_deref()) {
            eprintln!("scyld-clusterctl: warning: {w}");
        }
        for h in list.heads.iter().filter(|h| h.storage.as_ref().is_some_and(|s| s.scrub_bad > 0)) {
            let n = h.storage.as_ref().map_or(0, |s| s.scrub_bad);
            eprintln!(
                "scyld-clusterctl: warning: head {}: its scrub found {n} local copies that no longer matched since it \
                 started (renamed .old.NN and fetched again); check its disk",
                h.name
            );
        }
        warn_under_minimum(&c.files()?);
    } else {
        for h in &list.heads {
            outln!("{}", h.name);
        }
    }
    Ok(())
}

fn files_ls(args: &Args, long: bool, bytes: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list = c.files()?;
    if args.json {
        print_json(&list);
    } else if long {
        let rows: Vec<Vec<String>> = list
            .files
            .iter()
            .map(|f| {
                let copies = match list.copies.get(&f.id) {
                    Some(c) if c.under_minimum => format!("{} of {} UNDER", c.copies, list.min_copies),
                    Some(c) => format!("{} of {}", c.copies, list.min_copies),
                    None => "-".into(),
                };
                let heads = list.copies.get(&f.id).map_or("-".into(), |c| c.heads.join(","));
                vec![
                    f.id.clone(),
                    shown(&f.name).into(),
                    f.kind.clone(),
                    size(f.size, bytes),
                    copies,
                    heads,
                    f.sha256.clone(),
                ]
            })
            .collect();
        print_table(&["ID", "NAME", "KIND", "SIZE", "COPIES", "HEADS", "SHA256"], &rows);
        warn_under_minimum(&list);
    } else {
        for f in &list.files {
            outln!("{}  {}", f.id, shown(&f.name));
        }
    }
    Ok(())
}

/// Warns about the files with fewer verified copies than the cluster's minimum.
fn warn_under_minimum(list: &FileList) {
    let under: Vec<String> = list
        .files
        .iter()
        .filter(|f| list.copies.get(&f.id).is_some_and(|c| c.under_minimum))
        .map(|f| format!("{} ({})", f.id, shown(&f.name)))
        .collect();
    if !under.is_empty() {
        eprintln!(
            "scyld-clusterctl: warning: {} file(s) have fewer verified copies than the minimum of {}: {}; each alive \
             head fetches what it is missing at its next audit (local_files.audit_interval), a head that is down \
             when it starts again",
            under.len(),
            list.min_copies,
            under.join(", ")
        );
    }
}

fn upload(args: &Args, path: &PathBuf, name: Option<&str>, kind: &str) -> CliResult<()> {
    if !FILE_KINDS.contains(&kind) {
        return Err(usage(format!("--kind {kind:?} is not one of {}", FILE_KINDS.join(", "))));
    }
    // After the last byte the head answers once other heads hold a verified copy too
    // (local_files.min_copies): a large file takes their download and hashing time.
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let c = Client::with_timeout(&args.conn, args.conn.timeout.max(60 + size / (16 << 20)))?;
    let rec = upload_file(&c, path, name, kind)?;
    if args.json {
        print_json(&rec);
    } else {
        outln!("uploaded {} as {} ({}, sha256 {})", shown(&rec.name), rec.id, human_bytes(rec.size), rec.sha256);
    }
    Ok(())
}

fn rm(args: &Args, ids: &[String], force: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list = c.files()?;
    let ids = ids.iter().map(|a| clusterware_cli::file_by_id_or_name(&list, a)).collect::<CliResult<Vec<_>>>()?;
    let mut out = Vec::new();
    for id in &ids {
        let rec = c.delete_file(id, force)?;
        if !args.json {
            outln!("deleted {} ({})", rec.id, shown(&rec.name));
        }
        out.push(rec);
    }
    if args.json {
        print_json(&FileList { files: out, ..Default::default() });
    }
    Ok(())
}

fn rebalance(args: &Args, dry_run: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let r = c.rebalance(&RebalanceRequest { dry_run })?;
    if args.json {
        print_json(&r);
        return Ok(());
    }
    let rows: Vec<Vec<String>> =
        r.heads.iter().map(|h| vec![h.name.clone(), h.nodes.to_string(), h.pinned.to_string()]).collect();
    print_table(&["HEAD", "NODES", "PREFERRING IT"], &rows);
    outln!("mean {:.1}, threshold {}%", r.mean, r.threshold_pct);
    let verb = if dry_run { "would move" } else { "moving" };
    for m in &r.moves {
        outln!("{verb} {} from {} to {}", m.node, m.from, m.to);
    }
    if r.moves.is_empty() {
        outln!("no moves needed");
    }
    for n in &r.notes {
        outln!("note: {n}");
    }
    Ok(())
}

fn secret_set(args: &Args, name: &str) -> CliResult<()> {
    clusterware_shared::ids::validate_attr_key(name).map_err(|e| usage(format!("secret name: {e}")))?;
    let c = Client::new(&args.conn)?;
    let value = clusterware_cli::read_secret(&format!("value of secret {name}: "))?;
    let info = c.set_secret(name, &clusterware_shared::power::SetSecret { value })?;
    if args.json {
        print_json(&info);
    } else {
        outln!("secret {} set", info.name);
    }
    Ok(())
}

fn token_name(name: &str) -> CliResult<()> {
    clusterware_shared::ids::validate_attr_key(name).map(|_| ()).map_err(|e| usage(format!("token name: {e}")))
}

fn token_create(args: &Args, name: &str) -> CliResult<()> {
    token_name(name)?;
    let c = Client::new(&args.conn)?;
    let t = c.create_token(&clusterware_shared::api::CreateToken { name: name.to_string() })?;
    if args.json {
        print_json(&t);
    } else {
        outln!("{}", t.token);
        eprintln!(
            "token {} created; it is shown this once: give it as CLUSTERWARE_TOKEN, and revoke it with `scyld-clusterctl tokens revoke {}`",
            t.info.name, t.info.name
        );
    }
    Ok(())
}

fn tokens_ls(args: &Args) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list = c.tokens()?;
    if args.json {
        print_json(&list);
    } else {
        let rows: Vec<Vec<String>> = list
            .tokens
            .iter()
            .map(|t| {
                vec![
                    shown(&t.name).into_owned(),
                    clusterware_cli::ago(Some(t.created)),
                    shown(&t.created_from).into_owned(),
                ]
            })
            .collect();
        print_table(&["NAME", "CREATED", "FROM"], &rows);
    }
    Ok(())
}

fn tokens_revoke(args: &Args, names: &[String]) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let mut out = Vec::new();
    for n in names {
        token_name(n)?;
        let t = c.revoke_token(n)?;
        if !args.json {
            outln!("revoked token {}", t.name);
        }
        out.push(t);
    }
    if args.json {
        print_json(&clusterware_shared::api::TokenList { tokens: out });
    }
    Ok(())
}

fn secrets_ls(args: &Args) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list = c.secrets()?;
    if args.json {
        print_json(&list);
    } else {
        for s in &list.secrets {
            outln!("{}", s.name);
        }
    }
    Ok(())
}

fn secrets_rm(args: &Args, names: &[String]) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let mut out = Vec::new();
    for n in names {
        clusterware_shared::ids::validate_attr_key(n).map_err(|e| usage(format!("secret name: {e}")))?;
        let s = c.delete_secret(n)?;
        if !args.json {
            outln!("removed secret {}", s.name);
        }
        out.push(s);
    }
    if args.json {
        print_json(&SecretList { secrets: out });
    }
    Ok(())
}

fn keys_add(args: &Args, name: &str, key: Option<&str>, file: Option<&PathBuf>) -> CliResult<()> {
    let key = match (key, file) {
        (Some(k), _) => k.to_string(),
        (None, Some(p)) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| clusterware_cli::fail(format!("cannot read {}: {e}", p.display())))?;
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.len() != 1 {
                return Err(usage(format!("{} holds {} lines; give one key per name", p.display(), lines.len())));
            }
            lines[0].to_string()
        }
        (None, None) => return Err(usage("give the key or --file PATH")),
    };
    validate_ssh_key(&key).map_err(|e| usage(format!("not an SSH public key: {e}")))?;
    let c = Client::new(&args.conn)?;
    let k = c.add_key(&AddKey { name: name.to_string(), key })?;
    if args.json {
        print_json(&k);
    } else {
        outln!("added key {}", k.name);
    }
    Ok(())
}

fn keys_ls(args: &Args, long: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list = c.keys()?;
    if args.json {
        print_json(&list);
    } else if long {
        let rows: Vec<Vec<String>> = list.keys.iter().map(|k| vec![k.name.clone(), k.key.clone()]).collect();
        print_table(&["NAME", "KEY"], &rows);
    } else {
        for k in &list.keys {
            outln!("{}", k.name);
        }
    }
    Ok(())
}

fn keys_rm(args: &Args, names: &[String]) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let mut out = Vec::new();
    for n in names {
        let k = c.delete_key(n)?;
        if !args.json {
            outln!("removed key {}", k.name);
        }
        out.push(k);
    }
    if args.json {
        print_json(&SshKeyList { keys: out });
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);
