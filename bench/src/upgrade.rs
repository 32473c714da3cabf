//! Rolling upgrade: how long each head is out of service while a three-head cluster of the last
//! release (`RELEASES`, built with the release profile beside the tree) is upgraded to this tree
//! one head at a time under 1,000 simulated nodes of that release, and while each upgraded head
//! then restarts in place (SIGHUP, what the next `scyld-install --update` does). The floor of
//! each figure is the head's own database coming back (its etcd member rejoining), which the
//! head logs and the table shows beside it; with the failed pushes and the nodes shown down
//! during each head's turn.

use crate::{Report, secs};
use clusterware_tests::releases;

pub fn bench_upgrade(r: &mut Report) {
    eprintln!("cw-bench: rolling upgrade (building the last release first)…");
    let nodes = 1000;
    let run = releases::rolling_upgrade(releases::last_optimised(), nodes);
    r.section(
        "Rolling upgrade",
        "make bench (target/release/cw-bench --only upgrade)",
        &format!(
            "Three heads of release {} (etcd, `rebalance.interval = 2`) with {nodes} simulated nodes of that release \
             reporting every 5 s are upgraded to this tree ({}) one head at a time: stop (SIGTERM), start on the new \
             programs, serving; the next head goes once the upgraded one has its share of nodes back. Then each head \
             restarts in place (SIGHUP), as the next update does. Out of service: from the stop (or the signal) until \
             the head answers as serving. Its floor is the head's database: its etcd member rejoining the cluster \
             (`cluster database ready after_ms` in the head's log); ratio = out of service / database. A head of \
             {} hands its nodes to the others before it stops; the last release does not, so before each of its heads \
             stops, this tree's `clusterware-head --hand-over` hands its nodes over through the database, as the \
             package's postinst does before it restarts a head on new binaries (handed first).",
            run.old.version,
            clusterware_shared::VERSION,
            clusterware_shared::VERSION
        ),
    );
    let row = |what: &str, s: &releases::Step| {
        let db = s.database.map_or("-".to_string(), secs);
        let ratio = s
            .database
            .map_or("-".to_string(), |d| format!("{:.1}", s.out_of_service.as_secs_f64() / d.as_secs_f64().max(0.001)));
        vec![
            format!("{what} {}", s.head),
            secs(s.out_of_service),
            db,
            ratio,
            s.failed_pushes.to_string(),
            s.failovers.to_string(),
            s.down.to_string(),
            s.handed.map_or("-".to_string(), |n| n.to_string()),
        ]
    };
    let mut rows: Vec<Vec<String>> =
        run.upgrade.iter().map(|s| row(&format!("upgrade {} ->", run.old.version), s)).collect();
    rows.extend(run.restart.iter().map(|s| row("restart in place", s)));
    r.table(
        &[
            "head",
            "out of service",
            "database (floor)",
            "ratio",
            "failed pushes",
            "failovers",
            "nodes shown down",
            "handed first",
        ],
        rows,
    );
}
