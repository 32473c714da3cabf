//! `completion SHELL` prints the script `cw-docgen` writes (both come from
//! `clusterware_cli::args::completion_script`), with no head, configuration or credential.

use clap::{Command, CommandFactory};
use clusterware_cli::args::{Shell, bootctl, clusterctl, completion_script, imgctl, install, managedb, nodectl};
use std::process::Command as Process;

fn programs() -> [(&'static str, &'static str, Command); 6] {
    [
        ("scyld-nodectl", env!("CARGO_BIN_EXE_scyld-nodectl"), nodectl::Args::command()),
        ("scyld-clusterctl", env!("CARGO_BIN_EXE_scyld-clusterctl"), clusterctl::Args::command()),
        ("scyld-imgctl", env!("CARGO_BIN_EXE_scyld-imgctl"), imgctl::Args::command()),
        ("scyld-bootctl", env!("CARGO_BIN_EXE_scyld-bootctl"), bootctl::Args::command()),
        ("managedb", env!("CARGO_BIN_EXE_managedb"), managedb::Args::command()),
        ("scyld-install", env!("CARGO_BIN_EXE_scyld-install"), install::Args::command()),
    ]
}

/// Runs a program with no configuration readable and no head or token given.
fn run_bare(bin: &str, args: &[&str]) -> std::process::Output {
    Process::new(bin)
        .args(args)
        .env("CLUSTERWARE_CONFIG", "/nonexistent/clusterware/base.ini")
        .env_remove("CLUSTERWARE_HEAD")
        .env_remove("CLUSTERWARE_TOKEN")
        .output()
        .unwrap()
}

#[test]
fn completion_prints_the_generated_script_without_a_head_or_configuration() {
    for (name, bin, cmd) in programs() {
        for shell in Shell::ALL {
            let out = run_bare(bin, &["completion", shell.name()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{name} completion {}: {}: {stderr}", shell.name(), out.status);
            assert!(stderr.is_empty(), "{name} completion {}: {stderr}", shell.name());
            let expected = completion_script(cmd.clone(), shell);
            assert!(out.stdout == expected, "{name} completion {} differs from the generated script", shell.name());
            assert!(String::from_utf8_lossy(&out.stdout).contains(name));
        }
        let out = run_bare(bin, &["--help"]);
        assert!(out.status.success(), "{name} --help");
        assert!(String::from_utf8_lossy(&out.stdout).contains("completion"), "{name} --help lists completion");
    }
}

#[test]
fn completion_refuses_other_shells() {
    let out = run_bare(env!("CARGO_BIN_EXE_scyld-nodectl"), &["completion", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bash") && stderr.contains("zsh") && stderr.contains("fish"), "{stderr}");
}

#[test]
fn a_command_that_needs_the_head_still_says_so() {
    // Completion skips the head; ordinary commands still need it, so the bare environment
    // above really has no configuration.
    let out = run_bare(env!("CARGO_BIN_EXE_scyld-imgctl"), &["ls"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/clusterware/base.ini"));
}
