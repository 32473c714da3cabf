//! Hostile clients: each attack on a head's network-facing endpoints, repeated, with the head held
//! to bounds (memory, descriptors, log lines) and answering health checks throughout.

use clusterware_tests::{Cluster, Head, poll_until};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

/// A field of `/proc/PID/status`, in KiB.
fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} of {pid}"))
}

/// A TCP connection to `to` from source address `from` (any loopback address is this machine).
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).expect("socket");
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(SocketAddrV4::new(from, 0))).expect("bind");
    let SocketAddr::V4(to) = to else { panic!("IPv4 only") };
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to)).expect("connect");
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn addr(h: &Head) -> SocketAddr {
    SocketAddr::from((h.ip, h.port))
}

/// One request on a fresh connection from `from`; the whole answer (status line first).
fn request(from: Ipv4Addr, h: &Head, req: &str) -> String {
    let mut s = connect_from(from, addr(h));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Health, asked from an address of its own (not the attacker's).
fn healthy(h: &Head) -> bool {
    let from = Ipv4Addr::new(127, 0, 0, 99);
    request(from, h, "GET /api/v1/health HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n").starts_with("HTTP/1.1 200")
}

fn log_lines(h: &Head, needle: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(h.dir.join("log")).into_iter().flatten().flatten() {
        n += std::fs::read_to_string(e.path()).unwrap_or_default().lines().filter(|l| l.contains(needle)).count();
    }
    n
}

/// Twelve clients each send a 60 MiB body to a node route from an address no node has: each is
/// refused before its body is read, the head's memory stays within 64 MiB of where it was, and
/// health answers throughout.
#[test]
fn large_bodies_on_node_routes_are_refused_before_they_are_read() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let pid = h.pid().expect("head pid");
    let before = status_kib(pid, "VmRSS:");
    const BODY: usize = 60 << 20;
    std::thread::scope(|s| {
        let attackers: Vec<_> = (0..12u8)
            .map(|i| {
                s.spawn(move || {
                    let mut c = connect_from(Ipv4Addr::new(127, 0, 1, 10 + i), addr(h));
                    let head = format!(
                        "POST /api/v1/agent/status HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\ncontent-length: {BODY}\r\n\r\n"
                    );
                    c.write_all(head.as_bytes()).unwrap();
                    let chunk = vec![b' '; 1 << 20];
                    let mut sent = 0;
                    while sent < BODY && c.write_all(&chunk).is_ok() {
                        sent += chunk.len();
                    }
                    let mut answer = Vec::new();
                    let _ = c.read_to_end(&mut answer);
                    (sent, String::from_utf8_lossy(&answer).into_owned())
                })
            })
            .collect();
        for _ in 0..5 {
            assert!(healthy(h), "health during the attack");
        }
        for a in attackers {
            let (sent, answer) = a.join().unwrap();
            // The refusal comes before the body; the client may see it or only the closed connection.
            assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 413"), "sent {sent}: {answer}");
        }
    });
    // A declared length past the limit is refused at once, with the limit in the answer.
    let answer = request(
        Ipv4Addr::new(127, 0, 1, 9),
        h,
        "POST /api/v1/agent/status HTTP/1.1\r\nhost: h\r\ncontent-length: 1000000\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 413") && answer.contains("at most 65536 bytes"), "{answer}");
    let peak = status_kib(pid, "VmHWM:");
    assert!(peak < before + (64 << 10), "head memory went from {before} KiB to a peak of {peak} KiB");
    assert!(healthy(h));
}

/// 300 connections that send half a request and wait, from one address, to a head allowed 256
/// descriptors: the head keeps serving everyone else, answers the address's connections past its
/// share with 503 at once, and closes the idle ones after its header timeout.
#[test]
fn idle_half_sent_connections_cannot_starve_a_head() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let pid = h.pid().expect("head pid");
    let out = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=256:256"])
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "prlimit: {}", String::from_utf8_lossy(&out.stderr));
    let attacker = Ipv4Addr::new(127, 0, 2, 10);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..300 {
        let mut s = connect_from(attacker, addr(h));
        s.write_all(b"GET /api/v1/health HTTP/1.1\r\nhost: h\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(n) if n > 0 => {
                let answer = String::from_utf8_lossy(&buf[..n]);
                assert!(answer.starts_with("HTTP/1.1 503") && answer.contains("limit per address"), "{answer}");
                refused += 1;
            }
            _ => held.push(s),
        }
    }
    assert_eq!(held.len(), 64, "the address holds its share ({refused} refused)");
    assert!(healthy(h), "health from another address with the attacker's connections open");
    let out = h.cli("scyld-nodectl", &["ls"]);
    assert_eq!(out.code, 0, "the CLI works during the attack: {out:?}");
    // The header timeout closes what never finished its headers.
    let start = Instant::now();
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got an answer: {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    assert!(start.elapsed() < Duration::from_secs(40), "idle connections closed within the header timeout");
    // The address has its share back.
    let answer = request(attacker, h, "GET /api/v1/health HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(log_lines(h, "limit per address") <= 1, "one log line a minute per address");
}

/// A flood of refused requests (unknown MACs, wrong credentials) writes a bounded number of log
/// lines, and says how many it left out.
#[test]
fn refusals_are_logged_at_a_bounded_rate() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let from = Ipv4Addr::new(127, 0, 3, 10);
    let mut s = connect_from(from, addr(h));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    // Keep-alive: one connection, many requests, each answer read whole.
    let mut one = |req: String| {
        s.write_all(req.as_bytes()).unwrap();
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).unwrap();
    };
    for i in 0..2000u32 {
        let mac = format!("52:54:00:{:02x}:{:02x}:{:02x}", i >> 16 & 0xff, i >> 8 & 0xff, i & 0xff);
        one(format!("GET /api/v1/agent/heads?mac={mac} HTTP/1.1\r\nhost: h\r\n\r\n"));
        one("GET /api/v1/nodes HTTP/1.1\r\nhost: h\r\nauthorization: Bearer wrong\r\n\r\n".into());
    }
    poll_until("the head logs", Duration::from_secs(5), || log_lines(h, "unknown MAC refused") > 0);
    std::thread::sleep(Duration::from_millis(500));
    let unknown = log_lines(h, "unknown MAC refused");
    let credential = log_lines(h, "wrong admin credential refused");
    assert!(unknown <= 30, "{unknown} log lines for 2000 unknown MACs");
    assert_eq!(credential, 1, "one line a minute for one address's wrong credentials");
    assert!(healthy(h));
}

