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
    /// Hand the nodes of the head running with this configuration to the other heads (through
    /// the database: also for a head of an older release, which does not when it stops), then
    /// exit; rebalancing gives the head nodes back once it restarted. The package's postinst
    /// runs this before it restarts a head on new binaries
    #[arg(long, conflicts_with = "check_config")]
    pub hand_over: bool,
    /// With --hand-over: how long to wait for the nodes to report to their new heads
    #[arg(long, value_name = "SECS", default_value_t = 10, requires = "hand_over",
          value_parser = clap::value_parser!(u64).range(1..=600))]
    pub within: u64,
    /// With --hand-over: the result as JSON
    #[arg(long, requires = "hand_over")]
    pub json: bool,
}
