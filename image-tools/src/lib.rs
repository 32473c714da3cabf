//! The command line of `scyld-modimg`, as a library so that `cw-docgen` can write its man pages
//! and completions. Only the clap definitions live here: the program is `src/main.rs`.

pub mod args;
