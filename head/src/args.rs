//! The command line of `clusterware-head`.

use clap::Parser;
use std::path::PathBuf;

/// The ClusterWare head daemon: cluster database, admin API and node registry.
#[derive(Parser)]
#[command(name = "clusterware-head", version)]
pub struct Args {
    /// Configuration file [default: $CLUSTERWARE_CONFIG, else /opt/scyld/clusterware/conf/base.ini]
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Check the configuration, print the effective settings and exit
    #[arg(long)]
    pub check_config: bool,
}
