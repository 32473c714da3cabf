//! `scyld-mkinitramfs`: builds a node's initramfs with the static ClusterWare agent as `/init`.

use clap::Parser;
use clusterware_initramfs::args::Args;
use clusterware_initramfs::{DEFAULT_MODULES, Spec, build, read_cpio};
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let a = Args::parse();
    let agent = match clusterware_shared::sys::agent_path(a.agent.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("scyld-mkinitramfs: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let explicit = !a.modules.is_empty();
    let spec = Spec {
        agent,
        kernel_version: a.kernel_version.clone(),
        modules_root: a.modules_root.clone(),
        modules: if explicit { a.modules.clone() } else { DEFAULT_MODULES.iter().map(|s| s.to_string()).collect() },
        explicit,
    };
    let built = match build(&spec, !a.no_compress) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("scyld-mkinitramfs: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let tmp = a.output.with_extension("tmp-mkinitramfs");
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&built.image).and_then(|_| f.sync_all()))
        .and_then(|_| std::fs::rename(&tmp, &a.output));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        eprintln!("scyld-mkinitramfs: error: cannot write {}: {e}", a.output.display());
        return ExitCode::FAILURE;
    }
    clusterware_shared::outln!("{}: {} bytes, {} modules", a.output.display(), built.image.len(), built.modules.len());
    for m in &built.modules {
        clusterware_shared::outln!("  {m}");
    }
    if !built.skipped.is_empty() {
        clusterware_shared::outln!("not in kernel {}: {}", a.kernel_version, built.skipped.join(", "));
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
                    clusterware_shared::outln!("{mode:06o} {:>10} /{name}", data.len());
                }
            }
            Err(e) => eprintln!("scyld-mkinitramfs: error: cannot list the archive: {e}"),
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
