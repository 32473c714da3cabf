//! Membership benchmarks: the time a 4th head's `scyld-install --join` takes with 10,000 nodes
//! and 1,000 files in the database, beside a bare etcd member joined the same way by hand
//! (`etcdctl member add --learner`, start, `etcdctl member promote`) on the same cluster; and
//! the time from a head's death to its automatic ejection, beside its floor (lease TTL plus the
//! failover timeout).

use crate::{Report, secs};
use clusterware_client::{BlockingClient, Config as ClientConfig};
use clusterware_tests::{Cluster, Head, LEASE_TTL, PASS, bin, free_port, poll_until};
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn ini(h: &Head, key: &str) -> String {
    let text = std::fs::read_to_string(&h.config).expect("base.ini");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key} = ")).map(str::to_string))
        .unwrap_or_else(|| panic!("{key} missing in {}", h.config.display()))
}

/// etcdctl against a head's member, through its socket in the member's data dir `dir` (etcd
/// names unix sockets `HOST:PORT`, relative to the working directory).
fn etcdctl(dir: &str, args: &[&str]) -> std::process::Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .current_dir(dir)
        .arg("--endpoints=unix://client.sock:0")
        .args(args)
        .output()
        .expect("etcdctl (Debian package etcd-client)")
}

fn voting(h: &Head) -> usize {
    let v = h.cli("managedb", &["--heads", "--json"]).json();
    v["heads"].as_array().map_or(0, |a| a.iter().filter(|x| x["db_member"]["state"] == "voting").count())
}

/// A bare etcd member joined by hand: learner, start, promote. Returns the time it took.
fn bare_join(c: &Cluster, ip: Ipv4Addr) -> Duration {
    let endpoint = ini(&c.heads[0], "database.data_dir");
    let token = ini(&c.heads[0], "database.cluster_token");
    // Peers talk TLS with certificates of the cluster CA (as the heads' members do): the bare
    // member gets one for its address from the CA in head1's tls directory.
    let tls = c.dir().join("bare-tls");
    let ca_dir = c.heads[0].config.parent().expect("config dir").join("tls");
    let ca = clusterware_shared::pki::Ca::load(&ca_dir).expect("cluster CA").expect("cluster CA in head1's tls dir");
    // Its connections come from 127.0.0.1 too: etcd checks the certificate against the source.
    let names = clusterware_shared::pki::head_names("bare", &[ip.into()]);
    let issued = ca.issue("bare", &names, 1).expect("certificate");
    clusterware_shared::pki::write_issued(&tls, "bare.pem", "bare.key", &issued).expect("certificate files");
    std::fs::copy(ca_dir.join("ca.pem"), tls.join("ca.pem")).expect("CA certificate");
    let peer = format!("https://{ip}:{}", free_port(ip));
    let client = format!("http://127.0.0.1:{}", free_port(Ipv4Addr::LOCALHOST));
    let dir = c.dir().join("bare-etcd");
    let t0 = Instant::now();
    let add = || etcdctl(&endpoint, &["member", "add", "bare", &format!("--peer-urls={peer}"), "--learner"]);
    let mut out = add();
    // etcd refuses a membership change until every member has been connected for 5 s.
    while !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unhealthy cluster") {
        std::thread::sleep(Duration::from_millis(500));
        out = add();
    }
    assert!(out.status.success(), "member add: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let initial = text
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\"").map(|r| r.trim_end_matches('"').to_string()))
        .expect("ETCD_INITIAL_CLUSTER in etcdctl's answer");
    let id = text.split_whitespace().nth(1).expect("member id").to_string();
    let log = std::fs::File::create(c.dir().join("bare-etcd.log")).expect("log");
    let mut etcd = Command::new("etcd")
        .args([
            "--name=bare",
            &format!("--data-dir={}", dir.display()),
            &format!("--listen-peer-urls={peer}"),
            &format!("--initial-advertise-peer-urls={peer}"),
            &format!("--listen-client-urls={client}"),
            &format!("--advertise-client-urls={client}"),
            &format!("--initial-cluster={initial}"),
            "--initial-cluster-state=existing",
            &format!("--initial-cluster-token={token}"),
            &format!("--peer-cert-file={}", tls.join("bare.pem").display()),
            &format!("--peer-key-file={}", tls.join("bare.key").display()),
            &format!("--peer-trusted-ca-file={}", tls.join("ca.pem").display()),
            "--peer-client-cert-auth",
            "--max-request-bytes=16777216",
        ])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("etcd");
    poll_until("the bare member promoted", Duration::from_secs(600), || {
        etcdctl(&endpoint, &["member", "promote", &id]).status.success()
    });
    let took = t0.elapsed();
    // Gone again, so that the cluster is the same for the head's join.
    poll_until("the bare member removed", Duration::from_secs(60), || {
        etcdctl(&endpoint, &["member", "remove", &id]).status.success()
    });
    let _ = etcd.kill();
    let _ = etcd.wait();
    took
}

