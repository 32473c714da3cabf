//! The node registry's API: list, show, create, update and delete nodes.

use crate::core::db::Database;
use crate::core::http::{ApiFailure, ApiResult, Routes, json, parse, query_pairs};
use crate::core::listed;
use crate::registry;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use clusterware_shared::api::path;
use clusterware_shared::api::{CreateNodes, DeleteNodes, NodeList, UpdateNodes};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub db: Database,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes {
        admin: Router::new()
            .route(path::NODES, get(list_nodes).post(create_nodes))
            .route(path::NODE, get(get_node))
            .route(path::NODES_UPDATE, post(update_nodes))
            .route(path::NODES_DELETE, post(delete_nodes))
            .with_state(api.clone()),
        open: Router::new(),
    }
}

/// Nodes as the API shows them: secret attributes masked.
fn shown(mut nodes: Vec<clusterware_shared::api::Node>) -> NodeList {
    for n in &mut nodes {
        clusterware_shared::power::mask_secrets(&mut n.attributes);
    }
    NodeList { nodes }
}

/// Every node, or with `?select=SEL` those a selector as `-i` takes it names (the console's
/// filter box: the same parser as the CLIs; matching no node is an empty list, not an error).
async fn list_nodes(State(st): State<Arc<Api>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    let selector = match pairs.iter().find(|(k, _)| k == "select") {
        Some((_, v)) => Some(clusterware_shared::select::parse(v).map_err(|e| ApiFailure::bad_request(e.to_string()))?),
        None => None,
    };
    let mut nodes = registry::list(&st.db).await?;
    if let Some(sel) = selector {
        nodes.retain(|n| {
            let macs: Vec<String> = n.macs.iter().map(|m| m.to_string()).collect();
            sel.terms.iter().any(|t| t.matches(&n.name, &n.uid, &macs))
        });
    }
    Ok(json(StatusCode::OK, &shown(nodes)))
}

async fn get_node(State(st): State<Arc<Api>>, Path(uid): Path<String>) -> ApiResult<Response> {
    let n =
        registry::get(&st.db, &uid).await?.ok_or_else(|| ApiFailure::not_found(format!("no node with uid {uid}")))?;
    Ok(json(StatusCode::OK, &shown(vec![n]).nodes[0]))
}

async fn create_nodes(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: CreateNodes = parse(&body)?;
    let nodes = registry::create(&st.db, req.nodes, req.force).await?;
    tracing::info!(%peer, count = nodes.len(), first = %nodes[0].name, forced = req.force, "nodes created");
    let what = format!("created {}", crate::core::http::node_range(nodes.iter().map(|n| n.name.as_str())));
    Ok(crate::core::http::described(json(StatusCode::CREATED, &shown(nodes)), what))
}

async fn update_nodes(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: UpdateNodes = parse(&body)?;
    let (set, clear) = (listed(req.set.keys()), listed(&req.clear));
    let nodes = registry::update(&st.db, req.nodes, req.set, req.clear, req.force).await?;
    tracing::info!(%peer, count = nodes.len(), %set, %clear, forced = req.force, "node attributes changed");
    let what = format!(
        "on {}: set {set}, cleared {clear}{}",
        crate::core::http::node_range(nodes.iter().map(|n| n.name.as_str())),
        if req.force { " (forced)" } else { "" }
    );
    Ok(crate::core::http::described(json(StatusCode::OK, &shown(nodes)), what))
}

async fn delete_nodes(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Bytes,
) -> ApiResult<Response> {
    let req: DeleteNodes = parse(&body)?;
    let nodes = registry::delete(&st.db, req.nodes).await?;
    let names = listed(nodes.iter().map(|n| &n.name));
    tracing::info!(%peer, %names, "nodes deleted");
    let what = format!("deleted {}", crate::core::http::node_range(nodes.iter().map(|n| n.name.as_str())));
    Ok(crate::core::http::described(json(StatusCode::OK, &shown(nodes)), what))
}
