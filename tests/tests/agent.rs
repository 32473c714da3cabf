//! The node agent against real heads: a simulated fleet (`clusterware-node sim`, the agent's own
//! code for every node) on loopback addresses, heads on an etcd cluster.

use clusterware_tests::{Backend, Cluster, Head, Sim, mac_plus, poll_until};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::Duration;

/// A valid ed25519 public key (test data only).
const HEAD_KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNsdXN0ZXJ3YXJlIHRlc3Qga2V5IG9ubHkgMzJieXRl root@head";
const ADMIN_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2F4eA== admin@desk";

fn statuses(h: &Head) -> Vec<Value> {
    let out = h.cli("scyld-nodectl", &["status", "--json"]);
    if out.code != 0 {
        return Vec::new();
    }
    out.json()["nodes"].as_array().cloned().unwrap_or_default()
}

/// Polls (every 200 ms) until `f` holds for the status list seen from `h`.
fn wait_status(h: &Head, what: &str, within: Duration, f: impl Fn(&[Value]) -> bool) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let s = statuses(h);
        if !s.is_empty() && f(&s) {
            return;
        }
        if std::time::Instant::now() > deadline {
            let mut by: HashMap<String, usize> = HashMap::new();
            for n in &s {
                *by.entry(format!("{} {}", n["state"], n["parent"])).or_default() += 1;
            }
            panic!("timed out after {within:?} waiting for {what}; now: {by:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn parents(s: &[Value]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for n in s {
        *m.entry(n["parent"].as_str().unwrap_or("-").to_string()).or_default() += 1;
    }
    m
}

fn key_file(c: &Cluster) -> String {
    let p = c.dir().join("root_id_ed25519.pub");
    std::fs::write(&p, format!("{HEAD_KEY}\n")).unwrap();
    p.display().to_string()
}

