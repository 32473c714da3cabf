//! The etcd backend, through the `etcd-client` crate. Every key lives under [`KEY_PREFIX`], so a
//! shared external etcd can hold other data too. Every unary call has a deadline
//! ([`super::OP_TIMEOUT`]), so a member without quorum answers "unavailable" instead of hanging;
//! HTTP/2 keep-alives make a dead connection visible to watches within seconds.

use super::{
    CmpOp, CmpTarget, DbError, Event, EventKind, KeyValue, LeaseId, Member, OP_TIMEOUT, OpResult, Refusal, Result,
    Revision, Txn, TxnOp, TxnResult,
};
use etcd_client as ec;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

/// Prefix of every ClusterWare key in etcd.
pub const KEY_PREFIX: &str = "/clusterware/";

/// A connection to an etcd cluster. Cheap to clone.
#[derive(Clone)]
pub struct Etcd {
    client: ec::Client,
    max_txn_ops: usize,
}

/// etcd's refusals by their text (etcd's own client maps its errors by text too: `rpctypes`).
fn refusal(msg: &str) -> Option<Refusal> {
    Some(if msg.contains("unhealthy cluster") {
        Refusal::Unhealthy
    } else if msg.contains("too many learner") {
        Refusal::TooManyLearners
    } else if msg.contains("in sync with leader") {
        Refusal::LearnerNotInSync
    } else if msg.contains("can only promote a learner member") {
        Refusal::NotLearner
    } else if msg.contains("not supported for learner") {
        Refusal::Learner
    } else {
        return None;
    })
}

fn map_err(e: ec::Error) -> DbError {
    match e {
        ec::Error::GRpcStatus(s) => {
            let msg = s.message().to_string();
            if let Some(why) = refusal(&msg) {
                return DbError::Refused { why, message: msg };
            }
            match s.code() {
                tonic_code::InvalidArgument | tonic_code::FailedPrecondition if msg.contains("compacted") => {
                    DbError::Compacted { requested: 0, compacted: 0 }
                }
                tonic_code::OutOfRange if msg.contains("compacted") => {
                    DbError::Compacted { requested: 0, compacted: 0 }
                }
                tonic_code::InvalidArgument => DbError::Invalid(msg),
                tonic_code::NotFound if msg.contains("lease not found") => DbError::LeaseNotFound(0),
                // Everything else is answered as "unavailable" (the caller may try again): no
                // leader, no quorum, timeouts, overload, a member going away, and the refusals of
                // membership calls that are not typed above (a member already removed, …).
                tonic_code::Ok
                | tonic_code::Cancelled
                | tonic_code::Unknown
                | tonic_code::DeadlineExceeded
                | tonic_code::NotFound
                | tonic_code::AlreadyExists
                | tonic_code::PermissionDenied
                | tonic_code::ResourceExhausted
                | tonic_code::FailedPrecondition
                | tonic_code::Aborted
                | tonic_code::OutOfRange
                | tonic_code::Unimplemented
                | tonic_code::Internal
                | tonic_code::Unavailable
                | tonic_code::DataLoss
                | tonic_code::Unauthenticated => DbError::Unavailable(msg),
            }
        }
        ec::Error::InvalidArgs(m) => DbError::Invalid(m),
        ec::Error::LeaseKeepAliveError(m) if m.contains("not found") => DbError::LeaseNotFound(0),
        other => DbError::Unavailable(other.to_string()),
    }
}

use tonic::Code as tonic_code;

async fn deadline<T>(f: impl Future<Output = std::result::Result<T, ec::Error>>) -> Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(map_err),
        Err(_) => Err(DbError::Unavailable(format!("no answer within {} s (no quorum?)", OP_TIMEOUT.as_secs()))),
    }
}

/// Runs a read again while etcd is briefly without a leader (an election after a member died
/// answers "leader changed" or "no leader"): reads are safe to repeat. Gives up after
/// [`OP_TIMEOUT`] in all.
async fn retry_read<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let start = std::time::Instant::now();
    loop {
        match f().await {
            Err(DbError::Unavailable(m)) if start.elapsed() < OP_TIMEOUT && transient(&m) => {
                tracing::debug!(error = %m, "etcd read retried");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r => return r,
        }
    }
}

fn transient(m: &str) -> bool {
    ["leader changed", "no leader", "timed out", "too many requests", "not capable"].iter().any(|t| m.contains(t))
}

