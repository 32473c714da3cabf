//! Multi-head behaviour on real etcd members: replication between heads, liveness after
//! `kill -9`, races for the same MAC, and a head without quorum.

use clusterware_tests::{Backend, Cluster, LEASE_TTL, poll_until};
use serde_json::{Value, json};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

fn alive(c: &Cluster, via: usize) -> Vec<(String, bool)> {
    let v = c.heads[via].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json();
    v["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["name"].as_str().unwrap().to_string(), h["alive"].as_bool().unwrap()))
        .collect()
}

fn node_names(c: &Cluster, via: usize) -> Vec<String> {
    let out = c.heads[via].cli("scyld-nodectl", &["ls"]);
    out.ok().lines().map(str::to_string).collect()
}

#[test]
fn three_heads_share_nodes_and_see_a_dead_head() {
    let mut c = Cluster::etcd(3);

    // A node created through head A is listed through head C (within 1 s).
    c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:aa:00:01", "ip=10.54.0.1", "rack=1"]).ok();
    let created = Instant::now();
    poll_until("node visible through head C", Duration::from_secs(1), || node_names(&c, 2) == ["n0"]);
    assert!(created.elapsed() <= Duration::from_secs(1));
    let long = c.heads[2].cli("scyld-nodectl", &["ls", "-l"]);
    assert!(long.ok().contains("52:54:00:aa:00:01") && long.stdout.contains("rack=1"), "{long:?}");

    // Every head lists all three as alive, each a voting etcd member.
    for via in 0..3 {
        assert_eq!(alive(&c, via), [("head1".into(), true), ("head2".into(), true), ("head3".into(), true)]);
        let text = c.heads[via].cli("scyld-clusterctl", &["heads", "ls", "-l"]);
        assert_eq!(text.ok().matches("etcd voting").count(), 3, "{text:?}");
    }
    let listed = c.heads[0].cli("managedb", &["--heads"]);
    assert_eq!(listed.ok().matches("connected").count(), 3, "{listed:?}");

    // Exactly one etcd leader.
    let v = c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json();
    let leaders: Vec<usize> = (0..3).filter(|&i| v["heads"][i]["db_member"]["leader"] == true).collect();
    assert_eq!(leaders.len(), 1, "{v}");

    // kill -9 of head B: not alive within its lease TTL (plus etcd's 500 ms expiry tick and the
    // polling). B is a head that is not the etcd leader: when the leader dies, etcd elects a
    // new one and renews every lease to its full TTL, so a dead leader's record lasts up to an
    // election longer (checked below with head C).
    let b = if leaders[0] == 1 { 0 } else { 1 };
    let (a, cc) = (if b == 0 { 1 } else { 0 }, 2);
    let bname = format!("head{}", b + 1);
    c.heads[b].kill9();
    let killed = Instant::now();
    poll_until("B shown as not alive", Duration::from_secs(LEASE_TTL + 5), || {
        alive(&c, a).iter().any(|(n, al)| n == &bname && !al)
    });
    assert!(killed.elapsed() <= Duration::from_millis(LEASE_TTL * 1000 + 2000), "took {:?}", killed.elapsed());
    assert!(alive(&c, cc).contains(&(bname.clone(), false)));

    // A and C keep serving reads and writes.
    c.heads[cc].cli("scyld-nodectl", &["create", "mac=52:54:00:aa:00:02"]).ok();
    assert_eq!(node_names(&c, a), ["n0", "n1"]);
    c.heads[a].cli("scyld-nodectl", &["-i", "n1", "set", "--force", "_boot_config=compute"]).ok();
    let v = c.heads[cc].cli("scyld-nodectl", &["-i", "n1", "ls", "--json"]).json();
    assert_eq!(v["nodes"][0]["attributes"]["_boot_config"], "compute");
    assert_eq!(v["nodes"][0]["ip"], "10.54.0.2");

    // B comes back and is alive again, with the data.
    c.heads[b].start();
    c.heads[b].wait_ready(Duration::from_secs(60));
    poll_until("B alive again", Duration::from_secs(10), || alive(&c, a).iter().all(|(_, al)| *al));
    assert_eq!(node_names(&c, b), ["n0", "n1"]);

    // kill -9 of the etcd leader: not alive within its TTL plus an election (etcd renews every
    // lease when a new leader takes over).
    let v = c.heads[a].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json();
    let l = (0..3).find(|&i| v["heads"][i]["db_member"]["leader"] == true).expect("a leader");
    let lname = format!("head{}", l + 1);
    let other = (0..3).find(|&i| i != l).unwrap();
    c.heads[l].kill9();
    let killed = Instant::now();
    poll_until("the dead leader shown as not alive", Duration::from_secs(LEASE_TTL + 8), || {
        alive(&c, other).iter().any(|(n, al)| n == &lname && !al)
    });
    assert!(killed.elapsed() <= Duration::from_secs(LEASE_TTL + 6), "took {:?}", killed.elapsed());
    c.heads[l].start();
    c.heads[l].wait_ready(Duration::from_secs(60));
    poll_until("all alive again", Duration::from_secs(10), || alive(&c, other).iter().all(|(_, al)| *al));

    // A clean stop removes the liveness record at once, not after the TTL.
    assert_eq!(c.heads[2].stop(), Some(0));
    assert!(alive(&c, 0).contains(&("head3".into(), false)), "a stopped head must not stay alive until its TTL");
}

#[test]
fn racing_heads_cannot_both_claim_a_mac() {
    let c = Arc::new(Cluster::etcd(3));
    for round in 0..10 {
        let barrier = Arc::new(Barrier::new(2));
        let mac = format!("52:54:00:bb:00:{round:02x}");
        let threads: Vec<_> = (0..2)
            .map(|h| {
                let (c, barrier, mac) = (c.clone(), barrier.clone(), mac.clone());
                std::thread::spawn(move || {
                    let body = json!({"nodes": [{"macs": [mac], "ip": format!("10.55.{h}.{round}")}]});
                    barrier.wait();
                    c.heads[h].api("POST", "/nodes", Some(&c.token), Some(&body))
                })
            })
            .collect();
        let results: Vec<(u16, Value)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        let mut codes: Vec<u16> = results.iter().map(|r| r.0).collect();
        codes.sort();
        assert_eq!(codes, [201, 409], "round {round}: {results:?}");
        let loser = results.iter().find(|r| r.0 == 409).unwrap();
        assert_eq!(loser.1["kind"], "conflict");
        assert!(loser.1["message"].as_str().unwrap().contains(&mac), "{loser:?}");
    }
    let (status, v) = c.heads[2].api("GET", "/nodes", Some(&c.token), None);
    assert_eq!(status, 200);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 10, "exactly one node per MAC");
}

