//! Releases side by side: the database's schema version, guarded at start and migrated once when
//! every head knows the new one; heads of other releases named in `heads` listings.

use clusterware_tests::releases::{self, fleet, push_failures};
use clusterware_tests::{Backend, Cluster, Head, Sim, poll_until};
use serde_json::Value;
use std::time::Duration;

/// A key of the cluster database as JSON, read through `etcdctl` on `h`'s member.
fn get(h: &Head, key: &str) -> Option<Value> {
    let out = h.etcdctl(&["get", &format!("/clusterware/{key}"), "--print-value-only"]);
    assert_eq!(out.code, 0, "{out:?}");
    let v = out.stdout.trim();
    (!v.is_empty()).then(|| serde_json::from_str(v).unwrap_or_else(|e| panic!("{key}: {e}: {v}")))
}

fn put(h: &Head, key: &str, v: &Value) {
    let out = h.etcdctl(&["put", &format!("/clusterware/{key}"), &v.to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
}

fn del(h: &Head, key: &str) {
    let out = h.etcdctl(&["del", &format!("/clusterware/{key}")]);
    assert_eq!(out.code, 0, "{out:?}");
}

fn log(h: &Head) -> String {
    std::fs::read_to_string(h.dir.join(format!("log/head_{}.log", h.name))).unwrap_or_default()
}

#[test]
fn the_schema_version_guards_the_database_and_migrates_once() {
    let mut c = Cluster::etcd(3);
    let release = clusterware_shared::VERSION;
    // A new cluster is at the current schema; every head knows it and runs one release.
    let schema = get(&c.heads[0], "cluster/schema").expect("a new database has its schema version");
    assert_eq!(schema["version"], 1, "{schema}");
    let ls = c.heads[0].cli("managedb", &["--heads", "--json"]);
    let v = ls.json();
    assert!(!v["warnings"].to_string().contains("version"), "{v}");
    for h in v["heads"].as_array().unwrap() {
        assert_eq!((h["version"].as_str(), h["schema"].as_u64()), (Some(release), Some(1)), "{h}");
    }
    let text = c.heads[0].cli("managedb", &["--heads"]);
    assert!(text.ok().lines().next().unwrap().trim_end().ends_with("RELEASE"), "{text:?}");
    assert!(c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "-l"]).ok().contains("database schema: 1\n"));

    // A database from before the schema was versioned, with a head of an older release
    // registered (down): a head starts on it and leaves it alone until that head is gone or
    // updated, and the listings say so.
    del(&c.heads[0], "cluster/schema");
    let mut old: Value = get(&c.heads[2], "heads/head3").unwrap();
    old["name"] = "oldhead".into();
    old["version"] = "0.0.9".into();
    old.as_object_mut().unwrap().remove("schema");
    old.as_object_mut().unwrap().remove("peer_url");
    put(&c.heads[0], "heads/oldhead", &old);
    c.heads[0].stop();
    c.heads[0].start();
    c.heads[0].wait_ready(Duration::from_secs(60));
    c.heads[0].wait_log("the migration waits for the old head", |l| {
        l.contains("the database stays at schema 0 until every head knows schema 1; update oldhead (release 0.0.9)")
    });
    assert_eq!(get(&c.heads[1], "cluster/schema"), None, "not migrated while an old head is registered");
    let v = c.heads[1].cli("managedb", &["--heads", "--json"]).json();
    let warnings = v["warnings"].to_string();
    assert!(warnings.contains(&format!("(0.0.9 on oldhead; {release} on head1, head2, head3)")), "{warnings}");
    assert!(warnings.contains("stays at schema 0 until every head knows schema 1 (not yet: oldhead)"), "{warnings}");
    let ls = c.heads[1].cli("scyld-clusterctl", &["heads", "ls", "-l"]);
    assert!(ls.stderr.contains("warning: the heads run different versions"), "{ls:?}");

    // The old head is gone: the database is migrated, once, by the head that found it old.
    del(&c.heads[0], "heads/oldhead");
    poll_until("the migration", Duration::from_secs(30), || get(&c.heads[1], "cluster/schema").is_some());
    let schema = get(&c.heads[2], "cluster/schema").unwrap();
    assert_eq!((schema["version"].as_u64(), schema["by"].as_str()), (Some(1), Some("head1")), "{schema}");
    c.heads[0].wait_log("the migration logged", |l| l.contains("database schema migrated"));
    let migrations: usize = c.heads.iter().map(|h| log(h).matches("database schema migrated").count()).sum();
    assert_eq!(migrations, 1);
    assert!(get(&c.heads[0], "cluster/migration").is_none(), "the lock is released");

    // A database of a newer schema: a head of this release refuses to start on it and writes
    // nothing (its record and liveness stay as they were).
    put(&c.heads[0], "cluster/schema", &serde_json::json!({"version": 99, "by": "newhead", "at": 1}));
    c.heads[1].stop();
    let record = get(&c.heads[0], "heads/head2").unwrap();
    c.heads[1].start();
    poll_until("head2 to refuse", Duration::from_secs(60), || !c.heads[1].is_running());
    let err = c.heads[1].stderr_tail();
    assert!(
        err.contains(&format!(
            "the cluster database has schema 99 (written by newhead), newer than this head's release {release} knows (1)"
        )) && err.contains("scyld-install --update"),
        "{err}"
    );
    assert_eq!(get(&c.heads[0], "heads/head2"), Some(record), "its record is untouched");
    assert_eq!(get(&c.heads[0], "alive/head2"), None, "it never came alive");
    assert_eq!(get(&c.heads[0], "cluster/schema").unwrap()["version"], 99);
}

