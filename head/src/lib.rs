//! The ClusterWare head daemon as a library, so that tests and benchmarks drive the same code.
//!
//! # Layout
//! - [`daemon`]: start-up, database opening, shutdown order.
//! - [`api`]: the admin HTTP API (`/api/v1`), authentication and the error mapping.
//! - [`heads`]: head member records and lease-bound liveness.
//! - [`db`]: the cluster database abstraction and its two backends (etcd, embedded).
//! - [`registry`]: compute nodes (create, list, set/clear attributes, delete) with MAC, IP and
//!   index uniqueness enforced inside database transactions.
//! - [`dump`]: `managedb save`/`load` of the cluster's data.
//! - [`storage`]: boot files on local storage: verification, quarantine, peer download,
//!   deletion list, audits.
//! - [`dhcp`], [`tftp`]: network boot (DHCP answers from memory, iPXE binaries over TFTP).
//! - [`follow`]: in-memory copies of database prefixes kept current by watches.
//! - [`nodecache`]: every node by uid and MAC, in memory.
//! - [`status`]: the agent channel (status pushes, long polls, scripts) and node state.
//! - [`keys`]: cluster SSH keys for `update_keys`.
//! - [`power`]: power control through BMCs (ipmitool), cluster secrets.
//! - [`rebalance`]: evening out the nodes each head parents.
//! - [`args`]: the daemon's command line.
pub mod api;
pub mod args;
pub mod boot;
pub mod daemon;
pub mod db;
pub mod dhcp;
pub mod dump;
pub mod follow;
pub mod heads;
pub mod keys;
pub mod membership;
pub mod nodecache;
pub mod power;
pub mod ra;
pub mod rebalance;
pub mod registry;
pub mod status;
pub mod storage;
pub mod tftp;
pub mod transfer;

/// Seconds since the Unix epoch (0 if the clock is before it), for record timestamps.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
