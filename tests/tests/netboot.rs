//! Network boot in network namespaces: three heads on one bridge, real DHCP clients (udhcpc,
//! dhclient), a relay, TFTP with curl, and the iPXE boot script.

use clusterware_tests::dhcp::{bind_device, discover, offers};
use clusterware_tests::netns::{Segment, run_in};
use clusterware_tests::{Cluster, poll_until};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

fn link_mac(ns: &str) -> String {
    let out = Command::new("ip").args(["-n", ns, "-o", "link", "show", "cwn0"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("link/ether ").nth(1).unwrap().split_whitespace().next().unwrap().to_string()
}

fn in_ns(ns: &str, cmd: &[&str]) -> std::process::Output {
    Command::new("ip").args(["netns", "exec", ns]).args(cmd).output().unwrap()
}

#[test]
fn three_heads_boot_nodes_alike() {
    let mut seg = Segment::new();
    let mut c = Cluster::configure_on(&mut seg, 3, "");
    c.start_all();
    let capture = seg.member("cap", Some(seg.addr(200)));
    let relay = seg.member("rel", Some(seg.addr(250)));
    let udhcpc_ns = seg.member("u", None);
    let dhclient_ns = seg.member("d", None);
    let h = &c.heads[0];
    let n0 = "52:54:00:a8:00:01";
    let (umac, dmac) = (link_mac(&udhcpc_ns), link_mac(&dhclient_ns));
    for (mac, host) in [(n0, 101), (umac.as_str(), 102), (dmac.as_str(), 103)] {
        h.cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip={}", seg.addr(host))]).ok();
    }
    let heads: Vec<Ipv4Addr> = c.heads.iter().map(|h| h.ip).collect();

    // All three heads offer the same address for the same MAC, each naming itself.
    let bcast: SocketAddr = "255.255.255.255:67".parse().unwrap();
    let local: SocketAddr = "0.0.0.0:68".parse().unwrap();
    let mut got = Vec::new();
    poll_until("offers from three heads", Duration::from_secs(20), || {
        got = offers(&capture, local, bcast, discover(n0, None, false), Duration::from_millis(1200));
        got.len() == 3
    });
    let mut sids: Vec<Ipv4Addr> = got.iter().map(|o| o.0).collect();
    sids.sort();
    assert_eq!(sids, heads, "{got:?}");
    assert!(got.iter().all(|o| o.1 == seg.addr(101) && o.2.is_empty()), "{got:?}");

    // iPXE gets its boot script on the answering head.
    let ipxe = offers(&capture, local, bcast, discover(n0, None, true), Duration::from_millis(1200));
    assert_eq!(ipxe.len(), 3);
    for (sid, _, file) in &ipxe {
        assert_eq!(file, &format!("http://{sid}:8080/api/v1/boot/script?mac={n0}"));
    }

    // A relayed DISCOVER is answered to the relay.
    let relayed = offers(
        &relay,
        SocketAddr::from((seg.addr(250), 67)),
        SocketAddr::from((heads[0], 67)),
        discover(n0, Some(seg.addr(250)), false),
        Duration::from_millis(1000),
    );
    assert_eq!(relayed.len(), 1, "{relayed:?}");
    assert_eq!((relayed[0].0, relayed[0].1), (heads[0], seg.addr(101)));

    // Real clients get their registered addresses.
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("udhcpc.sh");
    let log = dir.path().join("udhcpc.log");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1 ip=$ip serverid=$serverid\" >> {}\n", log.display()))
        .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = in_ns(
        &udhcpc_ns,
        &["busybox", "udhcpc", "-i", "cwn0", "-n", "-q", "-f", "-t", "5", "-T", "2", "-s", script.to_str().unwrap()],
    );
    assert!(out.status.success(), "udhcpc: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains(&format!("bound ip={}", seg.addr(102))), "{text}");

    let dscript = dir.path().join("dhclient.sh");
    let dlog = dir.path().join("dhclient.log");
    std::fs::write(&dscript, format!("#!/bin/sh\necho \"$reason $new_ip_address\" >> {}\n", dlog.display())).unwrap();
    std::fs::set_permissions(&dscript, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pidfile = dir.path().join("dhclient.pid");
    let out = in_ns(
        &dhclient_ns,
        &[
            "dhclient",
            "-1",
            "-sf",
            dscript.to_str().unwrap(),
            "-lf",
            dir.path().join("leases").to_str().unwrap(),
            "-pf",
            pidfile.to_str().unwrap(),
            "cwn0",
        ],
    );
    // The dhclient daemon this test started.
    if let Some(pid) = std::fs::read_to_string(&pidfile).ok().and_then(|p| p.trim().parse().ok()) {
        clusterware_tests::sys::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    assert!(out.status.success(), "dhclient: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&dlog).unwrap();
    assert!(text.contains(&format!("BOUND {}", seg.addr(103))), "{text}");

    // TFTP: the iPXE binary, with blksize, byte for byte; a path outside is refused.
    let file = dir.path().join("undionly.kpxe");
    let out = in_ns(
        &capture,
        &[
            "curl",
            "-sS",
            "--tftp-blksize",
            "1428",
            "-o",
            file.to_str().unwrap(),
            &format!("tftp://{}/undionly.kpxe", heads[1]),
        ],
    );
    assert!(out.status.success(), "curl tftp: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read("/usr/lib/ipxe/undionly.kpxe").unwrap());
    let out = in_ns(&capture, &["curl", "-sS", "-o", "/dev/null", &format!("tftp://{}/../../etc/passwd", heads[1])]);
    assert!(!out.status.success());
    let out = in_ns(&capture, &["curl", "-sS", "-T", file.to_str().unwrap(), &format!("tftp://{}/up.bin", heads[1])]);
    assert!(!out.status.success(), "a TFTP write was accepted");

    // The boot script: first the reason it cannot boot, then the config with this head as parent.
    let url = format!("http://{}:8080/api/v1/boot/script?mac={n0}", heads[2]);
    let out = in_ns(&capture, &["curl", "-sS", &url]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.starts_with("#!ipxe") && text.contains("cannot boot yet") && text.contains("chain "), "{text}");
    std::fs::write(dir.path().join("vmlinuz"), b"kernel bytes").unwrap();
    std::fs::write(dir.path().join("initrd.img"), b"initramfs bytes").unwrap();
    let (k, i) = (dir.path().join("vmlinuz"), dir.path().join("initrd.img"));
    let out = c.heads[2].cli(
        "scyld-bootctl",
        &[
            "create",
            "--name",
            "compute",
            "--kernel",
            k.to_str().unwrap(),
            "--initramfs",
            i.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    h.cli("scyld-nodectl", &["-i", "n0", "set", "_boot_config=compute"]).ok();
    // Fetched from an address that is not n0's, the script changes nothing.
    let out = in_ns(&capture, &["curl", "-sS", &url]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(&format!("kernel http://{}:8080/api/v1/files/", heads[2])), "{text}");
    c.heads[2]
        .wait_log("head3 refuses the stranger's fetch its effect", |l| l.contains("the node's state is left as it is"));
    let s = h.cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
    assert!(s.code == 0 && s.json()["nodes"][0]["state"] != "booting", "{s:?}");
    // Fetched by n0 itself, it makes head3 the parent.
    let n0_ns = seg.member("n0", Some(seg.addr(101)));
    let out = in_ns(&n0_ns, &["curl", "-sS", &url]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains(&format!("cw.parent=https://{}:8443", heads[2])) && text.contains("console=ttyS0"), "{text}");
    assert!(text.contains("initrd --name initramfs"), "{text}");
    c.heads[2].wait_log("head3 logs the boot", |l| l.contains(&format!("Booting node n0 ({n0})")));
    poll_until("n0 booting with head3 as parent", Duration::from_secs(10), || {
        let s = h.cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
        s.code == 0 && s.json()["nodes"][0]["state"] == "booting" && s.json()["nodes"][0]["parent"] == "head3"
    });

    // _preferred_head: the other heads hold their offers back, so head2's comes first.
    h.cli("scyld-nodectl", &["-i", "n0", "set", "_preferred_head=head2"]).ok();
    poll_until("head2's offer first", Duration::from_secs(10), || {
        let got = offers(&capture, local, bcast, discover(n0, None, false), Duration::from_millis(1200));
        got.len() == 3 && got[0].0 == heads[1]
    });

    // An unknown MAC gets no offer; garbage does not stall the server.
    let none = offers(&capture, local, bcast, discover("52:54:00:a8:0f:0f", None, false), Duration::from_millis(800));
    assert!(none.is_empty(), "{none:?}");
    run_in(Some(&capture), || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        bind_device(&s);
        s.set_broadcast(true).unwrap();
        for len in [0usize, 10, 240, 300, 1400] {
            let mut junk = vec![0xa5u8; len];
            if len > 236 {
                junk[236..240].copy_from_slice(&[99, 130, 83, 99]);
                junk[0] = 1;
            }
            s.send_to(&junk, "255.255.255.255:67").unwrap();
        }
    });
    let after = offers(&capture, local, bcast, discover(n0, None, false), Duration::from_millis(1200));
    assert_eq!(after.len(), 3, "still answering after garbage");
    h.wait_log("unknown MACs are logged", |l| l.contains("unknown MAC"));

    // Degraded: with two of three heads gone the last has no quorum, and still answers known
    // nodes from its last view of the node table.
    c.heads[1].kill9();
    c.heads[2].kill9();
    let refused = c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:a8:0e:01"]);
    assert!(refused.code == 1 && refused.stderr.contains("quorum"), "{refused:?}");
    let alone = offers(&capture, local, bcast, discover(n0, None, false), Duration::from_millis(1500));
    assert_eq!(alone.len(), 1, "{alone:?}");
    assert_eq!((alone[0].0, alone[0].1), (heads[0], seg.addr(101)), "{alone:?}");
}

/// QEMU's own iPXE ROM boots from a head: DHCP, the boot script, kernel and initramfs over HTTP,
/// and the kernel starts.
#[test]
fn qemu_network_boots_from_a_head() {
    let vmlinuz = clusterware_tests::vm::Kernel::require().vmlinuz;
    let mut seg = Segment::new();
    let mut c = Cluster::configure_on(&mut seg, 1, "");
    c.start_all();
    let h = &c.heads[0];
    let mac = "52:54:00:a9:00:01";
    h.cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip={}", seg.addr(101))]).ok();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    std::fs::write(&initrd, b"not an initramfs: the kernel starts, finds no init and reboots").unwrap();
    let out = h.cli(
        "scyld-bootctl",
        &[
            "create",
            "--name",
            "qemu",
            "--kernel",
            vmlinuz.to_str().unwrap(),
            "--initramfs",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 panic=1",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    h.cli("scyld-bootctl", &["default", "qemu"]).ok();
    let serial = dir.path().join("serial.log");
    let started = Instant::now();
    let mut qemu = clusterware_tests::vm::Vm::start(&mut seg, 0, mac, &serial);
    let log_path = h.dir.join("log/head_head1.log");
    let mut booting_after = None;
    let deadline = Instant::now() + Duration::from_secs(200);
    loop {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        if booting_after.is_none() && log.contains(&format!("Booting node n0 ({mac})")) {
            booting_after = Some(started.elapsed());
        }
        let console = std::fs::read_to_string(&serial).unwrap_or_default();
        if booting_after.is_some() && console.contains("Linux version") {
            break;
        }
        if let Some(status) = qemu.ended() {
            panic!("QEMU ended ({status}) before the kernel started; console:\n{console}");
        }
        assert!(Instant::now() < deadline, "no network boot within 200 s; console:\n{console}");
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(qemu);
    eprintln!(
        "QEMU ({}) fetched its boot script after {:?}, kernel running after {:?}",
        clusterware_tests::vm::accel(),
        booting_after.unwrap(),
        started.elapsed()
    );
    let s = h.cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
    assert_eq!(s.json()["nodes"][0]["parent"], "head1");
}

/// With dhcp.register_unknown, a DISCOVER that three heads see creates exactly one node, which
/// then gets offers.
#[test]
fn unknown_macs_are_registered_once() {
    let mut seg = Segment::new();
    let first = seg.addr(150);
    let mut c = Cluster::configure_on(&mut seg, 3, &format!("dhcp.register_unknown = yes\ndhcp.first_ip = {first}\n"));
    c.start_all();
    let capture = seg.member("cap", Some(seg.addr(200)));
    let bcast: SocketAddr = "255.255.255.255:67".parse().unwrap();
    let local: SocketAddr = "0.0.0.0:68".parse().unwrap();
    let mac = "52:54:00:a8:0e:e1";
    let mut got = Vec::new();
    poll_until("offers for the registered MAC", Duration::from_secs(30), || {
        got = offers(&capture, local, bcast, discover(mac, None, false), Duration::from_millis(1000));
        got.len() == 3
    });
    assert!(got.iter().all(|o| o.1 == first), "{got:?}");
    let nodes: serde_json::Value = c.heads[2].cli("scyld-nodectl", &["--json", "ls"]).json();
    let list = nodes["nodes"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one node for one MAC: {list:?}");
    assert_eq!(list[0]["macs"][0], mac);
}

/// No VM outlives its test: dropping a `Vm` ends QEMU itself, not only the `timeout` it runs
/// under (which once left QEMU orphaned and running for minutes after the suite).
#[test]
fn no_vm_outlives_its_test() {
    use clusterware_tests::processes_named;
    use clusterware_tests::vm::Vm;
    let mut seg = Segment::new();
    let dir = tempfile::tempdir().unwrap();
    let vm = Vm::start(&mut seg, 0, "52:54:00:a9:0f:01", &dir.path().join("console.log"));
    let marker = vm.marker.clone();
    let qemu =
        |pid: &u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("qemu-system"));
    poll_until("QEMU runs", Duration::from_secs(30), || processes_named(&marker).iter().any(qemu));
    drop(vm);
    poll_until("no process of the dropped VM is left", Duration::from_secs(10), || processes_named(&marker).is_empty());
}

/// No daemon that a test started inside a namespace outlives the segment: dhclient forks into
/// the background and may write its pid file after its parent returned, which once left it
/// running after the suite.
#[test]
fn no_daemon_outlives_its_segment() {
    use clusterware_tests::processes_named;
    let mut seg = Segment::new();
    let ns = seg.member("x", None);
    let marker = format!("cw-daemon-{}", std::process::id());
    // A detached process (own session, parent gone) in the namespace, as a daemon is.
    let out =
        in_ns(&ns, &["setsid", "-f", "bash", "-c", &format!("exec -a {marker} sleep 600 </dev/null >/dev/null 2>&1")]);
    assert!(out.status.success(), "setsid: {}", String::from_utf8_lossy(&out.stderr));
    poll_until("the daemon runs", Duration::from_secs(10), || !processes_named(&marker).is_empty());
    drop(seg);
    poll_until("no daemon of the dropped segment is left", Duration::from_secs(10), || {
        processes_named(&marker).is_empty()
    });
}

/// Secure Boot's TFTP names on a head: the configured loaders byte for byte (shim's probes "not
/// found"), the GRUB bootstrap, a node's GRUB script (fetched by a stranger: no enrollment
/// token, the node's state unchanged; by the node: a token, and the node `booting`), kernels and
/// initramfs images from the file store (no other kind), the CA archive; escapes refused.
#[test]
fn secure_boot_names_over_tftp() {
    let dir = tempfile::tempdir().unwrap();
    let (shim, grub) = (dir.path().join("shim.signed"), dir.path().join("grub.signed"));
    std::fs::write(&shim, b"signed shim bytes").unwrap();
    std::fs::write(&grub, vec![7u8; 5000]).unwrap();
    let extra = format!("secure_boot.shim = {}\nsecure_boot.grub = {}\n", shim.display(), grub.display());
    let mut seg = Segment::new();
    let mut c = Cluster::configure_on(&mut seg, 1, &extra);
    c.start_all();
    let h = &c.heads[0];
    let capture = seg.member("cap", Some(seg.addr(200)));
    let n0 = "52:54:00:a8:05:01";
    h.cli("scyld-nodectl", &["create", &format!("mac={n0}"), &format!("ip={}", seg.addr(101))]).ok();
    let fetch = |ns: &str, name: &str| -> Option<Vec<u8>> {
        let out = dir.path().join("got");
        let _ = std::fs::remove_file(&out);
        let r = in_ns(
            ns,
            &["curl", "-sS", "--tftp-blksize", "1024", "-o", out.to_str().unwrap(), &format!("tftp://{}/{name}", h.ip)],
        );
        r.status.success().then(|| std::fs::read(&out).unwrap())
    };
    assert_eq!(fetch(&capture, "sb/shimx64.efi").unwrap(), b"signed shim bytes");
    assert_eq!(fetch(&capture, "sb/grubx64.efi").unwrap(), vec![7u8; 5000]);
    for missing in [
        "sb/revocations_sbat.efi",
        "sb/mmx64.efi",
        "grub/x86_64-efi/grub.cfg",
        "grub/node/../../etc/passwd",
        "cw/file/../../../etc/passwd",
    ] {
        assert!(fetch(&capture, missing).is_none(), "{missing} was served");
    }
    let boot = String::from_utf8(fetch(&capture, "grub/grub.cfg").unwrap()).unwrap();
    assert!(boot.contains("source \"$prefix/node/${net_default_mac}.cfg\""), "{boot}");
    let script = |ns: &str| String::from_utf8(fetch(ns, &format!("grub/node/{n0}.cfg")).unwrap()).unwrap();
    assert!(script(&capture).contains("cannot boot yet"), "no boot config yet");

    std::fs::write(dir.path().join("vmlinuz"), b"kernel bytes").unwrap();
    std::fs::write(dir.path().join("initrd.img"), b"initramfs bytes").unwrap();
    let (k, i) = (dir.path().join("vmlinuz"), dir.path().join("initrd.img"));
    let out = h.cli(
        "scyld-bootctl",
        &[
            "create",
            "--name",
            "sb",
            "--kernel",
            k.to_str().unwrap(),
            "--initramfs",
            i.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0 it's",
            "--secure-boot",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    h.cli("scyld-bootctl", &["default", "sb"]).ok();
    let cfg = h.cli("scyld-bootctl", &["-i", "sb", "ls", "--json"]).json();
    assert_eq!(cfg["boot_config"]["secure_boot"], true, "{cfg}");
    let (kid, iid) = (
        cfg["boot_config"]["kernel"].as_str().unwrap().to_string(),
        cfg["boot_config"]["initramfs"].as_str().unwrap().to_string(),
    );
    let text = script(&capture);
    assert!(text.contains(&format!("if linux '(tftp,{})/cw/file/{kid}' 'console=ttyS0' 'it'\\''s'", h.ip)), "{text}");
    assert!(
        text.contains(&format!("initrd '(tftp,{ip})/cw/file/{iid}' '(tftp,{ip})/cw/ca.cpio'", ip = h.ip)),
        "{text}"
    );
    assert!(text.contains(&format!("'cw.mac={n0}'")) && !text.contains("cw.enroll"), "{text}");
    let s = h.cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
    assert!(s.code == 0 && s.json()["nodes"][0]["state"] != "booting", "{s:?}");
    // The node itself: a one-time token, and the head its parent.
    let n0_ns = seg.member("n0", Some(seg.addr(101)));
    let text = script(&n0_ns);
    assert!(text.contains("'cw.enroll=cwe_"), "{text}");
    poll_until("n0 booting", Duration::from_secs(10), || {
        let s = h.cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
        s.code == 0 && s.json()["nodes"][0]["state"] == "booting"
    });
    assert_eq!(fetch(&capture, &format!("cw/file/{kid}")).unwrap(), b"kernel bytes");
    assert_eq!(fetch(&capture, &format!("cw/file/{iid}")).unwrap(), b"initramfs bytes");
    assert!(fetch(&capture, "cw/ca.cpio").unwrap().starts_with(&[0x1f, 0x8b]));
    // A file of another kind is not served over TFTP.
    std::fs::write(dir.path().join("nodes.csv"), b"secret").unwrap();
    let up = h.cli("scyld-clusterctl", &["--json", "files", "upload", dir.path().join("nodes.csv").to_str().unwrap()]);
    assert_eq!(up.code, 0, "{up:?}");
    let other = up.json()["id"].as_str().unwrap().to_string();
    assert!(fetch(&capture, &format!("cw/file/{other}")).is_none(), "a file of kind other was served");
}
