//! The admin HTTP API (`/api/v1`), on axum. Every endpoint but `health` needs the admin
//! credential (`Authorization: Bearer <token>`, the token derived from `database.admin_pass`):
//! 401 without one, 403 with a wrong one. Every error is JSON `{kind, message}`.

use crate::bootcfg::{self, BootError};
use crate::core::db::{Database, DbError};
use crate::membership::dump::{self, Dump, DumpError};
use crate::core::heads::{self, HeadRecord};
use crate::agent_channel::keys::{self, KeyError};
use crate::membership::{Control, MembershipError};
use crate::power::{self, PowerSettings, SecretError};
use crate::registry::{self, RegistryError};
use crate::agent_channel::{AgentError, Hub};
use crate::storage::{Storage, StorageError};
use crate::bootcfg::transfer::{self, ImportOptions};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, Path, RawQuery, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clusterware_shared::agent::{
    AddKey, HeadsReply, KeysReply, MAX_REPORT_BYTES, RunScript, ScriptOutcome, ScriptResults, SshKeyList, StatusQuery,
    StatusReport,
};
use clusterware_shared::api::{AddMember, FailoverRequest, HeadRef};
use clusterware_shared::api::{
    ApiError, BootConfigList, CloneRequest, CreateBootConfig, CreateImage, CreateNodes, DefaultBootConfig, DeleteNodes,
    ErrorKind, FILE_KINDS, FileList, HeadList, Health, ImageList, NodeList, PREFIX, UpdateBootConfig, UpdateNodes,
    is_file_id,
};
use clusterware_shared::auth::{BEARER, tokens_equal};
use clusterware_shared::config::Membership;
use clusterware_shared::ids::MacAddr;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;

/// Added to every "database unavailable" answer.
const DEGRADED: &str = "; this head cannot reach a quorum of the cluster database's members: it keeps serving the boot \
     files it has verified and DHCP for the nodes it knows, refuses changes until the quorum returns, and recovers by \
     itself then (with two heads and one gone for good, run `managedb recover`)";

/// Largest request body accepted (a CSV of 100,000 nodes fits).
pub const BODY_LIMIT: usize = 64 << 20;

pub struct AppState {
    pub db: Database,
    /// The admin token every request must carry.
    pub token: String,
    pub head: HeadRecord,
    pub storage: Arc<Storage>,
    pub hub: Arc<Hub>,
    pub rebalance: crate::rebalance::Settings,
    pub power: PowerSettings,
    pub control: Arc<crate::membership::Control>,
    pub config: clusterware_shared::config::Config,
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiFailure {
    #[error("admin credential required (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("wrong admin credential")]
    Forbidden,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Dump(#[from] DumpError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Membership(#[from] MembershipError),
}

fn storage_kind(e: &StorageError) -> ErrorKind {
    match e {
        StorageError::NotFound(_) | StorageError::NotHere { .. } | StorageError::Unavailable { .. } => {
            ErrorKind::NotFound
        }
        StorageError::Invalid(_) => ErrorKind::BadRequest,
        StorageError::Io { .. } => ErrorKind::Internal,
        StorageError::Db(e) => db_kind(e),
    }
}

fn registry_kind(r: &RegistryError) -> ErrorKind {
    match r {
        RegistryError::Invalid(_) => ErrorKind::BadRequest,
        RegistryError::Conflict(_) => ErrorKind::Conflict,
        RegistryError::NotFound(_) => ErrorKind::NotFound,
        RegistryError::Corrupt { .. } => ErrorKind::Internal,
        RegistryError::Db(e) => db_kind(e),
    }
}

fn db_kind(e: &DbError) -> ErrorKind {
    match e {
        DbError::Unavailable(_) | DbError::Closed => ErrorKind::Unavailable,
        DbError::Invalid(_) => ErrorKind::BadRequest,
        DbError::Compacted { .. } | DbError::LeaseNotFound(_) | DbError::Storage(_) => ErrorKind::Internal,
    }
}

impl ApiFailure {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ApiFailure::Unauthorized => ErrorKind::Unauthorized,
            ApiFailure::Forbidden => ErrorKind::Forbidden,
            ApiFailure::BadRequest(_) => ErrorKind::BadRequest,
            ApiFailure::NotFound(_) => ErrorKind::NotFound,
            ApiFailure::Registry(r) => registry_kind(r),
            ApiFailure::Db(e) => db_kind(e),
            ApiFailure::Storage(e) => storage_kind(e),
            ApiFailure::Boot(b) => match b {
                BootError::Invalid(_) => ErrorKind::BadRequest,
                BootError::Conflict(_) => ErrorKind::Conflict,
                BootError::NotFound(_) => ErrorKind::NotFound,
                BootError::Corrupt { .. } => ErrorKind::Internal,
                BootError::Db(e) => db_kind(e),
                BootError::Storage(e) => storage_kind(e),
                BootError::Registry(r) => registry_kind(r),
            },
            ApiFailure::Agent(a) => match a {
                AgentError::Invalid(_) => ErrorKind::BadRequest,
                AgentError::Unknown(_) => ErrorKind::NotFound,
                AgentError::WrongAddress(_) => ErrorKind::Forbidden,
                AgentError::NotChild(_) => ErrorKind::Conflict,
            },
            ApiFailure::Secret(k) => match k {
                SecretError::Invalid(_) => ErrorKind::BadRequest,
                SecretError::NotFound(_) => ErrorKind::NotFound,
                SecretError::Db(e) => db_kind(e),
            },
            ApiFailure::Keys(k) => match k {
                KeyError::Invalid(_) => ErrorKind::BadRequest,
                KeyError::Conflict(_) => ErrorKind::Conflict,
                KeyError::NotFound(_) => ErrorKind::NotFound,
                KeyError::Db(e) => db_kind(e),
            },
            ApiFailure::Membership(m) => match m {
                MembershipError::Refused(_) | MembershipError::NotReady(_) => ErrorKind::Conflict,
                MembershipError::NotFound(_) => ErrorKind::NotFound,
                MembershipError::Invalid(_) => ErrorKind::BadRequest,
                MembershipError::Db(e) => db_kind(e),
                MembershipError::Config(_) | MembershipError::Io(_) => ErrorKind::Internal,
            },
            ApiFailure::Dump(d) => match d {
                DumpError::Invalid(_) => ErrorKind::BadRequest,
                DumpError::Conflict(_) => ErrorKind::Conflict,
                DumpError::Db(e) => db_kind(e),
            },
        }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if kind == ErrorKind::Internal || kind == ErrorKind::Unavailable {
            tracing::warn!(error = %self, "request failed");
        }
        let mut message = self.to_string();
        if kind == ErrorKind::Unavailable {
            message.push_str(DEGRADED);
        }
        (status, axum::Json(ApiError { kind, message })).into_response()
    }
}

