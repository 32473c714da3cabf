//! The `/api/v1` wire protocol: request and response bodies (JSON), the error shape, and paths.
//! The head serves these structs and the CLIs send and read them; nothing else defines them.

use crate::ids::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Every path of the protocol starts with this.
pub const PREFIX: &str = "/api/v1";

/// Node fields that `set` can change besides attributes.
pub const NODE_FIELDS: [&str; 3] = ["mac", "ip", "index"];

/// The class of a failed request; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// 400: the request is malformed or names something invalid.
    BadRequest,
    /// 401: no credential was given.
    Unauthorized,
    /// 403: the credential is wrong.
    Forbidden,
    /// 404: the thing named does not exist.
    NotFound,
    /// 409: the request conflicts with the database (duplicate MAC, IP, index, …).
    Conflict,
    /// 503: the cluster database cannot be reached or has no quorum.
    Unavailable,
    /// 500: a fault of the head itself.
    Internal,
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// The body of every error answer: `{"kind": "conflict", "message": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

/// `GET /api/v1/health` (no credential needed).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub name: String,
    pub version: String,
    pub database: String,
    /// The head daemon's process id (a command on the same host signals it to restart).
    #[serde(default)]
    pub pid: u32,
    /// The head's clock, milliseconds since the Unix epoch (clock-skew checks).
    #[serde(default)]
    pub now_ms: u64,
    /// When this daemon process started, milliseconds since the Unix epoch: a restart in place
    /// keeps the pid and changes this.
    #[serde(default)]
    pub started_ms: u64,
    /// `serving`, `starting` (waiting for its database), `left` or `ejected`.
    #[serde(default)]
    pub state: String,
}

/// One etcd member, as `GET /api/v1/cluster` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Member id, hexadecimal.
    pub id: String,
    /// Empty until the member has started.
    pub name: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

/// How much data a head's database holds (what a join would discard).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSummary {
    pub nodes: usize,
    pub images: usize,
    pub boot_configs: usize,
    pub files: usize,
}

/// `GET /api/v1/cluster`: what a joining head needs to know, and what `managedb` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// The answering head.
    pub head: String,
    /// `embedded` or `etcd`.
    pub backend: String,
    /// How the answering head reaches the database: `embedded`, `etcd-member`, `etcd-external`.
    pub db_mode: String,
    pub version: String,
    pub cluster_token: String,
    pub members: Vec<ClusterMember>,
    /// Heads ejected from this cluster (until they join again).
    pub ejected: Vec<String>,
    /// API URLs of the heads the database knows.
    pub head_urls: Vec<String>,
    pub failover: Failover,
    /// How much data the cluster holds (`GET /cluster?data=1` only: it reads every node).
    #[serde(default)]
    pub data: Option<DataSummary>,
}

/// `POST /api/v1/cluster/members`: add a head's etcd member (as a learner).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddMember {
    pub name: String,
    /// `http://IP:PORT` where the new member listens for its peers.
    pub peer_url: String,
}

/// The answer to [`AddMember`]: how the new member must start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberAdded {
    pub id: String,
    /// `name=peer-url,…` of every member, the new one included.
    pub initial_cluster: String,
    pub cluster_token: String,
    /// API URLs of the cluster's heads (whom the new head asks for its promotion).
    pub peers: Vec<String>,
}

/// `POST /api/v1/cluster/promote`, `POST /api/v1/cluster/eject`: a head by name or IP.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadRef {
    pub head: String,
}

/// The answer to a membership change (`leave`, `eject`, `recover`, `convert`, promotion).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembershipChange {
    /// What happened, for the administrator.
    pub message: String,
    /// Warnings the administrator must read (`recover`).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The answering head restarts itself to take the change up.
    #[serde(default)]
    pub restarting: bool,
}

/// The automatic-failover setting (`failover` in the database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failover {
    pub enabled: bool,
    pub timeout_secs: u64,
    /// False after an automatic ejection, until `managedb failover reset`.
    pub armed: bool,
    #[serde(default)]
    pub last: Option<FailoverEvent>,
}

impl Default for Failover {
    fn default() -> Self {
        Failover { enabled: false, timeout_secs: DEFAULT_FAILOVER_SECS, armed: true, last: None }
    }
}

