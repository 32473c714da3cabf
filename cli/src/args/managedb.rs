//! The command line of `managedb`.

use crate::ConnOpts;
use crate::args::Completion;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Manage the cluster database and this head's membership: list the heads, join, leave, eject,
/// recover, automatic failover, convert a solo head to etcd, save and load the cluster's data.
#[derive(Parser)]
#[command(name = "managedb", version)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnOpts,
    /// List the heads connected to the cluster database
    #[arg(long)]
    pub heads: bool,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Save the cluster's data to FILE (one JSON document, from one consistent snapshot)
    Save {
        /// The file to write (mode 0600; replaced whole, never left half-written)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Load a saved FILE into this cluster, which must hold no nodes, files, images or configs
    Load {
        /// A file `managedb save` wrote (from a cluster of either database backend)
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Join this head to the cluster of the head at IP_HEAD (this head's own data is discarded)
    Join {
        /// The head to join: IP, IP:PORT or URL (the port defaults to this head's head.port)
        ip_head: String,
        /// IP_HEAD's database password from the first line of FILE, `-` for standard input
        /// [default: database.admin_pass of this head's base.ini]
        #[arg(long, value_name = "FILE")]
        database_passwd_file: Option<PathBuf>,
        /// IP_HEAD's database password on the command line, where every user of this machine
        /// can read it (prefer --database-passwd-file)
        #[arg(long, value_name = "DBPASS", conflicts_with = "database_passwd_file")]
        database_passwd: Option<String>,
    },
    /// Remove this head from its cluster (three or more heads); it can then run no command
    /// until it joins again
    Leave,
    /// Remove another head (one that is shut down, usually) from the cluster, by IP or name
    Eject {
        /// The head to remove: its name or its IP address (not the head this command talks to)
        ip_head: String,
        /// Eject it even though it is alive and serving (a live head should `managedb leave`)
        #[arg(long)]
        force: bool,
    },
    /// Sever this head from its peers: it restarts as a cluster of its own with its copy of the
    /// database (a two-head cluster, or a lost quorum)
    Recover,
    /// Convert this solo head's embedded database into a one-member etcd cluster, data kept
    /// (a join does this by itself to the head joined)
    Convert {
        /// The database to convert to
        #[arg(value_parser = ["etcd"])]
        to: String,
    },
    /// Automatic failover (three or more heads): eject one head that stays down longer than a
    /// timeout, once, until reset
    Failover {
        #[command(subcommand)]
        action: FailoverCmd,
    },
    /// Print a shell completion script (bash, zsh, fish), e.g. `managedb completion bash >
    /// /etc/bash_completion.d/managedb`
    Completion(Completion),
}

#[derive(Subcommand)]
pub enum FailoverCmd {
    /// Turn automatic failover on
    Enable {
        /// Seconds a head must stay unreachable before it is ejected
        #[arg(long, default_value_t = clusterware_shared::api::DEFAULT_FAILOVER_SECS)]
        timeout: u64,
    },
    /// Turn automatic failover off
    Disable,
    /// Show the setting and the last automatic ejection
    Status,
    /// Arm failover again after an automatic ejection
    Reset,
}