type ApiResult<T> = Result<T, ApiFailure>;

fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiFailure::BadRequest(format!("malformed request body: {e}")))
}

fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

/// The routes, with authentication on everything but `health`.
pub fn router(state: Arc<AppState>) -> Router {
    let admin = Router::new()
        .route("/heads", get(list_heads))
        .route("/nodes", get(list_nodes).post(create_nodes))
        .route("/nodes/{uid}", get(get_node))
        .route("/nodes/update", post(update_nodes))
        .route("/nodes/delete", post(delete_nodes))
        .route("/nodes/status", post(node_status))
        .route("/nodes/reports", post(node_reports))
        .route("/nodes/script", post(run_script))
        .route(
            "/nodes/counters",
            get(|State(st): State<Arc<AppState>>| async move { json(StatusCode::OK, &st.hub.counters()) }),
        )
        .route("/rebalance", post(rebalance))
        .route("/nodes/power", post(node_power))
        .route("/secrets", get(list_secrets))
        .route("/secrets/{name}", axum::routing::put(set_secret).delete(remove_secret))
        .route("/keys", get(list_keys).post(add_key))
        .route("/keys/{name}", axum::routing::delete(remove_key))
        .route("/files", get(list_files).put(upload_file).layer(axum::extract::DefaultBodyLimit::disable()))
        .route("/files/{id}", axum::routing::delete(delete_file))
        .route("/storage", get(storage_counters))
        .route("/images", get(list_images).post(create_image))
        .route("/images/{name}", get(get_image).delete(delete_image))
        .route("/images/{name}/clone", post(clone_image))
        .route("/bootconfigs", get(list_configs).post(create_config))
        .route("/bootconfigs/{name}", get(get_config).delete(delete_config))
        .route("/bootconfigs/{name}/update", post(update_config))
        .route("/bootconfigs/{name}/clone", post(clone_config))
        .route("/bootconfigs/{name}/export", get(export_config))
        .route("/default-boot-config", axum::routing::put(set_default))
        .route("/database", get(save_database).put(load_database).layer(axum::extract::DefaultBodyLimit::max(1 << 30)))
        .route("/cluster", get(cluster_info))
        .route("/cluster/members", post(add_member))
        .route("/cluster/promote", post(promote_member))
        .route("/cluster/eject", post(eject_head))
        .route("/cluster/leave", post(leave_cluster))
        .route("/cluster/recover", post(recover_full))
        .route("/cluster/failover", get(get_failover).post(set_failover))
        .route("/database/convert", post(convert_database))
        .route("/import", axum::routing::put(import_config).layer(axum::extract::DefaultBodyLimit::disable()))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    // Boot files are read by nodes (iPXE, the agent) and peers without a credential; the agent's
    // endpoints check that a node speaks from its own registered address.
    let agent = Router::new()
        .route("/heads", get(agent_heads))
        .route("/status", post(agent_status))
        .route("/wait", get(agent_wait))
        .route("/result", post(agent_result))
        .route("/keys", get(agent_keys));
    let api = Router::new()
        .route("/health", get(health))
        .route("/boot/script", get(boot_script))
        .route("/files/{id}/content", get(file_content))
        .nest("/agent", agent)
        .merge(admin);
    Router::new()
        .nest(PREFIX, api)
        .fallback(|| async { ApiFailure::NotFound("no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn require_admin(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match check_token(req.headers(), &st.token) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            if matches!(e, ApiFailure::Forbidden) {
                let path = req
                    .extensions()
                    .get::<OriginalUri>()
                    .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
                tracing::warn!(%path, "request with a wrong admin credential refused");
            }
            e.into_response()
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When this process started (forced by `main`; a restart in place is a new process image).
pub static STARTED_MS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(now_ms);

fn health_of(name: &str, database: &str, state: &str) -> Health {
    Health {
        name: name.to_string(),
        version: clusterware_shared::VERSION.to_string(),
        database: database.to_string(),
        pid: std::process::id(),
        now_ms: now_ms(),
        started_ms: *STARTED_MS,
        state: state.to_string(),
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    json(StatusCode::OK, &health_of(&st.head.name, st.db.backend(), "serving"))
}

/// Checks the admin credential against `token`.
fn check_token(headers: &HeaderMap, token: &str) -> ApiResult<()> {
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix(BEARER));
    match given {
        None => Err(ApiFailure::Unauthorized),
        Some(t) if !tokens_equal(t.trim(), token) => Err(ApiFailure::Forbidden),
        Some(_) => Ok(()),
    }
}

/// The API of a head that is waiting for its database: health, `recover`, and a clear answer
/// for everything else.
pub fn starting_router(ctl: Arc<Control>) -> Router {
    let name = ctl.name.clone();
    let c2 = ctl.clone();
    let api = Router::new()
        .route("/health", get(move || async move { json(StatusCode::OK, &health_of(&name, "etcd", "starting")) }))
        .route(
            "/cluster/recover",
            post(move |headers: HeaderMap| async move {
                check_token(&headers, &c2.token)?;
                let r = crate::membership::recover(None, &c2).await?;
                Ok::<_, ApiFailure>(json(StatusCode::OK, &r))
            }),
        );
    Router::new().nest(PREFIX, api).fallback(|| async {
        ApiFailure::Db(DbError::Unavailable(
            "this head is starting and waiting for its cluster database (an etcd cluster needs a quorum of its \
             members; a joining head waits until it has caught up)"
                .into(),
        ))
    })
}

/// The API of a head that left its cluster or was ejected: health, and for everything else
/// what to do.
pub fn detached_router(name: String, state: Membership) -> Router {
    let why = match state {
        Membership::Left => "this head left its cluster (managedb leave)",
        Membership::Ejected | Membership::Member => {
            "this head was ejected from its cluster (managedb eject on another head, or automatic failover)"
        }
    };
    let message = format!(
        "{why} and has no cluster database, so no scyld command works here: join a cluster again with `managedb join \
         <IP_HEAD>` (after setting database.admin_pass in base.ini to that cluster's password if it is another \
         cluster), or reinstall with `scyld-install --clear-all --config <CLUSTER_CONFIG>`"
    );
    let n = name.clone();
    let api = Router::new()
        .route("/health", get(move || async move { json(StatusCode::OK, &health_of(&n, "none", state.as_str())) }));
    Router::new().nest(PREFIX, api).fallback(move || async move {
        (StatusCode::CONFLICT, axum::Json(ApiError { kind: ErrorKind::Conflict, message: message.clone() }))
    })
}

async fn cluster_info(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let with_data = query_pairs(q.as_deref())?.iter().any(|(k, v)| k == "data" && v == "1");
    let i = crate::membership::info(&st.db, &st.control, &st.head, &st.config.etcd_cluster_token, with_data).await?;
    Ok(json(StatusCode::OK, &i))
}

async fn add_member(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: AddMember = parse(&body)?;
    tracing::info!(%peer, head = %req.name, url = %req.peer_url, "a head asks to join");
    let r = crate::membership::add_member(&st.db, &st.control, &req, &st.config.etcd_cluster_token).await?;
    Ok(json(StatusCode::OK, &r))
}

async fn promote_member(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let req: HeadRef = parse(&body)?;
    Ok(json(StatusCode::OK, &crate::membership::promote(&st.db, &st.control, &req.head).await?))
}

async fn eject_head(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: HeadRef = parse(&body)?;
    let user = headers.get("x-clusterware-user").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    tracing::warn!(%peer, %user, head = %req.head, "eject requested");
    Ok(json(StatusCode::OK, &crate::membership::eject(&st.db, &st.control, &req.head).await?))
}

async fn leave_cluster(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> ApiResult<Response> {
    tracing::warn!(%peer, "leave requested");
    Ok(json(StatusCode::OK, &crate::membership::leave(&st.db, &st.control).await?))
}

async fn recover_full(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
) -> ApiResult<Response> {
    tracing::warn!(%peer, "recover requested");
    Ok(json(StatusCode::OK, &crate::membership::recover(Some(&st.db), &st.control).await?))
}

async fn get_failover(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &crate::membership::failover(&st.db).await?.0))
}

async fn set_failover(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let req: FailoverRequest = parse(&body)?;
    let f = crate::membership::set_failover(&st.db, &req).await?;
    tracing::info!(action = %req.action, enabled = f.enabled, timeout = f.timeout_secs, armed = f.armed, "failover setting changed");
    Ok(json(StatusCode::OK, &f))
}

async fn convert_database(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    #[derive(serde::Deserialize)]
    struct To {
        to: String,
    }
    let req: To = parse(&body)?;
    if req.to != "etcd" {
        return Err(ApiFailure::BadRequest(format!("cannot convert to {:?}: the only conversion is to etcd", req.to)));
    }
    Ok(json(StatusCode::OK, &crate::membership::convert(&st.db, &st.control, &st.config, st.head.ip).await?))
}

async fn list_heads(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    let mut heads = heads::list(&st.db).await?;
    let load = st.hub.load();
    for h in &mut heads {
        h.nodes = load.get(&h.name).copied().unwrap_or(0);
    }
    let mean = if load.is_empty() { 0.0 } else { load.values().sum::<u64>() as f64 / load.len() as f64 };
    Ok(json(StatusCode::OK, &HeadList { heads, mean_nodes: mean }))
}

/// Nodes as the API shows them: secret attributes masked.
fn shown(mut nodes: Vec<clusterware_shared::api::Node>) -> NodeList {
    for n in &mut nodes {
        clusterware_shared::power::mask_secrets(&mut n.attributes);
    }
    NodeList { nodes }
}

async fn list_nodes(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &shown(registry::list(&st.db).await?)))
}