/// Default seconds a head must be unreachable before automatic failover ejects it.
pub const DEFAULT_FAILOVER_SECS: u64 = 120;

/// One automatic ejection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEvent {
    pub head: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// The head that ejected it.
    pub by: String,
    /// Seconds it had been unreachable.
    pub down_secs: u64,
    /// Set when the ejection was decided but could not be carried out.
    #[serde(default)]
    pub error: Option<String>,
}

/// `POST /api/v1/cluster/failover`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverRequest {
    /// `enable`, `disable` or `reset`.
    pub action: String,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A compute node as stored in the cluster database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Stable id, never reused.
    pub uid: String,
    pub index: u32,
    /// `n<index>`.
    pub name: String,
    /// One or more MACs; the first is the boot interface.
    pub macs: Vec<MacAddr>,
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// What an administrator gives to create a node; missing index and IP are allocated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    pub macs: Vec<MacAddr>,
    #[serde(default)]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// `POST /api/v1/nodes`: creates every node or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateNodes {
    pub nodes: Vec<NodeSpec>,
}

/// Answer of `GET /api/v1/nodes` and of the node-changing calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// `POST /api/v1/nodes/update`: sets and clears attributes (and the fields in [`NODE_FIELDS`])
/// on the nodes named by uid, all or none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateNodes {
    pub nodes: Vec<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub clear: Vec<String>,
}

/// `POST /api/v1/nodes/delete`: deletes the nodes named by uid, all or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeleteNodes {
    pub nodes: Vec<String>,
}

/// How a head takes part in the cluster database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbMember {
    /// `etcd` or `embedded`.
    pub backend: String,
    /// etcd member id (hex), when the head runs a member.
    #[serde(default)]
    pub id: Option<String>,
    /// `voting`, `learner`, `unstarted` (added, not yet started), `solo` (embedded),
    /// `external` (the head uses etcd endpoints it does not run), or `not a member`.
    pub state: String,
    /// This member is the etcd leader.
    #[serde(default)]
    pub leader: bool,
}

/// A boot file (kernel, initramfs, root image, …) known to the cluster. Every head keeps a
/// local copy that must match `size` and `sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// 32 lowercase hex digits; also the local file's name in `local_files.path`.
    pub id: String,
    /// The name it was uploaded with.
    pub name: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    /// `kernel`, `initramfs`, `rootfs` or `other`.
    pub kind: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// The kinds a file can have.
pub const FILE_KINDS: [&str; 4] = ["kernel", "initramfs", "rootfs", "other"];

/// Whether a string is a file id (32 lowercase hex digits): ids never leave the storage dir.
pub fn is_file_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `GET /api/v1/files`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileList {
    pub files: Vec<FileRecord>,
}

/// What a head's local storage holds, from its last audit (`heads ls -l`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageSummary {
    /// Files present and verified.
    pub files: u64,
    /// Files in the database with no local copy.
    pub missing: u64,
    /// Local copies found corrupt (renamed `.old.NN`) at the last audit.
    pub bad: u64,
    /// Bytes of verified files.
    pub bytes: u64,
    /// When the audit ran, seconds since the Unix epoch.
    pub audited: u64,
}

/// `GET /api/v1/storage`: one head's live storage counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageCounters {
    /// Bytes hashed to verify files since start (a verified file is not hashed again).
    pub hashed_bytes: u64,
    /// Content requests from other heads answered (or refused) by this head.
    pub peer_requests: u64,
    /// Downloads this head made from its peers.
    pub peer_downloads: u64,
    /// Peer downloads discarded because the bytes did not match.
    pub peer_rejects: u64,
    /// Local copies renamed `.old.NN`.
    pub quarantined: u64,
    /// Audits completed since start.
    pub audits: u64,
}

/// One head node, as `scyld-clusterctl heads ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeadInfo {
    pub name: String,
    pub ip: Ipv4Addr,
    pub api_url: String,
    pub version: String,
    /// Its liveness record exists (its lease is being renewed).
    pub alive: bool,
    /// When the head daemon last started, seconds since the Unix epoch.
    pub started: u64,
    pub db_member: DbMember,
    /// Its storage at its last audit (absent until it has audited once).
    #[serde(default)]
    pub storage: Option<StorageSummary>,
    /// Compute nodes it parents (up or booting).
    #[serde(default)]
    pub nodes: u64,
}

