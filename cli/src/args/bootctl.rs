//! The command line of `scyld-bootctl`.

use crate::ConnOpts;
use crate::args::Completion;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Manage boot configurations (kernel, initramfs, image, kernel command line), and copy them
/// between clusters with export and import.
#[derive(Parser)]
#[command(name = "scyld-bootctl", version)]
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

/// The boot config a command acts on: given before the command (`scyld-bootctl -i xyzBoot ls`)
/// or after it, only to commands that act on one.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Selected {
    /// The boot config to act on, by name
    #[arg(short = 'i', long = "ids", alias = "boot-config-name", value_name = "NAME", help_heading = "Selection")]
    pub ids: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// List boot configs (names; -l for image, files and command line)
    Ls {
        #[command(flatten)]
        sel: Selected,
        /// Long listing: image, kernel, initramfs and command line (with -i also the files'
        /// sizes and checksums, and the nodes that use it)
        #[arg(short = 'l', long)]
        long: bool,
    },
    /// Create a boot config (local kernel and initramfs files are uploaded; file ids are used as is)
    Create {
        /// Name of the new boot config (1-128 letters, digits, '-', '_' or '.', starting with a
        /// letter or digit)
        #[arg(long)]
        name: String,
        /// The kernel: a local file (uploaded) or the id of an uploaded file
        #[arg(long, value_name = "PATH|ID")]
        kernel: String,
        /// The initramfs (scyld-mkinitramfs): a local file (uploaded) or the id of an uploaded file
        #[arg(long, value_name = "PATH|ID")]
        initramfs: String,
        /// The root image nodes boot (scyld-imgctl ls) [default: none, the initramfs alone]
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
        /// Kernel command line, e.g. "console=ttyS0 quiet"; the head appends the cw.* parameters
        /// the agent needs [default: empty]
        #[arg(long, default_value = "", hide_default_value = true, allow_hyphen_values = true)]
        cmdline: String,
        /// Free text describing the boot config, shown by `ls -l` [default: empty]
        #[arg(long, default_value = "", hide_default_value = true)]
        description: String,
        /// UEFI Secure Boot: x64 UEFI PXE clients get Debian's signed shim and network GRUB over
        /// TFTP instead of iPXE (the kernel must be signed: Debian's is; heads need shim-signed and
        /// grub-efi-amd64-signed, see secure_boot.* in the head's configuration)
        #[arg(long)]
        secure_boot: bool,
    },
    /// Change the boot config selected with -i
    Update {
        #[command(flatten)]
        sel: Selected,
        /// New kernel: a local file (uploaded) or the id of an uploaded file
        #[arg(long, value_name = "PATH|ID")]
        kernel: Option<String>,
        /// New initramfs: a local file (uploaded) or the id of an uploaded file
        #[arg(long, value_name = "PATH|ID")]
        initramfs: Option<String>,
        /// Image name ("" removes it)
        #[arg(long, value_name = "NAME")]
        image: Option<String>,
        /// New kernel command line (replaces the old one; "" empties it)
        #[arg(long, allow_hyphen_values = true)]
        cmdline: Option<String>,
        /// New description ("" empties it)
        #[arg(long)]
        description: Option<String>,
        /// Turn UEFI Secure Boot (signed shim and GRUB over TFTP, see create) on or off
        #[arg(long, value_name = "yes|no", value_parser = clap::builder::BoolishValueParser::new())]
        secure_boot: Option<bool>,
    },
    /// Copy the boot config selected with -i under a new name
    Clone {
        #[command(flatten)]
        sel: Selected,
        /// Name of the copy
        #[arg(long)]
        name: String,
    },
    /// Delete the boot config selected with -i (refused while nodes use it, unless --force)
    Rm {
        #[command(flatten)]
        sel: Selected,
        /// Delete it even while nodes name it or it is the cluster default (the default is
        /// then cleared)
        #[arg(long)]
        force: bool,
    },
    /// Write the boot config selected with -i, its image and all their files to one file
    Export {
        #[command(flatten)]
        sel: Selected,
        /// Output file [default: NAME.export]
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Import an export file into this cluster
    Import {
        /// The file `scyld-bootctl export` wrote
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Name the imported image this
        #[arg(long, value_name = "NEW_IMAGE")]
        image: Option<String>,
        /// Name the imported boot config this
        #[arg(long = "boot-config", value_name = "NEW_CONFIG")]
        boot_config: Option<String>,
        /// Import the boot config without its image
        #[arg(long)]
        no_recurse: bool,
        /// Only check the file and show what would be added, renamed or reused
        #[arg(long)]
        dry_run: bool,
    },
    /// Show or set the boot config of nodes that have no _boot_config attribute
    Default {
        /// The boot config to make the default; without it (and without --clear), show the
        /// current default
        #[arg(value_name = "NAME")]
        name: Option<String>,
        /// Remove the default
        #[arg(long, conflicts_with = "name")]
        clear: bool,
    },
    /// Print a shell completion script (bash, zsh, fish), e.g. `scyld-bootctl completion bash >
    /// /etc/bash_completion.d/scyld-bootctl`
    Completion(Completion),
}