fn full(key: &str) -> String {
    format!("{KEY_PREFIX}{key}")
}

fn convert(kv: &ec::KeyValue) -> Result<KeyValue> {
    let k = kv.key_str().map_err(|_| DbError::Storage("non-UTF-8 key in etcd".into()))?;
    let key = k.strip_prefix(KEY_PREFIX).ok_or_else(|| DbError::Storage(format!("key {k:?} outside {KEY_PREFIX}")))?;
    Ok(KeyValue {
        key: key.to_string(),
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    })
}

fn member(m: &ec::Member) -> Member {
    Member {
        id: m.id(),
        name: m.name().to_string(),
        peer_urls: m.peer_urls().to_vec(),
        client_urls: m.client_urls().to_vec(),
        is_learner: m.is_learner(),
    }
}

/// Largest gRPC message accepted or sent: a range over 100,000 nodes is tens of MiB, beyond
/// tonic's 4 MiB default.
const MAX_MESSAGE: usize = 512 << 20;

fn prefix_get() -> ec::GetOptions {
    ec::GetOptions::new().with_prefix()
}

/// The scheme of a member reached through its unix socket.
pub const UNIX_PREFIX: &str = "unix://";

/// A gRPC channel to the etcd member listening on the unix socket at `path` (the same timeouts
/// and keep-alives as over TCP).
pub async fn unix_channel(path: &str) -> std::result::Result<tonic::transport::Channel, ec::Error> {
    let path = std::path::PathBuf::from(path);
    // The authority is not used: every connection goes to the socket.
    tonic::transport::Endpoint::from_static("http://etcd-member")
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tokio::net::UnixStream::connect(path).await?))
            }
        }))
        .await
        .map_err(ec::Error::from)
}

impl Etcd {
    /// Connects to the endpoints and checks that the cluster answers.
    /// `unix://PATH` is a head's own member, reached through its socket (one endpoint only).
    pub async fn connect(endpoints: &[String], max_txn_ops: usize) -> Result<Etcd> {
        let opts = ec::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let client = match endpoints {
            [one] if one.starts_with(UNIX_PREFIX) => {
                let channel = deadline(unix_channel(&one[UNIX_PREFIX.len()..])).await?;
                deadline(ec::Client::from_channel(ec::Channel::Tonic(channel), Some(opts))).await?
            }
            _ => deadline(ec::Client::connect(endpoints, Some(opts))).await?,
        };
        let me = Etcd { client, max_txn_ops };
        me.range("\u{0}probe").await?;
        Ok(me)
    }

    pub fn max_txn_ops(&self) -> usize {
        self.max_txn_ops
    }

