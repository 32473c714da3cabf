//! The whole system on a real (virtual) machine: QEMU network-boots from one of three heads in
//! network namespaces, its initramfs (scyld-mkinitramfs) runs the static agent as /init, which
//! loads the NIC driver, gets its address by DHCP, downloads the root image (scyld-modimg: a
//! busybox root), checks it and switches root into it; the image's agent then reports to its
//! parent head, and moves to the other head when that one is killed.

use clusterware_tests::netns::{Segment, cli_in};
use clusterware_tests::vm::{Firmware, Kernel, Vm, static_agent, workspace};
use clusterware_tests::{Cluster, poll_until};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// Fetches `url` over HTTPS with curl inside `h`'s namespace into `out`, trusting the cluster CA,
/// as an administrator.
fn curl_in(h: &clusterware_tests::Head, url: &str, out: &str) {
    let ns = h.netns.as_deref().expect("a head in a namespace");
    let (ca, auth) = (h.ca_file(), format!("@{}", h.auth_header_file().display()));
    run_ok(Command::new("ip").args([
        "netns",
        "exec",
        ns,
        "curl",
        "-sSf",
        "--cacert",
        ca.to_str().unwrap(),
        "-H",
        &auth,
        "-o",
        out,
        url,
    ]));
}

fn status(c: &Cluster, via: usize, node: &str) -> Value {
    let s = c.heads[via].cli("scyld-nodectl", &["-i", node, "status", "--json"]);
    if s.code != 0 {
        return Value::Null;
    }
    s.json()["nodes"][0].clone()
}

/// Kernel, initramfs and the registered busybox image, as boot config `e2e` (the default).
fn prepare(c: &Cluster, dir: &Path) {
    let k = Kernel::require();
    let agent = static_agent();
    let initrd = dir.join("initrd.img");
    k.initramfs(&agent, &initrd);
    let vmlinuz = k.vmlinuz;
    let rootfs = dir.join("root");
    clusterware_tests::vm::busybox_root(&rootfs);
    // The test reads the node's files from its console: every 2 s they are printed there.
    std::fs::write(
        rootfs.join("etc/inittab"),
        "::respawn:/bin/sh -c 'sleep 2; for f in /etc/hosts /root/.ssh/authorized_keys; do while read l; do echo \"VMFILE $f: $l\"; done < $f; done 2>/dev/null > /dev/console'\n",
    )
    .unwrap();
    let image = dir.join("busybox.img");
    clusterware_tests::vm::root_image(&rootfs, &agent, &image);
    let h = &c.heads[0];
    let ns = h.netns.clone().unwrap();
    let cfg = h.config.to_string_lossy().to_string();
    let out =
        cli_in(&ns, "scyld-modimg", &["register", image.to_str().unwrap(), "--name", "busybox", "--config", &cfg]);
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
}

/// A VM whose console log is kept in target/e2e-logs.
fn vm(seg: &mut Segment, n: usize, mac: &str, test: &str) -> Vm {
    vm_with(seg, n, mac, test, Firmware::Bios)
}

fn vm_with(seg: &mut Segment, n: usize, mac: &str, test: &str, firmware: Firmware) -> Vm {
    let logs = workspace().join("target/e2e-logs");
    std::fs::create_dir_all(&logs).unwrap();
    Vm::start_with(seg, n, mac, &logs.join(format!("{test}-vm{n}.log")), firmware)
}

