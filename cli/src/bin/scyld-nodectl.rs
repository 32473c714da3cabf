//! `scyld-nodectl`: compute nodes in the cluster database.
//!
//! ```text
//! scyld-nodectl ls [-l] [--json]
//! scyld-nodectl create mac=52:54:00:00:00:01 [ip=10.54.0.1] [index=0] [key=value …]
//! scyld-nodectl create --count 100 mac=52:54:00:00:01:00 ip=10.54.1.0
//! scyld-nodectl create --csv nodes.csv
//! scyld-nodectl -i n[0-5,7] set _boot_config=compute
//! scyld-nodectl -i n3,n9 clear _boot_config
//! scyld-nodectl -i n3 rm
//! scyld-nodectl -i n[0-99] status [--json]
//! scyld-nodectl -i n[0-99] script fetch_hosts|update_keys [--wait 30]
//! scyld-nodectl -i n[0-99] power status|on|off|cycle|reset [--soft] [--pxe|--disk|--uefi-http]
//! ```

use clap::Parser;
use clusterware_cli::args::nodectl::{Args, Cmd, Select};
use clusterware_cli::{
    CliResult, Client, confirm, count_nodes, fail, node_ranges, print_json, print_table, run, select_nodes, usage,
};
use clusterware_shared::agent::{NodeStatus, NodeStatusList, Outcome, RunScript, Script, StatusQuery};
use clusterware_shared::api::{CreateNodes, DeleteNodes, Node, NodeList, NodeSpec, UpdateNodes};
use clusterware_shared::ids::{MacAddr, ipv4_offset, parse_ipv4, shown, validate_attr};
use clusterware_shared::outln;
use clusterware_shared::power::BootDevice;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-nodectl", || {
        let sel = |after: &Select| args.sel.merged(after).map_err(usage);
        match &args.cmd {
            Cmd::Create { .. } | Cmd::Completion(_) if args.sel.given() => {
                return Err(usage("create and completion take no -i/-a"));
            }
            _ => {}
        }
        match &args.cmd {
            Cmd::Ls { sel: s, long } => ls(&args, &sel(s)?, *long),
            Cmd::Create { count, csv, fields, force } => create(&args, *count, csv.as_ref(), fields, *force),
            Cmd::Set { sel: s, assignments, force } => set(&args, &sel(s)?, assignments, *force),
            Cmd::Clear { sel: s, keys } => clear(&args, &sel(s)?, keys),
            Cmd::Rm { sel: s, yes } => rm(&args, &sel(s)?, *yes),
            Cmd::Enroll { sel: s } => enroll(&args, &sel(s)?),
            Cmd::Revoke { sel: s } => revoke(&args, &sel(s)?),
            Cmd::Status { sel: s } => status(&args, &sel(s)?),
            Cmd::Script { sel: s, script, wait } => script_cmd(&args, &sel(s)?, script, *wait),
            Cmd::Power { sel: s, action, soft, pxe, disk, uefi_http, wait, yes } => {
                let boot = match (*pxe, *disk, *uefi_http) {
                    (true, _, _) => Some(BootDevice::Pxe),
                    (_, true, _) => Some(BootDevice::Disk),
                    (_, _, true) => Some(BootDevice::UefiHttp),
                    _ => None,
                };
                power_cmd(&args, &sel(s)?, action, *soft, boot, *wait, *yes)
            }
            Cmd::Completion(c) => c.print::<Args>(),
        }
    })
}

fn split_kv(s: &str) -> CliResult<(&str, &str)> {
    s.split_once('=').ok_or_else(|| usage(format!("{s:?} is not key=value")))
}

fn all_nodes(c: &Client) -> CliResult<Vec<Node>> {
    Ok(c.nodes()?.nodes)
}

/// The selected nodes; `required` makes `-i` or `-a` mandatory.
fn selected(sel: &Select, nodes: &[Node], required: bool) -> CliResult<Vec<Node>> {
    match (&sel.ids, sel.all) {
        (Some(sel), _) => Ok(select_nodes(nodes, sel)?.into_iter().cloned().collect()),
        (None, true) => Ok(nodes.to_vec()),
        (None, false) if required => Err(usage("select nodes with -i NODES or -a")),
        (None, false) => Ok(nodes.to_vec()),
    }
}

