//! The TFTP names of Secure Boot network boot, served beside `tftp.dir`'s files:
//!
//! | name | content |
//! |---|---|
//! | `sb/shimx64.efi` (`secure_boot.boot_file`) | `secure_boot.shim` |
//! | `sb/grubx64.efi` (same directory: the name shim asks for) | `secure_boot.grub` |
//! | `sb/mmx64.efi` | `secure_boot.mokmanager`, when set |
//! | `grub/grub.cfg` | [`grub::BOOTSTRAP`] |
//! | `grub/node/<mac>.cfg` | the node's GRUB script (a one-time enrollment token only when the node itself asks) |
//! | `cw/file/<id>` | a kernel or initramfs from the file store (no other kind: TFTP is as open as plain HTTP) |
//! | `cw/ca.cpio` | the CA archive ([`crate::netboot::routes::ca_cpio`]) |
//!
//! Any other name in the `sb/` (the shim's directory), `grub/` and `cw/` namespaces is "not
//! found" (shim probes `revocations_*.efi` and `shim_certificate_N.efi`, GRUB
//! `grub/x86_64-efi/*`): answered at debug level, never a warning per request.

use crate::agent_channel::Hub;
use crate::core::complaints::Complaints;
use crate::core::db::Database;
use crate::netboot::tftp::{Content, E_ACCESS, E_NOT_FOUND, Names, Opened, Refusal};
use crate::netboot::{grub, script};
use crate::registry::identity::Identity;
use crate::storage::Storage;
use clusterware_shared::config::SecureBootFiles;
use clusterware_shared::ids::MacAddr;
use futures::FutureExt;
use futures::future::BoxFuture;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;

/// Largest signed loader served (shim and GRUB are a few MiB).
const MAX_LOADER: u64 = 64 << 20;
/// Largest stored kernel or initramfs served (GRUB's TFTP rolls the block number over).
const MAX_STORED: u64 = 1 << 30;
/// Longest name looked at.
const MAX_NAME: usize = 255;
/// The kinds of stored file served (as plain HTTP serves them).
const KINDS: [&str; 2] = ["kernel", "initramfs"];

/// What a name is, before anything is opened or generated.
#[derive(Debug, PartialEq, Eq)]
pub enum Name {
    Shim,
    Grub,
    MokManager,
    Bootstrap,
    NodeScript(MacAddr),
    File(String),
    Ca,
    /// In one of the namespaces, but nothing: "not found".
    Missing,
}

/// What `name` (as a TFTP request names it, perhaps with a leading `/`) is, with `boot_file` the
/// name DHCP hands out for shim; `None` for a name outside these namespaces (`tftp.dir`'s).
pub fn classify(name: &str, boot_file: &str) -> Option<Name> {
    let n = name.trim_start_matches('/');
    let (dir, _) = boot_file.rsplit_once('/').unwrap_or(("", boot_file));
    let in_dir = |f: &str| if dir.is_empty() { f.to_string() } else { format!("{dir}/{f}") };
    if n == boot_file {
        return Some(Name::Shim);
    }
    if n == in_dir("grubx64.efi") {
        return Some(Name::Grub);
    }
    if n == in_dir("mmx64.efi") {
        return Some(Name::MokManager);
    }
    let spaces = ["grub/", "cw/"];
    let sb_space = !dir.is_empty() && n.starts_with(&format!("{dir}/"));
    if !sb_space && !spaces.iter().any(|s| n.starts_with(s)) {
        return None;
    }
    if n.len() > MAX_NAME || n.chars().any(|c| c.is_control()) {
        return Some(Name::Missing);
    }
    if n == "grub/grub.cfg" {
        return Some(Name::Bootstrap);
    }
    if n == "cw/ca.cpio" {
        return Some(Name::Ca);
    }
    if let Some(mac) = n.strip_prefix("grub/node/").and_then(|m| m.strip_suffix(".cfg")) {
        // The MAC as GRUB writes it: lower-case, colon-separated.
        if let Ok(m) = mac.parse::<MacAddr>()
            && m.to_string() == mac
        {
            return Some(Name::NodeScript(m));
        }
        return Some(Name::Missing);
    }
    if let Some(id) = n.strip_prefix("cw/file/")
        && clusterware_shared::api::is_file_id(id)
    {
        return Some(Name::File(id.to_string()));
    }
    Some(Name::Missing)
}

