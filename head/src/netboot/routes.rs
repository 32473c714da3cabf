//! The network boot API: the iPXE boot script (no credential: iPXE fetches it).

use crate::agent_channel::Hub;
use crate::agent_channel::routes::mac_param;
use crate::core::complaints::Complaints;
use crate::core::db::Database;
use crate::core::http::{ApiResult, Routes, query_pairs};
use crate::core::schema::HeadRecord;
use crate::netboot::script::{self, Script};
use axum::Router;
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clusterware_shared::api::path;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub db: Database,
    pub head: HeadRecord,
    pub hub: Arc<Hub>,
    pub complaints: Complaints,
    pub identity: Arc<crate::registry::identity::Identity>,
    /// [`path::BOOT_CA`]'s answer.
    pub ca_cpio: axum::body::Bytes,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    let cpio = api.ca_cpio.clone();
    Routes {
        admin: Router::new(),
        open: Router::new()
            .route(path::BOOT_SCRIPT, get(boot_script))
            .route(
                path::BOOT_CA,
                get(
                    move || async move { ([(header::CONTENT_TYPE, "application/octet-stream")], cpio).into_response() },
                ),
            )
            .with_state(api),
    }
}

/// The newc archive of [`path::BOOT_CA`]: the CA at [`clusterware_shared::agent::CA_FILE`].
pub fn ca_cpio(ca_pem: &str) -> Vec<u8> {
    use clusterware_shared::cpio::{Entry, write};
    let file = clusterware_shared::agent::CA_FILE.trim_start_matches('/');
    let mut entries = std::collections::BTreeMap::new();
    let mut dir = String::new();
    for part in file.split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, d)| d) {
        dir = if dir.is_empty() { part.to_string() } else { format!("{dir}/{part}") };
        entries.insert(dir.clone(), Entry::Dir(0o755));
    }
    entries.insert(file.to_string(), Entry::File { data: ca_pem.as_bytes().to_vec(), mode: 0o644 });
    write(&entries)
}

fn ipxe(text: String) -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
}

/// `GET /api/v1/boot/script?mac=M`: the iPXE script for the node's boot config, served by the
/// head the node network-boots from (no credential: iPXE fetches it). When the node itself asks
/// (from its registered address), this head becomes its parent and the node `booting`; a fetch
/// from anywhere else changes nothing.
async fn boot_script(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    let mac = mac_param(&query_pairs(q.as_deref())?)?;
    let base = st.head.boot_base();
    let Some(node) = st.hub.nodes.by_mac(&mac) else {
        return Ok(ipxe(script::retry(base, &mac, "no node has this MAC")));
    };
    // The node itself asks: its script carries a one-time enrollment token (made only then, so
    // nobody else can have the node's token from here).
    let own = peer.ip() == IpAddr::V4(node.ip);
    let enroll = match own {
        true => Some(st.identity.token_for(&node).await?.token),
        false => None,
    };
    match script::for_node(&st.db, &st.hub.view, &node, &mac, enroll.as_deref()).await? {
        Script::Boot(text) => {
            if own {
                st.hub.booting(&node, &mac);
            } else {
                st.complaints.complain(format!("script {mac} {}", peer.ip()), || {
                    tracing::info!(node = %node.name, %mac, %peer, registered = %node.ip, "boot script fetched from an address that is not the node's: the node's state is left as it is")
                });
            }
            Ok(ipxe(text))
        }
        Script::Retry(why) => {
            st.complaints.complain(format!("retry {mac}"), || tracing::warn!(node = %node.name, %mac, "{why}"));
            Ok(ipxe(script::retry(base, &mac, &why)))
        }
    }
}
