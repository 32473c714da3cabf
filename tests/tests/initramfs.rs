//! scyld-mkinitramfs against Debian's kernel (target/netboot, `make netboot-kernel`) and the
//! static agent (`make agent`).

use clusterware_tests::bin;
use std::path::{Path, PathBuf};
use std::process::Command;

fn kernel_root() -> (PathBuf, String) {
    let k = clusterware_tests::vm::Kernel::require();
    (k.root, k.version)
}

fn mk(out: &Path, extra: &[&str]) -> std::process::Output {
    let (root, version) = kernel_root();
    Command::new(bin("scyld-mkinitramfs"))
        .arg("--agent")
        .arg(clusterware_tests::vm::static_agent())
        .args(["--kernel-version", &version, "--modules-root"])
        .arg(&root)
        .arg("-o")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn initramfs_for_debian_kernel_is_complete_and_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for p in [&a, &b] {
        let out = mk(p, &["--module", "virtio_net", "--module", "e1000"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), "same inputs, same bytes");
    // Another tool reads it: busybox's zcat and cpio.
    let list =
        Command::new("sh").arg("-c").arg(format!("busybox zcat {} | busybox cpio -t", a.display())).output().unwrap();
    let names = String::from_utf8_lossy(&list.stdout).to_string();
    for want in [
        "init",
        "dev/console",
        "etc/clusterware/modules",
        "virtio_net.ko",
        "net_failover.ko",
        "failover.ko",
        "virtio_ring.ko",
        "e1000.ko",
    ] {
        assert!(names.lines().any(|l| l.ends_with(want)), "{want} missing from:\n{names}");
    }
    // Dependencies are listed before the modules that need them.
    let order = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && busybox zcat {} | busybox cpio -id etc/clusterware/modules 2>/dev/null && cat etc/clusterware/modules", dir.path().display(), a.display()))
        .output()
        .unwrap();
    let order = String::from_utf8_lossy(&order.stdout).to_string();
    let pos = |m: &str| order.lines().position(|l| l.ends_with(m)).unwrap_or_else(|| panic!("{m} not in {order}"));
    assert!(
        pos("/failover.ko") < pos("/net_failover.ko") && pos("/net_failover.ko") < pos("/virtio_net.ko"),
        "{order}"
    );
    assert!(pos("/virtio_ring.ko") < pos("/virtio_net.ko"), "{order}");
    // A module the kernel does not have is an error, and nothing is written.
    let bad = dir.path().join("bad.img");
    let out = mk(&bad, &["--module", "no_such_driver"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no module no_such_driver"));
    assert!(!bad.exists());
    // The defaults: the common network drivers this kernel has.
    let def = dir.path().join("default.img");
    let out = mk(&def, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("virtio_net.ko") && text.contains("mlx5_core.ko"), "{text}");
}