#[test]
fn three_heads_boot_three_vms_into_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mut seg = Segment::new();
    // Three heads: etcd keeps its quorum when one dies.
    let mut c = Cluster::configure_on(&mut seg, 3, "");
    c.start_all();
    prepare(&c, dir.path());
    let h = &c.heads[0];
    let macs = ["52:54:00:aa:0e:01", "52:54:00:aa:0e:02", "52:54:00:aa:0e:03"];
    for (i, mac) in macs.iter().enumerate() {
        h.cli(
            "scyld-nodectl",
            &["create", &format!("mac={mac}"), &format!("ip={}", seg.addr(101 + i as u8)), "_status_secs=2"],
        )
        .ok();
    }
    // n0 boots from head2, whose copy of the root image is corrupt: head2 must repair it from a
    // peer before n0 gets it.
    h.cli("scyld-nodectl", &["-i", "n0", "set", "_preferred_head=head2"]).ok();
    let img: Value = h.cli("scyld-imgctl", &["--json", "ls"]).json();
    let rootfs_id = img["images"][0]["rootfs"].as_str().unwrap().to_string();
    let stored = c.heads[1].dir.join("storage").join(&rootfs_id);
    // Heads fetch files from peers when first asked: ask head2 once, so it keeps a copy.
    let url = format!(
        "{}{}",
        c.heads[1].url(),
        clusterware_shared::api::path::full(&clusterware_shared::api::path::file_content(&rootfs_id, false))
    );
    curl_in(&c.heads[1], &url, "/dev/null");
    poll_until("head2 has its copy of the image", Duration::from_secs(60), || stored.is_file());
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();

    let started = Instant::now();
    let vms: Vec<Vm> = macs.iter().enumerate().map(|(i, m)| vm(&mut seg, i, m, "three")).collect();
    let nodes = ["n0", "n1", "n2"];
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let up = nodes.iter().filter(|n| status(&c, 2, n)["state"] == "up").count();
        if up == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "{up} of 3 VMs up after 400 s; consoles in target/e2e-logs");
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("three VMs up after {:?} ({})", started.elapsed(), clusterware_tests::vm::accel());
    // n0 prefers head2 (usually it also booted from it; if another head answered first, its
    // parent sends it to head2 at its first report).
    poll_until("n0 on head2", Duration::from_secs(30), || status(&c, 0, "n0")["parent"] == "head2");
    let parents: Vec<String> = nodes.iter().map(|n| status(&c, 0, n)["parent"].as_str().unwrap().to_string()).collect();
    // head2 never serves its corrupt copy: it was quarantined and replaced from a peer.
    let check = dir.path().join("check.img");
    curl_in(&c.heads[1], &url, check.to_str().unwrap());
    assert_eq!(std::fs::read(&check).unwrap().len(), bytes.len());
    assert_ne!(std::fs::read(&check).unwrap(), bytes, "head2 served its corrupt copy");
    let counters = c.heads[1].api("GET", "/storage", Some(&c.token), None).1;
    assert!(counters["quarantined"].as_u64().unwrap_or(0) >= 1, "head2 quarantined its corrupt copy: {counters}");
    // Every VM's /etc/hosts names its parent.
    for (i, vm) in vms.iter().enumerate() {
        let ip = c.heads.iter().find(|h| h.name == parents[i]).unwrap().ip;
        poll_until("parent-head-node in the VM's /etc/hosts", Duration::from_secs(30), || {
            vm.console().contains(&format!("VMFILE /etc/hosts: {ip}\tparent-head-node"))
        });
    }
    // update_keys reaches the VMs.
    h.cli(
        "scyld-clusterctl",
        &[
            "keys",
            "add",
            "e2e",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNsdXN0ZXJ3YXJlIHRlc3Qga2V5IG9ubHkgMzJieXRl e2e@test",
        ],
    )
    .ok();
    let out = c.heads[2].cli("scyld-nodectl", &["-a", "script", "update_keys"]);
    assert_eq!(out.code, 0, "{out:?}");
    for vm in &vms {
        poll_until("the key in the VM's authorized_keys", Duration::from_secs(30), || {
            vm.console().contains("e2e@test")
        });
    }
    // kill -9 of n1's parent: its VMs move to the next head and stay up.
    let dead = c.heads.iter().position(|h| h.name == parents[1]).unwrap();
    let other = (dead + 1) % 3;
    c.heads[dead].kill9();
    poll_until("every VM up on a surviving head", Duration::from_secs(60), || {
        nodes.iter().all(|n| {
            let s = status(&c, other, n);
            s["state"] == "up" && s["parent"] != parents[1].as_str() && s["parent"].is_string()
        })
    });
}

/// One head, prepared, with node n0 (`mac`, host address `host`) registered. Dropped in order:
/// heads, then the namespaces, then the files.
fn one_head(mac: &str, host: u8) -> (Cluster, Segment, tempfile::TempDir) {
    one_head_with(mac, host, "")
}