pub fn bench_membership(r: &mut Report) {
    eprintln!("cw-bench: membership…");
    let nodes = 10_000u32;
    let files = 1_000usize;
    let mut c = Cluster::etcd(3);
    c.heads[0]
        .cli("scyld-nodectl", &["create", "--count", &nodes.to_string(), "mac=52:54:01:00:00:00", "ip=10.80.0.1"])
        .ok();
    let client = BlockingClient::new(ClientConfig::new(&c.heads[0].url()).ca_pem(&c.heads[0].ca()).token(&c.token))
        .expect("API client");
    for i in 0..files {
        let body = format!("boot file {i}\n").repeat(64);
        client
            .upload_file(&format!("f{i}"), "kernel", body.len() as u64, None, &mut body.as_bytes())
            .unwrap_or_else(|e| panic!("upload {i}: {e}"));
    }
    let ip4 = Ipv4Addr::new(c.heads[0].ip.octets()[0], c.heads[0].ip.octets()[1], c.heads[0].ip.octets()[2], 14);
    let ip5 = Ipv4Addr::new(ip4.octets()[0], ip4.octets()[1], ip4.octets()[2], 15);

    // The bare etcd join first (then removed), then the head's; a pause before each lets etcd
    // see every member connected (it refuses membership changes for 5 s after one).
    std::thread::sleep(Duration::from_secs(6));
    let bare = bare_join(&c, ip5);
    std::thread::sleep(Duration::from_secs(6));
    let prefix = c.dir().join("head4");
    let port = free_port(ip4);
    let target = format!("{}:{}", c.heads[0].ip, c.heads[0].port);
    let passf = c.dir().join("dbpass");
    std::fs::write(&passf, PASS).expect("password file");
    let t0 = Instant::now();
    let out = Command::new(bin("scyld-install"))
        .args(["--prefix", &prefix.display().to_string(), "--name", "head4", "--ip", &ip4.to_string()])
        .args(["--port", &port.to_string(), "--peer-port", &free_port(ip4).to_string()])
        .args(["--no-systemd"])
        .args(["--set", &format!("head.bind={ip4}"), "--set", &format!("head.lease_ttl={LEASE_TTL}")])
        .args(["--join", &target, "--database-passwd-file", &passf.display().to_string()])
        .output()
        .expect("scyld-install");
    let join = t0.elapsed();
    assert!(out.status.success(), "join: {}", String::from_utf8_lossy(&out.stderr));
    let h4 = Head::adopt("head4", ip4, port, prefix.join("conf/base.ini"), prefix.clone());
    assert_eq!(h4.cli("scyld-nodectl", &["ls"]).ok().lines().count(), nodes as usize);
    c.heads.push(h4);
    poll_until("four voting members", Duration::from_secs(30), || voting(&c.heads[0]) == 4);

    // Death to automatic ejection.
    let timeout = 5u64;
    c.heads[0].cli("managedb", &["failover", "enable", "--timeout", &timeout.to_string()]).ok();
    let killed = Instant::now();
    c.heads[3].kill9();
    poll_until("head4 ejected", Duration::from_secs(120), || voting(&c.heads[0]) == 3);
    let eject = killed.elapsed();
    let floor = Duration::from_secs(LEASE_TTL + timeout);

    r.section(
        "Head membership",
        "make bench (target/release/cw-bench --only membership)",
        &format!(
            "A 4th head joins a 3-head etcd cluster holding {nodes} nodes and {files} file records: `scyld-install \
             --join` from a fresh directory (configuration, learner added through the head at IP_HEAD, the head \
             started, its member catching up, promotion, serving) beside a bare etcd member joined by hand on the \
             same cluster (`etcdctl member add --learner`, start, `etcdctl member promote` until etcd accepts). \
             Then automatic failover (timeout {timeout} s, lease TTL {LEASE_TTL} s) ejects the new head after a \
             `kill -9`; its floor is TTL + timeout, the rest is detection (1 s checks) and the ejection itself."
        ),
    );
    r.table(
        &["measurement", "ClusterWare", "peer", "ratio"],
        vec![
            vec![
                format!("join of a 4th head ({nodes} nodes, {files} files)"),
                secs(join),
                format!("{} (bare etcd member)", secs(bare)),
                format!("{:.2}", join.as_secs_f64() / bare.as_secs_f64()),
            ],
            vec![
                "death to automatic ejection".into(),
                secs(eject),
                format!("{} (TTL + timeout)", secs(floor)),
                format!("{:.2}", eject.as_secs_f64() / floor.as_secs_f64()),
            ],
        ],
    );
}