fn ls(args: &Args, sel: &Select, long: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(sel, &all_nodes(&c)?, false)?;
    if args.json {
        print_json(&NodeList { nodes });
    } else if long {
        let status = statuses(&c, &nodes, false)?;
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let macs: Vec<String> = n.macs.iter().map(|m| m.to_string()).collect();
                let attrs: Vec<String> =
                    n.attributes.iter().map(|(k, v)| format!("{}={}", shown(k), shown(v))).collect();
                let st = status.iter().find(|s| s.uid == n.uid);
                let mut row = vec![n.name.clone(), n.index.to_string(), n.ip.to_string(), macs.join(",")];
                row.extend(state_columns(st));
                row.push(attrs.join(" "));
                row
            })
            .collect();
        print_table(&["NAME", "INDEX", "IP", "MAC", "STATE", "PARENT", "LAST SEEN", "ATTRIBUTES"], &rows);
        for s in &status {
            for p in &s.problems {
                eprintln!("{}: {p}", s.name);
            }
        }
    } else {
        for n in &nodes {
            outln!("{}", n.name);
        }
    }
    Ok(())
}

/// Parses `create` arguments into the first node's spec.
fn base_spec(fields: &[String]) -> CliResult<NodeSpec> {
    let mut s = NodeSpec::default();
    for f in fields {
        let (k, v) = split_kv(f)?;
        match k {
            "mac" => {
                for m in v.split(',') {
                    s.macs.push(m.trim().parse().map_err(|e: clusterware_shared::ids::IdError| usage(e.to_string()))?);
                }
            }
            "ip" => {
                if s.ip.is_some() {
                    return Err(usage("ip= given twice"));
                }
                s.ip = Some(parse_ipv4(v).map_err(|e| usage(e.to_string()))?)
            }
            "index" => {
                if s.index.is_some() {
                    return Err(usage("index= given twice"));
                }
                s.index = Some(v.parse().map_err(|_| usage(format!("index {v:?} is not a whole number")))?)
            }
            _ => {
                validate_attr(k, v).map_err(|e| usage(e.to_string()))?;
                s.attributes.insert(k.to_string(), v.to_string());
            }
        }
    }
    Ok(s)
}

fn csv_specs(path: &PathBuf, template: &NodeSpec) -> CliResult<Vec<NodeSpec>> {
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = l.split(',').map(str::trim).collect();
        if out.is_empty() && cols[0].eq_ignore_ascii_case("mac") {
            continue;
        }
        let at = |what: String| usage(format!("{}:{}: {what}", path.display(), i + 1));
        if cols.len() > 3 {
            return Err(at(format!("expected mac[,ip[,index]], found {} columns", cols.len())));
        }
        let mac: MacAddr = cols[0].parse().map_err(|e: clusterware_shared::ids::IdError| at(e.to_string()))?;
        let ip: Option<Ipv4Addr> = match cols.get(1) {
            Some(s) if !s.is_empty() => Some(parse_ipv4(s).map_err(|e| at(e.to_string()))?),
            _ => None,
        };
        let index = match cols.get(2) {
            Some(s) if !s.is_empty() => Some(s.parse().map_err(|_| at(format!("index {s:?} is not a whole number")))?),
            _ => None,
        };
        out.push(NodeSpec { macs: vec![mac], ip, index, attributes: template.attributes.clone() });
    }
    if out.is_empty() {
        return Err(usage(format!("{} lists no nodes", path.display())));
    }
    Ok(out)
}

fn create(args: &Args, count: Option<u32>, csv: Option<&PathBuf>, fields: &[String], force: bool) -> CliResult<()> {
    let base = base_spec(fields)?;
    let specs = if let Some(path) = csv {
        if !base.macs.is_empty() || base.ip.is_some() || base.index.is_some() {
            return Err(usage("with --csv, mac, ip and index come from the file; give only attributes"));
        }
        csv_specs(path, &base)?
    } else {
        if base.macs.is_empty() {
            return Err(usage("give mac=… (or --csv FILE)"));
        }
        let n = count.unwrap_or(1);
        if n == 0 {
            return Err(usage("--count must be at least 1"));
        }
        (0..n as u64)
            .map(|i| {
                Ok(NodeSpec {
                    macs: base
                        .macs
                        .iter()
                        .map(|m| m.offset(i))
                        .collect::<Result<_, _>>()
                        .map_err(|e| usage(e.to_string()))?,
                    ip: base.ip.map(|ip| ipv4_offset(ip, i)).transpose().map_err(|e| usage(e.to_string()))?,
                    index: base
                        .index
                        .map(|x| u32::try_from(u64::from(x) + i).map_err(|_| usage("index range runs past 4294967295")))
                        .transpose()?,
                    attributes: base.attributes.clone(),
                })
            })
            .collect::<CliResult<Vec<_>>>()?
    };
    let c = Client::new(&args.conn)?;
    let created = c.create_nodes(&CreateNodes { nodes: specs, force })?;
    if args.json {
        print_json(&created);
    } else {
        match &created.nodes[..] {
            [n] => {
                let macs: Vec<String> = n.macs.iter().map(|m| m.to_string()).collect();
                outln!("created {} ({}, {})", n.name, macs.join(","), n.ip);
            }
            [first, .., last] => outln!(
                "created {} (IPs {} to {})",
                clusterware_cli::count_nodes(created.nodes.iter().map(|n| n.name.as_str())),
                first.ip,
                last.ip
            ),
            [] => {}
        }
    }
    Ok(())
}

