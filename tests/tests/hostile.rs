//! Hostile clients: each attack on a head's network-facing endpoints, repeated, with the head held
//! to bounds (memory, descriptors, log lines) and answering health checks throughout.

use clusterware_tests::{Cluster, Head, TlsStream, poll_until, tls_stream};
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

/// The plain-HTTP port (what firmware fetches).
fn plain_addr(h: &Head) -> SocketAddr {
    SocketAddr::from((h.ip, h.port))
}

/// The HTTPS port (the API, the agent channel).
fn tls_addr(h: &Head) -> SocketAddr {
    SocketAddr::from((h.ip, h.tls_port))
}

/// A TLS connection to `h`'s API from `from`.
fn tls_from(from: Ipv4Addr, h: &Head) -> TlsStream {
    tls_stream(connect_from(from, tls_addr(h)), h)
}

fn read_all(s: &mut impl Read) -> String {
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// One request over TLS on a fresh connection from `from`; the whole answer (status line first).
fn request(from: Ipv4Addr, h: &Head, req: &str) -> String {
    let mut s = tls_from(from, h);
    s.write_all(req.as_bytes()).unwrap();
    read_all(&mut s)
}

/// One request over plain HTTP on a fresh connection from `from`.
fn plain_request(from: Ipv4Addr, h: &Head, req: &str) -> String {
    let mut s = connect_from(from, plain_addr(h));
    s.write_all(req.as_bytes()).unwrap();
    read_all(&mut s)
}

/// Health, asked from an address of its own (not the attacker's), on both ports.
fn healthy(h: &Head) -> bool {
    let from = Ipv4Addr::new(127, 0, 0, 99);
    let req = "GET /api/v1/health HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n";
    request(from, h, req).starts_with("HTTP/1.1 200") && plain_request(from, h, req).starts_with("HTTP/1.1 200")
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
                    let mut c = tls_from(Ipv4Addr::new(127, 0, 1, 10 + i), h);
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
    // Plain HTTP refuses anything but what firmware fetches, without reading the body.
    let answer = plain_request(
        Ipv4Addr::new(127, 0, 1, 9),
        h,
        "POST /api/v1/agent/status HTTP/1.1\r\nhost: h\r\ncontent-length: 1000000\r\nconnection: close\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 404") && answer.contains("the API is on HTTPS"), "{answer}");
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
        let mut s = connect_from(attacker, plain_addr(h));
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
    let answer = plain_request(attacker, h, "GET /api/v1/health HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
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
    let mut reader = std::io::BufReader::new(tls_from(from, h));
    // Keep-alive: one connection, many requests, each answer read whole.
    let mut one = |req: String| {
        reader.get_mut().write_all(req.as_bytes()).unwrap();
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
    let endpoint = h.etcd_endpoint();
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
    // The peer port speaks TLS only, and only to a peer with a certificate from the cluster CA:
    // plain HTTP, TLS without a certificate and TLS with a certificate of another CA all fail;
    // the head's own certificate gets an answer (so it is the certificate that decides).
    let tls = h.ca_file().parent().unwrap().to_path_buf();
    let url = format!("https://{}:{peer}/members", h.ip);
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--http1.1", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(args)
            .output()
            .expect("curl")
    };
    let ca = tls.join("ca.pem");
    let plain = curl(&[&format!("http://{}:{peer}/members", h.ip)]);
    assert!(String::from_utf8_lossy(&plain.stdout) != "200", "plain HTTP to the peer port: {plain:?}");
    let anonymous = curl(&["--cacert", ca.to_str().unwrap(), &url]);
    assert!(!anonymous.status.success(), "TLS without a certificate: {anonymous:?}");
    let other = clusterware_shared::pki::Ca::create().unwrap();
    let forged = other.issue("head1", &clusterware_shared::pki::head_names("head1", &[h.ip.into()]), 1).unwrap();
    let fdir = c.dir().join("forged");
    clusterware_shared::pki::write_issued(&fdir, "c.pem", "c.key", &forged).unwrap();
    let (fc, fk) = (fdir.join("c.pem"), fdir.join("c.key"));
    let foreign =
        curl(&["--cacert", ca.to_str().unwrap(), "--cert", fc.to_str().unwrap(), "--key", fk.to_str().unwrap(), &url]);
    assert!(!foreign.status.success(), "TLS with another CA's certificate: {foreign:?}");
    let (hc, hk) = (tls.join("head.pem"), tls.join("head.key"));
    let own =
        curl(&["--cacert", ca.to_str().unwrap(), "--cert", hc.to_str().unwrap(), "--key", hk.to_str().unwrap(), &url]);
    assert!(
        own.status.success() && String::from_utf8_lossy(&own.stdout) == "200",
        "the head's own certificate: {own:?}"
    );
}

/// Plain HTTP serves what firmware fetches and nothing else: no admin route (a credential sent
/// there is never looked at), no agent route, no root image, no peer download; the CA comes with
/// its proof and as the archive the boot script loads. HTTPS is checked against the cluster CA:
/// a client trusting another CA refuses the head, and the CLIs refuse to send a credential over
/// plain HTTP.
#[test]
fn plain_http_serves_only_what_firmware_fetches() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let dir = c.dir().join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ids = std::collections::BTreeMap::new();
    for kind in ["kernel", "initramfs", "rootfs", "other"] {
        let f = dir.join(kind);
        std::fs::write(&f, format!("{kind} bytes")).unwrap();
        let v = h.cli("scyld-clusterctl", &["files", "upload", f.to_str().unwrap(), "--kind", kind, "--json"]).json();
        ids.insert(kind, v["id"].as_str().unwrap().to_string());
    }
    let from = Ipv4Addr::new(127, 0, 4, 10);
    let get = |path: &str, extra: &str| {
        plain_request(from, h, &format!("GET /api/v1{path} HTTP/1.1\r\nhost: h\r\n{extra}connection: close\r\n\r\n"))
    };
    // Admin routes: refused before the credential is looked at (a right one, too).
    let bearer = format!("authorization: Bearer {}\r\n", c.token);
    for path in ["/nodes", "/heads", "/database", "/secrets", "/tokens"] {
        let a = get(path, &bearer);
        assert!(a.starts_with("HTTP/1.1 404") && a.contains("the API is on HTTPS"), "{path}: {a}");
    }
    assert_eq!(log_lines(h, "credential"), 0, "no credential check on plain HTTP");
    let a = get("/agent/heads?mac=52:54:00:00:00:01", "");
    assert!(a.starts_with("HTTP/1.1 404"), "{a}");
    // Boot files: kernels and initramfs images only; never to peers.
    for (kind, ok) in [("kernel", true), ("initramfs", true), ("rootfs", false), ("other", false)] {
        let a = get(&format!("/files/{}/content", ids[kind]), "");
        if ok {
            assert!(a.starts_with("HTTP/1.1 200") && a.ends_with(&format!("{kind} bytes")), "{kind}: {a}");
        } else {
            assert!(a.starts_with("HTTP/1.1 403") && a.contains("over HTTPS only"), "{kind}: {a}");
        }
        // Over HTTPS every kind is served.
        assert_eq!(h.content(&ids[kind]), (200, format!("{kind} bytes").into_bytes()));
    }
    let a = get(&format!("/files/{}/content?peer=1", ids["kernel"]), "");
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");
    // The CA: with a proof that only the password gives, and as a newc archive for nodes.
    let a = get("/cluster/ca", "");
    let body: serde_json::Value = serde_json::from_str(a.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let ca = h.ca();
    assert_eq!(body["cert_pem"], ca.as_str());
    assert_eq!(body["proof"], clusterware_shared::pki::ca_proof(clusterware_tests::PASS, &ca).as_str());
    assert_ne!(body["proof"], clusterware_shared::pki::ca_proof("another password", &ca).as_str());
    assert_eq!(body["api_url"], h.url().as_str());
    // (Its content, the CA at etc/clusterware/ca.pem, is checked by the head's unit test; the
    // UEFI boot tests show a node finds it.)
    let a = get("/boot/ca.cpio", "");
    assert!(a.starts_with("HTTP/1.1 200") && a.contains("content-type: application/octet-stream"), "{a}");
    // Boot files for UEFI HTTP Boot: the iPXE binaries of tftp.dir (Debian's /usr/lib/ipxe), with
    // their length (firmware asks with HEAD first); nothing outside the directory, however the
    // name is spelt, and not Debian's ipxe.efi, a link to /boot.
    let efi = std::fs::read("/usr/lib/ipxe/snponly.efi").expect("Debian's ipxe (make test installs it)");
    let a = get("/boot/files/snponly.efi", "");
    assert!(a.starts_with("HTTP/1.1 200") && a.contains("content-type: application/efi"), "{}", &a[..200]);
    assert!(a.contains(&format!("content-length: {}\r\n", efi.len())), "{}", &a[..200]);
    let head =
        plain_request(from, h, "HEAD /api/v1/boot/files/snponly.efi HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && head.contains(&format!("content-length: {}\r\n", efi.len())), "{head}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {head}");
    for name in ["..%2F..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "ipxe.efi", "..", "%2E%2E%2Fipxe%2Fsnponly.efi"]
    {
        let a = get(&format!("/boot/files/{name}"), "");
        assert!(a.starts_with("HTTP/1.1 403") || a.starts_with("HTTP/1.1 404"), "{name}: {a}");
        assert!(!a.contains("root:"), "{name}: {a}");
    }
    assert!(get("/boot/files/no-such.efi", "").starts_with("HTTP/1.1 404"));
    // Keys readable by root alone.
    for key in ["ca.key", "head.key"] {
        let m = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(h.ca_file().with_file_name(key)).unwrap().permissions(),
        );
        assert_eq!(m & 0o777, 0o600, "{key}");
    }
    // A client trusting another CA refuses this head; so does the CLI given that CA.
    let other = clusterware_shared::pki::Ca::create().unwrap();
    let client = clusterware_client::BlockingClient::new(
        clusterware_client::Config::new(&h.url()).ca_pem(&other.cert_pem).timeout_secs(5),
    )
    .unwrap();
    let e = client.health().unwrap_err();
    assert!(e.is_transport(), "{e}");
    let foreign = c.dir().join("foreign-ca.pem");
    std::fs::write(&foreign, &other.cert_pem).unwrap();
    let out = h.cli("scyld-nodectl", &["--ca-file", foreign.to_str().unwrap(), "ls"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("certificate"), "{out:?}");
    // The password-derived credential: on the head itself, and from elsewhere only for what a
    // joining head asks.
    let tls_get = |path: &str| {
        request(from, h, &format!("GET /api/v1{path} HTTP/1.1\r\nhost: h\r\n{bearer}connection: close\r\n\r\n"))
    };
    let a = tls_get("/nodes");
    assert!(a.starts_with("HTTP/1.1 403") && a.contains("works only on the head itself"), "{a}");
    assert!(tls_get("/cluster").starts_with("HTTP/1.1 200"));
    assert_eq!(h.api("GET", "/nodes", Some(&c.token), None).0, 200, "from this machine's own address");
    // ... and the right CA works from anywhere, given the head's https URL.
    let token = c.dir().join("token");
    std::fs::write(&token, &c.token).unwrap();
    let out = clusterware_tests::cli(
        "scyld-nodectl",
        &[
            "--head",
            &h.url(),
            "--ca-file",
            h.ca_file().to_str().unwrap(),
            "--token-file",
            token.to_str().unwrap(),
            "ls",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(healthy(h));
}

/// Node identity: node requests need the node's current certificate, which the node gets once
/// for a one-time token bound to its MAC and address; a replayed, foreign or misdirected token
/// gets nothing; root images go to enrolled nodes only; a revoked node is shut out at once.
#[test]
fn nodes_prove_who_they_are_before_they_get_anything() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let (node_ip, other_ip) = (Ipv4Addr::new(127, 0, 5, 1), Ipv4Addr::new(127, 0, 5, 2));
    let mac = "52:54:00:05:00:01";
    h.cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip={node_ip}")]).ok();
    let img = c.dir().join("root.img");
    std::fs::write(&img, b"root image bytes").unwrap();
    let up = h.cli("scyld-clusterctl", &["files", "upload", img.to_str().unwrap(), "--kind", "rootfs", "--json"]);
    let rootfs = up.json()["id"].as_str().unwrap().to_string();
    // One exchange over TLS from `from`, optionally presenting a certificate.
    let call = |from: Ipv4Addr, identity: Option<(&str, &str)>, req: String| {
        let mut s = clusterware_tests::tls_stream_as(connect_from(from, tls_addr(h)), h, identity);
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        read_all(&mut s)
    };
    let get = |path: &str| format!("GET /api/v1{path} HTTP/1.1\r\nhost: h\r\nconnection: close\r\n\r\n");
    let enroll = |token: &str, mac: &str| {
        let body = format!(r#"{{"mac":"{mac}","token":"{token}"}}"#);
        format!(
            "POST /api/v1/agent/enroll HTTP/1.1\r\nhost: h\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let heads = get(&format!("/agent/heads?mac={mac}"));
    let image = get(&format!("/files/{rootfs}/content"));
    // Without a certificate: nothing, even from the node's address.
    let a = call(node_ip, None, heads.clone());
    assert!(a.starts_with("HTTP/1.1 403") && a.contains("presented no certificate"), "{a}");
    let a = call(node_ip, None, image.clone());
    assert!(a.starts_with("HTTP/1.1 403"), "{a}");
    // The boot script carries a token only when the node itself asks.
    let script = |from: Ipv4Addr| plain_request(from, h, &get(&format!("/boot/script?mac={mac}")));
    assert!(!script(other_ip).contains("cw.enroll="));
    let t = h.cli("scyld-nodectl", &["-i", "n0", "enroll", "--json"]).json();
    let token = t["tokens"][0]["token"].as_str().unwrap().to_string();
    assert!(token.starts_with("cwe_") && token.len() == 68, "{token}");
    // A token from another address, for another MAC, or made up: refused, and still good.
    let a = call(other_ip, None, enroll(&token, mac));
    assert!(a.starts_with("HTTP/1.1 403") && a.contains("enrolls only from its address"), "{a}");
    let a = call(node_ip, None, enroll(&token, "52:54:00:05:00:99"));
    assert!(a.starts_with("HTTP/1.1 403") && a.contains("not made for MAC"), "{a}");
    let a = call(node_ip, None, enroll(&format!("cwe_{}", "0".repeat(64)), mac));
    assert!(a.starts_with("HTTP/1.1 403") && a.contains("no such token"), "{a}");
    let a = call(node_ip, None, enroll(&token, mac));
    assert!(a.starts_with("HTTP/1.1 200"), "{a}");
    let got: serde_json::Value = serde_json::from_str(a.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let (cert, key) = (got["cert_pem"].as_str().unwrap(), got["key_pem"].as_str().unwrap());
    assert_eq!(got["ca_pem"], h.ca().as_str());
    // Replayed: nothing.
    let a = call(node_ip, None, enroll(&token, mac));
    assert!(a.starts_with("HTTP/1.1 403") && a.contains("no such token"), "{a}");
    // With its certificate the node is served; from another address it is not.
    poll_until("the certificate is current", Duration::from_secs(10), || {
        call(node_ip, Some((cert, key)), heads.clone()).starts_with("HTTP/1.1 200")
    });
    let a = call(node_ip, Some((cert, key)), image.clone());
    assert!(a.starts_with("HTTP/1.1 200") && a.ends_with("root image bytes"), "{a}");
    // A node that comes back resumes its TLS session (no new certificate check in the
    // handshake); it is still judged by its current certificate record on every request.
    let session = clusterware_tests::tls_client_config(&h.ca(), Some((cert, key)));
    let resumed = |req: &str| {
        let mut s = clusterware_tests::tls_stream_with(connect_from(node_ip, tls_addr(h)), h.ip, &session);
        s.write_all(req.as_bytes()).unwrap();
        let answer = read_all(&mut s);
        (s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed), answer)
    };
    assert!(resumed(&heads).1.starts_with("HTTP/1.1 200"));
    let (again, a) = resumed(&image);
    assert!(again && a.starts_with("HTTP/1.1 200") && a.ends_with("root image bytes"), "resumed {again}: {a}");
    assert!(call(other_ip, Some((cert, key)), heads.clone()).starts_with("HTTP/1.1 403"));
    // A certificate of another CA does not get past the handshake.
    let other = clusterware_shared::pki::Ca::create().unwrap();
    let forged = other.issue("n0", &[node_ip.to_string()], 1).unwrap();
    let a = call(node_ip, Some((&forged.cert_pem, &forged.key_pem)), heads.clone());
    assert!(!a.starts_with("HTTP/1.1 200"), "{a}");
    // The boot script asked from the node's address carries a token of its own.
    for (f, kind) in [("vmlinuz", "kernel"), ("initrd.img", "initramfs")] {
        std::fs::write(c.dir().join(f), kind).unwrap();
    }
    let (k, i) = (c.dir().join("vmlinuz"), c.dir().join("initrd.img"));
    h.cli(
        "scyld-bootctl",
        &["create", "--name", "b", "--kernel", k.to_str().unwrap(), "--initramfs", i.to_str().unwrap()],
    )
    .ok();
    h.cli("scyld-bootctl", &["default", "b"]).ok();
    let text = script(node_ip);
    let bt = text.split_whitespace().find_map(|w| w.strip_prefix("cw.enroll=")).expect("a token in the node's script");
    assert!(call(node_ip, None, enroll(bt, mac)).starts_with("HTTP/1.1 200"));
    assert!(!script(other_ip).contains("cw.enroll="), "no token for anyone else");
    // Revoked: shut out at once, whichever certificate it holds.
    let out = h.cli("scyld-nodectl", &["-i", "n0", "revoke"]);
    assert!(out.code == 0 && out.stdout.contains("revoked n0"), "{out:?}");
    poll_until("the revocation is seen", Duration::from_secs(10), || {
        call(node_ip, Some((cert, key)), heads.clone()).starts_with("HTTP/1.1 403")
    });
    assert!(call(node_ip, Some((cert, key)), image.clone()).starts_with("HTTP/1.1 403"));
    // Resuming a session made before the revocation gets it nothing either.
    for req in [&heads, &image] {
        let (again, a) = resumed(req);
        assert!(again && a.starts_with("HTTP/1.1 403"), "resumed {again}: {a}");
    }
    assert_eq!(log_lines(h, &token), 0, "a token is in a log");
    assert!(healthy(h));
}