/// `GET /api/v1/heads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadList {
    pub heads: Vec<HeadInfo>,
    /// Mean number of nodes per alive head.
    #[serde(default)]
    pub mean_nodes: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_shape_is_kind_and_message() {
        let e = ApiError { kind: ErrorKind::Conflict, message: "dup".into() };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"conflict","message":"dup"}"#);
        assert_eq!(ErrorKind::Unavailable.http_status(), 503);
    }

    #[test]
    fn node_spec_rejects_bad_mac() {
        let r: Result<NodeSpec, _> = serde_json::from_str(r#"{"macs":["zz"]}"#);
        assert!(r.is_err());
        let s: NodeSpec = serde_json::from_str(r#"{"macs":["52:54:00:00:00:01"]}"#).unwrap();
        assert_eq!(s.ip, None);
    }
}

/// A node root image: its root-filesystem file and optional extra files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// File id of the root filesystem.
    pub rootfs: String,
    /// File ids of extra files that travel with the image.
    #[serde(default)]
    pub extra_files: Vec<String>,
    pub created: u64,
}

/// A boot configuration: kernel, initramfs, image and kernel command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// File id of the kernel.
    pub kernel: String,
    /// File id of the initramfs.
    pub initramfs: String,
    /// Image name; `None` for a config imported without its image, until one is set.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    pub created: u64,
}

/// `GET /api/v1/images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// `GET /api/v1/bootconfigs`: the configs, and which one nodes without `_boot_config` use.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootConfigList {
    pub boot_configs: Vec<BootConfig>,
    #[serde(default)]
    pub default: Option<String>,
}

/// `POST /api/v1/images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateImage {
    pub name: String,
    pub rootfs: String,
    #[serde(default)]
    pub extra_files: Vec<String>,
    #[serde(default)]
    pub description: String,
}

/// `POST /api/v1/bootconfigs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreateBootConfig {
    pub name: String,
    pub kernel: String,
    pub initramfs: String,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default)]
    pub description: String,
}

/// `POST /api/v1/bootconfigs/{name}/update`: the fields given change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UpdateBootConfig {
    #[serde(default)]
    pub kernel: Option<String>,
    #[serde(default)]
    pub initramfs: Option<String>,
    /// `Some("")` removes the image.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub cmdline: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

/// `POST /api/v1/{images,bootconfigs}/{name}/clone`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CloneRequest {
    pub name: String,
}

/// `PUT /api/v1/default-boot-config`: `None` clears it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DefaultBootConfig {
    pub name: Option<String>,
}

/// `GET /api/v1/bootconfigs/{name}`: a config with its image and every file record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootConfigDetail {
    pub boot_config: BootConfig,
    pub image: Option<Image>,
    /// Kernel, initramfs, then the image's files; a missing record is left out.
    pub files: Vec<FileRecord>,
    /// Nodes whose `_boot_config` names it.
    pub nodes: Vec<String>,
    pub is_default: bool,
}

/// What an import did (or, with `dry_run`, would do) with one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportedFile {
    pub name: String,
    pub kind: String,
    pub size: u64,
    pub sha256: String,
    /// The file's id on this cluster.
    pub id: String,
    /// `added` (stored now) or `reused` (a file with the same checksum was already here).
    pub action: String,
}

/// Answer of `PUT /api/v1/import`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportReport {
    pub dry_run: bool,
    /// Name of the boot config on this cluster (and the name it had in the archive).
    pub boot_config: String,
    pub boot_config_was: String,
    pub image: Option<String>,
    pub image_was: Option<String>,
    pub files: Vec<ImportedFile>,
}

/// Names of images and boot configs: 1-128 letters, digits, `-`, `_`, `.`, starting with a
/// letter or digit.
pub fn valid_object_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `GET`/`PUT /api/v1/database`: the cluster's data, as `managedb save` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatabaseDump {
    pub format: String,
    pub version: u32,
    /// Seconds since the Unix epoch.
    pub saved: u64,
    /// The backend and revision it was read at.
    pub backend: String,
    pub revision: i64,
    /// Every key and its value (all values are UTF-8: JSON records or uids).
    pub keys: std::collections::BTreeMap<String, String>,
}
