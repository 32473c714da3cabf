//! The schema of the cluster database: every key prefix, who owns it, its key builders and the
//! records stored under it (JSON values). Nothing else spells a key: capabilities name keys
//! through the constants and builders here, and `managedb save` takes its prefixes from
//! [`TABLE`].
//!
//! Records defined in `clusterware_shared` (nodes, files, images, boot configs, SSH keys,
//! storage summaries, the failover record) are the API's wire types stored as they are.

use crate::core::db::{LeaseId, Member};
use clusterware_shared::agent::{Hardware, NodeState, Script};
use clusterware_shared::api::FileRecord;
use clusterware_shared::ids::MacAddr;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// `heads/<name>`: [`HeadRecord`].
pub const HEADS: &str = "heads/";
/// `alive/<name>`: [`AliveRecord`], bound to the head's lease.
pub const ALIVE: &str = "alive/";
/// `nodes/<uid>`: `api::Node`.
pub const NODES: &str = "nodes/";
/// `index/mac/<mac>`, `index/ip/<ip>`, `index/node/<index>`: the uid owning it.
pub const INDEX: &str = "index/";
pub const MAC_INDEX: &str = "index/mac/";
pub const IP_INDEX: &str = "index/ip/";
pub const NODE_INDEX: &str = "index/node/";
/// `files/<id>`: `api::FileRecord`.
pub const FILES: &str = "files/";
/// `deleted/<id>`: [`DeletedEntry`].
pub const DELETED: &str = "deleted/";
/// `storage/<head>`: `api::StorageSummary`.
pub const SUMMARY: &str = "storage/";
/// `images/<name>`: `api::Image`.
pub const IMAGES: &str = "images/";
/// `bootconfigs/<name>`: `api::BootConfig`.
pub const BOOTCONFIGS: &str = "bootconfigs/";
/// Cluster settings.
pub const SETTINGS: &str = "settings/";
/// The boot config of nodes without `_boot_config` (the config's name).
pub const DEFAULT_BOOT_CONFIG: &str = "settings/default_boot_config";
/// `status/<uid>`: [`StatusRecord`].
pub const STATUS: &str = "status/";
/// `commands/<uid>/<id>`: [`CommandRecord`], under a lease.
pub const COMMANDS: &str = "commands/";
/// `keys/<name>`: `agent::SshKey`.
pub const KEYS: &str = "keys/";
/// `moves/<uid>`: [`MoveRecord`], under a lease as long as the hold-off.
pub const MOVES: &str = "moves/";
/// The head running a rebalancing round, under a short lease.
pub const REBALANCE_LOCK: &str = "rebalance/lock";
/// `secrets/<name>`: [`SecretRecord`].
pub const SECRETS: &str = "secrets/";
/// `api::Failover`: automatic failover's settings and last event.
pub const FAILOVER: &str = "failover";
/// `ejected/<name>`: [`EjectedRecord`].
pub const EJECTED: &str = "ejected/";
/// `tokens/<name>`: [`TokenRecord`] (named admin API tokens, hashed).
pub const TOKENS: &str = "tokens/";
/// [`CaRecord`]: the cluster CA (a head without it takes it from here).
pub const CLUSTER_CA: &str = "cluster/ca";
/// `enroll/<SHA-256 of a token>`: [`EnrollRecord`] (a node's one-time enrollment token, leased).
pub const ENROLL: &str = "enroll/";
/// `node_certs/<uid>`: [`NodeCertRecord`] (a node's current certificate).
pub const NODE_CERTS: &str = "node_certs/";
/// `events/<id>`: `api::Event` (the event log, `core::events`).
pub const EVENTS: &str = "events/";
/// `cluster/schema`: [`SchemaRecord`] (the version of this very layout, `core::versions`);
/// absent in databases from before it was versioned (version 0).
pub const SCHEMA_VERSION: &str = "cluster/schema";
/// `cluster/migration`: the name of the head migrating the schema (leased).
pub const MIGRATION_LOCK: &str = "cluster/migration";

/// One prefix (or single key) of the schema.
#[derive(Debug, Clone, Copy)]
pub struct Owned {
    pub prefix: &'static str,
    /// The capability that writes it.
    pub owner: &'static str,
    /// Whether `managedb save` keeps it: cluster data, as opposed to what belongs to the
    /// cluster's current heads (records, liveness, node status, leases).
    pub saved: bool,
}

