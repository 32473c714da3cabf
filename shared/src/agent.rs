//! The node agent's protocol (`/api/v1/agent/...`) and the administrator's view of node status.
//!
//! The agent speaks JSON over HTTP to its parent head:
//! - `GET  /api/v1/agent/heads?mac=M`: the head list, the answering head first ([`HeadsReply`]);
//! - `POST /api/v1/agent/status`: a [`StatusReport`]; the answer is [`Directives`];
//! - `GET  /api/v1/agent/wait?mac=M&secs=S`: the long poll: held by the head until it has a
//!   directive for the node or `S` seconds pass; answers [`Directives`];
//! - `POST /api/v1/agent/result`: the outcome of a script ([`ScriptOutcome`]);
//! - `GET  /api/v1/agent/keys?mac=M`: the keys for root's `authorized_keys` ([`KeysReply`]).
//!
//! The head accepts these only from the node's registered IP address.

use crate::ids::MacAddr;
use serde::{Deserialize, Serialize};

/// Every agent path starts with this.
pub const AGENT_PREFIX: &str = "/api/v1/agent";

/// Status interval when the node has no `_status_secs` attribute.
pub const DEFAULT_STATUS_SECS: u32 = 10;
/// Allowed `_status_secs` values.
pub const STATUS_SECS_RANGE: std::ops::RangeInclusive<u32> = 1..=86_400;
/// A node is down after this many status intervals without a push.
pub const MISSED_INTERVALS: u32 = 3;
/// Longest time a head holds a long poll.
pub const MAX_WAIT_SECS: u32 = 60;
/// Where a node keeps the cluster CA that the agent checks heads against (the boot script
/// loads it into the initramfs; an agent run as a service reads it from here too).
pub const CA_FILE: &str = "/etc/clusterware/ca.pem";

/// Largest request body a head reads on the node-facing routes (a status report with its
/// hardware inventory is a few KiB); larger ones are refused before they are read.
pub const MAX_REPORT_BYTES: usize = 64 << 10;

/// One head as the agent knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadEntry {
    pub name: String,
    /// Base URL of the head's API, `http://10.0.0.1:80`.
    pub url: String,
}

/// Answer of `GET /api/v1/agent/heads`: every head, the answering head first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadsReply {
    pub heads: Vec<HeadEntry>,
}

/// Where the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// As `/init` in the initramfs, before the root image runs.
    Booting,
    /// As a service in the booted system.
    Up,
}

/// One network interface of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// Addresses with prefix length, `10.0.0.5/24`.
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// A disk of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Disk {
    pub name: String,
    pub bytes: u64,
}

/// Hardware inventory, sent with the first push after boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Hardware {
    pub cpu_model: String,
    pub cpus: u32,
    pub mem_total_kib: u64,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub disks: Vec<Disk>,
}

/// `POST /api/v1/agent/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusReport {
    /// The boot interface's MAC: the node's identity.
    pub mac: MacAddr,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    pub phase: Phase,
    pub agent_version: String,
    pub uptime_secs: u64,
    pub load: [f64; 3],
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    pub cpus: u32,
    pub kernel: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Present on the first push after boot.
    #[serde(default)]
    pub hardware: Option<Hardware>,
}

impl StatusReport {
    /// Checks the fields a head relies on.
    pub fn validate(&self) -> Result<(), String> {
        let id_ok = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        if !id_ok(&self.boot_id) {
            return Err(format!("boot_id {:?} is not a boot id (1-64 hex digits and '-')", self.boot_id));
        }
        if self.load.iter().any(|l| !l.is_finite() || *l < 0.0) {
            return Err("load averages must be finite and not negative".into());
        }
        if self.interfaces.len() > 256 {
            return Err("more than 256 interfaces".into());
        }
        for (what, s, max) in [
            ("agent_version", &self.agent_version, 64),
            ("kernel", &self.kernel, 256),
            ("hostname", &self.hostname, 255),
        ] {
            if s.len() > max || s.chars().any(char::is_control) {
                return Err(format!("{what} is longer than {max} bytes or has control characters"));
            }
        }
        Ok(())
    }
}

/// The scripts an administrator can run on nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Script {
    /// Re-download the head list from the parent.
    FetchHosts,
    /// Rewrite the managed block of root's `authorized_keys`.
    UpdateKeys,
}

impl Script {
    pub const ALL: [Script; 2] = [Script::FetchHosts, Script::UpdateKeys];

