//! The event log: admin actions (which credential, what, from where, when, the outcome) and
//! cluster events (heads joining, leaving, ejected, failing over; nodes coming up, going down,
//! changing parent; files quarantined or repaired from a peer; imports), kept in the database
//! under `events/` so that every head shows the same log (`scyld-clusterctl events`, the
//! console).
//!
//! Recording never waits and never fails the work that records: an event goes into a bounded
//! queue, and one writer task per head writes what is queued in one transaction every 200 ms
//! (node events of a batch that say the same thing become one event over a node range, so a
//! thousand nodes booting make one line, not a thousand). When the queue is full (the database
//! is unreachable for long), events are counted and the count is logged and recorded once the
//! writer catches up. The writer stops in the `Flush` stage, after the requests it records.
//!
//! Retention: `events.keep` events (10,000 by default) and `events.keep_days` days (30); the
//! writer deletes the oldest beyond either after each batch it writes. Every head follows the
//! prefix into memory (bounded by the retention), and `GET /api/v1/events` answers from there;
//! `after=ID&wait=SECS` waits for the next event (a long poll, `--follow`).

use crate::core::db::{Database, Txn, TxnOp};
use crate::core::follow::{Change, decoded, follow};
use crate::core::http::{ApiFailure, ApiResult, Routes, json, query_pairs};
use crate::core::schema::{self, EVENTS};
use crate::core::supervisor::{Stage, Supervisor};
use axum::http::StatusCode;
use axum::response::Response;
use clusterware_shared::api::{ErrorKind, Event, EventKind, EventList, EventQuery};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Events waiting for the writer, at most.
const QUEUE: usize = 4096;
/// Most events one answer holds.
pub const MAX_LIMIT: usize = 10_000;
/// Events an answer holds when the request names no limit.
const DEFAULT_LIMIT: usize = 100;
/// Longest long poll.
const MAX_WAIT_SECS: u64 = 55;
/// Long polls open at once on one head.
const MAX_WAITERS: usize = 256;
/// An event is given to a long poll (`after=`) only once it is this old, so that an event
/// another head wrote a moment earlier, under a smaller id, is not passed over: ids are the
/// writing head's clock at writing, and commits take milliseconds (heads' clocks must agree
/// within this, less the commit time; NTP does).
const SETTLE_MS: u64 = 1000;
/// How often the writer writes what is queued.
const BATCH: Duration = Duration::from_millis(200);

/// How much of the log is kept (`events.keep`, `events.keep_days`).
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep: usize,
    pub keep_secs: u64,
}

/// What a node did, as a node event says it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeChange {
    Up,
    Down,
    /// Now parented by this head, after another.
    Reparented {
        from: String,
    },
}

impl NodeChange {
    fn message(&self, n: usize) -> String {
        let (one, many) = match self {
            NodeChange::Up => ("node is up".to_string(), format!("{n} nodes are up")),
            NodeChange::Down => ("node is down (no status)".to_string(), format!("{n} nodes are down (no status)")),
            NodeChange::Reparented { from } => (
                format!("node changed parent from {from} to this head"),
                format!("{n} nodes changed parent from {from} to this head"),
            ),
        };
        if n == 1 { one } else { many }
    }
}

enum Pending {
    One(Event),
    Node { name: String, change: NodeChange, time_ms: u64 },
}

/// This head's handle on the event log (cheap to clone).
#[derive(Clone)]
pub struct EventLog(Arc<Inner>);

