//! The cluster database: one key-value abstraction with etcd's semantics (revisions, prefix
//! range, compare-and-swap transactions, leases with TTL, prefix watches that resume from a
//! revision), and two backends behind it:
//!
//! - [`etcd`]: the real distributed engine, through the `etcd-client` crate;
//! - [`embedded`]: a single-file redb store inside the head daemon, for a solo head.
//!
//! Everything above this module (node registry, head membership, …) is written against
//! [`Database`] and runs unchanged on both; one conformance suite (`head/tests/db_conformance.rs`)
//! checks that the two agree.
//!
//! Keys are UTF-8 strings without the backend's prefix; values are bytes (JSON by convention).
//! Every call through [`Database`] is timed, and counted when it fails, by operation
//! (`clusterware_db_request_duration_seconds`, [`crate::core::metrics`]).

pub mod embedded;
pub mod etcd;
pub mod member;

use std::time::Duration;

/// A database revision: every committed write increases it by one.
pub type Revision = i64;
/// A lease id; keys put with a lease vanish when it expires or is revoked.
pub type LeaseId = i64;

/// Errors of the cluster database. None of them means "written": a failed call changed nothing.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// The database cannot be reached, has no quorum, or did not answer in time.
    #[error("cluster database unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for history that has been compacted away.
    #[error("revision {requested} has been compacted (oldest kept: {compacted})")]
    Compacted { requested: Revision, compacted: Revision },
    /// The lease expired or was revoked.
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The request itself is not acceptable (too many operations, empty key, …).
    #[error("invalid database request: {0}")]
    Invalid(String),
    /// The local store failed (I/O, corruption, locked by another process).
    #[error("database storage error: {0}")]
    Storage(String),
    /// The database was closed.
    #[error("cluster database closed")]
    Closed,
    /// etcd refused a membership change, or a call that a learner cannot serve; `why` says which
    /// (the one place that reads etcd's error text is the etcd backend).
    #[error("cluster database unavailable: {message}")]
    Refused { why: Refusal, message: String },
}

/// Why etcd refused (see [`DbError::Refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Right after a membership change, etcd refuses another until every member has been
    /// connected for a few seconds ("unhealthy cluster").
    Unhealthy,
    /// A learner is already catching up; etcd allows one at a time.
    TooManyLearners,
    /// The learner to promote has not caught up with the leader yet.
    LearnerNotInSync,
    /// The member to promote is not a learner.
    NotLearner,
    /// This head's member is a learner, which serves no requests of this kind.
    Learner,
}

