//! The embedded backend: etcd's key-value semantics on a single redb file, for a solo head.
//!
//! Layout inside the file:
//! - `kv`: key → create revision, mod revision, version, lease, value;
//! - `meta`: the current revision and the newest compacted one;
//! - `history`: revision → the events of that revision (the last [`HISTORY_LIMIT`] revisions),
//!   so that a watch can resume from a revision as with etcd;
//! - `leases` and `lease_keys`: each lease's TTL and the keys bound to it.
//!
//! Every write is one redb write transaction with immediate durability (fsync before the call
//! returns). Lease renewals stay in memory: a renewal is not a disk write. On open every lease
//! gets a full TTL again, as etcd does when a new leader takes over.

use super::{DbError, Event, EventKind, KeyValue, LeaseId, OpResult, Result, Revision, Txn, TxnOp, TxnResult};
use redb::{MultimapTableDefinition, ReadableMultimapTable, ReadableTable, TableDefinition, WriteTransaction};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
const HISTORY: TableDefinition<i64, &[u8]> = TableDefinition::new("history");
const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");

/// Revisions of history kept for watches that resume.
pub const HISTORY_LIMIT: i64 = 100_000;
/// How often expired leases are looked for.
const REAP_INTERVAL: Duration = Duration::from_millis(100);

/// An open embedded store. Cheap to clone; the file closes when the last clone is dropped.
#[derive(Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

struct Inner {
    db: redb::Database,
    /// Serialises writers, so that events are published in revision order.
    write_lock: Mutex<()>,
    leases: Mutex<HashMap<LeaseId, LeaseState>>,
    events: broadcast::Sender<Arc<Batch>>,
}

struct LeaseState {
    ttl: i64,
    expires: Instant,
}

/// The events of one revision.
struct Batch {
    revision: Revision,
    events: Vec<Event>,
}

/// One key from a readable `kv` table (read-only or inside a write transaction).
fn get_in(t: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<Option<KeyValue>> {
    match t.get(key).map_err(storage)? {
        Some(v) => Ok(Some(decode_record(key, v.value())?)),
        None => Ok(None),
    }
}

/// Every key under `prefix` from a readable `kv` table, in key order.
fn range_in(t: &impl ReadableTable<&'static str, &'static [u8]>, prefix: &str) -> Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    for row in t.range(prefix..).map_err(storage)? {
        let (k, v) = row.map_err(storage)?;
        if !k.value().starts_with(prefix) {
            break;
        }
        out.push(decode_record(k.value(), v.value())?);
    }
    Ok(out)
}