/// The resolver [`crate::netboot::tftp::TftpServer`] asks first.
pub struct SecureBootNames {
    pub files: SecureBootFiles,
    pub db: Database,
    pub hub: Arc<Hub>,
    pub identity: Arc<Identity>,
    pub storage: Arc<Storage>,
    pub ca_cpio: bytes::Bytes,
    /// This head's address on the cluster network (GRUB fetches the kernel from it).
    pub server_ip: Ipv4Addr,
    pub complaints: Complaints,
}

fn missing(name: &str) -> Refusal {
    (E_NOT_FOUND, format!("{:?} does not exist", clusterware_shared::ids::shown(name)))
}

impl SecureBootNames {
    /// A configured loader, opened (a missing one is warned about once a minute: the package
    /// that ships it is probably not installed).
    async fn loader(&self, key: &str, path: PathBuf, name: &str) -> Result<Content, Refusal> {
        let p = path.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let f = std::fs::File::open(&p)?;
            let meta = f.metadata()?;
            if !meta.is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            Ok((f, meta.len()))
        })
        .await
        .map_err(|e| (E_ACCESS, e.to_string()))?;
        match opened {
            Ok((f, len)) => Ok(Content::File(Opened::new(f, len, MAX_LOADER)?)),
            Err(e) => {
                self.complaints.complain(format!("sb loader {key}"), || {
                    tracing::warn!(key, path = %path.display(), error = %e, "a Secure Boot node asked for a boot loader this head cannot serve (install shim-signed and grub-efi-amd64-signed, or set the key in base.ini)")
                });
                Err(missing(name))
            }
        }
    }

    /// `grub/node/<mac>.cfg`, as the iPXE boot script route makes the iPXE script.
    async fn node_script(&self, mac: MacAddr, peer: IpAddr) -> Result<Content, Refusal> {
        let text = |s: String| Ok(Content::Mem(s.into()));
        let Some(node) = self.hub.nodes.by_mac(&mac) else {
            return text(grub::retry(&mac, "no node has this MAC"));
        };
        let internal = |e: String| {
            tracing::warn!(node = %node.name, %mac, error = %e, "cannot make the GRUB boot script");
            (E_ACCESS, "the head cannot make the boot script now".to_string())
        };
        let plan = script::plan(&self.db, &self.hub.view, &node, &mac).await.map_err(|e| internal(e.to_string()))?;
        let plan = match plan {
            Ok(p) => p,
            Err(why) => {
                self.complaints
                    .complain(format!("grub retry {mac}"), || tracing::warn!(node = %node.name, %mac, "{why}"));
                return text(grub::retry(&mac, &why));
            }
        };
        // The node itself asks: its script carries a one-time enrollment token (made only then).
        let own = peer == IpAddr::V4(node.ip);
        let enroll = match own {
            true => Some(self.identity.token_for(&node).await.map_err(|e| internal(e.to_string()))?.token),
            false => None,
        };
        let me = &self.hub.view.me;
        let args = script::kernel_args(me, &mac, &plan.cfg, plan.rootfs.as_ref(), &plan.heads, enroll.as_deref());
        let out = grub::boot(me, self.server_ip, &node, &mac, &plan.cfg, &args);
        if own {
            self.hub.booting(&node, &mac);
        } else {
            self.complaints.complain(format!("grub script {mac} {peer}"), || {
                tracing::info!(node = %node.name, %mac, %peer, registered = %node.ip, "GRUB boot script fetched from an address that is not the node's: the node's state is left as it is")
            });
        }
        text(out)
    }

    /// A kernel or initramfs from the file store.
    async fn stored(&self, id: &str, name: &str, peer: IpAddr) -> Result<Content, Refusal> {
        let rec = self.storage.record(id).await.map_err(|_| missing(name))?;
        if !KINDS.contains(&rec.kind.as_str()) {
            return Err((E_ACCESS, format!("a file of kind {} is not served over TFTP", rec.kind)));
        }
        let f = self.storage.open_verified(&rec, true).await.map_err(|e| {
            self.storage.complain(&rec, std::net::SocketAddr::new(peer, 0), false, &e);
            (E_ACCESS, format!("file {id} cannot be served: {e}"))
        })?;
        Ok(Content::File(Opened::new(f, rec.size, MAX_STORED)?))
    }

    async fn resolve_name(&self, n: Name, name: &str, peer: IpAddr) -> Result<Content, Refusal> {
        let f = &self.files;
        match n {
            Name::Shim => self.loader("secure_boot.shim", f.shim.clone(), name).await,
            Name::Grub => self.loader("secure_boot.grub", f.grub.clone(), name).await,
            Name::MokManager => match &f.mokmanager {
                Some(p) => self.loader("secure_boot.mokmanager", p.clone(), name).await,
                None => Err(missing(name)),
            },
            Name::Bootstrap => Ok(Content::Mem(grub::BOOTSTRAP.into())),
            Name::Ca => Ok(Content::Mem(self.ca_cpio.clone())),
            Name::NodeScript(mac) => self.node_script(mac, peer).await,
            Name::File(id) => self.stored(&id, name, peer).await,
            Name::Missing => Err(missing(name)),
        }
    }
}