struct Inner {
    head: String,
    tx: mpsc::Sender<Pending>,
    dropped: AtomicU64,
    seq: AtomicU64,
    log: RwLock<BTreeMap<String, Arc<Event>>>,
    changed: watch::Sender<u64>,
    waiters: AtomicUsize,
    /// The `Serve` stage's stop: long polls answer when the head stops.
    stop: watch::Receiver<bool>,
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The time an event id starts with.
fn time_of(id: &str) -> Option<u64> {
    id.get(..16)?.parse().ok()
}

impl EventLog {
    /// Starts following the log and the writer.
    pub fn spawn(db: &Database, head: &str, retention: Retention, sup: &Supervisor) -> EventLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        let inner = Arc::new(Inner {
            head: head.to_string(),
            tx,
            dropped: AtomicU64::new(0),
            // Ids of events recorded in the same millisecond by a restarted head stay distinct.
            seq: AtomicU64::new(u64::from(rand::random::<u16>()) << 24),
            log: RwLock::new(BTreeMap::new()),
            changed: watch::channel(0).0,
            waiters: AtomicUsize::new(0),
            stop: sup.stop_signal(Stage::Serve),
        });
        let follower = inner.clone();
        let fdb = db.clone();
        sup.spawn(Stage::Views, "events follow", move |stop| {
            follow(
                fdb,
                EVENTS,
                move |c| {
                    let mut log = follower.log.write().unwrap_or_else(|p| p.into_inner());
                    match c {
                        Change::Reset(kvs) => {
                            log.clear();
                            for kv in kvs {
                                if let Some(e) = decoded::<Event>(EVENTS, &kv) {
                                    log.insert(kv.key, Arc::new(e));
                                }
                            }
                        }
                        Change::Put(kv) => {
                            if let Some(e) = decoded::<Event>(EVENTS, &kv) {
                                log.insert(kv.key, Arc::new(e));
                            }
                        }
                        Change::Delete(k) => {
                            log.remove(&k);
                        }
                    }
                    drop(log);
                    follower.changed.send_modify(|g| *g += 1);
                },
                stop,
            )
        });
        let writer = inner.clone();
        let wdb = db.clone();
        sup.spawn(Stage::Flush, "events writer", move |stop| writer_loop(wdb, writer, rx, retention, stop));
        EventLog(inner)
    }

    fn next_id(&self, time_ms: u64) -> String {
        let seq = self.0.seq.fetch_add(1, Ordering::Relaxed) & 0xff_ffff_ffff;
        format!("{time_ms:016}-{}-{seq:010x}", self.0.head)
    }