async fn get_node(State(st): State<Arc<AppState>>, Path(uid): Path<String>) -> ApiResult<Response> {
    let nodes = registry::list(&st.db).await?;
    let n = nodes
        .into_iter()
        .find(|n| n.uid == uid)
        .ok_or_else(|| ApiFailure::NotFound(format!("no node with uid {uid}")))?;
    Ok(json(StatusCode::OK, &shown(vec![n]).nodes[0]))
}

async fn create_nodes(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: CreateNodes = parse(&body)?;
    let nodes = registry::create(&st.db, req.nodes).await?;
    tracing::info!(%peer, count = nodes.len(), first = %nodes[0].name, "nodes created");
    Ok(json(StatusCode::CREATED, &shown(nodes)))
}

async fn update_nodes(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: UpdateNodes = parse(&body)?;
    let (set, clear) = (req.set.keys().cloned().collect::<Vec<_>>(), req.clear.clone());
    let nodes = registry::update(&st.db, req.nodes, req.set, req.clear).await?;
    tracing::info!(%peer, count = nodes.len(), ?set, ?clear, "node attributes changed");
    Ok(json(StatusCode::OK, &shown(nodes)))
}

async fn delete_nodes(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: DeleteNodes = parse(&body)?;
    let nodes = registry::delete(&st.db, req.nodes).await?;
    let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    tracing::info!(%peer, ?names, "nodes deleted");
    Ok(json(StatusCode::OK, &shown(nodes)))
}

