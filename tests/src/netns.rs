//! Network namespaces for tests that need a broadcast domain (DHCP, TFTP, PXE).
//!
//! Network safety: every namespace here is created by the test (`cwt<pid>x<n>…`), every
//! interface is created directly inside namespaces we created (`ip link add NAME netns A type veth
//! peer name NAME2 netns B`), and nothing in the machine's own namespace is created, renamed,
//! moved or reconfigured. Namespaces are deleted on drop, with any process still in them, and leftovers of test processes that
//! are gone are deleted before the first new one.

use crate::{Cluster, Head, LEASE_TTL, Out, bin};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use tempfile::TempDir;

const PREFIX: &str = "cwt";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip (package iproute2)");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// Runs `f` on a thread that has entered namespace `ns` (or on this thread when `None`).
pub fn run_in<T: Send>(ns: Option<&str>, f: impl FnOnce() -> T + Send) -> T {
    let Some(ns) = ns else { return f() };
    let path = format!("/var/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // This (scoped, short-lived) thread only.
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .unwrap_or_else(|e| panic!("setns {ns}: {}", std::io::Error::from(e)));
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// Runs one of the admin CLIs inside namespace `ns`.
pub fn cli_in(ns: &str, prog: &str, args: &[&str]) -> Out {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bin(prog))
        .args(args)
        .env_remove("CLUSTERWARE_HEAD")
        .env_remove("CLUSTERWARE_TOKEN")
        .env_remove("CLUSTERWARE_CONFIG")
        .output()
        .expect("run CLI in namespace");
    out.into()
}

fn sweep() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(rd) = std::fs::read_dir("/var/run/netns") else { return };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some(rest) = name.strip_prefix(PREFIX) else { continue };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            if pid.is_empty() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            delete(&name);
        }
    });
}

