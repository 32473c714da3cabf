//! Rebalancing: each head, every `rebalance.interval` seconds (jittered), computes the mean
//! number of up nodes per alive head; a head that parents more than the mean by more than
//! `rebalance.threshold` percent directs just enough of its nodes to heads below the mean.
//!
//! Rounds are serialised through a lease-bound lock (`rebalance/lock`), and each reads status,
//! moves and liveness in one transaction (one revision). A move is a `moves/<uid>` record under
//! a lease as long as the hold-off: it counts the node at its destination while it travels (at
//! most [`TRAVEL_SECS`]: a node still at its source after that did not move, counts there and
//! may be planned again), keeps a node that moved from being moved again within the hold-off,
//! and is how the decision reaches the node's parent, which hands the agent a switch-parent
//! directive. Two heads deciding in turn
//! therefore never overshoot each other's targets.
//!
//! Nodes whose `_preferred_head` is alive never move away from it; the imbalance they cause is
//! reported in the plan's notes, not fought.
//!
//! A head whose liveness record says it is stopping (it hands its nodes over first,
//! `Hub::hand_over`) counts as not alive here: it is given no nodes, and the nodes it still
//! parents are not counted.

pub mod hand_over;
pub mod routes;

use crate::agent_channel::Hub;
use crate::core::db::{Compare, Database, DbError, KeyValue, OpResult, Txn, TxnOp};
use crate::core::schema;
use crate::core::schema::{ALIVE, AliveRecord, MOVES, MoveRecord, REBALANCE_LOCK, STATUS, StatusRecord};
use crate::core::view::order_hash;
use clusterware_shared::agent::{HeadLoad, NodeMove, NodeState, RebalanceReport};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub enabled: bool,
    pub interval: Duration,
    pub threshold_pct: u32,
    pub holdoff: Duration,
}

/// A node as rebalancing sees it.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub uid: String,
    pub name: String,
    pub parent: String,
    /// Its `_preferred_head`, when that head is alive.
    pub pinned_to: Option<String>,
    /// A move decided earlier and not yet completed.
    pub moving_to: Option<String>,
    /// Moved within the hold-off.
    pub held: bool,
}

/// The moves that bring every overloaded head (or only `source`) down to the mean, from one
/// snapshot. Pure: the tests and `--dry-run` use it as is.
pub fn plan(nodes: &[NodeView], alive: &[String], threshold_pct: u32, source: Option<&str>) -> RebalanceReport {
    let mut counts: BTreeMap<String, u64> = alive.iter().map(|h| (h.clone(), 0)).collect();
    let mut pinned: BTreeMap<String, u64> = BTreeMap::new();
    for n in nodes {
        let at = n.moving_to.as_deref().filter(|t| counts.contains_key(*t)).unwrap_or(&n.parent);
        if let Some(c) = counts.get_mut(at) {
            *c += 1;
            if n.pinned_to.as_deref() == Some(at) {
                *pinned.entry(at.to_string()).or_default() += 1;
            }
        }
    }
    let total: u64 = counts.values().sum();
    let heads = counts.len().max(1) as f64;
    let mean = total as f64 / heads;
    let limit = mean * (1.0 + threshold_pct as f64 / 100.0);
    let (floor, ceil) = (mean.floor() as u64, mean.ceil() as u64);
    let mut report = RebalanceReport {
        mean,
        threshold_pct,
        heads: counts
            .iter()
            .map(|(h, c)| HeadLoad { name: h.clone(), nodes: *c, pinned: pinned.get(h).copied().unwrap_or(0) })
            .collect(),
        moves: Vec::new(),
        notes: Vec::new(),
        executed: false,
    };
    let mut load = counts.clone();
    let sources: Vec<String> = counts
        .iter()
        .filter(|(h, c)| (**c as f64) > limit && source.is_none_or(|s| s == h.as_str()))
        .map(|(h, _)| h.clone())
        .collect();
    for src in sources {
        let excess = load[&src].saturating_sub(ceil);
        let mut movable: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| n.parent == src && n.moving_to.is_none() && !n.held && n.pinned_to.is_none())
            .collect();
        movable.sort_by_key(|n| (order_hash(&n.uid), n.uid.clone()));
        let mut moved = 0u64;
        for n in movable {
            if moved == excess {
                break;
            }
            // The receiver furthest below the mean.
            let Some((to, _)) = load
                .iter()
                .filter(|(h, c)| **h != src && **c < floor)
                .max_by_key(|(h, c)| (floor - **c, std::cmp::Reverse((*h).clone())))
                .map(|(h, c)| (h.clone(), *c))
            else {
                break;
            };
            *load.get_mut(&to).expect("receiver is counted") += 1;
            *load.get_mut(&src).expect("source is counted") -= 1;
            report.moves.push(NodeMove {
                uid: n.uid.clone(),
                node: n.name.clone(),
                from: src.clone(),
                to: to.clone(),
                reason: format!(
                    "{src} parents {} nodes, more than the mean {mean:.1} + {threshold_pct}%",
                    counts[&src]
                ),
            });
            moved += 1;
        }
        if moved < excess {
            let pinned_here = pinned.get(&src).copied().unwrap_or(0);
            report.notes.push(format!(
                "{src} keeps {} nodes above the mean: {} of its nodes prefer it (_preferred_head), the others moved recently or no head is below the mean",
                excess - moved,
                pinned_here
            ));
        }
    }
    report
}

