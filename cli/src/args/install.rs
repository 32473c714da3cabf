//! The command line of `scyld-install`.

use crate::args::Completion;
use clap::{Parser, Subcommand};
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// Where `scyld-install` installs by default.
pub const DEFAULT_PREFIX: &str = "/opt/scyld/clusterware";

/// Install this machine as a ClusterWare head: a fresh solo head, a head joining a cluster
/// (--join), or a cluster from a configuration file (--config); or update it (--update).
///
/// It sets up ClusterWare's own files (base.ini, directories, the systemd unit) and starts the
/// installed head daemon (PREFIX/bin/clusterware-head, else the one beside this program). Install
/// the clusterware package first (it brings etcd-server, etcd-client, ipxe and ipmitool). An
/// installation that is refused or fails half-way removes everything it had created.
///
/// --update brings this head's packages up to date (from the package repository apt uses, or
/// --deb files), restarts the head on them and waits until it serves again; it is refused while
/// another head is down (unless --force). With --join, it first brings this head to the release
/// of the head joined, then joins.
#[derive(Parser)]
#[command(name = "scyld-install", version)]
pub struct Args {
    /// Join the cluster of the head at this address (IP, IP:PORT or URL)
    #[arg(long, value_name = "IP_HEAD")]
    pub join: Option<String>,
    /// IP_HEAD's database password (database.admin_pass in its base.ini) from the first line
    /// of FILE, `-` for standard input [default: asked on the terminal, without echo]
    #[arg(long, value_name = "FILE", requires = "join")]
    pub database_passwd_file: Option<PathBuf>,
    /// IP_HEAD's database password on the command line, where every user of this machine can
    /// read it (kept for the Scyld command line; prefer --database-passwd-file)
    #[arg(long, value_name = "DBPASS", requires = "join", conflicts_with = "database_passwd_file")]
    pub database_passwd: Option<String>,
    /// Update this head's ClusterWare packages, restart the head on them and wait until it serves
    /// (with --join: to the release of the head joined, before joining)
    #[arg(short = 'u', long, conflicts_with_all = ["clear_all", "config"])]
    pub update: bool,
    /// With --update: a package file to update from (clusterware, clusterware-node; repeatable)
    /// instead of the package repository
    #[arg(long, value_name = "FILE", requires = "update")]
    pub deb: Vec<PathBuf>,
    /// With --update: update even while another head is down
    #[arg(long, requires = "update")]
    pub force: bool,
    /// Remove this installation's state (configuration, database, storage) before installing
    #[arg(long)]
    pub clear_all: bool,
    /// Create the cluster from this cluster configuration file (interface, IP range, nodes)
    #[arg(long, value_name = "CLUSTER_CONFIG", conflicts_with = "join")]
    pub config: Option<PathBuf>,
    /// Database of a fresh head: embedded (solo) or etcd (a one-member cluster others can join)
    #[arg(long, value_parser = ["embedded", "etcd"], default_value = "embedded")]
    pub database: String,
    /// Installation directory
    #[arg(long, value_name = "DIR", default_value = DEFAULT_PREFIX)]
    pub prefix: PathBuf,
    /// This head's name: up to 63 letters, digits, '-', '_' or '.', starting with a letter or
    /// digit [default: the host name up to its first dot]
    #[arg(long)]
    pub name: Option<String>,
    /// This head's address on the cluster network, which nodes and other heads reach
    /// [default: the address the host name resolves to]
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// Plain-HTTP port: what firmware fetches (boot script, kernel, initramfs); with --join, the
    /// other head's port of it too
    #[arg(long, default_value_t = 80)]
    pub port: u16,
    /// HTTPS port: the API, head-to-head calls and the node agents
    #[arg(long, default_value_t = 443)]
    pub tls_port: u16,
    /// Port of this head's etcd member for the other heads' members (on --ip)
    #[arg(long, default_value_t = 2380)]
    pub peer_port: u16,
    /// Do not install a systemd unit even when systemd runs: start the head directly
    #[arg(long)]
    pub no_systemd: bool,
    /// Extra base.ini settings, KEY=VALUE (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Print a shell completion script (bash, zsh, fish), e.g. `scyld-install completion bash >
    /// /etc/bash_completion.d/scyld-install`
    Completion(Completion),
}