impl crate::core::http::HasKind for DbError {
    fn kind(&self) -> clusterware_shared::api::ErrorKind {
        use clusterware_shared::api::ErrorKind;
        match self {
            DbError::Unavailable(_) | DbError::Closed | DbError::Refused { .. } => ErrorKind::Unavailable,
            DbError::Invalid(_) => ErrorKind::BadRequest,
            DbError::Compacted { .. } | DbError::LeaseNotFound(_) | DbError::Storage(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A stored key with its metadata, as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (0 for a deleted key in events).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after the first put).
    pub version: i64,
    /// Lease the key is bound to, 0 for none.
    pub lease: LeaseId,
}

/// What a comparison looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmpTarget {
    /// The key's version; 0 means the key does not exist.
    Version(i64),
    CreateRevision(Revision),
    ModRevision(Revision),
    Value(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// One condition of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compare {
    pub key: String,
    pub op: CmpOp,
    pub target: CmpTarget,
}

impl Compare {
    /// The key does not exist.
    pub fn absent(key: impl Into<String>) -> Self {
        Compare { key: key.into(), op: CmpOp::Equal, target: CmpTarget::Version(0) }
    }
    /// The key exists.
    pub fn present(key: impl Into<String>) -> Self {
        Compare { key: key.into(), op: CmpOp::Greater, target: CmpTarget::Version(0) }
    }
    /// The key was last written at `rev` (unchanged since it was read).
    pub fn unchanged(key: impl Into<String>, rev: Revision) -> Self {
        Compare { key: key.into(), op: CmpOp::Equal, target: CmpTarget::ModRevision(rev) }
    }
    /// The key holds exactly this value.
    pub fn value_is(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Compare { key: key.into(), op: CmpOp::Equal, target: CmpTarget::Value(value.into()) }
    }

    /// Evaluates the condition against the key's current state (`None`: absent). Etcd's rules:
    /// an absent key has version, create and mod revision 0, and fails every value comparison.
    pub fn holds(&self, kv: Option<&KeyValue>) -> bool {
        use std::cmp::Ordering;
        let ord = match (&self.target, kv) {
            (CmpTarget::Version(v), kv) => kv.map_or(0, |k| k.version).cmp(v),
            (CmpTarget::CreateRevision(r), kv) => kv.map_or(0, |k| k.create_revision).cmp(r),
            (CmpTarget::ModRevision(r), kv) => kv.map_or(0, |k| k.mod_revision).cmp(r),
            (CmpTarget::Value(_), None) => return false,
            (CmpTarget::Value(v), Some(k)) => k.value.as_slice().cmp(v.as_slice()),
        };
        match self.op {
            CmpOp::Equal => ord == Ordering::Equal,
            CmpOp::NotEqual => ord != Ordering::Equal,
            CmpOp::Greater => ord == Ordering::Greater,
            CmpOp::Less => ord == Ordering::Less,
        }
    }
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8>, lease: Option<LeaseId> },
    Delete { key: String },
    DeletePrefix { prefix: String },
    Get { key: String },
    GetPrefix { prefix: String },
}

impl TxnOp {
    pub fn put(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: None }
    }
    pub fn put_with_lease(key: impl Into<String>, value: impl Into<Vec<u8>>, lease: LeaseId) -> Self {
        TxnOp::Put { key: key.into(), value: value.into(), lease: Some(lease) }
    }
    pub fn delete(key: impl Into<String>) -> Self {
        TxnOp::Delete { key: key.into() }
    }
    pub fn get(key: impl Into<String>) -> Self {
        TxnOp::Get { key: key.into() }
    }
}

/// The result of one operation, in the order of the branch that ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Put,
    Deleted(i64),
    Got(Vec<KeyValue>),
}

/// A compare-and-swap transaction: if every compare holds, run `success`, else `failure`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

impl Txn {
    pub fn new() -> Self {
        Txn::default()
    }
    pub fn when(mut self, c: impl IntoIterator<Item = Compare>) -> Self {
        self.compares.extend(c);
        self
    }
    pub fn and_then(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.success.extend(ops);
        self
    }
    pub fn or_else(mut self, ops: impl IntoIterator<Item = TxnOp>) -> Self {
        self.failure.extend(ops);
        self
    }
    /// The largest of the three lists, which is what etcd's `--max-txn-ops` limits.
    pub fn size(&self) -> usize {
        self.compares.len().max(self.success.len()).max(self.failure.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change seen by a watch. For a delete, `kv.value` is empty and `kv.mod_revision` is the
/// revision of the delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// A database member as the engine reports it (etcd's member list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    /// Empty for a member that was added but has not started yet.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The cluster database, whichever backend is behind it. Cheap to clone.
#[derive(Clone)]
pub enum Database {
    Embedded(embedded::Embedded),
    Etcd(etcd::Etcd),
}

/// A prefix watch. It delivers every change under its prefix exactly once, in revision order,
/// and resumes by itself after the connection to the database breaks.
pub enum Watcher {
    Embedded(embedded::EmbeddedWatcher),
    Etcd(etcd::EtcdWatcher),
}

impl Watcher {
    /// The next change. Waits until there is one.
    pub async fn next(&mut self) -> Result<Event> {
        match self {
            Watcher::Embedded(w) => w.next().await,
            Watcher::Etcd(w) => w.next().await,
        }
    }

    /// The revision the next event will have at least.
    pub fn next_revision(&self) -> Revision {
        match self {
            Watcher::Embedded(w) => w.next_revision(),
            Watcher::Etcd(w) => w.next_revision(),
        }
    }
}

/// The time a single database call may take before it counts as unavailable.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);

impl Database {
    /// `embedded` or `etcd`.
    pub fn backend(&self) -> &'static str {
        match self {
            Database::Embedded(_) => "embedded",
            Database::Etcd(_) => "etcd",
        }
    }

    /// Runs a transaction atomically.
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        if txn.success.iter().chain(&txn.failure).any(|op| matches!(op, TxnOp::Put { key, .. } if key.is_empty())) {
            return Err(DbError::Invalid("empty key".into()));
        }
        crate::core::metrics::timed("txn", async {
            match self {
                Database::Embedded(d) => d.txn(txn).await,
                Database::Etcd(d) => d.txn(txn).await,
            }
        })
        .await
    }

    /// Every key under `prefix`, in key order, and the revision they were read at.
    pub async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        crate::core::metrics::timed("range", async {
            match self {
                Database::Embedded(d) => d.range(prefix),
                Database::Etcd(d) => d.range(prefix).await,
            }
        })
        .await
    }

