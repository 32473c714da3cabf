//! The command line of `scyld-modimg`.

use clap::{Parser, Subcommand};
use clusterware_cli::ConnOpts;
use clusterware_cli::args::Completion;
use std::path::PathBuf;

/// Build node root images with the ClusterWare agent baked in, and register them with the head.
#[derive(Parser)]
#[command(name = "scyld-modimg", version)]
pub struct Args {
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Pack a root file system (a directory or a tar archive) into an image with the agent in it
    Build {
        /// The root: a directory, or a .tar / .tar.gz archive
        #[arg(long, value_name = "DIR|TAR")]
        from: PathBuf,
        /// The static agent to bake in [default: the packaged one, ../libexec/clusterware-node
        /// beside this program (/opt/scyld/clusterware/libexec/clusterware-node); `make agent`
        /// builds target/x86_64-unknown-linux-gnu/agent/clusterware-node]
        #[arg(long, value_name = "PATH")]
        agent: Option<PathBuf>,
        /// Where to write the image
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Upload an image file and create the image record (scyld-imgctl create) under NAME
    Register {
        #[command(flatten)]
        conn: ConnOpts,
        /// The image file `scyld-modimg build` wrote (uploaded as a rootfs boot file)
        #[arg(value_name = "IMAGE")]
        image: PathBuf,
        /// Name of the new image (1-128 letters, digits, '-', '_' or '.', starting with a letter or
        /// digit)
        #[arg(long)]
        name: String,
        /// Free text describing the image, shown by `scyld-imgctl ls -l` [default: empty]
        #[arg(long, default_value = "", hide_default_value = true)]
        description: String,
    },
    /// Print a shell completion script (bash, zsh, fish), e.g. `scyld-modimg completion bash >
    /// /etc/bash_completion.d/scyld-modimg`
    Completion(Completion),
}