fn update(args: &Args, sel: &Select, set: BTreeMap<String, String>, clear: Vec<String>, force: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(sel, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    let req = UpdateNodes { nodes: nodes.iter().map(|n| n.uid.clone()).collect(), set, clear, force };
    let done = c.update_nodes(&req)?;
    if args.json {
        print_json(&done);
    } else {
        outln!("updated {}", clusterware_cli::count_nodes(done.nodes.iter().map(|n| n.name.as_str())));
    }
    Ok(())
}

fn set(args: &Args, sel: &Select, assignments: &[String], force: bool) -> CliResult<()> {
    let mut set = BTreeMap::new();
    for a in assignments {
        let (k, v) = split_kv(a)?;
        if set.insert(k.to_string(), v.to_string()).is_some() {
            return Err(usage(format!("{k} given twice")));
        }
    }
    update(args, sel, set, Vec::new(), force)
}

fn clear(args: &Args, sel: &Select, keys: &[String]) -> CliResult<()> {
    update(args, sel, BTreeMap::new(), keys.to_vec(), false)
}

fn statuses(c: &Client, nodes: &[Node], details: bool) -> CliResult<Vec<NodeStatus>> {
    if nodes.is_empty() {
        return Ok(Vec::new());
    }
    let q = StatusQuery { nodes: Some(nodes.iter().map(|n| n.uid.clone()).collect()), details };
    Ok(c.node_status(&q)?.nodes)
}

fn state_columns(s: Option<&NodeStatus>) -> [String; 3] {
    match s {
        None => ["?".into(), "-".into(), "-".into()],
        Some(s) => {
            [s.state.name().into(), s.parent.clone().unwrap_or_else(|| "-".into()), clusterware_cli::ago(s.last_seen)]
        }
    }
}

fn status(args: &Args, sel: &Select) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(sel, &all_nodes(&c)?, false)?;
    let st = statuses(&c, &nodes, true)?;
    if args.json {
        print_json(&NodeStatusList { nodes: st });
        return Ok(());
    }
    let rows: Vec<Vec<String>> = st
        .iter()
        .map(|s| {
            let [state, parent, seen] = state_columns(Some(s));
            let (up, load, mem) = match &s.report {
                Some(r) => (
                    format!("{}h{:02}m", r.uptime_secs / 3600, r.uptime_secs / 60 % 60),
                    format!("{:.2}", r.load[0]),
                    format!(
                        "{} / {}",
                        clusterware_cli::human_bytes(r.mem_available_kib * 1024),
                        clusterware_cli::human_bytes(r.mem_total_kib * 1024)
                    ),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let cpus = s.hardware.as_ref().map_or("-".into(), |h| h.cpus.to_string());
            let agent = s.agent_version.clone().unwrap_or_else(|| "-".into());
            vec![s.name.clone(), state, parent, seen, up, load, cpus, mem, agent]
        })
        .collect();
    print_table(
        &["NAME", "STATE", "PARENT", "LAST SEEN", "UPTIME", "LOAD", "CPUS", "MEM FREE / TOTAL", "AGENT"],
        &rows,
    );
    for s in &st {
        for p in &s.problems {
            eprintln!("{}: {p}", s.name);
        }
    }
    Ok(())
}

fn script_cmd(args: &Args, sel: &Select, script: &str, wait: u64) -> CliResult<()> {
    let script = Script::parse(script).ok_or_else(|| usage(format!("unknown script {script:?}")))?;
    let c = Client::with_timeout(&args.conn, args.conn.timeout.max(wait + 15))?;
    let nodes = selected(sel, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    let req = RunScript { nodes: nodes.iter().map(|n| n.uid.clone()).collect(), script, timeout_secs: wait };
    let res = c.run_script(&req)?;
    let bad = res.results.iter().filter(|r| r.outcome != Outcome::Ok).count();
    if args.json {
        print_json(&res);
    } else {
        let lines = grouped(res.results.iter().map(|r| {
            let what = match r.outcome {
                Outcome::Ok => "ok",
                Outcome::Failed => "failed",
                Outcome::Unreachable => "unreachable",
            };
            let line = if r.message.is_empty() { what.to_string() } else { format!("{what} ({})", r.message) };
            (r.name.as_str(), line)
        }));
        for (names, line) in lines {
            outln!("{names}: {line}");
        }
    }
    if bad > 0 {
        return Err(fail(format!("{} of {} nodes did not run {}", bad, res.results.len(), script.name())));
    }
    Ok(())
}

fn power_cmd(
    args: &Args,
    sel: &Select,
    action: &str,
    soft: bool,
    boot: Option<BootDevice>,
    wait: u64,
    yes: bool,
) -> CliResult<()> {
    use clusterware_shared::power::{PowerAction, PowerOutcome, PowerRequest};
    let action = PowerAction::parse(action).ok_or_else(|| usage(format!("unknown power action {action:?}")))?;
    if soft && !matches!(action, PowerAction::Off | PowerAction::Reset) {
        return Err(usage("--soft goes with `off` or `reset`"));
    }
    if boot.is_some() && matches!(action, PowerAction::Status | PowerAction::Off) {
        return Err(usage("--pxe, --disk and --uefi-http go with on, cycle or reset"));
    }
    let c = Client::with_timeout(&args.conn, args.conn.timeout.max(wait * 2 + 15))?;
    let nodes = selected(sel, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    if nodes.len() > 1 && matches!(action, PowerAction::Off | PowerAction::Cycle | PowerAction::Reset) {
        let q = format!("Power {} {}?", action.name(), count_nodes(nodes.iter().map(|n| n.name.as_str())));
        confirm(&q, yes)?;
    }
    let req =
        PowerRequest { nodes: nodes.iter().map(|n| n.uid.clone()).collect(), action, soft, boot, timeout_secs: wait };
    let res = c.power(&req)?;
    let bad = res.results.iter().filter(|r| r.outcome != PowerOutcome::Ok).count();
    if args.json {
        print_json(&res);
    } else {
        let lines = grouped(res.results.iter().map(|r| {
            let what = match r.outcome {
                PowerOutcome::Ok => "ok",
                PowerOutcome::Failed => "failed",
                PowerOutcome::Timeout => "timeout",
            };
            let line = match (&r.power, r.outcome) {
                (Some(p), PowerOutcome::Ok) => p.to_string(),
                _ => format!("{what} ({})", r.message),
            };
            (r.name.as_str(), line)
        }));
        for (names, line) in lines {
            outln!("{names}: {line}");
        }
    }
    if bad > 0 {
        return Err(fail(format!("{} of {} nodes failed power {}", bad, res.results.len(), action.name())));
    }
    Ok(())
}

/// Results as lines of nodes that share one: `n[0-97]: ok`, `n[98-99]: unreachable (…)`, in
/// the order each line first appears.
fn grouped<'a>(results: impl Iterator<Item = (&'a str, String)>) -> Vec<(String, String)> {
    let mut order: Vec<String> = Vec::new();
    let mut names: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (name, line) in results {
        if !names.contains_key(&line) {
            order.push(line.clone());
        }
        names.entry(line).or_default().push(name);
    }
    order.into_iter().map(|line| (node_ranges(names[&line].iter().copied()), line)).collect()
}

fn rm(args: &Args, sel: &Select, yes: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(sel, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    if nodes.len() > 1 {
        confirm(&format!("Delete {}?", count_nodes(nodes.iter().map(|n| n.name.as_str()))), yes)?;
    }
    let done = c.delete_nodes(&DeleteNodes { nodes: nodes.iter().map(|n| n.uid.clone()).collect() })?;
    if args.json {
        print_json(&done);
    } else {
        outln!("deleted {}", count_nodes(done.nodes.iter().map(|n| n.name.as_str())));
    }
    Ok(())
}

fn enroll(args: &Args, sel: &Select) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(sel, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    let t = c.enroll_nodes(&DeleteNodes { nodes: nodes.iter().map(|n| n.uid.clone()).collect() })?;
    if args.json {
        print_json(&t);
    } else {
        for e in &t.tokens {
            outln!("{} {} {}", clusterware_shared::ids::shown(&e.name), e.mac, e.token);
        }
    }
    Ok(())
}

fn revoke(args: &Args, sel: &Select) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(sel, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    let done = c.revoke_nodes(&DeleteNodes { nodes: nodes.iter().map(|n| n.uid.clone()).collect() })?;
    if args.json {
        print_json(&done);
    } else {
        match &done.nodes[..] {
            [n] => outln!("revoked {}'s certificate", clusterware_shared::ids::shown(&n.name)),
            _ => outln!("revoked the certificates of {}", count_nodes(done.nodes.iter().map(|n| n.name.as_str()))),
        }
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);
