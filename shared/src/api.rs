//! The `/api/v1` wire protocol: request and response bodies (JSON), the error shape, and paths.
//! The head serves these structs and the CLIs send and read them; nothing else defines them.

use crate::ids::MacAddr;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Every path of the protocol starts with this.
pub const PREFIX: &str = "/api/v1";

/// Every path of the API, spelled once. The constants are route patterns relative to [`PREFIX`]
/// in the router's syntax (`{uid}` for a path parameter), for the head's router; the functions
/// fill them in (parameters percent-encoded) and add query strings, for clients. Every result
/// is relative to [`PREFIX`] as well: [`full`] puts the prefix in front.
pub mod path {
    pub const HEALTH: &str = "/health";
    pub const HEADS: &str = "/heads";
    pub const NODES: &str = "/nodes";
    pub const NODE: &str = "/nodes/{uid}";
    pub const NODES_UPDATE: &str = "/nodes/update";
    pub const NODES_DELETE: &str = "/nodes/delete";
    pub const NODES_STATUS: &str = "/nodes/status";
    pub const NODES_REPORTS: &str = "/nodes/reports";
    pub const NODES_SCRIPT: &str = "/nodes/script";
    pub const NODES_COUNTERS: &str = "/nodes/counters";
    pub const NODES_POWER: &str = "/nodes/power";
    /// One-time enrollment tokens for nodes that do not network-boot (an agent run as a service).
    pub const NODES_ENROLL: &str = "/nodes/enroll";
    /// Takes nodes' certificates back: they are shut out until they enroll again.
    pub const NODES_REVOKE: &str = "/nodes/revoke";
    pub const REBALANCE: &str = "/rebalance";
    pub const SECRETS: &str = "/secrets";
    pub const SECRET: &str = "/secrets/{name}";
    pub const TOKENS: &str = "/tokens";
    pub const TOKEN: &str = "/tokens/{name}";
    pub const KEYS: &str = "/keys";
    pub const KEY: &str = "/keys/{name}";
    pub const FILES: &str = "/files";
    pub const FILE: &str = "/files/{id}";
    /// A boot file's bytes (no credential: nodes and peers read them).
    pub const FILE_CONTENT: &str = "/files/{id}/content";
    /// A head fetches a verified copy of a file (heads ask each other after an upload).
    pub const FILE_FETCH: &str = "/files/{id}/fetch";
    pub const STORAGE: &str = "/storage";
    pub const IMAGES: &str = "/images";
    pub const IMAGE: &str = "/images/{name}";
    pub const IMAGE_CLONE: &str = "/images/{name}/clone";
    pub const BOOT_CONFIGS: &str = "/bootconfigs";
    pub const BOOT_CONFIG: &str = "/bootconfigs/{name}";
    pub const BOOT_CONFIG_UPDATE: &str = "/bootconfigs/{name}/update";
    pub const BOOT_CONFIG_CLONE: &str = "/bootconfigs/{name}/clone";
    pub const BOOT_CONFIG_EXPORT: &str = "/bootconfigs/{name}/export";
    pub const DEFAULT_BOOT_CONFIG: &str = "/default-boot-config";
    pub const IMPORT: &str = "/import";
    pub const DATABASE: &str = "/database";
    pub const DATABASE_CONVERT: &str = "/database/convert";
    pub const CLUSTER: &str = "/cluster";
    pub const CLUSTER_MEMBERS: &str = "/cluster/members";
    pub const CLUSTER_PROMOTE: &str = "/cluster/promote";
    pub const CLUSTER_EJECT: &str = "/cluster/eject";
    pub const CLUSTER_LEAVE: &str = "/cluster/leave";
    pub const CLUSTER_RECOVER: &str = "/cluster/recover";
    pub const CLUSTER_FAILOVER: &str = "/cluster/failover";
    /// The event log (admin actions and cluster events).
    pub const EVENTS: &str = "/events";
    /// `GET`: the console's live updates, server-sent events (`heads`, `nodes`, `status`).
    pub const CONSOLE_UPDATES: &str = "/console/updates";
    /// The iPXE boot script (no credential).
    pub const BOOT_SCRIPT: &str = "/boot/script";
    /// The cluster CA as a newc archive for the node's initramfs (no credential; the script
    /// loads it beside the initramfs; it puts [`agent::CA_FILE`](crate::agent::CA_FILE) there).
    pub const BOOT_CA: &str = "/boot/ca.cpio";
    /// A boot file of `tftp.dir` (the iPXE binaries) over HTTP, for UEFI HTTP Boot (no
    /// credential: firmware fetches it).
    pub const BOOT_FILE: &str = "/boot/files/{name}";
    /// The cluster CA with the proof that the head knows the database password
    /// ([`ClusterCa`](super::ClusterCa); no credential, plain HTTP too: a joining head has no
    /// CA yet to check HTTPS with).
    pub const CLUSTER_CA: &str = "/cluster/ca";
    /// Where the node agent's endpoints ([`agent`]) are nested.
    pub const AGENT: &str = "/agent";
    /// The agent's endpoints as route patterns relative to [`PREFIX`](super::PREFIX) (`AGENT`
    /// and the [`agent`] pattern; a unit test holds them to it).
    pub const AGENT_HEADS: &str = "/agent/heads";
    pub const AGENT_STATUS: &str = "/agent/status";
    pub const AGENT_WAIT: &str = "/agent/wait";
    pub const AGENT_RESULT: &str = "/agent/result";
    pub const AGENT_KEYS: &str = "/agent/keys";
    pub const AGENT_ENROLL: &str = "/agent/enroll";
    /// The OpenAPI document of the API (no credential).
    pub const OPENAPI: &str = "/openapi.json";