    /// One key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let r = self.txn(Txn::new().and_then([TxnOp::get(key)])).await?;
        Ok(match r.results.into_iter().next() {
            Some(OpResult::Got(mut kvs)) => kvs.pop(),
            _ => None,
        })
    }

    /// Writes one key unconditionally; returns the new revision.
    pub async fn put(&self, key: &str, value: impl Into<Vec<u8>>) -> Result<Revision> {
        Ok(self.txn(Txn::new().and_then([TxnOp::put(key, value)])).await?.revision)
    }

    /// Deletes one key; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool> {
        let r = self.txn(Txn::new().and_then([TxnOp::delete(key)])).await?;
        Ok(matches!(r.results.first(), Some(OpResult::Deleted(n)) if *n > 0))
    }

    /// Creates a lease that expires `ttl_secs` seconds after its last renewal.
    pub async fn grant_lease(&self, ttl_secs: i64) -> Result<LeaseId> {
        crate::core::metrics::timed("lease_grant", async {
            match self {
                Database::Embedded(d) => d.grant_lease(ttl_secs).await,
                Database::Etcd(d) => d.grant_lease(ttl_secs).await,
            }
        })
        .await
    }

    /// Renews a lease; returns its TTL, or [`DbError::LeaseNotFound`] when it is gone.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<i64> {
        crate::core::metrics::timed("lease_keepalive", async {
            match self {
                Database::Embedded(d) => d.keep_alive(lease),
                Database::Etcd(d) => d.keep_alive(lease).await,
            }
        })
        .await
    }

    /// Ends a lease now, deleting its keys.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        crate::core::metrics::timed("lease_revoke", async {
            match self {
                Database::Embedded(d) => d.revoke_lease(lease).await,
                Database::Etcd(d) => d.revoke_lease(lease).await,
            }
        })
        .await
    }

    /// Watches every key under `prefix`. With `start`, history from that revision on is
    /// delivered first; without, only changes after the call.
    pub async fn watch(&self, prefix: &str, start: Option<Revision>) -> Result<Watcher> {
        crate::core::metrics::timed("watch", async {
            match self {
                Database::Embedded(d) => Ok(Watcher::Embedded(d.watch(prefix, start)?)),
                Database::Etcd(d) => Ok(Watcher::Etcd(d.watch(prefix, start).await?)),
            }
        })
        .await
    }

    /// Discards history before `revision` (watches cannot start before it afterwards).
    pub async fn compact(&self, revision: Revision) -> Result<()> {
        crate::core::metrics::timed("compact", async {
            match self {
                Database::Embedded(d) => d.compact(revision).await,
                Database::Etcd(d) => d.compact(revision).await,
            }
        })
        .await
    }

    /// The engine's members: etcd's member list; empty for the embedded store.
    pub async fn members(&self) -> Result<Vec<Member>> {
        crate::core::metrics::timed("members", async {
            match self {
                Database::Embedded(_) => Ok(Vec::new()),
                Database::Etcd(d) => d.members().await,
            }
        })
        .await
    }

    /// Adds an etcd member (a learner when `learner`): its id and the members after.
    pub async fn member_add(&self, peer_url: &str, learner: bool) -> Result<(u64, Vec<Member>)> {
        crate::core::metrics::timed("member_change", async {
            match self {
                Database::Embedded(_) => Err(DbError::Invalid("the embedded database has no members".into())),
                Database::Etcd(d) => d.member_add(peer_url, learner).await,
            }
        })
        .await
    }

    pub async fn member_promote(&self, id: u64) -> Result<()> {
        crate::core::metrics::timed("member_change", async {
            match self {
                Database::Embedded(_) => Err(DbError::Invalid("the embedded database has no members".into())),
                Database::Etcd(d) => d.member_promote(id).await,
            }
        })
        .await
    }

    pub async fn member_remove(&self, id: u64) -> Result<()> {
        crate::core::metrics::timed("member_change", async {
            match self {
                Database::Embedded(_) => Err(DbError::Invalid("the embedded database has no members".into())),
                Database::Etcd(d) => d.member_remove(id).await,
            }
        })
        .await
    }

    /// The member id of the etcd leader; `None` for the embedded store.
    pub async fn leader(&self) -> Result<Option<u64>> {
        crate::core::metrics::timed("leader", async {
            match self {
                Database::Embedded(_) => Ok(None),
                Database::Etcd(d) => d.leader().await.map(Some),
            }
        })
        .await
    }

    /// The largest number of operations one transaction may hold.
    pub fn max_txn_ops(&self) -> usize {
        match self {
            Database::Embedded(_) => usize::MAX,
            Database::Etcd(d) => d.max_txn_ops(),
        }
    }
}

