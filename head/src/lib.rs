//! The ClusterWare head daemon as a library, so that tests and benchmarks drive the same code.
//!
//! # Layout
//! A small [`core`] and a set of capabilities, each a folder of its own (`ARCHITECTURE.md`
//! draws the layers):
//! - [`core`]: the cluster database ([`core::db`]), the schema of keys and records
//!   ([`core::schema`]), watch-backed views ([`core::follow`], [`core::heads`]), the HTTP
//!   server and its one error mapping ([`core::http`]), the task supervisor
//!   ([`core::supervisor`]).
//! - [`registry`]: compute nodes, with MAC, IP and index uniqueness enforced inside database
//!   transactions, and the in-memory node table.
//! - [`storage`]: boot files on local storage: verification, quarantine, peer download,
//!   deletion list, audits.
//! - [`bootcfg`]: images and boot configs, export and import.
//! - [`agent_channel`]: the node agents' channel: status pushes, long polls, scripts, SSH keys.
//! - [`rebalance`]: evening out the nodes each head parents.
//! - [`membership`]: join, leave, eject, recover, automatic failover, `managedb` save/load.
//! - [`power`]: power control through BMCs (ipmitool), cluster secrets.
//! - [`netboot`]: DHCP, TFTP, router advertisements and the iPXE boot script.
//! - [`console`]: the web console (page and assets embedded) and its live-update stream.
//! - [`daemon`]: start-up, the capabilities' registration, shutdown order.
//! - [`args`]: the daemon's command line.
pub mod agent_channel;
pub mod args;
pub mod bootcfg;
pub mod console;
pub mod core;
pub mod daemon;
pub mod membership;
pub mod netboot;
pub mod power;
pub mod rebalance;
pub mod registry;
pub mod storage;