/// Deletes namespace `ns` after killing every process still in it: a daemon that a test started
/// there (dhclient forks into the background and may write its pid file only after its parent
/// returned) would otherwise outlive the test.
fn delete(ns: &str) {
    for _ in 0..50 {
        let pids = Command::new("ip").args(["netns", "pids", ns]).output().map(|o| o.stdout).unwrap_or_default();
        let pids: Vec<u32> = String::from_utf8_lossy(&pids).split_whitespace().filter_map(|p| p.parse().ok()).collect();
        if pids.is_empty() {
            break;
        }
        for pid in pids {
            crate::sys::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = Command::new("ip").args(["netns", "del", ns]).output();
}

/// One broadcast segment: a bridge in its own namespace, and member namespaces joined to it by
/// veth pairs. Member `i` gets 10.<net>.0.<host>/24.
pub struct Segment {
    pub net: u8,
    tag: String,
    bridge_ns: String,
    members: Vec<String>,
    links: u32,
}

impl Segment {
    pub fn new() -> Segment {
        sweep();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{PREFIX}{}x{n}", std::process::id());
        let net = (std::process::id() % 100 + n * 7 % 100 + 100) as u8;
        let bridge_ns = format!("{tag}br");
        ip(&["netns", "add", &bridge_ns]);
        ip(&["-n", &bridge_ns, "link", "set", "lo", "up"]);
        ip(&["-n", &bridge_ns, "link", "add", "cwbr0", "type", "bridge"]);
        // No STP delay: ports forward at once.
        ip(&["-n", &bridge_ns, "link", "set", "cwbr0", "type", "bridge", "forward_delay", "0"]);
        ip(&["-n", &bridge_ns, "link", "set", "cwbr0", "up"]);
        Segment { net, tag, bridge_ns, members: Vec::new(), links: 0 }
    }

    /// The namespace holding the bridge (QEMU's tap devices go there).
    pub fn bridge_ns(&self) -> &str {
        &self.bridge_ns
    }

    /// A new namespace `<tag><role>` on the segment, its interface `cwn0` with `addr` (or no
    /// address when `None`). Returns the namespace's name.
    pub fn member(&mut self, role: &str, addr: Option<Ipv4Addr>) -> String {
        let ns = format!("{}{role}", self.tag);
        ip(&["netns", "add", &ns]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        self.links += 1;
        let peer = format!("cwp{}", self.links);
        ip(&["link", "add", "cwn0", "netns", &ns, "type", "veth", "peer", "name", &peer, "netns", &self.bridge_ns]);
        ip(&["-n", &self.bridge_ns, "link", "set", &peer, "master", "cwbr0"]);
        ip(&["-n", &self.bridge_ns, "link", "set", &peer, "up"]);
        if let Some(a) = addr {
            ip(&["-n", &ns, "addr", "add", &format!("{a}/24"), "dev", "cwn0"]);
        }
        ip(&["-n", &ns, "link", "set", "cwn0", "up"]);
        self.members.push(ns.clone());
        ns
    }

    /// A tap device `name` on the bridge (for QEMU, which then runs in the bridge namespace).
    pub fn tap(&mut self, name: &str) {
        ip(&["-n", &self.bridge_ns, "tuntap", "add", "dev", name, "mode", "tap"]);
        ip(&["-n", &self.bridge_ns, "link", "set", name, "master", "cwbr0"]);
        ip(&["-n", &self.bridge_ns, "link", "set", name, "up"]);
    }

    pub fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, 0, host)
    }
}

impl Default for Segment {
    fn default() -> Self {
        Segment::new()
    }
}

/// A namespace of its own with only its loopback up: a program started in it (`make run`'s
/// head on its default ports 8080 and 8443, say) meets nothing of the machine's or of other
/// tests. Deleted on drop, with every process still in it.
pub struct Isolated {
    pub name: String,
}

impl Isolated {
    pub fn new(role: &str) -> Isolated {
        sweep();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let name = format!("{PREFIX}{}i{n}{role}", std::process::id());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Isolated { name }
    }
}

impl Drop for Isolated {
    fn drop(&mut self) {
        delete(&self.name);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for ns in self.members.iter().chain(std::iter::once(&self.bridge_ns)) {
            delete(ns);
        }
    }
}

impl Cluster {
    /// `n` heads on the etcd backend, each in its own namespace on `seg` (10.<net>.0.11, .12, …,
    /// interface `cwn0`, DHCP and TFTP on it), configured but not started. `extra` is appended to
    /// every base.ini.
    pub fn configure_on(seg: &mut Segment, n: usize, extra: &str) -> Cluster {
        let dir = TempDir::with_prefix("cw-netns-").expect("temp dir");
        let specs: Vec<(String, Ipv4Addr)> =
            (0..n).map(|i| (format!("head{}", i + 1), seg.addr(11 + i as u8))).collect();
        let initial: Vec<String> = specs.iter().map(|(name, ip)| format!("{name}=https://{ip}:2380")).collect();
        let ca = clusterware_shared::pki::Ca::create().expect("CA");
        let mut heads = Vec::new();
        for (name, ip) in specs {
            let ns = seg.member(&format!("h{}", &name[4..]), Some(ip));
            let hdir = dir.path().join(&name);
            std::fs::create_dir_all(&hdir).expect("head dir");
            let ini = format!(
                "# written by the test harness (network namespace {ns})\ndatabase.admin_pass = harness-db-pass\nhead.name = {name}\nhead.ip = {ip}\nhead.bind = {ip}\nhead.port = 8080\nhead.tls_port = 8443\nhead.lease_ttl = {LEASE_TTL}\nlogging.dir = {d}/log\nlocal_files.path = {d}/storage\ndatabase.type = etcd\ndatabase.data_dir = {d}/etcd\ndatabase.peer_port = 2380\ndatabase.initial_cluster = {ic}\ndatabase.cluster_token = netns-{tag}\ndhcp.interface = cwn0\ndhcp.defer_ms = 300\n{extra}",
                d = hdir.display(),
                ic = initial.join(","),
                tag = seg.tag,
            );
            ca.write(&hdir.join("tls")).expect("CA files");
            let config = hdir.join("base.ini");
            let mut f = std::fs::File::create(&config).expect("write base.ini");
            f.write_all(ini.as_bytes()).expect("write base.ini");
            std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            let mut h = Head::new_for_harness(name, ip, (8080, 8443), config, hdir);
            h.netns = Some(ns);
            heads.push(h);
        }
        Cluster::from_parts(heads, dir)
    }
}
