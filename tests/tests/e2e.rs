//! The whole system on a real (virtual) machine: QEMU network-boots from one of three heads in
//! network namespaces, its initramfs (scyld-mkinitramfs) runs the static agent as /init, which
//! loads the NIC driver, gets its address by DHCP, downloads the root image (scyld-modimg: a
//! busybox root), checks it and switches root into it; the image's agent then reports to its
//! parent head, and moves to the other head when that one is killed.

use clusterware_tests::netns::{Segment, cli_in};
use clusterware_tests::{Cluster, bin, poll_until};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn accel() -> &'static str {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if Path::new("/dev/kvm").exists() && (cpu.contains(" vmx") || cpu.contains(" svm")) { "kvm" } else { "tcg" }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A minimal root: static busybox as init and shell.
fn busybox_root(dir: &Path) {
    let bb = Path::new("/bin/busybox");
    let ldd = Command::new("ldd").arg(bb).output().unwrap();
    let text = String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(
        text.contains("not a dynamic") || text.contains("statically"),
        "/bin/busybox must be static (Debian package busybox-static; make test installs it): {text}"
    );
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp", "root"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::copy(bb, dir.join("bin/busybox")).unwrap();
    for a in ["sh", "mount", "mkdir", "hostname", "ip", "cat", "ls"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(a)).unwrap();
    }
    for a in ["init", "reboot"] {
        std::os::unix::fs::symlink("/bin/busybox", dir.join("sbin").join(a)).unwrap();
    }
    std::fs::write(dir.join("etc/hostname"), "node\n").unwrap();
}

fn status(c: &Cluster, via: usize) -> Value {
    let s = c.heads[via].cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
    if s.code != 0 {
        return Value::Null;
    }
    s.json()["nodes"][0].clone()
}

#[test]
fn qemu_boots_into_the_agent_and_fails_over() {
    let root = workspace().join("target/netboot/kernel");
    let version =
        std::fs::read_dir(root.join("lib/modules")).expect("make netboot-kernel").flatten().next().unwrap().file_name();
    let version = version.to_string_lossy().to_string();
    let vmlinuz = root.join(format!("boot/vmlinuz-{version}"));
    let agent = workspace().join("target/x86_64-unknown-linux-gnu/agent/clusterware-node");
    assert!(agent.is_file(), "run `make agent` (make test does)");
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    run_ok(
        Command::new(bin("scyld-mkinitramfs"))
            .arg("--agent")
            .arg(&agent)
            .args(["--kernel-version", &version, "--modules-root"])
            .arg(&root)
            .args(["--module", "virtio_net", "--module", "virtio_pci", "-o"])
            .arg(&initrd),
    );
    let rootfs = dir.path().join("root");
    busybox_root(&rootfs);
    let image = dir.path().join("busybox.img");
    run_ok(
        Command::new(bin("scyld-modimg"))
            .arg("build")
            .arg("--from")
            .arg(&rootfs)
            .arg("--agent")
            .arg(&agent)
            .arg("-o")
            .arg(&image),
    );

    let mut seg = Segment::new();
    // Three heads: etcd keeps its quorum when one dies.
    let mut c = Cluster::configure_on(&mut seg, 3, "");
    c.start_all();
    let h = &c.heads[0];
    let ns = h.netns.clone().unwrap();
    let cfg = h.config.to_string_lossy().to_string();
    let out =
        cli_in(&ns, "scyld-modimg", &["--config", &cfg, "register", image.to_str().unwrap(), "--name", "busybox"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = h.cli(
        "scyld-bootctl",
        &[
            "create",
            "--name",
            "e2e",
            "--kernel",
            vmlinuz.to_str().unwrap(),
            "--initramfs",
            initrd.to_str().unwrap(),
            "--image",
            "busybox",
            "--cmdline",
            "console=ttyS0 quiet",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    h.cli("scyld-bootctl", &["default", "e2e"]).ok();
    let mac = "52:54:00:aa:0e:01";
    h.cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip={}", seg.addr(101)), "_status_secs=2"]).ok();

    seg.tap("cwtap0");
    let serial = dir.path().join("serial.log");
    let started = Instant::now();
    let mut qemu = Command::new("ip")
        .args(["netns", "exec", seg.bridge_ns(), "timeout", "400", "qemu-system-x86_64"])
        .args([
            "-machine",
            &format!("pc,accel={}", accel()),
            "-m",
            "768",
            "-boot",
            "n",
            "-no-reboot",
            "-display",
            "none",
        ])
        .args(["-netdev", "tap,id=n0,ifname=cwtap0,script=no,downscript=no"])
        .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={mac}")])
        .args(["-serial", &format!("file:{}", serial.display()), "-monitor", "none"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let console = || std::fs::read_to_string(&serial).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(300);
    let parent = loop {
        let s = status(&c, 2);
        if s["state"] == "up" {
            break s["parent"].as_str().unwrap().to_string();
        }
        if let Ok(Some(st)) = qemu.try_wait() {
            panic!("QEMU ended ({st}); console:\n{}", console());
        }
        assert!(Instant::now() < deadline, "the node did not come up within 300 s; console:\n{}", console());
        std::thread::sleep(Duration::from_millis(500));
    };
    eprintln!("node up after {:?} ({}), parent {parent}", started.elapsed(), accel());
    let text = console();
    assert!(text.contains("clusterware-node init: switching to the image's /sbin/init"), "{text}");
    let s = status(&c, 0);
    assert_eq!(s["report"]["phase"], "up", "{s}");
    assert_eq!(s["boot_id"].as_str().map(str::len), Some(36), "{s}");

    // The parent dies: the node's agent moves to another head.
    let dead = c.heads.iter().position(|h| h.name == parent).unwrap();
    let other = (dead + 1) % 3;
    c.heads[dead].kill9();
    poll_until("the node re-parented to a surviving head", Duration::from_secs(60), || {
        let s = status(&c, other);
        s["state"] == "up" && s["parent"] != parent.as_str() && s["parent"].is_string()
    });
    let _ = qemu.kill();
    let _ = qemu.wait();
}