    pub fn name(self) -> &'static str {
        match self {
            Script::FetchHosts => "fetch_hosts",
            Script::UpdateKeys => "update_keys",
        }
    }

    pub fn parse(s: &str) -> Option<Script> {
        Script::ALL.into_iter().find(|x| x.name() == s)
    }
}

/// One script to run, with the id its result must carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Command {
    pub id: String,
    pub script: Script,
}

/// What a head tells a node in answer to a push or a long poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Directives {
    /// The status interval the node should use.
    #[serde(default)]
    pub status_secs: Option<u32>,
    #[serde(default)]
    pub commands: Vec<Command>,
    /// Make this head the parent (moved to the top of the list) and push there.
    #[serde(default)]
    pub switch_parent: Option<HeadEntry>,
}

/// `POST /api/v1/agent/result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScriptOutcome {
    pub mac: MacAddr,
    pub id: String,
    pub ok: bool,
    #[serde(default)]
    pub message: String,
}

/// How an enrollment token starts (the rest: 64 hex digits).
pub const ENROLL_TOKEN_PREFIX: &str = "cwe_";

/// Seconds an enrollment token is good for.
pub const ENROLL_TOKEN_SECS: u64 = 900;

/// Where a node keeps its certificate and key from enrollment (a network-booted node: in its
/// RAM root; the agent as `/init` puts them there).
pub const CERT_FILE: &str = "/etc/clusterware/node.pem";
pub const KEY_FILE: &str = "/etc/clusterware/node.key";

/// Body of `POST /api/v1/agent/enroll`: the node's boot MAC and the one-time token its boot
/// script (or an administrator, `scyld-nodectl enroll`) gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enroll {
    pub mac: MacAddr,
    pub token: String,
}

/// Answer of `POST /api/v1/agent/enroll`: the node's certificate and key (PEM) from the cluster
/// CA, and the CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enrolled {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// One node's enrollment token (`POST /api/v1/nodes/enroll`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollToken {
    pub uid: String,
    pub name: String,
    pub mac: MacAddr,
    pub token: String,
    /// Seconds since the Unix epoch after which it is refused.
    pub expires: u64,
}

/// Answer of `POST /api/v1/nodes/enroll`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollTokens {
    pub tokens: Vec<EnrollToken>,
}

/// Answer of `GET /api/v1/agent/keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeysReply {
    pub keys: Vec<String>,
}

/// A node's state as administrators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Never reported.
    New,
    /// Network-booting (the boot script was served, or the agent runs in the initramfs).
    Booting,
    Up,
    /// Missed three status intervals, or its parent is gone and it has not reported since.
    Down,
}

impl NodeState {
    pub fn name(self) -> &'static str {
        match self {
            NodeState::New => "new",
            NodeState::Booting => "booting",
            NodeState::Up => "up",
            NodeState::Down => "down",
        }
    }
}

/// As the API spells it (`up`), for messages and logs.
impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Phase {
    /// As the protocol spells it (`booting`, `up`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Booting => "booting",
            Phase::Up => "up",
        }
    }
}

/// As the protocol spells it (`up`), for messages and logs.
impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One node's status, from `POST /api/v1/nodes/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatus {
    pub uid: String,
    pub name: String,
    pub state: NodeState,
    #[serde(default)]
    pub parent: Option<String>,
    /// Seconds since the Unix epoch (refreshed in the database at least every 30 s while up).
    #[serde(default)]
    pub last_seen: Option<u64>,
    #[serde(default)]
    pub boot_id: Option<String>,
    pub status_secs: u32,
    /// The latest report, when the parent head answered.
    #[serde(default)]
    pub report: Option<StatusReport>,
    #[serde(default)]
    pub hardware: Option<Hardware>,
    /// The version of its agent, as it last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Something an administrator should know (a `_preferred_head` naming no head, say).
    #[serde(default)]
    pub problems: Vec<String>,
}

/// `POST /api/v1/nodes/status`: the status of the nodes named by uid (all when absent).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusQuery {
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// Include the latest report (asked from each node's parent head).
    #[serde(default)]
    pub details: bool,
}

/// Answer of `POST /api/v1/nodes/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatusList {
    pub nodes: Vec<NodeStatus>,
}