impl Hub {
    /// One rebalancing round for `source` (every head when `None`); writes the moves unless
    /// `dry_run`.
    pub async fn rebalance(
        &self,
        settings: &Settings,
        source: Option<&str>,
        dry_run: bool,
    ) -> Result<RebalanceReport, DbError> {
        let lease = if dry_run {
            None
        } else {
            let lease = self.db.grant_lease(30).await?;
            let t = Txn::new().when([Compare::absent(REBALANCE_LOCK)]).and_then([TxnOp::put_with_lease(
                REBALANCE_LOCK,
                self.view.me.name.as_bytes().to_vec(),
                lease,
            )]);
            if !self.db.txn(t).await?.succeeded {
                let _ = self.db.revoke_lease(lease).await;
                return Ok(RebalanceReport {
                    mean: 0.0,
                    threshold_pct: settings.threshold_pct,
                    heads: Vec::new(),
                    moves: Vec::new(),
                    notes: vec!["another head is rebalancing right now; try again in a moment".into()],
                    executed: false,
                });
            }
            Some(lease)
        };
        let r = self.round(settings, source, dry_run).await;
        if let Some(l) = lease {
            let _ = self.db.revoke_lease(l).await;
        }
        r
    }

    async fn round(
        &self,
        settings: &Settings,
        source: Option<&str>,
        dry_run: bool,
    ) -> Result<RebalanceReport, DbError> {
        let [status, moves, alive] = snapshot(&self.db, [STATUS, MOVES, ALIVE]).await?;
        let now_secs = crate::core::unix_now();
        let alive = taking_nodes(&alive);
        let alive_set: HashSet<&str> = alive.iter().map(String::as_str).collect();
        let moves: HashMap<String, MoveRecord> = moves
            .iter()
            .filter_map(|kv| serde_json::from_slice::<MoveRecord>(&kv.value).ok())
            .map(|m| (m.uid.clone(), m))
            .collect();
        let mut views = Vec::new();
        let mut revs: HashMap<String, i64> = HashMap::new();
        for kv in &status {
            let Some(uid) = kv.key.strip_prefix(STATUS) else { continue };
            let Ok(rec) = serde_json::from_slice::<StatusRecord>(&kv.value) else { continue };
            if !matches!(rec.state, NodeState::Up | NodeState::Booting) || !alive_set.contains(rec.parent.as_str()) {
                continue;
            }
            let Some(node) = self.nodes.by_uid(uid) else { continue };
            let pinned_to = self.view.preferred_head(&node).filter(|h| alive_set.contains(h.as_str()));
            let (moving_to, held) = in_transit(moves.get(uid), &rec.parent, now_secs);
            views.push(NodeView {
                uid: uid.to_string(),
                name: node.name.clone(),
                moving_to,
                held,
                parent: rec.parent.clone(),
                pinned_to,
            });
            revs.insert(uid.to_string(), kv_rev(kv));
        }
        let mut report = plan(&views, &alive, settings.threshold_pct, source);
        if dry_run || report.moves.is_empty() {
            return Ok(report);
        }
        let lease = self.db.grant_lease(settings.holdoff.as_secs().max(5) as i64).await?;
        let now = crate::core::unix_now();
        let mut done = Vec::new();
        for chunk in report.moves.chunks(500) {
            let mut t = Txn::new();
            for m in chunk {
                let key = schema::status(&m.uid);
                t.compares.push(Compare::unchanged(key, revs.get(&m.uid).copied().unwrap_or(0)));
                let rec = MoveRecord {
                    uid: m.uid.clone(),
                    node: m.node.clone(),
                    from: m.from.clone(),
                    to: m.to.clone(),
                    reason: m.reason.clone(),
                    at: now,
                };
                t.success.push(TxnOp::put_with_lease(
                    schema::moved(&m.uid),
                    serde_json::to_vec(&rec).expect("moves serialise"),
                    lease,
                ));
            }
            if self.db.txn(t).await?.succeeded {
                done.extend(chunk.iter().cloned());
            } else {
                report.notes.push("some nodes changed parent during the round; the next round looks again".into());
                break;
            }
        }
        for m in &done {
            tracing::info!(node = %m.node, from = %m.from, to = %m.to, reason = %m.reason, "rebalance: moving node");
        }
        if let Some(m) = crate::core::metrics::on() {
            m.rebalance_moves.inc_by(done.len() as u64);
        }
        report.moves = done;
        report.executed = true;
        Ok(report)
    }
}

