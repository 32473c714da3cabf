//! Rebalancing and `_preferred_head` with real heads and a simulated fleet.

use clusterware_tests::{Backend, Cluster, Head, Sim, poll_until};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// Rounds every 2 s, and a threshold of 1 %: a fleet that comes up over several rounds (its
/// nodes enroll first, slowly on a loaded machine) still ends exactly balanced. At the default
/// 20 %, a round that saw 276 of 300 nodes leaves head1 at 116 of a mean of 100, which is within
/// the threshold and rightly not moved.
const FAST: &str = "rebalance.interval = 2\nrebalance.holdoff = 5\nrebalance.threshold = 1\n";

fn load(h: &Head) -> BTreeMap<String, u64> {
    let out = h.cli("scyld-nodectl", &["status", "--json"]);
    let mut m = BTreeMap::new();
    if out.code != 0 {
        return m;
    }
    for n in out.json()["nodes"].as_array().cloned().unwrap_or_default() {
        if n["state"] == "up" {
            *m.entry(n["parent"].as_str().unwrap_or("-").to_string()).or_default() += 1;
        }
    }
    m
}

/// `count` nodes from `mac0`/`ip0` on, reporting every 2 s, created through `h`.
fn create_nodes(h: &Head, count: u32, mac0: &str, ip0: &str) {
    let (count, mac, ip) = (count.to_string(), format!("mac={mac0}"), format!("ip={ip0}"));
    h.cli("scyld-nodectl", &["create", "--count", &count, &mac, &ip, "_status_secs=2"]).ok();
}

/// Parent changes made after each node's first report, and how many of them were failovers (a
/// push that timed out on a loaded machine) rather than moves a head directed.
fn moves(sim: &Sim) -> (u64, u64) {
    let s = sim.summary();
    let sum = |f: &dyn Fn(&Value) -> u64| s["node"].as_array().map_or(0, |v| v.iter().map(f).sum());
    (sum(&|n| n["switches"].as_u64().unwrap_or(0).saturating_sub(1)), sum(&|n| n["failovers"].as_u64().unwrap_or(0)))
}

/// Waits until the fleet has made at least `want` moves, then checks it made no more than that,
/// but for failovers: each may cost its own switch and one move back by rebalancing.
fn assert_moves(sim: &Sim, want: u64, what: &str) -> (u64, u64) {
    poll_until("sim summary current", Duration::from_secs(5), || moves(sim).0 >= want);
    let (m, f) = moves(sim);
    assert!(m <= want + 2 * f, "{what}: {m} moves, {want} expected ({f} failovers)");
    (m, f)
}

fn wait_load(h: &Head, what: &str, within: Duration, want: &[(&str, u64)]) {
    let want: BTreeMap<String, u64> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    let deadline = std::time::Instant::now() + within;
    loop {
        let l = load(h);
        if l == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}: {l:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// 300 nodes reporting every 2 s, every one given head1 first, spread by rebalancing over the
/// three `heads` (100 each).
fn balanced_fleet(heads: &[Head], mac0: &str, ip0: &str) -> Sim {
    create_nodes(&heads[0], 300, mac0, ip0);
    let urls: Vec<String> = heads.iter().map(Head::url).collect();
    let sim = Sim::start(&urls, Some(&heads[0]), 300, ip0, mac0, &["--status-secs", "2", "--ramp-secs", "0.5"]);
    wait_load(
        &heads[1],
        "100 nodes per head",
        Duration::from_secs(60),
        &[("head1", 100), ("head2", 100), ("head3", 100)],
    );
    sim
}

#[test]
fn nodes_spread_with_minimum_moves_and_a_new_head_gets_its_share() {
    let mut c = Cluster::configure(Backend::Etcd, 4, FAST);
    for h in &mut c.heads[..3] {
        h.start();
    }
    for h in &mut c.heads[..3] {
        h.wait_ready(Duration::from_secs(60));
    }
    let sim = balanced_fleet(&c.heads[..3], "52:54:00:a5:00:00", "127.205.0.1");
    let (m0, f0) = assert_moves(&sim, 200, "spreading 300 nodes from one head over three");
    // Many rounds (interval 2 s) on a balanced cluster: no move (but to undo a failover).
    std::thread::sleep(Duration::from_secs(7));
    let (m1, f1) = moves(&sim);
    assert!(m1 - m0 <= 2 * (f1 - f0), "a balanced cluster moved nodes: {} moves, {} failovers", m1 - m0, f1 - f0);
    let dry = c.heads[2].cli("scyld-clusterctl", &["rebalance", "--dry-run"]);
    assert!(dry.ok().contains("no moves needed"), "{dry:?}");
    let ls = c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "-l"]);
    assert!(ls.ok().contains("mean nodes per alive head: 100.0"), "{ls:?}");
    let log = c.heads[0].wait_log("200 moves logged", |l| l.matches("rebalance: moving node").count() >= 200);
    assert_eq!(log.matches("rebalance: moving node").count(), 200, "every move logged once");

    // A fourth head: it gets its share (75 of 300), and only 75 nodes move.
    c.heads[3].start();
    c.heads[3].wait_ready(Duration::from_secs(60));
    wait_load(
        &c.heads[3],
        "75 nodes per head",
        Duration::from_secs(60),
        &[("head1", 75), ("head2", 75), ("head3", 75), ("head4", 75)],
    );
    let (m2, f2) = assert_moves(&sim, m1 + 75, "a fourth head's share");
    std::thread::sleep(Duration::from_secs(5));
    let (m3, f3) = moves(&sim);
    assert!(m3 - m2 <= 2 * (f3 - f2), "the balanced cluster moved nodes: {} moves, {} failovers", m3 - m2, f3 - f2);
    let j: Value = c.heads[3].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json();
    assert_eq!(j["mean_nodes"], 75.0);
}

