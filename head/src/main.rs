//! `clusterware-head`: the head daemon (run by systemd as `clusterware.service`).
//! Exit codes: 0 after a clean shutdown, 1 when it cannot start or fails, 2 on usage errors.

use clap::Parser;
use clusterware_head::daemon;
use clusterware_shared::config::{self, Config};
use std::path::PathBuf;
use std::process::ExitCode;

/// The ClusterWare head daemon: cluster database, admin API and node registry.
#[derive(Parser)]
#[command(name = "clusterware-head", version)]
struct Args {
    /// Configuration file [default: $CLUSTERWARE_CONFIG, else /opt/scyld/clusterware/conf/base.ini]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Check the configuration, print the effective settings and exit
    #[arg(long)]
    check_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = config::resolve_path(args.config.as_deref());
    let loaded = match Config::load(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        eprintln!("clusterware-head: warning: {w}");
    }
    let cfg = loaded.config;
    let name = match daemon::head_name(&cfg) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check_config {
        if let Err(e) = cfg.require_admin_pass() {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
        println!("configuration {} is valid", cfg.path.display());
        println!("head.name = {name}");
        println!("database.type = {}", cfg.database_type.as_str());
        println!("head.port = {}", cfg.head_port);
        println!("logging.dir = {}", cfg.log_dir.display());
        return ExitCode::SUCCESS;
    }
    let _guard = match daemon::init_logging(&cfg, &name) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterware-head: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(daemon::run(cfg, name)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("clusterware-head: error: {e}");
            ExitCode::from(1)
        }
    }
}