    /// Every route pattern of the API: the OpenAPI document has each, and the test of the
    /// document asks a head every method of each.
    pub const ALL: &[&str] = &[
        HEALTH,
        HEADS,
        NODES,
        NODE,
        NODES_UPDATE,
        NODES_DELETE,
        NODES_STATUS,
        NODES_REPORTS,
        NODES_SCRIPT,
        NODES_COUNTERS,
        NODES_POWER,
        NODES_ENROLL,
        NODES_REVOKE,
        REBALANCE,
        SECRETS,
        SECRET,
        TOKENS,
        TOKEN,
        EVENTS,
        CONSOLE_UPDATES,
        KEYS,
        KEY,
        FILES,
        FILE,
        FILE_CONTENT,
        FILE_FETCH,
        STORAGE,
        IMAGES,
        IMAGE,
        IMAGE_CLONE,
        BOOT_CONFIGS,
        BOOT_CONFIG,
        BOOT_CONFIG_UPDATE,
        BOOT_CONFIG_CLONE,
        BOOT_CONFIG_EXPORT,
        DEFAULT_BOOT_CONFIG,
        IMPORT,
        DATABASE,
        DATABASE_CONVERT,
        CLUSTER,
        CLUSTER_MEMBERS,
        CLUSTER_PROMOTE,
        CLUSTER_EJECT,
        CLUSTER_LEAVE,
        CLUSTER_RECOVER,
        CLUSTER_FAILOVER,
        CLUSTER_CA,
        BOOT_SCRIPT,
        BOOT_CA,
        BOOT_FILE,
        AGENT_HEADS,
        AGENT_STATUS,
        AGENT_WAIT,
        AGENT_RESULT,
        AGENT_KEYS,
        AGENT_ENROLL,
        OPENAPI,
    ];

    /// The node agent's endpoints (`shared::agent`): patterns relative to [`AGENT`], builders
    /// relative to [`PREFIX`](super::PREFIX) like every other builder.
    pub mod agent {
        use super::{AGENT, escape};

        pub const HEADS: &str = "/heads";
        pub const STATUS: &str = "/status";
        pub const WAIT: &str = "/wait";
        pub const RESULT: &str = "/result";
        pub const KEYS: &str = "/keys";
        pub const ENROLL: &str = "/enroll";

