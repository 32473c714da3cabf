//! The agent channel's API: the node-facing endpoints under `/agent/` (each checks that a node speaks from its registered address), node status and scripts for administrators, cluster SSH keys.

use crate::agent_channel::{
    Caller, Hub,
    keys::{self},
};
use crate::core::db::Database;
use crate::core::http::{ApiFailure, ApiResult, ClientCert, Routes, json, parse, query_pairs};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use clusterware_shared::agent::{
    AddKey, HeadsReply, KeysReply, MAX_REPORT_BYTES, RunScript, ScriptOutcome, ScriptResults, SshKeyList, StatusQuery,
    StatusReport,
};
use clusterware_shared::api::DeleteNodes;
use clusterware_shared::api::path;
use clusterware_shared::ids::MacAddr;
use std::net::SocketAddr;
use std::sync::Arc;

fn agent_path(p: &str) -> String {
    format!("{}{p}", path::AGENT)
}

/// What the handlers need.
pub struct Api {
    pub db: Database,
    pub hub: Arc<Hub>,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes {
        admin: Router::new()
            .route(path::NODES_STATUS, post(node_status))
            .route(path::NODES_REPORTS, post(node_reports))
            .route(path::NODES_SCRIPT, post(run_script))
            .route(
                path::NODES_COUNTERS,
                get(|State(st): State<Arc<Api>>| async move { json(StatusCode::OK, &st.hub.counters()) }),
            )
            .route(path::KEYS, get(list_keys).post(add_key))
            .route(path::KEY, delete(remove_key))
            .with_state(api.clone()),
        open: Router::new()
            .route(&agent_path(path::agent::HEADS), get(agent_heads))
            .route(&agent_path(path::agent::STATUS), post(agent_status))
            .route(&agent_path(path::agent::WAIT), get(agent_wait))
            .route(&agent_path(path::agent::RESULT), post(agent_result))
            .route(&agent_path(path::agent::KEYS), get(agent_keys))
            .with_state(api),
    }
}

/// The `mac=` parameter of a node's request.
pub fn mac_param(pairs: &[(String, String)]) -> ApiResult<MacAddr> {
    let m = pairs
        .iter()
        .find(|(k, _)| k == "mac")
        .map(|(_, v)| v.as_str())
        .ok_or_else(|| ApiFailure::bad_request("mac= is required"))?;
    m.parse().map_err(|_| ApiFailure::bad_request(format!("{m:?} is not a MAC address")))
}

/// The caller of a node request: its address and TLS client certificate.
fn caller(peer: SocketAddr, cert: Option<axum::Extension<ClientCert>>) -> Caller {
    Caller { ip: peer.ip(), cert: cert.map(|c| c.0) }
}

async fn agent_heads(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<ClientCert>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let mac = mac_param(&query_pairs(q.as_deref())?)?;
    st.hub.authenticate(&mac, caller(peer, cert))?;
    Ok(json(StatusCode::OK, &HeadsReply { heads: st.hub.view.heads_for(&mac) }))
}

/// A status push, counted (`clusterware_status_pushes_total`) and timed
/// (`clusterware_status_push_duration_seconds`: parsing and absorbing the report).
async fn agent_status(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<ClientCert>>,
    body: Bytes,
) -> ApiResult<Response> {
    let Some(m) = crate::core::metrics::on() else { return absorb(&st, peer, cert, &body) };
    let started = std::time::Instant::now();
    let r = absorb(&st, peer, cert, &body);
    m.status_push_seconds.observe(started.elapsed().as_secs_f64());
    m.status_pushes.get_or_create(&[("outcome", if r.is_ok() { "ok" } else { "rejected" })]).inc();
    r
}

fn absorb(st: &Api, peer: SocketAddr, cert: Option<axum::Extension<ClientCert>>, body: &Bytes) -> ApiResult<Response> {
    if body.len() > MAX_REPORT_BYTES {
        return Err(ApiFailure::bad_request(format!("a status report is at most {MAX_REPORT_BYTES} bytes")));
    }
    let report: StatusReport = serde_json::from_slice(body).map_err(|e| {
        st.hub.counters.rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(%peer, error = %e, "malformed status report refused");
        ApiFailure::bad_request(format!("malformed status report: {e}"))
    })?;
    Ok(json(StatusCode::OK, &st.hub.push(caller(peer, cert), report)?))
}

async fn agent_wait(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<ClientCert>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    let mac = mac_param(&pairs)?;
    let secs = match pairs.iter().find(|(k, _)| k == "secs") {
        None => 25,
        Some((_, v)) => v.parse::<u32>().map_err(|_| ApiFailure::bad_request(format!("secs {v:?} is not a number")))?,
    };
    let _open = crate::core::metrics::OpenPoll::start();
    Ok(json(StatusCode::OK, &st.hub.wait(caller(peer, cert), &mac, secs).await?))
}

async fn agent_result(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<ClientCert>>,
    body: Bytes,
) -> ApiResult<Response> {
    let o: ScriptOutcome = parse(&body)?;
    st.hub.outcome(caller(peer, cert), o)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn agent_keys(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<ClientCert>>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let mac = mac_param(&query_pairs(q.as_deref())?)?;
    let node = st.hub.authenticate(&mac, caller(peer, cert))?;
    Ok(json(StatusCode::OK, &KeysReply { keys: st.hub.keys_for(&node) }))
}

async fn node_status(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    let q: StatusQuery = parse(&body)?;
    let wanted = match &q.nodes {
        Some(uids) => Some(st.hub.resolve(uids).await?),
        None => None,
    };
    let nodes = st.hub.status_of(wanted, q.details).await;
    Ok(json(StatusCode::OK, &clusterware_shared::agent::NodeStatusList { nodes }))
}

async fn node_reports(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    let q: DeleteNodes = parse(&body)?;
    Ok(json(StatusCode::OK, &st.hub.reports(&q.nodes)))
}

async fn run_script(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: RunScript = parse(&body)?;
    if req.nodes.is_empty() {
        return Err(ApiFailure::bad_request("no nodes selected"));
    }
    if !(1..=3600).contains(&req.timeout_secs) {
        return Err(ApiFailure::bad_request(format!("timeout {} s is not from 1 to 3600", req.timeout_secs)));
    }
    let nodes = st.hub.resolve(&req.nodes).await?;
    tracing::info!(%peer, script = %req.script.name(), nodes = req.nodes.len(), "script requested");
    let results = st.hub.run_script(&nodes, req.script, std::time::Duration::from_secs(req.timeout_secs)).await?;
    let ok = results.iter().filter(|r| r.outcome == clusterware_shared::agent::Outcome::Ok).count();
    let what = format!(
        "script {} on {}: {ok} ok, {} not",
        req.script.name(),
        crate::core::http::node_range(results.iter().map(|r| r.name.as_str())),
        results.len() - ok
    );
    Ok(crate::core::http::described(json(StatusCode::OK, &ScriptResults { results }), what))
}

async fn list_keys(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &SshKeyList { keys: keys::list(&st.db).await? }))
}

async fn add_key(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: AddKey = parse(&body)?;
    let k = keys::add(&st.db, &req.name, &req.key).await?;
    tracing::info!(%peer, name = %k.name, "cluster SSH key added");
    Ok(json(StatusCode::CREATED, &k))
}

async fn remove_key(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let k = keys::remove(&st.db, &name).await?;
    tracing::info!(%peer, %name, "cluster SSH key removed");
    Ok(json(StatusCode::OK, &k))
}
