//! The ClusterWare head daemon as a library, so that tests and benchmarks drive the same code.
//!
//! # Layout
//! - [`db`]: the cluster database abstraction and its two backends (etcd, embedded).
pub mod db;
