//! The generated documentation: every argument described, a page for every command and
//! subcommand, completion scripts for every program.

use clap::Command;
use clusterware_cli::args::{Shell, completion_script};
use clusterware_docgen::{built, generate, page_commands, programs, undocumented};
use std::collections::BTreeSet;
use std::path::Path;

#[test]
fn the_ten_commands_are_consistent() {
    let names: Vec<String> = programs().iter().map(|p| p.command.get_name().to_string()).collect();
    assert_eq!(
        names,
        [
            "scyld-nodectl",
            "scyld-clusterctl",
            "scyld-imgctl",
            "scyld-bootctl",
            "scyld-mkinitramfs",
            "scyld-modimg",
            "clusterware-head",
            "clusterware-node",
            "managedb",
            "scyld-install"
        ]
    );
    for p in programs() {
        p.command.debug_assert();
    }
}

#[test]
fn every_argument_and_subcommand_is_described() {
    let missing: Vec<String> = programs().iter().flat_map(|p| undocumented(&p.command)).collect();
    assert!(
        missing.is_empty(),
        "{} arguments or subcommands have no description (a /// doc comment on the field or variant):\n  {}",
        missing.len(),
        missing.join("\n  ")
    );
}

#[test]
fn the_check_for_descriptions_finds_what_is_missing() {
    let cmd = Command::new("prog")
        .about("A program")
        .arg(clap::Arg::new("documented").long("documented").help("Has a description"))
        .arg(clap::Arg::new("bare").long("bare"))
        .arg(clap::Arg::new("global").long("global").global(true))
        .arg(clap::Arg::new("FILE"))
        .subcommand(
            Command::new("sub")
                .arg(clap::Arg::new("shorty").short('s').action(clap::ArgAction::SetTrue))
                .subcommand(Command::new("deeper").about("Deeper").arg(clap::Arg::new("x").long("x").value_name("X"))),
        );
    assert_eq!(
        undocumented(&cmd),
        ["prog --bare", "prog --global", "prog <FILE>", "prog sub (about)", "prog sub -s", "prog sub deeper --x"]
    );
}

/// Every command name in a program's tree, `PARENT-SUB` at every depth, counted from clap.
fn tree_names(cmd: &Command) -> Vec<String> {
    fn walk(cmd: &Command, name: String, out: &mut Vec<String>) {
        out.push(name.clone());
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(s, format!("{name}-{}", s.get_name()), out);
        }
    }
    let cmd = built(cmd);
    let mut out = Vec::new();
    walk(&cmd, cmd.get_name().to_string(), &mut out);
    out
}

/// A light roff check: the page starts with `.TH`, every request is one a man page uses, and
/// every escape is one of those clap_mangen writes.
fn check_roff(name: &str, text: &str) -> Result<(), String> {
    const REQUESTS: [&str; 12] = ["TH", "SH", "SS", "TP", "PP", "IP", "RS", "RE", "br", "ie", "el", "ds"];
    let first = text.lines().find(|l| !l.starts_with(".ie") && !l.starts_with(".el") && !l.starts_with(".\\\""));
    if !first.is_some_and(|l| l.starts_with(".TH ")) {
        return Err(format!("{name}: the first request is {first:?}, not .TH"));
    }
    for (i, line) in text.lines().enumerate() {
        if let Some(req) = line.strip_prefix('.').or_else(|| line.strip_prefix('\'')) {
            let r = req.split_whitespace().next().unwrap_or("");
            if !REQUESTS.contains(&r) && !r.starts_with("\\\"") {
                return Err(format!("{name}:{}: unknown request .{r}", i + 1));
            }
        }
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '\\' {
                continue;
            }
            match chars.next() {
                Some('f') => {
                    if !matches!(chars.next(), Some('B' | 'I' | 'R' | 'P')) {
                        return Err(format!("{name}:{}: bad font escape in {line:?}", i + 1));
                    }
                }
                Some('-' | '&' | 'e' | '\\' | '"' | '.' | ' ' | '|' | '^' | 'n') => {}
                Some('(') => {
                    chars.next();
                    chars.next();
                }
                Some('*') => {
                    if chars.next() == Some('(') {
                        chars.next();
                        chars.next();
                    }
                }
                other => return Err(format!("{name}:{}: unknown escape \\{other:?} in {line:?}", i + 1)),
            }
        }
    }
    Ok(())
}