/// How long a move may take to show in its node's status (the directive reaches the agent
/// through its long poll at once; its next push goes to the new parent, whose status writer
/// records it within seconds).
pub const TRAVEL_SECS: u64 = 20;

/// What a move record means for a node that reports from `parent` now: where it counts
/// (`Some(destination)` while it travels) and whether it is held (not moved again). A node
/// counts where it reports once the move had time to happen: one still at the source then did
/// not move (the switch never reached it, or it failed back) and may be planned again; one that
/// arrived, or went elsewhere, is held for the hold-off.
pub fn in_transit(mv: Option<&MoveRecord>, parent: &str, now: u64) -> (Option<String>, bool) {
    match mv {
        None => (None, false),
        Some(m) if m.from == parent && now.saturating_sub(m.at) <= TRAVEL_SECS => (Some(m.to.clone()), true),
        Some(m) if m.from == parent => (None, false),
        Some(_) => (None, true),
    }
}

/// The records under each of `prefixes`, read in one transaction (one revision).
async fn snapshot<const N: usize>(db: &Database, prefixes: [&str; N]) -> Result<[Vec<KeyValue>; N], DbError> {
    let r = db.txn(Txn::new().and_then(prefixes.map(|p| TxnOp::GetPrefix { prefix: p.into() }))).await?;
    let mut got = r.results.into_iter().map(|o| match o {
        OpResult::Got(kvs) => kvs,
        _ => Vec::new(),
    });
    Ok(std::array::from_fn(|_| got.next().unwrap_or_default()))
}

/// The heads that take nodes, from the `alive/` records: a stopping head hands its nodes over,
/// so it is given none, and its own are its to hand.
fn taking_nodes(alive: &[KeyValue]) -> Vec<String> {
    alive
        .iter()
        .filter(|kv| !serde_json::from_slice::<AliveRecord>(&kv.value).is_ok_and(|r| r.stopping))
        .filter_map(|kv| kv.key.strip_prefix(ALIVE).map(str::to_string))
        .collect()
}

fn kv_rev(kv: &KeyValue) -> i64 {
    kv.mod_revision
}

/// Runs this head's rounds until shutdown.
pub async fn run(hub: Arc<Hub>, settings: Settings, mut stop: watch::Receiver<bool>) {
    if !settings.enabled {
        tracing::info!("rebalancing is off (rebalance.enabled = no)");
        return;
    }
    loop {
        let jitter = 0.9 + rand::random::<f64>() * 0.2;
        tokio::select! {
            _ = tokio::time::sleep(settings.interval.mul_f64(jitter)) => {}
            _ = stop.changed() => return,
        }
        let me = hub.view.me.name.clone();
        match hub.rebalance(&settings, Some(&me), false).await {
            Ok(r) => {
                for n in &r.notes {
                    tracing::info!(note = %n, "rebalance");
                }
                if !r.moves.is_empty() {
                    tracing::info!(moved = r.moves.len(), mean = r.mean, "rebalance round");
                }
            }
            Err(e) => tracing::warn!(error = %e, "rebalance round failed"),
        }
    }
}

impl Settings {
    /// The `rebalance.*` section of the configuration.
    pub fn from_config(cfg: &clusterware_shared::config::Config) -> Settings {
        Settings {
            enabled: cfg.rebalance_enabled,
            interval: Duration::from_secs(cfg.rebalance_interval_secs),
            threshold_pct: cfg.rebalance_threshold_pct,
            holdoff: Duration::from_secs(cfg.rebalance_holdoff_secs),
        }
    }
}

