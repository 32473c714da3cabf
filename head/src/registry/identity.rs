//! Node identity: a node proves who it is with a certificate from the cluster CA before it gets
//! anything past the firmware stage (status, long polls, keys, scripts, its root image).
//!
//! It gets the certificate by trading a one-time **enrollment token** over HTTPS
//! (`POST /agent/enroll`): the boot script carries one (made when the node itself fetches the
//! script, from its registered address), or an administrator makes one for a node that does not
//! network-boot (`scyld-nodectl enroll`). A token is 32 random bytes; the database keeps only its
//! SHA-256 (`enroll/<hash>`), bound to the node's uid, MAC and address, valid for
//! [`ENROLL_TOKEN_SECS`] and kept under a lease that the tokens made within a minute share (a
//! boot storm's scripts make a token each: a lease for each was two more writes per node, its
//! grant and its expiry); the trade deletes it in the same transaction that records the node's
//! new certificate (`node_certs/<uid>`, its SHA-256), so a token works once, through any head, and
//! only from the node's registered address with its MAC. A node holds one current certificate:
//! enrolling again (the next boot) replaces it, and `scyld-nodectl revoke` deletes it, which
//! every head sees at once through its copy of `node_certs/`. The HTTPS listener asks every
//! client for a certificate and checks it against the CA (`core::tls`); whether it is a node's
//! current one is decided here.

use crate::core::admission::{Admission, RETRY_AFTER_SECS};
use crate::core::complaints::Complaints;
use crate::core::db::{Compare, Database, DbError, LeaseId, Piece, Txn, TxnOp, commit_all};
use crate::core::follow::Mirror;
use crate::core::http::ClientCert;
use crate::core::schema::{self, EnrollRecord, NodeCertRecord};
use crate::core::supervisor::Supervisor;
use crate::core::unix_now as now;
use crate::registry::cache::NodeCache;
use clusterware_shared::agent::{ENROLL_TOKEN_PREFIX, ENROLL_TOKEN_SECS, Enroll, EnrollToken, Enrolled};
use clusterware_shared::api::{ErrorKind, Node};
use clusterware_shared::pki::Ca;
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// How long a node's certificate is valid (a network-booted node gets a new one at each boot).
pub const NODE_CERT_DAYS: i64 = 365;

/// Enrollments a head carries out at once. A rack that boots at once sends its enrollments
/// together (10,000 simulated nodes through one head in under 2 s): each takes a slot, the rest
/// wait in line for one, so that a trade the head starts finishes well within the agent's limit
/// (`client::ENROLL_LIMIT`, 30 s). A node that gave up on a trade the head still carried out would
/// have lost its one-time token until its next network boot.
const ENROLL_SLOTS: u32 = 32;

/// Enrollments waiting in line for a slot, at most (each holds only its connection).
const ENROLL_LINE: u32 = 4096;

/// The longest an enrollment waits in line; then its node is answered 503 with `Retry-After`,
/// its token untouched, and asks another head or this one again.
const ENROLL_WAIT: Duration = Duration::from_secs(10);

/// How long an enrollment whose write had no answer waits to learn whether it was applied (etcd
/// gives up on a request after about 7 s; one it applies shows by then).
const TRADE_OUTCOME_WAIT: Duration = Duration::from_secs(10);

/// How long tokens made one after another share a lease; the lease lasts that much longer than
/// a token, so that none goes before it expires.
const TOKEN_LEASE_SHARED: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("cluster database: {0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Internal(String),
}

