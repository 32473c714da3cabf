//! The network boot API: the iPXE boot script (no credential: iPXE fetches it).

use crate::agent_channel::Hub;
use crate::agent_channel::routes::mac_param;
use crate::core::complaints::Complaints;
use crate::core::db::Database;
use crate::core::http::{ApiFailure, ApiResult, Routes, query_pairs};
use crate::core::schema::HeadRecord;
use crate::netboot::script::{self, Script};
use crate::netboot::tftp;
use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clusterware_shared::api::ErrorKind;
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
    /// `tftp.dir`: the boot files [`path::BOOT_FILE`] serves.
    pub tftp_dir: std::path::PathBuf,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    let cpio = api.ca_cpio.clone();
    Routes {
        admin: Router::new(),
        open: Router::new()
            .route(path::BOOT_SCRIPT, get(boot_script))
            .route(path::BOOT_FILE, get(boot_file))
            .route(
                path::BOOT_CA,
                get(
                    move || async move { ([(header::CONTENT_TYPE, "application/octet-stream")], cpio).into_response() },
                ),
            )
            .with_state(api),
    }
}

/// The archive of [`path::BOOT_CA`]: the CA at [`clusterware_shared::agent::CA_FILE`], newc,
/// gzip-compressed. Compressed, Linux finds it whatever the length of the initramfs before it:
/// UEFI's kernel loader puts the two end to end, and a plain newc archive is only found at a
/// multiple of 4 bytes (a gzip'd initramfs of another length hid the CA from the node).
pub fn ca_cpio(ca_pem: &str) -> Vec<u8> {
    use clusterware_shared::cpio::{Entry, gzip, write};
    let file = clusterware_shared::agent::CA_FILE.trim_start_matches('/');
    let mut entries = std::collections::BTreeMap::new();
    let mut dir = String::new();
    for part in file.split('/').collect::<Vec<_>>().split_last().map_or(&[][..], |(_, d)| d) {
        dir = if dir.is_empty() { part.to_string() } else { format!("{dir}/{part}") };
        entries.insert(dir.clone(), Entry::Dir(0o755));
    }
    entries.insert(file.to_string(), Entry::File { data: ca_pem.as_bytes().to_vec(), mode: 0o644 });
    gzip(&write(&entries), 9)
}

/// `GET /api/v1/boot/files/{name}`: a file of `tftp.dir` over HTTP, for UEFI HTTP Boot (no
/// credential: firmware fetches it). The same files TFTP serves, checked the same way
/// ([`tftp::open`]: nothing outside the directory, regular files only); streamed from the handle
/// that was checked, with its length (HTTP Boot asks with HEAD first).
async fn boot_file(State(st): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult<Response> {
    let dir = st.tftp_dir.clone();
    let shown = clusterware_shared::ids::shown(&name).to_string();
    let opened = tokio::task::spawn_blocking(move || tftp::open(&dir, &name))
        .await
        .map_err(|e| ApiFailure::new(ErrorKind::Internal, format!("opening a boot file: {e}")))?;
    let (file, len) = match opened {
        Ok(o) => o.into_parts(),
        Err(r) if tftp::not_found(&r) => {
            return Err(ApiFailure::not_found(format!("no boot file {shown:?} in tftp.dir on this head")));
        }
        Err((_, why)) => return Err(ApiFailure::new(ErrorKind::Forbidden, why)),
    };
    let kind = if shown.ends_with(".efi") { "application/efi" } else { "application/octet-stream" };
    let body = axum::body::Body::from_stream(crate::core::http::file_chunks(Arc::new(file), 0, len));
    Ok(([(header::CONTENT_TYPE, kind.to_string()), (header::CONTENT_LENGTH, len.to_string())], body).into_response())
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

#[cfg(test)]
mod tests {
    /// The CA archive is gzip'd newc holding the CA where the agent looks for it.
    #[test]
    fn the_ca_archive_holds_the_ca() {
        let a = super::ca_cpio("-----BEGIN CERTIFICATE-----\nxyz\n-----END CERTIFICATE-----\n");
        assert!(a.starts_with(&[0x1f, 0x8b]), "gzip'd");
        let entries = clusterware_shared::cpio::read_any(&a).unwrap();
        let ca = entries.iter().find(|e| format!("/{}", e.path) == clusterware_shared::agent::CA_FILE).unwrap();
        assert!(String::from_utf8_lossy(&ca.data).contains("xyz"));
        assert!(entries.iter().any(|e| e.path == "etc" && e.mode & 0o040000 != 0), "{entries:?}");
    }
}
