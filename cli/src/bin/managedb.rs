//! `managedb`: the cluster database's membership as seen from this head. `--heads` lists the
//! heads connected to the shared database.

use clap::Parser;
use clusterware_cli::{Client, ConnOpts, print_json, print_table, run};
use clusterware_shared::api::HeadList;
use std::process::ExitCode;

/// Manage this head's membership of the cluster database.
#[derive(Parser)]
#[command(name = "managedb", version)]
struct Args {
    #[command(flatten)]
    conn: ConnOpts,
    /// List the heads connected to the cluster database
    #[arg(long, required = true)]
    heads: bool,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    run("managedb", || {
        let c = Client::new(&args.conn)?;
        let list: HeadList = c.get("/heads")?;
        if args.json {
            print_json(&list);
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
                ]
            })
            .collect();
        print_table(&["NAME", "IP", "STATE", "DATABASE"], &rows);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn arguments_are_consistent() {
        <super::Args as clap::CommandFactory>::command().debug_assert();
    }
}
