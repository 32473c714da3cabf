//! The admin HTTP API (`/api/v1`), on axum. Every endpoint but `health` needs the admin
//! credential (`Authorization: Bearer <token>`, the token derived from `database.admin_pass`):
//! 401 without one, 403 with a wrong one. Every error is JSON `{kind, message}`.

use crate::db::{Database, DbError};
use crate::heads::{self, HeadRecord};
use crate::registry::{self, RegistryError};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clusterware_shared::api::{
    ApiError, CreateNodes, DeleteNodes, ErrorKind, HeadList, Health, NodeList, PREFIX, UpdateNodes,
};
use clusterware_shared::auth::{BEARER, tokens_equal};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest request body accepted (a CSV of 100,000 nodes fits).
pub const BODY_LIMIT: usize = 64 << 20;

pub struct AppState {
    pub db: Database,
    /// The admin token every request must carry.
    pub token: String,
    pub head: HeadRecord,
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
            ApiFailure::Registry(r) => match r {
                RegistryError::Invalid(_) => ErrorKind::BadRequest,
                RegistryError::Conflict(_) => ErrorKind::Conflict,
                RegistryError::NotFound(_) => ErrorKind::NotFound,
                RegistryError::Corrupt { .. } => ErrorKind::Internal,
                RegistryError::Db(e) => db_kind(e),
            },
            ApiFailure::Db(e) => db_kind(e),
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
        (status, axum::Json(ApiError { kind, message: self.to_string() })).into_response()
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
        .route_layer(middleware::from_fn_with_state(state.clone(), require_admin));
    let api = Router::new().route("/health", get(health)).merge(admin);
    Router::new()
        .nest(PREFIX, api)
        .fallback(|| async { ApiFailure::NotFound("no such endpoint".into()) })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state)
}

async fn require_admin(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let given =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix(BEARER));
    match given {
        None => ApiFailure::Unauthorized.into_response(),
        Some(t) if !tokens_equal(t.trim(), &st.token) => {
            let path = req
                .extensions()
                .get::<OriginalUri>()
                .map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
            tracing::warn!(%path, "request with a wrong admin credential refused");
            ApiFailure::Forbidden.into_response()
        }
        Some(_) => next.run(req).await,
    }
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    json(
        StatusCode::OK,
        &Health { name: st.head.name.clone(), version: st.head.version.clone(), database: st.db.backend().into() },
    )
}

async fn list_heads(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &HeadList { heads: heads::list(&st.db).await? }))
}

async fn list_nodes(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &NodeList { nodes: registry::list(&st.db).await? }))
}

async fn get_node(State(st): State<Arc<AppState>>, Path(uid): Path<String>) -> ApiResult<Response> {
    let nodes = registry::list(&st.db).await?;
    let n = nodes
        .into_iter()
        .find(|n| n.uid == uid)
        .ok_or_else(|| ApiFailure::NotFound(format!("no node with uid {uid}")))?;
    Ok(json(StatusCode::OK, &n))
}

async fn create_nodes(
    State(st): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: CreateNodes = parse(&body)?;
    let nodes = registry::create(&st.db, req.nodes).await?;
    tracing::info!(%peer, count = nodes.len(), first = %nodes[0].name, "nodes created");
    Ok(json(StatusCode::CREATED, &NodeList { nodes }))
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
    Ok(json(StatusCode::OK, &NodeList { nodes }))
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
    Ok(json(StatusCode::OK, &NodeList { nodes }))
}
