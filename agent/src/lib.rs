//! The command line of `clusterware-node`, as a library so that `cw-docgen` can write its man page
//! and completions. Only the clap definitions live here: the agent itself is the binary.

pub mod args;
