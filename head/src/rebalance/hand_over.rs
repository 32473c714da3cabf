//! `clusterware-head --hand-over`: the nodes of a running head handed to the other heads by
//! another process, through the database alone.
//!
//! A head of this release hands its nodes over itself when it stops (`Hub::hand_over`). A head
//! of an older release does not: stopped, its nodes' pushes fail until they fail over. The
//! package's postinst runs this first, with the new program, before it restarts the head on
//! the new binaries (and the upgrade test does the same): it writes a move (`moves/<uid>`, what
//! rebalancing writes, and what every release's head relays to its node as a switch-parent
//! directive) for each node the head parents, to the other heads that take nodes, least loaded
//! first, and waits until their status shows them elsewhere.
//!
//! It takes the rebalancing lock for as long as it runs and leaves it (with the moves) to its
//! lease, [`HOLD`] past the last node's arrival: no head's round sends nodes back to the head
//! before it restarted and serves again. Its rebalancing gives it its share afterwards.

use crate::core::db::etcd::Etcd;
use crate::core::db::{Compare, Database, DbError, KeyValue, Txn, TxnOp};
use crate::core::schema::{self, ALIVE, MoveRecord, NODES, REBALANCE_LOCK, STATUS, StatusRecord};
use crate::core::view::order_hash;
use clusterware_shared::agent::NodeState;
use clusterware_shared::api::Node;
use clusterware_shared::config::{Config, DatabaseType};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long the lock and the moves outlive the hand-over: the restart that follows it.
pub const HOLD: Duration = Duration::from_secs(30);

/// What a hand-over did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HandedOver {
    pub head: String,
    /// Nodes the head parented (up or booting).
    pub nodes: usize,
    /// Of which now report to another head.
    pub moved: usize,
    /// Destination head: nodes sent there.
    pub to: BTreeMap<String, usize>,
    pub seconds: f64,
    /// Why nothing was moved, when nothing was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl HandedOver {
    /// Nodes told to move that still reported to this head when the wait ended.
    pub fn not_moved(&self) -> usize {
        self.to.values().sum::<usize>() - self.moved
    }
}

/// Hands over the nodes of the head running with `cfg` (named `me`): through its etcd member's
/// socket, or the external etcd it uses.
pub async fn of_running_head(cfg: &Config, me: &str, within: Duration) -> Result<HandedOver, String> {
    let endpoints = match cfg.database_type {
        DatabaseType::Embedded => {
            return Ok(HandedOver {
                head: me.to_string(),
                nodes: 0,
                moved: 0,
                to: BTreeMap::new(),
                seconds: 0.0,
                note: Some("a solo head (embedded database) has no other head to hand its nodes to".into()),
            });
        }
        DatabaseType::Etcd if !cfg.etcd_endpoints.is_empty() => cfg.etcd_endpoints.clone(),
        DatabaseType::Etcd => vec![crate::core::db::member::client_url_of(&cfg.etcd_data_dir)],
    };
    let cannot = |e: String| {
        format!("cannot reach the cluster database at {} ({e}): is head {me} running?", endpoints.join(", "))
    };
    let etcd = tokio::time::timeout(Duration::from_secs(10), Etcd::connect(&endpoints, cfg.max_txn_ops))
        .await
        .map_err(|_| cannot("no answer within 10 s".into()))?
        .map_err(|e| cannot(e.to_string()))?;
    hand_over(&Database::Etcd(etcd), me, within).await.map_err(|e| format!("the hand-over failed: {e}"))
}

/// Hands the nodes `me` parents to the other heads that take nodes; waits up to `within` for
/// them to arrive.
pub async fn hand_over(db: &Database, me: &str, within: Duration) -> Result<HandedOver, DbError> {
    let t0 = Instant::now();
    let lease = db.grant_lease(HOLD.as_secs() as i64).await?;
    let r = run(db, me, within, lease, t0).await;
    if r.as_ref().map_or(true, |h| h.to.is_empty()) {
        // Nothing moved: nothing to hold.
        let _ = db.revoke_lease(lease).await;
    }
    r
}