#[test]
fn fleet_of_200_reports_runs_scripts_and_fails_over() {
    const N: u64 = 200;
    let mac0 = "52:54:00:a1:00:00";
    let ip0 = "127.201.0.1";
    let mut c = Cluster::configure(Backend::Etcd, 4, "");
    let keys = key_file(&c);
    for h in &c.heads {
        let mut ini = std::fs::read_to_string(&h.config).unwrap();
        ini.push_str(&format!("head.ssh_keys = {keys}\n"));
        std::fs::write(&h.config, ini).unwrap();
    }
    // Three of the four configured heads now; the fourth joins later.
    for h in &mut c.heads[..3] {
        h.start();
    }
    for h in &mut c.heads[..3] {
        h.wait_ready(Duration::from_secs(60));
    }
    let h1 = &c.heads[0];
    h1.cli(
        "scyld-nodectl",
        &["create", "--count", &N.to_string(), &format!("mac={mac0}"), &format!("ip={ip0}"), "_status_secs=2"],
    )
    .ok();
    let urls: Vec<String> = c.heads[..3].iter().map(Head::url).collect();
    let mut sim =
        Sim::start(&urls, Some(&c.heads[0]), N as u32, ip0, mac0, &["--status-secs", "2", "--ramp-secs", "1"]);

    // Every node up, parented by head1 (the first head it was given), seen from another head.
    wait_status(&c.heads[1], "200 nodes up on head1", Duration::from_secs(60), |s| {
        s.len() == N as usize && s.iter().all(|n| n["state"] == "up" && n["parent"] == "head1")
    });
    let s = statuses(&c.heads[2]);
    assert!(s.iter().all(|n| n["last_seen"].as_u64().is_some() && n["boot_id"].as_str().is_some()), "{:?}", s[0]);
    // Details (load, memory) come from the parent even when asked elsewhere; hardware was recorded.
    assert!(s.iter().all(|n| n["report"]["cpus"].as_u64().unwrap_or(0) >= 1), "{:?}", s[0]);
    assert!(s.iter().all(|n| n["hardware"]["cpus"].as_u64().unwrap_or(0) >= 1), "{:?}", s[0]);
    let ls = c.heads[2].cli("scyld-nodectl", &["ls", "-l"]);
    assert!(ls.ok().lines().skip(1).all(|l| l.contains(" up ") && l.contains("head1")), "{}", ls.stdout);
    // The node's own files: the head list (parent first) and the hosts line.
    let first = mac_plus(mac0, 0);
    let heads_file = sim.node_file(&first, "heads");
    assert_eq!(heads_file.lines().filter(|l| !l.starts_with('#')).count(), 3, "{heads_file}");
    assert!(heads_file.lines().nth(1).unwrap().ends_with(" head1"), "{heads_file}");
    assert_eq!(sim.node_file(&first, "hosts"), format!("{}\tparent-head-node\n", c.heads[0].ip));
    c.heads[0].wait_log("head1 logs Booting node", |l| l.contains("Booting node n0 (52:54:00:a1:00:00)"));

    // update_keys from a head that parents no node: every node gets the heads' keys, the
    // cluster keys and its own.
    c.heads[1].cli("scyld-clusterctl", &["keys", "add", "admin", ADMIN_KEY]).ok();
    c.heads[1].cli("scyld-nodectl", &["-i", "n7", "set", &format!("_ssh_keys={HEAD_KEY} extra")]).ok();
    let user_line = "ssh-ed25519 AAAA-user-line user@laptop\n";
    std::fs::write(sim.dir.join(mac_plus(mac0, 3).replace(':', "")).join("authorized_keys"), user_line).unwrap();
    let out = c.heads[1].cli("scyld-nodectl", &["-a", "script", "update_keys", "--json"]);
    let res = out.json();
    let results = res["results"].as_array().unwrap();
    assert_eq!(results.len(), N as usize);
    assert!(results.iter().all(|r| r["outcome"] == "ok"), "{}", out.stdout);
    for i in 0..N {
        let ak = sim.node_file(&mac_plus(mac0, i), "authorized_keys");
        assert!(ak.contains(HEAD_KEY) && ak.contains(ADMIN_KEY), "node {i}: {ak}");
        if i == 3 {
            assert!(ak.starts_with(user_line), "user lines kept: {ak}");
        }
        let mode = std::fs::metadata(sim.dir.join(mac_plus(mac0, i).replace(':', "")).join("authorized_keys")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777, 0o600);
    }
    // head1's key and n7's own key are one key: listed once.
    assert_eq!(sim.node_file(&mac_plus(mac0, 7), "authorized_keys").matches("AAAAC3NzaC1lZDI1NTE5").count(), 1);

    // A fourth head joins; fetch_hosts gives every node the 4-head list.
    c.heads[3].start();
    c.heads[3].wait_ready(Duration::from_secs(60));
    poll_until("head4 alive in heads ls", Duration::from_secs(20), || {
        c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json()["heads"]
            .as_array()
            .is_some_and(|hs| hs.iter().filter(|h| h["alive"] == true).count() == 4)
    });
    let out = c.heads[2].cli("scyld-nodectl", &["-a", "script", "fetch_hosts"]);
    assert_eq!(out.code, 0, "{out:?}");
    for i in 0..N {
        let hf = sim.node_file(&mac_plus(mac0, i), "heads");
        assert_eq!(hf.lines().filter(|l| !l.starts_with('#')).count(), 4, "node {i}: {hf}");
    }

    // kill -9 of the parent: every node moves to the next head of its own list.
    let expected_next: Vec<String> = (0..N)
        .map(|i| {
            let hf = sim.node_file(&mac_plus(mac0, i), "heads");
            hf.lines().filter(|l| !l.starts_with('#')).nth(1).unwrap().split_whitespace().nth(1).unwrap().to_string()
        })
        .collect();
    c.heads[0].kill9();
    // Every head's view catches up (each follows the status records on its own).
    for via in &c.heads[1..] {
        wait_status(via, "every node re-parented off head1", Duration::from_secs(30), |s| {
            s.iter().all(|n| n["state"] == "up" && n["parent"] != "head1")
        });
    }
    let s = statuses(&c.heads[3]);
    for (i, n) in s.iter().enumerate() {
        assert_eq!(n["parent"].as_str().unwrap(), expected_next[i], "node {i} went to the next head in its list");
    }
    let p = parents(&s);
    assert!(p.len() == 3 && p.values().all(|&v| v > 20), "nodes spread over the other heads: {p:?}");
    assert!(sim.is_running(), "{}", sim.log());
    let summary = sim.summary();
    assert_eq!(summary["parents"]["head1"], Value::Null, "{}", summary["parents"]);
}