const fn owned(prefix: &'static str, owner: &'static str, saved: bool) -> Owned {
    Owned { prefix, owner, saved }
}

/// Every prefix, by owner.
pub const TABLE: &[Owned] = &[
    owned(HEADS, "core", false),
    owned(ALIVE, "core", false),
    owned(NODES, "registry", true),
    owned(INDEX, "registry", true),
    owned(FILES, "storage", true),
    owned(DELETED, "storage", true),
    owned(SUMMARY, "storage", false),
    owned(IMAGES, "bootcfg", true),
    owned(BOOTCONFIGS, "bootcfg", true),
    owned(SETTINGS, "bootcfg", true),
    owned(STATUS, "agent_channel", false),
    owned(COMMANDS, "agent_channel", false),
    owned(KEYS, "agent_channel", true),
    owned(MOVES, "rebalance", false),
    owned(REBALANCE_LOCK, "rebalance", false),
    owned(SECRETS, "power", true),
    owned(FAILOVER, "membership", false),
    owned(EJECTED, "membership", false),
    owned(TOKENS, "core", true),
    // The CA belongs to the cluster's heads: a dump loaded elsewhere keeps that cluster's.
    owned(CLUSTER_CA, "core", false),
    // Tokens and certificates from this cluster's CA mean nothing to another cluster.
    owned(ENROLL, "registry", false),
    owned(NODE_CERTS, "registry", false),
    // What happened on this cluster is not another cluster's history.
    owned(EVENTS, "core", false),
    // A dump says its schema in its own field.
    owned(SCHEMA_VERSION, "core", false),
    owned(MIGRATION_LOCK, "core", false),
];

/// The prefixes `managedb save` keeps, in [`TABLE`]'s order.
pub fn saved() -> impl Iterator<Item = &'static str> {
    TABLE.iter().filter(|o| o.saved).map(|o| o.prefix)
}

pub fn head(name: &str) -> String {
    format!("{HEADS}{name}")
}
pub fn alive(name: &str) -> String {
    format!("{ALIVE}{name}")
}
pub fn node(uid: &str) -> String {
    format!("{NODES}{uid}")
}
pub fn mac_index(mac: &MacAddr) -> String {
    format!("{MAC_INDEX}{mac}")
}
pub fn enroll(token_hash: &str) -> String {
    format!("{ENROLL}{token_hash}")
}
pub fn node_cert(uid: &str) -> String {
    format!("{NODE_CERTS}{uid}")
}
pub fn ip_index(ip: &Ipv4Addr) -> String {
    format!("{IP_INDEX}{ip}")
}
pub fn node_index(index: u32) -> String {
    format!("{NODE_INDEX}{index}")
}
pub fn file(id: &str) -> String {
    format!("{FILES}{id}")
}
pub fn deleted(id: &str) -> String {
    format!("{DELETED}{id}")
}
pub fn summary(head: &str) -> String {
    format!("{SUMMARY}{head}")
}
pub fn image(name: &str) -> String {
    format!("{IMAGES}{name}")
}
pub fn bootconfig(name: &str) -> String {
    format!("{BOOTCONFIGS}{name}")
}
pub fn status(uid: &str) -> String {
    format!("{STATUS}{uid}")
}
pub fn command(uid: &str, id: &str) -> String {
    format!("{COMMANDS}{uid}/{id}")
}
pub fn key(name: &str) -> String {
    format!("{KEYS}{name}")
}
pub fn moved(uid: &str) -> String {
    format!("{MOVES}{uid}")
}
pub fn secret(name: &str) -> String {
    format!("{SECRETS}{name}")
}
pub fn event(id: &str) -> String {
    format!("{EVENTS}{id}")
}
pub fn token(name: &str) -> String {
    format!("{TOKENS}{name}")
}
pub fn ejected(name: &str) -> String {
    format!("{EJECTED}{name}")
}

