//! The event log across real heads: admin actions with their credential, address and outcome;
//! nodes up, down; files quarantined and fetched from a peer; failover settings; the same log on
//! every head; `scyld-clusterctl events` listing, filtering and following; retention; bad
//! queries.

use clusterware_tests::{Backend, Cluster, Head, Sim, bin, poll_until, sys};
use serde_json::{Value, json};
use std::io::BufRead;
use std::time::Duration;

/// The events a query selects, asked of `h` with the harness's credential.
fn events(c: &Cluster, h: &Head, query: &str) -> Vec<Value> {
    let (status, v) = h.api("GET", &format!("/events{query}"), Some(&c.token), None);
    assert_eq!(status, 200, "{v}");
    v["events"].as_array().cloned().unwrap_or_default()
}

/// The uids of nodes by name (the API takes uids).
fn uids(c: &Cluster, names: &[&str]) -> Vec<String> {
    let (_, v) = c.heads[0].api("GET", "/nodes", Some(&c.token), None);
    names
        .iter()
        .map(|n| {
            let node = v["nodes"].as_array().unwrap().iter().find(|x| x["name"] == *n);
            node.map_or_else(|| n.to_string(), |x| x["uid"].as_str().unwrap().to_string())
        })
        .collect()
}

/// How many nodes the node events with `word` in their message count.
fn nodes_said(evs: &[Value], word: &str) -> usize {
    evs.iter()
        .filter(|e| e["kind"] == "node" && e["message"].as_str().unwrap_or("").contains(word))
        .map(|e| {
            let m = e["message"].as_str().unwrap();
            if m.starts_with("node ") { 1 } else { m.split(' ').next().unwrap().parse::<usize>().unwrap() }
        })
        .sum()
}