        /// `POST …/agent/enroll`: a node's one-time token for its certificate.
        pub fn enroll() -> String {
            format!("{AGENT}{ENROLL}")
        }
        /// `GET …/agent/heads?mac=`.
        pub fn heads(mac: &str) -> String {
            format!("{AGENT}{HEADS}?mac={}", escape(mac))
        }
        /// `POST …/agent/status`.
        pub fn status() -> String {
            format!("{AGENT}{STATUS}")
        }
        /// `GET …/agent/wait?mac=&secs=` (the long poll).
        pub fn wait(mac: &str, secs: u32) -> String {
            format!("{AGENT}{WAIT}?mac={}&secs={secs}", escape(mac))
        }
        /// `POST …/agent/result`.
        pub fn result() -> String {
            format!("{AGENT}{RESULT}")
        }
        /// `GET …/agent/keys?mac=`.
        pub fn keys(mac: &str) -> String {
            format!("{AGENT}{KEYS}?mac={}", escape(mac))
        }
    }

    /// `PREFIX` + a path from this module: what goes on the request line.
    pub fn full(path: &str) -> String {
        format!("{}{path}", super::PREFIX)
    }

    /// Percent-encodes a path parameter or a query value: everything but letters, digits,
    /// `-._~` and `:` (MACs stay readable; `:` is allowed in both places).
    pub fn escape(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => out.push(b as char),
                _ => out.push_str(&format!("%{b:02X}")),
            }
        }
        out
    }

    /// Fills a pattern's `{…}` parameters in order with `args` (percent-encoded).
    ///
    /// Panics when the counts differ: a programming error, caught by the tests.
    pub fn fill(pattern: &str, args: &[&str]) -> String {
        let mut out = String::with_capacity(pattern.len() + 16);
        let mut args = args.iter();
        let mut rest = pattern;
        while let Some(open) = rest.find('{') {
            let close = rest[open..].find('}').map(|c| open + c).expect("unclosed { in a path pattern");
            out.push_str(&rest[..open]);
            out.push_str(&escape(args.next().expect("too few arguments for a path pattern")));
            rest = &rest[close + 1..];
        }
        out.push_str(rest);
        assert!(args.next().is_none(), "too many arguments for path pattern {pattern}");
        out
    }

    /// `path?k=v&…` with the pairs whose value is `Some` (values percent-encoded); no `?` when
    /// none is.
    pub fn query(path: &str, pairs: &[(&str, Option<&str>)]) -> String {
        let q: Vec<String> = pairs.iter().filter_map(|(k, v)| v.map(|v| format!("{k}={}", escape(v)))).collect();
        if q.is_empty() { path.to_string() } else { format!("{path}?{}", q.join("&")) }
    }

    fn flag(on: bool) -> Option<&'static str> {
        on.then_some("1")
    }

    /// `GET /nodes?select=`: the nodes a `-i` selector names (`n[0-99],n200`, MACs, uids).
    pub fn nodes_selected(selector: &str) -> String {
        query(NODES, &[("select", Some(selector))])
    }
    pub fn node(uid: &str) -> String {
        fill(NODE, &[uid])
    }
    pub fn secret(name: &str) -> String {
        fill(SECRET, &[name])
    }
    pub fn token(name: &str) -> String {
        fill(TOKEN, &[name])
    }
    pub fn key(name: &str) -> String {
        fill(KEY, &[name])
    }
    /// `DELETE /files/{id}[?force=1]`.
    pub fn file(id: &str, force: bool) -> String {
        query(&fill(FILE, &[id]), &[("force", flag(force))])
    }
    /// `GET`/`HEAD /files/{id}/content[?peer=1]` (`peer`: answer from the local copy only).
    pub fn file_content(id: &str, peer: bool) -> String {
        query(&fill(FILE_CONTENT, &[id]), &[("peer", flag(peer))])
    }
    /// `POST /files/{id}/fetch`.
    pub fn file_fetch(id: &str) -> String {
        fill(FILE_FETCH, &[id])
    }
    /// `PUT /files?name=&kind=&size=[&sha256=]`: an upload of `size` bytes.
    pub fn upload(name: &str, kind: &str, size: u64, sha256: Option<&str>) -> String {
        let size = size.to_string();
        query(FILES, &[("name", Some(name)), ("kind", Some(kind)), ("size", Some(&size)), ("sha256", sha256)])
    }
    /// `GET`/`DELETE /images/{name}[?force=1]` (`force` only means something to `DELETE`).
    pub fn image(name: &str, force: bool) -> String {
        query(&fill(IMAGE, &[name]), &[("force", flag(force))])
    }
    pub fn image_clone(name: &str) -> String {
        fill(IMAGE_CLONE, &[name])
    }
    /// `GET`/`DELETE /bootconfigs/{name}[?force=1]` (`force` only means something to `DELETE`).
    pub fn boot_config(name: &str, force: bool) -> String {
        query(&fill(BOOT_CONFIG, &[name]), &[("force", flag(force))])
    }
    pub fn boot_config_update(name: &str) -> String {
        fill(BOOT_CONFIG_UPDATE, &[name])
    }
    pub fn boot_config_clone(name: &str) -> String {
        fill(BOOT_CONFIG_CLONE, &[name])
    }
    pub fn boot_config_export(name: &str) -> String {
        fill(BOOT_CONFIG_EXPORT, &[name])
    }
    /// `PUT /import?[boot_config=][&image=][&no_recurse=1][&dry_run=1]`.
    pub fn import(o: &super::ImportOptions) -> String {
        query(
            IMPORT,
            &[
                ("image", o.image.as_deref()),
                ("boot_config", o.boot_config.as_deref()),
                ("no_recurse", flag(o.no_recurse)),
                ("dry_run", flag(o.dry_run)),
            ],
        )
    }
    /// `GET /cluster[?data=1]` (`data`: count the cluster's data too, which reads every node).
    pub fn cluster(data: bool) -> String {
        query(CLUSTER, &[("data", flag(data))])
    }
    /// `GET /boot/script?mac=`.
    /// `GET /boot/files/{name}` (a name with `/` in it is one escaped path segment).
    pub fn boot_file(name: &str) -> String {
        format!("/boot/files/{}", escape(name))
    }
    pub fn boot_script(mac: &str) -> String {
        query(BOOT_SCRIPT, &[("mac", Some(mac))])
    }
    /// `GET /events?[since=][&after=][&limit=][&wait=][&kind=]`.
    pub fn events(q: &super::EventQuery) -> String {
        let since = q.since_ms.map(|v| v.to_string());
        let limit = q.limit.map(|v| v.to_string());
        let wait = q.wait_secs.map(|v| v.to_string());
        query(
            EVENTS,
            &[
                ("since", since.as_deref()),
                ("after", q.after.as_deref()),
                ("limit", limit.as_deref()),
                ("wait", wait.as_deref()),
                ("kind", q.kind.map(super::EventKind::as_str)),
            ],
        )
    }
}

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A change made through the admin API: who, what, from where, the outcome.
    Admin,
    /// A head joined, left, was ejected, failed over.
    Head,
    /// Nodes came up, went down, changed parent.
    Node,
    /// A boot file was quarantined or repaired from a peer.
    File,
    /// A boot configuration was imported.
    Import,
}