/// `GET /api/v1/nodes/counters`: this head's status-ingest counters since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusCounters {
    /// Status pushes absorbed.
    pub pushes: u64,
    /// Node requests refused (malformed, unknown MAC, wrong address).
    pub rejected: u64,
    /// Status records written to the database.
    pub status_writes: u64,
    /// Database transactions those writes took.
    pub status_txns: u64,
    /// Switch-parent directives handed to agents (rebalancing, preferred heads).
    #[serde(default)]
    pub switches: u64,
}

/// `POST /api/v1/nodes/script`: run a script on nodes and wait for their results.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunScript {
    pub nodes: Vec<String>,
    pub script: Script,
    pub timeout_secs: u64,
}

/// How a script ended on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    Unreachable,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeOutcome {
    pub uid: String,
    pub name: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub message: String,
}

/// Answer of `POST /api/v1/nodes/script`, one entry per node asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ScriptResults {
    pub results: Vec<NodeOutcome>,
}

/// A cluster SSH key (`keys/<name>`), given to every node's root by `update_keys`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshKey {
    pub name: String,
    pub key: String,
    /// Seconds since the Unix epoch.
    pub added: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SshKeyList {
    pub keys: Vec<SshKey>,
}

/// `POST /api/v1/keys`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AddKey {
    pub name: String,
    pub key: String,
}

const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// Standard base64 with padding (the inverse of [`base64_decode`]; HTTP Basic credentials in the
/// tests).
pub fn base64_encode(b: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
    for chunk in b.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &c)| n | (c as u32) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64 with padding (SSH key blobs, PEM bodies); `None` when it is not that.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.as_bytes();
    if b.is_empty() || b.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (i, chunk) in b.chunks(4).enumerate() {
        let last = i == b.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Checks an OpenSSH public key line (`TYPE BASE64 [COMMENT]`): a known type whose base64 blob
/// names the same type. Returns the key normalised to single spaces.
pub fn validate_ssh_key(line: &str) -> Result<String, String> {
    let line = line.trim();
    if line.is_empty() {
        return Err("the key is empty".into());
    }
    if line.contains(['\n', '\r', '\0']) {
        return Err("a key is one line".into());
    }
    if line.len() > 16 << 10 {
        return Err("the key is longer than 16 KiB".into());
    }
    let mut parts = line.split_whitespace();
    let ty = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&ty) {
        return Err(format!("{ty:?} is not an SSH public key type (expected one of {})", KEY_TYPES.join(", ")));
    }
    let blob = parts.next().ok_or("the key has no base64 part")?;
    let raw = base64_decode(blob).ok_or("the key's base64 part is not valid base64")?;
    let inner = raw
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .and_then(|n| raw.get(4..4 + n))
        .ok_or("the key's base64 part is truncated")?;
    if inner != ty.as_bytes() {
        return Err(format!("the key's base64 part is not a {ty} key"));
    }
    let comment: Vec<&str> = parts.collect();
    Ok(if comment.is_empty() { format!("{ty} {blob}") } else { format!("{ty} {blob} {}", comment.join(" ")) })
}

/// Splits a node's `_ssh_keys` attribute (keys separated by `;` or newlines) and checks each.
pub fn parse_key_list(s: &str) -> Result<Vec<String>, String> {
    s.split([';', '\n']).map(str::trim).filter(|k| !k.is_empty()).map(validate_ssh_key).collect()
}

/// First and last lines of the block that `update_keys` manages in `authorized_keys`.
pub const KEYS_BEGIN: &str = "# BEGIN clusterware managed keys: edits inside this block are replaced";
pub const KEYS_END: &str = "# END clusterware managed keys";

