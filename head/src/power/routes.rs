//! The power API: power actions through BMCs, and the cluster secrets BMC passwords come from.

use crate::agent_channel::Hub;
use crate::core::db::Database;
use crate::core::http::{ApiFailure, ApiResult, Routes, json, parse};
use crate::power::{self, PowerSettings};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use clusterware_shared::api::path;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub db: Database,
    pub hub: Arc<Hub>,
    pub power: PowerSettings,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes {
        admin: Router::new()
            .route(path::NODES_POWER, post(node_power))
            .route(path::SECRETS, get(list_secrets))
            .route(path::SECRET, put(set_secret).delete(remove_secret))
            .with_state(api.clone()),
        open: Router::new(),
    }
}

async fn node_power(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let req: clusterware_shared::power::PowerRequest = parse(&body)?;
    use clusterware_shared::power::{PowerAction, PowerOutcome, PowerResults};
    power::check(&req).map_err(ApiFailure::bad_request)?;
    let nodes = st.hub.resolve(&req.nodes).await?;
    let who: String = headers
        .get("x-clusterware-user")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("unknown")
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(64)
        .collect();
    let action = power::describe(&req);
    let ask = power::Ask { action: req.action, soft: req.soft, boot: req.boot };
    let results = power::run(&st.db, &st.power, nodes, ask, std::time::Duration::from_secs(req.timeout_secs)).await?;
    for r in &results {
        let outcome = match r.outcome {
            PowerOutcome::Ok => "ok",
            PowerOutcome::Failed => "failed",
            PowerOutcome::Timeout => "timeout",
        };
        if req.action == PowerAction::Status {
            tracing::debug!(node = %r.name, %action, by = %who, %peer, %outcome, message = %r.message, "power");
        } else {
            tracing::info!(node = %r.name, %action, by = %who, %peer, %outcome, message = %r.message, "power");
        }
    }
    if req.action == PowerAction::Status {
        return Ok(crate::core::http::quiet(json(StatusCode::OK, &PowerResults { results })));
    }
    let by = |o: PowerOutcome| {
        crate::core::http::node_range(results.iter().filter(|r| r.outcome == o).map(|r| r.name.as_str()))
    };
    let mut what =
        format!("power {action} {}:", crate::core::http::node_range(results.iter().map(|r| r.name.as_str())));
    for (o, label) in [(PowerOutcome::Ok, "ok"), (PowerOutcome::Failed, "failed"), (PowerOutcome::Timeout, "timed out")]
    {
        if results.iter().any(|r| r.outcome == o) {
            what.push_str(&format!(" {label} {};", by(o)));
        }
    }
    what.pop();
    Ok(crate::core::http::described(json(StatusCode::OK, &PowerResults { results }), what))
}

async fn list_secrets(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &clusterware_shared::power::SecretList { secrets: power::list_secrets(&st.db).await? }))
}

async fn set_secret(
    State(st): State<Arc<Api>>,
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
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    let info = power::remove_secret(&st.db, &name).await?;
    tracing::info!(%peer, %name, "secret removed");
    Ok(json(StatusCode::OK, &info))
}
