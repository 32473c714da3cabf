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
    #[command(flatten)]
    pub sel: Select,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Which nodes a command acts on: given before the command (`scyld-nodectl -i n3 set …`, the
/// Scyld order) or after it (`scyld-nodectl set -i n3 …`), only to commands that take nodes.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Select {
    /// Nodes to act on: names with ranges (n[0-5,7]), lists (n3,n9), MACs or uids
    #[arg(short = 'i', long = "ids", value_name = "NODES", conflicts_with = "all", help_heading = "Node selection")]
    pub ids: Option<String>,
    /// Act on all nodes
    #[arg(short = 'a', long = "all", help_heading = "Node selection")]
    pub all: bool,
}

impl Select {
    /// The selection given before the command and the one given after it, as one; both at once
    /// is a usage error.
    pub fn merged(&self, after: &Select) -> Result<Select, String> {
        let before_given = self.ids.is_some() || self.all;
        let after_given = after.ids.is_some() || after.all;
        if before_given && after_given {
            return Err("select the nodes once: -i/-a before the command or after it, not both".into());
        }
        Ok(if after_given { after.clone() } else { self.clone() })
    }

    pub fn given(&self) -> bool {
        self.ids.is_some() || self.all
    }
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List nodes (names; -l for index, IP, MACs, state, parent head, last seen and attributes)
    Ls {
        #[command(flatten)]
        sel: Select,
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
        /// Set attributes that name a boot config, head or secret that does not exist (yet)
        #[arg(long)]
        force: bool,
    },
    /// Set attributes (and mac, ip or index of a single node) on the selected nodes
    Set {
        #[command(flatten)]
        sel: Select,
        /// Set attributes that name a boot config, head or secret that does not exist (yet)
        #[arg(long)]
        force: bool,
        /// Attributes to set, KEY=VALUE; mac=MAC[,MAC…], ip=IPv4 and index=N change the node
        /// itself and need exactly one node selected
        #[arg(value_name = "KEY=VALUE", required = true)]
        assignments: Vec<String>,
    },
    /// Remove attributes from the selected nodes
    Clear {
        #[command(flatten)]
        sel: Select,
        /// Names of the attributes to remove (mac, ip and index cannot be cleared)
        #[arg(value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
    /// Delete the selected nodes (asks first when more than one is selected)
    Rm {
        #[command(flatten)]
        sel: Select,
        /// Do not ask: needed to delete more than one node without a terminal
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Make a one-time enrollment token for each selected node that does not network-boot (an
    /// agent run as a service): on the node, `clusterware-node enroll --token-file FILE` trades it
    /// for the node's certificate within 15 minutes (a network-booted node gets one from its boot
    /// script)
    Enroll {
        #[command(flatten)]
        sel: Select,
    },
    /// Take the selected nodes' certificates back: every head refuses them at once, until a node
    /// enrolls again (at its next network boot, or with a new token)
    Revoke {
        #[command(flatten)]
        sel: Select,
    },
    /// Show the state, parent head, last report and hardware of the selected nodes (all by default)
    Status {
        #[command(flatten)]
        sel: Select,
    },
    /// Power control through the nodes' BMCs (_bmc_addr, _bmc_user, _bmc_pass or _bmc_pass_ref;
    /// IPMI over LAN, or Redfish over HTTPS with _bmc_type=redfish), from any head, in parallel,
    /// one result per node
    Power {
        #[command(flatten)]
        sel: Select,
        /// status, on, off, cycle or reset
        #[arg(value_name = "ACTION", value_parser = ["status", "on", "off", "cycle", "reset"])]
        action: String,
        /// With off: ask the operating system to shut down (ACPI soft off); with reset: to restart
        /// (Redfish BMCs only)
        #[arg(long)]
        soft: bool,
        /// With on, cycle or reset: boot from the network (PXE) next time
        #[arg(long, conflicts_with_all = ["disk", "uefi_http"])]
        pxe: bool,
        /// With on, cycle or reset: boot from disk next time
        #[arg(long, conflicts_with = "uefi_http")]
        disk: bool,
        /// With on, cycle or reset: boot over UEFI HTTP next time (Redfish BMCs only)
        #[arg(long)]
        uefi_http: bool,
        /// Seconds each BMC gets to answer
        #[arg(long, value_name = "SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=600))]
        wait: u64,
        /// Do not ask: needed for off, cycle or reset of more than one node without a terminal
        #[arg(short = 'y', long)]
        yes: bool,
    },
    /// Run a script on the selected nodes through their agents and wait for the results:
    /// fetch_hosts (re-download the head list), update_keys (rewrite root's managed keys)
    Script {
        #[command(flatten)]
        sel: Select,
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