fn storage(e: impl Into<redb::Error>) -> DbError {
    DbError::Storage(e.into().to_string())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data half-changed (redb's own
    // transaction is what commits), so a poisoned lock is safe to take over.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Embedded {
    /// Opens (creating if needed) the store at `path`. Must run inside a tokio runtime.
    pub fn open(path: &Path) -> Result<Embedded> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| DbError::Storage(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = redb::Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                DbError::Storage(format!("{} is already open in another process", path.display()))
            }
            e => DbError::Storage(format!("cannot open {}: {e}", path.display())),
        })?;
        Self::start(db)
    }

    /// A store that lives in memory only (unit tests).
    pub fn open_in_memory() -> Result<Embedded> {
        let db =
            redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(storage)?;
        Self::start(db)
    }

    fn start(db: redb::Database) -> Result<Embedded> {
        let tx = db.begin_write().map_err(storage)?;
        let mut leases = HashMap::new();
        {
            tx.open_table(KV).map_err(storage)?;
            tx.open_table(META).map_err(storage)?;
            tx.open_table(HISTORY).map_err(storage)?;
            tx.open_multimap_table(LEASE_KEYS).map_err(storage)?;
            let t = tx.open_table(LEASES).map_err(storage)?;
            let now = Instant::now();
            for row in t.iter().map_err(storage)? {
                let (id, ttl) = row.map_err(storage)?;
                let ttl = ttl.value();
                leases.insert(id.value(), LeaseState { ttl, expires: now + Duration::from_secs(ttl as u64) });
            }
        }
        tx.commit().map_err(storage)?;
        let (events, _) = broadcast::channel(4096);
        let inner = Arc::new(Inner { db, write_lock: Mutex::new(()), leases: Mutex::new(leases), events });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(reaper(weak));
        Ok(Embedded { inner })
    }

    /// Runs a transaction: one that only reads in a read transaction, here; one that may write
    /// on a blocking thread (commits wait for fsync).
    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        let reads_only =
            txn.success.iter().chain(&txn.failure).all(|op| matches!(op, TxnOp::Get { .. } | TxnOp::GetPrefix { .. }));
        if reads_only {
            return self.read_txn(&txn);
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.txn_blocking(txn))
            .await
            .map_err(|e| DbError::Storage(format!("transaction task failed: {e}")))?
    }

    fn read_txn(&self, txn: &Txn) -> Result<TxnResult> {
        let rtx = self.inner.db.begin_read().map_err(storage)?;
        let kv = rtx.open_table(KV).map_err(storage)?;
        let meta = rtx.open_table(META).map_err(storage)?;
        let revision = meta.get("revision").map_err(storage)?.map_or(0, |v| v.value());
        let mut succeeded = true;
        for c in &txn.compares {
            if !c.holds(get_in(&kv, &c.key)?.as_ref()) {
                succeeded = false;
                break;
            }
        }
        let ops = if succeeded { &txn.success } else { &txn.failure };
        let results = ops
            .iter()
            .map(|op| match op {
                TxnOp::Get { key } => Ok(OpResult::Got(get_in(&kv, key)?.into_iter().collect())),
                TxnOp::GetPrefix { prefix } => Ok(OpResult::Got(range_in(&kv, prefix)?)),
                _ => Err(DbError::Invalid("write operation in a read-only transaction".into())),
            })
            .collect::<Result<_>>()?;
        Ok(TxnResult { succeeded, revision, results })
    }

    fn txn_blocking(&self, txn: Txn) -> Result<TxnResult> {
        self.write(|w| {
            let mut ok = true;
            for c in &txn.compares {
                if !c.holds(w.get(&c.key)?.as_ref()) {
                    ok = false;
                    break;
                }
            }
            let ops = if ok { &txn.success } else { &txn.failure };
            let mut results = Vec::with_capacity(ops.len());
            for op in ops {
                results.push(match op {
                    TxnOp::Put { key, value, lease } => {
                        w.put(key, value, lease.unwrap_or(0))?;
                        OpResult::Put
                    }
                    TxnOp::Delete { key } => OpResult::Deleted(w.delete(key)? as i64),
                    TxnOp::DeletePrefix { prefix } => {
                        let keys: Vec<String> = w.range(prefix)?.into_iter().map(|kv| kv.key).collect();
                        for k in &keys {
                            w.delete(k)?;
                        }
                        OpResult::Deleted(keys.len() as i64)
                    }
                    TxnOp::Get { key } => OpResult::Got(w.get(key)?.into_iter().collect()),
                    TxnOp::GetPrefix { prefix } => OpResult::Got(w.range(prefix)?),
                });
            }
            Ok((ok, results))
        })
        .map(|((succeeded, results), revision)| TxnResult { succeeded, revision, results })
    }

    /// One write transaction: runs `f`, records history, commits, then publishes the events.
    fn write<R>(&self, f: impl FnOnce(&mut Writer<'_>) -> Result<R>) -> Result<(R, Revision)> {
        let _guard = lock(&self.inner.write_lock);
        let tx = self.inner.db.begin_write().map_err(storage)?;
        let (out, batch, dirty) = {
            let mut w = Writer::new(&tx, &self.inner.leases)?;
            let out = f(&mut w)?;
            let dirty = w.dirty;
            (out, w.finish()?, dirty)
        };
        if dirty {
            tx.commit().map_err(storage)?;
        } else {
            // Nothing changed (a failed compare, say): no commit, no disk write.
            tx.abort().map_err(storage)?;
        }
        let rev = batch.revision;
        if !batch.events.is_empty() {
            // No receiver is not an error: nobody is watching.
            let _ = self.inner.events.send(Arc::new(batch));
        }
        Ok((out, rev))
    }

    /// Every key under `prefix` and the revision of the snapshot.
    pub fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let rtx = self.inner.db.begin_read().map_err(storage)?;
        let kv = rtx.open_table(KV).map_err(storage)?;
        let meta = rtx.open_table(META).map_err(storage)?;
        let rev = meta.get("revision").map_err(storage)?.map_or(0, |v| v.value());
        Ok((range_in(&kv, prefix)?, rev))
    }

    pub async fn grant_lease(&self, ttl: i64) -> Result<LeaseId> {
        if ttl <= 0 {
            return Err(DbError::Invalid(format!("lease TTL {ttl} must be positive")));
        }
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let id = loop {
                let id = rand::random::<i64>() & i64::MAX;
                if id != 0 && !lock(&me.inner.leases).contains_key(&id) {
                    break id;
                }
            };
            me.write(|w| {
                w.leases.insert(id, ttl).map_err(storage)?;
                w.dirty = true;
                Ok(())
            })?;
            lock(&me.inner.leases)
                .insert(id, LeaseState { ttl, expires: Instant::now() + Duration::from_secs(ttl as u64) });
            Ok(id)
        })
        .await
        .map_err(|e| DbError::Storage(format!("lease task failed: {e}")))?
    }

    /// Renews a lease in memory (no disk write).
    pub fn keep_alive(&self, id: LeaseId) -> Result<i64> {
        let mut leases = lock(&self.inner.leases);
        let l = leases.get_mut(&id).ok_or(DbError::LeaseNotFound(id))?;
        l.expires = Instant::now() + Duration::from_secs(l.ttl as u64);
        Ok(l.ttl)
    }

    pub async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.revoke_blocking(id, false))
            .await
            .map_err(|e| DbError::Storage(format!("lease task failed: {e}")))?
            .map(|_| ())
    }

    /// Deletes a lease and its keys. With `only_if_expired`, does nothing for a lease that was
    /// renewed meanwhile. Returns whether the lease was removed.
    fn revoke_blocking(&self, id: LeaseId, only_if_expired: bool) -> Result<bool> {
        let (removed, _) = self.write(|w| {
            {
                let leases = lock(w.lease_state);
                match leases.get(&id) {
                    None => {
                        return if only_if_expired { Ok(false) } else { Err(DbError::LeaseNotFound(id)) };
                    }
                    Some(l) if only_if_expired && l.expires > Instant::now() => return Ok(false),
                    Some(_) => {}
                }
            }
            let keys: Vec<String> = w
                .lease_keys
                .get(id)
                .map_err(storage)?
                .map(|k| k.map(|k| k.value().to_string()).map_err(storage))
                .collect::<Result<_>>()?;
            for k in &keys {
                w.delete(k)?;
            }
            w.lease_keys.remove_all(id).map_err(storage)?;
            w.leases.remove(id).map_err(storage)?;
            w.dirty = true;
            lock(w.lease_state).remove(&id);
            Ok(true)
        })?;
        Ok(removed)
    }

    /// Expired leases, for the reaper.
    fn expired_leases(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        lock(&self.inner.leases).iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect()
    }

    pub fn watch(&self, prefix: &str, start: Option<Revision>) -> Result<EmbeddedWatcher> {
        // Subscribe before reading history, so nothing falls between the two.
        let rx = self.inner.events.subscribe();
        let mut w =
            EmbeddedWatcher { db: self.clone(), prefix: prefix.to_string(), next_rev: 0, rx, pending: VecDeque::new() };
        let current = self.current_revision()?;
        match start {
            Some(s) if s > 0 && s <= current => w.load_history(s)?,
            Some(s) if s > current => w.next_rev = s,
            _ => w.next_rev = current + 1,
        }
        Ok(w)
    }

    fn current_revision(&self) -> Result<Revision> {
        let rtx = self.inner.db.begin_read().map_err(storage)?;
        let meta = rtx.open_table(META).map_err(storage)?;
        Ok(meta.get("revision").map_err(storage)?.map_or(0, |v| v.value()))
    }

    /// Events of revisions `from..` still in the history, and the current revision.
    fn history(&self, from: Revision, prefix: &str) -> Result<(Vec<Event>, Revision)> {
        let rtx = self.inner.db.begin_read().map_err(storage)?;
        let meta = rtx.open_table(META).map_err(storage)?;
        let rev = meta.get("revision").map_err(storage)?.map_or(0, |v| v.value());
        let compacted = meta.get("compacted").map_err(storage)?.map_or(0, |v| v.value());
        if from <= compacted {
            return Err(DbError::Compacted { requested: from, compacted: compacted + 1 });
        }
        let hist = rtx.open_table(HISTORY).map_err(storage)?;
        let mut out = Vec::new();
        for row in hist.range(from..).map_err(storage)? {
            let (_, v) = row.map_err(storage)?;
            out.extend(decode_events(v.value())?.into_iter().filter(|e| e.kv.key.starts_with(prefix)));
        }
        Ok((out, rev))
    }

    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            me.write(|w| {
                let current = w.revision;
                if revision > current {
                    return Err(DbError::Invalid(format!("revision {revision} is in the future (current {current})")));
                }
                let old = w.meta.get("compacted").map_err(storage)?.map_or(0, |v| v.value());
                if revision - 1 > old {
                    w.history.retain_in(..revision, |_, _| false).map_err(storage)?;
                    w.dirty = true;
                    w.meta.insert("compacted", revision - 1).map_err(storage)?;
                }
                Ok(())
            })
            .map(|_| ())
        })
        .await
        .map_err(|e| DbError::Storage(format!("compaction task failed: {e}")))?
    }
}

