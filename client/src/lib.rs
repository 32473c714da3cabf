//! The typed client of a head's `/api/v1` (see `ARCHITECTURE.md`, "Admin API").
//!
//! Two faces over one implementation:
//! - [`Client`]: async, for code that already runs on tokio (head-to-head calls in the head);
//! - [`BlockingClient`]: the same calls for plain threads (the CLIs, the test harness, the
//!   benchmarks). It owns a current-thread tokio runtime and runs the async calls on it, so the
//!   paths, the bearer credential, the timeouts and the error decoding exist once. Like any
//!   blocking face of an async client it must not be used from inside a tokio runtime.
//!
//! Paths come from [`clusterware_shared::api::path`] (the head's router uses the same ones);
//! request and answer bodies are the wire types of `clusterware_shared::{api, agent, power}`.
//! Every failure is one [`Error`]: the head's refusal (HTTP status and its `{kind, message}`
//! body), an answer that cannot be decoded, or a transport failure (refused, timed out, broken),
//! each with a message that says what to do next.

use clusterware_shared::agent::{
    AddKey, EnrollTokens, NodeStatusList, RebalanceReport, RebalanceRequest, RunScript, ScriptResults, SshKey,
    SshKeyList, StatusCounters, StatusQuery, StatusReport,
};
use clusterware_shared::api::{
    AddMember, BootConfig, BootConfigDetail, BootConfigList, CloneRequest, ClusterCa, ClusterInfo, ConvertDatabase,
    CreateBootConfig, CreateImage, CreateNodes, CreateToken, DatabaseDump, DatabaseLoaded, DefaultBootConfig,
    DeleteNodes, EventList, EventQuery, Failover, FailoverRequest, FileCopy, FileList, FileRecord, HeadList, HeadRef,
    Health, Image, ImageList, MemberAdded, MembershipChange, NewToken, Node, NodeList, StorageCounters, TokenInfo,
    TokenList, UpdateBootConfig, UpdateNodes,
};
use clusterware_shared::power::{PowerRequest, PowerResults, SecretInfo, SecretList, SetSecret};
use std::collections::BTreeMap;
use std::time::Duration;

mod asynchronous;
mod blocking;
mod error;
#[cfg(test)]
mod tests;

pub use asynchronous::{Client, ContentInfo, Download};
pub use blocking::BlockingClient;
pub use clusterware_shared::api::{ImportOptions, path};
pub use error::{Error, Result, Transport};

/// The header that carries the credential (`Authorization: Bearer <token>`).
pub const AUTHORIZATION: &str = "Authorization";
/// The header that names the administrator behind a request (the head logs it for actions such
/// as power control).
pub const USER_HEADER: &str = "X-Clusterware-User";

/// How long a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP connection.
    pub connect: Duration,
    /// A whole JSON request, from connecting to the last byte of the answer.
    pub request: Duration,
    /// A streamed transfer (upload, export, download) has no overall limit, since its size has
    /// none: it fails when no byte moves for this long (and when the answer to a finished upload
    /// takes this long).
    pub idle: Duration,
}

impl Timeouts {
    /// Longest connection attempt, whatever the request timeout.
    pub const MAX_CONNECT: Duration = Duration::from_secs(10);

    /// `secs` (at least 1) for requests and idle transfers; connecting gets at most 10 s of it.
    pub fn secs(secs: u64) -> Timeouts {
        let t = Duration::from_secs(secs.max(1));
        Timeouts { connect: t.min(Self::MAX_CONNECT), request: t, idle: t }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts::secs(60)
    }
}

/// Which head, with what credential and patience.
#[derive(Debug, Clone)]
pub struct Config {
    /// `https://HOST:PORT` (or `http://` for what needs no credential), no trailing slash.
    pub base: String,
    /// The admin token ([`clusterware_shared::auth::admin_token`]); `None` for the endpoints
    /// that need none (health, file contents).
    pub token: Option<String>,
    pub timeouts: Timeouts,
    /// Sent as [`USER_HEADER`].
    pub user: Option<String>,
    /// The cluster CA (PEM) an `https://` head's certificate must come from.
    pub ca_pem: Option<String>,
}

