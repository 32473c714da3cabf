//! The command line of `scyld-nodectl`.

use crate::ConnOpts;
use crate::args::Completion;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Manage compute nodes: register them, list them, set and clear their attributes, delete them.
#[derive(Parser)]
#[command(name = "scyld-nodectl", version)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnOpts,
    /// Nodes to act on: names with ranges (n[0-5,7]), lists (n3,n9), MACs or uids
    #[arg(short = 'i', long = "ids", value_name = "NODES", global = true, conflicts_with = "all")]
    pub ids: Option<String>,
    /// Act on all nodes
    #[arg(short = 'a', long = "all", global = true)]
    pub all: bool,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List nodes (names; -l for index, IP, MACs, state, parent head, last seen and attributes)
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
        /// Attributes to set, KEY=VALUE; mac=MAC[,MAC…], ip=IPv4 and index=N change the node
        /// itself and need exactly one node selected
        #[arg(value_name = "KEY=VALUE", required = true)]
        assignments: Vec<String>,
    },
    /// Remove attributes from the selected nodes
    Clear {
        /// Names of the attributes to remove (mac, ip and index cannot be cleared)
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Delete the selected nodes
    Rm,
    /// Make a one-time enrollment token for each selected node that does not network-boot (an
    /// agent run as a service): on the node, `clusterware-node enroll --token-file FILE` trades it
    /// for the node's certificate within 15 minutes (a network-booted node gets one from its boot
    /// script)
    Enroll,
    /// Take the selected nodes' certificates back: every head refuses them at once, until a node
    /// enrolls again (at its next network boot, or with a new token)
    Revoke,
    /// Show the state, parent head, last report and hardware of the selected nodes (all by default)
    Status,
    /// Power control through the nodes' BMCs (IPMI over LAN: _bmc_addr, _bmc_user, _bmc_pass or
    /// _bmc_pass_ref), from any head, in parallel, one result per node
    Power {
        /// status, on, off, cycle or reset
        #[arg(value_name = "ACTION", value_parser = ["status", "on", "off", "cycle", "reset"])]
        action: String,
        /// With off: ask the operating system to shut down (ACPI soft off)
        #[arg(long)]
        soft: bool,
        /// With on, cycle or reset: boot from the network next time
        #[arg(long, conflicts_with = "disk")]
        pxe: bool,
        /// With on, cycle or reset: boot from disk next time
        #[arg(long)]
        disk: bool,
        /// Seconds each BMC gets to answer
        #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
        wait: u64,
    },
    /// Run a script on the selected nodes through their agents and wait for the results:
    /// fetch_hosts (re-download the head list), update_keys (rewrite root's managed keys)
    Script {
        /// fetch_hosts or update_keys
        #[arg(value_name = "SCRIPT", value_parser = ["fetch_hosts", "update_keys"])]
        script: String,
        /// Seconds to wait for the nodes to answer
        #[arg(long, value_name = "SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
        wait: u64,
    },
    /// Print a shell completion script (bash, zsh, fish), e.g. `scyld-nodectl completion bash >
    /// /etc/bash_completion.d/scyld-nodectl`
    Completion(Completion),
}