impl EventKind {
    pub const ALL: [EventKind; 5] =
        [EventKind::Admin, EventKind::Head, EventKind::Node, EventKind::File, EventKind::Import];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Admin => "admin",
            EventKind::Head => "head",
            EventKind::Node => "node",
            EventKind::File => "file",
            EventKind::Import => "import",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<EventKind, String> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| {
            format!(
                "{s:?} is not a kind of event ({})",
                EventKind::ALL.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// One entry of the event log (`GET /api/v1/events`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    /// Orders the log: later events have greater ids (`after=` takes one).
    pub id: String,
    /// When it happened, milliseconds since the Unix epoch (the recording head's clock).
    pub time_ms: u64,
    /// The head that recorded it.
    pub head: String,
    pub kind: EventKind,
    /// What it concerns: a node range, a head, a file, the request (`POST /api/v1/nodes/power`).
    pub subject: String,
    /// What happened, in a sentence.
    pub message: String,
    /// Admin actions: the credential that made the request (`token NAME`, `database password`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Admin actions: the address the request came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Admin actions: `ok` or the error's kind (`not_found: no node is named n9`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// The answer of `GET /api/v1/events`: events in order, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventList {
    pub events: Vec<Event>,
    /// The id to ask `after=` for the events that follow (the last one's, or the one given).
    #[serde(default)]
    pub next: Option<String>,
    /// Events the log holds in all (after retention).
    #[serde(default)]
    pub total: usize,
}

/// What `GET /api/v1/events` selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only events at or after this time (ms since the epoch).
    pub since_ms: Option<u64>,
    /// Only events after this id.
    pub after: Option<String>,
    /// At most this many (the latest ones when only `since` or nothing is given, else the first ones after `after`).
    pub limit: Option<usize>,
    /// With `after`: wait this long for a new event when there is none yet (a long poll).
    pub wait_secs: Option<u64>,
    pub kind: Option<EventKind>,
}

/// The options of an import (`PUT /api/v1/import`), as query parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Name of the imported image on this cluster (default: its name in the archive).
    pub image: Option<String>,
    /// Name of the imported boot config on this cluster.
    pub boot_config: Option<String>,
    /// Import the boot config without its image.
    pub no_recurse: bool,
    /// Only tell what would be done.
    pub dry_run: bool,
}

