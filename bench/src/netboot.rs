//! DHCP: exchanges per second one head answers, against dnsmasq and Kea's `kea-dhcp4` with the
//! same static hosts, all measured with Kea's `perfdhcp` on the same namespace topology in the
//! same run.

use crate::Report;
use clusterware_tests::Cluster;
use clusterware_tests::netns::Segment;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const CLIENTS: usize = 200;
const PERIOD: u64 = 4;
/// Kea's multi-threading for DHCPv4 on memfile, as its documentation recommends (Kea 2.2 ARM,
/// "Multi-Threading Settings With Different Database Backends": 4 threads, a queue of 64).
const KEA_THREADS: u32 = 4;
const KEA_QUEUE: u32 = 64;

/// (exchanges completed per second, drop ratio in percent) for one perfdhcp run.
fn perfdhcp(ns: &str, macs: &std::path::Path, rate: u64) -> (f64, f64) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "perfdhcp", "-4", "-B", "-l", "cwn0", "-R", &CLIENTS.to_string()])
        .args(["-M", macs.to_str().unwrap(), "-r", &rate.to_string(), "-p", &PERIOD.to_string()])
        .output()
        .expect("perfdhcp (Debian package kea-admin)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    // "***Rate statistics***" … and per exchange "received packets: N", "drops ratio: X %".
    let mut received = Vec::new();
    let mut drops = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if let Some(v) = l.strip_prefix("received packets:") {
            received.push(v.trim().parse::<f64>().unwrap_or(0.0));
        }
        if let Some(v) = l.strip_prefix("drops ratio:") {
            drops.push(
                v.trim()
                    .trim_end_matches('%')
                    .trim()
                    .split_whitespace()
                    .next()
                    .unwrap_or("100")
                    .parse::<f64>()
                    .unwrap_or(100.0),
            );
        }
    }
    // The second exchange (REQUEST-ACK) completes a DORA.
    let acks = received.get(1).copied().unwrap_or(0.0);
    let drop = drops.iter().copied().fold(0.0, f64::max);
    if received.is_empty() {
        eprintln!("cw-bench: perfdhcp said:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    }
    (acks / PERIOD as f64, if received.is_empty() { 100.0 } else { drop })
}

/// The highest offered rate with at most 2.5 % drops: (rate, exchanges/s, drops %).
fn best(ns: &str, macs: &std::path::Path) -> (u64, f64, f64) {
    let mut best = (0, 0.0, 0.0);
    for rate in
        [500u64, 1000, 2000, 3000, 4000, 5000, 6000, 7000, 8000, 10000, 12000, 14000, 16000, 20000, 24000, 28000, 32000]
    {
        let (x, d) = perfdhcp(ns, macs, rate);
        eprintln!("cw-bench:   rate {rate}/s: {x:.0} exchanges/s, {d:.2}% drops");
        if d > 2.5 {
            break;
        }
        best = (rate, x, d);
    }
    best
}

pub fn bench_dhcp(r: &mut Report) {
    eprintln!("cw-bench: DHCP exchanges per second…");
    let mut seg = Segment::new();
    let mut c = Cluster::configure_on(&mut seg, 1, "dhcp.lease_time = 600\n");
    c.start_all();
    let pf = seg.member("pf", Some(seg.addr(250)));
    let dns_ns = seg.member("dq", Some(seg.addr(12)));
    let kea_ns = seg.member("ka", Some(seg.addr(13)));
    let dir = tempfile::tempdir().unwrap();
    let macs = dir.path().join("macs");
    let mut list = String::new();
    let mut hosts = String::new();
    for i in 0..CLIENTS {
        let mac = format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256);
        list.push_str(&mac);
        list.push('\n');
        hosts.push_str(&format!("dhcp-host={mac},{}\n", seg.addr(20 + i as u8)));
    }
    std::fs::write(&macs, &list).unwrap();
    let csv = dir.path().join("nodes.csv");
    let rows: Vec<String> = (0..CLIENTS)
        .map(|i| format!("02:00:00:00:{:02x}:{:02x},{}", i / 256, i % 256, seg.addr(20 + i as u8)))
        .collect();
    std::fs::write(&csv, rows.join("\n")).unwrap();
    c.heads[0].cli("scyld-nodectl", &["create", "--csv", csv.to_str().unwrap()]).ok();
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("cw-bench: DHCP: clusterware-head");
    let ours = best(&pf, &macs);
    // The same head (same database, same nodes) again with metrics off.
    metrics_off(&mut c.heads[0]);
    eprintln!("cw-bench: DHCP: clusterware-head, metrics off");
    let ours_off = best(&pf, &macs);
    *METRICS_DHCP.lock().unwrap() = Some((ours.1, ours_off.1));
    c.heads[0].kill9();
    std::fs::write(dir.path().join("hosts.conf"), &hosts).unwrap();
    let mut dnsmasq = Command::new("ip")
        .args(["netns", "exec", &dns_ns, "dnsmasq", "--no-daemon", "--port=0", "--interface=cwn0", "--bind-interfaces"])
        .arg(format!("--dhcp-range={},static,255.255.255.0,600", seg.addr(0)))
        .arg(format!("--conf-file={}", dir.path().join("hosts.conf").display()))
        .args(["--dhcp-authoritative", "--no-ping", "--no-resolv", "--no-hosts"])
        .arg(format!("--log-facility={}", dir.path().join("dnsmasq.log").display()))
        // Static hosts and no lease file, like the head (which writes nothing per packet).
        .arg("--leasefile-ro")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq (Debian package dnsmasq-base)");
    std::thread::sleep(Duration::from_secs(1));
    eprintln!("cw-bench: DHCP: dnsmasq");
    let peer = best(&pf, &macs);
    let _ = dnsmasq.kill();
    let _ = dnsmasq.wait();
    let kea_dir = dir.path().join("kea");
    let kea = Kea::start(&kea_ns, &kea_dir, &seg, CLIENTS);
    eprintln!("cw-bench: DHCP: kea-dhcp4");
    let kea_best = best(&pf, &macs);
    kea.stop();
    r.section(
        "DHCP: exchanges per second",
        "perfdhcp -4 -B -l cwn0 -R 200 -M macs -r RATE -p 4, against clusterware-head, dnsmasq and kea-dhcp4",
        &format!("Kea's perfdhcp in its own network namespace on the same bridge as the server (one head on a 1-member etcd cluster; then dnsmasq with the same 200 static hosts and `--leasefile-ro`: static bindings and no lease file, like the head, which writes nothing per packet; with its default lease file dnsmasq managed under 100 exchanges/s here; then Kea's `kea-dhcp4` (Debian package kea-dhcp4-server) with the same 200 hosts as reservations by hardware address in one subnet without a pool, its memfile lease database (leases in memory, appended to its lease file), raw sockets, and multi-threading as its documentation recommends for memfile: `\"enable-multi-threading\": true, \"thread-pool-size\": {KEA_THREADS}, \"packet-queue-size\": {KEA_QUEUE}`), offered rates doubling until more than 2.5 % of exchanges are dropped; the best rate within that limit counts. An exchange is a whole DORA (DISCOVER, OFFER, REQUEST, ACK). The head is measured with metrics on (the default), then restarted on the same database with `metrics.enabled = no` and measured again. Targets: at least 1.5x dnsmasq, at least 1x Kea."),
    );
    let vs = |x: f64| format!("{:.2}x dnsmasq, {:.2}x Kea", x / peer.1.max(1.0), x / kea_best.1.max(1.0));
    r.table(
        &["server", "offered /s", "exchanges /s", "drops", "ratio"],
        vec![
            vec![
                "clusterware-head".into(),
                ours.0.to_string(),
                format!("{:.0}", ours.1),
                format!("{:.2}%", ours.2),
                vs(ours.1),
            ],
            vec![
                "clusterware-head, metrics off".into(),
                ours_off.0.to_string(),
                format!("{:.0}", ours_off.1),
                format!("{:.2}%", ours_off.2),
                vs(ours_off.1),
            ],
            vec![
                "dnsmasq".into(),
                peer.0.to_string(),
                format!("{:.0}", peer.1),
                format!("{:.2}%", peer.2),
                "1.00".into(),
            ],
            vec![
                "kea-dhcp4".into(),
                kea_best.0.to_string(),
                format!("{:.0}", kea_best.1),
                format!("{:.2}%", kea_best.2),
                format!("{:.2}x dnsmasq, 1.00", kea_best.1 / peer.1.max(1.0)),
            ],
        ],
    );
}