/// [`one_head`] with more lines of `base.ini`.
fn one_head_with(mac: &str, host: u8, extra: &str) -> (Cluster, Segment, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut seg = Segment::new();
    let mut c = Cluster::configure_on(&mut seg, 1, extra);
    c.start_all();
    prepare(&c, dir.path());
    c.heads[0]
        .cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip={}", seg.addr(host)), "_status_secs=2"])
        .ok();
    (c, seg, dir)
}

/// A root image that no head can serve intact: the node says why on its console and keeps
/// trying; it never reports up.
#[test]
fn a_corrupt_image_everywhere_never_comes_up() {
    let (c, mut seg, _dir) = one_head("52:54:00:aa:0e:11", 111);
    let h = &c.heads[0];
    let img: Value = h.cli("scyld-imgctl", &["--json", "ls"]).json();
    let stored = h.dir.join("storage").join(img["images"][0]["rootfs"].as_str().unwrap());
    let mut bytes = std::fs::read(&stored).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&stored, &bytes).unwrap();
    let vm = vm(&mut seg, 0, "52:54:00:aa:0e:11", "corrupt");
    poll_until("the console says why and retries", Duration::from_secs(300), || {
        let t = vm.console();
        t.contains("no head gave the image") && t.contains("trying again")
    });
    assert_ne!(status(&c, 0, "n0")["state"], "up");
}

#[test]
fn one_head_one_vm_reaches_up() {
    let (c, mut seg, _dir) = one_head("52:54:00:aa:0e:21", 121);
    let h = &c.heads[0];
    let vm = vm(&mut seg, 0, "52:54:00:aa:0e:21", "one");
    poll_until("the VM up with head1 as parent", Duration::from_secs(300), || {
        let s = status(&c, 0, "n0");
        s["state"] == "up" && s["parent"] == "head1"
    });
    poll_until("parent-head-node in the VM's /etc/hosts", Duration::from_secs(30), || {
        vm.console().contains(&format!("VMFILE /etc/hosts: {}\tparent-head-node", h.ip))
    });
    let t = vm.console();
    // The enrolled path: the node traded its boot script's token for its certificate, which the
    // head requires for the root image and every agent request.
    for phase in
        ["asking for an address", "enrolled with https://", "image unpacked", "switching to the image's /sbin/init"]
    {
        assert!(t.contains(phase), "{phase} missing from the console:\n{t}");
    }
    h.wait_log("the enrollment", |l| l.contains("node enrolled"));
    // A revoked node is shut out: its pushes are refused and it is seen down.
    let out = h.cli("scyld-nodectl", &["-i", "n0", "revoke"]);
    assert!(out.code == 0, "{out:?}");
    h.wait_log("the node's requests refused", |l| l.contains("without the node's current certificate refused"));
}

/// OVMF's own UEFI network stack, no iPXE option ROM (what most real machines run): UEFI PXE gets
/// `snponly.efi` over TFTP, iPXE the boot script, and the node comes up.
#[test]
fn uefi_pxe_boots_to_up() {
    let mac = "52:54:00:aa:0e:31";
    let (c, mut seg, _dir) = one_head_with(mac, 131, "");
    let vm = vm_with(&mut seg, 0, mac, "uefi-pxe", Firmware::Uefi);
    poll_until("the UEFI VM up with head1 as parent", Duration::from_secs(450), || {
        let s = status(&c, 0, "n0");
        s["state"] == "up" && s["parent"] == "head1"
    });
    let t = vm.console();
    for phase in ["Start PXE over IPv4", "iPXE", "image unpacked"] {
        assert!(t.contains(phase), "{phase} missing from the console:\n{t}");
    }
}

/// UEFI HTTP Boot alone: the head serves no TFTP, OVMF's PXE attempt fails, its HTTP Boot gets
/// the URL of `snponly.efi` on the head (DHCP vendor class `HTTPClient`), and the node comes up.
#[test]
fn uefi_http_boot_alone_boots_to_up() {
    let mac = "52:54:00:aa:0e:41";
    let (c, mut seg, _dir) = one_head_with(mac, 141, "tftp.enabled = no\n");
    let h = &c.heads[0];
    h.wait_log("DHCP without TFTP", |l| l.contains("TFTP off"));
    let vm = vm_with(&mut seg, 0, mac, "uefi-http", Firmware::Uefi);
    poll_until("the UEFI VM up with head1 as parent", Duration::from_secs(450), || {
        let s = status(&c, 0, "n0");
        s["state"] == "up" && s["parent"] == "head1"
    });
    let t = vm.console();
    for phase in ["Start HTTP Boot over IPv4", "iPXE", "image unpacked"] {
        assert!(t.contains(phase), "{phase} missing from the console:\n{t}");
    }
}