/// Node fields that `set` can change besides attributes.
pub const NODE_FIELDS: [&str; 3] = ["mac", "ip", "index"];

/// A head closes a connection whose next request has not fully arrived after this many seconds
/// (slow headers, or a kept-alive connection left idle); clients drop idle connections sooner.
pub const IDLE_SECS: u64 = 20;

/// The class of a failed request; each maps to one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// 413: the request body is larger than the endpoint accepts.
    TooLarge,
    /// 503: the cluster database cannot be reached or has no quorum.
    Unavailable,
    /// 500: a fault of the head itself.
    Internal,
}

impl std::fmt::Display for ErrorKind {
    /// As the API spells it (`not_found`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        })
    }
}

impl ErrorKind {
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Unauthorized => 401,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::TooLarge => 413,
            ErrorKind::Unavailable => 503,
            ErrorKind::Internal => 500,
        }
    }
}

/// `GET /api/v1/cluster/ca`: the cluster CA, and the proof that the head answering knows the
/// database password (`pki::ca_proof`), which a joining head checks before it trusts the CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterCa {
    pub cert_pem: String,
    pub proof: String,
    /// The answering head's API (`https://IP:TLS_PORT`).
    pub api_url: String,
}

/// The body of every error answer: `{"kind": "conflict", "message": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

/// `POST /api/v1/tokens`: a named admin API token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateToken {
    pub name: String,
}

/// A named admin API token as listed (its secret is never shown again).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenInfo {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Who asked for it (the address the request came from).
    #[serde(default)]
    pub created_from: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// Answer of `POST /api/v1/tokens`: the token itself, shown this once.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewToken {
    #[serde(flatten)]
    pub info: TokenInfo,
    pub token: String,
}

/// `GET /api/v1/health` (no credential needed).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DataSummary {
    pub nodes: usize,
    pub images: usize,
    pub boot_configs: usize,
    pub files: usize,
}

/// `GET /api/v1/cluster`: what a joining head needs to know, and what `managedb` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddMember {
    pub name: String,
    /// `http://IP:PORT` where the new member listens for its peers.
    pub peer_url: String,
}

