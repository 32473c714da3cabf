//! The rebalancing API: a round on request (or its plan, `dry_run`).

use crate::agent_channel::Hub;
use crate::core::http::{ApiResult, Routes, json, parse};
use crate::rebalance::Settings;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use clusterware_shared::api::path;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub hub: Arc<Hub>,
    pub rebalance: Settings,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes { admin: Router::new().route(path::REBALANCE, post(rebalance)).with_state(api.clone()), open: Router::new() }
}

async fn rebalance(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: clusterware_shared::agent::RebalanceRequest = parse(&body)?;
    if !req.dry_run {
        tracing::info!(%peer, "rebalancing round requested");
    }
    let r = st.hub.rebalance(&st.rebalance, None, req.dry_run).await?;
    if req.dry_run {
        return Ok(crate::core::http::quiet(json(StatusCode::OK, &r)));
    }
    let what = format!("rebalancing round: {} nodes moved", r.moves.len());
    Ok(crate::core::http::described(json(StatusCode::OK, &r), what))
}