impl crate::core::http::HasKind for IdentityError {
    fn kind(&self) -> ErrorKind {
        match self {
            IdentityError::Invalid(_) => ErrorKind::BadRequest,
            IdentityError::Refused(_) => ErrorKind::Forbidden,
            IdentityError::Db(e) => e.kind(),
            IdentityError::Internal(_) => ErrorKind::Internal,
        }
    }
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Enrollment and the nodes' current certificates.
pub struct Identity {
    db: Database,
    nodes: Arc<NodeCache>,
    certs: Arc<Mirror<NodeCertRecord>>,
    ca: Ca,
    complaints: Complaints,
    /// Slots for enrollments ([`ENROLL_SLOTS`]).
    admission: Admission,
    /// The current certificates' fingerprints, and the change of `certs` they were taken at
    /// ([`is_node`](Identity::is_node)).
    fingerprints: std::sync::Mutex<(Option<u64>, std::collections::HashSet<String>)>,
    /// The lease new tokens are put under, and when it was granted ([`TOKEN_LEASE_SHARED`]).
    token_lease: tokio::sync::Mutex<Option<(LeaseId, tokio::time::Instant)>>,
}

impl Identity {
    pub fn spawn(db: Database, nodes: Arc<NodeCache>, ca: Ca, sup: &Supervisor) -> Arc<Identity> {
        let certs = Mirror::spawn(db.clone(), schema::NODE_CERTS, sup);
        let admission = Admission::with_line(ENROLL_SLOTS, 0, ENROLL_LINE, ENROLL_WAIT);
        Arc::new(Identity {
            db,
            nodes,
            certs,
            ca,
            complaints: Complaints::default(),
            admission,
            fingerprints: Default::default(),
            token_lease: Default::default(),
        })
    }

    /// A new one-time token for `node` (the boot script's).
    pub async fn token_for(&self, node: &Node) -> Result<EnrollToken, IdentityError> {
        Ok(self.tokens_for(std::slice::from_ref(node)).await?.remove(0))
    }