/// The answer to [`AddMember`]: how the new member must start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberAdded {
    pub id: String,
    /// `name=peer-url,…` of every member, the new one included.
    pub initial_cluster: String,
    pub cluster_token: String,
    /// API URLs of the cluster's heads (whom the new head asks for its promotion).
    pub peers: Vec<String>,
    /// The joining head's certificate and key from the cluster CA (PEM), which its etcd member
    /// needs to reach its peers before it has the database (and the CA's key) itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
}

/// `POST /api/v1/cluster/promote`, `POST /api/v1/cluster/eject`: a head by name or IP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadRef {
    pub head: String,
    /// Eject: even a head that is alive and serving.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// The answer to a membership change (`leave`, `eject`, `recover`, `convert`, promotion).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FailoverRequest {
    /// `enable`, `disable` or `reset`.
    pub action: String,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

/// A compute node as stored in the cluster database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Node {
    /// Stable id, never reused.
    pub uid: String,
    pub index: u32,
    /// `n<index>`.
    pub name: String,
    /// One or more MACs; the first is the boot interface.
    pub macs: Vec<MacAddr>,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
    pub ip: Ipv4Addr,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// Seconds since the Unix epoch.
    pub created: u64,
}

/// What an administrator gives to create a node; missing index and IP are allocated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeSpec {
    pub macs: Vec<MacAddr>,
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = Ipv4))]
    pub ip: Option<Ipv4Addr>,
    #[serde(default)]
    pub index: Option<u32>,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// `POST /api/v1/nodes`: creates every node or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateNodes {
    pub nodes: Vec<NodeSpec>,
    /// Accept attributes that name a boot config, head or secret that does not exist (yet).
    #[serde(default)]
    pub force: bool,
}

/// Answer of `GET /api/v1/nodes` and of the node-changing calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// `POST /api/v1/nodes/update`: sets and clears attributes (and the fields in [`NODE_FIELDS`])
/// on the nodes named by uid, all or none.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateNodes {
    pub nodes: Vec<String>,
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub clear: Vec<String>,
    /// Accept attributes that name a boot config, head or secret that does not exist (yet).
    #[serde(default)]
    pub force: bool,
}

/// `POST /api/v1/nodes/delete`: deletes the nodes named by uid, all or none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeleteNodes {
    pub nodes: Vec<String>,
}

/// How a head takes part in the cluster database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileList {
    pub files: Vec<FileRecord>,
    /// The heads holding a verified copy of each file, by id (from their last report).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub copies: std::collections::BTreeMap<String, FileCopies>,
    /// Copies every file should have (`local_files.min_copies` for the cluster as it is).
    #[serde(default)]
    pub min_copies: u32,
}

/// Where one file is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileCopies {
    /// Heads that reported a verified copy.
    pub heads: Vec<String>,
    /// Distinct copies (heads sharing a storage directory count once).
    pub copies: u32,
    /// Fewer copies than the minimum.
    pub under_minimum: bool,
}

/// `POST /files/{id}/fetch`: a head made sure it holds a verified copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FileCopy {
    pub id: String,
    pub head: String,
}

/// What a head's local storage holds, from its last audit (`heads ls -l`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// The ids of the files this head holds a verified copy of, sorted.
    #[serde(default)]
    pub held: Vec<String>,
    /// When the last scrub that hashed anything ended (0: none since start).
    #[serde(default)]
    pub scrubbed: u64,
    /// Copies the scrub found bad since the head started.
    #[serde(default)]
    pub scrub_bad: u64,
}