/// Deletes the keys of expired leases until the store is dropped.
async fn reaper(inner: Weak<Inner>) {
    let mut tick = tokio::time::interval(REAP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let db = Embedded { inner };
        let expired = db.expired_leases();
        if expired.is_empty() {
            continue;
        }
        let r = tokio::task::spawn_blocking(move || {
            for id in expired {
                if let Err(e) = db.revoke_blocking(id, true) {
                    tracing::warn!(lease = id, error = %e, "cannot expire lease");
                }
            }
        })
        .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "lease reaper task failed");
        }
    }
}

/// The tables of one write transaction, and the events it produces.
struct Writer<'t> {
    kv: redb::Table<'t, &'static str, &'static [u8]>,
    meta: redb::Table<'t, &'static str, i64>,
    history: redb::Table<'t, i64, &'static [u8]>,
    leases: redb::Table<'t, i64, i64>,
    lease_keys: redb::MultimapTable<'t, i64, &'static str>,
    lease_state: &'t Mutex<HashMap<LeaseId, LeaseState>>,
    /// The revision before this transaction.
    revision: Revision,
    events: Vec<Event>,
    /// Something was written (and must be committed).
    dirty: bool,
}

impl<'t> Writer<'t> {
    fn new(tx: &'t WriteTransaction, lease_state: &'t Mutex<HashMap<LeaseId, LeaseState>>) -> Result<Self> {
        let meta = tx.open_table(META).map_err(storage)?;
        let revision = meta.get("revision").map_err(storage)?.map_or(0, |v| v.value());
        Ok(Writer {
            kv: tx.open_table(KV).map_err(storage)?,
            meta,
            history: tx.open_table(HISTORY).map_err(storage)?,
            leases: tx.open_table(LEASES).map_err(storage)?,
            lease_keys: tx.open_multimap_table(LEASE_KEYS).map_err(storage)?,
            lease_state,
            revision,
            events: Vec::new(),
            dirty: false,
        })
    }

