//! The clap definitions of the administrator commands, one module per program, so that
//! `cw-docgen` (man pages, shell completions) and the tests can build each command without
//! running it. The programs in `src/bin/` parse with these types and hold the logic.

use clap::CommandFactory;

pub mod bootctl;
pub mod clusterctl;
pub mod imgctl;
pub mod install;
pub mod managedb;
pub mod nodectl;

/// A shell `completion SHELL` writes a completion script for.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl Shell {
    pub const ALL: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

    fn generator(self) -> clap_complete::Shell {
        match self {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        }
    }

    /// The file the script is installed as: `NAME` for bash, `_NAME` for zsh, `NAME.fish` for fish.
    pub fn file_name(self, command: &str) -> String {
        match self {
            Shell::Bash => command.to_string(),
            Shell::Zsh => format!("_{command}"),
            Shell::Fish => format!("{command}.fish"),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
        }
    }
}

/// The arguments of the `completion` subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Completion {
    /// The shell to write the script for
    #[arg(value_name = "SHELL")]
    pub shell: Shell,
}

impl Completion {
    /// Prints the completion script of the command `P` on stdout. Needs no head, no configuration
    /// and no credential.
    pub fn print<P: CommandFactory>(&self) -> crate::CliResult<()> {
        use std::io::Write;
        let script = completion_script(P::command(), self.shell);
        let mut out = std::io::stdout().lock();
        match out.write_all(&script).and_then(|_| out.flush()) {
            Ok(()) => Ok(()),
            // `… | head`: the reader has what it wanted.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(crate::fail(format!("cannot write the completion script: {e}"))),
        }
    }
}

/// The completion script of `cmd` for `shell`, completing the program named `cmd`'s name (what
/// `completion SHELL` prints and `cw-docgen` writes).
pub fn completion_script(mut cmd: clap::Command, shell: Shell) -> Vec<u8> {
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell.generator(), &mut cmd, name.as_str(), &mut out);
    match shell {
        Shell::Bash => bash_states_agree(&name, &String::from_utf8_lossy(&out)).into_bytes(),
        Shell::Zsh | Shell::Fish => out,
    }
}

/// clap_complete's bash script (4.6.12 and earlier) spells the state of a subcommand of a program
/// whose name has a hyphen two ways: the loop that reads the words sets
/// `scyld__nodectl__subcmd__ls`, the `case` that answers matches `scyld__subcmd__nodectl__subcmd__ls`,
/// so nothing after a subcommand completes (clap-rs/clap#6421). This spells the `case` labels the
/// loop's way; a script without the mistake is left as it is.
fn bash_states_agree(name: &str, script: &str) -> String {
    const SEP: &str = "__subcmd__";
    if !name.contains('-') {
        return script.to_string();
    }
    script.replace(&format!("{}{SEP}", name.replace('-', SEP)), &format!("{}{SEP}", name.replace('-', "__")))
}