    fn queue(&self, p: Pending) {
        if self.0.tx.try_send(p).is_err() {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records a cluster event.
    pub fn record(&self, kind: EventKind, subject: impl Into<String>, message: impl Into<String>) {
        self.queue(Pending::One(Event {
            id: String::new(),
            time_ms: now_ms(),
            head: self.0.head.clone(),
            kind,
            subject: subject.into(),
            message: message.into(),
            actor: None,
            from: None,
            outcome: None,
        }))
    }

    /// Records an admin action.
    pub fn admin(&self, actor: String, from: String, subject: String, message: String, outcome: String) {
        self.queue(Pending::One(Event {
            id: String::new(),
            time_ms: now_ms(),
            head: self.0.head.clone(),
            kind: EventKind::Admin,
            subject,
            message,
            actor: Some(actor),
            from: Some(from),
            outcome: Some(outcome),
        }))
    }

    /// Records what a node did (joined with what other nodes did alike into one event).
    pub fn node(&self, name: &str, change: NodeChange) {
        self.queue(Pending::Node { name: name.to_string(), change, time_ms: now_ms() })
    }

    /// The events `q` selects.
    pub fn list(&self, q: &EventQuery) -> EventList {
        let log = self.0.log.read().unwrap_or_else(|p| p.into_inner());
        let limit = q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let keep = |e: &Event| q.kind.is_none_or(|k| e.kind == k) && q.since_ms.is_none_or(|s| e.time_ms >= s);
        let settled = now_ms().saturating_sub(SETTLE_MS);
        let events: Vec<Event> = match &q.after {
            Some(after) => log
                .range::<str, _>((std::ops::Bound::Excluded(after.as_str()), std::ops::Bound::Unbounded))
                .map(|(_, e)| e)
                .take_while(|e| time_of(&e.id).is_some_and(|t| t <= settled))
                .filter(|e| keep(e))
                .take(limit)
                .map(|e| (**e).clone())
                .collect(),
            None => {
                let mut v: Vec<Event> =
                    log.values().rev().filter(|e| keep(e)).take(limit).map(|e| (**e).clone()).collect();
                v.reverse();
                v
            }
        };
        // Where a long poll goes on from: past what it answered; for a listing, from what has
        // settled (a follower skips the events of the listing it has shown).
        let next = match &q.after {
            Some(a) => events.last().map_or_else(|| a.clone(), |e| e.id.clone()),
            None => format!("{settled:016}"),
        };
        let next = Some(next);
        EventList { events, next, total: log.len() }
    }

    /// [`EventLog::list`], waiting up to `wait` for an event after `q.after` when there is none.
    pub async fn wait(&self, q: &EventQuery, wait: Duration) -> ApiResult<EventList> {
        let mut rx = self.0.changed.subscribe();
        let first = self.list(q);
        if !first.events.is_empty() || wait.is_zero() || q.after.is_none() {
            return Ok(first);
        }
        /// Gives a long poll's place back however it ends (a client that went away included).
        struct Place<'a>(&'a AtomicUsize);
        impl Drop for Place<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let place = Place(&self.0.waiters);
        if self.0.waiters.fetch_add(1, Ordering::AcqRel) >= MAX_WAITERS {
            return Err(ApiFailure::new(
                ErrorKind::Unavailable,
                format!("this head holds {MAX_WAITERS} event long polls already; try again later or ask another head"),
            ));
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut stop = self.0.stop.clone();
        let out = loop {
            // A new event, or one that settled; a head stopping answers at once.
            let tick = (tokio::time::Instant::now() + Duration::from_millis(250)).min(deadline);
            tokio::select! {
                _ = tokio::time::timeout_at(tick, rx.changed()) => {}
                _ = stop.wait_for(|s| *s) => break self.list(q),
            }
            let l = self.list(q);
            if tokio::time::Instant::now() >= deadline || !l.events.is_empty() {
                break l;
            }
        };
        drop(place);
        Ok(out)
    }
}

/// Turns what is queued into events: node changes that say the same thing become one event.
/// Ids are given here, in the order of writing, from the time the batch is written (`now`).
fn gather(batch: Vec<Pending>, log: &EventLog, now: u64) -> Vec<Event> {
    let mut out = Vec::new();
    let mut nodes: Vec<(NodeChange, u64, Vec<String>)> = Vec::new();
    let mut at: HashMap<NodeChange, usize> = HashMap::new();
    for p in batch {
        match p {
            Pending::One(mut e) => {
                e.id = log.next_id(now);
                out.push(e)
            }
            Pending::Node { name, change, time_ms } => match at.get(&change) {
                Some(&i) => nodes[i].2.push(name),
                None => {
                    at.insert(change.clone(), nodes.len());
                    nodes.push((change, time_ms, vec![name]));
                }
            },
        }
    }
    for (change, time_ms, mut names) in nodes {
        names.sort();
        names.dedup();
        out.push(Event {
            id: log.next_id(now),
            time_ms,
            head: log.0.head.clone(),
            kind: EventKind::Node,
            subject: clusterware_shared::select::compress(names.iter().map(String::as_str)),
            message: change.message(names.len()),
            actor: None,
            from: None,
            outcome: None,
        });
    }
    out
}

async fn writer_loop(
    db: Database,
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<Pending>,
    retention: Retention,
    mut stop: watch::Receiver<bool>,
) {
    let log = EventLog(inner);
    let complaints = crate::core::complaints::Complaints::default();
    let mut prune_due = tokio::time::Instant::now();
    // Events a failed write left, tried again with the next batch (new ids: of that writing).
    let mut carried: Vec<Event> = Vec::new();
    loop {
        let mut batch = Vec::new();
        let retry = if carried.is_empty() { prune_due } else { tokio::time::Instant::now() + Duration::from_secs(1) };
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, 512) => n == 0,
            _ = stop.wait_for(|s| *s) => true,
            () = tokio::time::sleep_until(retry.min(prune_due)) => false,
        };
        if !stopping && !batch.is_empty() {
            tokio::time::sleep(BATCH).await;
        }
        while batch.len() < QUEUE {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let now = now_ms();
        let mut events: Vec<Event> = std::mem::take(&mut carried)
            .into_iter()
            .map(|mut e| {
                e.id = log.next_id(now);
                e
            })
            .collect();
        events.extend(gather(batch, &log, now));
        let dropped = log.0.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(dropped, "events were left out of the event log: more came than the database took");
            events.push(Event {
                id: log.next_id(now),
                time_ms: now,
                head: log.0.head.clone(),
                kind: EventKind::Head,
                subject: log.0.head.clone(),
                message: format!(
                    "{dropped} event{} left out of the log: more came than this head could write to the database",
                    if dropped == 1 { " was" } else { "s were" }
                ),
                actor: None,
                from: None,
                outcome: None,
            });
        }
        let wrote = !events.is_empty();
        let mut chunks = events.chunks(db.max_txn_ops().max(1));
        for chunk in chunks.by_ref() {
            let ops = chunk
                .iter()
                .map(|e| TxnOp::put(schema::event(&e.id), serde_json::to_vec(e).expect("events serialise")));
            if let Err(e) = db.txn(Txn::new().and_then(ops)).await {
                complaints.complain(
                    "write".into(),
                    || tracing::warn!(error = %e, "cannot write to the event log; trying again (logged once a minute)"),
                );
                // This chunk and the rest wait for the next round, up to the queue's bound.
                carried.extend_from_slice(chunk);
                break;
            }
        }
        for chunk in chunks {
            carried.extend_from_slice(chunk);
        }
        if carried.len() > QUEUE {
            let over = carried.len() - QUEUE;
            carried.drain(..over);
            log.0.dropped.fetch_add(over as u64, Ordering::Relaxed);
        }
        if stopping && !carried.is_empty() {
            tracing::warn!(events = carried.len(), "stopping with events the database did not take");
        }
        // Pruning reads the followed copy, which has what was just written a moment later.
        if wrote {
            prune_due = prune_due.min(tokio::time::Instant::now() + Duration::from_secs(1));
        }
        if tokio::time::Instant::now() >= prune_due {
            prune(&db, &log, retention, &complaints).await;
            prune_due = tokio::time::Instant::now() + Duration::from_secs(60);
        }
        if stopping {
            return;
        }
    }
}

