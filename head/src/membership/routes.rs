//! The membership API: heads, the etcd cluster (join, promote, eject, leave, recover), failover, `managedb` save, load and convert; and the API of a head that is starting or detached.

use crate::agent_channel::Hub;
use crate::core::db::{Database, DbError};
use crate::core::heads;
use crate::core::http::{ApiFailure, ApiResult, Routes, json, parse, query_pairs};
use crate::core::http::{check_token, health_of};
use crate::core::schema::HeadRecord;
use crate::membership::{
    Control,
    dump::{self, Dump},
};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use clusterware_shared::api::ErrorKind;
use clusterware_shared::api::EventKind;
use clusterware_shared::api::PREFIX;
use clusterware_shared::api::path;
use clusterware_shared::api::{AddMember, ApiError, FailoverRequest, HeadList, HeadRef};
use clusterware_shared::config::{Config, Membership};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub db: Database,
    pub head: HeadRecord,
    pub control: Arc<Control>,
    pub config: Config,
    pub hub: Arc<Hub>,
    /// The cluster CA and its proof, for joining heads.
    pub ca: Arc<crate::core::tls::CaProof>,
    pub events: crate::core::events::EventLog,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes {
        admin: Router::new()
            .route(path::HEADS, get(list_heads))
            .route(
                path::DATABASE,
                get(save_database).put(load_database).layer(axum::extract::DefaultBodyLimit::max(1 << 30)),
            )
            .route(path::DATABASE_CONVERT, post(convert_database))
            .route(path::CLUSTER, get(cluster_info))
            .route(path::CLUSTER_MEMBERS, post(add_member))
            .route(path::CLUSTER_PROMOTE, post(promote_member))
            .route(path::CLUSTER_EJECT, post(eject_head))
            .route(path::CLUSTER_LEAVE, post(leave_cluster))
            .route(path::CLUSTER_RECOVER, post(recover_full))
            .route(path::CLUSTER_FAILOVER, get(get_failover).post(set_failover))
            .with_state(api.clone()),
        open: Router::new().route(path::CLUSTER_CA, get(cluster_ca)).with_state(api),
    }
}

/// `GET /api/v1/cluster/ca` (no credential, plain HTTP too): the CA a joining head will trust,
/// once it checked the proof with the password it was given.
async fn cluster_ca(State(st): State<Arc<Api>>) -> Response {
    json(
        StatusCode::OK,
        &clusterware_shared::api::ClusterCa {
            cert_pem: st.ca.ca_pem().to_string(),
            proof: st.ca.proof().await,
            api_url: st.head.api_url.clone(),
        },
    )
}

