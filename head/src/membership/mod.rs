//! Head membership on the etcd backend: joining (a learner first, promoted once caught up),
//! leaving, ejecting, recovering after quorum loss, converting a solo embedded head into a
//! one-member etcd cluster, automatic failover, and noticing that this head was ejected.
//!
//! A head's own place in a cluster is in its `base.ini` (`database.state`, and the etcd
//! settings a join writes): a head that left or was ejected starts "detached" and answers every
//! command with what to do. Changes that need the daemon to start differently (leave, recover,
//! convert, a join) rewrite `base.ini` and restart the daemon in place ([`Control`]).

pub mod routes;

pub mod dump;

use crate::core::db::{Compare, Database, DbError, Member, Refusal, Txn, TxnOp};
use crate::core::peers::Peers;
use crate::core::schema;
use crate::core::schema::{ALIVE, DbMode, EJECTED, EjectedRecord, FAILOVER, HEADS, HeadRecord};

use clusterware_shared::api::{
    AddMember, ClusterInfo, ClusterMember, DataSummary, Failover, FailoverEvent, FailoverRequest, MemberAdded,
    MembershipChange,
};
use clusterware_shared::config;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};

/// What the spec says about two heads on etcd, for refusals.
pub const TWO_HEADS: &str = "a cluster of two heads on etcd cannot shrink to one: the remaining head would have no \
     quorum (etcd needs a majority of its members). Run `managedb recover` on both heads instead; each becomes a \
     solo head with its own copy of the database";

/// The warning `recover` gives.
pub const RECOVER_WARNING: &str = "both heads now have autonomous, unsynchronised copies of the database that \
     manage the same compute nodes, so they will compete for the same booting nodes. To avoid it, stop one head \
     (`systemctl stop clusterware`), or re-join one to the other (`managedb join <IP_HEAD>`), or join it to another \
     cluster, or reinstall it (`scyld-install --clear-all --config <CLUSTER_CONFIG>`)";

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    /// The member is not caught up yet (promotion): try again.
    #[error("{0}")]
    NotReady(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Io(String),
}

impl crate::core::http::HasKind for MembershipError {
    fn kind(&self) -> clusterware_shared::api::ErrorKind {
        use clusterware_shared::api::ErrorKind;
        match self {
            MembershipError::Refused(_) | MembershipError::NotReady(_) => ErrorKind::Conflict,
            MembershipError::NotFound(_) => ErrorKind::NotFound,
            MembershipError::Invalid(_) => ErrorKind::BadRequest,
            MembershipError::Db(e) => e.kind(),
            MembershipError::Config(_) | MembershipError::Io(_) => ErrorKind::Internal,
        }
    }
}

pub type Result<T, E = MembershipError> = std::result::Result<T, E>;

/// What the daemon's membership operations need besides the database: its configuration file,
/// its identity, and a way to restart itself.
pub struct Control {
    pub config_path: PathBuf,
    pub name: String,
    pub api_url: String,
    /// This head's etcd peer URL (`https://head.ip:peer_port`).
    pub peer_url: String,
    pub token: String,
    /// How the head reaches its database (set once it is open).
    pub db_mode: std::sync::Mutex<Option<DbMode>>,
    restart: Notify,
    /// The other heads (membership questions).
    peers: Peers,
}

impl Control {
    pub fn new(config_path: PathBuf, name: String, api_url: String, peer_url: String, token: String) -> Control {
        let peers = Peers::new(Some(&token), crate::core::peers::timeouts(3));
        Control {
            config_path,
            name,
            api_url,
            peer_url,
            token,
            db_mode: std::sync::Mutex::new(None),
            restart: Notify::new(),
            peers,
        }
    }

    /// This head's own etcd member (by peer URL: a new member's name is published later).
    pub fn is_me(&self, m: &Member) -> bool {
        m.peer_urls.contains(&self.peer_url) || (!m.name.is_empty() && m.name == self.name)
    }

    /// Asks the daemon to restart itself (after the answer to the current request is sent).
    pub fn request_restart(&self) {
        self.restart.notify_one();
    }

    pub async fn restart_requested(&self) {
        self.restart.notified().await;
    }