fn mac_param(pairs: &[(String, String)]) -> ApiResult<MacAddr> {
    let m = pairs
        .iter()
        .find(|(k, _)| k == "mac")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ApiFailure::BadRequest("mac= is required".into()))?;
    m.parse().map_err(|_| ApiFailure::BadRequest(format!("{m:?} is not a MAC address")))
}

async fn agent_heads(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let mac = mac_param(&query_pairs(q.as_deref())?)?;
    st.hub.authenticate(&mac, peer.ip())?;
    Ok(json(StatusCode::OK, &HeadsReply { heads: st.hub.heads_for(&mac) }))
}

async fn agent_status(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    if body.len() > MAX_REPORT_BYTES {
        return Err(ApiFailure::BadRequest(format!("a status report is at most {MAX_REPORT_BYTES} bytes")));
    }
    let report: StatusReport = serde_json::from_slice(&body).map_err(|e| {
        st.hub.counters.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%peer, error = %e, "malformed status report refused");
        ApiFailure::BadRequest(format!("malformed status report: {e}"))
    })?;
    Ok(json(StatusCode::OK, &st.hub.push(peer.ip(), report)?))
}

async fn agent_wait(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    let mac = mac_param(&pairs)?;
    let secs = match pairs.iter().find(|(k, _)| k == "secs") {
        None => 25,
        Some((_, v)) => v.parse::<u32>().map_err(|_| ApiFailure::BadRequest(format!("secs {v:?} is not a number")))?,
    };
    Ok(json(StatusCode::OK, &st.hub.wait(peer.ip(), &mac, secs).await?))
}

