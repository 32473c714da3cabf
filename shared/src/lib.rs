//! Types shared by every ClusterWare program: the head daemon, the node agent and the
//! administrator CLIs all use these structs, so the wire protocol cannot drift between them.
//!
//! # Layout
//! - [`ids`]: MAC addresses, head names, node names and the attribute-key rules.
//! - [`select`]: node selectors as administrators type them (`n[0-5,7]`, `n3,n9`).
//! - [`config`]: `base.ini` parsing, defaults and validation.
//! - [`agent`]: the node agent's protocol and node status as administrators see it.
//! - [`api`]: the `/api/v1` request and response bodies, and the `{kind, message}` error shape.
//! - [`auth`]: the admin credential derived from `database.admin_pass`.
//! - [`power`]: power control through BMCs, BMC attributes, cluster secrets.
//! - [`release`]: versions, and which agents and heads work together across releases.
//! - [`cpio`]: the newc archive format (initramfs, node root images).
//! - [`sys`]: the open-files limit, the machine's IPv4 addresses.
//! - [`fsutil`]: file-writing helpers (early writeback for large files).
//! - [`suggest`]: "did you mean …?" for names that name nothing.
//! - `pki` (feature `pki`): the cluster CA and the certificates it issues.
//!
//! This crate must stay free of async runtimes, HTTP stacks and database clients: the static
//! node agent links it.

pub mod agent;
pub mod api;
pub mod auth;
pub mod config;
pub mod cpio;
pub mod fsutil;
pub mod ids;
#[cfg(feature = "pki")]
pub mod pki;
pub mod power;
pub mod release;
pub mod select;
pub mod suggest;
pub mod sys;

/// The version every program reports (heads record it in the database).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