#[test]
fn preferred_head_pins_nodes_and_they_return_after_a_restart() {
    let mut c = Cluster::start(Backend::Etcd, 3, FAST);
    let (mac0, ip0) = ("52:54:00:a6:00:00", "127.206.0.1");
    create_nodes(&c.heads[0], 30, mac0, ip0);
    c.heads[0].cli("scyld-nodectl", &["-i", "n[0-14]", "set", "_preferred_head=head3"]).ok();
    c.heads[0].cli("scyld-nodectl", &["-i", "n29", "set", "--force", "_preferred_head=nosuchhead"]).ok();
    let urls: Vec<String> = c.heads.iter().map(Head::url).collect();
    let _sim = Sim::start(&urls, Some(&c.heads[0]), 30, ip0, mac0, &["--status-secs", "2"]);
    let on = |h: &Head, parent: &str, range: std::ops::Range<usize>| {
        let out = h.cli("scyld-nodectl", &["status", "--json"]);
        out.code == 0
            && out.json()["nodes"]
                .as_array()
                .is_some_and(|v| range.clone().all(|i| v[i]["parent"] == parent && v[i]["state"] == "up"))
    };
    // The 15 pinned nodes go to head3 and stay, whatever the imbalance (15 on head3, 15 left
    // for head1 and head2): rebalancing reports it rather than fighting it.
    poll_until("pinned nodes on head3", Duration::from_secs(30), || on(&c.heads[0], "head3", 0..15));
    std::thread::sleep(Duration::from_secs(6));
    assert!(on(&c.heads[0], "head3", 0..15), "pinned nodes moved away");
    let dry = c.heads[0].cli("scyld-clusterctl", &["--json", "rebalance", "--dry-run"]).json();
    assert!(
        dry["moves"].as_array().unwrap().iter().all(|m| m["from"] != "head3" || m["node"].as_str().unwrap() >= "n15")
    );
    // A preferred head that does not exist: no preference, and said so.
    let ls = c.heads[1].cli("scyld-nodectl", &["ls", "-l"]);
    assert!(ls.stderr.contains("n29: _preferred_head=nosuchhead names no head"), "{ls:?}");

    // head3 restarts: its nodes use the others meanwhile, then come back.
    c.heads[2].stop();
    poll_until("pinned nodes elsewhere", Duration::from_secs(30), || {
        let out = c.heads[0].cli("scyld-nodectl", &["status", "--json"]);
        out.json()["nodes"]
            .as_array()
            .is_some_and(|v| (0..15).all(|i| v[i]["state"] == "up" && v[i]["parent"] != "head3"))
    });
    c.heads[2].start();
    c.heads[2].wait_ready(Duration::from_secs(60));
    poll_until("pinned nodes back on head3", Duration::from_secs(30), || on(&c.heads[1], "head3", 0..15));
    c.heads[0].wait_log("moves to the preferred head and the bad preference logged", |l| {
        l.contains("directing node to its preferred head") && l.contains("_preferred_head names no head")
    });
}

