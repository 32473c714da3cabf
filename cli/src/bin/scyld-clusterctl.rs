//! `scyld-clusterctl`: cluster-wide views. `heads ls [-l] [--json]` lists the head nodes.

use clap::{Parser, Subcommand};
use clusterware_cli::{CliResult, Client, ConnOpts, print_json, print_table, run};
use clusterware_shared::api::HeadList;
use std::process::ExitCode;

/// Cluster-wide administration: the head nodes that share the cluster database.
#[derive(Parser)]
#[command(name = "scyld-clusterctl", version)]
struct Args {
    #[command(flatten)]
    conn: ConnOpts,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Head nodes
    Heads {
        #[command(subcommand)]
        cmd: HeadsCmd,
    },
}

#[derive(Subcommand)]
enum HeadsCmd {
    /// List the heads (names; -l for address, liveness, version and database membership)
    Ls {
        /// Long listing
        #[arg(short = 'l', long)]
        long: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-clusterctl", || match &args.cmd {
        Cmd::Heads { cmd: HeadsCmd::Ls { long } } => heads_ls(&args, *long),
    })
}

fn heads_ls(args: &Args, long: bool) -> CliResult<()> {
    let c = Client::new(&args.conn)?;
    let list: HeadList = c.get("/heads")?;
    if args.json {
        print_json(&list);
    } else if long {
        let rows: Vec<Vec<String>> = list
            .heads
            .iter()
            .map(|h| {
                vec![
                    h.name.clone(),
                    h.ip.to_string(),
                    if h.alive { "yes" } else { "NO" }.to_string(),
                    h.version.clone(),
                    format!("{} {}", h.db_member.backend, h.db_member.state),
                    h.db_member.id.clone().unwrap_or_else(|| "-".into()),
                    h.api_url.clone(),
                ]
            })
            .collect();
        print_table(&["NAME", "IP", "ALIVE", "VERSION", "DATABASE", "MEMBER ID", "API"], &rows);
    } else {
        for h in &list.heads {
            println!("{}", h.name);
        }
    }
    Ok(())
}