/// groff's own parse (UTF-8 input through preconv, as man does), with all warnings.
fn groff_warnings(path: &Path) -> String {
    let out = std::process::Command::new("groff")
        .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
        .arg(path)
        .env("LC_ALL", "C")
        .output()
        .expect("groff (Debian package groff-base; make test installs it)");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if out.status.success() { err } else { format!("exit {}: {err}", out.status) }
}

#[test]
fn generating_writes_a_page_for_every_command_and_completions_for_every_program() {
    let dir = tempfile::tempdir().unwrap();
    let summary = generate(dir.path()).unwrap();
    let mut expected_pages = BTreeSet::new();
    let mut expected_completions = BTreeSet::new();
    for p in programs() {
        let names = tree_names(&p.command);
        assert_eq!(names.len(), page_commands(&p.command).len());
        for n in names {
            expected_pages.insert(dir.path().join(format!("man/man{}/{n}.{}", p.section, p.section)));
        }
        let name = p.command.get_name().to_string();
        for shell in Shell::ALL {
            expected_completions.insert(dir.path().join("completions").join(shell.name()).join(shell.file_name(&name)));
        }
    }
    assert!(expected_pages.len() > programs().len(), "subcommands have pages too");
    assert_eq!(summary.pages.iter().cloned().collect::<BTreeSet<_>>(), expected_pages);
    assert_eq!(summary.pages.len(), expected_pages.len(), "no page written twice");
    assert_eq!(summary.completions.iter().cloned().collect::<BTreeSet<_>>(), expected_completions);
    assert_eq!(expected_completions.len(), 30);

    // Nothing else was written.
    let mut on_disk = BTreeSet::new();
    let mut stack = vec![dir.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                on_disk.insert(p);
            }
        }
    }
    assert_eq!(on_disk, expected_pages.union(&expected_completions).cloned().collect());

    for page in &expected_pages {
        let text = std::fs::read_to_string(page).unwrap();
        let file = page.file_name().unwrap().to_string_lossy().to_string();
        let full = file.rsplit_once('.').unwrap().0;
        check_roff(&file, &text).unwrap();
        let th = text.lines().find(|l| l.starts_with(".TH ")).unwrap();
        assert!(th.starts_with(&format!(".TH {full} ")), "{file}: {th}");
        let name_section = text.split(".SH NAME\n").nth(1).and_then(|s| s.lines().next()).unwrap_or("");
        assert!(
            name_section.starts_with(&format!("{} \\- ", full.replace('-', "\\-"))),
            "{file}: NAME section {name_section:?}"
        );
        assert!(text.contains(".SH SYNOPSIS") && text.contains(".SH DESCRIPTION"), "{file}");
        let w = groff_warnings(page);
        assert!(w.trim().is_empty(), "groff on {file}: {w}");
    }

    // A parent lists its subcommands' pages.
    let files = std::fs::read_to_string(dir.path().join("man/man1/scyld-clusterctl-files.1")).unwrap();
    assert!(files.contains(".SH SUBCOMMANDS"), "{files}");
    assert!(files.contains("scyld\\-clusterctl\\-files\\-upload(1)"), "{files}");
    let managedb = std::fs::read_to_string(dir.path().join("man/man8/managedb.8")).unwrap();
    assert!(managedb.contains("managedb\\-failover(8)"), "{managedb}");
    // Subcommand pages carry the program's version.
    let enable = std::fs::read_to_string(dir.path().join("man/man8/managedb-failover-enable.8")).unwrap();
    assert!(enable.contains(&format!("managedb-failover-enable {}", env!("CARGO_PKG_VERSION"))), "{enable}");

    for path in &expected_completions {
        let text = std::fs::read_to_string(path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().to_string();
        let name = file.trim_start_matches('_').trim_end_matches(".fish");
        assert!(!text.trim().is_empty(), "{} is empty", path.display());
        assert!(text.contains(name), "{} does not name {name}", path.display());
    }
    // Each script parses in its shell (make test installs zsh and fish).
    for (shell, check) in [("bash", &["-n"][..]), ("zsh", &["-n"][..]), ("fish", &["--no-execute"][..])] {
        for path in expected_completions.iter().filter(|p| p.parent().unwrap().ends_with(shell)) {
            let out = std::process::Command::new(shell)
                .args(check)
                .arg(path)
                .output()
                .unwrap_or_else(|e| panic!("{shell} (Debian package {shell}; make test installs it): {e}"));
            assert!(
                out.status.success(),
                "{shell} {check:?} {}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let zsh = std::fs::read_to_string(dir.path().join("completions/zsh/_scyld-nodectl")).unwrap();
    assert!(zsh.starts_with("#compdef scyld-nodectl"), "{zsh}");
    let fish = std::fs::read_to_string(dir.path().join("completions/fish/managedb.fish")).unwrap();
    assert!(fish.contains("complete -c managedb"), "{fish}");
}

#[test]
fn the_completion_files_are_what_completion_shell_prints() {
    // `scyld-nodectl completion SHELL` prints `completion_script(Args::command(), SHELL)`; its
    // cli integration test runs the binary against that same function.
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path()).unwrap();
    use clap::CommandFactory;
    for shell in Shell::ALL {
        let file = dir.path().join("completions").join(shell.name()).join(shell.file_name("scyld-nodectl"));
        let written = std::fs::read(&file).unwrap();
        let printed = completion_script(clusterware_cli::args::nodectl::Args::command(), shell);
        assert!(written == printed, "{} differs from `scyld-nodectl completion {}`", file.display(), shell.name());
    }
}

/// The visible long options of every page's command, by the words that reach it
/// (`["scyld-clusterctl", "files", "rm"]`).
fn long_options_by_path(program: &Command) -> Vec<(Vec<String>, Vec<String>)> {
    fn walk(cmd: &Command, words: Vec<String>, out: &mut Vec<(Vec<String>, Vec<String>)>) {
        let longs = cmd
            .get_arguments()
            .filter(|a| !a.is_hide_set())
            .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
            .collect();
        out.push((words.clone(), longs));
        for s in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let mut w = words.clone();
            w.push(s.get_name().to_string());
            walk(s, w, out);
        }
    }
    let cmd = built(program);
    let mut out = Vec::new();
    walk(&cmd, vec![cmd.get_name().to_string()], &mut out);
    out
}

#[test]
fn bash_completes_the_options_of_every_subcommand() {
    // `PROG SUB … --<TAB>` offers the options of SUB, for every command at every depth (clap's
    // bash scripts of programs with a hyphen in their name used to complete nothing after a
    // subcommand).
    let mut failures = Vec::new();
    for p in programs() {
        let name = p.command.get_name().to_string();
        let script = String::from_utf8(completion_script(p.command.clone(), Shell::Bash)).unwrap();
        let func = script
            .lines()
            .find_map(|l| l.trim().strip_prefix("complete -F ").and_then(|r| r.split_whitespace().next()))
            .expect("the script registers a function")
            .to_string();
        let cases = long_options_by_path(&p.command);
        let mut program = format!("{script}\n");
        for (words, _) in &cases {
            let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
            program.push_str(&format!(
                "COMP_WORDS=({} '--'); COMP_CWORD={}; COMPREPLY=(); {func} '{name}' '--' '{}'; echo \"${{COMPREPLY[*]}}\"\n",
                quoted.join(" "),
                words.len(),
                words.last().unwrap()
            ));
        }
        let out = std::process::Command::new("bash").arg("-c").arg(&program).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), cases.len(), "{name}: {stdout}");
        for ((words, longs), line) in cases.iter().zip(lines) {
            let offered: BTreeSet<&str> = line.split_whitespace().collect();
            let missing: Vec<&String> = longs.iter().filter(|l| !offered.contains(l.as_str())).collect();
            if !missing.is_empty() {
                failures.push(format!("{} --<TAB> does not offer {missing:?} (offers {line:?})", words.join(" ")));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every option the same way in every tool: `-i` is `--ids` wherever it exists, an option read
/// from the environment does not print the variable's value in the help (`[env: NAME]`, not a
/// stray `NAME=`), and the options that say which head to talk to are grouped under
/// "Connection", apart from a command's own.
#[test]
fn options_mean_the_same_in_every_tool() {
    let mut wrong = Vec::new();
    for p in programs() {
        for (page, cmd) in page_commands(&p.command) {
            for a in cmd.get_arguments() {
                if a.get_short() == Some('i') && a.get_long() != Some("ids") {
                    wrong.push(format!("{page}: -i is --{}, not --ids", a.get_long().unwrap_or("?")));
                }
                if a.get_env().is_some() && !a.is_hide_env_values_set() {
                    wrong.push(format!("{page}: --{} shows its variable's value", a.get_long().unwrap_or("?")));
                }
                let conn = ["head", "token", "token-file", "ca-file", "timeout"];
                if p.section == "1"
                    && a.get_long().is_some_and(|l| conn.contains(&l))
                    && a.get_help_heading() != Some("Connection")
                {
                    wrong.push(format!("{page}: --{} is not under Connection", a.get_long().unwrap_or("?")));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Options are shown only where they mean something: no node selection on `create`, no head
/// connection on `scyld-modimg build` (which only writes a file).
#[test]
fn options_appear_only_where_they_mean_something() {
    let has = |prog: &str, page: &str, long: &str| {
        let p = programs().into_iter().find(|p| p.command.get_name() == prog).unwrap();
        let (_, cmd) = page_commands(&p.command).into_iter().find(|(n, _)| n == page).unwrap();
        cmd.get_arguments().any(|a| a.get_long() == Some(long))
    };
    assert!(!has("scyld-nodectl", "scyld-nodectl-create", "ids"));
    assert!(!has("scyld-nodectl", "scyld-nodectl-create", "all"));
    assert!(has("scyld-nodectl", "scyld-nodectl-set", "ids"));
    assert!(has("scyld-nodectl", "scyld-nodectl-rm", "yes"));
    assert!(!has("scyld-modimg", "scyld-modimg-build", "head"));
    assert!(!has("scyld-modimg", "scyld-modimg-build", "token"));
    assert!(has("scyld-modimg", "scyld-modimg-register", "head"));
    assert!(!has("scyld-bootctl", "scyld-bootctl-create", "ids"));
    assert!(has("scyld-bootctl", "scyld-bootctl-export", "ids"));
}

/// The words of one shell command line, quotes removed, up to a comment, a pipe, `;`, `&&` or a
/// redirection.
fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, ' ' | '\t') => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, '#' | '|' | ';' | '&' | '>' | '<') if !in_word => break,
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Every command line of the README's examples parses with the command's own definition: an
/// option renamed or removed fails here, also in the examples `make test` cannot run (BMCs,
/// heads joining). Lines with `[optional]` parts or `…` placeholders are skipped.
#[test]
fn the_readme_examples_parse() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let programs = programs();
    let mut checked = 0;
    let mut bad = Vec::new();
    let mut in_sh = false;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh {
            continue;
        }
        let words = shell_words(line.trim());
        let Some(p) = words.first().and_then(|w| programs.iter().find(|p| p.command.get_name() == w)) else {
            continue;
        };
        if words.iter().any(|w| w.starts_with('[') && w != "[" || w.contains('…')) || line.trim_end().ends_with('\\')
        {
            continue;
        }
        checked += 1;
        if let Err(e) = p.command.clone().try_get_matches_from(&words) {
            use clap::error::ErrorKind::{DisplayHelp, DisplayVersion};
            if !matches!(e.kind(), DisplayHelp | DisplayVersion) {
                bad.push(format!("{line}\n    {}", e.to_string().lines().next().unwrap_or_default()));
            }
        }
    }
    assert!(checked > 60, "only {checked} README lines checked: is the README's layout still what this reads?");
    assert!(bad.is_empty(), "README examples that do not parse:\n{}", bad.join("\n"));
}