    fn kv(&self) -> ec::KvClient {
        self.client.kv_client().max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE)
    }

    pub async fn range(&self, prefix: &str) -> Result<(Vec<KeyValue>, Revision)> {
        let r = retry_read(|| {
            let mut kv = self.kv();
            async move { deadline(kv.get(full(prefix), Some(prefix_get()))).await }
        })
        .await?;
        let rev = r.header().map_or(0, |h| h.revision());
        Ok((r.kvs().iter().map(convert).collect::<Result<_>>()?, rev))
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResult> {
        if txn.size() > self.max_txn_ops {
            return Err(DbError::Invalid(format!(
                "transaction of {} operations is larger than the database allows ({})",
                txn.size(),
                self.max_txn_ops
            )));
        }
        let compares: Vec<ec::Compare> = txn
            .compares
            .iter()
            .map(|c| {
                let op = match c.op {
                    CmpOp::Equal => ec::CompareOp::Equal,
                    CmpOp::NotEqual => ec::CompareOp::NotEqual,
                    CmpOp::Greater => ec::CompareOp::Greater,
                    CmpOp::Less => ec::CompareOp::Less,
                };
                let k = full(&c.key);
                match &c.target {
                    CmpTarget::Version(v) => ec::Compare::version(k, op, *v),
                    CmpTarget::CreateRevision(r) => ec::Compare::create_revision(k, op, *r),
                    CmpTarget::ModRevision(r) => ec::Compare::mod_revision(k, op, *r),
                    CmpTarget::Value(v) => ec::Compare::value(k, op, v.clone()),
                }
            })
            .collect();
        let ops = |ops: &[TxnOp]| -> Vec<ec::TxnOp> {
            ops.iter()
                .map(|op| match op {
                    TxnOp::Put { key, value, lease } => {
                        ec::TxnOp::put(full(key), value.clone(), lease.map(|l| ec::PutOptions::new().with_lease(l)))
                    }
                    TxnOp::Delete { key } => ec::TxnOp::delete(full(key), None),
                    TxnOp::DeletePrefix { prefix } => {
                        ec::TxnOp::delete(full(prefix), Some(ec::DeleteOptions::new().with_prefix()))
                    }
                    TxnOp::Get { key } => ec::TxnOp::get(full(key), None),
                    TxnOp::GetPrefix { prefix } => ec::TxnOp::get(full(prefix), Some(prefix_get())),
                })
                .collect()
        };
        let t = ec::Txn::new().when(compares).and_then(ops(&txn.success)).or_else(ops(&txn.failure));
        let lease_in_txn = txn.success.iter().chain(&txn.failure).find_map(|op| match op {
            TxnOp::Put { lease: Some(l), .. } => Some(*l),
            _ => None,
        });
        let reads_only =
            txn.success.iter().chain(&txn.failure).all(|op| matches!(op, TxnOp::Get { .. } | TxnOp::GetPrefix { .. }));
        let r = if reads_only {
            retry_read(|| {
                let (mut kv, t) = (self.kv(), t.clone());
                async move { deadline(kv.txn(t)).await }
            })
            .await
        } else {
            let mut kv = self.kv();
            deadline(kv.txn(t)).await
        };
        let r = match r {
            Err(DbError::LeaseNotFound(_)) => {
                return Err(DbError::LeaseNotFound(lease_in_txn.unwrap_or(0)));
            }
            r => r?,
        };
        let mut results = Vec::new();
        for op in r.op_responses() {
            results.push(match op {
                ec::TxnOpResponse::Put(_) => OpResult::Put,
                ec::TxnOpResponse::Delete(d) => OpResult::Deleted(d.deleted()),
                ec::TxnOpResponse::Get(g) => OpResult::Got(g.kvs().iter().map(convert).collect::<Result<_>>()?),
                ec::TxnOpResponse::Txn(_) => {
                    return Err(DbError::Storage("unexpected nested transaction".into()));
                }
            });
        }
        Ok(TxnResult { succeeded: r.succeeded(), revision: r.header().map_or(0, |h| h.revision()), results })
    }

    pub async fn grant_lease(&self, ttl: i64) -> Result<LeaseId> {
        let mut c = self.client.clone();
        Ok(deadline(c.lease_grant(ttl, None)).await?.id())
    }

    pub async fn keep_alive(&self, id: LeaseId) -> Result<i64> {
        let mut c = self.client.clone();
        let once = async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(id).await?;
            keeper.keep_alive().await?;
            stream.message().await
        };
        match deadline(once).await {
            Ok(Some(r)) if r.ttl() > 0 => Ok(r.ttl()),
            Ok(_) | Err(DbError::LeaseNotFound(_)) => Err(DbError::LeaseNotFound(id)),
            Err(e) => Err(e),
        }
    }

    pub async fn revoke_lease(&self, id: LeaseId) -> Result<()> {
        let mut c = self.client.clone();
        match deadline(c.lease_revoke(id)).await {
            Err(DbError::LeaseNotFound(_)) => Err(DbError::LeaseNotFound(id)),
            r => r.map(|_| ()),
        }
    }

    pub async fn compact(&self, revision: Revision) -> Result<()> {
        let mut c = self.client.clone();
        match deadline(c.compact(revision, Some(ec::CompactionOptions::new().with_physical()))).await {
            Ok(_) | Err(DbError::Compacted { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The id of the current leader, as this member sees it.
    pub async fn leader(&self) -> Result<u64> {
        let r = retry_read(|| {
            let mut c = self.client.clone();
            async move { deadline(c.status()).await }
        })
        .await?;
        Ok(r.leader())
    }

    pub async fn members(&self) -> Result<Vec<Member>> {
        let r = retry_read(|| {
            let mut c = self.client.clone();
            async move { deadline(c.member_list()).await }
        })
        .await?;
        Ok(r.members().iter().map(member).collect())
    }

    /// Adds a member, as a learner when `learner`; returns its id and the member list after.
    pub async fn member_add(&self, peer_url: &str, learner: bool) -> Result<(u64, Vec<Member>)> {
        let mut c = self.client.clone();
        let opts = if learner { ec::MemberAddOptions::new().with_is_learner() } else { ec::MemberAddOptions::new() };
        let r = deadline(c.member_add([peer_url], Some(opts))).await?;
        let id = r.member().map(|m| m.id()).ok_or_else(|| DbError::Unavailable("etcd added no member".into()))?;
        Ok((id, r.member_list().iter().map(member).collect()))
    }

    pub async fn member_promote(&self, id: u64) -> Result<()> {
        let mut c = self.client.clone();
        deadline(c.member_promote(id)).await.map(|_| ())
    }

    pub async fn member_remove(&self, id: u64) -> Result<()> {
        let mut c = self.client.clone();
        deadline(c.member_remove(id)).await.map(|_| ())
    }

    pub async fn watch(&self, prefix: &str, start: Option<Revision>) -> Result<EtcdWatcher> {
        let next_rev = match start {
            Some(s) if s > 0 => s,
            _ => self.range("\u{0}probe").await?.1 + 1,
        };
        let mut w = EtcdWatcher {
            client: self.client.clone(),
            prefix: prefix.to_string(),
            next_rev,
            stream: None,
            pending: VecDeque::new(),
            failures: 0,
        };
        w.connect().await?;
        Ok(w)
    }
}

/// A prefix watch on etcd that re-creates itself from the next revision after a broken stream.
pub struct EtcdWatcher {
    client: ec::Client,
    prefix: String,
    next_rev: Revision,
    stream: Option<ec::WatchStream>,
    pending: VecDeque<Event>,
    failures: u32,
}

impl EtcdWatcher {
    async fn connect(&mut self) -> Result<()> {
        let opts = ec::WatchOptions::new().with_prefix().with_start_revision(self.next_rev);
        let stream = deadline(self.client.watch(full(&self.prefix), Some(opts))).await?;
        self.stream = Some(stream);
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
            if self.stream.is_none() {
                if self.failures > 0 {
                    // Bounded backoff: 100 ms doubling to 2 s, logged every time.
                    let ms = 100u64 << self.failures.min(5);
                    tokio::time::sleep(Duration::from_millis(ms.min(2000))).await;
                }
                if let Err(e) = self.connect().await {
                    self.failures += 1;
                    tracing::warn!(prefix = %self.prefix, error = %e, attempt = self.failures, "watch reconnect failed");
                    continue;
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) => {
                    self.failures = 0;
                    if resp.compact_revision() > 0 && resp.compact_revision() >= self.next_rev {
                        self.stream = None;
                        return Err(DbError::Compacted {
                            requested: self.next_rev,
                            compacted: resp.compact_revision(),
                        });
                    }
                    if resp.canceled() {
                        tracing::warn!(prefix = %self.prefix, reason = %resp.cancel_reason(), "watch canceled by etcd; re-creating");
                        self.stream = None;
                        self.failures += 1;
                        continue;
                    }
                    let floor = self.next_rev;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let mut kv = convert(kv)?;
                        let kind = match ev.event_type() {
                            ec::EventType::Put => EventKind::Put,
                            ec::EventType::Delete => {
                                kv.value.clear();
                                EventKind::Delete
                            }
                        };
                        if kv.mod_revision < floor {
                            continue;
                        }
                        self.next_rev = self.next_rev.max(kv.mod_revision + 1);
                        self.pending.push_back(Event { kind, kv });
                    }
                }
                Ok(None) => {
                    tracing::warn!(prefix = %self.prefix, "watch stream ended; re-creating");
                    self.stream = None;
                    self.failures += 1;
                }
                Err(e) => {
                    tracing::warn!(prefix = %self.prefix, error = %e, "watch stream broke; re-creating");
                    self.stream = None;
                    self.failures += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_refusals_are_typed() {
        for (text, why) in [
            ("etcdserver: unhealthy cluster", Refusal::Unhealthy),
            ("etcdserver: too many learner members in cluster", Refusal::TooManyLearners),
            ("etcdserver: can only promote a learner member which is in sync with leader", Refusal::LearnerNotInSync),
            ("etcdserver: can only promote a learner member", Refusal::NotLearner),
            ("etcdserver: rpc not supported for learner", Refusal::Learner),
        ] {
            assert_eq!(refusal(text), Some(why), "{text}");
        }
        assert_eq!(refusal("etcdserver: request timed out"), None);
    }
}