/// Replaces (or appends) the managed block of an `authorized_keys` file, keeping every line
/// outside it.
pub fn merge_authorized_keys(existing: &str, keys: &[String]) -> String {
    let mut out = String::new();
    let mut inside = false;
    let mut placed = false;
    let block = || {
        let mut b = format!("{KEYS_BEGIN}\n");
        for k in keys {
            b.push_str(k);
            b.push('\n');
        }
        b.push_str(KEYS_END);
        b.push('\n');
        b
    };
    for line in existing.lines() {
        if line == KEYS_BEGIN {
            inside = true;
            if !placed {
                out.push_str(&block());
                placed = true;
            }
            continue;
        }
        if inside {
            if line == KEYS_END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str(&block());
    }
    out
}

/// Sets the managed `parent-head-node` line of an `/etc/hosts` file, keeping every other line.
pub fn merge_hosts(existing: &str, parent_ip: &str) -> String {
    const NAME: &str = "parent-head-node";
    let mut out = String::new();
    let mut placed = false;
    for line in existing.lines() {
        let data = line.split('#').next().unwrap_or("");
        let mut fields = data.split_whitespace();
        let _addr = fields.next();
        let names: Vec<&str> = fields.collect();
        if names.contains(&NAME) {
            if !placed {
                out.push_str(&format!("{parent_ip}\t{NAME}\n"));
                placed = true;
            }
            // Other names on that line keep their address.
            let others: Vec<&str> = names.into_iter().filter(|n| *n != NAME).collect();
            if !others.is_empty() {
                out.push_str(&format!("{}\t{}\n", _addr.unwrap_or_default(), others.join(" ")));
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !placed {
        out.push_str(&format!("{parent_ip}\t{NAME}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGNsdXN0ZXJ3YXJlIHRlc3Qga2V5IG9ubHkgMzJieXRl admin@head";

    #[test]
    fn ssh_keys() {
        assert_eq!(validate_ssh_key(&format!("  {ED}\n")).unwrap(), ED);
        assert!(validate_ssh_key("ssh-ed25519").is_err());
        assert!(validate_ssh_key("ssh-foo AAAA").is_err());
        assert!(
            validate_ssh_key("ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIGNsdXN0ZXJ3YXJlIHRlc3Qga2V5IG9ubHkgMzJieXRl").is_err()
        );
        assert!(validate_ssh_key("ssh-rsa AAAAB3NzaC1yc2F4eA==").is_ok());
        assert!(validate_ssh_key("ssh-ed25519 !!!!").is_err());
        assert!(validate_ssh_key("ssh-ed25519 AAAA").is_err());
        assert!(validate_ssh_key(&format!("{ED}\nssh-ed25519 x")).is_err());
        assert_eq!(parse_key_list(&format!("{ED};{ED}")).unwrap().len(), 2);
        assert!(parse_key_list("nonsense").is_err());
    }

    #[test]
    fn authorized_keys_block() {
        let user = "ssh-rsa USERKEY me\n# my comment\n";
        let once = merge_authorized_keys(user, &["k1".into(), "k2".into()]);
        assert!(once.starts_with(user));
        assert!(once.contains(&format!("{KEYS_BEGIN}\nk1\nk2\n{KEYS_END}\n")));
        let with_after = format!("{once}ssh-ed25519 LATER x\n");
        let twice = merge_authorized_keys(&with_after, &["k3".into()]);
        assert_eq!(twice, format!("{user}{KEYS_BEGIN}\nk3\n{KEYS_END}\nssh-ed25519 LATER x\n"));
    }

    #[test]
    fn hosts_line() {
        let h = "127.0.0.1\tlocalhost\n10.0.0.9 parent-head-node\n# c\n";
        assert_eq!(merge_hosts(h, "10.0.0.2"), "127.0.0.1\tlocalhost\n10.0.0.2\tparent-head-node\n# c\n");
        assert_eq!(merge_hosts("", "10.0.0.2"), "10.0.0.2\tparent-head-node\n");
        assert_eq!(
            merge_hosts("10.0.0.9 parent-head-node other\n", "10.0.0.3"),
            "10.0.0.3\tparent-head-node\n10.0.0.9\tother\n"
        );
    }
}

/// `POST /api/v1/rebalance`: plan a rebalancing round for every head now; carry it out unless
/// `dry_run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebalanceRequest {
    pub dry_run: bool,
}

/// One head's load in a rebalancing plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeadLoad {
    pub name: String,
    /// Nodes it parents, counting moves under way at their destination.
    pub nodes: u64,
    /// Of those, nodes that prefer it (`_preferred_head`) and never move away.
    pub pinned: u64,
}

/// A node to move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeMove {
    pub uid: String,
    pub node: String,
    pub from: String,
    pub to: String,
    pub reason: String,
}

/// Answer of `POST /api/v1/rebalance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebalanceReport {
    pub mean: f64,
    pub threshold_pct: u32,
    pub heads: Vec<HeadLoad>,
    pub moves: Vec<NodeMove>,
    /// Imbalances that rebalancing leaves alone, and why.
    pub notes: Vec<String>,
    /// The moves were handed to the parents (false for a dry run).
    pub executed: bool,
}
