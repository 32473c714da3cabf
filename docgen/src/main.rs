//! `cw-docgen --out DIR`: writes the man pages and shell completions of the ClusterWare commands
//! (see the library for the layout). A build tool for packaging; not shipped.

use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Write the man pages (DIR/man/man1, DIR/man/man8) and shell completions (DIR/completions/bash,
/// zsh, fish) of the ClusterWare commands, from their clap definitions.
#[derive(Parser)]
#[command(name = "cw-docgen", version)]
struct Args {
    /// Output directory (created if missing; files already there are overwritten, others left)
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
    };
    match clusterware_docgen::generate(&args.out) {
        Ok(s) => {
            println!(
                "cw-docgen: wrote {} man pages and {} completion files under {}",
                s.pages.len(),
                s.completions.len(),
                args.out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cw-docgen: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