impl Config {
    /// The head at `base` (a trailing `/` is dropped), no credential, [`Timeouts::default`].
    pub fn new(base: &str) -> Config {
        Config {
            base: base.trim_end_matches('/').to_string(),
            token: None,
            timeouts: Timeouts::default(),
            user: None,
            ca_pem: None,
        }
    }

    pub fn token(mut self, token: &str) -> Config {
        self.token = Some(token.to_string());
        self
    }

    /// [`Timeouts::secs`].
    pub fn timeout_secs(mut self, secs: u64) -> Config {
        self.timeouts = Timeouts::secs(secs);
        self
    }

    pub fn timeouts(mut self, t: Timeouts) -> Config {
        self.timeouts = t;
        self
    }

    pub fn user(mut self, user: &str) -> Config {
        self.user = Some(user.to_string());
        self
    }

    /// Trust `pem` (the cluster CA) for an `https://` head.
    pub fn ca_pem(mut self, pem: &str) -> Config {
        self.ca_pem = Some(pem.to_string());
        self
    }
}

/// rustls trusting only the certificates of `pem` (the cluster CA), HTTP/1.1.
fn tls_config(pem: &str) -> std::result::Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.map_err(|e| format!("the CA is not PEM: {e}"))?).map_err(|e| format!("the CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err("the CA holds no certificate".into());
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(c)
}

/// The HTTP stack, built in this one place for both faces: an `https://` head is verified
/// against the cluster CA ([`Config::ca_pem`]) and nothing else; the admin credential is never
/// sent over plain `http://`.
///
/// `pooled`: keep idle connections for the next request. Only where a runtime keeps polling
/// them (the async face): an idle connection nobody polls does not notice that the head closed
/// it (a head restarting in place does), and the next request on it fails.
fn http_client(cfg: &Config, pooled: bool) -> Result<reqwest::Client> {
    let https = cfg.base.starts_with("https://");
    let rest = cfg.base.strip_prefix("https://").or_else(|| cfg.base.strip_prefix("http://"));
    if rest.is_none_or(str::is_empty) {
        return Err(Error::Setup(format!("{:?} is not an https:// (or http://) URL of a head", cfg.base)));
    }
    if !https && cfg.token.is_some() {
        return Err(Error::Setup(format!(
            "{} is plain http: the admin credential goes to a head over HTTPS only (https://HOST:TLS_PORT, \
             head.tls_port in the head's base.ini, 443 by default)",
            cfg.base
        )));
    }
    // reqwest asks for the process's provider even for plain http: ring, set once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = reqwest::Client::builder();
    if https {
        let Some(pem) = &cfg.ca_pem else {
            return Err(Error::Setup(format!(
                "{} is https but no cluster CA is given to check it with (on a head it is tls/ca.pem beside base.ini; \
                 elsewhere give it with --ca-file or CLUSTERWARE_CA)",
                cfg.base
            )));
        };
        b = b.tls_backend_preconfigured(tls_config(pem).map_err(Error::Setup)?);
    }
    if !pooled {
        b = b.pool_max_idle_per_host(0);
    }
    b.connect_timeout(cfg.timeouts.connect)
        // Before the head closes them, so a request never goes out on a closing connection.
        .pool_idle_timeout(std::time::Duration::from_secs(clusterware_shared::api::IDLE_SECS - 5))
        .tcp_nodelay(true)
        .user_agent(concat!("clusterware-client/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Setup(format!("cannot set up the HTTP client: {e}")))
}

/// Defines every JSON endpoint once: an async method on [`Client`] and its blocking twin on
/// [`BlockingClient`].
macro_rules! endpoints {
    ($( $(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty = $method:ident $path:expr $(, $body:expr)?; )*) => {
        impl Client {
            $(
                $(#[$doc])*
                pub async fn $name(&self, $($arg: $ty),*) -> Result<$ret> {
                    let p: String = ($path).into();
                    self.json(reqwest::Method::$method, &p, endpoints!(@body $($body)?)).await
                }
            )*
        }
        impl BlockingClient {
            $(
                $(#[$doc])*
                pub fn $name(&self, $($arg: $ty),*) -> Result<$ret> {
                    self.block_on(self.inner().$name($($arg),*))
                }
            )*
        }
    };
    (@body) => { None::<&()> };
    (@body $body:expr) => { Some($body) };
}

endpoints! {
    /// `GET /health` (no credential needed).
    fn health() -> Health = GET path::HEALTH;
    /// `GET /heads`.
    fn heads() -> HeadList = GET path::HEADS;

    /// `GET /nodes`.
    fn nodes() -> NodeList = GET path::NODES;
    /// `GET /nodes?select=`: the nodes a selector as `-i` takes it names (none is no error).
    fn nodes_selected(selector: &str) -> NodeList = GET path::nodes_selected(selector);
    /// `GET /nodes/{uid}`.
    fn node(uid: &str) -> Node = GET path::node(uid);
    /// `POST /nodes`: creates every node or none.
    fn create_nodes(req: &CreateNodes) -> NodeList = POST path::NODES, req;
    /// `POST /nodes/update`.
    fn update_nodes(req: &UpdateNodes) -> NodeList = POST path::NODES_UPDATE, req;
    /// `POST /nodes/delete`: answers what was deleted.
    fn delete_nodes(req: &DeleteNodes) -> NodeList = POST path::NODES_DELETE, req;
    /// `POST /nodes/status`.
    fn node_status(q: &StatusQuery) -> NodeStatusList = POST path::NODES_STATUS, q;
    /// `POST /nodes/reports`: the latest reports of the nodes this head parents (for peers).
    fn node_reports(uids: &DeleteNodes) -> BTreeMap<String, StatusReport> = POST path::NODES_REPORTS, uids;
    /// `POST /nodes/script`: answers once every node answered or the wait ended.
    fn run_script(req: &RunScript) -> ScriptResults = POST path::NODES_SCRIPT, req;
    /// `GET /nodes/counters`.
    fn node_counters() -> StatusCounters = GET path::NODES_COUNTERS;
    /// `POST /nodes/power`.
    fn power(req: &PowerRequest) -> PowerResults = POST path::NODES_POWER, req;
    /// `POST /rebalance`.
    fn rebalance(req: &RebalanceRequest) -> RebalanceReport = POST path::REBALANCE, req;

    /// `GET /secrets` (names only).
    fn secrets() -> SecretList = GET path::SECRETS;
    /// `PUT /secrets/{name}`.
    fn set_secret(name: &str, value: &SetSecret) -> SecretInfo = PUT path::secret(name), value;
    /// `DELETE /secrets/{name}`.
    fn delete_secret(name: &str) -> SecretInfo = DELETE path::secret(name);

    /// `GET /events`: the event log (with `after` and `wait`, a long poll for what follows).
    fn events(q: &EventQuery) -> EventList = GET path::events(q);

    /// `GET /tokens` (names only).
    fn tokens() -> TokenList = GET path::TOKENS;
    /// `POST /tokens`: the new token, shown once.
    fn create_token(req: &CreateToken) -> NewToken = POST path::TOKENS, req;
    /// `DELETE /tokens/{name}`.
    fn revoke_token(name: &str) -> TokenInfo = DELETE path::token(name);

    /// `GET /keys`.
    fn keys() -> SshKeyList = GET path::KEYS;
    /// `POST /keys`.
    fn add_key(req: &AddKey) -> SshKey = POST path::KEYS, req;
    /// `DELETE /keys/{name}`.
    fn delete_key(name: &str) -> SshKey = DELETE path::key(name);

    /// `GET /files`.
    fn files() -> FileList = GET path::FILES;
    /// `DELETE /files/{id}[?force=1]`.
    fn delete_file(id: &str, force: bool) -> FileRecord = DELETE path::file(id, force);
    /// `POST /files/{id}/fetch`: the head makes sure it holds a verified copy (from a peer).
    fn fetch_file(id: &str) -> FileCopy = POST path::file_fetch(id);
    /// `GET /storage`: this head's storage counters.
    fn storage() -> StorageCounters = GET path::STORAGE;

    /// `GET /images`.
    fn images() -> ImageList = GET path::IMAGES;
    /// `GET /images/{name}`.
    fn image(name: &str) -> Image = GET path::image(name, false);
    /// `POST /images`.
    fn create_image(req: &CreateImage) -> Image = POST path::IMAGES, req;
    /// `POST /images/{name}/clone`.
    fn clone_image(name: &str, req: &CloneRequest) -> Image = POST path::image_clone(name), req;
    /// `DELETE /images/{name}[?force=1]`.
    fn delete_image(name: &str, force: bool) -> Image = DELETE path::image(name, force);

    /// `GET /bootconfigs`.
    fn boot_configs() -> BootConfigList = GET path::BOOT_CONFIGS;
    /// `GET /bootconfigs/{name}`: the config with its image and file records.
    fn boot_config(name: &str) -> BootConfigDetail = GET path::boot_config(name, false);
    /// `POST /bootconfigs`.
    fn create_boot_config(req: &CreateBootConfig) -> BootConfig = POST path::BOOT_CONFIGS, req;
    /// `POST /bootconfigs/{name}/update`.
    fn update_boot_config(name: &str, req: &UpdateBootConfig) -> BootConfig = POST path::boot_config_update(name), req;
    /// `POST /bootconfigs/{name}/clone`.
    fn clone_boot_config(name: &str, req: &CloneRequest) -> BootConfig = POST path::boot_config_clone(name), req;
    /// `DELETE /bootconfigs/{name}[?force=1]`.
    fn delete_boot_config(name: &str, force: bool) -> BootConfig = DELETE path::boot_config(name, force);
    /// `PUT /default-boot-config` (`name: None` clears it).
    fn set_default_boot_config(req: &DefaultBootConfig) -> DefaultBootConfig = PUT path::DEFAULT_BOOT_CONFIG, req;

    /// `GET /database`: the cluster's data (`managedb save`).
    fn save_database() -> DatabaseDump = GET path::DATABASE;
    /// `PUT /database`: loads a dump into an empty cluster.
    fn load_database(dump: &DatabaseDump) -> DatabaseLoaded = PUT path::DATABASE, dump;
    /// `POST /database/convert`: a solo embedded head becomes a one-member etcd cluster (it
    /// restarts).
    fn convert_database(req: &ConvertDatabase) -> MembershipChange = POST path::DATABASE_CONVERT, req;

    /// `POST /nodes/enroll`: one-time enrollment tokens for the nodes (uids).
    fn enroll_nodes(req: &DeleteNodes) -> EnrollTokens = POST path::NODES_ENROLL, req;
    /// `POST /nodes/revoke`: the nodes' certificates taken back.
    fn revoke_nodes(req: &DeleteNodes) -> NodeList = POST path::NODES_REVOKE, req;
    /// `GET /cluster/ca` (no credential; plain HTTP too): the CA and its proof for a joining head.
    fn cluster_ca() -> ClusterCa = GET path::CLUSTER_CA;
    /// `GET /cluster[?data=1]`.
    fn cluster(data: bool) -> ClusterInfo = GET path::cluster(data);
    /// `POST /cluster/members`: adds a head's etcd member as a learner.
    fn add_member(req: &AddMember) -> MemberAdded = POST path::CLUSTER_MEMBERS, req;
    /// `POST /cluster/promote`.
    fn promote(head: &HeadRef) -> MembershipChange = POST path::CLUSTER_PROMOTE, head;
    /// `POST /cluster/eject`.
    fn eject(head: &HeadRef) -> MembershipChange = POST path::CLUSTER_EJECT, head;
    /// `POST /cluster/leave` (the head restarts).
    fn leave() -> MembershipChange = POST path::CLUSTER_LEAVE, &serde_json::json!({});
    /// `POST /cluster/recover` (the head restarts).
    fn recover() -> MembershipChange = POST path::CLUSTER_RECOVER, &serde_json::json!({});
    /// `GET /cluster/failover`.
    fn failover() -> Failover = GET path::CLUSTER_FAILOVER;
    /// `POST /cluster/failover`.
    fn set_failover(req: &FailoverRequest) -> Failover = POST path::CLUSTER_FAILOVER, req;
}

/// Decodes an answer: the body as `T` when the status is a success, else the head's refusal.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(base: &str, status: u16, body: &[u8]) -> Result<T> {
    if !(200..300).contains(&status) {
        return Err(refusal(base, status, body));
    }
    serde_json::from_slice(body).map_err(|e| Error::Decode { base: base.to_string(), status, reason: e.to_string() })
}

/// A refusal: the status, and the `{kind, message}` body when the head sent one.
pub(crate) fn refusal(base: &str, status: u16, body: &[u8]) -> Error {
    Error::Api { base: base.to_string(), status, error: serde_json::from_slice(body).ok() }
}