/// Part of a change that must stay in one transaction (one node and its index keys, say).
pub struct Piece {
    pub compares: Vec<Compare>,
    pub ops: Vec<TxnOp>,
}

/// Groups pieces into transactions no larger than `limit` operations each.
pub fn batch(pieces: Vec<Piece>, limit: usize) -> Vec<Txn> {
    let mut out = Vec::new();
    let mut cur = Txn::new();
    for p in pieces {
        if !cur.success.is_empty()
            && (cur.compares.len() + p.compares.len() > limit || cur.success.len() + p.ops.len() > limit)
        {
            out.push(std::mem::take(&mut cur));
        }
        cur.compares.extend(p.compares);
        cur.success.extend(p.ops);
    }
    if !cur.success.is_empty() {
        out.push(cur);
    }
    out
}

/// Commits the pieces in as few transactions as the database allows, in order; false when one
/// of them failed its compares (the ones before it stay committed).
pub async fn commit_all(db: &Database, pieces: Vec<Piece>) -> Result<bool> {
    for txn in batch(pieces, db.max_txn_ops()) {
        if !db.txn(txn).await?.succeeded {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes what the puts of committed transactions wrote, where the keys still hold what they
/// wrote: the undo of a change split over several transactions that failed part-way.
pub async fn undo_puts(db: &Database, done: &[Txn]) {
    for t in done {
        let mut undo = Txn::new();
        for op in &t.success {
            if let TxnOp::Put { key, value, .. } = op {
                undo.compares.push(Compare::value_is(key.clone(), value.clone()));
                undo.success.push(TxnOp::delete(key.clone()));
            }
        }
        match db.txn(undo).await {
            Ok(r) if r.succeeded => {}
            Ok(_) => tracing::error!("could not undo part of a failed change: records changed meanwhile"),
            Err(e) => tracing::error!(error = %e, "could not undo part of a failed change"),
        }
    }
}