/// Deletes the events beyond the retention (oldest first).
async fn prune(db: &Database, log: &EventLog, r: Retention, complaints: &crate::core::complaints::Complaints) {
    let old: Vec<String> = {
        let map = log.0.log.read().unwrap_or_else(|p| p.into_inner());
        let over = map.len().saturating_sub(r.keep);
        let cutoff = now_ms().saturating_sub(r.keep_secs.saturating_mul(1000));
        map.keys()
            .enumerate()
            .take_while(|(i, k)| *i < over || time_of(k).is_some_and(|t| t < cutoff))
            .map(|(_, k)| k.clone())
            .collect()
    };
    for chunk in old.chunks(db.max_txn_ops().max(1)) {
        let ops = chunk.iter().map(|k| TxnOp::delete(schema::event(k)));
        if let Err(e) = db.txn(Txn::new().and_then(ops)).await {
            complaints.complain(
                "prune".into(),
                || tracing::warn!(error = %e, "cannot delete old events (logged once a minute)"),
            );
            return;
        }
    }
}

/// Parses the query of `GET /events`.
pub fn parse_query(q: Option<&str>) -> ApiResult<EventQuery> {
    let mut out = EventQuery::default();
    for (k, v) in query_pairs(q)? {
        let num = |what: &str| {
            v.parse::<u64>().map_err(|_| ApiFailure::bad_request(format!("{what}={v:?} is not a whole number")))
        };
        match k.as_str() {
            "since" => out.since_ms = Some(num("since")?),
            "after" => {
                if v.len() > 128 {
                    return Err(ApiFailure::bad_request("after= is longer than an event id"));
                }
                out.after = Some(v)
            }
            "limit" => {
                let n = num("limit")?;
                if n == 0 || n > MAX_LIMIT as u64 {
                    return Err(ApiFailure::bad_request(format!("limit={n}: give 1 to {MAX_LIMIT}")));
                }
                out.limit = Some(n as usize)
            }
            "wait" => out.wait_secs = Some(num("wait")?.min(MAX_WAIT_SECS)),
            "kind" => out.kind = Some(v.parse().map_err(ApiFailure::bad_request)?),
            other => {
                return Err(ApiFailure::bad_request(format!(
                    "unknown query parameter {other:?} (since, after, limit, wait, kind)"
                )));
            }
        }
    }
    Ok(out)
}

