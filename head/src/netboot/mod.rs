//! Network boot: DHCP answers from memory, iPXE binaries over TFTP, IPv6 router advertisements.

pub mod dhcp;
pub mod flags;
pub mod grub;
pub mod ra;
pub mod routes;
pub mod sbnames;
pub mod script;
pub mod tftp;

use crate::agent_channel::Hub;
use crate::core::Ctx;
use crate::core::supervisor::Stage;
use crate::registry::cache::NodeCache;
use std::net::SocketAddr;
use std::sync::Arc;

/// Why network boot could not start.
#[derive(Debug, thiserror::Error)]
#[error("network boot on {interface}: {what}: {source}")]
pub struct StartError {
    interface: String,
    what: String,
    #[source]
    source: std::io::Error,
}

/// Starts network boot: the boot script route, and DHCP, TFTP and router advertisements on the
/// cluster-network interface when `dhcp.interface` is set.
pub async fn start(
    ctx: &Ctx<'_>,
    nodes: &Arc<NodeCache>,
    hub: &Arc<Hub>,
    identity: &Arc<crate::registry::identity::Identity>,
    storage: &Arc<crate::storage::Storage>,
) -> Result<(), StartError> {
    let ca_cpio: axum::body::Bytes = routes::ca_cpio(crate::core::tls::cluster_ca().unwrap_or_default()).into();
    ctx.serve(routes::routes(Arc::new(routes::Api {
        db: ctx.db.clone(),
        head: ctx.me().clone(),
        hub: hub.clone(),
        complaints: Default::default(),
        identity: identity.clone(),
        ca_cpio: ca_cpio.clone(),
        tftp_dir: ctx.config.boot.tftp_dir.clone(),
    })));
    let (cfg, db, view, sup) = (ctx.config, &ctx.db, &ctx.view, ctx.sup);
    let Some(iface) = cfg.boot.interface.clone() else {
        tracing::info!("network boot is off (set dhcp.interface to the cluster-network interface)");
        return Ok(());
    };
    let err = |what: &str| {
        let (iface, what) = (iface.clone(), what.to_string());
        move |source| StartError { interface: iface, what, source }
    };
    let server_ip = clusterware_shared::sys::interface_ip(&iface)
        .or(cfg.head_ip)
        .ok_or_else(|| err("finding its IPv4 address")(std::io::Error::other("the interface has no IPv4 address")))?;
    let settings = dhcp::DhcpSettings { net: cfg.boot.clone(), server_ip, http_base: view.me.boot_base().to_string() };
    let dhcp_sock = dhcp::bind(&iface, cfg.boot.dhcp_port).map_err(err("binding the DHCP port"))?;
    let tftp_sock = match cfg.boot.tftp_enabled {
        true => Some(
            tokio::net::UdpSocket::bind(SocketAddr::from((server_ip, cfg.boot.tftp_port)))
                .await
                .map_err(err("binding the TFTP port"))?,
        ),
        false => None,
    };
    if !cfg.boot.tftp_dir.is_dir() {
        tracing::warn!(dir = %cfg.boot.tftp_dir.display(), "the boot file directory tftp.dir does not exist (Debian package ipxe); firmware cannot load iPXE from this head");
    }
    let flags = flags::BootFlags::spawn(db.clone(), sup);
    let dhcp = dhcp::DhcpServer::new(db.clone(), nodes.clone(), view.clone(), settings, flags);
    sup.spawn(Stage::Serve, "dhcp", move |stop| dhcp.run(dhcp_sock, stop));
    match tftp_sock {
        Some(sock) => {
            // Secure Boot's names (signed shim and GRUB, GRUB scripts, kernels and initramfs
            // images from the file store, the CA archive) beside tftp.dir's files.
            let names = sbnames::SecureBootNames {
                files: cfg.boot.secure_boot.clone(),
                db: db.clone(),
                hub: hub.clone(),
                identity: identity.clone(),
                storage: storage.clone(),
                ca_cpio,
                server_ip,
                complaints: Default::default(),
            };
            let tftp = tftp::TftpServer::with_names(cfg.boot.tftp_dir.clone(), Some(Arc::new(names)));
            tracing::info!(interface = %iface, %server_ip, dhcp_port = cfg.boot.dhcp_port, tftp_port = cfg.boot.tftp_port, "network boot: DHCP and TFTP serving");
            sup.spawn(Stage::Serve, "tftp", move |stop| tftp.run(sock, stop));
        }
        None => {
            tracing::info!(interface = %iface, %server_ip, dhcp_port = cfg.boot.dhcp_port, "network boot: DHCP serving, TFTP off (tftp.enabled = no): only UEFI HTTP Boot and iPXE clients can boot from this head")
        }
    }
    if cfg.boot.ra {
        match ra::bind(&iface) {
            Ok(sock) => {
                let iface = iface.clone();
                sup.spawn(Stage::Serve, "router advertisements", move |stop| ra::run(sock, iface, stop))
            }
            Err(e) => {
                tracing::warn!(interface = %iface, error = %e, "cannot answer IPv6 router solicitations; iPXE may wait for IPv6 autoconfiguration")
            }
        }
    }
    Ok(())
}
