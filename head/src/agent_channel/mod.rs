//! Node status and the agent channel.
//!
//! A node's agent pushes status to its parent head; the parent keeps what it learns in memory
//! (the [`Hub`]'s children) and writes `status/<uid>` = {state, parent, last seen, boot id} only
//! when one of those changes (last seen: at most every [`REFRESH_SECS`]), in batched
//! transactions, never once per push. Every head follows `status/`, so any head can show any
//! node's state; when a record's parent is no longer alive, the state is computed from the
//! record's age.
//!
//! A head writes a record only while it is the node's parent: a node arriving from another head
//! is claimed by an unconditional write, and every later write is conditional on the record not
//! having changed since, so a former parent cannot mark down a node that moved on.
//!
//! Scripts (`fetch_hosts`, `update_keys`) travel as `commands/<uid>/<id>` records under a lease:
//! the head an administrator asked writes them; the node's parent (which follows `commands/`)
//! hands them to the agent's long poll at once; the agent posts the outcome to its parent, which
//! writes it into the record; the asking head sees it through its own follow.

pub mod routes;

pub mod keys;

use crate::core::complaints::Complaints;
use crate::core::db::{Compare, Database, DbError, KeyValue, LeaseId, Txn, TxnOp};
use crate::core::events::NodeChange;
use crate::core::follow::{Change, Mirror, follow};
use crate::core::peers::Peers;
use crate::core::schema;
use crate::core::schema::{COMMANDS, CommandRecord, CommandResult, HeadRecord, KEYS, STATUS, StatusRecord};
use crate::core::supervisor::{Stage, Supervisor};
use crate::core::view::ClusterView;

use crate::core::http::ClientCert;
use crate::core::unix_now;
use crate::registry::cache::NodeCache;
use crate::registry::identity::Identity;
use crate::registry::refs;
use clusterware_shared::agent::{
    Command, DEFAULT_STATUS_SECS, Directives, Hardware, HeadEntry, MAX_WAIT_SECS, MISSED_INTERVALS, NodeOutcome,
    NodeState, NodeStatus, Outcome, Phase, STATUS_SECS_RANGE, Script, ScriptOutcome, SshKey, StatusReport,
    parse_key_list,
};
use clusterware_shared::api::Node;
use clusterware_shared::ids::MacAddr;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, broadcast, watch};

/// A parent rewrites an up node's record at least this often, so that other heads can tell a
/// node whose parent died from one that is still fine.
pub const REFRESH_SECS: u64 = 30;
/// How long a network-booting node may stay silent before it counts as down.
pub const BOOT_GRACE_SECS: u64 = 300;
/// Largest number of records one status transaction writes.
const FLUSH_CHUNK: usize = 1000;

/// Why a node's request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    WrongAddress(String),
    #[error("{0}")]
    NotChild(String),
}

impl crate::core::http::HasKind for AgentError {
    fn kind(&self) -> clusterware_shared::api::ErrorKind {
        use clusterware_shared::api::ErrorKind;
        match self {
            AgentError::Invalid(_) => ErrorKind::BadRequest,
            AgentError::Unknown(_) => ErrorKind::NotFound,
            AgentError::WrongAddress(_) => ErrorKind::Forbidden,
            AgentError::NotChild(_) => ErrorKind::Conflict,
        }
    }
}

/// Who makes a node request: its address, and the certificate it presented over TLS.
#[derive(Debug, Clone)]
pub struct Caller {
    pub ip: IpAddr,
    pub cert: Option<ClientCert>,
}

impl From<IpAddr> for Caller {
    fn from(ip: IpAddr) -> Caller {
        Caller { ip, cert: None }
    }
}

/// What the parent knows about a node that reports to it.
struct Child {
    uid: String,
    name: String,
    mac: MacAddr,
    state: NodeState,
    boot_id: String,
    last_seen: Instant,
    last_seen_unix: u64,
    status_secs: u32,
    report: Option<Arc<StatusReport>>,
    hardware: Option<Hardware>,
    agent_version: Option<String>,
    pending: Vec<Command>,
    /// A parent switch to hand over (rebalancing).
    switch: Option<HeadEntry>,
    /// Already told to go to its preferred head (logged once).
    preferred_told: bool,
    /// Told to go to another head because this one stops ([`Hub::hand_over`]).
    handed: bool,
    /// Took a switch to another head (rebalancing, its preferred head, a hand-over) and has not
    /// pushed here since: on its way out, not waited for by a hand-over.
    leaving: bool,
    /// Its boot script was served by this head and "Booting node" logged.
    pxe_booted: bool,
    notify: Arc<Notify>,
    /// Bumped by every change the database must see.
    generation: u64,
    /// The generation last written, and the record's revision after that write.
    written_generation: u64,
    written_rev: Option<i64>,
    written_seen: u64,
    /// The next write claims the node (unconditional).
    claim: bool,
}

impl Child {
    fn new(node: &Node, mac: MacAddr, state: NodeState, status_secs: u32) -> Child {
        Child {
            uid: node.uid.clone(),
            name: node.name.clone(),
            mac,
            state,
            boot_id: String::new(),
            last_seen: Instant::now(),
            last_seen_unix: unix_now(),
            status_secs,
            report: None,
            hardware: None,
            agent_version: None,
            pending: Vec::new(),
            switch: None,
            preferred_told: false,
            handed: false,
            leaving: false,
            pxe_booted: false,
            notify: Arc::new(Notify::new()),
            generation: 1,
            written_generation: 0,
            written_rev: None,
            written_seen: 0,
            claim: true,
        }
    }

    fn dirty(&self) -> bool {
        self.generation != self.written_generation
    }
    fn touch(&mut self) {
        self.generation += 1;
    }
    fn record(&self, me: &str) -> StatusRecord {
        StatusRecord {
            state: self.state,
            parent: me.to_string(),
            last_seen: self.last_seen_unix,
            boot_id: self.boot_id.clone(),
            status_secs: self.status_secs,
            hardware: self.hardware.clone(),
            agent_version: self.agent_version.clone(),
        }
    }
}

/// Counters for `GET /api/v1/nodes/counters` (inspection and benchmarks).
#[derive(Default)]
pub struct HubCounters {
    pub pushes: AtomicU64,
    pub rejected: AtomicU64,
    pub status_writes: AtomicU64,
    pub status_txns: AtomicU64,
    /// Switch-parent directives handed to agents.
    pub switches: AtomicU64,
}

pub struct Hub {
    pub(crate) db: Database,
    pub nodes: Arc<NodeCache>,
    /// Node certificates (none in unit tests: the address alone is checked there).
    identity: Option<Arc<Identity>>,
    children: Mutex<HashMap<String, Child>>,
    /// Every `status/` record with its revision.
    records: RwLock<HashMap<String, (Arc<StatusRecord>, i64)>>,
    /// Counts the changes to `records` (the console's live updates follow it).
    status_changes: watch::Sender<u64>,
    /// Open commands (no result yet) by (uid, id).
    open: Mutex<HashMap<(String, String), CommandRecord>>,
    /// Outcomes written by parents: (uid, id, result).
    results: broadcast::Sender<(String, String, CommandResult)>,
    /// Outcomes from agents waiting to be written.
    outbox: Mutex<Vec<(CommandRecord, CommandResult)>>,
    /// The cluster's heads and their liveness.
    pub view: Arc<ClusterView>,
    pub keys: Arc<Mirror<SshKey>>,
    complaints: Complaints,
    pub counters: HubCounters,
    stop: watch::Receiver<bool>,
    /// Set by [`Hub::hand_over`]: every node that reports here is sent on to another head.
    stopping: AtomicBool,
    /// Other heads (node reports of the nodes they parent).
    peers: Peers,
    /// Where nodes coming up, going down and changing parent are recorded (set at start).
    events: std::sync::OnceLock<crate::core::events::EventLog>,
}

