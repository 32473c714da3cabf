//! The agent's settings: `/etc/clusterware/node.conf` (`key = value` lines) and the kernel
//! command line (`cw.parent=`, `cw.heads=`, `cw.mac=`, `BOOTIF=`), which a PXE boot sets.

use crate::client::Endpoint;
use clusterware_shared::agent::{HeadEntry, Phase, STATUS_SECS_RANGE};
use clusterware_shared::ids::MacAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_CONFIG: &str = "/etc/clusterware/node.conf";

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Bootstrap heads from the configuration, parent first.
    pub heads: Vec<HeadEntry>,
    pub mac: Option<MacAddr>,
    pub heads_file: PathBuf,
    pub hosts_file: PathBuf,
    pub authorized_keys: PathBuf,
    pub state_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    /// The node's certificate and key from enrollment.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub status_secs: u32,
    pub push_timeout: Duration,
    pub phase: Phase,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            heads: Vec::new(),
            mac: None,
            heads_file: "/etc/clusterware/heads".into(),
            hosts_file: "/etc/hosts".into(),
            authorized_keys: "/root/.ssh/authorized_keys".into(),
            state_file: "/run/clusterware-node/state.json".into(),
            ca_file: None,
            cert_file: clusterware_shared::agent::CERT_FILE.into(),
            key_file: clusterware_shared::agent::KEY_FILE.into(),
            status_secs: clusterware_shared::agent::DEFAULT_STATUS_SECS,
            push_timeout: Duration::from_secs(3),
            phase: Phase::Up,
        }
    }
}

fn head_entries(v: &str) -> Result<Vec<HeadEntry>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Endpoint::parse(s).map(|ep| HeadEntry { name: ep.host.clone(), url: ep.url }))
        .collect()
}

fn abs_path(v: &str) -> Result<PathBuf, String> {
    if v.starts_with('/') { Ok(PathBuf::from(v)) } else { Err(format!("{v:?} is not an absolute path")) }
}

impl NodeConfig {
    /// Reads the configuration; a missing file at the default path means defaults.
    pub fn load(path: &Path, explicit: bool) -> Result<NodeConfig, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(NodeConfig::default()),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        NodeConfig::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<NodeConfig, String> {
        let mut c = NodeConfig::default();
        let mut parent: Option<HeadEntry> = None;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| format!("line {}: expected key = value", i + 1))?;
            let (k, v) = (k.trim(), v.trim().trim_matches('"'));
            let bad = |m: String| format!("line {}: {k}: {m}", i + 1);
            match k {
                "heads" => c.heads = head_entries(v).map_err(bad)?,
                "parent" => {
                    parent = Some(head_entries(v).map_err(bad)?.into_iter().next().ok_or_else(|| bad("empty".into()))?)
                }
                "mac" => c.mac = Some(v.parse().map_err(|_| bad(format!("{v:?} is not a MAC address")))?),
                "heads_file" => c.heads_file = abs_path(v).map_err(bad)?,
                "hosts_file" => c.hosts_file = abs_path(v).map_err(bad)?,
                "authorized_keys" => c.authorized_keys = abs_path(v).map_err(bad)?,
                "state_file" => c.state_file = abs_path(v).map_err(bad)?,
                "ca_file" => c.ca_file = Some(abs_path(v).map_err(bad)?),
                "cert_file" => c.cert_file = abs_path(v).map_err(bad)?,
                "key_file" => c.key_file = abs_path(v).map_err(bad)?,
                "status_secs" => {
                    c.status_secs = v
                        .parse()
                        .ok()
                        .filter(|s| STATUS_SECS_RANGE.contains(s))
                        .ok_or_else(|| bad(format!("{v:?} is not a number of seconds from 1 to 86400")))?
                }
                "push_timeout" => {
                    let s: u64 = v
                        .parse()
                        .ok()
                        .filter(|s| (1..=60).contains(s))
                        .ok_or_else(|| bad(format!("{v:?} is not a number of seconds from 1 to 60")))?;
                    c.push_timeout = Duration::from_secs(s);
                }
                "phase" => {
                    c.phase = match v {
                        "up" => Phase::Up,
                        "booting" => Phase::Booting,
                        _ => return Err(bad(format!("{v:?} is not `up` or `booting`"))),
                    }
                }
                _ => return Err(bad("unknown key".into())),
            }
        }
        if let Some(p) = parent {
            c.heads.retain(|h| h.url != p.url);
            c.heads.insert(0, p);
        }
        Ok(c)
    }
}

/// What the kernel command line says: (heads parent first, boot MAC).
pub fn from_cmdline(cmdline: &str) -> Result<(Vec<HeadEntry>, Option<MacAddr>), String> {
    let mut heads = Vec::new();
    let mut parent = None;
    let mut mac = None;
    for tok in cmdline.split_whitespace() {
        if let Some(v) = tok.strip_prefix("cw.parent=") {
            parent = head_entries(v).map_err(|e| format!("cw.parent: {e}"))?.into_iter().next();
        } else if let Some(v) = tok.strip_prefix("cw.heads=") {
            heads = head_entries(v).map_err(|e| format!("cw.heads: {e}"))?;
        } else if let Some(v) = tok.strip_prefix("cw.mac=") {
            mac = Some(v.parse().map_err(|_| format!("cw.mac: {v:?} is not a MAC address"))?);
        } else if let Some(v) = tok.strip_prefix("BOOTIF=") {
            // pxelinux style: 01-aa-bb-cc-dd-ee-ff (01 = Ethernet).
            let v = v.strip_prefix("01-").unwrap_or(v);
            if mac.is_none() {
                mac = v.parse().ok();
            }
        }
    }
    if let Some(p) = parent {
        heads.retain(|h| h.url != p.url);
        heads.insert(0, p);
    }
    Ok((heads, mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_file() {
        let c =
            NodeConfig::parse("# c\nheads = 10.0.0.1, 10.0.0.2:8080\nparent = http://10.0.0.2:8080\nstatus_secs=5\n")
                .unwrap();
        assert_eq!(
            c.heads.iter().map(|h| h.url.as_str()).collect::<Vec<_>>(),
            ["http://10.0.0.2:8080", "http://10.0.0.1:80"]
        );
        assert_eq!(c.status_secs, 5);
        for bad in ["x", "nokey = 1", "status_secs = 0", "mac = zz", "heads_file = rel", "heads = ftp://a"] {
            assert!(NodeConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cmdline() {
        let (h, m) =
            from_cmdline("quiet cw.heads=10.0.0.1,10.0.0.2 cw.parent=10.0.0.2 BOOTIF=01-52-54-00-00-00-07").unwrap();
        assert_eq!(h.iter().map(|h| h.url.as_str()).collect::<Vec<_>>(), ["http://10.0.0.2:80", "http://10.0.0.1:80"]);
        assert_eq!(m.unwrap().to_string(), "52:54:00:00:00:07");
        assert!(from_cmdline("cw.parent=ftp://x").is_err());
        assert_eq!(from_cmdline("ro").unwrap().0.len(), 0);
    }
}