/// The API of a head that is waiting for its database: health, `recover`, and a clear answer
/// for everything else.
pub fn starting_router(ctl: Arc<Control>) -> Router {
    let name = ctl.name.clone();
    let c2 = ctl.clone();
    let api = Router::new()
        .route(path::HEALTH, get(move || async move { json(StatusCode::OK, &health_of(&name, "etcd", "starting")) }))
        .route(
            path::CLUSTER_RECOVER,
            post(move |headers: HeaderMap| async move {
                check_token(&headers, &c2.token)?;
                let r = crate::membership::recover(None, &c2).await?;
                Ok::<_, ApiFailure>(json(StatusCode::OK, &r))
            }),
        );
    Router::new().nest(PREFIX, api).fallback(|| async {
        ApiFailure::from(DbError::Unavailable(
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
        .route(path::HEALTH, get(move || async move { json(StatusCode::OK, &health_of(&n, "none", state.as_str())) }));
    Router::new().nest(PREFIX, api).fallback(move || async move {
        (StatusCode::CONFLICT, axum::Json(ApiError { kind: ErrorKind::Conflict, message: message.clone() }))
    })
}

async fn cluster_info(State(st): State<Arc<Api>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let with_data = query_pairs(q.as_deref())?.iter().any(|(k, v)| k == "data" && v == "1");
    let i = crate::membership::info(&st.db, &st.control, &st.head, &st.config.etcd_cluster_token, with_data).await?;
    Ok(json(StatusCode::OK, &i))
}

async fn add_member(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: AddMember = parse(&body)?;
    tracing::info!(%peer, head = %req.name, url = %req.peer_url, "a head asks to join");
    let r = crate::membership::add_member(&st.db, &st.control, &req, &st.config).await?;
    Ok(json(StatusCode::OK, &r))
}

async fn promote_member(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    let req: HeadRef = parse(&body)?;
    let r = crate::membership::promote(&st.db, &st.control, &req.head).await?;
    st.events.record(EventKind::Head, &req.head, "head joined the cluster (its etcd member now votes)");
    Ok(json(StatusCode::OK, &r))
}

async fn eject_head(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: HeadRef = parse(&body)?;
    let user = headers.get("x-clusterware-user").and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    tracing::warn!(%peer, %user, head = %req.head, "eject requested");
    let r = crate::membership::eject(&st.db, &st.control, &req.head, req.force).await?;
    st.events.record(EventKind::Head, &req.head, format!("head ejected from the cluster (from {peer})"));
    Ok(json(StatusCode::OK, &r))
}

async fn leave_cluster(State(st): State<Arc<Api>>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> ApiResult<Response> {
    tracing::warn!(%peer, "leave requested");
    // Recorded before: once it has left, this head writes nothing to the cluster's database.
    st.events.record(EventKind::Head, &st.head.name, format!("head leaving the cluster (managedb leave, from {peer})"));
    Ok(json(StatusCode::OK, &crate::membership::leave(&st.db, &st.control).await?))
}

async fn recover_full(State(st): State<Arc<Api>>, ConnectInfo(peer): ConnectInfo<SocketAddr>) -> ApiResult<Response> {
    tracing::warn!(%peer, "recover requested");
    Ok(json(StatusCode::OK, &crate::membership::recover(Some(&st.db), &st.control).await?))
}

async fn get_failover(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &crate::membership::failover(&st.db).await?.0))
}

async fn set_failover(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    let req: FailoverRequest = parse(&body)?;
    let f = crate::membership::set_failover(&st.db, &req).await?;
    tracing::info!(action = %req.action, enabled = f.enabled, timeout = f.timeout_secs, armed = f.armed, "failover setting changed");
    st.events.record(
        EventKind::Head,
        "failover",
        format!(
            "failover {}: {}, timeout {} s, {}",
            req.action,
            if f.enabled { "enabled" } else { "disabled" },
            f.timeout_secs,
            if f.armed { "armed" } else { "disarmed" }
        ),
    );
    Ok(json(StatusCode::OK, &f))
}

async fn convert_database(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    #[derive(serde::Deserialize)]
    struct To {
        to: String,
    }
    let req: To = parse(&body)?;
    if req.to != "etcd" {
        return Err(ApiFailure::bad_request(format!("cannot convert to {:?}: the only conversion is to etcd", req.to)));
    }
    Ok(json(StatusCode::OK, &crate::membership::convert(&st.db, &st.control, &st.config, st.head.ip).await?))
}

async fn list_heads(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    let mut heads = heads::list(&st.db).await?;
    let load = st.hub.load();
    for h in &mut heads {
        h.nodes = load.get(&h.name).copied().unwrap_or(0);
    }
    let mean = if load.is_empty() { 0.0 } else { load.values().sum::<u64>() as f64 / load.len() as f64 };
    let schema = crate::core::versions::in_force(&st.db).await?;
    Ok(json(StatusCode::OK, &HeadList { heads, mean_nodes: mean, schema: Some(schema) }))
}

async fn save_database(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &dump::save(&st.db).await?))
}

async fn load_database(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let d: Dump = serde_json::from_slice(&body)
        .map_err(|e| ApiFailure::bad_request(format!("not a database dump (malformed or truncated JSON): {e}")))?;
    let n = dump::load(&st.db, &d).await?;
    tracing::info!(%peer, keys = n, "database loaded from a dump");
    Ok(json(StatusCode::OK, &serde_json::json!({ "loaded": n })))
}