fn status_secs_of(node: &Node) -> (u32, Option<String>) {
    match node.attributes.get("_status_secs") {
        None => (DEFAULT_STATUS_SECS, None),
        Some(v) => match v.parse::<u32>() {
            Ok(s) if STATUS_SECS_RANGE.contains(&s) => (s, None),
            _ => (
                DEFAULT_STATUS_SECS,
                Some(format!(
                    "_status_secs={v:?} is not a number of seconds from {} to {}; using {DEFAULT_STATUS_SECS}",
                    STATUS_SECS_RANGE.start(),
                    STATUS_SECS_RANGE.end()
                )),
            ),
        },
    }
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, String> {
    serde_json::from_slice(&kv.value).map_err(|e| e.to_string())
}

fn outcome_of(names: &HashMap<&str, &str>, uid: String, res: CommandResult) -> NodeOutcome {
    NodeOutcome {
        name: names.get(uid.as_str()).map(|s| s.to_string()).unwrap_or_default(),
        uid,
        outcome: if res.ok { Outcome::Ok } else { Outcome::Failed },
        message: res.message,
    }
}

/// The log lines for nodes found silent at once, as (name, MAC, seconds silent): a few one by
/// one; many (a head that was stopped and resumed, a switch that failed) in one line.
fn silent_lines(mut down: Vec<(String, String, u64)>) -> Vec<String> {
    const ONE_BY_ONE: usize = 5;
    if down.len() <= ONE_BY_ONE {
        return down
            .iter()
            .map(|(node, mac, secs)| {
                format!(
                    "node is down: no status for {MISSED_INTERVALS} intervals (node {node}, mac {mac}, silent {secs} s)"
                )
            })
            .collect();
    }
    down.sort();
    let first: Vec<&str> = down.iter().take(ONE_BY_ONE).map(|d| d.0.as_str()).collect();
    vec![format!(
        "{} nodes are down: no status for {MISSED_INTERVALS} intervals (first: {}, …)",
        down.len(),
        first.join(", ")
    )]
}

/// A node's state from its parent's record: `down` when that parent is no longer alive and the
/// record is older than [`MISSED_INTERVALS`] status intervals.
fn record_state(r: &StatusRecord, alive: &HashSet<String>, now: u64) -> NodeState {
    let stale = now.saturating_sub(r.last_seen) > (r.status_secs * MISSED_INTERVALS) as u64;
    if !alive.contains(&r.parent) && stale && r.state != NodeState::Down { NodeState::Down } else { r.state }
}

impl Hub {
    /// Starts following nodes, status, commands, heads and keys, and the loops that write
    /// status and detect silent nodes.
    pub fn spawn(
        db: Database,
        view: Arc<ClusterView>,
        nodes: Arc<NodeCache>,
        token: String,
        identity: Option<Arc<Identity>>,
        sup: &Supervisor,
    ) -> Arc<Hub> {
        let hub = Arc::new(Hub {
            nodes,
            identity,
            keys: Mirror::spawn(db.clone(), KEYS, sup),
            view,
            db: db.clone(),
            children: Mutex::new(HashMap::new()),
            records: RwLock::new(HashMap::new()),
            status_changes: watch::channel(0).0,
            open: Mutex::new(HashMap::new()),
            results: broadcast::channel(1 << 16).0,
            outbox: Mutex::new(Vec::new()),
            complaints: Complaints::default(),
            counters: HubCounters::default(),
            stop: sup.stop_signal(Stage::Serve),
            stopping: AtomicBool::new(false),
            peers: Peers::new(Some(&token), crate::core::peers::timeouts(5)),
            events: std::sync::OnceLock::new(),
        });
        let h = hub.clone();
        sup.spawn(Stage::Views, "status follow", move |stop| {
            follow(db.clone(), STATUS, move |c| h.apply_status(c), stop)
        });
        let h = hub.clone();
        let d = hub.db.clone();
        sup.spawn(Stage::Views, "commands follow", move |stop| follow(d, COMMANDS, move |c| h.apply_command(c), stop));
        let h = hub.clone();
        let d = hub.db.clone();
        sup.spawn(Stage::Views, "moves follow", move |stop| follow(d, schema::MOVES, move |c| h.apply_move(c), stop));
        let h = hub.clone();
        sup.spawn(Stage::Flush, "status writer", move |stop| h.writer(stop));
        hub
    }

    /// The node a request is about, checked against the address it came from.
    pub fn authenticate(&self, mac: &MacAddr, who: impl Into<Caller>) -> Result<Arc<Node>, AgentError> {
        let who = who.into();
        let peer = who.ip;
        let Some(node) = self.nodes.by_mac(mac) else {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            self.complaints.complain(
                format!("mac {mac}"),
                || tracing::warn!(%mac, %peer, "request from an unknown MAC refused (logged once a minute per MAC)"),
            );
            return Err(AgentError::Unknown(format!("no node has MAC {mac}")));
        };
        if peer != IpAddr::V4(node.ip) {
            self.counters.rejected.fetch_add(1, Ordering::Relaxed);
            self.complaints.complain(format!("addr {mac} {peer}"), || {
                tracing::warn!(node = %node.name, %mac, %peer, registered = %node.ip, "request for a node from an address that is not the node's refused")
            });
            return Err(AgentError::WrongAddress(format!(
                "{} ({mac}) reports from {}; this head accepts it only from the node's address {}",
                node.name, peer, node.ip
            )));
        }
        if let Some(id) = &self.identity {
            if let Err(e) = id.check(&node, who.cert.as_ref()) {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                self.complaints.complain(format!("cert {mac}"), || {
                    tracing::warn!(node = %node.name, %mac, %peer, "request without the node's current certificate refused (logged once a minute per MAC)")
                });
                return Err(AgentError::WrongAddress(e.to_string()));
            }
        }
        Ok(node)
    }

    /// Absorbs a status push; answers the node's directives.
    pub fn push(&self, who: impl Into<Caller>, report: StatusReport) -> Result<Directives, AgentError> {
        report.validate().map_err(AgentError::Invalid)?;
        let node = self.authenticate(&report.mac, who)?;
        let (secs, _) = status_secs_of(&node);
        let state = match report.phase {
            Phase::Booting => NodeState::Booting,
            Phase::Up => NodeState::Up,
        };
        let now_unix = unix_now();
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = !children.contains_key(&node.uid);
        let child = children.entry(node.uid.clone()).or_insert_with(|| Child::new(&node, report.mac, state, secs));
        let events = self.events.get();
        if fresh {
            let previous = self.records.read().unwrap_or_else(|p| p.into_inner()).get(&node.uid).map(|r| r.0.clone());
            match &previous {
                Some(p) if p.parent != self.view.me.name && p.boot_id == report.boot_id => {
                    tracing::info!(node = %node.name, mac = %report.mac, from = %p.parent, "node changed parent to this head");
                    if let Some(ev) = events {
                        ev.node(&node.name, NodeChange::Reparented { from: p.parent.clone() });
                    }
                }
                // Up and parented here already before this head restarted: nothing happened.
                Some(p) if p.boot_id == report.boot_id && p.state == NodeState::Up => {}
                _ if state == NodeState::Up => {
                    if let Some(ev) = events {
                        ev.node(&node.name, NodeChange::Up);
                    }
                }
                _ => {}
            }
            if previous.as_ref().is_some_and(|p| p.boot_id == report.boot_id) {
                child.boot_id = report.boot_id.clone();
                child.agent_version = previous.as_ref().and_then(|p| p.agent_version.clone());
                child.hardware = previous.and_then(|p| p.hardware.clone());
            }
            // Commands issued before the node arrived here.
            let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            for ((uid, _), c) in open.iter() {
                if *uid == node.uid {
                    child.pending.push(Command { id: c.id.clone(), script: c.script });
                }
            }
        }
        if child.boot_id != report.boot_id {
            if !std::mem::take(&mut child.pxe_booted) {
                tracing::info!(node = %node.name, mac = %report.mac, boot_id = %report.boot_id, phase = %report.phase, "Booting node {} ({})", node.name, report.mac);
            }
            child.boot_id = report.boot_id.clone();
            child.hardware = None;
            child.touch();
        }
        if child.agent_version.as_deref() != Some(report.agent_version.as_str()) {
            if let Some(p) = clusterware_shared::release::agent_problem(&report.agent_version) {
                self.complaints.complain(
                    format!("agent {}", node.uid),
                    || tracing::warn!(node = %node.name, "node {}: {p} (logged once a minute per node)", node.name),
                );
            }
            child.agent_version = Some(report.agent_version.clone());
            child.touch();
        }
        if let Some(hw) = &report.hardware {
            if child.hardware.as_ref() != Some(hw) {
                child.hardware = Some(hw.clone());
                child.touch();
            }
        }
        if child.state != state {
            if child.state == NodeState::Down {
                tracing::info!(node = %node.name, "node is reporting again");
            }
            if state == NodeState::Up
                && let Some(ev) = events
            {
                ev.node(&node.name, NodeChange::Up);
            }
            child.state = state;
            child.touch();
        }
        if child.status_secs != secs {
            child.status_secs = secs;
            child.touch();
        }
        child.name.clone_from(&node.name);
        child.mac = report.mac;
        child.last_seen = Instant::now();
        child.last_seen_unix = now_unix;
        if now_unix.saturating_sub(child.written_seen) >= REFRESH_SECS {
            child.touch();
        }
        child.report = Some(Arc::new(report));
        let commands = std::mem::take(&mut child.pending);
        let mut switch_parent = child.switch.take();
        // A node whose preferred head takes nodes (and is not this one) goes there.
        if let Some(pref) = self.view.preferred_head(&node) {
            if pref != self.view.me.name && self.view.takes_nodes(&pref) {
                if let Some(h) = self.view.heads.get(&pref) {
                    if !child.preferred_told {
                        tracing::info!(node = %node.name, to = %pref, "directing node to its preferred head");
                        child.preferred_told = true;
                    }
                    switch_parent = Some(HeadEntry { name: h.name.clone(), url: h.api_url.clone() });
                }
            }
        }
        // This head stops: a node that arrives now (sent by a head that had not seen it
        // stopping, or failing over to it) goes on at once, as the ones it parented did.
        if switch_parent.is_none() && self.stopping.load(Ordering::Relaxed) {
            switch_parent = self.next_head(&child.mac);
            child.handed |= switch_parent.is_some();
        }
        child.leaving = switch_parent.is_some();
        if switch_parent.is_some() {
            self.counters.switches.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.pushes.fetch_add(1, Ordering::Relaxed);
        Ok(Directives { status_secs: Some(secs), commands, switch_parent })
    }

    /// The node is network-booting from this head (its boot script was served): this head is its
    /// parent, the node is `booting`.
    pub fn booting(&self, node: &Node, mac: &MacAddr) {
        tracing::info!(node = %node.name, %mac, "Booting node {} ({})", node.name, mac);
        let (secs, _) = status_secs_of(node);
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let child =
            children.entry(node.uid.clone()).or_insert_with(|| Child::new(node, *mac, NodeState::Booting, secs));
        child.state = NodeState::Booting;
        child.report = None;
        child.hardware = None;
        child.agent_version = None;
        child.pxe_booted = true;
        child.last_seen = Instant::now();
        child.last_seen_unix = unix_now();
        child.touch();
    }

    /// The next head, in the node's own order of heads, that takes nodes (alive, not stopping).
    fn next_head(&self, mac: &MacAddr) -> Option<HeadEntry> {
        let taking = self.view.taking_nodes();
        self.view.heads_for(mac).into_iter().skip(1).find(|h| taking.contains(&h.name))
    }

    /// Before this head stops: every node it parents that runs its agent is told to go to
    /// another head that takes nodes (the next in the node's own order of heads), through its
    /// long poll or its next push, so that no push of it fails and it is never shown down.
    ///
    /// The caller has the liveness record say that this head stops (`heads::keep_alive`); this
    /// waits up to a second to see it, so that the other heads' rebalancing does not send nodes
    /// back here meanwhile. A node that still arrives is sent on at once. Nodes already on their
    /// way to another head are not waited for. Waits until each told node took the directive or
    /// `within` passed. Nothing to do when no other head takes nodes. Returns (told, moved).
    pub async fn hand_over(&self, within: Duration) -> (usize, usize) {
        let me = self.view.me.name.clone();
        let deadline = tokio::time::Instant::now() + within;
        self.stopping.store(true, Ordering::Relaxed);
        let mut changes = self.view.alive.changes();
        let seen = async { while !self.view.stopping(&me) && changes.changed().await.is_ok() {} };
        let _ = tokio::time::timeout(Duration::from_secs(1).min(within), seen).await;
        if !self.view.taking_nodes().iter().any(|n| *n != me) {
            return (0, 0);
        }
        let told = {
            let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
            let mut told = 0;
            for ch in children.values_mut() {
                if ch.report.is_none() || ch.state == NodeState::Down || ch.leaving {
                    continue;
                }
                if let Some(to) = self.next_head(&ch.mac) {
                    ch.switch = Some(to);
                    ch.handed = true;
                    ch.notify.notify_one();
                    told += 1;
                }
            }
            told
        };
        loop {
            let waiting = {
                let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                children.values().filter(|c| c.handed && c.switch.is_some()).count()
            };
            if waiting == 0 || tokio::time::Instant::now() >= deadline {
                if waiting > 0 {
                    tracing::warn!(
                        waiting,
                        "nodes did not take the hand-over in time; they fail over when this head stops"
                    );
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Those that took it: their last status here is written once more (fresh, so that none
        // looks stale while its new parent claims it; conditional as every write, so it never
        // overwrites the new parent's claim); one never written here is let go unwritten.
        let moved = {
            let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
            let before = children.len();
            children.retain(|_, c| !(c.handed && c.switch.is_none() && c.claim));
            let mut moved = before - children.len();
            for c in children.values_mut().filter(|c| c.handed && c.switch.is_none()) {
                c.touch();
                moved += 1;
            }
            moved
        };
        tracing::info!(told, moved, "nodes handed over to the other heads before this head stops");
        (told, moved)
    }

    /// The long poll: answers as soon as there is a directive for the node, or after `secs`.
    pub async fn wait(&self, who: impl Into<Caller>, mac: &MacAddr, secs: u32) -> Result<Directives, AgentError> {
        let node = self.authenticate(mac, who)?;
        let secs = secs.clamp(1, MAX_WAIT_SECS);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs as u64);
        let mut stop = self.stop.clone();
        loop {
            let notify = {
                let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                let Some(child) = children.get_mut(&node.uid) else {
                    return Err(AgentError::NotChild(format!(
                        "{} has not pushed status to this head; push first",
                        node.name
                    )));
                };
                if !child.pending.is_empty() || child.switch.is_some() {
                    let commands = std::mem::take(&mut child.pending);
                    let switch_parent = child.switch.take();
                    if switch_parent.is_some() {
                        child.leaving = true;
                        self.counters.switches.fetch_add(1, Ordering::Relaxed);
                    }
                    return Ok(Directives { status_secs: Some(child.status_secs), commands, switch_parent });
                }
                child.notify.clone()
            };
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(Directives::default()),
                // A head shutting down ends its long polls, so agents move on at once.
                _ = stop.wait_for(|s| *s) => return Ok(Directives::default()),
            }
        }
    }

    /// An agent's outcome of a script.
    pub fn outcome(&self, who: impl Into<Caller>, o: ScriptOutcome) -> Result<(), AgentError> {
        let node = self.authenticate(&o.mac, who)?;
        if o.message.len() > 4096 {
            return Err(AgentError::Invalid("message longer than 4096 bytes".into()));
        }
        let rec = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(&(node.uid.clone(), o.id.clone())).cloned();
        let Some(rec) = rec else {
            // Expired or already answered: nothing waits for it any more.
            return Err(AgentError::Unknown(format!("no open command {} for {}", o.id, node.name)));
        };
        let res = CommandResult { ok: o.ok, message: o.message, head: self.view.me.name.clone() };
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).push((rec, res));
        Ok(())
    }

    /// Keys for root's `authorized_keys` on a node: every head's root keys, the cluster keys,
    /// then the node's own `_ssh_keys`.
    pub fn keys_for(&self, node: &Node) -> Vec<String> {
        // One entry per key material (type and blob); the first comment wins.
        let material = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        let mut v: Vec<String> = Vec::new();
        let mut push = |k: &str| {
            if !v.iter().any(|x| material(x) == material(k)) {
                v.push(k.to_string());
            }
        };
        for h in self.view.heads.values() {
            h.ssh_keys.iter().for_each(|k| push(k));
        }
        for k in self.keys.values() {
            push(&k.key);
        }
        if let Some(extra) = node.attributes.get("_ssh_keys") {
            match parse_key_list(extra) {
                Ok(ks) => ks.iter().for_each(|k| push(k)),
                Err(e) => tracing::warn!(node = %node.name, error = %e, "ignoring the node's _ssh_keys"),
            }
        }
        v
    }

    /// A receiver that sees a new value after every change to the nodes' status records.
    pub fn status_changes(&self) -> watch::Receiver<u64> {
        self.status_changes.subscribe()
    }

    fn apply_status(&self, c: Change) {
        let mut recs = self.records.write().unwrap_or_else(|p| p.into_inner());
        let mut changed: Vec<(String, Arc<StatusRecord>, i64)> = Vec::new();
        match c {
            Change::Reset(kvs) => {
                recs.clear();
                for kv in kvs {
                    match decode::<StatusRecord>(&kv) {
                        Ok(r) => {
                            let r = Arc::new(r);
                            changed.push((kv.key.clone(), r.clone(), kv.mod_revision));
                            recs.insert(kv.key, (r, kv.mod_revision));
                        }
                        Err(e) => tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable status record"),
                    }
                }
            }
            Change::Put(kv) => match decode::<StatusRecord>(&kv) {
                Ok(r) => {
                    let r = Arc::new(r);
                    changed.push((kv.key.clone(), r.clone(), kv.mod_revision));
                    recs.insert(kv.key, (r, kv.mod_revision));
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable status record"),
            },
            Change::Delete(k) => {
                recs.remove(&k);
            }
        }
        drop(recs);
        self.status_changes.send_modify(|n| *n += 1);
        // A node that another head wrote after our last write has moved on.
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for (uid, r, rev) in changed {
            if r.parent == self.view.me.name {
                continue;
            }
            let gone = children.get(&uid).is_some_and(|ch| !ch.claim && ch.written_rev.is_some_and(|w| rev > w));
            if gone {
                let ch = children.remove(&uid);
                if let Some(ch) = ch {
                    tracing::info!(node = %ch.name, to = %r.parent, "node changed parent to another head");
                    ch.notify.notify_one();
                }
            }
        }
    }

    /// A move decided by a rebalancing round: if the node is this head's child, its agent gets
    /// the switch at once (through the long poll).
    fn apply_move(&self, c: Change) {
        let Change::Put(kv) = c else { return };
        let Ok(m) = decode::<schema::MoveRecord>(&kv) else { return };
        if m.from != self.view.me.name {
            return;
        }
        let Some(to) = self.view.heads.get(&m.to) else { return };
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = children.get_mut(&m.uid) {
            ch.switch = Some(HeadEntry { name: to.name.clone(), url: to.api_url.clone() });
            ch.notify.notify_one();
        }
    }

    fn apply_command(&self, c: Change) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut new: Vec<CommandRecord> = Vec::new();
        let mut done: Vec<CommandRecord> = Vec::new();
        let mut add =
            |kv: &KeyValue, open: &mut HashMap<(String, String), CommandRecord>| match decode::<CommandRecord>(kv) {
                Ok(r) => {
                    let k = (r.uid.clone(), r.id.clone());
                    if r.result.is_some() {
                        open.remove(&k);
                        done.push(r);
                    } else if !open.contains_key(&k) {
                        open.insert(k, r.clone());
                        new.push(r);
                    }
                }
                Err(e) => tracing::warn!(key = %kv.key, error = %e, "ignoring unreadable command record"),
            };
        match c {
            Change::Reset(kvs) => {
                open.clear();
                for kv in &kvs {
                    add(kv, &mut open);
                }
            }
            Change::Put(kv) => add(&kv, &mut open),
            Change::Delete(k) => {
                if let Some((uid, id)) = k.split_once('/') {
                    open.remove(&(uid.to_string(), id.to_string()));
                    let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(ch) = children.get_mut(uid) {
                        ch.pending.retain(|c| c.id != id);
                    }
                }
            }
        }
        drop(open);
        if !new.is_empty() {
            let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
            for r in new {
                if let Some(ch) = children.get_mut(&r.uid) {
                    if !ch.pending.iter().any(|c| c.id == r.id) {
                        ch.pending.push(Command { id: r.id.clone(), script: r.script });
                        ch.notify.notify_one();
                    }
                }
            }
        }
        for r in done {
            if let Some(res) = r.result {
                let _ = self.results.send((r.uid, r.id, res));
            }
        }
    }

    /// Writes changed status records and script outcomes, and marks silent nodes down.
    /// Writes outcomes every 100 ms and status every 500 ms; when stopped, writes both a last
    /// time (a head that stops loses no status it absorbed).
    async fn writer(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_status = Instant::now();
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => {
                    self.final_flush().await;
                    return;
                }
            }
            let r = self.flush_outcomes().await;
            let r = match r {
                Ok(()) if last_status.elapsed() >= Duration::from_millis(500) => {
                    last_status = Instant::now();
                    self.mark_silent();
                    self.flush_status().await
                }
                r => r,
            };
            match r {
                Ok(()) if failing => {
                    tracing::info!("node status reaches the database again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "cannot write node status; keeping it in memory and retrying");
                    }
                    failing = true;
                }
            }
        }
    }

    /// The last write before the head stops.
    async fn final_flush(&self) {
        let r = match self.flush_outcomes().await {
            Ok(()) => self.flush_status().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => tracing::info!("node status written before stopping"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write node status before stopping; other heads see it from the nodes' next reports")
            }
        }
    }

    /// Marks down the nodes silent for too long (logged by [`silent_lines`]).
    fn mark_silent(&self) {
        let mut down: Vec<(String, String, u64)> = Vec::new();
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for ch in children.values_mut() {
            // A node that was only handed its boot script has a kernel and an initramfs to load
            // before its agent can report.
            let limit = if ch.report.is_none() {
                Duration::from_secs(BOOT_GRACE_SECS.max((ch.status_secs * MISSED_INTERVALS) as u64))
            } else {
                Duration::from_secs((ch.status_secs * MISSED_INTERVALS) as u64)
            };
            if matches!(ch.state, NodeState::Up | NodeState::Booting) && ch.last_seen.elapsed() > limit {
                down.push((ch.name.clone(), ch.mac.to_string(), ch.last_seen.elapsed().as_secs()));
                ch.state = NodeState::Down;
                ch.touch();
            }
        }
        drop(children);
        if let Some(ev) = self.events.get() {
            for (name, _, _) in &down {
                ev.node(name, NodeChange::Down);
            }
        }
        for line in silent_lines(down) {
            tracing::warn!("{line}");
        }
    }

    async fn flush_outcomes(&self) -> Result<(), DbError> {
        let batch = std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return Ok(());
        }
        let mut pieces = Vec::new();
        for (rec, res) in &batch {
            let key = schema::command(&rec.uid, &rec.id);
            let mut done = rec.clone();
            done.result = Some(res.clone());
            let value = serde_json::to_vec(&done).expect("command records serialise");
            pieces.push((key, value, rec.lease));
        }
        for chunk in pieces.chunks(FLUSH_CHUNK) {
            // Only while the record exists (the asking head deletes it when it stops waiting);
            // the record keeps its lease.
            let mut txn = Txn::new();
            for (k, v, lease) in chunk {
                txn.compares.push(Compare::present(k.clone()));
                txn.success.push(TxnOp::put_with_lease(k.clone(), v.clone(), *lease));
            }
            if !self.db.txn(txn).await?.succeeded {
                for (k, v, lease) in chunk {
                    let t = Txn::new().when([Compare::present(k.clone())]).and_then([TxnOp::put_with_lease(
                        k.clone(),
                        v.clone(),
                        *lease,
                    )]);
                    self.db.txn(t).await?;
                }
            }
        }
        Ok(())
    }

    async fn flush_status(&self) -> Result<(), DbError> {
        // (uid, generation, value, claim, expected revision)
        let due: Vec<(String, u64, Vec<u8>, bool, Option<i64>, u64)> = {
            let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
            // A deleted node's status goes with it.
            children.retain(|uid, _| self.nodes.by_uid(uid).is_some());
            children
                .values()
                .filter(|c| c.dirty())
                .map(|c| {
                    let rec = c.record(&self.view.me.name);
                    (
                        c.uid.clone(),
                        c.generation,
                        serde_json::to_vec(&rec).expect("status records serialise"),
                        c.claim,
                        c.written_rev,
                        c.last_seen_unix,
                    )
                })
                .collect()
        };
        for chunk in due.chunks(FLUSH_CHUNK) {
            let mut txn = Txn::new();
            for (uid, _, value, claim, rev, _) in chunk {
                let key = schema::status(&uid);
                if !claim {
                    txn.compares.push(Compare::unchanged(key.clone(), rev.unwrap_or(0)));
                }
                txn.success.push(TxnOp::put(key, value.clone()));
            }
            let r = self.db.txn(txn).await?;
            self.counters.status_txns.fetch_add(1, Ordering::Relaxed);
            if r.succeeded {
                self.counters.status_writes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                self.written(chunk.iter().map(|(u, g, _, _, _, s)| (u.as_str(), *g, *s)), r.revision);
                continue;
            }
            // Someone else wrote some of these: one by one, dropping the nodes we lost.
            for (uid, generation, value, claim, rev, seen) in chunk {
                let key = schema::status(&uid);
                let mut t = Txn::new().and_then([TxnOp::put(key.clone(), value.clone())]);
                if !claim {
                    t = t.when([Compare::unchanged(key.clone(), rev.unwrap_or(0))]);
                }
                let mut r = self.db.txn(t).await?;
                if !r.succeeded && !claim {
                    // Or this head did: a write of ours that had no answer (etcd's "request timed
                    // out") and was applied all the same. A record that still names this head is
                    // ours to write over; any other head's write names that head.
                    let ours = self.db.get(&key).await?.filter(|kv| {
                        serde_json::from_slice::<StatusRecord>(&kv.value).is_ok_and(|r| r.parent == self.view.me.name)
                    });
                    if let Some(kv) = ours {
                        let t = Txn::new()
                            .when([Compare::unchanged(key.clone(), kv.mod_revision)])
                            .and_then([TxnOp::put(key, value.clone())]);
                        r = self.db.txn(t).await?;
                    }
                }
                self.counters.status_txns.fetch_add(1, Ordering::Relaxed);
                if r.succeeded {
                    self.counters.status_writes.fetch_add(1, Ordering::Relaxed);
                    self.written([(uid.as_str(), *generation, *seen)].into_iter(), r.revision);
                } else {
                    let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some(ch) = children.remove(uid) {
                        tracing::info!(node = %ch.name, "node is now parented by another head");
                        ch.notify.notify_one();
                    }
                }
            }
        }
        Ok(())
    }

    fn written<'a>(&self, done: impl Iterator<Item = (&'a str, u64, u64)>, revision: i64) {
        let mut children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        for (uid, generation, seen) in done {
            if let Some(ch) = children.get_mut(uid) {
                ch.written_generation = ch.written_generation.max(generation);
                ch.written_rev = Some(revision);
                ch.written_seen = seen;
                ch.claim = false;
            }
        }
    }

    /// Every node counted by state and parent head (`None`: no parent yet), as
    /// [`Hub::status_of`] reports them, from memory: `clusterware_nodes` at scrape time.
    pub fn census(&self) -> BTreeMap<(NodeState, Option<String>), u64> {
        let nodes = self.nodes.all();
        let alive: HashSet<String> = self.view.alive.keys().into_iter().collect();
        let now = unix_now();
        let recs = self.records.read().unwrap_or_else(|p| p.into_inner());
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = BTreeMap::new();
        for n in &nodes {
            let key = if let Some(ch) = children.get(&n.uid) {
                (ch.state, Some(self.view.me.name.clone()))
            } else if let Some((r, _)) = recs.get(&n.uid) {
                (record_state(r, &alive, now), Some(r.parent.clone()))
            } else {
                (NodeState::New, None)
            };
            *out.entry(key).or_insert(0) += 1;
        }
        out
    }

    /// This head's latest reports for the nodes it parents among `uids`.
    pub fn reports(&self, uids: &[String]) -> BTreeMap<String, StatusReport> {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        uids.iter()
            .filter_map(|u| children.get(u).and_then(|c| c.report.as_ref()).map(|r| (u.clone(), (**r).clone())))
            .collect()
    }

    pub fn counters(&self) -> clusterware_shared::agent::StatusCounters {
        let c = &self.counters;
        clusterware_shared::agent::StatusCounters {
            pushes: c.pushes.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            status_writes: c.status_writes.load(Ordering::Relaxed),
            status_txns: c.status_txns.load(Ordering::Relaxed),
            switches: c.switches.load(Ordering::Relaxed),
        }
    }

    /// Nodes parented per alive head (up or booting), from the status records.
    pub fn load(&self) -> BTreeMap<String, u64> {
        let alive: HashSet<String> = self.view.alive.keys().into_iter().collect();
        let mut m: BTreeMap<String, u64> = alive.iter().map(|h| (h.clone(), 0)).collect();
        let recs = self.records.read().unwrap_or_else(|p| p.into_inner());
        for (r, _) in recs.values() {
            if matches!(r.state, NodeState::Up | NodeState::Booting) {
                if let Some(c) = m.get_mut(&r.parent) {
                    *c += 1;
                }
            }
        }
        m
    }

    /// How many nodes this head parents now (up or booting).
    pub fn child_count(&self) -> usize {
        let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
        children.values().filter(|c| matches!(c.state, NodeState::Up | NodeState::Booting)).count()
    }

    /// The nodes with these uids: from memory, else (a node created a moment ago through
    /// another head) from the database. Err names a uid that no node has.
    pub async fn resolve(&self, uids: &[String]) -> Result<Vec<Arc<Node>>, crate::registry::RegistryError> {
        let mut out = Vec::with_capacity(uids.len());
        let mut fresh: Option<HashMap<String, Arc<Node>>> = None;
        for u in uids {
            if let Some(n) = self.nodes.by_uid(u) {
                out.push(n);
                continue;
            }
            if fresh.is_none() {
                let all = crate::registry::list(&self.db).await?;
                fresh = Some(all.into_iter().map(|n| (n.uid.clone(), Arc::new(n))).collect());
            }
            match fresh.as_ref().and_then(|f| f.get(u)) {
                Some(n) => out.push(n.clone()),
                None => return Err(crate::registry::RegistryError::NotFound(format!("no node with uid {u}"))),
            }
        }
        Ok(out)
    }

    /// The status of the given nodes (all when `None`), as any head sees it; with `details`,
    /// the latest reports, asked from each parent head.
    pub async fn status_of(&self, nodes: Option<Vec<Arc<Node>>>, details: bool) -> Vec<NodeStatus> {
        let nodes: Vec<Arc<Node>> = nodes.unwrap_or_else(|| self.nodes.all());
        let alive: HashSet<String> = self.view.alive.keys().into_iter().collect();
        let now = unix_now();
        let known = self.references(&nodes).await;
        let mut out: Vec<NodeStatus> = {
            let recs = self.records.read().unwrap_or_else(|p| p.into_inner());
            let children = self.children.lock().unwrap_or_else(|p| p.into_inner());
            nodes
                .iter()
                .map(|n| {
                    let (secs, problem) = status_secs_of(n);
                    let mut problems: Vec<String> = problem.into_iter().collect();
                    if let Some(Err(e)) = n.attributes.get("_ssh_keys").map(|k| parse_key_list(k)) {
                        problems.push(format!("_ssh_keys is ignored: {e}"));
                    }
                    if let Some(p) = n.attributes.get(refs::PREFERRED_HEAD) {
                        if !self.view.names_a_head(p) {
                            problems.push(format!("_preferred_head={p} names no head; the node has no preference"));
                        }
                    }
                    if let Some(k) = &known {
                        for key in [refs::BOOT_CONFIG, refs::BMC_PASS_REF] {
                            if let Some(p) = n.attributes.get(key).and_then(|v| k.status_problem(key, v)) {
                                problems.push(p);
                            }
                        }
                    }
                    let mut st = NodeStatus {
                        uid: n.uid.clone(),
                        name: n.name.clone(),
                        state: NodeState::New,
                        parent: None,
                        last_seen: None,
                        boot_id: None,
                        status_secs: secs,
                        report: None,
                        hardware: None,
                        agent_version: None,
                        problems,
                    };
                    if let Some(ch) = children.get(&n.uid) {
                        st.state = ch.state;
                        st.parent = Some(self.view.me.name.clone());
                        st.last_seen = Some(ch.last_seen_unix);
                        st.boot_id = Some(ch.boot_id.clone());
                        st.hardware.clone_from(&ch.hardware);
                        st.agent_version.clone_from(&ch.agent_version);
                        if details {
                            st.report = ch.report.as_ref().map(|r| (**r).clone());
                        }
                    } else if let Some((r, _)) = recs.get(&n.uid) {
                        st.state = record_state(r, &alive, now);
                        st.parent = Some(r.parent.clone());
                        st.last_seen = Some(r.last_seen);
                        st.boot_id = Some(r.boot_id.clone());
                        st.hardware.clone_from(&r.hardware);
                        st.agent_version.clone_from(&r.agent_version);
                    }
                    if let Some(p) = st.agent_version.as_deref().and_then(clusterware_shared::release::agent_problem) {
                        st.problems.push(p);
                    }
                    st
                })
                .collect()
        };
        if details {
            let mut by_parent: HashMap<String, Vec<String>> = HashMap::new();
            for s in &out {
                if let Some(p) = &s.parent {
                    if *p != self.view.me.name && alive.contains(p) && s.report.is_none() {
                        by_parent.entry(p.clone()).or_default().push(s.uid.clone());
                    }
                }
            }
            let asks = by_parent.into_iter().filter_map(|(p, uids)| self.view.heads.get(&p).map(|h| (h, uids)));
            let got = futures::future::join_all(asks.map(|(h, uids)| self.ask_reports(h, uids))).await;
            let mut all: HashMap<String, StatusReport> = HashMap::new();
            for m in got.into_iter().flatten() {
                all.extend(m);
            }
            for s in &mut out {
                if s.report.is_none() {
                    s.report = all.remove(&s.uid);
                }
            }
        }
        out
    }

    /// The boot configs and secrets that these nodes' `_boot_config` and `_bmc_pass_ref` may
    /// name, read when some node has one (`None` when none has, or the database did not answer:
    /// status is given without those problems then).
    async fn references(&self, nodes: &[Arc<Node>]) -> Option<refs::Known> {
        let keys: Vec<&str> = [refs::BOOT_CONFIG, refs::BMC_PASS_REF]
            .into_iter()
            .filter(|k| nodes.iter().any(|n| n.attributes.contains_key(*k)))
            .collect();
        if keys.is_empty() {
            return None;
        }
        match refs::Known::read(&self.db, &keys).await {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::debug!(error = %e, "node status without checking boot configs and secrets");
                None
            }
        }
    }

    async fn ask_reports(&self, head: Arc<HeadRecord>, uids: Vec<String>) -> Option<BTreeMap<String, StatusReport>> {
        let asked = match self.peers.to(&head.api_url) {
            Ok(c) => c.node_reports(&clusterware_shared::api::DeleteNodes { nodes: uids }).await,
            Err(e) => Err(e),
        };
        match asked {
            Ok(reports) => Some(reports),
            Err(e) => {
                tracing::warn!(head = %head.name, error = %e, "peer did not give node reports");
                None
            }
        }
    }

    /// Runs a script on nodes: writes the commands (under a lease that outlives the wait), waits
    /// for every outcome or the timeout, then removes the commands.
    pub async fn run_script(
        &self,
        nodes: &[Arc<Node>],
        script: Script,
        timeout: Duration,
    ) -> Result<Vec<NodeOutcome>, DbError> {
        let statuses = self.status_of(Some(nodes.to_vec()), false).await;
        let uids: Vec<String> = nodes.iter().map(|n| n.uid.clone()).collect();
        let uids = &uids[..];
        let mut outcomes: BTreeMap<String, NodeOutcome> = BTreeMap::new();
        let mut ask: Vec<(String, String)> = Vec::new();
        for s in &statuses {
            if matches!(s.state, NodeState::Up | NodeState::Booting) {
                let id = format!("{:016x}", rand::random::<u64>());
                ask.push((s.uid.clone(), id));
            } else {
                outcomes.insert(
                    s.uid.clone(),
                    NodeOutcome {
                        uid: s.uid.clone(),
                        name: s.name.clone(),
                        outcome: Outcome::Unreachable,
                        message: format!("node is {}", s.state.name()),
                    },
                );
            }
        }
        let names: HashMap<&str, &str> = statuses.iter().map(|s| (s.uid.as_str(), s.name.as_str())).collect();
        if !ask.is_empty() {
            let mut rx = self.results.subscribe();
            let lease: LeaseId = self.db.grant_lease(timeout.as_secs() as i64 + 30).await?;
            let issued = unix_now();
            let mut wanted: HashMap<(String, String), ()> = HashMap::new();
            let ops: Vec<TxnOp> = ask
                .iter()
                .map(|(uid, id)| {
                    wanted.insert((uid.clone(), id.clone()), ());
                    let rec = CommandRecord {
                        id: id.clone(),
                        uid: uid.clone(),
                        script,
                        origin: self.view.me.name.clone(),
                        issued,
                        lease,
                        result: None,
                    };
                    TxnOp::put_with_lease(
                        schema::command(&uid, &id),
                        serde_json::to_vec(&rec).expect("command records serialise"),
                        lease,
                    )
                })
                .collect();
            let written = async {
                for chunk in ops.chunks(FLUSH_CHUNK.min(self.db.max_txn_ops())) {
                    self.db.txn(Txn::new().and_then(chunk.iter().cloned())).await?;
                }
                Ok::<(), DbError>(())
            }
            .await;
            if let Err(e) = written {
                let _ = self.db.revoke_lease(lease).await;
                return Err(e);
            }
            tracing::info!(script = %script.name(), nodes = ask.len(), "script sent to nodes");
            let deadline = tokio::time::Instant::now() + timeout;
            let mut lagged = false;
            while !wanted.is_empty() {
                tokio::select! {
                    r = rx.recv() => match r {
                        Ok((uid, id, res)) => {
                            if wanted.remove(&(uid.clone(), id)).is_some() {
                                outcomes.insert(uid.clone(), outcome_of(&names, uid, res));
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => { lagged = true; }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
                if lagged {
                    break;
                }
            }
            // Outcomes that the channel dropped (or that raced the deadline) are in the records.
            while !wanted.is_empty() {
                if let Ok((kvs, _)) = self.db.range(COMMANDS).await {
                    for r in kvs.iter().filter_map(|kv| decode::<CommandRecord>(kv).ok()) {
                        let Some(res) = r.result else { continue };
                        if wanted.remove(&(r.uid.clone(), r.id.clone())).is_some() {
                            outcomes.insert(r.uid.clone(), outcome_of(&names, r.uid, res));
                        }
                    }
                }
                if !lagged || tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for (uid, _) in wanted.into_keys() {
                outcomes.insert(
                    uid.clone(),
                    NodeOutcome {
                        name: names.get(uid.as_str()).map(|s| s.to_string()).unwrap_or_default(),
                        uid,
                        outcome: Outcome::Unreachable,
                        message: format!("no answer within {} s", timeout.as_secs()),
                    },
                );
            }
            if let Err(e) = self.db.revoke_lease(lease).await {
                tracing::warn!(error = %e, "cannot remove finished commands now; they expire with their lease");
            }
        }
        let mut v: Vec<NodeOutcome> = outcomes.into_values().collect();
        let index: HashMap<&str, usize> = uids.iter().enumerate().map(|(i, u)| (u.as_str(), i)).collect();
        v.sort_by_key(|o| index.get(o.uid.as_str()).copied().unwrap_or(usize::MAX));
        Ok(v)
    }
}

/// Starts the agent channel (its follows, the status writer, its routes); the hub is returned
/// for the capabilities that ask about nodes' state.
pub fn start(ctx: &crate::core::Ctx, nodes: &Arc<NodeCache>, identity: &Arc<Identity>) -> Arc<Hub> {
    let hub =
        Hub::spawn(ctx.db.clone(), ctx.view.clone(), nodes.clone(), ctx.token.clone(), Some(identity.clone()), ctx.sup);
    let _ = hub.events.set(ctx.events.clone());
    ctx.serve(routes::routes(Arc::new(routes::Api { db: ctx.db.clone(), hub: hub.clone() })));
    let h = hub.clone();
    ctx.on_scrape(move || {
        if let Some(m) = crate::core::metrics::on() {
            set_node_gauges(m, &h);
        }
        std::future::ready(())
    });
    hub
}

/// `clusterware_nodes{state,parent}`: every state for every head in the cluster (zeros
/// included, so that a state's series does not vanish), and the nodes without a parent.
fn set_node_gauges(m: &crate::core::metrics::Metrics, hub: &Hub) {
    let census = hub.census();
    let mut parents: BTreeSet<String> = hub.view.heads.keys().into_iter().collect();
    parents.extend(census.keys().filter_map(|(_, p)| p.clone()));
    m.nodes.clear();
    for state in [NodeState::New, NodeState::Booting, NodeState::Up, NodeState::Down] {
        for p in parents.iter().map(Some).chain([None]) {
            let n = census.get(&(state, p.cloned())).copied().unwrap_or(0);
            if n > 0 || p.is_some() {
                m.nodes
                    .get_or_create(&vec![("state", state.to_string()), ("parent", p.cloned().unwrap_or_default())])
                    .set(n as i64);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resumed head that finds hundreds of former nodes silent writes one line, not one each.
    #[test]
    fn many_silent_nodes_are_summed_up_in_one_line() {
        let down = |n: usize| (0..n).map(|i| (format!("n{i:03}"), "52:54:00:00:00:01".to_string(), 20)).collect();
        let few = silent_lines(down(3));
        assert_eq!(few.len(), 3);
        assert!(few[0].starts_with("node is down") && few[0].contains("node n000"), "{few:?}");
        let many = silent_lines(down(450));
        assert_eq!(many.len(), 1, "{many:?}");
        assert!(many[0].starts_with("450 nodes are down") && many[0].contains("first: n000, n001"), "{many:?}");
        assert!(silent_lines(Vec::new()).is_empty());
    }
    use crate::core::db::embedded::Embedded;

    use clusterware_shared::agent::Phase;

    const MAC: &str = "52:54:00:00:00:01";
    const NODE_IP: &str = "10.0.0.5";

    fn me() -> HeadRecord {
        HeadRecord::for_test("h1", 1)
    }

    /// A hub on an in-memory store with one node (MAC, registered address).
    async fn hub() -> (Arc<Hub>, Database, Supervisor, Node) {
        hub_in(ClusterView::fixed(me(), vec![me()], &["h1"]), &[]).await
    }

    /// The same in a cluster `view`, the node with `attributes`.
    async fn hub_in(view: ClusterView, attributes: &[(&str, &str)]) -> (Arc<Hub>, Database, Supervisor, Node) {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let spec = clusterware_shared::api::NodeSpec {
            macs: vec![MAC.parse().unwrap()],
            ip: Some(NODE_IP.parse().unwrap()),
            attributes: attributes.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        let node = crate::registry::create(&db, vec![spec], true).await.unwrap().remove(0);
        let sup = Supervisor::new();
        let nodes = NodeCache::spawn(db.clone(), &sup);
        assert!(nodes.wait_ready(Duration::from_secs(5)).await);
        let hub = Hub::spawn(db.clone(), Arc::new(view), nodes, "t".into(), None, &sup);
        (hub, db, sup, node)
    }

    /// Two heads, h1 (this one) stopping: its liveness record says so.
    fn h1_stopping() -> ClusterView {
        ClusterView::fixed(me(), vec![me(), HeadRecord::for_test("h2", 2)], &["h1", "h2"]).with_stopping("h1")
    }

    /// A stopping head tells its node (through the long poll) to go to the other head, and
    /// sends on at once a node that reports to it afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopping_head_hands_its_nodes_on_and_sends_on_newcomers() {
        let (hub, _db, _sup, _node) = hub_in(h1_stopping(), &[]).await;
        assert_eq!(hub.push(peer(), report(Phase::Up)).unwrap().switch_parent, None);
        let mac: MacAddr = MAC.parse().unwrap();
        let poll = {
            let hub = hub.clone();
            tokio::spawn(async move { hub.wait(peer(), &mac, 30).await })
        };
        let t0 = Instant::now();
        let (told, moved) = hub.hand_over(Duration::from_secs(10)).await;
        assert_eq!((told, moved), (1, 1));
        assert!(t0.elapsed() < Duration::from_secs(5), "the hand-over waited {:?}", t0.elapsed());
        let d = poll.await.unwrap().unwrap();
        assert_eq!(d.switch_parent.map(|h| h.name).as_deref(), Some("h2"));
        // Sent back here (by a head that had not seen this one stopping): sent on again.
        let d = hub.push(peer(), report(Phase::Up)).unwrap();
        assert_eq!(d.switch_parent.map(|h| h.name).as_deref(), Some("h2"));
    }

    /// A node already on its way to another head (it took a switch) is not waited for, and no
    /// head that stops itself is a destination.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hand_over_does_not_wait_for_nodes_already_leaving() {
        let (hub, _db, _sup, _node) = hub_in(h1_stopping(), &[("_preferred_head", "h2")]).await;
        let d = hub.push(peer(), report(Phase::Up)).unwrap();
        assert_eq!(d.switch_parent.map(|h| h.name).as_deref(), Some("h2"), "directed to its preferred head");
        let t0 = Instant::now();
        assert_eq!(hub.hand_over(Duration::from_secs(10)).await, (0, 0));
        assert!(t0.elapsed() < Duration::from_secs(3), "the hand-over waited {:?}", t0.elapsed());

        // h2 stopping as well: nowhere to go, nothing told, nothing waited for.
        let view = h1_stopping().with_stopping("h2");
        assert!(view.taking_nodes().is_empty() && view.alive_names().len() == 2);
        let (hub, _db, _sup, _node) = hub_in(view, &[("_preferred_head", "h2")]).await;
        let d = hub.push(peer(), report(Phase::Up)).unwrap();
        assert_eq!(d.switch_parent, None, "not sent to a head that stops");
        assert_eq!(hub.hand_over(Duration::from_secs(10)).await, (0, 0));
    }

    fn report(phase: Phase) -> StatusReport {
        StatusReport {
            mac: MAC.parse().unwrap(),
            boot_id: "0123abcd".into(),
            phase,
            agent_version: "t".into(),
            uptime_secs: 1,
            load: [0.0; 3],
            mem_total_kib: 1,
            mem_available_kib: 1,
            cpus: 1,
            kernel: "6.1".into(),
            hostname: "n0".into(),
            interfaces: vec![],
            hardware: None,
        }
    }

    fn peer() -> IpAddr {
        NODE_IP.parse().unwrap()
    }

    async fn status_record(db: &Database, uid: &str) -> Option<StatusRecord> {
        db.get(&schema::status(uid)).await.unwrap().map(|kv| serde_json::from_slice(&kv.value).unwrap())
    }

    async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f().await {
            assert!(Instant::now() < deadline, "{what} did not happen within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_are_checked_against_the_nodes_address() {
        let (hub, _db, _sup, _node) = hub().await;
        let other: IpAddr = "10.0.0.6".parse().unwrap();
        assert!(matches!(hub.push(other, report(Phase::Up)), Err(AgentError::WrongAddress(_))));
        let mut r = report(Phase::Up);
        r.mac = "52:54:00:00:00:02".parse().unwrap();
        assert!(matches!(hub.push(peer(), r), Err(AgentError::Unknown(_))));
        let mut r = report(Phase::Up);
        r.boot_id = "not a boot id".into();
        assert!(matches!(hub.push(peer(), r), Err(AgentError::Invalid(_))));
        assert_eq!(hub.counters().rejected, 2, "the invalid report is refused before it is counted");
        assert_eq!(hub.child_count(), 0);
    }

    /// What a head absorbed just before it stops reaches the database: the writer's final flush.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_writes_the_last_status() {
        let (hub, db, sup, node) = hub().await;
        hub.push(peer(), report(Phase::Up)).unwrap();
        // At once, well before the writer's first status round (500 ms).
        sup.shutdown(Duration::from_secs(5)).await;
        let rec = status_record(&db, &node.uid).await.expect("the status was written when the head stopped");
        assert_eq!((rec.state, rec.parent.as_str(), rec.boot_id.as_str()), (NodeState::Up, "h1", "0123abcd"));
    }

    /// A node another head wrote after this head's last write has moved on: this head lets it go
    /// and never overwrites the other head's record.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_claimed_by_another_head_is_let_go() {
        let (hub, db, _sup, node) = hub().await;
        hub.push(peer(), report(Phase::Up)).unwrap();
        eventually("the first write", async || status_record(&db, &node.uid).await.is_some()).await;
        assert_eq!(hub.child_count(), 1);
        let theirs = StatusRecord {
            state: NodeState::Up,
            parent: "h2".into(),
            last_seen: unix_now(),
            boot_id: "0123abcd".into(),
            status_secs: 10,
            hardware: None,
            agent_version: None,
        };
        db.put(&schema::status(&node.uid), serde_json::to_vec(&theirs).unwrap()).await.unwrap();
        eventually("letting the node go", async || hub.child_count() == 0).await;
        // Several status rounds later, the record is still the other head's.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(status_record(&db, &node.uid).await.unwrap().parent, "h2");
    }

    /// A write of this head's own that it never heard back about (etcd's "request timed out" for
    /// a write it then applies) moves the record's revision past the one the head expects: the
    /// record still names this head, so the node stays its child and its status keeps flowing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn its_own_unanswered_write_does_not_lose_a_node() {
        let (hub, db, _sup, node) = hub().await;
        hub.push(peer(), report(Phase::Up)).unwrap();
        eventually("the first write", async || status_record(&db, &node.uid).await.is_some()).await;
        let mut ours = status_record(&db, &node.uid).await.unwrap();
        ours.last_seen += 1;
        db.put(&schema::status(&node.uid), serde_json::to_vec(&ours).unwrap()).await.unwrap();
        hub.push(peer(), report(Phase::Booting)).unwrap();
        eventually("the next status written", async || {
            status_record(&db, &node.uid).await.is_some_and(|r| r.state == NodeState::Booting)
        })
        .await;
        assert_eq!(hub.child_count(), 1, "the node is still this head's");
    }

    /// A script reaches the node through its long poll and its outcome comes back through the
    /// database; a node that never reported is unreachable at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn scripts_round_trip_and_silent_nodes_are_unreachable() {
        let (hub, _db, _sup, node) = hub().await;
        let node = Arc::new(node);
        let out = hub.run_script(&[node.clone()], Script::FetchHosts, Duration::from_secs(5)).await.unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].outcome, Outcome::Unreachable);

        hub.push(peer(), report(Phase::Up)).unwrap();
        let h = hub.clone();
        let agent = tokio::spawn(async move {
            let mac: MacAddr = MAC.parse().unwrap();
            loop {
                let d = h.wait(peer(), &mac, 5).await.unwrap();
                if let Some(c) = d.commands.first() {
                    assert_eq!(c.script, Script::UpdateKeys);
                    let o = ScriptOutcome { mac, id: c.id.clone(), ok: true, message: "keys written".into() };
                    h.outcome(peer(), o).unwrap();
                    return;
                }
            }
        });
        let out = hub.run_script(&[node.clone()], Script::UpdateKeys, Duration::from_secs(10)).await.unwrap();
        agent.await.unwrap();
        assert_eq!((out[0].outcome, out[0].message.as_str()), (Outcome::Ok, "keys written"));
        // An outcome for a command nobody waits for any more is refused.
        let late = ScriptOutcome { mac: MAC.parse().unwrap(), id: "feed".into(), ok: true, message: String::new() };
        assert!(matches!(hub.outcome(peer(), late), Err(AgentError::Unknown(_))));
    }
}