    fn new_rev(&self) -> Revision {
        self.revision + 1
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        get_in(&self.kv, key)
    }

    fn range(&self, prefix: &str) -> Result<Vec<KeyValue>> {
        range_in(&self.kv, prefix)
    }

    fn put(&mut self, key: &str, value: &[u8], lease: LeaseId) -> Result<()> {
        if lease != 0 && !lock(self.lease_state).contains_key(&lease) {
            return Err(DbError::LeaseNotFound(lease));
        }
        let old = self.get(key)?;
        let rev = self.new_rev();
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision: old.as_ref().map_or(rev, |o| o.create_revision),
            mod_revision: rev,
            version: old.as_ref().map_or(1, |o| o.version + 1),
            lease,
        };
        if let Some(o) = &old {
            if o.lease != 0 && o.lease != lease {
                self.lease_keys.remove(o.lease, key).map_err(storage)?;
            }
        }
        if lease != 0 {
            self.lease_keys.insert(lease, key).map_err(storage)?;
        }
        self.kv.insert(key, encode_record(&kv).as_slice()).map_err(storage)?;
        self.dirty = true;
        self.events.push(Event { kind: EventKind::Put, kv });
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<bool> {
        let Some(old) = self.get(key)? else {
            return Ok(false);
        };
        self.kv.remove(key).map_err(storage)?;
        self.dirty = true;
        if old.lease != 0 {
            self.lease_keys.remove(old.lease, key).map_err(storage)?;
        }
        let rev = self.new_rev();
        self.events.push(Event {
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_string(),
                value: Vec::new(),
                create_revision: 0,
                mod_revision: rev,
                version: 0,
                lease: 0,
            },
        });
        Ok(true)
    }

    /// Records the revision and its history entry when anything changed.
    fn finish(mut self) -> Result<Batch> {
        if self.events.is_empty() {
            return Ok(Batch { revision: self.revision, events: Vec::new() });
        }
        let rev = self.new_rev();
        self.meta.insert("revision", rev).map_err(storage)?;
        self.history.insert(rev, encode_events(&self.events).as_slice()).map_err(storage)?;
        let drop_rev = rev - HISTORY_LIMIT;
        if drop_rev > 0 && self.history.remove(drop_rev).map_err(storage)?.is_some() {
            let old = self.meta.get("compacted").map_err(storage)?.map_or(0, |v| v.value());
            if drop_rev > old {
                self.meta.insert("compacted", drop_rev).map_err(storage)?;
            }
        }
        Ok(Batch { revision: rev, events: std::mem::take(&mut self.events) })
    }
}