/// `GET /events` (an admin route).
pub fn routes(log: EventLog) -> Routes {
    use axum::extract::{RawQuery, State};
    use clusterware_shared::api::path;
    async fn ls(State(log): State<EventLog>, RawQuery(q): RawQuery) -> ApiResult<Response> {
        let q = parse_query(q.as_deref())?;
        let wait = Duration::from_secs(q.wait_secs.unwrap_or(0));
        Ok(json(StatusCode::OK, &log.wait(&q, wait).await?))
    }
    Routes {
        admin: axum::Router::new().route(path::EVENTS, axum::routing::get(ls)).with_state(log),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        let q = parse_query(Some("since=5&after=x&limit=3&wait=999&kind=node")).unwrap();
        assert_eq!(q.since_ms, Some(5));
        assert_eq!(q.after.as_deref(), Some("x"));
        assert_eq!(q.limit, Some(3));
        assert_eq!(q.wait_secs, Some(MAX_WAIT_SECS));
        assert_eq!(q.kind, Some(EventKind::Node));
        for bad in ["since=-1", "limit=0", "limit=10001", "kind=nodes", "frobnicate=1", "wait=x"] {
            assert_eq!(parse_query(Some(bad)).unwrap_err().kind, ErrorKind::BadRequest, "{bad}");
        }
        // The client's query parses back to what it said.
        let q = EventQuery {
            since_ms: Some(7),
            after: Some("0000000000000001-h1-0000000001".into()),
            limit: Some(9),
            wait_secs: Some(3),
            kind: Some(EventKind::Admin),
        };
        let p = clusterware_shared::api::path::events(&q);
        assert_eq!(parse_query(p.split_once('?').map(|x| x.1)).unwrap(), q);
    }

    /// A log of head `h1` with no follower and no writer (what is queued goes nowhere).
    fn unstarted(stop: watch::Receiver<bool>) -> EventLog {
        EventLog(Arc::new(Inner {
            head: "h1".into(),
            tx: mpsc::channel(4).0,
            dropped: AtomicU64::new(0),
            seq: AtomicU64::new(0),
            log: RwLock::default(),
            changed: watch::channel(0).0,
            waiters: AtomicUsize::new(0),
            stop,
        }))
    }

    /// A long poll gives its place back when its client goes away, and a stopping head ends it.
    #[tokio::test]
    async fn long_polls_give_their_place_back_and_end_with_the_head() {
        let (stop_tx, stop) = watch::channel(false);
        let log = unstarted(stop);
        let q = EventQuery { after: Some("0".into()), ..Default::default() };
        for _ in 0..3 * MAX_WAITERS {
            let gone = tokio::time::timeout(Duration::from_millis(1), log.wait(&q, Duration::from_secs(50))).await;
            assert!(gone.is_err(), "no event: still waiting when its client went away");
        }
        assert_eq!(log.0.waiters.load(Ordering::Acquire), 0);
        let l2 = log.clone();
        let q2 = q.clone();
        let waiting = tokio::spawn(async move { l2.wait(&q2, Duration::from_secs(50)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop_tx.send_replace(true);
        let answered = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        assert!(answered.is_ok_and(|r| r.unwrap().is_ok_and(|l| l.events.is_empty())), "answered at the stop");
        assert_eq!(log.0.waiters.load(Ordering::Acquire), 0);
    }

    #[test]
    fn node_changes_of_a_batch_become_one_event_each() {
        let log = unstarted(watch::channel(false).1);
        let mut batch: Vec<Pending> =
            (0..100).map(|i| Pending::Node { name: format!("n{i}"), change: NodeChange::Up, time_ms: 1 }).collect();
        batch.push(Pending::Node { name: "n5".into(), change: NodeChange::Down, time_ms: 2 });
        batch.push(Pending::Node {
            name: "n7".into(),
            change: NodeChange::Reparented { from: "h2".into() },
            time_ms: 3,
        });
        let ev = gather(batch, &log, 9);
        let said: Vec<(&str, &str)> = ev.iter().map(|e| (e.subject.as_str(), e.message.as_str())).collect();
        assert_eq!(
            said,
            [
                ("n[0-99]", "100 nodes are up"),
                ("n5", "node is down (no status)"),
                ("n7", "node changed parent from h2 to this head")
            ]
        );
        assert!(ev.windows(2).all(|w| w[0].id < w[1].id), "ids follow time order");
        assert_eq!(time_of(&ev[2].id), Some(9), "ids are of the time of writing");
        assert_eq!(ev[2].time_ms, 3, "times are of the event");
    }
}
