//! The network boot API: the iPXE boot script (no credential: iPXE fetches it).

use crate::agent_channel::Hub;
use crate::agent_channel::routes::mac_param;
use crate::bootcfg::{self, BootError};
use crate::core::db::Database;
use crate::core::error::RecordError;
use crate::core::http::{ApiResult, Routes, query_pairs};
use crate::core::schema::HeadRecord;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clusterware_shared::api::path;
use clusterware_shared::ids::MacAddr;
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub db: Database,
    pub head: HeadRecord,
    pub hub: Arc<Hub>,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes { admin: Router::new(), open: Router::new().route(path::BOOT_SCRIPT, get(boot_script)).with_state(api) }
}

/// An iPXE script that says why the node cannot boot yet and asks again in a minute.
fn retry_script(base: &str, mac: &MacAddr, why: &str) -> Response {
    let why: String = why.chars().filter(|c| !c.is_control() && *c != '$').collect();
    let again = path::full(&path::boot_script(&mac.to_string()));
    let body = format!(
        "#!ipxe\necho ClusterWare: {mac} cannot boot yet: {why}\necho Asking again in 60 s\nsleep 60\nchain {base}{again}\n"
    );
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response()
}

/// `GET /api/v1/boot/script?mac=M`: the iPXE script for the node's boot config, served by the
/// head the node network-boots from (no credential: iPXE fetches it). This head becomes the
/// node's parent, the node `booting`.
async fn boot_script(State(st): State<Arc<Api>>, RawQuery(q): RawQuery) -> ApiResult<Response> {
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
        Err(BootError::Record(RecordError::NotFound(_))) => {
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
            Err(BootError::Record(RecordError::NotFound(_))) => {
                let why = format!("boot config {name:?} names image {img:?}, which does not exist");
                return Ok(retry_script(&base, &mac, &why));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let heads: Vec<String> = st.hub.view.heads_for(&mac).into_iter().map(|h| h.url).collect();
    args.push(format!("cw.parent={base}"));
    args.push(format!("cw.heads={}", heads.join(",")));
    args.push(format!("cw.mac={mac}"));
    let kernel = format!("{base}{}", path::full(&path::file_content(&cfg.kernel, false)));
    let initrd = format!("{base}{}", path::full(&path::file_content(&cfg.initramfs, false)));
    let body = format!(
        "#!ipxe\necho ClusterWare: booting {node} ({mac}) with boot config {name} from {head}\n:retry\nkernel {kernel} initrd=initramfs {args} || goto failed\ninitrd --name initramfs {initrd} || goto failed\nboot || goto failed\n:failed\necho ClusterWare: boot failed; trying again in 10 s\nsleep 10\ngoto retry\n",
        node = node.name,
        head = st.head.name,
        args = args.join(" "),
    );
    st.hub.booting(&node, &mac);
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], body).into_response())
}