/// A watch on the embedded store.
pub struct EmbeddedWatcher {
    db: Embedded,
    prefix: String,
    /// Events below this revision have been delivered (or queued in `pending`).
    next_rev: Revision,
    rx: broadcast::Receiver<Arc<Batch>>,
    pending: VecDeque<Event>,
}

impl EmbeddedWatcher {
    fn load_history(&mut self, from: Revision) -> Result<()> {
        let (events, current) = self.db.history(from, &self.prefix)?;
        self.pending.extend(events);
        self.next_rev = current + 1;
        Ok(())
    }

    pub fn next_revision(&self) -> Revision {
        self.pending.front().map_or(self.next_rev, |e| e.kv.mod_revision)
    }

    pub async fn next(&mut self) -> Result<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(e);
            }
            match self.rx.recv().await {
                Ok(batch) => {
                    if batch.revision < self.next_rev {
                        continue;
                    }
                    self.next_rev = batch.revision + 1;
                    self.pending.extend(batch.events.iter().filter(|e| e.kv.key.starts_with(&self.prefix)).cloned());
                }
                // Fell behind the live feed: catch up from the stored history.
                Err(broadcast::error::RecvError::Lagged(_)) => self.load_history(self.next_rev)?,
                Err(broadcast::error::RecvError::Closed) => return Err(DbError::Closed),
            }
        }
    }
}

fn encode_record(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kv.value.len());
    for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
        out.extend_from_slice(&n.to_le_bytes());
    }
    out.extend_from_slice(&kv.value);
    out
}

fn decode_record(key: &str, b: &[u8]) -> Result<KeyValue> {
    if b.len() < 32 {
        return Err(DbError::Storage(format!("corrupt record for key {key:?}")));
    }
    let n = |i: usize| i64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    Ok(KeyValue {
        key: key.to_string(),
        create_revision: n(0),
        mod_revision: n(1),
        version: n(2),
        lease: n(3),
        value: b[32..].to_vec(),
    })
}

fn encode_events(events: &[Event]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 1,
            EventKind::Delete => 2,
        });
        let rec = encode_record(&e.kv);
        out.extend_from_slice(&(e.kv.key.len() as u32).to_le_bytes());
        out.extend_from_slice(e.kv.key.as_bytes());
        out.extend_from_slice(&(rec.len() as u32).to_le_bytes());
        out.extend_from_slice(&rec);
    }
    out
}

fn decode_events(mut b: &[u8]) -> Result<Vec<Event>> {
    let corrupt = || DbError::Storage("corrupt history entry".into());
    let mut out = Vec::new();
    let take = |b: &mut &[u8], n: usize| -> Result<Vec<u8>> {
        if b.len() < n {
            return Err(corrupt());
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h.to_vec())
    };
    while !b.is_empty() {
        let kind = match take(&mut b, 1)?[0] {
            1 => EventKind::Put,
            2 => EventKind::Delete,
            _ => return Err(corrupt()),
        };
        let klen = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| corrupt())?) as usize;
        let key = String::from_utf8(take(&mut b, klen)?).map_err(|_| corrupt())?;
        let rlen = u32::from_le_bytes(take(&mut b, 4)?.try_into().map_err(|_| corrupt())?) as usize;
        let kv = decode_record(&key, &take(&mut b, rlen)?)?;
        out.push(Event { kind, kv });
    }
    Ok(out)
}