async fn agent_result(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let o: ScriptOutcome = parse(&body)?;
    st.hub.outcome(peer.ip(), o)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn agent_keys(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let mac = mac_param(&query_pairs(q.as_deref())?)?;
    let node = st.hub.authenticate(&mac, peer.ip())?;
    Ok(json(StatusCode::OK, &KeysReply { keys: st.hub.keys_for(&node) }))
}

async fn node_status(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let q: StatusQuery = parse(&body)?;
    let wanted = match &q.nodes {
        Some(uids) => Some(st.hub.resolve(uids).await?),
        None => None,
    };
    let nodes = st.hub.status_of(wanted, q.details).await;
    Ok(json(StatusCode::OK, &clusterware_shared::agent::NodeStatusList { nodes }))
}

async fn node_reports(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let q: DeleteNodes = parse(&body)?;
    Ok(json(StatusCode::OK, &st.hub.reports(&q.nodes)))
}

async fn run_script(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RunScript = parse(&body)?;
    if req.nodes.is_empty() {
        return Err(ApiFailure::BadRequest("no nodes selected".into()));
    }
    if !(1..=3600).contains(&req.timeout_secs) {
        return Err(ApiFailure::BadRequest(format!("timeout {} s is not from 1 to 3600", req.timeout_secs)));
    }
    let nodes = st.hub.resolve(&req.nodes).await?;
    tracing::info!(%peer, script = req.script.name(), nodes = req.nodes.len(), "script requested");
    let results = st.hub.run_script(&nodes, req.script, std::time::Duration::from_secs(req.timeout_secs)).await?;
    Ok(json(StatusCode::OK, &ScriptResults { results }))
}

async fn rebalance(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: clusterware_shared::agent::RebalanceRequest = parse(&body)?;
    if !req.dry_run {
        tracing::info!(%peer, "rebalancing round requested");
    }
    let r = st.hub.rebalance(&st.rebalance, None, req.dry_run).await?;
    Ok(json(StatusCode::OK, &r))
}

/// An iPXE script that says why the node cannot boot yet and asks again in a minute.
fn retry_script(base: &str, mac: &MacAddr, why: &str) -> Response {
    let why: String = why.chars().filter(|c| !c.is_control() && *c != '$').collect();
    let body = format!(
        "#!ipxe\necho ClusterWare: {mac} cannot boot yet: {why}\necho Asking again in 60 s\nsleep 60\nchain {base}/api/v1/boot/script?mac={mac}\n"
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// `GET /api/v1/boot/script?mac=M`: the iPXE script for the node's boot config, served by the
/// head the node network-boots from (no credential: iPXE fetches it). This head becomes the
/// node's parent, the node `booting`.
async fn boot_script(State(st): State<Arc<AppState>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let mac = mac_param(&query_pairs(q.as_deref())?)?;
    let base = st.head.api_url.clone();
    let Some(node) = st.hub.nodes.by_mac(&mac) else {
        return Ok(retry_script(&base, &mac, "no node has this MAC"));
    };
    let name = match node.attributes.get("_boot_config") {
        Some(n) => n.clone(),
        None => match bootcfg::list_configs(&st.db).await?.1 {
            Some(d) => d,
            None => {
                let why = format!("{} has no _boot_config and the cluster has no default boot config", node.name);
                tracing::warn!(node = %node.name, %mac, "{why}");
                return Ok(retry_script(&base, &mac, &why));
            }
        },
    };
    let cfg = match bootcfg::get_config(&st.db, &name).await {
        Ok((c, _)) => c,
        Err(BootError::NotFound(_)) => {
            let why = format!("{}'s boot config {name:?} does not exist", node.name);
            tracing::warn!(node = %node.name, %mac, "{why}");
            return Ok(retry_script(&base, &mac, &why));
        }
        Err(e) => return Err(e.into()),
    };
    let mut args: Vec<String> = cfg.cmdline.split_whitespace().map(str::to_string).collect();
    if let Some(img) = &cfg.image {
        match bootcfg::get_image(&st.db, img).await {
            Ok(image) => {
                if let Some(rec) = bootcfg::file_record(&st.db, &image.rootfs).await? {
                    args.push(format!("cw.image={}", rec.id));
                    args.push(format!("cw.image_size={}", rec.size));
                    args.push(format!("cw.image_sha256={}", rec.sha256));
                }
            }
            Err(BootError::NotFound(_)) => {
                let why = format!("boot config {name:?} names image {img:?}, which does not exist");
                return Ok(retry_script(&base, &mac, &why));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let heads: Vec<String> = st.hub.heads_for(&mac).into_iter().map(|h| h.url).collect();
    args.push(format!("cw.parent={base}"));
    args.push(format!("cw.heads={}", heads.join(",")));
    args.push(format!("cw.mac={mac}"));
    let kernel = format!("{base}/api/v1/files/{}/content", cfg.kernel);
    let initrd = format!("{base}/api/v1/files/{}/content", cfg.initramfs);
    let body = format!(
        "#!ipxe\necho ClusterWare: booting {node} ({mac}) with boot config {name} from {head}\n:retry\nkernel {kernel} initrd=initramfs {args} || goto failed\ninitrd --name initramfs {initrd} || goto failed\nboot || goto failed\n:failed\necho ClusterWare: boot failed; trying again in 10 s\nsleep 10\ngoto retry\n",
        node = node.name,
        head = st.head.name,
        args = args.join(" "),
    );
    st.hub.booting(&node, &mac);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response())
}

async fn node_power(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: clusterware_shared::power::PowerRequest = parse(&body)?;
    use clusterware_shared::power::{BootDevice, PowerAction, PowerOutcome, PowerResults};
    if req.nodes.is_empty() {
        return Err(ApiFailure::BadRequest("no nodes selected".into()));
    }
    if !(1..=600).contains(&req.timeout_secs) {
        return Err(ApiFailure::BadRequest(format!("timeout {} s is not from 1 to 600", req.timeout_secs)));
    }
    if req.soft && req.action != PowerAction::Off {
        return Err(ApiFailure::BadRequest("--soft applies to `off` only".into()));
    }
    if req.boot.is_some() && matches!(req.action, PowerAction::Status | PowerAction::Off) {
        return Err(ApiFailure::BadRequest("a boot device applies to on, cycle and reset".into()));
    }
    let nodes = st.hub.resolve(&req.nodes).await?;
    let who: String = headers
        .get("x-clusterware-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect();
    let action = match (req.action, req.soft, req.boot) {
        (a, true, _) => format!("{} --soft", a.name()),
        (a, _, Some(BootDevice::Pxe)) => format!("{} --pxe", a.name()),
        (a, _, Some(BootDevice::Disk)) => format!("{} --disk", a.name()),
        (a, _, None) => a.name().to_string(),
    };
    let results = power::run(
        &st.db,
        &st.power,
        nodes,
        req.action,
        req.soft,
        req.boot,
        std::time::Duration::from_secs(req.timeout_secs),
    )
    .await?;
    for r in &results {
        let outcome = match r.outcome {
            PowerOutcome::Ok => "ok",
            PowerOutcome::Failed => "failed",
            PowerOutcome::Timeout => "timeout",
        };
        if req.action == PowerAction::Status {
            tracing::debug!(node = %r.name, %action, by = %who, %peer, outcome, message = %r.message, "power");
        } else {
            tracing::info!(node = %r.name, %action, by = %who, %peer, outcome, message = %r.message, "power");
        }
    }
    Ok(json(StatusCode::OK, &PowerResults { results }))
}

async fn list_secrets(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &clusterware_shared::power::SecretList { secrets: power::list_secrets(&st.db).await? }))
}

async fn set_secret(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: clusterware_shared::power::SetSecret = parse(&body)?;
    let info = power::set_secret(&st.db, &name, &req.value).await?;
    tracing::info!(%peer, %name, "secret set");
    Ok(json(StatusCode::OK, &info))
}

async fn remove_secret(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let info = power::remove_secret(&st.db, &name).await?;
    tracing::info!(%peer, %name, "secret removed");
    Ok(json(StatusCode::OK, &info))
}

async fn list_keys(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &SshKeyList { keys: keys::list(&st.db).await? }))
}

async fn add_key(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: AddKey = parse(&body)?;
    let k = keys::add(&st.db, &req.name, &req.key).await?;
    tracing::info!(%peer, name = %k.name, "cluster SSH key added");
    Ok(json(StatusCode::CREATED, &k))
}

async fn remove_key(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let k = keys::remove(&st.db, &name).await?;
    tracing::info!(%peer, %name, "cluster SSH key removed");
    Ok(json(StatusCode::OK, &k))
}

async fn list_files(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &FileList { files: st.storage.list().await? }))
}

