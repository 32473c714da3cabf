//! The command line of `scyld-mkinitramfs`.

use clap::Parser;
use std::path::PathBuf;

/// Build a compressed newc cpio initramfs with the static clusterware-node agent as /init and the
/// kernel modules a node needs for its network card (with their dependencies, from the kernel's
/// modules.dep). The same inputs give the same bytes.
#[derive(Parser)]
#[command(name = "scyld-mkinitramfs", version)]
pub struct Args {
    /// The static agent [default: the packaged one, ../libexec/clusterware-node beside this
    /// program (/opt/scyld/clusterware/libexec/clusterware-node); `make agent` builds
    /// target/x86_64-unknown-linux-gnu/agent/clusterware-node]
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Kernel version (the directory name under lib/modules)
    #[arg(long = "kernel-version", value_name = "VERSION")]
    pub kernel_version: String,
    /// Directory holding lib/modules/VERSION (/ for this machine's kernel; for an unpacked kernel
    /// package, the unpack directory after `depmod -b DIR VERSION`)
    #[arg(long = "modules-root", value_name = "DIR", default_value = "/")]
    pub modules_root: PathBuf,
    /// A module to include (repeat); default: common network drivers (virtio_net, e1000, igb, ixgbe, mlx5_core, …)
    #[arg(long = "module", value_name = "NAME")]
    pub modules: Vec<String>,
    /// Where to write the initramfs
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Write the cpio archive without gzip
    #[arg(long)]
    pub no_compress: bool,
    /// Print what the archive holds afterwards
    #[arg(long)]
    pub list: bool,
}
