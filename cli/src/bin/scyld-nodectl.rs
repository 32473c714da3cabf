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
//! ```

use clap::{Parser, Subcommand};
use clusterware_cli::{CliResult, Client, ConnOpts, fail, print_json, print_table, run, select_nodes, usage};
use clusterware_shared::api::{CreateNodes, DeleteNodes, Node, NodeList, NodeSpec, UpdateNodes};
use clusterware_shared::ids::{MacAddr, ipv4_offset, parse_ipv4, validate_attr};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

/// Manage compute nodes: register them, list them, set and clear their attributes, delete them.
#[derive(Parser)]
#[command(name = "scyld-nodectl", version)]
struct Args {
    #[command(flatten)]
    conn: ConnOpts,
    /// Nodes to act on: names with ranges (n[0-5,7]), lists (n3,n9), MACs or uids
    #[arg(short = 'i', long = "ids", value_name = "NODES", global = true, conflicts_with = "all")]
    ids: Option<String>,
    /// Act on all nodes
    #[arg(short = 'a', long = "all", global = true)]
    all: bool,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List nodes (names; -l for index, MACs, IP and attributes)
    Ls {
        /// Long listing
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Register nodes. Fields: mac= (repeat for more NICs), ip= (default: after the highest
    /// node IP), index= (default: lowest free); anything else is an attribute
    Create {
        /// Create this many nodes, counting MAC, IP and index up from the values given
        #[arg(long, value_name = "N", conflicts_with = "csv")]
        count: Option<u32>,
        /// Create one node per line `mac[,ip[,index]]` of this file (a `mac,…` header is allowed)
        #[arg(long, value_name = "FILE")]
        csv: Option<PathBuf>,
        /// key=value fields and attributes
        #[arg(value_name = "KEY=VALUE")]
        fields: Vec<String>,
    },
    /// Set attributes (and mac, ip or index of a single node) on the selected nodes
    Set {
        #[arg(value_name = "KEY=VALUE", required = true)]
        assignments: Vec<String>,
    },
    /// Remove attributes from the selected nodes
    Clear {
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Delete the selected nodes
    Rm,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-nodectl", || match &args.cmd {
        Cmd::Ls { long } => ls(&args, *long),
        Cmd::Create { count, csv, fields } => create(&args, *count, csv.as_ref(), fields),
        Cmd::Set { assignments } => set(&args, assignments),
        Cmd::Clear { keys } => clear(&args, keys),
        Cmd::Rm => rm(&args),
    })
}

fn split_kv(s: &str) -> CliResult<(&str, &str)> {
    s.split_once('=').ok_or_else(|| usage(format!("{s:?} is not key=value")))
}

fn all_nodes(c: &Client) -> CliResult<Vec<Node>> {
    Ok(c.get::<NodeList>("/nodes")?.nodes)
}

/// The selected nodes; `required` makes `-i` or `-a` mandatory.
fn selected(args: &Args, nodes: &[Node], required: bool) -> CliResult<Vec<Node>> {
    match (&args.ids, args.all) {
        (Some(sel), _) => Ok(select_nodes(nodes, sel)?.into_iter().cloned().collect()),
        (None, true) => Ok(nodes.to_vec()),
        (None, false) if required => Err(usage("select nodes with -i NODES or -a")),
        (None, false) => Ok(nodes.to_vec()),
    }
}

fn ls(args: &Args, long: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(args, &all_nodes(&c)?, false)?;
    if args.json {
        print_json(&NodeList { nodes });
    } else if long {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                let macs: Vec<String> = n.macs.iter().map(|m| m.to_string()).collect();
                let attrs: Vec<String> = n.attributes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                vec![n.name.clone(), n.index.to_string(), n.ip.to_string(), macs.join(","), attrs.join(" ")]
            })
            .collect();
        print_table(&["NAME", "INDEX", "IP", "MAC", "ATTRIBUTES"], &rows);
    } else {
        for n in &nodes {
            println!("{}", n.name);
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

fn create(args: &Args, count: Option<u32>, csv: Option<&PathBuf>, fields: &[String]) -> CliResult<()> {
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
    let created: NodeList = c.post("/nodes", &CreateNodes { nodes: specs })?;
    if args.json {
        print_json(&created);
    } else {
        for n in &created.nodes {
            let macs: Vec<String> = n.macs.iter().map(|m| m.to_string()).collect();
            println!("created {} ({}, {})", n.name, macs.join(","), n.ip);
        }
    }
    Ok(())
}

fn update(args: &Args, set: BTreeMap<String, String>, clear: Vec<String>) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(args, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    let req = UpdateNodes { nodes: nodes.iter().map(|n| n.uid.clone()).collect(), set, clear };
    let done: NodeList = c.post("/nodes/update", &req)?;
    if args.json {
        print_json(&done);
    } else {
        let names: Vec<&str> = done.nodes.iter().map(|n| n.name.as_str()).collect();
        println!("updated {}", names.join(" "));
    }
    Ok(())
}

fn set(args: &Args, assignments: &[String]) -> CliResult<()> {
    let mut set = BTreeMap::new();
    for a in assignments {
        let (k, v) = split_kv(a)?;
        if set.insert(k.to_string(), v.to_string()).is_some() {
            return Err(usage(format!("{k} given twice")));
        }
    }
    update(args, set, Vec::new())
}

fn clear(args: &Args, keys: &[String]) -> CliResult<()> {
    update(args, BTreeMap::new(), keys.to_vec())
}

fn rm(args: &Args) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let nodes = selected(args, &all_nodes(&c)?, true)?;
    if nodes.is_empty() {
        return Err(fail("there are no nodes"));
    }
    let done: NodeList =
        c.post("/nodes/delete", &DeleteNodes { nodes: nodes.iter().map(|n| n.uid.clone()).collect() })?;
    if args.json {
        print_json(&done);
    } else {
        for n in &done.nodes {
            println!("deleted {}", n.name);
        }
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);