async fn storage_counters(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &st.storage.counters()))
}

/// Decodes `a=b&c=d` with percent-escapes and `+` for space.
fn query_pairs(q: Option<&str>) -> ApiResult<Vec<(String, String)>> {
    let dec = |s: &str| -> ApiResult<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let h = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    out.push(h.ok_or_else(|| ApiFailure::BadRequest(format!("bad escape in query {s:?}")))?);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| ApiFailure::BadRequest("query is not UTF-8".into()))
    };
    let mut v = Vec::new();
    for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, val) = part.split_once('=').unwrap_or((part, ""));
        v.push((dec(k)?, dec(val)?));
    }
    Ok(v)
}

async fn upload_file(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let name = get("name").ok_or_else(|| ApiFailure::BadRequest("name= is required".into()))?;
    if name.is_empty() || name.len() > 255 || name.contains('/') || name.chars().any(char::is_control) {
        return Err(ApiFailure::BadRequest(format!("{name:?} is not a file name (1-255 characters, no '/')")));
    }
    let kind = get("kind").unwrap_or("other");
    if !FILE_KINDS.contains(&kind) {
        return Err(ApiFailure::BadRequest(format!("kind {kind:?} is not one of {}", FILE_KINDS.join(", "))));
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let size = match get("size") {
        Some(s) => s.parse::<u64>().map_err(|_| ApiFailure::BadRequest(format!("size {s:?} is not a number")))?,
        None => declared.ok_or_else(|| ApiFailure::BadRequest("the upload needs size= or a Content-Length".into()))?,
    };
    if declared.is_some_and(|d| d != size) {
        return Err(ApiFailure::BadRequest(format!(
            "Content-Length {} differs from size={size}",
            declared.unwrap_or(0)
        )));
    }
    let sha = get("sha256");
    if let Some(s) = sha {
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiFailure::BadRequest(format!("sha256 {s:?} is not 64 hex digits")));
        }
    }
    let rec = st
        .storage
        .upload(name, kind, size, sha.map(|s| s.to_ascii_lowercase()).as_deref(), body.into_data_stream())
        .await
        .map_err(|e| match e {
            StorageError::Invalid(m) => ApiFailure::BadRequest(format!("upload of {name} refused: {m}")),
            e => e.into(),
        })?;
    tracing::info!(%peer, id = %rec.id, name = %rec.name, size = rec.size, kind = %rec.kind, "file uploaded");
    Ok(json(StatusCode::CREATED, &rec))
}

