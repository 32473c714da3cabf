//! `scyld-mkinitramfs` without `--agent` when no packaged agent is installed beside it.

use std::process::Command;

#[test]
fn without_agent_it_says_how_to_get_one() {
    let bin = env!("CARGO_BIN_EXE_scyld-mkinitramfs");
    let packaged = std::path::Path::new(bin).parent().unwrap().parent().unwrap().join("libexec/clusterware-node");
    assert!(!packaged.exists(), "{} exists; this test expects no packaged agent", packaged.display());
    let d = tempfile::tempdir().unwrap();
    let out =
        Command::new(bin).args(["--kernel-version", "6.1.0", "-o"]).arg(d.path().join("initrd.img")).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for says in ["pass --agent PATH", "make agent", "/opt/scyld/clusterware/libexec/clusterware-node"] {
        assert!(stderr.contains(says), "{stderr}");
    }
    assert!(!d.path().join("initrd.img").exists());
}

#[test]
fn the_agent_option_describes_its_default() {
    use clap::CommandFactory;
    let cmd = clusterware_initramfs::args::Args::command();
    let agent = cmd.get_arguments().find(|a| a.get_id() == "agent").unwrap();
    assert!(!agent.is_required_set());
    let help = agent.get_help().unwrap().to_string();
    assert!(help.contains("libexec/clusterware-node") && help.contains("make agent"), "{help}");
}
