//! Man pages and shell completions of the ClusterWare commands, generated from their clap
//! definitions (each crate exposes its command line as a library module).
//!
//! Layout under the output directory:
//!
//! ```text
//! man/man1/scyld-nodectl.1, man/man1/scyld-nodectl-ls.1, …     administrator commands
//! man/man8/clusterware-head.8, man/man8/managedb-join.8, …      daemons and head set-up
//! completions/bash/NAME, completions/zsh/_NAME, completions/fish/NAME.fish
//! ```
//!
//! A subcommand gets its own page named `PARENT-SUB` (at every depth: `scyld-clusterctl-files-upload`),
//! listed in its parent's SUBCOMMANDS section.

use clap::{ArgAction, Command, CommandFactory};
use clusterware_cli::args::{Shell, completion_script};
use std::path::{Path, PathBuf};

/// One program: its command line and the manual section of its pages.
pub struct Program {
    pub command: Command,
    /// `1` (user commands) or `8` (system administration: daemons, head set-up).
    pub section: &'static str,
}

/// The ten programs ClusterWare ships.
pub fn programs() -> Vec<Program> {
    use clusterware_cli::args::{bootctl, clusterctl, imgctl, install, managedb, nodectl};
    let p = |command: Command, section| Program { command, section };
    vec![
        p(nodectl::Args::command(), "1"),
        p(clusterctl::Args::command(), "1"),
        p(imgctl::Args::command(), "1"),
        p(bootctl::Args::command(), "1"),
        p(clusterware_initramfs::args::Args::command(), "1"),
        p(clusterware_image_tools::args::Args::command(), "1"),
        p(clusterware_head::args::Args::command(), "8"),
        p(clusterware_node::args::Cli::command(), "8"),
        p(managedb::Args::command(), "8"),
        p(install::Args::command(), "8"),
    ]
}

/// The command as the pages describe it: built (global options propagated to subcommands, full
/// names and usage lines set), without clap's `help` subcommand.
pub fn built(cmd: &Command) -> Command {
    let mut cmd = cmd.clone().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// The visible subcommands of a built command.
fn subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands().filter(|s| !s.is_hide_set())
}

/// Every page of a program, `(full name, built command)`: the program first, then each
/// subcommand at every depth, named `PARENT-SUB`.
pub fn page_commands(program: &Command) -> Vec<(String, Command)> {
    fn walk(
        cmd: &Command,
        name: String,
        version: Option<&str>,
        author: Option<&str>,
        out: &mut Vec<(String, Command)>,
    ) {
        let mut page = cmd.clone().name(name.clone()).display_name(name.clone());
        if let (None, Some(v)) = (page.get_version(), version) {
            page = page.version(v.to_string());
        }
        if let (None, Some(a)) = (page.get_author(), author) {
            page = page.author(a.to_string());
        }
        out.push((name.clone(), page));
        for sub in subcommands(cmd) {
            walk(sub, format!("{name}-{}", sub.get_name()), version, author, out);
        }
    }
    let cmd = built(program);
    let mut out = Vec::new();
    walk(&cmd, cmd.get_name().to_string(), cmd.get_version(), cmd.get_author(), &mut out);
    out
}

/// Every man page of a program: `(file name, roff text)`.
pub fn man_pages(program: &Program) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    page_commands(&program.command)
        .into_iter()
        .map(|(name, cmd)| {
            let man = clap_mangen::Man::new(cmd).section(program.section).manual("Scyld ClusterWare");
            let mut text = Vec::new();
            man.render(&mut text)?;
            Ok((format!("{name}.{}", program.section), text))
        })
        .collect()
}

/// What [`generate`] wrote.
#[derive(Debug, Default)]
pub struct Summary {
    pub pages: Vec<PathBuf>,
    pub completions: Vec<PathBuf>,
}

/// Writes the man pages and completion scripts of every program under `out`.
pub fn generate(out: &Path) -> Result<Summary, String> {
    let mut summary = Summary::default();
    let write = |path: PathBuf, data: &[u8]| -> Result<PathBuf, String> {
        let dir = path.parent().expect("paths here have a directory");
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    };
    for program in programs() {
        let dir = out.join("man").join(format!("man{}", program.section));
        let pages = man_pages(&program)
            .map_err(|e| format!("cannot render the pages of {}: {e}", program.command.get_name()))?;
        for (file, text) in pages {
            summary.pages.push(write(dir.join(file), &text)?);
        }
        let name = program.command.get_name().to_string();
        for shell in Shell::ALL {
            let path = out.join("completions").join(shell.name()).join(shell.file_name(&name));
            summary.completions.push(write(path, &completion_script(program.command.clone(), shell))?);
        }
    }
    Ok(summary)
}

/// The arguments without a description and subcommands without an about, each as
/// `command sub --long` (or `command sub <VALUE>` for a positional, `command sub (about)` for a
/// subcommand). clap's own --help and --version are left out; a global option is reported once,
/// where it is defined.
pub fn undocumented(program: &Command) -> Vec<String> {
    fn text(s: Option<&clap::builder::StyledStr>) -> String {
        s.map(|s| s.to_string()).unwrap_or_default().trim().to_string()
    }
    fn walk(cmd: &Command, path: &str, inherited: &[String], out: &mut Vec<String>) {
        let mut globals = inherited.to_vec();
        for a in cmd.get_arguments() {
            let id = a.get_id().to_string();
            if a.is_global_set() {
                if inherited.contains(&id) {
                    continue;
                }
                globals.push(id);
            }
            if a.is_hide_set()
                || matches!(
                    a.get_action(),
                    ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
                )
            {
                continue;
            }
            if text(a.get_help()).is_empty() && text(a.get_long_help()).is_empty() {
                let shown = match (a.get_long(), a.get_short()) {
                    (Some(l), _) => format!("--{l}"),
                    (None, Some(s)) => format!("-{s}"),
                    (None, None) => {
                        let v = a.get_value_names().and_then(|v| v.first()).map(|v| v.to_string());
                        format!("<{}>", v.unwrap_or_else(|| a.get_id().to_string().to_uppercase()))
                    }
                };
                out.push(format!("{path} {shown}"));
            }
        }
        for sub in subcommands(cmd) {
            let sub_path = format!("{path} {}", sub.get_name());
            if text(sub.get_about()).is_empty() && text(sub.get_long_about()).is_empty() {
                out.push(format!("{sub_path} (about)"));
            }
            walk(sub, &sub_path, &globals, out);
        }
    }
    let cmd = built(program);
    let mut out = Vec::new();
    if text(cmd.get_about()).is_empty() && text(cmd.get_long_about()).is_empty() {
        out.push(format!("{} (about)", cmd.get_name()));
    }
    walk(&cmd, cmd.get_name(), &[], &mut out);
    out
}