#[test]
fn a_head_without_quorum_refuses_writes_clearly() {
    let mut c = Cluster::etcd(3);
    c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:cc:00:01", "ip=10.56.0.1"]).ok();
    // A boot file this head verified as it received it, never requested before the quorum goes.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let path = c.dir().join("kernel");
    std::fs::write(&path, &data).unwrap();
    let rec = c.heads[0]
        .cli("scyld-clusterctl", &["files", "upload", path.to_str().unwrap(), "--kind", "kernel", "--json"])
        .json();
    let id = rec["id"].as_str().unwrap();
    c.heads[1].kill9();
    c.heads[2].kill9();
    // Degraded: the verified file is still served; changes are refused with the reason.
    let (status, body) = c.heads[0].content(id);
    assert!(status == 200 && body == data, "a verified file is served without quorum: {status}, {} bytes", body.len());
    let out = c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:cc:00:02"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("scyld-nodectl: error: cluster database unavailable"), "{out:?}");
    assert!(out.stderr.contains("quorum") && out.stderr.contains("verified"), "{out:?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "one line: {out:?}");
    let (status, v) = c.heads[0].api("GET", "/nodes", Some(&c.token), None);
    assert_eq!((status, v["kind"].as_str()), (503, Some("unavailable")), "{v}");

    // Quorum back: the head serves again by itself, and the refused write left nothing.
    c.heads[1].start();
    c.heads[1].wait_ready(Duration::from_secs(60));
    poll_until("writes accepted again", Duration::from_secs(30), || c.heads[0].cli("scyld-nodectl", &["ls"]).code == 0);
    assert_eq!(node_names(&c, 0), ["n0"]);
}

#[test]
fn requests_larger_than_one_transaction_are_split() {
    // etcd started with --max-txn-ops=16: every request below spans several transactions.
    let c = Cluster::start(Backend::Etcd, 1, "database.max_txn_ops = 16\n");
    let h = &c.heads[0];
    let out = h.cli("scyld-nodectl", &["create", "--count", "40", "mac=52:54:00:dd:00:00", "ip=10.57.0.1"]);
    assert_eq!(out.ok(), "created 40 nodes n[0-39] (IPs 10.57.0.1 to 10.57.0.40)\n");
    // A conflict found before writing leaves nothing behind, even across transactions.
    let out = h.cli("scyld-nodectl", &["create", "--count", "40", "mac=52:54:00:dd:10:00", "ip=10.57.0.20"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(node_names(&c, 0).len(), 40);
    h.cli("scyld-nodectl", &["-a", "set", "--force", "_boot_config=split"]).ok();
    let v = h.cli("scyld-nodectl", &["ls", "--json"]).json();
    assert!(v["nodes"].as_array().unwrap().iter().all(|n| n["attributes"]["_boot_config"] == "split"));
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n[0-39]", "rm", "--yes"]).ok(), "deleted 40 nodes n[0-39]\n");
    assert!(node_names(&c, 0).is_empty());
    let (status, v) = h.api("GET", "/heads", Some(&c.token), None);
    assert_eq!(status, 200);
    assert_eq!(v["heads"][0]["db_member"]["state"], "voting");
}