/// `GET /api/v1/storage`: one head's live storage counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// Bytes the scrub hashed since start.
    #[serde(default)]
    pub scrubbed_bytes: u64,
    /// Copies the scrub found bad since start.
    #[serde(default)]
    pub scrub_bad: u64,
    /// Scrub rounds completed since start.
    #[serde(default)]
    pub scrubs: u64,
    /// Root images being sent to nodes now (`local_files.max_transfers` bounds them).
    #[serde(default)]
    pub transfers_active: u64,
    /// Node requests for a root image waiting in line for a slot now.
    #[serde(default)]
    pub transfers_waiting: u64,
    /// Node requests for a root image answered "busy, try another head" since start.
    #[serde(default)]
    pub transfers_refused: u64,
    /// `local_files.max_transfers` (0: no limit).
    #[serde(default)]
    pub max_transfers: u32,
}

/// One head node, as `scyld-clusterctl heads ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadInfo {
    pub name: String,
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = Ipv4))]
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
    /// The newest database schema its release knows (0: a release from before versioned
    /// schemas).
    #[serde(default)]
    pub schema: u32,
}

/// `GET /api/v1/heads`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadList {
    pub heads: Vec<HeadInfo>,
    /// Mean number of nodes per alive head.
    #[serde(default)]
    pub mean_nodes: f64,
    /// The database's schema version (absent from heads of releases before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<u32>,
}

#[cfg(test)]
mod tests {
    /// Every route pattern of `mod path` is in `ALL` (the OpenAPI test asks the head each), and
    /// the agent's patterns are `AGENT` and theirs.
    #[test]
    fn every_route_pattern_is_listed() {
        let src = include_str!("api.rs");
        let module = &src[src.find("pub mod path {").unwrap()..src.find("pub const ALL").unwrap()];
        let mut seen = 0;
        for line in module.lines() {
            let Some(rest) = line.trim().strip_prefix("pub const ") else { continue };
            let Some((_, v)) = rest.split_once(": &str = \"") else { continue };
            let v = v.trim_end_matches("\";");
            if v == path::AGENT {
                continue;
            }
            let full = v;
            assert!(path::ALL.contains(&full), "{full} is not in path::ALL");
            seen += 1;
        }
        assert_eq!(seen, path::ALL.len(), "path::ALL lists a pattern twice");
        use path::agent;
        for (full, rel) in [
            (path::AGENT_HEADS, agent::HEADS),
            (path::AGENT_STATUS, agent::STATUS),
            (path::AGENT_WAIT, agent::WAIT),
            (path::AGENT_RESULT, agent::RESULT),
            (path::AGENT_KEYS, agent::KEYS),
            (path::AGENT_ENROLL, agent::ENROLL),
        ] {
            assert_eq!(full, format!("{}{rel}", path::AGENT));
        }
    }

    use super::*;