impl Names for SecureBootNames {
    fn resolve<'a>(&'a self, name: &'a str, peer: IpAddr) -> BoxFuture<'a, Option<Result<Content, Refusal>>> {
        async move {
            let n = classify(name, &self.files.boot_file)?;
            Some(self.resolve_name(n, name, peer).await)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names map to what they are; traversal, odd MACs and ids, and control characters are
    /// "not found" inside the namespaces; names outside them are left to `tftp.dir`.
    #[test]
    fn names_are_validated() {
        let sb = "sb/shimx64.efi";
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        for (name, want) in [
            ("sb/shimx64.efi", Some(Name::Shim)),
            ("/sb/grubx64.efi", Some(Name::Grub)),
            ("sb/mmx64.efi", Some(Name::MokManager)),
            ("/grub/grub.cfg", Some(Name::Bootstrap)),
            ("/grub/node/52:54:00:00:00:01.cfg", Some(Name::NodeScript(mac))),
            ("cw/ca.cpio", Some(Name::Ca)),
            (&format!("cw/file/{id}"), Some(Name::File(id.into()))),
            ("sb/revocations_sbat.efi", Some(Name::Missing)),
            ("sb/shim_certificate_0.efi", Some(Name::Missing)),
            ("/grub/x86_64-efi/grub.cfg", Some(Name::Missing)),
            ("grub/node/../../etc/passwd", Some(Name::Missing)),
            ("grub/node/52:54:00:00:00:01.cfg/../x", Some(Name::Missing)),
            ("grub/node/525400000001.cfg", Some(Name::Missing)),
            ("grub/node/52-54-00-00-00-01.cfg", Some(Name::Missing)),
            ("grub/node/52:54:00:00:00:0A.cfg", Some(Name::Missing)),
            ("cw/file/../../etc/passwd", Some(Name::Missing)),
            (&format!("cw/file/{}", id.to_uppercase()), Some(Name::Missing)),
            (&format!("cw/file/{id}/x"), Some(Name::Missing)),
            ("cw/ca.cpio\n", Some(Name::Missing)),
            ("sb/../snponly.efi", Some(Name::Missing)),
            ("snponly.efi", None),
            ("undionly.kpxe", None),
            ("../grub/grub.cfg", None),
            ("sbx/shimx64.efi", None),
        ] {
            assert_eq!(classify(name, sb), want, "{name}");
        }
        assert_eq!(classify(&format!("cw/{}", "x".repeat(300)), sb), Some(Name::Missing));
        // Another boot file name moves shim's directory; at the top level only the three names.
        assert_eq!(classify("x64/sb/grubx64.efi", "x64/sb/shim.efi"), Some(Name::Grub));
        assert_eq!(classify("sb/grubx64.efi", "x64/sb/shim.efi"), None);
        assert_eq!(classify("grubx64.efi", "shimx64.efi"), Some(Name::Grub));
        assert_eq!(classify("other.efi", "shimx64.efi"), None);
    }
}