#[test]
fn hung_parent_is_left_within_seconds() {
    let mac0 = "52:54:00:a2:00:00";
    let ip0 = "127.202.0.1";
    let c = Cluster::etcd(2);
    c.heads[0]
        .cli(
            "scyld-nodectl",
            &["create", "--count", "20", &format!("mac={mac0}"), &format!("ip={ip0}"), "_status_secs=2"],
        )
        .ok();
    let urls: Vec<String> = c.heads.iter().map(Head::url).collect();
    let _sim =
        Sim::start(&urls, Some(&c.heads[0]), 20, ip0, mac0, &["--status-secs", "2", "--push-timeout-ms", "1500"]);
    wait_status(&c.heads[1], "20 nodes up on head1", Duration::from_secs(30), |s| {
        s.iter().all(|n| n["state"] == "up" && n["parent"] == "head1")
    });
    // SIGSTOP: connections stay open but nothing answers.
    c.heads[0].freeze(true);
    let started = std::time::Instant::now();
    wait_status(&c.heads[1], "every node on head2", Duration::from_secs(30), |s| {
        s.iter().all(|n| n["state"] == "up" && n["parent"] == "head2")
    });
    // One status interval (2 s) plus the poll's grace (2 s) and a push timeout, with slack.
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    c.heads[0].freeze(false);
}