/// The nodes rebalancing moved onto a head spread over every other live head when it dies, not
/// onto the head they booted from (a moved node takes its new parent's head list).
#[test]
fn a_dead_heads_moved_nodes_spread_over_the_others() {
    let c = Cluster::start(Backend::Etcd, 3, FAST);
    let sim = balanced_fleet(&c.heads, "52:54:00:a7:00:00", "127.207.0.1");
    let parents = || -> BTreeMap<String, String> {
        sim.summary()["node"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["mac"].as_str().unwrap().to_string(), n["parent"].as_str().unwrap_or("").to_string()))
            .collect()
    };
    // Past the hold-off and a few pushes: every moved node has its new parent's list.
    std::thread::sleep(Duration::from_secs(6));
    let on_head2: Vec<String> = parents().into_iter().filter(|(_, p)| p == "head2").map(|(m, _)| m).collect();
    assert_eq!(on_head2.len(), 100);
    let mut c = c;
    c.heads[1].kill9();
    // Where each of head2's nodes went first.
    let mut first: BTreeMap<String, String> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while first.len() < on_head2.len() {
        assert!(std::time::Instant::now() < deadline, "head2's nodes did not all move: {} of 100", first.len());
        let now = parents();
        for m in &on_head2 {
            if let Some(p) = now.get(m).filter(|p| *p != "head2") {
                first.entry(m.clone()).or_insert_with(|| p.clone());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let to_head1 = first.values().filter(|p| *p == "head1").count();
    let to_head3 = first.values().filter(|p| *p == "head3").count();
    assert_eq!(to_head1 + to_head3, 100);
    // The MAC hash splits them; 30 of 100 at least on each is more than 4 standard deviations.
    assert!(to_head1 >= 30 && to_head3 >= 30, "piled up: head1 {to_head1}, head3 {to_head3}");
}

/// Moves whose switch never reached the node (the destination hung as the round ran) are not
/// counted at the destination for the whole hold-off: once a move had time to happen, the nodes
/// count where they report and are planned again.
#[test]
fn moves_that_did_not_happen_are_planned_again() {
    let c = Cluster::start(Backend::Etcd, 2, "rebalance.interval = 86400\n");
    let (mac0, ip0) = ("52:54:00:a8:00:00", "127.208.0.1");
    create_nodes(&c.heads[0], 20, mac0, ip0);
    let urls: Vec<String> = c.heads.iter().map(Head::url).collect();
    let _sim = Sim::start(
        &urls,
        Some(&c.heads[0]),
        20,
        ip0,
        mac0,
        &["--status-secs", "2", "--ramp-secs", "0.5", "--push-timeout-ms", "1500"],
    );
    wait_load(&c.heads[0], "20 nodes on head1", Duration::from_secs(60), &[("head1", 20)]);
    std::thread::sleep(Duration::from_secs(2));
    // head2 hangs just as a round sends it nodes: they cannot reach it and stay on head1.
    c.heads[1].freeze(true);
    let moved = std::time::Instant::now();
    let out = c.heads[0].cli("scyld-clusterctl", &["rebalance", "--now"]);
    assert!(out.ok().matches("moving ").count() >= 1, "{out:?}");
    std::thread::sleep(Duration::from_secs(6));
    c.heads[1].freeze(false);
    wait_load(&c.heads[0], "the nodes still on head1", Duration::from_secs(30), &[("head1", 20)]);
    // Once the moves had time to happen, the plan counts the nodes on head1 (none of them at
    // head2) and moves half of them again.
    let travel = Duration::from_secs(21);
    if let Some(left) = travel.checked_sub(moved.elapsed()) {
        std::thread::sleep(left);
    }
    poll_until("head2 alive again", Duration::from_secs(30), || {
        c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json()["heads"]
            .as_array()
            .is_some_and(|h| h.iter().all(|x| x["alive"] == true))
    });
    let dry = c.heads[0].cli("scyld-clusterctl", &["rebalance", "--dry-run"]);
    assert_eq!(dry.ok().matches("would move ").count(), 10, "{dry:?}");
}
