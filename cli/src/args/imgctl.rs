//! The command line of `scyld-imgctl`.

use crate::ConnOpts;
use crate::args::Completion;
use clap::{Parser, Subcommand};

/// Manage node root images: each names its root-filesystem file (and optional extra files).
#[derive(Parser)]
#[command(name = "scyld-imgctl", version)]
pub struct Args {
    #[command(flatten)]
    pub conn: ConnOpts,
    #[command(flatten)]
    pub sel: Selected,
    /// Print JSON instead of text
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The image a command acts on: given before the command (`scyld-imgctl -i xyzImage ls`) or
/// after it, only to commands that act on one.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Selected {
    /// The image to act on, by name
    #[arg(short = 'i', long = "ids", alias = "image", value_name = "NAME", help_heading = "Selection")]
    pub ids: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List images (names; -l for their files with sizes and checksums)
    Ls {
        #[command(flatten)]
        sel: Selected,
        /// Long listing: the description and each file's name, id, size and SHA-256
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Create an image from a root-filesystem file (a local path is uploaded; a file id is used as is)
    Create {
        /// Name of the new image (1-128 letters, digits, '-', '_' or '.', starting with a letter or
        /// digit)
        #[arg(long)]
        name: String,
        /// Root filesystem: a local file or the id of an uploaded file
        #[arg(long, value_name = "PATH|ID")]
        file: String,
        /// Extra files that travel with the image (paths or ids)
        #[arg(long = "extra", value_name = "PATH|ID")]
        extra: Vec<String>,
        /// Free text describing the image, shown by `ls -l` [default: empty]
        #[arg(long, default_value = "", hide_default_value = true)]
        description: String,
    },
    /// Copy the image selected with -i under a new name (the files are shared)
    Clone {
        #[command(flatten)]
        sel: Selected,
        /// Name of the copy
        #[arg(long)]
        name: String,
    },
    /// Delete the image selected with -i (refused while a boot config uses it, unless --force)
    Rm {
        #[command(flatten)]
        sel: Selected,
        /// Delete it even while boot configs name it (they are left naming a missing image)
        #[arg(long)]
        force: bool,
    },
    /// Print a shell completion script (bash, zsh, fish), e.g. `scyld-imgctl completion bash >
    /// /etc/bash_completion.d/scyld-imgctl`
    Completion(Completion),
}