/// A head that stops, or restarts in place (what an update does), first hands the nodes it
/// parents to the other heads: no push of theirs fails, none is shown down, none fails over.
#[test]
fn a_stopping_head_hands_its_nodes_over_first() {
    let mut c = Cluster::start(Backend::Etcd, 3, "rebalance.interval = 2\nrebalance.holdoff = 5\n");
    let (mac0, ip0) = ("52:54:00:a7:00:00", "127.207.0.1");
    c.heads[0]
        .cli(
            "scyld-nodectl",
            &["create", "--count", "60", &format!("mac={mac0}"), &format!("ip={ip0}"), "_status_secs=2"],
        )
        .ok();
    let urls: Vec<String> = c.heads.iter().map(Head::url).collect();
    let sim = Sim::start(&urls, Some(&c.heads[0]), 60, ip0, mac0, &["--status-secs", "2", "--ramp-secs", "0.5"]);
    let spread = |h: &Head, name: &str| {
        let f = fleet(h);
        f.len() == 60 && f.iter().all(|n| n.1 == "up") && f.iter().filter(|n| n.2 == name).count() >= 10
    };
    poll_until("60 nodes up, head1 parenting its share", Duration::from_secs(60), || spread(&c.heads[1], "head1"));
    let before = push_failures(&sim);
    c.heads[0].stop();
    // Every node is up throughout; each shows its new parent once it has pushed there (the
    // stopped head's last records of them are fresh, so none looks down meanwhile).
    poll_until("every node shown with its new parent", Duration::from_secs(10), || {
        let f = fleet(&c.heads[1]);
        assert!(f.iter().all(|n| n.1 == "up"), "a node shown not up after head1 stopped: {f:?}");
        f.len() == 60 && f.iter().all(|n| n.2 != "head1")
    });
    let log = log(&c.heads[0]);
    assert!(log.contains("nodes handed over to the other heads before this head stops"), "{log}");
    // Let every node push again at its new parent.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(push_failures(&sim), before, "a push failed or a node failed over");
    assert!(fleet(&c.heads[1]).iter().all(|n| n.1 == "up"));

    // Back, given its share by rebalancing, then head2 restarts in place (SIGHUP, as after an
    // update): the same.
    c.heads[0].start();
    c.heads[0].wait_ready(Duration::from_secs(60));
    poll_until("head1 given nodes again", Duration::from_secs(60), || spread(&c.heads[2], "head1"));
    poll_until("head2 parenting its share", Duration::from_secs(60), || spread(&c.heads[2], "head2"));
    let before = push_failures(&sim);
    let started = c.heads[1].api("GET", "/health", None, None).1["started_ms"].clone();
    clusterware_tests::sys::kill(c.heads[1].pid().unwrap(), nix::sys::signal::Signal::SIGHUP);
    poll_until("head2 restarted and serving", Duration::from_secs(60), || {
        c.heads[1].try_health().is_some_and(|v| v["state"] == "serving" && v["started_ms"] != started)
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(push_failures(&sim), before, "a push failed or a node failed over");
    assert!(fleet(&c.heads[2]).iter().all(|n| n.1 == "up"));
}

/// The last release's cluster (three heads, a thousand of its agents) upgraded to this tree one
/// head at a time, as `scyld-install --update` on each would: every node is up again after each
/// head's turn, the old agents keep working against the upgraded heads (and are not called too
/// old), the database moves to the current schema once the last head knows it, and neither an
/// upgrade (the head of the last release handed over first by `clusterware-head --hand-over`,
/// as the package's postinst does) nor a restart in place of each upgraded head (what the next
/// update does) shows a node down or fails a push. `make bench` reports the time each head was
/// out of service.
#[test]
fn rolling_upgrade_from_the_last_release_under_a_thousand_nodes() {
    let r = releases::rolling_upgrade(releases::last(), 1000);
    let c = &r.cluster;
    for s in r.upgrade.iter().chain(&r.restart) {
        eprintln!("{s:?}");
    }
    for s in &r.upgrade {
        assert!(s.handed.is_some_and(|n| n > 0), "the hand-over moved no node: {s:?}");
    }
    for s in r.upgrade.iter().chain(&r.restart) {
        assert_eq!(
            (s.failed_pushes, s.failovers, s.down),
            (0, 0, 0),
            "an upgrade or a restart in place failed pushes or showed nodes down: {s:?}"
        );
    }
    for h in &c.heads {
        assert_eq!(h.try_health().unwrap()["version"], clusterware_shared::VERSION);
    }
    // Every head knows the current schema now: the database is migrated (once).
    poll_until("the schema migrated", Duration::from_secs(30), || get(&c.heads[0], "cluster/schema").is_some());
    let migrations: usize = c.heads.iter().map(|h| log(h).matches("database schema migrated").count()).sum();
    assert_eq!(migrations, 1);
    // The old agents work against the upgraded heads, shown with their version, no problem.
    let v = c.heads[2].cli("scyld-nodectl", &["status", "--json"]).json();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), r.nodes);
    for n in nodes {
        assert_eq!(
            (n["state"].as_str(), n["agent_version"].as_str()),
            (Some("up"), Some(r.old.version.as_str())),
            "{n}"
        );
        assert_eq!(n["problems"], serde_json::json!([]), "{n}");
    }
}