async fn delete_file(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let users = bootcfg::users_of_file(&st.db, &id).await?;
    if !users.is_empty() && !flag(&q, "force")? {
        return Err(BootError::Conflict(format!(
            "file {id} is used by {}; delete or change those first, or delete with --force",
            users.join(", ")
        ))
        .into());
    }
    Ok(json(StatusCode::OK, &st.storage.delete(&id).await?))
}

/// A request's byte range: the whole file, `start..=end`, or none that fits.
#[derive(Debug, PartialEq, Eq)]
enum Span {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `Range: bytes=…`; anything else (several ranges, other units, bad syntax)
/// is ignored and the whole file sent, as RFC 9110 allows.
fn parse_range(h: Option<&str>, size: u64) -> Span {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Span::Full };
    if spec.contains(',') {
        return Span::Full;
    }
    let Some((a, b)) = spec.split_once('-') else { return Span::Full };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            None => Span::Full,
            Some(0) => Span::Unsatisfiable,
            Some(_) if size == 0 => Span::Unsatisfiable,
            Some(n) => Span::Part(size.saturating_sub(n), size - 1),
        },
        (false, _) => match (num(a), if b.is_empty() { Some(u64::MAX) } else { num(b) }) {
            (Some(s), Some(e)) if s <= e => {
                if s >= size {
                    Span::Unsatisfiable
                } else {
                    Span::Part(s, e.min(size - 1))
                }
            }
            _ => Span::Full,
        },
        (true, true) => Span::Full,
    }
}

async fn file_content(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    method: Method,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let from_peer = query_pairs(q.as_deref())?.iter().any(|(k, v)| k == "peer" && v == "1");
    if from_peer {
        st.storage.count_peer_request();
    }
    if !is_file_id(&id) {
        return Err(ApiFailure::NotFound(format!("no file with id {id}")));
    }
    let rec = st.storage.record(&id).await?;
    let path = st.storage.ensure(&rec, !from_peer).await?;
    let size = rec.size;
    let span = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let (status, start, len) = match span {
        Span::Full => (StatusCode::OK, 0, size),
        Span::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Span::Unsatisfiable => {
            let mut r = ApiFailure::BadRequest(format!("range beyond the end of the {size}-byte file")).into_response();
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{size}").parse().expect("valid header"));
            return Ok(r);
        }
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{}\"", rec.sha256))
        .header("x-checksum-sha256", &rec.sha256);
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    if method == Method::HEAD {
        return Ok(b.body(axum::body::Body::empty()).expect("valid response"));
    }
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut f = tokio::fs::File::open(&path).await.map_err(|e| StorageError::Io { path: path.clone(), source: e })?;
    if start > 0 {
        f.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| StorageError::Io { path: path.clone(), source: e })?;
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(f.take(len), 256 << 10);
    Ok(b.body(axum::body::Body::from_stream(stream)).expect("valid response"))
}