/// Starts rebalancing: the periodic rounds and the route.
pub fn start(ctx: &crate::core::Ctx, hub: &Arc<Hub>) {
    let settings = Settings::from_config(ctx.config);
    let h = hub.clone();
    ctx.sup.spawn(crate::core::supervisor::Stage::Work, "rebalancing", move |stop| run(h, settings, stop));
    ctx.serve(routes::routes(Arc::new(routes::Api { hub: hub.clone(), rebalance: settings })));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stopping head (and a record from before 0.2.0, which does not say) as rebalancing sees
    /// it: the first is given nothing, the second takes nodes.
    #[test]
    fn a_stopping_head_takes_no_nodes() {
        let kv = |name: &str, value: String| KeyValue {
            key: schema::alive(name),
            value: value.into_bytes(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        };
        let alive = [
            kv("head1", r#"{"name":"head1","pid":1,"started":0,"stopping":true}"#.into()),
            kv("head2", r#"{"name":"head2","pid":1,"started":0}"#.into()),
            kv("head3", r#"{"name":"head3","pid":1,"started":0,"stopping":false}"#.into()),
        ];
        assert_eq!(taking_nodes(&alive), ["head2", "head3"]);
    }

    /// A move counts its node at the destination only while it can still be under way; a node
    /// still at its source after that counts where it is and may be planned again (the switch
    /// never reached it, or it failed back); one that arrived is held.
    #[test]
    fn moves_count_where_nodes_report_once_they_had_time_to_happen() {
        let m = MoveRecord {
            uid: "u".into(),
            node: "n0".into(),
            from: "head1".into(),
            to: "head2".into(),
            reason: "r".into(),
            at: 1000,
        };
        assert_eq!(in_transit(None, "head1", 1000), (None, false));
        assert_eq!(in_transit(Some(&m), "head1", 1000 + TRAVEL_SECS), (Some("head2".into()), true));
        assert_eq!(in_transit(Some(&m), "head1", 1001 + TRAVEL_SECS), (None, false), "the move did not happen");
        assert_eq!(in_transit(Some(&m), "head2", 1001 + TRAVEL_SECS), (None, true), "arrived: held");
        assert_eq!(in_transit(Some(&m), "head3", 1010), (None, true), "went elsewhere: held");
    }

    fn nodes(spec: &[(&str, usize)]) -> Vec<NodeView> {
        let mut v = Vec::new();
        for (h, n) in spec {
            for i in 0..*n {
                v.push(NodeView {
                    uid: format!("{h}-{i}"),
                    name: format!("{h}-{i}"),
                    parent: h.to_string(),
                    pinned_to: None,
                    moving_to: None,
                    held: false,
                });
            }
        }
        v
    }

    fn heads(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn all_on_one_head_moves_the_minimum() {
        let r = plan(&nodes(&[("a", 300)]), &heads(&["a", "b", "c"]), 20, None);
        assert_eq!(r.moves.len(), 200);
        assert_eq!(r.moves.iter().filter(|m| m.to == "b").count(), 100);
        let r = plan(&nodes(&[("a", 301)]), &heads(&["a", "b", "c"]), 20, None);
        assert_eq!(r.moves.len(), 200, "a keeps 101");
    }

    #[test]
    fn a_new_head_gets_its_share_without_overshoot() {
        let mut n = nodes(&[("a", 100), ("b", 100), ("c", 100)]);
        let h = heads(&["a", "b", "c", "d"]);
        // Rounds of a, b, c in turn, each seeing the moves before it as under way.
        let mut total = 0;
        for src in ["a", "b", "c"] {
            let r = plan(&n, &h, 20, Some(src));
            assert_eq!(r.moves.len(), 25, "{src}");
            for m in &r.moves {
                let v = n.iter_mut().find(|x| x.uid == m.uid).unwrap();
                v.moving_to = Some(m.to.clone());
                v.held = true;
            }
            total += r.moves.len();
        }
        assert_eq!(total, 75);
        assert!(plan(&n, &h, 20, None).moves.is_empty());
    }

    #[test]
    fn balanced_and_pinned_nodes_stay() {
        assert!(plan(&nodes(&[("a", 110), ("b", 95), ("c", 95)]), &heads(&["a", "b", "c"]), 20, None).moves.is_empty());
        let mut n = nodes(&[("a", 300)]);
        for v in n.iter_mut().take(250) {
            v.pinned_to = Some("a".into());
        }
        let r = plan(&n, &heads(&["a", "b", "c"]), 20, None);
        assert_eq!(r.moves.len(), 50);
        assert!(
            r.moves
                .iter()
                .all(|m| !m.uid.starts_with("a-") || n.iter().any(|v| v.uid == m.uid && v.pinned_to.is_none()))
        );
        assert_eq!(r.notes.len(), 1, "{:?}", r.notes);
        assert_eq!(r.heads[0].pinned, 250);
    }
}
