//! The command line of `clusterware-node`.

use clap::{Parser, Subcommand};
use clusterware_shared::ids::MacAddr;
use std::net::Ipv4Addr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "clusterware-node",
    version,
    about = "ClusterWare compute-node agent: keeps the head list, pushes status to the parent head, fails over to the next head, runs fetch_hosts and update_keys",
    after_help = "The parent comes from the kernel command line (cw.parent=, cw.heads=, cw.mac= or BOOTIF=) when the node was network-booted, else from the heads file, else from the configuration (heads=, parent=)."
)]
pub struct Cli {
    /// Agent configuration (key = value lines) [default: /etc/clusterware/node.conf, if present]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the agent (the clusterware-node service)
    Run,
    /// Download the head list from the parent once and store it
    FetchHosts,
    /// Rewrite the managed block of root's authorized_keys from the parent once
    UpdateKeys,
    /// Show the running agent's parent, head list and last push
    Status {
        /// Print JSON
        #[arg(long)]
        json: bool,
    },
    /// Trade a one-time enrollment token (`scyld-nodectl -i NODE enroll` on a head) for this
    /// node's certificate, which heads require of every node request (a network-booted node
    /// enrolls by itself)
    Enroll {
        /// The token's file (`-`: standard input)
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
    /// Boot the node as /init in the initramfs: drivers, DHCP, root image from the heads, switch
    /// root (also chosen automatically when running as process 1)
    Init,
    /// Simulate many nodes in one process (tests and benchmarks)
    Sim {
        /// Number of nodes
        #[arg(long, default_value_t = 100)]
        nodes: u32,
        /// Heads to start with, parent first (comma-separated URLs); with --boot, each node's
        /// boot script names its heads
        #[arg(long, value_name = "URLS", required_unless_present = "boot")]
        heads: Option<String>,
        /// Address of the first node (on loopback); node i uses this plus i. Each must be the
        /// node's registered IP.
        #[arg(long, value_name = "IP")]
        ip_start: Ipv4Addr,
        /// MAC of the first node; node i uses this plus i
        #[arg(long, value_name = "MAC")]
        mac_start: MacAddr,
        /// Directory for the nodes' files and summary.json
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        /// Seconds between status pushes until the heads say otherwise
        #[arg(long, default_value_t = 10)]
        status_secs: u32,
        /// Push deadline in milliseconds
        #[arg(long, default_value_t = 3000)]
        push_timeout_ms: u64,
        /// Spread the first pushes over this many seconds
        #[arg(long, default_value_t = 1.0)]
        ramp_secs: f64,
        /// Worker threads of the simulator's runtime
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Push every this many milliseconds whatever the heads say (to offer a set load)
        #[arg(long, value_name = "MS")]
        push_interval_ms: Option<u64>,
        /// The cluster CA that https:// heads are checked against (a head's tls/ca.pem)
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// The nodes' enrollment tokens: the JSON of `scyld-nodectl enroll --json`; each node
        /// trades its own for its certificate at start
        #[arg(long, value_name = "FILE", requires = "ca_file")]
        enroll_file: Option<PathBuf>,
        /// Every node trades its token before any agent starts; the agents then start over
        /// --ramp-secs with their certificates, as nodes that booted earlier do
        #[arg(long, requires = "enroll_file")]
        enroll_first: bool,
        /// Boot storm: each node first boots as after DHCP from these heads' plain-HTTP boot
        /// URLs (comma-separated, `http://IP:PORT`; node i starts with the i-th, round robin):
        /// boot script, kernel, initramfs, CA, enrollment, root image checked and unpacked as it
        /// arrives, from the parent or the other heads; then the agent runs. Timings, retries and
        /// the heads that served each image go to summary.json
        #[arg(long, value_name = "URLS", conflicts_with_all = ["ca_file", "enroll_file"])]
        boot: Option<String>,
        /// With --boot: a node that has not verified its image after this long has failed
        #[arg(long, default_value_t = 900, value_name = "SECS")]
        boot_timeout_secs: u64,
    },
}