/// Kea's `kea-dhcp4` in a namespace of the bench, with everything it writes under `dir`: its
/// configuration, lease file, control socket, log, pid file and lock file (`KEA_PIDFILE_DIR`,
/// `KEA_LOCKFILE_DIR`); nothing of the machine's Kea (`/etc/kea`, `/var/lib/kea`, `/run/kea`) is
/// read or written. It runs in its own process group, killed whole by [`Kea::stop`].
struct Kea {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Kea {
    fn start(ns: &str, dir: &std::path::Path, seg: &Segment, clients: usize) -> Kea {
        std::fs::create_dir_all(dir).unwrap();
        let reservations: Vec<serde_json::Value> = (0..clients)
            .map(|i| {
                serde_json::json!({
                    "hw-address": format!("02:00:00:00:{:02x}:{:02x}", i / 256, i % 256),
                    "ip-address": seg.addr(20 + i as u8).to_string(),
                })
            })
            .collect();
        let p = |name: &str| dir.join(name).display().to_string();
        let config = serde_json::json!({
            "Dhcp4": {
                "interfaces-config": { "interfaces": ["cwn0"], "dhcp-socket-type": "raw" },
                "control-socket": { "socket-type": "unix", "socket-name": p("kea4-ctrl.sock") },
                // memfile, Kea's own lease database; no lease file cleanup (kea-lfc) during a run.
                "lease-database": { "type": "memfile", "persist": true, "name": p("kea-leases4.csv"), "lfc-interval": 0 },
                "multi-threading": {
                    "enable-multi-threading": true,
                    "thread-pool-size": KEA_THREADS,
                    "packet-queue-size": KEA_QUEUE,
                },
                // Hosts are known by MAC, as the head's and dnsmasq's are.
                "host-reservation-identifiers": ["hw-address"],
                "authoritative": true,
                "valid-lifetime": 600,
                "subnet4": [{
                    "id": 1,
                    "subnet": format!("{}/24", seg.addr(0)),
                    "interface": "cwn0",
                    "reservations": reservations,
                }],
                "loggers": [{
                    "name": "kea-dhcp4",
                    "output_options": [{ "output": p("kea-dhcp4.log") }],
                    "severity": "WARN",
                }],
            }
        });
        let conf = dir.join("kea-dhcp4.conf");
        std::fs::write(&conf, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        // Checked where it runs: the interface exists only in the namespace.
        let check = Command::new("ip")
            .args(["netns", "exec", ns, "kea-dhcp4", "-t", conf.to_str().unwrap()])
            .env("KEA_PIDFILE_DIR", dir)
            .env("KEA_LOCKFILE_DIR", dir)
            .output()
            .expect("kea-dhcp4 (Debian package kea-dhcp4-server)");
        assert!(
            check.status.success(),
            "kea-dhcp4 -t refused its configuration:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "kea-dhcp4", "-c", conf.to_str().unwrap()])
            .env("KEA_PIDFILE_DIR", dir)
            .env("KEA_LOCKFILE_DIR", dir)
            .stdout(Stdio::from(std::fs::File::create(dir.join("stdout.log")).unwrap()))
            .stderr(Stdio::from(std::fs::File::create(dir.join("stderr.log")).unwrap()))
            .process_group(0)
            .spawn()
            .expect("kea-dhcp4 (Debian package kea-dhcp4-server)");
        let kea = Kea { child, dir: dir.to_path_buf() };
        // Serving once its control socket exists (opened after the interfaces).
        let t0 = std::time::Instant::now();
        while !dir.join("kea4-ctrl.sock").exists() {
            assert!(t0.elapsed() < Duration::from_secs(20), "kea-dhcp4 did not start; see {}", dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_secs(1));
        kea
    }

    /// Kills Kea's whole process group and reaps it.
    fn stop(mut self) {
        let pgid = self.child.id() as i32;
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
        if let Ok(log) = std::fs::read_to_string(self.dir.join("kea-dhcp4.log")) {
            let lines: Vec<&str> = log.lines().collect();
            if !lines.is_empty() {
                eprintln!(
                    "cw-bench: kea-dhcp4's log (last lines):\n{}",
                    lines[lines.len().saturating_sub(5)..].join("\n")
                );
            }
        }
    }
}

/// The head's DHCP exchanges per second with metrics on and off, from the last [`bench_dhcp`].
pub static METRICS_DHCP: std::sync::Mutex<Option<(f64, f64)>> = std::sync::Mutex::new(None);

/// Restarts a head with `metrics.enabled = no` added to its base.ini, and waits until it serves.
fn metrics_off(h: &mut clusterware_tests::Head) {
    h.kill9();
    let mut ini = std::fs::read_to_string(&h.config).expect("base.ini");
    ini.push_str("metrics.enabled = no\n");
    std::fs::write(&h.config, ini).expect("base.ini");
    h.start();
    h.wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
}

/// Time from QEMU's start to each phase of a boot into the agent, and the same VM's re-parent
/// time after its head dies; against dnsmasq + busybox httpd booting a busybox initramfs that
/// makes its first HTTP request. Once with BIOS (QEMU's iPXE ROM), once with UEFI (OVMF's own PXE
/// client, then iPXE's `snponly.efi`).
pub fn bench_boot(r: &mut Report) {
    use clusterware_tests::vm::{Firmware, Kernel, accel, static_agent};
    let Some(k) = Kernel::find() else {
        r.section(
            "Network boot into the agent",
            "make netboot-kernel",
            "Debian's kernel was not fetched (`make netboot-kernel`); not measured.",
        );
        return;
    };
    let agent = static_agent();
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.img");
    k.initramfs(&agent, &initrd);
    let rootfs = dir.path().join("root");
    clusterware_tests::vm::busybox_root(&rootfs);
    let image = dir.path().join("root.img");
    clusterware_tests::vm::root_image(&rootfs, &agent, &image);
    let fmt = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    let mut rows = Vec::new();
    for (firmware, name) in [(Firmware::Bios, "BIOS, QEMU's iPXE ROM"), (Firmware::Uefi, "UEFI, OVMF's PXE")] {
        eprintln!("cw-bench: network boot into the agent ({name})…");
        let (marks, reparent, baseline) = boot_with(firmware, &k, &initrd, &image, dir.path());
        let up = marks[4];
        let ratio = match (up, baseline) {
            (Some(u), Some(b)) => format!("{:.2}", u.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        let mut row = vec![name.to_string()];
        row.extend(marks.iter().map(|m| fmt(*m)));
        row.extend([fmt(baseline), ratio, fmt(reparent)]);
        rows.push(row);
    }
    r.section(
        "Network boot into the agent",
        "QEMU (TCG unless KVM works, virtio-net) booting from a head in network namespaces: with SeaBIOS and QEMU's iPXE ROM, and with OVMF (Debian's ovmf, the NIC without an option ROM, so that OVMF's own PXE client loads iPXE's snponly.efi over TFTP)",
        &format!("Seconds from QEMU's start ({}) until: the head served the boot script (DHCP and iPXE done), the agent runs as /init and asks for an address (kernel and initramfs downloaded and started), the root image is unpacked (downloaded from the head, size and SHA-256 checked), the agent switches root, and the node is `up` (the image's agent reported). The baseline, with the same firmware, is dnsmasq (its own TFTP for OVMF's PXE) + busybox httpd booting the same kernel with a busybox initramfs that loads the same drivers, runs udhcpc and makes its first HTTP request (no root image). Both segments get the same empty IPv6 router advertisements. Target: up / baseline <= 1.2. Then the head that booted the VM is killed (kill -9): time until the node is up on another head.", accel()),
    );
    r.table(
        &[
            "firmware",
            "boot script",
            "agent as /init",
            "image unpacked",
            "switch root",
            "up",
            "baseline: first HTTP request",
            "up / baseline",
            "re-parent after kill -9",
        ],
        rows,
    );
}

/// One boot with `firmware`: the phases' times (boot script, agent as /init, image unpacked,
/// switch root, up), the re-parent time after kill -9 of the parent, and the baseline's time to
/// its first HTTP request.
fn boot_with(
    firmware: clusterware_tests::vm::Firmware,
    k: &clusterware_tests::vm::Kernel,
    initrd: &std::path::Path,
    image: &std::path::Path,
    dir: &std::path::Path,
) -> ([Option<Duration>; 5], Option<Duration>, Option<Duration>) {
    use clusterware_tests::netns::{cli_in, run_in};
    use clusterware_tests::vm::{Firmware, Vm};
    use std::time::Instant;
    // Ours: three heads (so that one may die), one VM.
    let mut seg = Segment::new();
    let mut c = Cluster::configure_on(&mut seg, 3, "");
    c.start_all();
    let h = &c.heads[0];
    let cfg = h.config.to_string_lossy().to_string();
    cli_in(
        h.netns.as_deref().unwrap(),
        "scyld-modimg",
        &["register", image.to_str().unwrap(), "--name", "bench", "--config", &cfg],
    );
    h.cli(
        "scyld-bootctl",
        &[
            "create",
            "--name",
            "bench",
            "--kernel",
            k.vmlinuz.to_str().unwrap(),
            "--initramfs",
            initrd.to_str().unwrap(),
            "--image",
            "bench",
            "--cmdline",
            "console=ttyS0 quiet",
        ],
    );
    h.cli("scyld-bootctl", &["default", "bench"]);
    let mac = "52:54:00:bb:00:01";
    h.cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip={}", seg.addr(101)), "_status_secs=2"]);
    let console = dir.join("console.log");
    let t0 = Instant::now();
    let vm = Vm::start_with(&mut seg, 0, mac, &console, firmware);
    let mut marks: Vec<(&str, Option<Duration>)> = vec![
        ("boot script", None),
        ("kernel running", None),
        ("image unpacked", None),
        ("switch root", None),
        ("up", None),
    ];
    let logs: Vec<std::path::PathBuf> =
        c.heads.iter().map(|x| x.dir.join(format!("log/head_{}.log", x.name))).collect();
    let deadline = Instant::now() + Duration::from_secs(300);
    while marks[4].1.is_none() && Instant::now() < deadline {
        let con = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).to_string();
        let log: String = logs.iter().map(|p| std::fs::read_to_string(p).unwrap_or_default()).collect();
        let now = t0.elapsed();
        let seen = [
            log.contains("Booting node n0"),
            con.contains("clusterware-node init: asking for an address"),
            con.contains("image unpacked"),
            con.contains("switching to the image"),
            {
                let s = h.cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
                s.code == 0 && s.json()["nodes"][0]["state"] == "up"
            },
        ];
        for (i, s) in seen.iter().enumerate() {
            if *s && marks[i].1.is_none() {
                marks[i].1 = Some(now);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Re-parent after kill -9 of the parent.
    let s: serde_json::Value = h.cli("scyld-nodectl", &["-i", "n0", "status", "--json"]).json();
    let parent = s["nodes"][0]["parent"].as_str().unwrap_or("head1").to_string();
    let dead = c.heads.iter().position(|x| x.name == parent).unwrap_or(0);
    let watch = (dead + 1) % 3;
    let killed = Instant::now();
    c.heads[dead].kill9();
    let mut reparent = None;
    while killed.elapsed() < Duration::from_secs(60) {
        let s = c.heads[watch].cli("scyld-nodectl", &["-i", "n0", "status", "--json"]);
        if s.code == 0 && s.json()["nodes"][0]["state"] == "up" && s.json()["nodes"][0]["parent"] != parent.as_str() {
            reparent = Some(killed.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(vm);
    drop(c);
    drop(seg);

    // Baseline: dnsmasq (DHCP, iPXE script URL) + busybox httpd (script, kernel, initramfs), a
    // busybox initramfs whose /init loads the same drivers, runs udhcpc and makes an HTTP request.
    let mut seg = Segment::new();
    let srv = seg.addr(13);
    let ns = seg.member("bs", Some(srv));
    let www = dir.join("www");
    let _ = std::fs::remove_dir_all(&www);
    std::fs::create_dir_all(&www).unwrap();
    std::fs::copy(&k.vmlinuz, www.join("vmlinuz")).unwrap();
    std::fs::write(
        www.join("boot.ipxe"),
        format!(
            "#!ipxe\nkernel http://{srv}:8000/vmlinuz initrd=initrd.img console=ttyS0 quiet\ninitrd http://{srv}:8000/initrd.img\nboot\n"
        ),
    )
    .unwrap();
    std::fs::write(www.join("ping"), "pong\n").unwrap();
    let mut entries = std::collections::BTreeMap::new();
    use clusterware_shared::cpio::Entry;
    for d in ["bin", "dev", "proc", "sys", "etc"] {
        entries.insert(d.to_string(), Entry::Dir(0o755));
    }
    entries.insert("dev/console".into(), Entry::Char(5, 1));
    entries.insert("bin/busybox".into(), Entry::File { data: std::fs::read("/bin/busybox").unwrap(), mode: 0o755 });
    let dep = std::fs::read_to_string(k.root.join("lib/modules").join(&k.version).join("modules.dep")).unwrap();
    let dep = clusterware_initramfs::parse_modules_dep(&dep).expect("modules.dep");
    let (order, _) =
        clusterware_initramfs::resolve(&dep, &["virtio_net".into(), "virtio_pci".into()]).expect("modules");
    let mut insmods = String::new();
    for m in &order {
        let data = std::fs::read(k.root.join("lib/modules").join(&k.version).join(m)).unwrap();
        let name = m.rsplit('/').next().unwrap().to_string();
        entries.insert(format!("bin/{name}"), Entry::File { data, mode: 0o644 });
        insmods.push_str(&format!("/bin/busybox insmod /bin/{name}\n"));
    }
    // The baseline VM's /init: everything here runs inside the guest (its own eth0), not on
    // this machine.
    entries.insert(
        "init".into(),
        Entry::File {
            data: format!("#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox mount -t sysfs sys /sys\n/bin/busybox mount -t devtmpfs dev /dev\n{insmods}/bin/busybox ip link set eth0 up\n/bin/busybox udhcpc -i eth0 -q -n -s /bin/dhcp.sh\n/bin/busybox wget -q -O /dev/null http://{srv}:8001/ping\n/bin/busybox sleep 600\n").into_bytes(),
            mode: 0o755,
        },
    );
    entries.insert(
        "bin/dhcp.sh".into(),
        Entry::File {
            data: b"#!/bin/busybox sh\n[ \"$1\" = bound ] && /bin/busybox ip addr add $ip/24 dev $interface\nexit 0\n"
                .to_vec(),
            mode: 0o755,
        },
    );
    std::fs::write(
        www.join("initrd.img"),
        clusterware_shared::cpio::gzip(&clusterware_shared::cpio::write(&entries), 1),
    )
    .unwrap();
    let mut httpd = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "busybox",
            "httpd",
            "-f",
            "-p",
            &format!("{srv}:8000"),
            "-h",
            www.to_str().unwrap(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The booted baseline's first HTTP request lands here.
    let ping = run_in(Some(&ns), || std::net::TcpListener::bind((srv, 8001))).expect("ping listener");
    let bmac = "52:54:00:bb:00:02";
    let mut dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "dnsmasq",
            "--no-daemon",
            "--port=0",
            "--interface=cwn0",
            "--bind-interfaces",
            "--leasefile-ro",
            "--no-resolv",
            "--no-hosts",
        ])
        .arg(format!("--dhcp-range={},static,255.255.255.0,600", seg.addr(0)))
        .arg(format!("--dhcp-host={bmac},{}", seg.addr(102)))
        .arg("--dhcp-userclass=set:ipxe,iPXE")
        .arg(format!("--dhcp-boot=tag:ipxe,http://{srv}:8000/boot.ipxe"))
        // OVMF's PXE client: iPXE's snponly.efi from dnsmasq's own TFTP server.
        .args(match firmware {
            Firmware::Bios => vec![],
            Firmware::Uefi | Firmware::UefiSecureBoot => vec![
                "--enable-tftp".to_string(),
                "--tftp-root=/usr/lib/ipxe".to_string(),
                "--dhcp-match=set:efi64,option:client-arch,7".to_string(),
                "--dhcp-boot=tag:efi64,tag:!ipxe,snponly.efi".to_string(),
            ],
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The same empty router advertisements as the heads send, so iPXE does not wait for IPv6.
    let ra_sock = run_in(Some(&ns), || clusterware_head::netboot::ra::open("cwn0"));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ra_thread = ra_sock.ok().map(|s| {
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                if let Ok(fd) = clusterware_head::netboot::ra::register(s) {
                    clusterware_head::netboot::ra::run(fd, "cwn0".into(), stop_rx).await;
                }
            })
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    let bconsole = dir.join("baseline.log");
    let t1 = Instant::now();
    let bvm = Vm::start_with(&mut seg, 1, bmac, &bconsole, firmware);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = ping.accept() {
            let _ = tx.send(());
            let _ = std::io::Write::write_all(&mut s, b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\npong\n");
        }
    });
    let baseline = rx.recv_timeout(Duration::from_secs(120)).ok().map(|_| t1.elapsed());
    if baseline.is_none() {
        let con = String::from_utf8_lossy(&std::fs::read(&bconsole).unwrap_or_default()).to_string();
        let tail: Vec<&str> = con.lines().rev().take(15).collect();
        eprintln!(
            "cw-bench: the baseline VM made no HTTP request; its console ends:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    drop(bvm);
    let _ = stop_tx.send(true);
    if let Some(t) = ra_thread {
        let _ = t.join();
    }
    let _ = dnsmasq.kill();
    let _ = httpd.kill();
    let _ = dnsmasq.wait();
    let _ = httpd.wait();

    ([marks[0].1, marks[1].1, marks[2].1, marks[3].1, marks[4].1], reparent, baseline)
}