async fn run(db: &Database, me: &str, within: Duration, lease: i64, t0: Instant) -> Result<HandedOver, DbError> {
    let mut done =
        HandedOver { head: me.to_string(), nodes: 0, moved: 0, to: BTreeMap::new(), seconds: 0.0, note: None };
    // The lock: a round in progress ends within seconds.
    let lock = Txn::new().when([Compare::absent(REBALANCE_LOCK)]).and_then([TxnOp::put_with_lease(
        REBALANCE_LOCK,
        me.as_bytes().to_vec(),
        lease,
    )]);
    while !db.txn(lock.clone()).await?.succeeded {
        if t0.elapsed() > within {
            done.note = Some("another head kept the rebalancing lock; nothing was moved".into());
            return Ok(done);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let [status, alive, nodes] = super::snapshot(db, [STATUS, ALIVE, NODES]).await?;
    let names: BTreeMap<String, String> =
        nodes.iter().filter_map(|kv| serde_json::from_slice::<Node>(&kv.value).ok()).map(|n| (n.uid, n.name)).collect();
    // The other heads that take nodes, with the nodes they parent.
    let mut load: BTreeMap<String, u64> =
        super::taking_nodes(&alive).into_iter().filter(|h| h != me).map(|h| (h, 0)).collect();
    let mut mine: Vec<(String, i64)> = Vec::new();
    for kv in &status {
        let (Some(uid), Ok(rec)) = (kv.key.strip_prefix(STATUS), serde_json::from_slice::<StatusRecord>(&kv.value))
        else {
            continue;
        };
        if !matches!(rec.state, NodeState::Up | NodeState::Booting) {
            continue;
        }
        if rec.parent == me {
            mine.push((uid.to_string(), kv.mod_revision));
        } else if let Some(c) = load.get_mut(&rec.parent) {
            *c += 1;
        }
    }
    done.nodes = mine.len();
    if mine.is_empty() {
        done.note = Some(format!("{me} parents no node"));
        return Ok(done);
    }
    if load.is_empty() {
        done.note = Some(format!("no other head is alive to take {me}'s nodes; they fail over when it stops"));
        return Ok(done);
    }
    mine.sort_by_key(|(uid, _)| (order_hash(uid), uid.clone()));
    let now = crate::core::unix_now();
    let mut moves: Vec<(MoveRecord, i64)> = Vec::new();
    for (uid, rev) in mine {
        let (to, c) = load.iter_mut().min_by_key(|(h, c)| (**c, (*h).clone())).expect("a head takes nodes");
        *c += 1;
        let rec = MoveRecord {
            node: names.get(&uid).cloned().unwrap_or_else(|| uid.clone()),
            uid,
            from: me.to_string(),
            to: to.clone(),
            reason: format!("{me} hands its nodes over before it restarts"),
            at: now,
        };
        moves.push((rec, rev));
    }
    // A node that changed parent meanwhile is left alone (its record's revision moved on): a
    // chunk that holds one is written again one move at a time.
    let txn = |ms: &[(MoveRecord, i64)]| {
        let mut t = Txn::new();
        for (m, rev) in ms {
            t.compares.push(Compare::unchanged(schema::status(&m.uid), *rev));
            let value = serde_json::to_vec(m).expect("moves serialise");
            t.success.push(TxnOp::put_with_lease(schema::moved(&m.uid), value, lease));
        }
        t
    };
    let mut written: Vec<MoveRecord> = Vec::new();
    for chunk in moves.chunks((db.max_txn_ops() / 2).clamp(1, 500)) {
        if db.txn(txn(chunk)).await?.succeeded {
            written.extend(chunk.iter().map(|(m, _)| m.clone()));
            continue;
        }
        for one in chunk.chunks(1) {
            if db.txn(txn(one)).await?.succeeded {
                written.push(one[0].0.clone());
            }
        }
    }
    for m in &written {
        tracing::info!(node = %m.node, from = %m.from, to = %m.to, "hand-over: moving node");
        *done.to.entry(m.to.clone()).or_default() += 1;
    }
    // Until every moved node reports elsewhere (its status shows another parent).
    let mut keep = Instant::now();
    loop {
        let (status, _) = db.range(STATUS).await?;
        let still = still_here(&status, me, &written);
        done.moved = written.len() - still;
        if still == 0 || t0.elapsed() > within {
            break;
        }
        if keep.elapsed() > Duration::from_secs(2) {
            db.keep_alive(lease).await?;
            keep = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    db.keep_alive(lease).await?;
    done.seconds = t0.elapsed().as_secs_f64();
    Ok(done)
}

/// How many of the `moved` nodes the status records still show at `me`.
fn still_here(status: &[KeyValue], me: &str, moved: &[MoveRecord]) -> usize {
    let at: BTreeMap<&str, String> = status
        .iter()
        .filter_map(|kv| {
            let uid = kv.key.strip_prefix(STATUS)?;
            Some((uid, serde_json::from_slice::<StatusRecord>(&kv.value).ok()?.parent))
        })
        .collect();
    moved.iter().filter(|m| at.get(m.uid.as_str()).is_some_and(|p| p == me)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;
    use crate::core::schema::AliveRecord;

    fn status(parent: &str, state: NodeState) -> Vec<u8> {
        serde_json::to_vec(&StatusRecord {
            state,
            parent: parent.into(),
            last_seen: crate::core::unix_now(),
            boot_id: "b".into(),
            status_secs: 5,
            hardware: None,
            agent_version: None,
        })
        .unwrap()
    }

    async fn put(db: &Database, key: String, value: Vec<u8>) {
        db.txn(Txn::new().and_then([TxnOp::put(key, value)])).await.unwrap();
    }

    /// Six nodes on h1 (one down), one on h2: the five up ones go to h2 and h3, least loaded
    /// first, under one lease with the lock; a stopping head gets none. Nothing arrives here
    /// (no head relays the moves), so it waits `within` and says so.
    #[tokio::test]
    async fn moves_the_nodes_to_the_least_loaded_heads_under_the_lock() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        for (name, stopping) in [("h1", false), ("h2", false), ("h3", false), ("h4", true)] {
            let rec = AliveRecord { name: name.into(), pid: 1, started: 0, stopping };
            put(&db, schema::alive(name), serde_json::to_vec(&rec).unwrap()).await;
        }
        for i in 0..6 {
            let state = if i == 5 { NodeState::Down } else { NodeState::Up };
            put(&db, schema::status(&format!("u{i}")), status("h1", state)).await;
        }
        put(&db, schema::status("u9"), status("h2", NodeState::Up)).await;
        let h = hand_over(&db, "h1", Duration::from_millis(600)).await.unwrap();
        assert_eq!((h.nodes, h.moved, h.note.as_deref()), (5, 0, None), "{h:?}");
        assert_eq!(h.to, BTreeMap::from([("h2".to_string(), 2), ("h3".to_string(), 3)]));
        let (moves, _) = db.range(schema::MOVES).await.unwrap();
        assert_eq!(moves.len(), 5);
        assert!(moves.iter().all(|kv| kv.lease != 0 && !kv.value.is_empty()));
        let (lock, _) = db.range(REBALANCE_LOCK).await.unwrap();
        assert_eq!(lock[0].lease, moves[0].lease, "the lock is held with the moves");

        // Once the nodes report elsewhere it is done at once; a second run finds nothing.
        for i in 0..5 {
            put(&db, schema::status(&format!("u{i}")), status("h2", NodeState::Up)).await;
        }
        db.revoke_lease(lock[0].lease).await.unwrap();
        let again = hand_over(&db, "h1", Duration::from_secs(5)).await.unwrap();
        assert_eq!((again.nodes, again.note.as_deref()), (0, Some("h1 parents no node")));
        assert!(db.range(REBALANCE_LOCK).await.unwrap().0.is_empty(), "nothing to hold: the lock is released");
    }

    /// With no other head to take them, nothing is written and the lock is released.
    #[tokio::test]
    async fn alone_it_moves_nothing() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let rec = AliveRecord { name: "h1".into(), pid: 1, started: 0, stopping: false };
        put(&db, schema::alive("h1"), serde_json::to_vec(&rec).unwrap()).await;
        put(&db, schema::status("u0"), status("h1", NodeState::Up)).await;
        let h = hand_over(&db, "h1", Duration::from_secs(5)).await.unwrap();
        assert!(h.to.is_empty() && h.note.unwrap().contains("no other head is alive"));
        assert!(db.range(schema::MOVES).await.unwrap().0.is_empty());
        assert!(db.range(REBALANCE_LOCK).await.unwrap().0.is_empty());
    }
}
