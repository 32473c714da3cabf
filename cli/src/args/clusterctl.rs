//! The command line of `scyld-clusterctl`.

use crate::ConnOpts;
use crate::args::Completion;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Cluster-wide administration: the head nodes that share the cluster database, and the boot
/// files every head keeps.
#[derive(Parser)]
#[command(name = "scyld-clusterctl", version)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnOpts,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Head nodes
    Heads {
        #[command(subcommand)]
        cmd: HeadsCmd,
    },
    /// Boot files (kernels, initramfs, root images) kept by every head
    Files {
        #[command(subcommand)]
        cmd: FilesCmd,
    },
    /// Even out the nodes each head parents (one of --dry-run or --now): show the moves a round would make now
    /// (--dry-run), or make them (--now). Heads also do this by themselves every
    /// rebalance.interval seconds
    #[command(group = clap::ArgGroup::new("when").required(true))]
    Rebalance {
        /// Show the moves without making them
        #[arg(long, group = "when")]
        dry_run: bool,
        /// Make the moves now
        #[arg(long, group = "when")]
        now: bool,
    },
    /// Secrets (BMC passwords) that nodes name with _bmc_pass_ref=NAME; values are never shown
    Secrets {
        #[command(subcommand)]
        cmd: SecretsCmd,
    },
    /// Named admin API tokens: give one to each person or script (CLUSTERWARE_TOKEN) and revoke
    /// it when they should no longer manage the cluster
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// SSH public keys for root on every node (with the heads' own root keys), installed by
    /// `scyld-nodectl script update_keys`
    Keys {
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// The event log: admin actions (which token, what, from where, the outcome) and cluster events
    /// (heads joining, leaving, ejected, failing over; nodes up, down, re-parented; files
    /// quarantined or fetched from a peer; imports), the same on every head
    Events {
        /// Keep printing events as they happen (Ctrl-C ends)
        #[arg(short, long)]
        follow: bool,
        /// Only events since: an age (90s, 15m, 2h, 7d), a UTC time (2026-12-02T08:00:00Z, or
        /// 2026-12-02 for midnight), or Unix seconds
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only events of this kind
        #[arg(long, value_enum)]
        kind: Option<EventKindArg>,
        /// At most this many events (the latest), before following
        #[arg(short = 'n', long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
    },
    /// Print a shell completion script (bash, zsh, fish), e.g. `scyld-clusterctl completion bash >
    /// /etc/bash_completion.d/scyld-clusterctl`
    Completion(Completion),
}

/// The kinds of event (`--kind`).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum EventKindArg {
    /// Changes made through the admin API
    Admin,
    /// Heads joining, leaving, ejected, failover
    Head,
    /// Nodes up, down, changing parent
    Node,
    /// Boot files quarantined or fetched from a peer
    File,
    /// Boot configurations imported
    Import,
}

impl From<EventKindArg> for clusterware_shared::api::EventKind {
    fn from(k: EventKindArg) -> Self {
        use clusterware_shared::api::EventKind as K;
        match k {
            EventKindArg::Admin => K::Admin,
            EventKindArg::Head => K::Head,
            EventKindArg::Node => K::Node,
            EventKindArg::File => K::File,
            EventKindArg::Import => K::Import,
        }
    }
}

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Create a token; it is printed this once (the cluster keeps only its hash)
    Create {
        /// The token's name (letters, digits, '-', '_', '.'; up to 64), e.g. who holds it
        name: String,
    },
    /// List the tokens' names, when and from where they were created
    Ls,
    /// Revoke tokens: every head refuses them from then on
    Revoke {
        /// Names of the tokens to revoke
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Set (or replace) a secret; the value is read from the terminal without echo, or from
    /// the first line of stdin
    Set {
        /// The secret's name, as nodes give it in _bmc_pass_ref (letters, digits, '-', '_', '.';
        /// up to 64)
        name: String,
    },
    /// List the secrets' names and when they were set
    Ls,
    /// Remove secrets
    Rm {
        /// Names of the secrets to remove
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum KeysCmd {
    /// Add a public key under a name
    Add {
        /// A name for the key (letters, digits, '-', '_', '.')
        name: String,
        /// The key line (`ssh-ed25519 AAAA… comment`); or use --file
        #[arg(value_name = "KEY", conflicts_with = "file", required_unless_present = "file")]
        key: Option<String>,
        /// Read the key from this .pub file
        #[arg(long, value_name = "PATH")]
        file: Option<PathBuf>,
    },
    /// List the keys (names; -l for the keys themselves)
    Ls {
        /// Long listing
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Remove keys by name
    Rm {
        /// Names of the keys to remove
        #[arg(value_name = "NAME", required = true)]
        names: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum HeadsCmd {
    /// List the heads (names; -l for address, liveness, version, database membership, nodes
    /// parented, storage)
    Ls {
        /// Long listing
        #[arg(short = 'l', long)]
        long: bool,
        /// Sizes in bytes rather than KiB, MiB, GiB
        #[arg(long)]
        bytes: bool,
    },
}

#[derive(Subcommand)]
pub enum FilesCmd {
    /// List the files (ids and names; -l for kind, size, copies and checksum)
    Ls {
        /// Long listing
        #[arg(short = 'l', long)]
        long: bool,
        /// Sizes in bytes rather than KiB, MiB, GiB
        #[arg(long)]
        bytes: bool,
    },
    /// Upload a file to the head (which stores it and records its size and SHA-256)
    Upload {
        /// The local file to upload (a regular file)
        #[arg(value_name = "PATH")]
        path: PathBuf,
        /// Name to record (default: the file's name)
        #[arg(long)]
        name: Option<String>,
        /// kernel, initramfs, rootfs or other
        #[arg(long, default_value = "other")]
        kind: String,
    },
    /// Delete files from the cluster (every head removes its copy); refused for files an image
    /// or boot config uses, unless --force
    Rm {
        /// The files to delete: ids (32 hex digits, as `files ls` shows them) or names that only one
        /// file has
        #[arg(value_name = "ID|NAME", required = true)]
        ids: Vec<String>,
        /// Delete even files that images or boot configs use (they are left naming a missing
        /// file)
        #[arg(long)]
        force: bool,
    },
}