/// Named admin tokens: created on one head, accepted by every head, listed without their secret,
/// kept out of the logs, and refused everywhere once revoked.
#[test]
fn named_tokens_work_on_every_head_until_revoked() {
    let c = Cluster::etcd(2);
    let (h1, h2) = (&c.heads[0], &c.heads[1]);
    let out = h1.cli("scyld-clusterctl", &["tokens", "create", "alice", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let token = out.json()["token"].as_str().expect("token").to_string();
    assert!(token.starts_with("cwt_") && token.len() == 68, "{token}");
    for h in [h1, h2] {
        poll_until("the token is accepted", Duration::from_secs(10), || {
            h.api("GET", "/nodes", Some(&token), None).0 == 200
        });
    }
    let ls = h2.cli("scyld-clusterctl", &["tokens", "ls", "--json"]);
    assert!(ls.code == 0 && ls.stdout.contains("\"alice\"") && !ls.stdout.contains(&token), "{ls:?}");
    let forged = format!("cwt_{}", "0".repeat(64));
    assert_eq!(h1.api("GET", "/nodes", Some(&forged), None).0, 403);
    let dup = h1.cli("scyld-clusterctl", &["tokens", "create", "alice"]);
    assert!(dup.code == 1 && dup.stderr.contains("exists"), "{dup:?}");
    let bad = h1.cli("scyld-clusterctl", &["tokens", "create", "a\u{1b}[2J"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    let out = h2.cli("scyld-clusterctl", &["tokens", "revoke", "alice"]);
    assert!(out.code == 0 && out.stdout.contains("revoked token alice"), "{out:?}");
    for h in [h1, h2] {
        poll_until("the revoked token is refused", Duration::from_secs(10), || {
            h.api("GET", "/nodes", Some(&token), None).0 == 403
        });
    }
    let gone = h1.cli("scyld-clusterctl", &["tokens", "revoke", "alice"]);
    assert!(gone.code == 1 && gone.stderr.contains("no token is named alice"), "{gone:?}");
    assert_eq!(log_lines(h1, &token) + log_lines(h2, &token), 0, "the token is in a log");
}

/// The database is the heads' alone: a head's etcd member has no TCP client port, only a socket
/// in its private data dir; root (the head) reaches it, another user of the machine can neither
/// read nor write through it.
#[test]
fn only_the_head_reaches_its_database() {
    let c = Cluster::etcd(2);
    let h = &c.heads[0];
    let data = h.dir.join("etcd").canonicalize().unwrap();
    let endpoint = format!("--endpoints=unix://{}", data.join("client.sock:0").display());
    let etcdctl = |as_nobody: bool, args: &[&str]| {
        let mut cmd = if as_nobody {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "etcdctl"]);
            c
        } else {
            std::process::Command::new("etcdctl")
        };
        cmd.env("ETCDCTL_API", "3").args(["--dial-timeout=2s", "--command-timeout=3s", &endpoint]).args(args);
        cmd.output().expect("etcdctl (Debian package etcd-client)")
    };
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "the member's data dir");
    let root = etcdctl(false, &["get", "--prefix", "/", "--keys-only", "--limit=1"]);
    assert!(root.status.success(), "root reaches the member: {}", String::from_utf8_lossy(&root.stderr));
    let read = etcdctl(true, &["get", "--prefix", "/"]);
    assert!(!read.status.success() && read.stdout.is_empty(), "nobody read the database: {read:?}");
    let write = etcdctl(true, &["put", "/clusterware/keys/evil", "{}"]);
    assert!(!write.status.success(), "nobody wrote to the database: {write:?}");
    let check = etcdctl(false, &["get", "/clusterware/keys/evil"]);
    assert!(check.status.success() && check.stdout.is_empty(), "{check:?}");
    // The member listens on TCP for its peers only.
    let pid = h.pid().unwrap();
    let member = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| {
            // `PID (COMM) STATE PPID …`
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let Some((comm, rest)) = stat.split_once(") ") else { return false };
            comm.ends_with("(etcd") && rest.split_whitespace().nth(1) == Some(&pid.to_string())
        })
        .expect("the head's etcd member");
    let ss = std::process::Command::new("ss").args(["-ltnpH"]).output().expect("ss (iproute2)");
    let listening: Vec<String> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={member},")))
        .map(|l| l.split_whitespace().nth(3).unwrap_or_default().to_string())
        .collect();
    let peer = std::fs::read_to_string(&h.config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("database.peer_port = ").map(str::to_string))
        .unwrap();
    assert_eq!(listening, vec![format!("{}:{peer}", h.ip)], "the member's TCP listeners");
}