/// Whether a saved record parses and matches its key (`managedb load`'s check of a dump).
/// Index keys are checked by the loader, against the dump's nodes.
pub fn check_saved(key: &str, value: &str) -> Result<bool, String> {
    use clusterware_shared::agent::{SshKey, validate_ssh_key};
    use clusterware_shared::api::{BootConfig, Image, Node};
    fn parse<T: serde::de::DeserializeOwned>(v: &str) -> Result<T, String> {
        serde_json::from_str(v).map_err(|e| e.to_string())
    }
    let Some(o) = TABLE.iter().find(|o| o.saved && key.starts_with(o.prefix)) else {
        return Ok(false);
    };
    Ok(match o.prefix {
        NODES => key == node(&parse::<Node>(value)?.uid),
        FILES => key == file(&parse::<FileRecord>(value)?.id),
        IMAGES => key == image(&parse::<Image>(value)?.name),
        BOOTCONFIGS => key == bootconfig(&parse::<BootConfig>(value)?.name),
        KEYS => {
            let k = parse::<SshKey>(value)?;
            key == self::key(&k.name) && validate_ssh_key(&k.key).is_ok()
        }
        SECRETS => key == secret(&parse::<SecretRecord>(value)?.name),
        TOKENS => {
            let t = parse::<TokenRecord>(value)?;
            key == token(&t.info.name) && t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit())
        }
        // Deleted files, settings: any JSON value (checked when used).
        _ => true,
    })
}

/// How this head reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DbMode {
    /// The embedded single-file store (a solo head).
    Embedded,
    /// An etcd member that this head runs.
    EtcdMember,
    /// etcd endpoints that the head does not run.
    EtcdExternal,
}

/// `heads/<name>`: what the cluster knows about a head, alive or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadRecord {
    pub name: String,
    pub ip: Ipv4Addr,
    /// `https://IP:TLS_PORT`: the API, for administrators, other heads and agents.
    pub api_url: String,
    /// `http://IP:PORT`: what firmware fetches (boot script, kernel, initramfs); records of
    /// heads from before HTTPS have none, and their `api_url` was that.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_url: Option<String>,
    pub version: String,
    /// When the daemon last started, seconds since the Unix epoch.
    pub started: u64,
    pub db_mode: DbMode,
    /// Root's public SSH keys on this head, given to nodes by `update_keys`.
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    /// The etcd peer URL of the member this head runs: a member publishes its name only some
    /// time after it starts, its peer URL is known from the moment it is added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_url: Option<String>,
    /// The id of its storage directory (`.storage-id` there): heads with the same id share one
    /// directory, so one copy of each file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_id: Option<String>,
    /// The newest database schema its release knows (`core::versions`); 0 for heads of releases
    /// from before the schema was versioned.
    #[serde(default)]
    pub schema: u32,
}

impl HeadRecord {
    /// The base URL of what firmware fetches from this head.
    pub fn boot_base(&self) -> &str {
        self.boot_url.as_deref().unwrap_or(&self.api_url)
    }
}

/// `cluster/ca`: the cluster CA, certificate and key (PEM), and the heads' own credential for
/// calls to each other (random; not derived from the password).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRecord {
    pub cert_pem: String,
    pub key_pem: String,
    pub head_token: String,
}

/// `enroll/<hash>`: what a one-time enrollment token was made for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRecord {
    pub uid: String,
    pub macs: Vec<MacAddr>,
    pub ip: Ipv4Addr,
    /// Seconds since the Unix epoch (the lease removes the record about then too).
    pub expires: u64,
}

/// `node_certs/<uid>`: the SHA-256 of the node's current certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeCertRecord {
    pub fingerprint: String,
    /// When it was issued, seconds since the Unix epoch.
    pub issued: u64,
}

/// `cluster/schema`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaRecord {
    pub version: u32,
    /// The head that wrote it (created the database, or migrated it).
    pub by: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// `alive/<name>`: exists while the head renews its lease.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AliveRecord {
    pub name: String,
    pub pid: u32,
    pub started: u64,
    /// The head is stopping (handing its nodes over): still alive, so its nodes are not shown
    /// down, but no head gives it nodes. Absent in records of heads before 0.2.0.
    #[serde(default)]
    pub stopping: bool,
}