#[test]
fn the_event_log_records_who_did_what_and_what_the_cluster_did() {
    let c = Cluster::start(Backend::Etcd, 2, "events.keep = 40\n");
    let (h1, h2) = (&c.heads[0], &c.heads[1]);
    let token = h1.cli("scyld-clusterctl", &["tokens", "create", "alice", "--json"]).json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    poll_until("alice's token works on head2", Duration::from_secs(10), || {
        h2.api("GET", "/nodes", Some(&token), None).0 == 200
    });

    // Changes by alice, one of them refused; by the password's credential through the CLI.
    let (ip0, mac0) = ("127.62.0.1", "52:54:00:e2:00:00");
    h1.cli(
        "scyld-nodectl",
        &["create", "--count", "3", &format!("mac={mac0}"), &format!("ip={ip0}"), "_status_secs=1"],
    )
    .ok();
    let set = json!({"nodes": uids(&c, &["n0", "n1"]), "set": {"rack": "r7"}});
    assert_eq!(h2.api("POST", "/nodes/update", Some(&token), Some(&set)).0, 200);
    let missing = json!({"nodes": uids(&c, &["nope"])});
    assert_eq!(h2.api("POST", "/nodes/delete", Some(&token), Some(&missing)).0, 404);
    // A read, and a change without a credential: neither is an admin event.
    assert_eq!(h2.api("GET", "/nodes", Some(&token), None).0, 200);
    assert_eq!(h2.api("POST", "/nodes/update", None, Some(&set)).0, 401);
    h1.cli("managedb", &["failover", "disable"]).ok();

    poll_until("the admin events are on both heads", Duration::from_secs(10), || {
        [h1, h2].iter().all(|h| events(&c, h, "?kind=admin").len() == 5)
    });
    let admin = events(&c, h1, "?kind=admin");
    let by_alice: Vec<&Value> =
        admin.iter().filter(|e| e["actor"].as_str().unwrap_or("").starts_with("token alice")).collect();
    assert_eq!(by_alice.len(), 2, "{admin:?}");
    assert_eq!(by_alice[0]["message"], "on n[0-1] (2 nodes): set rack, cleared (none)");
    assert_eq!(by_alice[0]["outcome"], "ok");
    assert_eq!(by_alice[0]["subject"], "POST /api/v1/nodes/update");
    assert_eq!(by_alice[0]["head"], "head2");
    assert!(by_alice[0]["from"].as_str().is_some_and(|f| !f.is_empty()), "{:?}", by_alice[0]);
    assert!(by_alice[1]["outcome"].as_str().unwrap().starts_with("not_found: "), "{:?}", by_alice[1]);
    let created = admin.iter().find(|e| e["subject"] == "POST /api/v1/nodes").expect("the CLI's creation");
    assert_eq!(created["message"], "created n[0-2] (3 nodes)");
    assert!(created["actor"].as_str().unwrap().starts_with("database password (user "), "{created}");
    // The failover setting is a head event (and the CLI's call an admin one).
    poll_until("the failover event", Duration::from_secs(10), || {
        events(&c, h2, "?kind=head").iter().any(|e| e["message"].as_str().unwrap_or("").starts_with("failover disable"))
    });

    // Three nodes come up, then go silent (what comes in one batch is one event over a range:
    // the unit test of `core::events`).
    let urls: Vec<String> = c.heads.iter().map(Head::url).collect();
    let sim = Sim::start(&urls, Some(h1), 3, ip0, mac0, &["--status-secs", "1"]);
    poll_until("3 nodes up in the log", Duration::from_secs(30), || {
        nodes_said(&events(&c, h2, "?kind=node"), " up") == 3
    });
    drop(sim);
    poll_until("3 nodes down in the log", Duration::from_secs(30), || {
        nodes_said(&events(&c, h2, "?kind=node"), "down") == 3
    });
    let node_events = events(&c, h1, "?kind=node");
    assert!(node_events.iter().all(|e| e["head"] == "head1"), "the parent records: {node_events:?}");

    // A bad copy found on head2: quarantined, then a verified one fetched from head1.
    let path = c.dir().join("rootfs.img");
    std::fs::write(&path, vec![7u8; 100_000]).unwrap();
    let up = h1.cli("scyld-clusterctl", &["files", "upload", path.to_str().unwrap(), "--kind", "rootfs", "--json"]);
    let id = up.json()["id"].as_str().unwrap().to_string();
    let copy = h2.dir.join("storage").join(&id);
    poll_until("head2 holds the file", Duration::from_secs(10), || copy.is_file());
    std::fs::OpenOptions::new().write(true).open(&copy).unwrap().set_len(10).unwrap();
    let (status, _) = h2.api("GET", &format!("/files/{id}/content"), Some(&c.token), None);
    assert_eq!(status, 200);
    poll_until("the quarantine and the repair in the log", Duration::from_secs(10), || {
        let f = events(&c, h1, "?kind=file");
        f.iter().any(|e| e["message"].as_str().unwrap().contains("on head2 does not match its size and checksum"))
            && f.iter().any(|e| e["message"] == "head2 fetched a verified copy from head1")
    });

    // The CLI: text with who, from where, the outcome; filters; bad arguments.
    let text = h2.cli("scyld-clusterctl", &["events"]).ok().to_string();
    assert!(text.contains("[by token alice") && text.contains("=> not_found: "), "{text}");
    assert!(text.contains("admin  head2") && text.contains("node   head1"), "{text}");
    let future = h1.cli("scyld-clusterctl", &["events", "--since", "2999-01-01"]);
    assert_eq!(future.ok().trim(), "no events match");
    let recent = h1.cli("scyld-clusterctl", &["events", "--since", "10m", "--kind", "file", "--json"]).json();
    assert!(recent["events"].as_array().unwrap().iter().all(|e| e["kind"] == "file"), "{recent}");
    let bad = h1.cli("scyld-clusterctl", &["events", "--since", "yesterday"]);
    assert!(bad.code == 2 && bad.stderr.contains("give an age"), "{bad:?}");
    for q in ["?limit=0", "?kind=nodes", "?since=-1", "?bogus=1", "?after=%zz"] {
        assert_eq!(h1.api("GET", &format!("/events{q}"), Some(&token), None).0, 400, "{q}");
    }
    assert_eq!(h1.api("GET", "/events", None, None).0, 401);

    // Following: a new action shows up on a follower of the other head.
    let mut cmd = std::process::Command::new(bin("scyld-clusterctl"));
    cmd.args(["--config", h1.config.to_str().unwrap(), "events", "-f", "--json", "-n", "1"])
        .env_remove("CLUSTERWARE_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    sys::die_with_parent(&mut cmd);
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_secs(2));
    let tag = json!({"nodes": uids(&c, &["n2"]), "set": {"rack": "followed"}});
    assert_eq!(h2.api("POST", "/nodes/update", Some(&token), Some(&tag)).0, 200);
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push(l);
            if seen.last().unwrap().contains("on n2: set rack") {
                break;
            }
        }
    }
    sys::killpg(pid, nix::sys::signal::Signal::SIGTERM);
    let _ = child.wait();
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the follower is gone");
    assert!(seen.iter().any(|l| l.contains("on n2: set rack")), "{seen:?}");
    let ids: Vec<String> = seen.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].to_string()).collect();
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(ids, unique, "nothing shown twice");

    // Retention: 40 events at most; the oldest go first.
    let first_id = events(&c, h1, "?limit=10000")[0]["id"].clone();
    let n1 = uids(&c, &["n1"]);
    for i in 0..45 {
        let b = json!({"nodes": n1, "set": {"round": i.to_string()}});
        assert_eq!(h1.api("POST", "/nodes/update", Some(&token), Some(&b)).0, 200);
    }
    poll_until("the log is cut to 40", Duration::from_secs(20), || {
        let (_, v) = h2.api("GET", "/events?limit=10000", Some(&token), None);
        v["total"].as_u64().is_some_and(|t| t <= 40) && v["events"][0]["id"] != first_id
    });
    let last = events(&c, h2, "?kind=admin");
    assert_eq!(last.last().unwrap()["message"], "on n1: set round, cleared (none)");
}