fn flag(q: &Option<String>, name: &str) -> ApiResult<bool> {
    Ok(query_pairs(q.as_deref())?.iter().any(|(k, v)| k == name && (v == "1" || v == "true")))
}

async fn list_images(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &ImageList { images: bootcfg::list_images(&st.db).await? }))
}

async fn get_image(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::get_image(&st.db, &name).await?))
}

async fn create_image(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let img = bootcfg::create_image(&st.db, parse::<CreateImage>(&body)?).await?;
    tracing::info!(image = %img.name, rootfs = %img.rootfs, "image created");
    Ok(json(StatusCode::CREATED, &img))
}

async fn clone_image(State(st): State<Arc<AppState>>, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let req: CloneRequest = parse(&body)?;
    Ok(json(StatusCode::CREATED, &bootcfg::clone_image(&st.db, &name, &req.name).await?))
}

async fn delete_image(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::delete_image(&st.db, &st.storage, &name, flag(&q, "force")?).await?))
}

async fn list_configs(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    let (boot_configs, default) = bootcfg::list_configs(&st.db).await?;
    Ok(json(StatusCode::OK, &BootConfigList { boot_configs, default }))
}

async fn get_config(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::detail(&st.db, &name).await?))
}

async fn create_config(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let c = bootcfg::create_config(&st.db, parse::<CreateBootConfig>(&body)?).await?;
    tracing::info!(boot_config = %c.name, image = ?c.image, "boot config created");
    Ok(json(StatusCode::CREATED, &c))
}

async fn update_config(State(st): State<Arc<AppState>>, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::update_config(&st.db, &name, parse::<UpdateBootConfig>(&body)?).await?))
}

async fn clone_config(State(st): State<Arc<AppState>>, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let req: CloneRequest = parse(&body)?;
    Ok(json(StatusCode::CREATED, &bootcfg::clone_config(&st.db, &name, &req.name).await?))
}

async fn delete_config(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::delete_config(&st.db, &st.storage, &name, flag(&q, "force")?).await?))
}

async fn set_default(State(st): State<Arc<AppState>>, body: Bytes) -> ApiResult<Response> {
    let req: DefaultBootConfig = parse(&body)?;
    bootcfg::set_default(&st.db, req.name.as_deref()).await?;
    Ok(json(StatusCode::OK, &req))
}

async fn export_config(State(st): State<Arc<AppState>>, Path(name): Path<String>) -> ApiResult<Response> {
    let stream = transfer::export(&st.db, &st.storage, &name).await?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.export\""))
        .body(axum::body::Body::from_stream(stream))
        .expect("valid response"))
}

async fn import_config(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let o = ImportOptions {
        image: get("image"),
        boot_config: get("boot_config"),
        no_recurse: flag(&q, "no_recurse")?,
        dry_run: flag(&q, "dry_run")?,
    };
    let report = transfer::import(&st.db, &st.storage, body.into_data_stream(), o).await?;
    tracing::info!(%peer, boot_config = %report.boot_config, image = ?report.image, dry_run = report.dry_run, "import");
    Ok(json(if report.dry_run { StatusCode::OK } else { StatusCode::CREATED }, &report))
}

async fn save_database(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &dump::save(&st.db).await?))
}

async fn load_database(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let d: Dump = serde_json::from_slice(&body)
        .map_err(|e| ApiFailure::BadRequest(format!("not a database dump (malformed or truncated JSON): {e}")))?;
    let n = dump::load(&st.db, &d).await?;
    tracing::info!(%peer, keys = n, "database loaded from a dump");
    Ok(json(StatusCode::OK, &serde_json::json!({ "loaded": n })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Span::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Span::Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Span::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Span::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Span::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Span::Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Span::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Span::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Span::Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Span::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Span::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Span::Full);
    }

    #[test]
    fn query_decoding() {
        let q = query_pairs(Some("name=vmlinuz%2D6.1+x&kind=kernel&peer")).unwrap();
        assert_eq!(q[0], ("name".into(), "vmlinuz-6.1 x".into()));
        assert_eq!(q[2], ("peer".into(), "".into()));
        assert!(query_pairs(Some("name=%zz")).is_err());
        assert!(query_pairs(Some("name=%4")).is_err());
    }
}