    #[test]
    fn error_shape_is_kind_and_message() {
        let e = ApiError { kind: ErrorKind::Conflict, message: "dup".into() };
        assert_eq!(serde_json::to_string(&e).unwrap(), r#"{"kind":"conflict","message":"dup"}"#);
        assert_eq!(ErrorKind::Unavailable.http_status(), 503);
    }

    #[test]
    fn paths_fill_patterns_and_escape() {
        assert_eq!(path::node("abc"), "/nodes/abc");
        assert_eq!(path::key("a b/c"), "/keys/a%20b%2Fc");
        assert_eq!(path::file("0123", false), "/files/0123");
        assert_eq!(path::file("0123", true), "/files/0123?force=1");
        assert_eq!(path::file_content("0123", true), "/files/0123/content?peer=1");
        assert_eq!(path::upload("vm linuz", "kernel", 12, None), "/files?name=vm%20linuz&kind=kernel&size=12");
        assert_eq!(path::upload("k", "kernel", 1, Some("ab")), "/files?name=k&kind=kernel&size=1&sha256=ab");
        assert_eq!(path::boot_config_export("xyzBoot"), "/bootconfigs/xyzBoot/export");
        assert_eq!(path::import(&ImportOptions::default()), "/import");
        let o = ImportOptions { image: Some("i&j".into()), boot_config: None, no_recurse: false, dry_run: true };
        assert_eq!(path::import(&o), "/import?image=i%26j&dry_run=1");
        assert_eq!(path::cluster(true), "/cluster?data=1");
        assert_eq!(path::agent::heads("52:54:00:00:00:01"), "/agent/heads?mac=52:54:00:00:00:01");
        assert_eq!(path::agent::wait("m", 30), "/agent/wait?mac=m&secs=30");
        assert_eq!(path::full(&path::agent::status()), crate::agent::AGENT_PREFIX.to_string() + path::agent::STATUS);
        assert_eq!(path::full(path::HEALTH), "/api/v1/health");
    }

    #[test]
    fn every_pattern_fills_to_a_path_the_pattern_matches() {
        // Each builder's output, parameters replaced by the pattern's own placeholders, is the
        // pattern: builders cannot drift from the routes.
        let cases: [(&str, String); 13] = [
            (path::NODE, path::node("{uid}")),
            (path::SECRET, path::secret("{name}")),
            (path::TOKEN, path::token("{name}")),
            (path::KEY, path::key("{name}")),
            (path::FILE, path::file("{id}", false)),
            (path::FILE_CONTENT, path::file_content("{id}", false)),
            (path::FILE_FETCH, path::file_fetch("{id}")),
            (path::IMAGE, path::image("{name}", false)),
            (path::IMAGE_CLONE, path::image_clone("{name}")),
            (path::BOOT_CONFIG, path::boot_config("{name}", false)),
            (path::BOOT_CONFIG_UPDATE, path::boot_config_update("{name}")),
            (path::BOOT_CONFIG_CLONE, path::boot_config_clone("{name}")),
            (path::BOOT_CONFIG_EXPORT, path::boot_config_export("{name}")),
        ];
        for (pattern, built) in cases {
            assert_eq!(built.replace("%7B", "{").replace("%7D", "}"), pattern);
        }
    }

    #[test]
    #[should_panic(expected = "too few arguments")]
    fn fill_refuses_missing_arguments() {
        path::fill(path::NODE, &[]);
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// UEFI Secure Boot: x64 UEFI PXE clients get Debian's signed shim and network GRUB over TFTP
    /// (not iPXE, which is unsigned); the kernel must be signed too.
    #[serde(default)]
    pub secure_boot: bool,
    pub created: u64,
}

/// `GET /api/v1/images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ImageList {
    pub images: Vec<Image>,
}

/// `GET /api/v1/bootconfigs`: the configs, and which one nodes without `_boot_config` use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootConfigList {
    pub boot_configs: Vec<BootConfig>,
    #[serde(default)]
    pub default: Option<String>,
}

/// `POST /api/v1/images`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    /// See [`BootConfig::secure_boot`].
    #[serde(default)]
    pub secure_boot: bool,
}

/// `POST /api/v1/bootconfigs/{name}/update`: the fields given change.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
    #[serde(default)]
    pub secure_boot: Option<bool>,
}

/// `POST /api/v1/{images,bootconfigs}/{name}/clone`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CloneRequest {
    pub name: String,
}

/// `PUT /api/v1/default-boot-config`: `None` clears it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DefaultBootConfig {
    pub name: Option<String>,
}

/// `GET /api/v1/bootconfigs/{name}`: a config with its image and every file record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
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

/// Answer of `PUT /api/v1/database`: how many keys were written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseLoaded {
    pub loaded: u64,
}

/// `POST /api/v1/database/convert`: the backend to convert to (only `etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConvertDatabase {
    pub to: String,
}

/// `GET`/`PUT /api/v1/database`: the cluster's data, as `managedb save` writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DatabaseDump {
    pub format: String,
    pub version: u32,
    /// Seconds since the Unix epoch.
    pub saved: u64,
    /// The backend and revision it was read at.
    pub backend: String,
    pub revision: i64,
    /// The database schema of its records (absent from dumps of releases before versioned
    /// schemas: 0).
    #[serde(default)]
    pub schema: u32,
    /// Every key and its value (all values are UTF-8: JSON records or uids).
    pub keys: std::collections::BTreeMap<String, String>,
}