/// `base.ini` lines that serve Debian's signed loaders unpacked by `make secureboot-files`.
fn secure_boot_config() -> String {
    let l = clusterware_tests::vm::SignedLoaders::require();
    format!(
        "secure_boot.shim = {}\nsecure_boot.grub = {}\nsecure_boot.mokmanager = {}\n",
        l.shim.display(),
        l.grub.display(),
        l.mokmanager.display()
    )
}

/// UEFI Secure Boot on (OVMF with Microsoft's and Debian's keys): a boot config with
/// `secure_boot` makes DHCP hand out Debian's signed shim, which loads the signed network GRUB,
/// whose per-node script boots the signed Debian kernel with the scyld-mkinitramfs initramfs and
/// the CA archive, all over TFTP; the node enrolls and comes up, and its kernel saw Secure Boot.
#[test]
fn secure_boot_vm_boots_shim_grub_and_kernel_to_up() {
    let mac = "52:54:00:aa:0e:51";
    let (c, mut seg, _dir) = one_head_with(mac, 151, &secure_boot_config());
    let h = &c.heads[0];
    // No `quiet`: the kernel's Secure Boot lines are KERN_INFO/KERN_NOTICE.
    let out = h.cli("scyld-bootctl", &["-i", "e2e", "update", "--secure-boot", "yes", "--cmdline", "console=ttyS0"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = h.cli("scyld-bootctl", &["-i", "e2e", "ls", "-l"]);
    assert!(out.stdout.contains("secure boot: yes"), "{out:?}");
    let vm = vm_with(&mut seg, 0, mac, "secure-boot", Firmware::UefiSecureBoot);
    poll_until("the Secure Boot VM up with head1 as parent", Duration::from_secs(480), || {
        let s = status(&c, 0, "n0");
        s["state"] == "up" && s["parent"] == "head1"
    });
    let t = vm.console();
    for phase in [
        "NBP filename is sb/shimx64.efi",
        "Fetching Netboot Image sb/grubx64.efi",
        "ClusterWare: booting n0 (52:54:00:aa:0e:51) with boot config e2e from head1",
        "secureboot: Secure boot enabled",
        "Kernel is locked down from EFI Secure Boot",
        "enrolled with https://",
        "image unpacked",
    ] {
        assert!(t.contains(phase), "{phase} missing from the console:\n{t}");
    }
    assert!(!t.contains("iPXE"), "iPXE ran under Secure Boot:\n{t}");
    h.wait_log("the enrollment", |l| l.contains("node enrolled"));
}

/// The same Secure Boot firmware with a boot config without `secure_boot`: DHCP hands out the
/// unsigned iPXE binary, which the firmware refuses to start; the node never comes up.
#[test]
fn secure_boot_firmware_refuses_unsigned_ipxe() {
    let mac = "52:54:00:aa:0e:61";
    let (c, mut seg, _dir) = one_head_with(mac, 161, &secure_boot_config());
    let vm = vm_with(&mut seg, 0, mac, "secure-boot-refused", Firmware::UefiSecureBoot);
    poll_until("the firmware refuses the unsigned loader", Duration::from_secs(400), || {
        let t = vm.console();
        t.contains("NBP file downloaded successfully")
            && t.lines().any(|l| {
                l.contains("failed to load Boot")
                    && l.contains("UEFI PXEv4")
                    && (l.contains("Access Denied") || l.contains("Security Violation"))
            })
    });
    let t = vm.console();
    assert!(t.contains("NBP filename is snponly.efi"), "{t}");
    assert!(!t.contains("iPXE initialising") && !t.contains("iPXE 1."), "iPXE ran under Secure Boot:\n{t}");
    assert_ne!(status(&c, 0, "n0")["state"], "up");
    assert_ne!(status(&c, 0, "n0")["state"], "booting");
}
