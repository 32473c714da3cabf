//! `scyld-modimg` as administrators run it: `completion SHELL` without a head, and `build`
//! without `--agent` when no packaged agent is installed beside it.

use clap::CommandFactory;
use clusterware_cli::args::{Shell, completion_script};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_scyld-modimg");

#[test]
fn completion_prints_the_generated_script_without_a_head_or_configuration() {
    for shell in Shell::ALL {
        let out = Command::new(BIN)
            .args(["completion", shell.name()])
            .env("CLUSTERWARE_CONFIG", "/nonexistent/clusterware/base.ini")
            .env_remove("CLUSTERWARE_HEAD")
            .env_remove("CLUSTERWARE_TOKEN")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}: {}", shell.name(), String::from_utf8_lossy(&out.stderr));
        assert!(out.stderr.is_empty());
        let expected = completion_script(clusterware_image_tools::args::Args::command(), shell);
        assert!(out.stdout == expected, "scyld-modimg completion {} differs from the generated script", shell.name());
    }
}

#[test]
fn build_without_agent_says_how_to_get_one() {
    // target/debug/../libexec/clusterware-node is not there: the packaged agent is missing.
    let exe = std::path::Path::new(BIN);
    let packaged = exe.parent().unwrap().parent().unwrap().join("libexec/clusterware-node");
    assert!(!packaged.exists(), "{} exists; this test expects no packaged agent", packaged.display());
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("root")).unwrap();
    let out = Command::new(BIN)
        .args(["build", "--from"])
        .arg(d.path().join("root"))
        .arg("-o")
        .arg(d.path().join("image.img"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for says in ["pass --agent PATH", "make agent", "/opt/scyld/clusterware/libexec/clusterware-node"] {
        assert!(stderr.contains(says), "{stderr}");
    }
    assert!(stderr.contains(&packaged.display().to_string()), "{stderr}");
    assert!(!d.path().join("image.img").exists());
}
