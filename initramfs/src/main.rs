//! `scyld-mkinitramfs`: builds a node's initramfs with the static ClusterWare agent as `/init`.

use clap::Parser;
use clusterware_initramfs::{DEFAULT_MODULES, Spec, build, read_cpio};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Build a compressed newc cpio initramfs with the static clusterware-node agent as /init and the
/// kernel modules a node needs for its network card (with their dependencies, from the kernel's
/// modules.dep). The same inputs give the same bytes.
#[derive(Parser)]
#[command(name = "scyld-mkinitramfs", version)]
struct Args {
    /// The static agent (`make agent` builds target/x86_64-unknown-linux-gnu/agent/clusterware-node)
    #[arg(long, value_name = "PATH")]
    agent: PathBuf,
    /// Kernel version (the directory name under lib/modules)
    #[arg(long = "kernel-version", value_name = "VERSION")]
    kernel_version: String,
    /// Directory holding lib/modules/VERSION (/ for this machine's kernel; for an unpacked kernel
    /// package, the unpack directory after `depmod -b DIR VERSION`)
    #[arg(long = "modules-root", value_name = "DIR", default_value = "/")]
    modules_root: PathBuf,
    /// A module to include (repeat); default: common network drivers (virtio_net, e1000, igb, ixgbe, mlx5_core, …)
    #[arg(long = "module", value_name = "NAME")]
    modules: Vec<String>,
    /// Where to write the initramfs
    #[arg(short, long, value_name = "FILE")]
    output: PathBuf,
    /// Write the cpio archive without gzip
    #[arg(long)]
    no_compress: bool,
    /// Print what the archive holds afterwards
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let explicit = !a.modules.is_empty();
    let spec = Spec {
        agent: a.agent.clone(),
        kernel_version: a.kernel_version.clone(),
        modules_root: a.modules_root.clone(),
        modules: if explicit { a.modules.clone() } else { DEFAULT_MODULES.iter().map(|s| s.to_string()).collect() },
        explicit,
    };
    let built = match build(&spec, !a.no_compress) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scyld-mkinitramfs: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tmp = a.output.with_extension("tmp-mkinitramfs");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&built.image).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &a.output));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("scyld-mkinitramfs: cannot write {}: {e}", a.output.display());
        return ExitCode::FAILURE;
    }
    println!("{}: {} bytes, {} modules", a.output.display(), built.image.len(), built.modules.len());
    for m in &built.modules {
        println!("  {m}");
    }
    if !built.skipped.is_empty() {
        println!("not in kernel {}: {}", a.kernel_version, built.skipped.join(", "));
    }
    if a.list {
        let raw = if a.no_compress {
            built.image.clone()
        } else {
            let mut out = Vec::new();
            let _ = std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&built.image[..]), &mut out);
            out
        };
        match read_cpio(&raw) {
            Ok(files) => {
                for (name, mode, data) in files {
                    println!("{mode:06o} {:>10} /{name}", data.len());
                }
            }
            Err(e) => eprintln!("scyld-mkinitramfs: cannot list the archive: {e}"),
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