/// Sends raw bytes to a head's HTTPS port from a given source address, presenting the node
/// certificate of [`enrolled`] if there is one; returns the status code and body.
fn raw(h: &Head, from: &str, request: &str) -> (u16, String) {
    let id = IDENTITY.lock().unwrap().clone();
    let tcp = if from == "127.0.0.1" {
        std::net::TcpStream::connect_timeout(
            &format!("{}:{}", h.ip, h.tls_port).parse().unwrap(),
            Duration::from_secs(5),
        )
        .unwrap()
    } else {
        // Bind the source address first.
        clusterware_tests::sys::connect_from(from.parse().unwrap(), std::net::SocketAddrV4::new(h.ip, h.tls_port))
            .unwrap()
    };
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = clusterware_tests::tls_stream_as(tcp, h, id.as_ref().map(|(c, k)| (c.as_str(), k.as_str())));
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

/// The certificate and key `raw` presents.
static IDENTITY: std::sync::Mutex<Option<(String, String)>> = std::sync::Mutex::new(None);

/// Enrolls the node with `mac` from its address `ip` with a token from `scyld-nodectl enroll`;
/// `raw` presents its certificate from then on.
fn enrolled(h: &Head, node: &str, mac: &str, ip: &str) {
    let t = h.cli("scyld-nodectl", &["-i", node, "enroll", "--json"]).json();
    let token = t["tokens"][0]["token"].as_str().unwrap().to_string();
    *IDENTITY.lock().unwrap() = None;
    let (code, text) = raw(h, ip, &post("enroll", &json!({"mac": mac, "token": token}).to_string()));
    assert_eq!(code, 200, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    *IDENTITY.lock().unwrap() =
        Some((v["cert_pem"].as_str().unwrap().to_string(), v["key_pem"].as_str().unwrap().to_string()));
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST /api/v1/agent/{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn bad_node_requests_change_nothing() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    h.cli("scyld-nodectl", &["create", "mac=52:54:00:a3:00:01", "ip=127.203.0.1"]).ok();
    enrolled(h, "n0", "52:54:00:a3:00:01", "127.203.0.1");
    let report = |mac: &str| {
        json!({"mac": mac, "boot_id": "abc-1", "phase": "up", "agent_version": "t", "uptime_secs": 1, "load": [0.0, 0.0, 0.0],
               "mem_total_kib": 1, "mem_available_kib": 1, "cpus": 1, "kernel": "k"})
        .to_string()
    };
    // Malformed JSON, a wrong field type, an invalid boot id.
    for body in ["{", "{\"mac\": 5}", &report("52:54:00:a3:00:01").replace("abc-1", "../etc")] {
        let (code, text) = raw(h, "127.203.0.1", &post("status", body));
        assert_eq!(code, 400, "{body}: {text}");
        assert!(text.contains("\"kind\":\"bad_request\""), "{text}");
    }
    // Unknown MAC: 404.
    let (code, text) = raw(h, "127.203.0.1", &post("status", &report("52:54:00:a3:00:99")));
    assert_eq!(code, 404, "{text}");
    // The right MAC from another address: 403.
    let (code, text) = raw(h, "127.203.0.2", &post("status", &report("52:54:00:a3:00:01")));
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("127.203.0.1"), "{text}");
    // A long poll or keys request for a node from elsewhere: 403 as well.
    let (code, _) = raw(
        h,
        "127.203.0.2",
        "GET /api/v1/agent/keys?mac=52:54:00:a3:00:01 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(code, 403);
    let (code, _) =
        raw(h, "127.203.0.1", "GET /api/v1/agent/wait?mac=nonsense HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(code, 400);
    // An outcome for a command that does not exist.
    let (code, _) = raw(h, "127.203.0.1", &post("result", r#"{"mac":"52:54:00:a3:00:01","id":"feed","ok":true}"#));
    assert_eq!(code, 404);
    // Nothing changed: the node is still new.
    let s = statuses(h);
    assert_eq!(s[0]["state"], "new", "{s:?}");
    h.wait_log("refusal logged", |l| l.contains("not the node's refused"));
    // The right request from the right address works.
    let (code, text) = raw(h, "127.203.0.1", &post("status", &report("52:54:00:a3:00:01")));
    assert_eq!(code, 200, "{text}");
    poll_until("node up", Duration::from_secs(10), || statuses(h)[0]["state"] == "up");
    // Its agent's version is shown, and one that is not a release, or older than the head
    // serves, is named a problem of that node; the pushes are absorbed all the same.
    let problems = |h: &Head| {
        let v = statuses(h)[0]["problems"].as_array().cloned().unwrap_or_default();
        v.iter().filter_map(|p| p.as_str().map(str::to_string)).collect::<Vec<_>>().join("; ")
    };
    assert_eq!(statuses(h)[0]["agent_version"], "t");
    assert!(problems(h).contains("reports version \"t\", which is not a release"), "{}", problems(h));
    let agent =
        |v: &str| report("52:54:00:a3:00:01").replace("\"agent_version\":\"t\"", &format!("\"agent_version\":\"{v}\""));
    let (code, text) = raw(h, "127.203.0.1", &post("status", &agent("0.0.9")));
    assert_eq!(code, 200, "{text}");
    assert!(problems(h).contains("its agent 0.0.9 is older than this head serves"), "{}", problems(h));
    let (code, text) = raw(h, "127.203.0.1", &post("status", &agent(clusterware_shared::VERSION)));
    assert_eq!(code, 200, "{text}");
    assert_eq!(problems(h), "");
    let table = h.cli("scyld-nodectl", &["status"]);
    let (head, row) = table.ok().split_once('\n').unwrap();
    assert!(head.ends_with("AGENT") && row.trim_end().ends_with(clusterware_shared::VERSION), "{table:?}");
    // Bad CLI input: unknown script, bad key.
    assert_eq!(h.cli("scyld-nodectl", &["-a", "script", "reboot"]).code, 2);
    assert_eq!(h.cli("scyld-clusterctl", &["keys", "add", "k", "ssh-ed25519 nope"]).code, 2);
    assert_eq!(h.cli("scyld-nodectl", &["-a", "set", "_ssh_keys=garbage"]).code, 1);
    // A script for a node that is not up answers at once: unreachable.
    h.cli("scyld-nodectl", &["create", "mac=52:54:00:a3:00:02", "ip=127.203.0.2"]).ok();
    let out = h.cli("scyld-nodectl", &["-i", "n1", "script", "fetch_hosts"]);
    assert_eq!(out.code, 1);
    assert!(out.stdout.contains("n1: unreachable (node is new)"), "{out:?}");
}

/// Heads that never answer, reset, or answer garbage: the agent rotates, backs off, keeps going.
#[test]
fn agent_survives_broken_heads_without_busy_looping() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = Arc::new(AtomicUsize::new(0));
    let mut urls = Vec::new();
    for mode in 0..3 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        urls.push(format!("http://127.0.0.1:{}", l.local_addr().unwrap().port()));
        let count = count.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let mut s = s;
                match mode {
                    0 => held.push(s), // never answers
                    1 => drop(s),      // resets
                    _ => {
                        let mut buf = [0u8; 4096];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\ngarbage");
                    }
                }
            }
        });
    }
    let mut sim = Sim::start(&urls, None, 1, "127.204.0.1", "52:54:00:a4:00:01", &["--push-timeout-ms", "500"]);
    std::thread::sleep(Duration::from_secs(8));
    assert!(sim.is_running(), "{}", sim.log());
    let n = count.load(Ordering::SeqCst);
    // Rounds of three attempts with waits of 1, 2, 4 s between rounds: a few dozen at most.
    assert!((3..=40).contains(&n), "{n} connections in 8 s");
    let s = sim.summary();
    assert_eq!(s["pushes_ok"], 0);
}