    /// New one-time tokens for `nodes` (an administrator's, for nodes that do not network-boot):
    /// under the shared lease, in as few transactions as the database takes.
    pub async fn tokens_for(&self, nodes: &[Node]) -> Result<Vec<EnrollToken>, IdentityError> {
        let expires = now() + ENROLL_TOKEN_SECS;
        let mut out = Vec::with_capacity(nodes.len());
        let mut records = Vec::with_capacity(nodes.len());
        for node in nodes {
            let token = format!("{ENROLL_TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
            let mac = *node.macs.first().ok_or_else(|| IdentityError::Invalid(format!("{} has no MAC", node.name)))?;
            let rec = EnrollRecord { uid: node.uid.clone(), macs: node.macs.clone(), ip: node.ip, expires };
            let body = serde_json::to_vec(&rec).map_err(|e| IdentityError::Internal(e.to_string()))?;
            records.push((schema::enroll(&hash(&token)), body));
            out.push(EnrollToken { uid: node.uid.clone(), name: node.name.clone(), mac, token, expires });
        }
        let pieces = |lease: LeaseId| {
            let put = |(key, body): &(String, Vec<u8>)| TxnOp::put_with_lease(key.clone(), body.clone(), lease);
            records.iter().map(|r| Piece { compares: vec![], ops: vec![put(r)] }).collect::<Vec<_>>()
        };
        let lease = self.token_lease(false).await?;
        match commit_all(&self.db, pieces(lease)).await {
            // The shared lease is gone (revoked, or a database loaded from a dump): a new one.
            Err(DbError::LeaseNotFound(_)) => {
                let lease = self.token_lease(true).await?;
                commit_all(&self.db, pieces(lease)).await?;
            }
            r => {
                r?;
            }
        }
        Ok(out)
    }

    /// The lease for new tokens: the shared one while it is younger than [`TOKEN_LEASE_SHARED`]
    /// (unless `fresh`), else a new one, valid that much longer than a token. Requests wait for
    /// a grant under way rather than make their own, at most as long as a database call may take
    /// (a database that does not answer fails them together, not one after another).
    async fn token_lease(&self, fresh: bool) -> Result<LeaseId, DbError> {
        let mut shared = tokio::time::timeout(crate::core::db::OP_TIMEOUT, self.token_lease.lock())
            .await
            .map_err(|_| DbError::Unavailable("no lease for enrollment tokens in time".into()))?;
        match *shared {
            Some((lease, at)) if !fresh && at.elapsed() < TOKEN_LEASE_SHARED => Ok(lease),
            _ => {
                let ttl = ENROLL_TOKEN_SECS + TOKEN_LEASE_SHARED.as_secs();
                let lease = self.db.grant_lease(ttl as i64).await?;
                *shared = Some((lease, tokio::time::Instant::now()));
                Ok(lease)
            }
        }
    }

    /// Trades a token for the node's certificate: the token must be one this cluster made for the
    /// node with this MAC, unused and unexpired, and the request must come from the node's
    /// registered address. The old certificate of the node stops working.
    pub async fn enroll(&self, req: &Enroll, peer: IpAddr) -> Result<Enrolled, IdentityError> {
        let refused = |why: String| {
            self.complaints.complain(format!("enroll {peer}"), || {
                tracing::warn!(%peer, mac = %req.mac, "enrollment refused: {why} (logged once a minute per address)")
            });
            IdentityError::Refused(format!("enrollment refused: {why}"))
        };
        let well_formed = req
            .token
            .strip_prefix(ENROLL_TOKEN_PREFIX)
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        if !well_formed {
            return Err(IdentityError::Invalid(format!(
                "an enrollment token is {ENROLL_TOKEN_PREFIX} and 64 hexadecimal digits"
            )));
        }
        let key = schema::enroll(&hash(&req.token));
        let Some(kv) = self.db.get(&key).await? else {
            return Err(refused("no such token (used already, expired, or never made by this cluster)".into()));
        };
        let rec: EnrollRecord =
            serde_json::from_slice(&kv.value).map_err(|e| IdentityError::Internal(format!("{key}: {e}")))?;
        let Some(node) = self.nodes.by_uid(&rec.uid) else {
            return Err(refused("the token's node no longer exists".into()));
        };
        if !rec.macs.contains(&req.mac) || !node.macs.contains(&req.mac) {
            return Err(refused(format!("the token was not made for MAC {}", req.mac)));
        }
        if peer != IpAddr::V4(node.ip) || rec.ip != node.ip {
            return Err(refused(format!("{} enrolls only from its address {}", node.name, node.ip)));
        }
        if rec.expires < now() {
            return Err(refused("the token has expired".into()));
        }
        let issued = self
            .ca
            .issue(&node.uid, &[node.ip.to_string()], NODE_CERT_DAYS)
            .map_err(|e| IdentityError::Internal(e.to_string()))?;
        let fingerprint = clusterware_shared::pki::fingerprint(&issued.cert_pem);
        let cert = NodeCertRecord { fingerprint, issued: now() };
        let body = serde_json::to_vec(&cert).map_err(|e| IdentityError::Internal(e.to_string()))?;
        let trade = Txn::new()
            .when([Compare::unchanged(key.clone(), kv.mod_revision)])
            .and_then([TxnOp::delete(key.clone()), TxnOp::put(schema::node_cert(&node.uid), body)]);
        let done = match self.db.txn(trade).await {
            Ok(r) => r.succeeded,
            // An overloaded etcd can answer "request timed out" for a write it then applies: the
            // token would be gone, and the node's retry refused for good. Find out what happened
            // before answering.
            Err(DbError::Unavailable(why)) => {
                self.traded(&key, kv.mod_revision, &node.uid, &cert.fingerprint, why, TRADE_OUTCOME_WAIT).await?
            }
            Err(e) => return Err(e.into()),
        };
        if !done {
            return Err(refused("the token was used by another request at the same moment".into()));
        }
        tracing::info!(node = %node.name, mac = %req.mac, %peer, "node enrolled");
        Ok(Enrolled { cert_pem: issued.cert_pem, key_pem: issued.key_pem, ca_pem: self.ca.cert_pem.clone() })
    }

    /// The outcome of a token's trade whose write had no answer: true when it was applied (the
    /// node's certificate record is the one just issued), false when another request used the
    /// token; the database's error when the token is still there unchanged (not applied: the node
    /// tries again with it) or the database does not answer within `wait` ([`TRADE_OUTCOME_WAIT`]).
    async fn traded(
        &self,
        token_key: &str,
        token_rev: i64,
        uid: &str,
        fingerprint: &str,
        why: String,
        wait: Duration,
    ) -> Result<bool, DbError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let read = async {
                let cert = self.db.get(&schema::node_cert(uid)).await?;
                let token = self.db.get(token_key).await?;
                Ok::<_, DbError>((cert, token))
            };
            match read.await {
                Ok((Some(c), _))
                    if serde_json::from_slice::<NodeCertRecord>(&c.value)
                        .is_ok_and(|r| r.fingerprint == fingerprint) =>
                {
                    return Ok(true);
                }
                Ok((_, Some(t))) if t.mod_revision == token_rev => {}
                Ok(_) => return Ok(false),
                Err(DbError::Unavailable(_)) => {}
                Err(e) => return Err(e),
            }
            // Not applied yet, or no answer: an applied write shows within etcd's own deadline.
            if tokio::time::Instant::now() >= deadline {
                return Err(DbError::Unavailable(why));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Whether `cert` is `node`'s current certificate.
    pub fn check(&self, node: &Node, cert: Option<&ClientCert>) -> Result<(), IdentityError> {
        let current = self.certs.get(&node.uid);
        match (cert, current) {
            (Some(c), Some(cur)) if clusterware_shared::auth::tokens_equal(&c.0, &cur.fingerprint) => Ok(()),
            (None, _) => Err(IdentityError::Refused(format!(
                "{} presented no certificate: a node enrolls with the token of its boot script (or of \
                 `scyld-nodectl -i {} enroll`) and then presents the certificate it got",
                node.name, node.name
            ))),
            (Some(_), _) => Err(IdentityError::Refused(format!(
                "the certificate presented is not {}'s current one (revoked, or replaced by a later enrollment): it \
                 enrolls again at its next network boot",
                node.name
            ))),
        }
    }

    /// Whether `cert` is some node's current certificate. Asked for every root image request:
    /// one look-up in the fingerprints, taken again from the followed records only after they
    /// changed (comparing with every node's, as before, cost each request a pass over the whole
    /// cluster's). A fingerprint is a hash of a public certificate whose key the TLS handshake
    /// has just proved the caller holds: there is no secret here for a look-up's timing to give away.
    pub fn is_node(&self, cert: Option<&ClientCert>) -> bool {
        let Some(c) = cert else { return false };
        // The change count is read before the records: a change applied meanwhile only makes
        // the next request take them again.
        let now = self.certs.generation();
        let mut f = self.fingerprints.lock().unwrap_or_else(|p| p.into_inner());
        if f.0 != Some(now) {
            *f = (Some(now), self.certs.values().iter().map(|r| r.fingerprint.clone()).collect());
        }
        f.1.contains(&c.0)
    }

    /// Takes the nodes' certificates back, and their unused tokens: each is shut out until it
    /// enrolls with a new token. Returns how many had one.
    pub async fn revoke(&self, uids: &[String]) -> Result<usize, IdentityError> {
        let mut n = 0;
        for uid in uids {
            if self.db.delete(&schema::node_cert(uid)).await? {
                n += 1;
            }
        }
        let (tokens, _) = self.db.range(schema::ENROLL).await?;
        for kv in tokens {
            if serde_json::from_slice::<EnrollRecord>(&kv.value).is_ok_and(|r| uids.contains(&r.uid)) {
                self.db.delete(&schema::enroll(&kv.key)).await?;
            }
        }
        Ok(n)
    }
}

/// Starts node identity: the copy of `node_certs/`, the enrollment route for nodes and the
/// administrators' `nodes/enroll` and `nodes/revoke`.
pub fn start(ctx: &crate::core::Ctx, nodes: &Arc<NodeCache>, ca: Ca) -> Arc<Identity> {
    let id = Identity::spawn(ctx.db.clone(), nodes.clone(), ca, ctx.sup);
    ctx.serve(routes(id.clone()));
    id
}

fn routes(id: Arc<Identity>) -> crate::core::http::Routes {
    use axum::routing::post;
    use clusterware_shared::api::path;
    crate::core::http::Routes {
        admin: axum::Router::new()
            .route(path::NODES_ENROLL, post(admin_enroll))
            .route(path::NODES_REVOKE, post(admin_revoke))
            .with_state(id.clone()),
        open: axum::Router::new()
            .route(&format!("{}{}", path::AGENT, path::agent::ENROLL), post(agent_enroll))
            .with_state(id),
    }
}

/// `POST /api/v1/agent/enroll` (over HTTPS; no credential: the token is one).
async fn agent_enroll(
    axum::extract::State(id): axum::extract::State<Arc<Identity>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> crate::core::http::ApiResult<axum::response::Response> {
    let req: Enroll = crate::core::http::parse(&body)?;
    // Nothing is read or written before the request has a slot.
    let Some(_slot) = id.admission.admit().await else {
        let refused = id.admission.refused();
        id.complaints.complain("enrollments busy".into(), || {
            tracing::warn!(
                refused,
                "enrollments past this head's {ENROLL_SLOTS} at once and {ENROLL_LINE} waiting up to {} s: \
                 nodes were told to try again (logged once a minute; `refused` counts since start)",
                ENROLL_WAIT.as_secs()
            )
        });
        return Ok(crate::core::http::busy(
            format!(
                "this head is enrolling its limit of {ENROLL_SLOTS} nodes at once with {ENROLL_LINE} waiting: \
                 ask another head, or this one again in {RETRY_AFTER_SECS} s (the token is still valid)"
            ),
            RETRY_AFTER_SECS,
        ));
    };
    let got = id.enroll(&req, peer.ip()).await?;
    Ok(crate::core::http::json(axum::http::StatusCode::OK, &got))
}

/// The nodes a request names (uids), all of them known: from the node table, or from the
/// database for a node created a moment ago that the table has not seen yet.
async fn named(id: &Identity, req: &clusterware_shared::api::DeleteNodes) -> Result<Vec<Arc<Node>>, IdentityError> {
    let mut out = Vec::with_capacity(req.nodes.len());
    for u in &req.nodes {
        if let Some(n) = id.nodes.by_uid(u) {
            out.push(n);
            continue;
        }
        let fresh = crate::registry::get(&id.db, u).await.map_err(|e| match e {
            crate::registry::RegistryError::Db(d) => IdentityError::Db(d),
            e => IdentityError::Internal(e.to_string()),
        })?;
        out.push(Arc::new(fresh.ok_or_else(|| IdentityError::Invalid(format!("no node with uid {u}")))?));
    }
    Ok(out)
}

/// `POST /api/v1/nodes/enroll`: one-time tokens for nodes that do not network-boot.
async fn admin_enroll(
    axum::extract::State(id): axum::extract::State<Arc<Identity>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> crate::core::http::ApiResult<axum::response::Response> {
    let req: clusterware_shared::api::DeleteNodes = crate::core::http::parse(&body)?;
    let nodes: Vec<Node> = named(&id, &req).await?.into_iter().map(|n| (*n).clone()).collect();
    let tokens = id.tokens_for(&nodes).await?;
    tracing::info!(%peer, count = tokens.len(), "enrollment tokens made");
    Ok(crate::core::http::json(axum::http::StatusCode::OK, &clusterware_shared::agent::EnrollTokens { tokens }))
}

/// `POST /api/v1/nodes/revoke`: the nodes' certificates taken back.
async fn admin_revoke(
    axum::extract::State(id): axum::extract::State<Arc<Identity>>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    body: axum::body::Bytes,
) -> crate::core::http::ApiResult<axum::response::Response> {
    let req: clusterware_shared::api::DeleteNodes = crate::core::http::parse(&body)?;
    let nodes = named(&id, &req).await?;
    let uids: Vec<String> = nodes.iter().map(|n| n.uid.clone()).collect();
    let had = id.revoke(&uids).await?;
    tracing::warn!(%peer, count = uids.len(), had_certificates = had, "node certificates revoked");
    let list = clusterware_shared::api::NodeList { nodes: nodes.iter().map(|n| (**n).clone()).collect() };
    Ok(crate::core::http::json(axum::http::StatusCode::OK, &list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;

    /// A node created a moment ago, which the node table has not seen yet (here: a table that
    /// follows another, empty database), is found in the database.
    #[tokio::test]
    async fn nodes_named_right_after_their_creation_are_found() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let spec = clusterware_shared::api::NodeSpec {
            macs: vec!["52:54:00:00:00:07".parse().unwrap()],
            ip: Some("10.0.0.7".parse().unwrap()),
            ..Default::default()
        };
        let node = crate::registry::create(&db, vec![spec], false).await.unwrap().remove(0);
        let sup = Supervisor::new();
        let lagging = NodeCache::spawn(Database::Embedded(Embedded::open_in_memory().unwrap()), &sup);
        assert!(lagging.wait_ready(std::time::Duration::from_secs(5)).await);
        let id = Identity::spawn(db.clone(), lagging, Ca::create().unwrap(), &sup);
        let req = |uid: &str| clusterware_shared::api::DeleteNodes { nodes: vec![uid.to_string()] };
        let found = named(&id, &req(&node.uid)).await.unwrap();
        assert_eq!(found[0].uid, node.uid);
        let e = named(&id, &req("0123456789abcdef0123456789abcdef")).await.unwrap_err();
        assert!(e.to_string().contains("no node with uid"), "{e}");
        sup.shutdown(std::time::Duration::from_secs(1)).await;
    }

    /// A trade whose write had no answer: applied (the certificate record is the one issued),
    /// taken by another request (token gone, another certificate), or not applied (the token
    /// unchanged: the error, and the node keeps its token for its retry).
    #[tokio::test]
    async fn a_trade_without_answer_is_resolved_before_the_node_is_answered() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let sup = Supervisor::new();
        let nodes = NodeCache::spawn(db.clone(), &sup);
        let id = Identity::spawn(db.clone(), nodes, Ca::create().unwrap(), &sup);
        let (uid, token_key) = ("0123456789abcdef0123456789abcdef", schema::enroll(&hash("t")));
        let put = |key: String, v: Vec<u8>| {
            let db = db.clone();
            async move { db.txn(Txn::new().and_then([TxnOp::put(key, v)])).await.unwrap().revision }
        };
        let cert = |f: &str| serde_json::to_vec(&NodeCertRecord { fingerprint: f.into(), issued: 1 }).unwrap();
        let wait = Duration::from_millis(600);
        let outcome = |rev: i64| id.traded(&token_key, rev, uid, "mine", "request timed out".into(), wait);
        // Not applied: the token is there as it was read.
        let rev = put(token_key.clone(), b"{}".to_vec()).await;
        let e = outcome(rev).await.unwrap_err();
        assert!(e.to_string().contains("request timed out"), "{e}");
        // Applied: the certificate record is ours (the token gone).
        put(schema::node_cert(uid), cert("mine")).await;
        db.delete(&token_key).await.unwrap();
        assert!(outcome(rev).await.unwrap());
        // Another request used the token: another certificate, the token gone.
        put(schema::node_cert(uid), cert("theirs")).await;
        assert!(!outcome(rev).await.unwrap());
        sup.shutdown(Duration::from_secs(1)).await;
    }

    /// A database with one node (52:54:00:00:00:01, 10.0.0.5) and the node table, ready.
    async fn one_node() -> (Database, Node, Supervisor, Arc<NodeCache>) {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let spec = clusterware_shared::api::NodeSpec {
            macs: vec!["52:54:00:00:00:01".parse().unwrap()],
            ip: Some("10.0.0.5".parse().unwrap()),
            ..Default::default()
        };
        let node = crate::registry::create(&db, vec![spec], false).await.unwrap().remove(0);
        let sup = Supervisor::new();
        let nodes = NodeCache::spawn(db.clone(), &sup);
        assert!(nodes.wait_ready(Duration::from_secs(5)).await);
        (db, node, sup, nodes)
    }

    /// Tokens made one after another share a lease; when it is gone, the next token gets a new
    /// one and is stored all the same.
    #[tokio::test]
    async fn tokens_share_a_lease_and_outlive_a_lost_one() {
        let (db, node, sup, nodes) = one_node().await;
        let id = Identity::spawn(db.clone(), nodes, Ca::create().unwrap(), &sup);
        let lease_of = |t: &EnrollToken| {
            let (db, key) = (db.clone(), schema::enroll(&hash(&t.token)));
            async move { db.get(&key).await.unwrap().map(|kv| kv.lease) }
        };
        let (a, b) = (id.token_for(&node).await.unwrap(), id.token_for(&node).await.unwrap());
        let shared = lease_of(&a).await.expect("stored");
        assert!(shared != 0);
        assert_eq!(lease_of(&b).await, Some(shared));
        db.revoke_lease(shared).await.unwrap();
        assert_eq!(lease_of(&a).await, None, "gone with its lease");
        let c = id.token_for(&node).await.unwrap();
        let fresh = lease_of(&c).await.expect("stored under a new lease");
        assert!(fresh != 0 && fresh != shared);
        sup.shutdown(Duration::from_secs(1)).await;
    }

    /// Past its slots and its line, the head answers an enrollment 503 with `Retry-After` before
    /// it reads the token: the node's retry finds the token as it was.
    #[tokio::test]
    async fn an_enrollment_past_the_limit_leaves_the_token_alone() {
        let (db, node, sup, nodes) = one_node().await;
        let mut id = Identity::spawn(db.clone(), nodes, Ca::create().unwrap(), &sup);
        Arc::get_mut(&mut id).expect("not shared yet").admission = Admission::with_line(1, 0, 0, Duration::ZERO);
        let t = id.token_for(&node).await.unwrap();
        let body = axum::body::Bytes::from(serde_json::to_vec(&Enroll { mac: node.macs[0], token: t.token }).unwrap());
        let call = || {
            agent_enroll(
                axum::extract::State(id.clone()),
                axum::extract::ConnectInfo("10.0.0.5:40000".parse().unwrap()),
                body.clone(),
            )
        };
        let held = id.admission.admit().await.unwrap();
        let r = call().await.unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(r.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
        let answer = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let e: clusterware_shared::api::ApiError = serde_json::from_slice(&answer).unwrap();
        assert!(e.message.contains("the token is still valid"), "{}", e.message);
        assert_eq!(id.admission.refused(), 1);
        drop(held);
        let r = call().await.unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(r.status(), axum::http::StatusCode::OK, "the token was kept for the retry");
        let answer = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert!(serde_json::from_slice::<Enrolled>(&answer).is_ok());
        sup.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test]
    async fn a_token_works_once_from_its_node_only() {
        let (db, node, sup, nodes) = one_node().await;
        let id = Identity::spawn(db.clone(), nodes, Ca::create().unwrap(), &sup);
        assert!(id.certs.wait_ready(std::time::Duration::from_secs(5)).await);
        let t = id.token_for(&node).await.unwrap();
        let req = Enroll { mac: node.macs[0], token: t.token.clone() };
        let from = |ip: &str| ip.parse::<IpAddr>().unwrap();
        assert!(!id.is_node(Some(&ClientCert("0".repeat(64)))));
        // From another address, with another MAC, or a forged token: refused, the token kept.
        assert!(matches!(id.enroll(&req, from("10.0.0.6")).await, Err(IdentityError::Refused(_))));
        let other = Enroll { mac: "52:54:00:00:00:02".parse().unwrap(), ..req.clone() };
        assert!(matches!(id.enroll(&other, from("10.0.0.5")).await, Err(IdentityError::Refused(_))));
        let forged = Enroll { token: format!("{ENROLL_TOKEN_PREFIX}{}", "0".repeat(64)), ..req.clone() };
        assert!(matches!(id.enroll(&forged, from("10.0.0.5")).await, Err(IdentityError::Refused(_))));
        let got = id.enroll(&req, from("10.0.0.5")).await.unwrap();
        // Once only.
        assert!(matches!(id.enroll(&req, from("10.0.0.5")).await, Err(IdentityError::Refused(_))));
        let cert = ClientCert(clusterware_shared::pki::fingerprint(&got.cert_pem));
        let mut ok = false;
        for _ in 0..100 {
            ok = id.check(&node, Some(&cert)).is_ok();
            if ok {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(ok, "the new certificate is the node's");
        assert!(id.is_node(Some(&cert)));
        assert!(id.check(&node, None).is_err());
        assert_eq!(id.revoke(std::slice::from_ref(&node.uid)).await.unwrap(), 1);
        for _ in 0..100 {
            if id.check(&node, Some(&cert)).is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(id.check(&node, Some(&cert)).is_err(), "revoked");
        assert!(!id.is_node(Some(&cert)), "revoked");
        sup.shutdown(std::time::Duration::from_secs(1)).await;
    }
}
