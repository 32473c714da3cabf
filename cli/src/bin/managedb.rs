//! `managedb`: the cluster database as seen from this head. `--heads` lists the heads connected
//! to the shared database; `save FILE` and `load FILE` copy the cluster's data (nodes, files'
//! records, images, boot configs, settings) as one JSON document, loadable into an empty cluster
//! of either backend.

use clap::{Parser, Subcommand};
use clusterware_cli::{Client, ConnOpts, fail, print_json, print_table, run, usage};
use clusterware_shared::api::{DatabaseDump, HeadList};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

/// Manage the cluster database: list the connected heads, save and load the cluster's data.
#[derive(Parser)]
#[command(name = "managedb", version)]
struct Args {
    #[command(flatten)]
    conn: ConnOpts,
    /// List the heads connected to the cluster database
    #[arg(long)]
    heads: bool,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Save the cluster's data to FILE (one JSON document, from one consistent snapshot)
    Save { file: PathBuf },
    /// Load a saved FILE into this cluster, which must hold no nodes, files, images or configs
    Load { file: PathBuf },
}

fn main() -> ExitCode {
    let args = Args::parse();
    run("managedb", || match (&args.cmd, args.heads) {
        (None, true) => heads(&args),
        (Some(Cmd::Save { file }), false) => save(&args, file),
        (Some(Cmd::Load { file }), false) => load(&args, file),
        (Some(_), true) => Err(usage("--heads goes alone")),
        (None, false) => Err(usage("give --heads, save FILE or load FILE (see --help)")),
    })
}

fn heads(args: &Args) -> clusterware_cli::CliResult<()> {
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
}

fn save(args: &Args, file: &PathBuf) -> clusterware_cli::CliResult<()> {
    let c = Client::new(&args.conn)?;
    let d: DatabaseDump = c.get("/database")?;
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
        println!(
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
    let r: serde_json::Value = c.put_json("/database", &d)?;
    if args.json {
        print_json(&r);
    } else {
        println!("loaded {} keys from {}", r["loaded"], file.display());
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);