    pub fn mode(&self) -> Option<DbMode> {
        *self.db_mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where the API URLs of the other heads are kept between starts.
    pub fn peers_file(&self) -> PathBuf {
        self.config_path.parent().unwrap_or(Path::new("/")).join("peers.json")
    }

    /// The other heads' API URLs: the peers file and `database.peers`.
    pub fn known_peers(&self, from_config: &[String]) -> Vec<String> {
        let mut urls: Vec<String> = std::fs::read(self.peers_file())
            .ok()
            .and_then(|b| serde_json::from_slice::<Vec<String>>(&b).ok())
            .unwrap_or_default();
        for u in from_config {
            if !urls.contains(u) {
                urls.push(u.clone());
            }
        }
        urls.retain(|u| *u != self.api_url);
        urls
    }

    fn save_peers(&self, urls: &[String]) {
        let body = serde_json::to_vec(urls).expect("a list of strings serialises");
        if let Err(e) = clusterware_shared::fsutil::write_atomic(&self.peers_file(), None, &body, Some(0o600)) {
            tracing::warn!(path = %self.peers_file().display(), error = %e, "cannot save the other heads' addresses");
        }
    }

    /// What the head at `url` says of its cluster; `None` when it does not answer.
    async fn peer_cluster(&self, url: &str) -> Option<ClusterInfo> {
        self.peers.to(url).ok()?.cluster(false).await.ok()
    }

    /// Asks the other heads to promote this head's learner member; true once one did.
    pub async fn request_promotion(&self, peers: &[String]) -> bool {
        for url in peers {
            let asked = match self.peers.to(url) {
                Ok(c) => c.promote(&clusterware_shared::api::HeadRef { head: self.name.clone(), force: false }).await,
                Err(e) => Err(e),
            };
            match asked {
                Ok(_) => {
                    tracing::info!(via = %url, "this head's etcd member was promoted to a voting member");
                    return true;
                }
                Err(e) if e.is_transport() => tracing::debug!(via = %url, error = %e, "cannot ask for promotion"),
                Err(e) => tracing::debug!(via = %url, error = %e, "promotion not possible yet"),
            }
        }
        false
    }

    /// True when a head of the cluster that answers no longer lists this head as a member.
    pub async fn removed_per_peers(&self, peers: &[String]) -> bool {
        for _ in 0..20 {
            for url in peers {
                if let Some(info) = self.peer_cluster(url).await {
                    return !info.members.iter().any(|m| m.name == self.name || m.peer_urls.contains(&self.peer_url));
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        false
    }

    /// True when a head of the cluster that answers says this head was ejected.
    pub async fn ejected_per_peers(&self, peers: &[String]) -> Option<String> {
        for url in peers {
            if let Some(info) = self.peer_cluster(url).await {
                let member = info.members.iter().any(|m| m.name == self.name || m.peer_urls.contains(&self.peer_url));
                if !member && info.ejected.contains(&self.name) {
                    return Some(info.head);
                }
            }
        }
        None
    }

    /// Marks this head ejected in its configuration and restarts it detached.
    pub fn detach(&self, state: config::Membership, why: &str) {
        tracing::error!("{why}; this head now serves nothing until it joins a cluster again (managedb join <IP_HEAD>)");
        match config::edit(&self.config_path, &[("database.state", Some(state.as_str()))]) {
            Ok(()) => self.request_restart(),
            Err(e) => tracing::error!(error = %e, "cannot record the ejection in the configuration"),
        }
    }
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn voting(members: &[Member]) -> usize {
    members.iter().filter(|m| !m.is_learner).count()
}

fn host_of(url: &str) -> &str {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

async fn head_records(db: &Database) -> Result<Vec<HeadRecord>> {
    let (kvs, _) = db.range(HEADS).await?;
    Ok(kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
}

pub async fn failover(db: &Database) -> Result<(Failover, i64)> {
    Ok(match db.get(FAILOVER).await? {
        Some(kv) => (serde_json::from_slice(&kv.value).unwrap_or_default(), kv.mod_revision),
        None => (Failover::default(), 0),
    })
}

async fn data_summary(db: &Database) -> Result<DataSummary> {
    let count = |p: &'static str| async move { db.range(p).await.map(|(kvs, _)| kvs.len()) };
    Ok(DataSummary {
        nodes: count(schema::NODES).await?,
        images: count(schema::IMAGES).await?,
        boot_configs: count(schema::BOOTCONFIGS).await?,
        files: count(schema::FILES).await?,
    })
}

/// `GET /api/v1/cluster`.
pub async fn info(
    db: &Database,
    ctl: &Control,
    me: &HeadRecord,
    cluster_token: &str,
    with_data: bool,
) -> Result<ClusterInfo> {
    let members = db.members().await?;
    let (ejected, _) = db.range(EJECTED).await?;
    let heads = head_records(db).await?;
    Ok(ClusterInfo {
        head: me.name.clone(),
        backend: db.backend().into(),
        db_mode: match ctl.mode().unwrap_or(me.db_mode) {
            DbMode::Embedded => "embedded",
            DbMode::EtcdMember => "etcd-member",
            DbMode::EtcdExternal => "etcd-external",
        }
        .into(),
        version: me.version.clone(),
        cluster_token: cluster_token.to_string(),
        members: members
            .iter()
            .map(|m| ClusterMember {
                id: format!("{:x}", m.id),
                name: m.name.clone(),
                peer_urls: m.peer_urls.clone(),
                learner: m.is_learner,
            })
            .collect(),
        ejected: ejected.iter().filter_map(|kv| kv.key.strip_prefix(EJECTED).map(str::to_string)).collect(),
        head_urls: heads.iter().map(|h| h.api_url.clone()).collect(),
        failover: failover(db).await?.0,
        data: if with_data { Some(data_summary(db).await?) } else { None },
    })
}

fn require_member_mode(ctl: &Control, what: &str) -> Result<()> {
    match ctl.mode() {
        Some(DbMode::EtcdMember) => Ok(()),
        Some(DbMode::Embedded) => Err(MembershipError::Refused(format!(
            "this head is a solo head on the embedded database, which has no members to {what}: convert it into a \
             one-member etcd cluster first with `managedb convert etcd` (a join does that by itself)"
        ))),
        Some(DbMode::EtcdExternal) | None => Err(MembershipError::Refused(format!(
            "this head uses an external etcd (database.endpoints) whose members it does not manage: {what} them \
             with etcdctl"
        ))),
    }
}

/// `POST /api/v1/cluster/members`: adds a joining head's member as a learner (a learner does
/// not count for quorum, so a new member that never starts cannot cost the cluster its quorum).
pub async fn add_member(db: &Database, ctl: &Control, req: &AddMember, cfg: &config::Config) -> Result<MemberAdded> {
    let cluster_token = &cfg.etcd_cluster_token;
    require_member_mode(ctl, "add")?;
    clusterware_shared::ids::validate_head_name(&req.name)
        .map_err(|e| MembershipError::Invalid(format!("head name {:?}: {e}", req.name)))?;
    let peer_ip = req.peer_url.strip_prefix("https://").and_then(|r| {
        r.rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok_and(|p| p > 0))
            .and_then(|(h, _)| h.parse::<std::net::Ipv4Addr>().ok())
    });
    let Some(peer_ip) = peer_ip else {
        return Err(MembershipError::Invalid(format!("{:?} is not a peer URL (https://IPv4:PORT)", req.peer_url)));
    };
    // The joining head's certificate, made before anything changes (its member needs it to
    // reach its peers, which accept no member without one).
    let ca = crate::core::tls::local_ca(cfg)
        .map_err(|e| MembershipError::Io(e.to_string()))?
        .ok_or_else(|| MembershipError::Refused(format!("this head has no cluster CA in {}", cfg.tls_dir.display())))?;
    let ips = [std::net::IpAddr::V4(peer_ip)];
    let issued = ca
        .issue(&req.name, &clusterware_shared::pki::head_names(&req.name, &ips), clusterware_shared::pki::HEAD_DAYS)
        .map_err(|e| MembershipError::Io(e.to_string()))?;
    let members = db.members().await?;
    // A learner left by an earlier attempt that never started (no name) at the same URL goes.
    for m in &members {
        if m.peer_urls.contains(&req.peer_url) {
            if m.is_learner && (m.name.is_empty() || m.name == req.name) {
                tracing::info!(id = %format!("{:x}", m.id), url = %req.peer_url, "removing the learner of an earlier join attempt");
                db.member_remove(m.id).await?;
                continue;
            }
            return Err(MembershipError::Refused(format!(
                "a member already listens at {} ({}); is that head in the cluster already?",
                req.peer_url,
                if m.name.is_empty() { "not started" } else { &m.name }
            )));
        }
        if m.name == req.name {
            return Err(MembershipError::Refused(format!(
                "a head named {:?} is already a member of this cluster; give the joining head another name \
                 (head.name in its base.ini)",
                req.name
            )));
        }
    }
    // Right after a membership change etcd refuses another one until every member has been
    // connected for a few seconds ("unhealthy cluster"): wait for that, up to 20 s.
    let deadline = Instant::now() + Duration::from_secs(20);
    let added = loop {
        match db.member_add(&req.peer_url, true).await {
            Err(DbError::Refused { why: Refusal::Unhealthy, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => break r,
        }
    };
    let (id, after) = added.map_err(|e| match e {
        DbError::Refused { why: Refusal::Unhealthy, message: m } => MembershipError::Refused(format!(
            "etcd refuses to add a member while not every member is connected ({m}): is a head down? Bring it back \
             or eject it first"
        )),
        DbError::Refused { why: Refusal::TooManyLearners, .. } => MembershipError::Refused(
            "another head is joining right now (its etcd member is still catching up as a learner): try again once it \
             has finished"
                .into(),
        ),
        e => e.into(),
    })?;
    // The joining head is welcome again if it had been ejected.
    db.delete(&schema::ejected(&req.name)).await?;
    let mut initial = Vec::new();
    for m in &after {
        let name = if m.id == id { req.name.clone() } else { m.name.clone() };
        if name.is_empty() {
            continue;
        }
        for u in &m.peer_urls {
            initial.push(format!("{name}={u}"));
        }
    }
    let peers = head_records(db).await?.into_iter().map(|h| h.api_url).collect();
    tracing::info!(head = %req.name, id = %format!("{id:x}"), url = %req.peer_url, "etcd learner added for a joining head");
    Ok(MemberAdded {
        id: format!("{id:x}"),
        initial_cluster: initial.join(","),
        cluster_token: cluster_token.into(),
        peers,
        cert_pem: Some(issued.cert_pem),
        key_pem: Some(issued.key_pem),
    })
}

/// `POST /api/v1/cluster/promote`: makes a joining head's learner a voting member once etcd
/// says it has caught up.
pub async fn promote(db: &Database, ctl: &Control, name: &str) -> Result<MembershipChange> {
    require_member_mode(ctl, "promote")?;
    let members = db.members().await?;
    // A new member is named by its peer URL until it has published its name.
    let m = members
        .iter()
        .find(|m| (!m.name.is_empty() && m.name == name) || m.peer_urls.iter().any(|u| u == name))
        .ok_or_else(|| MembershipError::NotFound(format!("no member {name:?} (has its etcd started?)")))?;
    if !m.is_learner {
        return Ok(MembershipChange {
            message: format!("{name} is a voting member"),
            warnings: vec![],
            restarting: false,
        });
    }
    match db.member_promote(m.id).await {
        Ok(()) => {
            tracing::info!(head = %name, "learner promoted to a voting member");
            Ok(MembershipChange {
                message: format!("{name} promoted to a voting member"),
                warnings: vec![],
                restarting: false,
            })
        }
        Err(DbError::Refused {
            why: Refusal::LearnerNotInSync | Refusal::NotLearner | Refusal::Learner,
            message: msg,
        }) => Err(MembershipError::NotReady(format!("{name} is still catching up with the leader: {msg}"))),
        Err(e) => Err(e.into()),
    }
}

/// Finds a member by head name or IP.
async fn resolve(db: &Database, target: &str) -> Result<(Member, String, Vec<Member>)> {
    let members = db.members().await?;
    let heads = head_records(db).await?;
    let by_head = heads.iter().find(|h| h.name == target || h.ip.to_string() == target).map(|h| h.name.clone());
    let m = members
        .iter()
        .find(|m| {
            (!m.name.is_empty() && (m.name == target || by_head.as_deref() == Some(m.name.as_str())))
                || m.peer_urls.iter().any(|u| host_of(u) == target)
        })
        .cloned()
        .ok_or_else(|| MembershipError::NotFound(format!("no head {target:?} among the database members")))?;
    let name = if m.name.is_empty() { by_head.unwrap_or_else(|| target.to_string()) } else { m.name.clone() };
    Ok((m, name, members))
}

/// Removes a head's records and member; `by` is this head. Records go first (while the cluster
/// still answers), the member after.
async fn remove_head(db: &Database, m: &Member, name: &str, by: &str, automatic: bool) -> Result<()> {
    remove_member(db, m.id).await?;
    let marker = EjectedRecord { name: name.to_string(), at: now(), by: by.to_string(), automatic };
    db.txn(Txn::new().and_then([
        TxnOp::delete(schema::head(&name)),
        TxnOp::delete(schema::alive(&name)),
        TxnOp::delete(schema::summary(&name)),
        TxnOp::put(schema::ejected(&name), serde_json::to_vec(&marker).expect("serialises")),
    ]))
    .await?;
    Ok(())
}

/// Removes a member. Right after a membership change etcd refuses another until every member
/// has been connected for a few seconds ("unhealthy cluster"): that is waited for, up to 20 s.
/// Nothing else is changed before the member is gone, so a refusal changes nothing.
async fn remove_member(db: &Database, id: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match db.member_remove(id).await {
            Err(DbError::Refused { why: Refusal::Unhealthy, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(DbError::Refused { why: Refusal::Unhealthy, message: m }) => {
                return Err(MembershipError::Refused(format!(
                    "etcd refuses to remove a member while not every other member is connected ({m}): with a head \
                     down, removing another would cost the cluster its quorum"
                )));
            }
            r => return r.map_err(Into::into),
        }
    }
}

/// Removes the records of heads that are no longer etcd members and not alive (a head that
/// left removes its member, after which it can no longer write).
async fn tidy_departed(db: &Database, suspects: &mut HashSet<String>) -> Result<Vec<HeadRecord>> {
    // Records first, then liveness, then members: a head registers only once its member votes,
    // so any record read here has its member in the list read after it.
    let heads = head_records(db).await?;
    let (alive, _) = db.range(ALIVE).await?;
    let members = db.members().await?;
    let gone: HashSet<String> = heads
        .iter()
        .filter(|h| {
            h.db_mode == DbMode::EtcdMember
                && !members.iter().any(|m| h.is_member(m))
                && !alive.iter().any(|kv| kv.key.strip_prefix(ALIVE) == Some(h.name.as_str()))
        })
        .map(|h| h.name.clone())
        .collect();
    // Only what was gone at the previous pass too: one stale view removes nothing.
    for name in gone.intersection(suspects) {
        db.txn(Txn::new().and_then([TxnOp::delete(schema::head(&name)), TxnOp::delete(schema::summary(&name))]))
            .await?;
        tracing::info!(head = %name, "removed the record of a head that is no longer a member");
    }
    *suspects = gone;
    Ok(heads)
}

/// `POST /api/v1/cluster/eject`.
pub async fn eject(db: &Database, ctl: &Control, target: &str, force: bool) -> Result<MembershipChange> {
    require_member_mode(ctl, "eject")?;
    let (m, name, members) = resolve(db, target).await?;
    if name == ctl.name || m.peer_urls.contains(&ctl.peer_url) {
        return Err(MembershipError::Refused(
            "this is the head you are on: use `managedb leave` to remove it, or eject it from another head".into(),
        ));
    }
    if !m.is_learner && voting(&members) <= 2 {
        return Err(MembershipError::Refused(format!("cannot eject {name}: {TWO_HEADS}")));
    }
    if !force && !name.is_empty() && db.get(&schema::alive(&name)).await?.is_some() {
        return Err(MembershipError::Refused(format!(
            "{name} is alive and serving: shut it down first (systemctl stop clusterware on it; a head that stopped \
             without a word counts as alive until its lease runs out, head.lease_ttl), or remove it cleanly with \
             `managedb leave` run on it; `managedb eject --force {target}` ejects it as it runs"
        )));
    }
    if m.name.is_empty() {
        // A learner whose head never started its member: there is no head to mark.
        remove_member(db, m.id).await?;
        tracing::warn!(url = %crate::core::listed(&m.peer_urls), "unstarted learner removed");
        return Ok(MembershipChange {
            message: format!("ejected the unstarted member {:x} at {}", m.id, m.peer_urls.join(",")),
            warnings: vec![],
            restarting: false,
        });
    }
    remove_head(db, &m, &name, &ctl.name, false).await?;
    tracing::warn!(head = %name, id = %format!("{:x}", m.id), "head ejected from the cluster");
    Ok(MembershipChange {
        message: format!(
            "ejected {name} (member {:x}); it can run no scyld command until it joins again (`managedb join <IP_HEAD>` \
             on it)",
            m.id
        ),
        warnings: vec![],
        restarting: false,
    })
}

/// `POST /api/v1/cluster/leave`: this head leaves; it restarts detached.
pub async fn leave(db: &Database, ctl: &Control) -> Result<MembershipChange> {
    require_member_mode(ctl, "leave")?;
    let members = db.members().await?;
    let me = members
        .iter()
        .find(|m| ctl.is_me(m))
        .cloned()
        .ok_or_else(|| MembershipError::NotFound("this head is not among the database members".into()))?;
    if voting(&members) <= 1 {
        return Err(MembershipError::Refused(
            "this head is the only member of its cluster: there is nothing to leave (reinstall with `scyld-install \
             --clear-all` to start afresh)"
                .into(),
        ));
    }
    if !me.is_learner && voting(&members) <= 2 {
        return Err(MembershipError::Refused(format!("cannot leave: {TWO_HEADS}")));
    }
    let others: Vec<String> =
        head_records(db).await?.into_iter().map(|h| h.api_url).filter(|u| *u != ctl.api_url).collect();
    if let Err(e) = remove_member(db, me.id).await {
        // A member that removes itself may stop before it answers ("server stopped"): the
        // other heads tell whether the removal happened.
        if !ctl.removed_per_peers(&others).await {
            return Err(e);
        }
    }
    // The other heads remove this head's records (it can no longer write once its member is
    // gone).
    config::edit(&ctl.config_path, &[("database.state", Some("left"))])?;
    tracing::warn!("this head left the cluster (managedb leave); restarting detached");
    ctl.request_restart();
    Ok(MembershipChange {
        message: format!(
            "{} left the cluster; it can run no scyld command until it joins a cluster again (`managedb join \
             <IP_HEAD>`) or is reinstalled (`scyld-install --clear-all --config <CLUSTER_CONFIG>`)",
            ctl.name
        ),
        warnings: vec![],
        restarting: true,
    })
}

/// `POST /api/v1/cluster/recover`: start this head's member as a cluster of its own. Refused
/// while the cluster has three or more members and a quorum (`leave` and `eject` serve then).
/// `db` is `None` when the head is still waiting for its database.
pub async fn recover(db: Option<&Database>, ctl: &Control) -> Result<MembershipChange> {
    let cfg = config::Config::load(&ctl.config_path)?.config;
    if cfg.database_type != config::DatabaseType::Etcd || !cfg.etcd_endpoints.is_empty() {
        return Err(MembershipError::Refused(
            "recover is for heads that run their own etcd member; this head has nothing to recover".into(),
        ));
    }
    if let Some(db) = db {
        let quorum = db.get(FAILOVER).await.is_ok();
        if let (true, Ok(members)) = (quorum, db.members().await) {
            if voting(&members) >= 3 {
                return Err(MembershipError::Refused(format!(
                    "this cluster has {} voting members and a quorum: remove heads with `managedb leave` or \
                     `managedb eject <IP_HEAD>`; recover is for two-head clusters and lost quorums",
                    voting(&members)
                )));
            }
            if voting(&members) <= 1 {
                return Err(MembershipError::Refused(
                    "this head is already the only member of its cluster: there is nothing to recover".into(),
                ));
            }
        }
    }
    crate::core::db::member::find_binary(&cfg.etcdctl_binary).map_err(|e| {
        MembershipError::Refused(format!("{e} (recover restores the data with etcdctl: Debian package etcd-client)"))
    })?;
    config::edit(&ctl.config_path, &[("database.recover", Some("yes"))])?;
    tracing::warn!("managedb recover: restarting this head's etcd member as a cluster of its own");
    ctl.request_restart();
    Ok(MembershipChange {
        message: format!(
            "{} now restarts with its own copy of the database as a one-member cluster (a solo head)",
            ctl.name
        ),
        warnings: vec![RECOVER_WARNING.into()],
        restarting: true,
    })
}

/// `managedb recover`, at the start after it: this head's etcd data (the member's backend file)
/// becomes a new one-member cluster with `etcdctl snapshot restore`: a new cluster and member
/// id, no trace of the former peers. (`--force-new-cluster` keeps the cluster id, so the first
/// head to recover tells the second that it was removed, and the second's member stops for good.)
/// Returns the new data dir, initial cluster and token, which the configuration now names.
pub fn restore_alone(cfg: &config::Config, ctl: &Control) -> Result<(PathBuf, String, String)> {
    let snap = cfg.etcd_data_dir.join("member/snap/db");
    if !snap.is_file() {
        return Err(MembershipError::Io(format!("there is no etcd data to recover at {}", snap.display())));
    }
    let etcdctl =
        crate::core::db::member::find_binary(&cfg.etcdctl_binary).map_err(|e| MembershipError::Io(e.to_string()))?;
    let parent = cfg.etcd_data_dir.parent().unwrap_or(Path::new("/"));
    let new_dir = parent.join(format!("etcd-recovered-{}", now()));
    let token = format!("clusterware-{}", hex::encode(rand::random::<[u8; 8]>()));
    let initial = format!("{}={}", ctl.name, ctl.peer_url);
    let out = std::process::Command::new(&etcdctl)
        .env("ETCDCTL_API", "3")
        .arg("snapshot")
        .arg("restore")
        .arg(&snap)
        .arg("--skip-hash-check")
        .arg(format!("--name={}", ctl.name))
        .arg(format!("--initial-cluster={initial}"))
        .arg(format!("--initial-cluster-token={token}"))
        .arg(format!("--initial-advertise-peer-urls={}", ctl.peer_url))
        .arg(format!("--data-dir={}", new_dir.display()))
        .output()
        .map_err(|e| MembershipError::Io(format!("cannot run {}: {e}", etcdctl.display())))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&new_dir);
        return Err(MembershipError::Io(format!(
            "etcdctl snapshot restore failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let dir = new_dir.to_string_lossy().to_string();
    config::edit(
        &ctl.config_path,
        &[
            ("database.data_dir", Some(&dir)),
            ("database.initial_cluster", Some(&initial)),
            ("database.initial_cluster_state", Some("new")),
            ("database.cluster_token", Some(&token)),
            ("database.recover", None),
            ("database.peers", None),
        ],
    )?;
    tracing::warn!(from = %cfg.etcd_data_dir.display(), to = %new_dir.display(), "recovered: this head's data is now a one-member etcd cluster of its own (the old data dir is kept)");
    Ok((new_dir, initial, token))
}

/// After a recovery: the records of heads that are no longer members go.
pub async fn after_recover(db: &Database, ctl: &Control) -> Result<()> {
    let members = db.members().await?;
    for h in head_records(db).await? {
        if !members.iter().any(|m| h.is_member(m)) {
            db.txn(Txn::new().and_then([
                TxnOp::delete(schema::head(&h.name)),
                TxnOp::delete(schema::alive(&h.name)),
                TxnOp::delete(schema::summary(&h.name)),
            ]))
            .await?;
            tracing::info!(head = %h.name, "recovered: record of a former peer removed");
        }
    }
    ctl.save_peers(&[]);
    Ok(())
}

/// `POST /api/v1/database/convert`: a solo head on the embedded store becomes a one-member etcd
/// cluster with the same data. The data is saved to a file beside the configuration, the
/// configuration switched to etcd, and the head restarts and loads the file into its new member.
pub async fn convert(
    db: &Database,
    ctl: &Control,
    cfg: &config::Config,
    ip: std::net::Ipv4Addr,
) -> Result<MembershipChange> {
    if ctl.mode() != Some(DbMode::Embedded) {
        return Err(MembershipError::Refused("this head's database is etcd already".into()));
    }
    crate::core::db::member::find_binary(&cfg.etcd_binary).map_err(|e| MembershipError::Refused(e.to_string()))?;
    let dump = crate::membership::dump::save(db).await.map_err(|e| MembershipError::Io(e.to_string()))?;
    let dir = ctl.config_path.parent().unwrap_or(Path::new("/"));
    let file = dir.join(format!("convert-{}.json", now()));
    let body = serde_json::to_vec(&dump).expect("a dump serialises");
    clusterware_shared::fsutil::write_atomic(&file, None, &body, Some(0o600))
        .map_err(|e| MembershipError::Io(format!("cannot write {}: {e}", file.display())))?;
    if cfg.etcd_data_dir.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        let aside = PathBuf::from(format!("{}.old-{}", cfg.etcd_data_dir.display(), now()));
        std::fs::rename(&cfg.etcd_data_dir, &aside)
            .map_err(|e| MembershipError::Io(format!("cannot move {} aside: {e}", cfg.etcd_data_dir.display())))?;
        tracing::warn!(from = %cfg.etcd_data_dir.display(), to = %aside.display(), "an old etcd data dir was moved aside");
    }
    let token = format!("clusterware-{}", hex::encode(rand::random::<[u8; 8]>()));
    let initial = format!("{}={}", ctl.name, format_args!("https://{ip}:{}", cfg.etcd_peer_port));
    config::edit(
        &ctl.config_path,
        &[
            ("database.type", Some("etcd")),
            ("database.initial_cluster", Some(&initial)),
            ("database.initial_cluster_state", Some("new")),
            ("database.cluster_token", Some(&token)),
            ("database.import_on_start", Some(&file.to_string_lossy())),
        ],
    )?;
    tracing::warn!(dump = %file.display(), "converting to a one-member etcd cluster; restarting");
    ctl.request_restart();
    Ok(MembershipChange {
        message: format!(
            "{} restarts as a one-member etcd cluster with its {} keys (the embedded database file {} is kept, \
             unused)",
            ctl.name,
            dump.keys.len(),
            cfg.database_path.display()
        ),
        warnings: vec![],
        restarting: true,
    })
}

/// After a start with `database.import_on_start`: loads the converted data into the new
/// member, then removes the setting and the file (it holds the cluster's secrets).
pub async fn after_convert(db: &Database, ctl: &Control, file: &Path) -> Result<()> {
    let body = std::fs::read(file).map_err(|e| MembershipError::Io(format!("cannot read {}: {e}", file.display())))?;
    let dump: crate::membership::dump::Dump =
        serde_json::from_slice(&body).map_err(|e| MembershipError::Io(format!("{}: {e}", file.display())))?;
    match crate::membership::dump::load(db, &dump).await {
        Ok(n) => tracing::info!(keys = n, "converted data loaded into the etcd member"),
        Err(crate::membership::dump::DumpError::Conflict(m)) => {
            tracing::warn!(reason = %m, "the etcd member holds data already; the converted file was loaded before")
        }
        Err(e) => return Err(MembershipError::Io(format!("cannot load {}: {e}", file.display()))),
    }
    config::edit(&ctl.config_path, &[("database.import_on_start", None)])?;
    let _ = std::fs::remove_file(file);
    Ok(())
}

/// `GET`/`POST /api/v1/cluster/failover`.
pub async fn set_failover(db: &Database, req: &FailoverRequest) -> Result<Failover> {
    for _ in 0..5 {
        let (mut f, rev) = failover(db).await?;
        match req.action.as_str() {
            "enable" => {
                f.enabled = true;
                if let Some(t) = req.timeout_secs {
                    if !(5..=86_400).contains(&t) {
                        return Err(MembershipError::Invalid(format!("--timeout {t}: give 5 to 86400 seconds")));
                    }
                    f.timeout_secs = t;
                }
            }
            "disable" => f.enabled = false,
            "reset" => {
                f.armed = true;
                f.last = None;
            }
            other => return Err(MembershipError::Invalid(format!("{other:?} is not enable, disable or reset"))),
        }
        let cmp = if rev == 0 { Compare::absent(FAILOVER) } else { Compare::unchanged(FAILOVER, rev) };
        let r = db
            .txn(Txn::new().when([cmp]).and_then([TxnOp::put(FAILOVER, serde_json::to_vec(&f).expect("serialises"))]))
            .await?;
        if r.succeeded {
            return Ok(f);
        }
    }
    Err(MembershipError::Refused("the failover setting kept changing under this request; try again".into()))
}

/// Counts an automatic-failover event (`clusterware_failover_events_total`).
fn failover_event(event: &'static str) {
    if let Some(m) = crate::core::metrics::on() {
        m.failover_events.get_or_create(&[("event", event)]).inc();
    }
}

/// `/metrics` at scrape time: the `failover` record (enabled, armed), read from the database,
/// which also says whether this head has a quorum (`clusterware_database_quorum_ok`): no answer
/// within 3 s counts as none (the scrape's hooks get 5 s, the database's own deadline).
async fn failover_gauges(db: &Database) {
    let Some(m) = crate::core::metrics::on() else { return };
    match tokio::time::timeout(Duration::from_secs(3), failover(db)).await.ok().and_then(|r| r.ok()) {
        Some((f, _)) => {
            m.database_quorum_ok.set(1);
            m.failover_enabled.set(i64::from(f.enabled));
            m.failover_armed.set(i64::from(f.armed));
        }
        None => {
            m.database_quorum_ok.set(0);
        }
    }
}

/// Automatic failover: every second, when enabled and armed, the voting members whose heads are
/// not alive are counted. Exactly one down for longer than the timeout (as this head saw it,
/// counted from the moment it became the only one down) is ejected by the head that wins a transaction on the `failover` record, which also disarms
/// failover; two or more down eject nothing.
pub async fn run_failover(
    db: Database,
    ctl: std::sync::Arc<Control>,
    events: crate::core::events::EventLog,
    mut stop: watch::Receiver<bool>,
) {
    let mut down_since: HashMap<String, Instant> = HashMap::new();
    let mut said_several = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
        if ctl.mode() != Some(DbMode::EtcdMember) {
            continue;
        }
        let step = async {
            let (f, rev) = failover(&db).await?;
            if !f.enabled || !f.armed {
                down_since.clear();
                return Ok::<(), MembershipError>(());
            }
            let members = db.members().await?;
            let (alive, _) = db.range(ALIVE).await?;
            let alive: Vec<&str> = alive.iter().filter_map(|kv| kv.key.strip_prefix(ALIVE)).collect();
            let down: Vec<&Member> = members
                .iter()
                .filter(|m| !m.is_learner && !m.name.is_empty() && !alive.contains(&m.name.as_str()))
                .collect();
            down_since.retain(|n, _| down.iter().any(|m| &m.name == n));
            for m in &down {
                down_since.entry(m.name.clone()).or_insert_with(Instant::now);
            }
            if voting(&members) < 3 || down.is_empty() {
                said_several = false;
                return Ok(());
            }
            if down.len() >= 2 {
                // Time spent in a multiple failure does not count toward one head's timeout: the
                // single-failure timer starts when a head becomes the only one down.
                down_since.clear();
                if !said_several {
                    failover_event("several_down");
                    let names: Vec<&str> = down.iter().map(|m| m.name.as_str()).collect();
                    tracing::warn!(names = %crate::core::listed(&names), "two or more heads are down: automatic failover ejects nobody");
                    said_several = true;
                }
                return Ok(());
            }
            said_several = false;
            let m = down[0];
            let since = down_since[&m.name];
            if since.elapsed() < Duration::from_secs(f.timeout_secs) {
                return Ok(());
            }
            let event = FailoverEvent {
                head: m.name.clone(),
                at: now(),
                by: ctl.name.clone(),
                down_secs: since.elapsed().as_secs(),
                error: None,
            };
            let mut claimed = f.clone();
            claimed.armed = false;
            claimed.last = Some(event.clone());
            let cmp = if rev == 0 { Compare::absent(FAILOVER) } else { Compare::unchanged(FAILOVER, rev) };
            let r = db
                .txn(
                    Txn::new()
                        .when([cmp])
                        .and_then([TxnOp::put(FAILOVER, serde_json::to_vec(&claimed).expect("serialises"))]),
                )
                .await?;
            if !r.succeeded {
                return Ok(());
            }
            tracing::warn!(head = %m.name, down_secs = event.down_secs, "automatic failover: ejecting a head that has been down longer than the timeout; failover is now disarmed until `managedb failover reset`");
            let done = remove_head(&db, m, &m.name, &ctl.name, true).await;
            events.record(
                clusterware_shared::api::EventKind::Head,
                &m.name,
                match &done {
                    Ok(()) => format!(
                        "automatic failover ejected the head, down {} s; failover is disarmed until `managedb failover reset`",
                        event.down_secs
                    ),
                    Err(e) => format!("automatic failover could not eject the head, down {} s: {e}", event.down_secs),
                },
            );
            if let Err(e) = done {
                failover_event("eject_failed");
                tracing::error!(head = %m.name, error = %e, "automatic failover could not eject the head");
                claimed.last = Some(FailoverEvent { error: Some(e.to_string()), ..event });
                let _ = db.put(FAILOVER, serde_json::to_vec(&claimed).expect("serialises")).await;
            } else {
                failover_event("ejected");
            }
            down_since.clear();
            Ok(())
        };
        if let Err(e) = step.await {
            tracing::debug!(error = %e, "failover check skipped");
        }
    }
}

/// Notices that this head was ejected while it runs: when its own member has been unreachable
/// for a few seconds (a removed member stops), it asks the other heads; if one with a quorum
/// says it was ejected, the head restarts detached. Also keeps the peers file current.
pub async fn watch_membership(db: Database, ctl: std::sync::Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u32;
    let mut last_peers: Vec<String> = ctl.known_peers(&[]);
    let mut last_save = Instant::now() - Duration::from_secs(3600);
    let mut suspects = HashSet::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
        if ctl.mode() != Some(DbMode::EtcdMember) {
            continue;
        }
        match db.members().await {
            Ok(ms) if ms.iter().any(|m| ctl.is_me(m)) => {
                failures = 0;
                // Every 5 s: the records of departed heads go, and the peers file follows the
                // head records.
                if last_save.elapsed() > Duration::from_secs(5) {
                    match tidy_departed(&db, &mut suspects).await {
                        Err(e) => tracing::debug!(error = %e, "cannot tidy departed heads' records"),
                        Ok(heads) => {
                            let mut urls: Vec<String> =
                                heads.into_iter().map(|h| h.api_url).filter(|u| *u != ctl.api_url).collect();
                            urls.sort();
                            if urls != last_peers {
                                ctl.save_peers(&urls);
                                last_peers = urls;
                            }
                        }
                    }
                    last_save = Instant::now();
                }
            }
            _ => {
                failures += 1;
                if failures >= 2 {
                    if let Some(by) = ctl.ejected_per_peers(&last_peers).await {
                        ctl.detach(
                            config::Membership::Ejected,
                            &format!("this head was ejected from its cluster (as {by} reports)"),
                        );
                        return;
                    }
                }
            }
        }
    }
}

/// Starts membership: automatic failover, the watch for membership changes, and the routes of
/// heads, the etcd cluster and `managedb`.
pub fn start(ctx: &crate::core::Ctx, ctl: &std::sync::Arc<Control>, hub: &std::sync::Arc<crate::agent_channel::Hub>) {
    use crate::core::supervisor::Stage;
    let (db, c, ev) = (ctx.db.clone(), ctl.clone(), ctx.events.clone());
    ctx.sup.spawn(Stage::Work, "failover", move |stop| run_failover(db, c, ev, stop));
    let (db, c) = (ctx.db.clone(), ctl.clone());
    ctx.sup.spawn(Stage::Work, "membership watch", move |stop| watch_membership(db, c, stop));
    let db = ctx.db.clone();
    ctx.on_scrape(move || {
        let db = db.clone();
        async move { failover_gauges(&db).await }
    });
    ctx.serve(routes::routes(std::sync::Arc::new(routes::Api {
        db: ctx.db.clone(),
        head: ctx.me().clone(),
        control: ctl.clone(),
        config: ctx.config.clone(),
        hub: hub.clone(),
        ca: std::sync::Arc::new(crate::core::tls::CaProof::new(
            crate::core::tls::cluster_ca().unwrap_or_default().to_string(),
            ctx.config.admin_pass.clone().unwrap_or_default(),
        )),
        events: ctx.events.clone(),
    })));
}