/// `status/<uid>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusRecord {
    pub state: NodeState,
    pub parent: String,
    pub last_seen: u64,
    pub boot_id: String,
    pub status_secs: u32,
    #[serde(default)]
    pub hardware: Option<Hardware>,
    /// The version its agent reports (absent until it reported, and from heads before 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
}

/// `commands/<uid>/<id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub id: String,
    pub uid: String,
    pub script: Script,
    /// The head that was asked.
    pub origin: String,
    pub issued: u64,
    /// The lease the record lives under (the outcome is written under the same lease).
    pub lease: LeaseId,
    #[serde(default)]
    pub result: Option<CommandResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    pub ok: bool,
    pub message: String,
    /// The parent head that relayed the outcome.
    pub head: String,
}

/// `moves/<uid>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveRecord {
    pub uid: String,
    pub node: String,
    pub from: String,
    pub to: String,
    pub reason: String,
    pub at: u64,
}

/// `secrets/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    pub value: String,
    pub set: u64,
}

/// `tokens/<name>`: a named admin API token; only its SHA-256 is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    #[serde(flatten)]
    pub info: clusterware_shared::api::TokenInfo,
    /// Hex SHA-256 of the token.
    pub sha256: String,
}

/// `deleted/<id>`: a deleted file and the heads that still have to remove their copy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeletedEntry {
    pub file: FileRecord,
    pub deleted: u64,
    pub by: String,
    pub pending: Vec<String>,
}

/// `ejected/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EjectedRecord {
    pub name: String,
    pub at: u64,
    pub by: String,
    pub automatic: bool,
}

impl HeadRecord {
    /// A head record for unit tests: `name` at 10.0.0.`last`, API on port 80.
    #[cfg(test)]
    pub fn for_test(name: &str, last: u8) -> HeadRecord {
        HeadRecord {
            name: name.into(),
            ip: Ipv4Addr::new(10, 0, 0, last),
            api_url: format!("http://10.0.0.{last}:80"),
            boot_url: None,
            version: "t".into(),
            started: 0,
            db_mode: DbMode::EtcdMember,
            ssh_keys: vec![],
            peer_url: None,
            storage_id: None,
            schema: crate::core::versions::SCHEMA,
        }
    }

    /// Whether `m` is the etcd member of this head: by name once the member has published it,
    /// by peer URL before (a head re-installed under another name may reuse an address).
    pub fn is_member(&self, m: &Member) -> bool {
        if m.name.is_empty() {
            self.peer_url.as_ref().is_some_and(|u| m.peer_urls.contains(u))
        } else {
            m.name == self.name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_prefix_contains_another() {
        for a in TABLE {
            for b in TABLE {
                if a.prefix != b.prefix {
                    assert!(!b.prefix.starts_with(a.prefix), "{} lies under {}", b.prefix, a.prefix);
                }
            }
        }
    }

    #[test]
    fn every_builder_lies_under_its_prefix() {
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        for (k, p) in [
            (head("h"), HEADS),
            (alive("h"), ALIVE),
            (node("u"), NODES),
            (mac_index(&mac), INDEX),
            (ip_index(&Ipv4Addr::LOCALHOST), INDEX),
            (node_index(3), INDEX),
            (file("f"), FILES),
            (deleted("f"), DELETED),
            (summary("h"), SUMMARY),
            (image("i"), IMAGES),
            (bootconfig("c"), BOOTCONFIGS),
            (DEFAULT_BOOT_CONFIG.to_string(), SETTINGS),
            (status("u"), STATUS),
            (command("u", "1"), COMMANDS),
            (key("k"), KEYS),
            (moved("u"), MOVES),
            (secret("s"), SECRETS),
            (ejected("h"), EJECTED),
            (token("t"), TOKENS),
        ] {
            assert!(k.starts_with(p), "{k} is not under {p}");
            assert!(TABLE.iter().any(|o| o.prefix == p), "{p} is not in the table");
        }
    }

    #[test]
    fn saved_prefixes_are_the_cluster_data() {
        let s: Vec<&str> = saved().collect();
        assert_eq!(
            s,
            [
                "nodes/",
                "index/",
                "files/",
                "deleted/",
                "images/",
                "bootconfigs/",
                "settings/",
                "keys/",
                "secrets/",
                "tokens/"
            ]
        );
    }
}
