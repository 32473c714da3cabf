//! `base.ini`: flat `key = value` lines with dotted keys (`database.admin_pass`), `#` or `;`
//! comments and blank lines, as in `/opt/scyld/clusterware/conf/base.ini`.
//!
//! Unknown keys are reported as warnings (a newer or older file still loads); a bad value is an
//! error that names the file, the line and the key. Every path has a default under
//! `/opt/scyld/clusterware` or `/var/log/clusterware` and can be moved, so tests run unprivileged.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// Where the configuration lives unless `--config` or [`CONFIG_ENV`] say otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/opt/scyld/clusterware/conf/base.ini";
/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "CLUSTERWARE_CONFIG";

/// Which cluster-database engine a head uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseType {
    /// A single-file store inside the head daemon: a solo head.
    Embedded,
    /// etcd: a member the head starts and supervises, or external endpoints.
    Etcd,
}

/// `database.state`: this head's place in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// In a cluster (or solo).
    Member,
    /// Left with `managedb leave`.
    Left,
    /// Ejected by another head (`managedb eject`, or automatic failover).
    Ejected,
}

impl Membership {
    pub fn as_str(self) -> &'static str {
        match self {
            Membership::Member => "member",
            Membership::Left => "left",
            Membership::Ejected => "ejected",
        }
    }
}

impl DatabaseType {
    pub fn as_str(self) -> &'static str {
        match self {
            DatabaseType::Embedded => "embedded",
            DatabaseType::Etcd => "etcd",
        }
    }
}

/// The parsed configuration, with defaults filled in.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from (for messages).
    pub path: PathBuf,
    pub database_type: DatabaseType,
    /// The cluster's database password; the admin API token derives from it.
    pub admin_pass: Option<String>,
    /// Embedded store file.
    pub database_path: PathBuf,
    /// External etcd endpoints; when set the head starts no etcd member of its own.
    pub etcd_endpoints: Vec<String>,
    /// The `etcd` program (looked up on PATH unless it contains a `/`).
    pub etcd_binary: PathBuf,
    /// The data dir of this head's etcd member.
    pub etcd_data_dir: PathBuf,
    /// Port of this head's etcd member for clients (it listens on 127.0.0.1 only).
    /// Port of this head's etcd member for its peers (on `head.ip`).
    pub etcd_peer_port: u16,
    /// `name=peer-url,…` of the members when the etcd cluster is first created.
    pub etcd_initial_cluster: Option<String>,
    /// `new` when creating a cluster, `existing` when joining one.
    pub etcd_initial_cluster_state: String,
    pub etcd_cluster_token: String,
    /// Largest number of operations the database accepts in one transaction.
    pub max_txn_ops: usize,
    /// Seconds the head waits at start for its database (an etcd cluster needs a quorum).
    pub db_ready_timeout_secs: u64,
    /// Whether this head is in a cluster, or left it or was ejected (then it serves nothing and
    /// every command says so until it joins again).
    pub membership: Membership,
    /// At the next start, restore this head's etcd data as a new one-member cluster
    /// (`managedb recover` sets it; the head removes it once done).
    pub recover: bool,
    /// The `etcdctl` program (a recovery restores the member's data with it).
    pub etcdctl_binary: PathBuf,
    /// API URLs of the other heads, written at a join: whom to ask for promotion at start.
    pub peers: Vec<String>,
    /// A saved database to load at the next start (`managedb convert etcd` sets it; the head
    /// removes it once loaded).
    pub import_on_start: Option<PathBuf>,
    /// This head's name (defaults to the host name).
    pub head_name: Option<String>,
    /// The address nodes and other heads reach this head at.
    pub head_ip: Option<Ipv4Addr>,
    /// HTTP port of the API and boot files.
    pub head_port: u16,
    /// HTTPS port: the admin API, head-to-head calls and the agent channel (`head.port` keeps
    /// only what firmware fetches before the agent runs).
    pub tls_port: u16,
    /// The cluster CA and this head's certificate (`tls.dir`; `tls/` beside base.ini unless set).
    pub tls_dir: PathBuf,
    /// Address the HTTP server binds (all interfaces by default).
    pub head_bind: IpAddr,
    /// Seconds a head stays "alive" in the database without renewing its lease.
    pub lease_ttl_secs: u64,
    pub log_dir: PathBuf,
    pub log_level: String,
    /// Where this head keeps its copy of every boot file (may be shared among heads).
    pub storage_dir: PathBuf,
    /// Seconds between audits of the local storage.
    pub audit_interval_secs: u64,
    /// Seconds between checks of the deleted-files list.
    pub sweep_interval_secs: u64,
    /// Seconds a deleted-files entry is kept for heads that have not processed it.
    pub deleted_ttl_secs: u64,
    /// Storages an upload or import must be verified on before it is acknowledged
    /// (`local_files.min_copies`; 0: 2 when the cluster has two heads or more, heads sharing a
    /// directory counting once).
    pub min_copies: u32,
    /// Longest time a local copy goes without being hashed again (`local_files.scrub_interval`,
    /// seconds; 0: no scrub).
    pub scrub_interval_secs: u64,
    /// MiB per second the scrub reads at most (`local_files.scrub_rate`).
    pub scrub_rate_mib: u64,
    /// Root images (and other files that are not kernels or initramfs images) this head sends
    /// to nodes at once (`local_files.max_transfers`; 0: no limit); past it a node waits up to
    /// a second in line for a slot, then is told to try another head or again later.
    pub max_transfers: u32,
    /// MiB per second all those transfers together may send (`local_files.max_rate`; 0: no limit).
    pub max_rate_mib: u64,
    /// Public keys of this head's root that `update_keys` gives every node (files that do not
    /// exist are skipped).
    pub ssh_key_files: Vec<PathBuf>,
    /// Whether heads move nodes among themselves to even out the number each parents.
    pub rebalance_enabled: bool,
    /// Seconds between rebalancing rounds (each head, jittered by ±10 %).
    pub rebalance_interval_secs: u64,
    /// A head rebalances when it parents more than the mean by more than this many percent.
    pub rebalance_threshold_pct: u32,
    /// Seconds a moved node is not moved again.
    pub rebalance_holdoff_secs: u64,
    /// Whether the head records Prometheus metrics and serves them at `/metrics`
    /// (`metrics.enabled`).
    pub metrics_enabled: bool,
    /// The `ipmitool` program power control runs.
    pub ipmitool: PathBuf,
    /// BMCs talked to at once by one power command.
    pub power_concurrency: usize,
    /// The CA (PEM, one or more certificates) that Redfish BMCs' certificates are checked
    /// against (`power.redfish_ca`); a BMC with `_bmc_tls_fingerprint` is pinned instead.
    pub redfish_ca: Option<PathBuf>,
    /// Network boot; off unless `dhcp.interface` names the cluster-network interface.
    pub boot: BootNet,
    /// Events the event log keeps at most (`events.keep`).
    pub events_keep: usize,
    /// Days the event log keeps an event at most (`events.keep_days`).
    pub events_keep_days: u64,
}

/// DHCP, TFTP and iPXE settings (`dhcp.*`, `tftp.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootNet {
    pub interface: Option<String>,
    pub dhcp_port: u16,
    pub netmask: Ipv4Addr,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    pub register_unknown: bool,
    pub first_ip: Option<Ipv4Addr>,
    pub defer_ms: u64,
    /// The BIOS boot file (`dhcp.bios_file`): the default for client architecture 0.
    pub bios_file: String,
    /// The UEFI boot file (`dhcp.efi_file`): the default for x64 UEFI (7, 9) and x64 UEFI HTTP
    /// Boot (16).
    pub efi_file: String,
    /// `dhcp.boot_file.<arch>`: the boot file for one client architecture (DHCP option 93),
    /// `None` for `none` (no offer to that architecture). Wins over `bios_file`/`efi_file`.
    pub arch_files: std::collections::BTreeMap<u16, Option<String>>,
    /// `tftp.enabled`: whether the head serves TFTP at all (UEFI HTTP Boot needs no TFTP).
    pub tftp_enabled: bool,
    pub tftp_port: u16,
    pub tftp_dir: PathBuf,
    /// Answer IPv6 router solicitations with a router advertisement that offers nothing, so
    /// that iPXE does not wait for IPv6 autoconfiguration on a segment without a router.
    pub ra: bool,
    /// UEFI Secure Boot (`secure_boot.*`): what x64 UEFI PXE clients of boot configs with
    /// `secure_boot` get.
    pub secure_boot: SecureBootFiles,
}

/// The signed boot loaders of Secure Boot network boot (`secure_boot.*`), served over TFTP under
/// virtual names beside `tftp.dir`'s files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecureBootFiles {
    /// `secure_boot.boot_file`: the name DHCP hands out for shim (default `sb/shimx64.efi`);
    /// GRUB (`grubx64.efi`, the name shim asks for) and MokManager (`mmx64.efi`) are served in
    /// the same directory.
    pub boot_file: String,
    /// `secure_boot.shim`: Debian's signed shim (package shim-signed).
    pub shim: PathBuf,
    /// `secure_boot.grub`: Debian's signed network GRUB (package grub-efi-amd64-signed).
    pub grub: PathBuf,
    /// `secure_boot.mokmanager`: the signed MokManager (package shim-helpers-amd64-signed), which
    /// shim starts when GRUB fails verification; `None` (the default): not served.
    pub mokmanager: Option<PathBuf>,
}

impl Default for SecureBootFiles {
    fn default() -> Self {
        SecureBootFiles {
            boot_file: "sb/shimx64.efi".into(),
            shim: PathBuf::from("/usr/lib/shim/shimx64.efi.signed"),
            grub: PathBuf::from("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
            mokmanager: None,
        }
    }
}

impl Default for BootNet {
    fn default() -> Self {
        BootNet {
            interface: None,
            dhcp_port: 67,
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: None,
            dns: Vec::new(),
            domain: None,
            lease_secs: 86_400,
            register_unknown: false,
            first_ip: None,
            defer_ms: 500,
            bios_file: "undionly.kpxe".into(),
            efi_file: "snponly.efi".into(),
            arch_files: Default::default(),
            tftp_enabled: true,
            tftp_port: 69,
            tftp_dir: PathBuf::from("/usr/lib/ipxe"),
            ra: true,
            secure_boot: SecureBootFiles::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            path: PathBuf::from(DEFAULT_CONFIG_PATH),
            database_type: DatabaseType::Embedded,
            admin_pass: None,
            database_path: PathBuf::from("/opt/scyld/clusterware/db/cluster.redb"),
            etcd_endpoints: Vec::new(),
            etcd_binary: PathBuf::from("etcd"),
            etcd_data_dir: PathBuf::from("/opt/scyld/clusterware/etcd"),
            etcd_peer_port: 2380,
            etcd_initial_cluster: None,
            etcd_initial_cluster_state: "new".into(),
            etcd_cluster_token: "clusterware".into(),
            max_txn_ops: 10240,
            db_ready_timeout_secs: 90,
            membership: Membership::Member,
            recover: false,
            etcdctl_binary: PathBuf::from("etcdctl"),
            peers: Vec::new(),
            import_on_start: None,
            head_name: None,
            head_ip: None,
            head_port: 80,
            tls_port: 443,
            tls_dir: PathBuf::from("/opt/scyld/clusterware/conf/tls"),
            head_bind: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            lease_ttl_secs: 10,
            log_dir: PathBuf::from("/var/log/clusterware"),
            log_level: "info".into(),
            storage_dir: PathBuf::from("/opt/scyld/clusterware/storage"),
            audit_interval_secs: 300,
            sweep_interval_secs: 10,
            min_copies: 0,
            scrub_interval_secs: 7 * 86_400,
            scrub_rate_mib: 64,
            max_transfers: 128,
            max_rate_mib: 0,
            deleted_ttl_secs: 3600,
            ssh_key_files: ["id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"]
                .iter()
                .map(|f| PathBuf::from("/root/.ssh").join(f))
                .collect(),
            rebalance_enabled: true,
            rebalance_interval_secs: 60,
            rebalance_threshold_pct: 20,
            rebalance_holdoff_secs: 300,
            metrics_enabled: true,
            ipmitool: PathBuf::from("ipmitool"),
            power_concurrency: 64,
            redfish_ca: None,
            boot: BootNet::default(),
            events_keep: 10_000,
            events_keep_days: 30,
        }
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {key}: {reason}", path.display())]
    Value { path: PathBuf, line: usize, key: String, reason: String },
    #[error("{}:{line}: expected `key = value`, found {text:?}", path.display())]
    Syntax { path: PathBuf, line: usize, text: String },
    #[error("{}: {key} is not set", path.display())]
    Missing { path: PathBuf, key: String },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded configuration and the warnings found while reading it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// The configuration path: the `--config` argument, else `$CLUSTERWARE_CONFIG`, else the default.
pub fn resolve_path(arg: Option<&Path>) -> PathBuf {
    if let Some(p) = arg {
        return p.to_path_buf();
    }
    match std::env::var_os(CONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_CONFIG_PATH),
    }
}

/// The permission bits of a file when group or others may read it (the file holds a password).
pub fn insecure_mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

impl Config {
    /// Reads and parses a file. Besides [`Config::parse`]'s warnings, a file that holds the
    /// database password and that group or others may read is warned about.
    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        let mut loaded = Config::parse(&text, path)?;
        if loaded.config.admin_pass.is_some() {
            if let Some(mode) = insecure_mode(path) {
                loaded.warnings.push(format!(
                    "{p}: mode {mode:04o} lets other users read the database password it holds; run chmod 600 {p}",
                    p = path.display()
                ));
            }
        }
        Ok(loaded)
    }

    /// Parses configuration text; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Loaded, ConfigError> {
        let mut c = Config { path: path.to_path_buf(), ..Config::default() };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            c.tls_dir = dir.join("tls");
        }
        let mut warnings = Vec::new();
        let mut seen: Vec<(String, usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let t = raw.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            let Some((k, v)) = t.split_once('=') else {
                return Err(ConfigError::Syntax { path: path.to_path_buf(), line, text: t.to_string() });
            };
            let key = k.trim();
            let mut value = v.trim();
            if value.len() >= 2
                && ((value.starts_with('"') && value.ends_with('"'))
                    || (value.starts_with('\'') && value.ends_with('\'')))
            {
                value = &value[1..value.len() - 1];
            }
            if key.is_empty() {
                return Err(ConfigError::Syntax { path: path.to_path_buf(), line, text: t.to_string() });
            }
            if let Some((_, first)) = seen.iter().find(|(s, _)| s == key) {
                warnings.push(format!(
                    "{}:{line}: {key} is also set on line {first}; the later value wins",
                    path.display()
                ));
            } else {
                seen.push((key.to_string(), line));
            }
            let bad =
                |reason: String| ConfigError::Value { path: path.to_path_buf(), line, key: key.to_string(), reason };
            match key {
                "database.type" => {
                    c.database_type = match value {
                        "embedded" => DatabaseType::Embedded,
                        "etcd" => DatabaseType::Etcd,
                        other => {
                            return Err(bad(format!("{other:?} is not a database type (embedded or etcd)")));
                        }
                    }
                }
                "database.admin_pass" => {
                    if value.is_empty() {
                        return Err(bad("the password is empty".into()));
                    }
                    c.admin_pass = Some(value.to_string())
                }
                "database.path" => c.database_path = path_value(value).map_err(bad)?,
                "database.endpoints" => {
                    let eps: Vec<String> =
                        value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                    if let Some(e) = eps.iter().find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
                        return Err(bad(format!("{e:?} is not an http:// or https:// URL")));
                    }
                    c.etcd_endpoints = eps;
                }
                "database.etcd_binary" => c.etcd_binary = path_value(value).map_err(bad)?,
                "database.data_dir" => c.etcd_data_dir = path_value(value).map_err(bad)?,
                // Before the member listened on a socket in its data dir.
                "database.client_port" => warnings.push(format!(
                    "{}:{line}: database.client_port is no longer used (the head reaches its etcd member through a socket in database.data_dir); remove it",
                    path.display()
                )),
                "database.peer_port" => c.etcd_peer_port = port_value(value).map_err(bad)?,
                "database.initial_cluster" => {
                    for member in value.split(',') {
                        let ok = member.split_once('=').is_some_and(|(n, u)| {
                            crate::ids::validate_head_name(n.trim()).is_ok() && u.trim().starts_with("http")
                        });
                        if !ok {
                            return Err(bad(format!("{member:?} is not `name=http://ip:port`")));
                        }
                    }
                    c.etcd_initial_cluster = Some(value.to_string());
                }
                "database.initial_cluster_state" => {
                    if value != "new" && value != "existing" {
                        return Err(bad(format!("{value:?} is not `new` or `existing`")));
                    }
                    c.etcd_initial_cluster_state = value.to_string();
                }
                "database.cluster_token" => {
                    if value.is_empty() {
                        return Err(bad("empty".into()));
                    }
                    c.etcd_cluster_token = value.to_string()
                }
                "database.max_txn_ops" => {
                    c.max_txn_ops = int_value(value, 16, 1_000_000).map_err(bad)? as usize;
                }
                "database.state" => {
                    c.membership = match value {
                        "member" => Membership::Member,
                        "left" => Membership::Left,
                        "ejected" => Membership::Ejected,
                        other => return Err(bad(format!("{other:?} is not member, left or ejected"))),
                    }
                }
                "database.recover" => c.recover = bool_value(value).map_err(bad)?,
                "database.etcdctl_binary" => c.etcdctl_binary = path_value(value).map_err(bad)?,
                "database.peers" => {
                    let urls: Vec<String> =
                        value.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                    if let Some(u) = urls.iter().find(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
                        return Err(bad(format!("{u:?} is not an http:// or https:// URL")));
                    }
                    c.peers = urls;
                }
                "database.import_on_start" => c.import_on_start = Some(path_value(value).map_err(bad)?),
                "database.ready_timeout" => c.db_ready_timeout_secs = int_value(value, 1, 3600).map_err(bad)?,
                "head.name" => {
                    crate::ids::validate_head_name(value).map_err(|e| bad(e.to_string()))?;
                    c.head_name = Some(value.to_string());
                }
                "head.ip" => {
                    c.head_ip = Some(value.parse().map_err(|_| bad(format!("{value:?} is not an IPv4 address")))?)
                }
                "head.port" => c.head_port = port_value(value).map_err(bad)?,
                "head.tls_port" => c.tls_port = port_value(value).map_err(bad)?,
                "tls.dir" => c.tls_dir = path_value(value).map_err(bad)?,
                "head.bind" => {
                    c.head_bind = value.parse().map_err(|_| bad(format!("{value:?} is not an IP address")))?
                }
                "head.ssh_keys" => {
                    c.ssh_key_files = value
                        .split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(path_value)
                        .collect::<Result<_, _>>()
                        .map_err(bad)?
                }
                "events.keep" => c.events_keep = int_value(value, 10, 1_000_000).map_err(bad)? as usize,
                "events.keep_days" => c.events_keep_days = int_value(value, 1, 36_500).map_err(bad)?,
                "rebalance.enabled" => c.rebalance_enabled = bool_value(value).map_err(bad)?,
                "rebalance.interval" => c.rebalance_interval_secs = int_value(value, 1, 86_400).map_err(bad)?,
                "rebalance.threshold" => {
                    c.rebalance_threshold_pct = int_value(value.trim_end_matches('%'), 1, 1000).map_err(bad)? as u32
                }
                "rebalance.holdoff" => c.rebalance_holdoff_secs = int_value(value, 5, 30 * 86_400).map_err(bad)?,
                "metrics.enabled" => c.metrics_enabled = bool_value(value).map_err(bad)?,
                "dhcp.interface" => {
                    let ok = !value.is_empty()
                        && value.len() < 16
                        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
                    if !ok {
                        return Err(bad(format!("{value:?} is not a network interface name")));
                    }
                    c.boot.interface = Some(value.to_string());
                }
                "dhcp.port" => c.boot.dhcp_port = port_value(value).map_err(bad)?,
                "dhcp.netmask" => {
                    let m: Ipv4Addr = value.parse().map_err(|_| bad(format!("{value:?} is not a netmask")))?;
                    let bits = u32::from(m);
                    if bits.leading_ones() + bits.trailing_zeros() != 32 {
                        return Err(bad(format!("{value:?} is not a contiguous netmask")));
                    }
                    c.boot.netmask = m;
                }
                "dhcp.router" => {
                    c.boot.router = Some(value.parse().map_err(|_| bad(format!("{value:?} is not an IPv4 address")))?)
                }
                "dhcp.dns" => {
                    c.boot.dns = value
                        .split(',')
                        .map(str::trim)
                        .filter(|v| !v.is_empty())
                        .map(|v| v.parse().map_err(|_| bad(format!("{v:?} is not an IPv4 address"))))
                        .collect::<Result<_, _>>()?
                }
                "dhcp.domain" => c.boot.domain = Some(value.to_string()),
                "dhcp.lease_time" => c.boot.lease_secs = int_value(value, 60, 31_536_000).map_err(bad)? as u32,
                "dhcp.register_unknown" => c.boot.register_unknown = bool_value(value).map_err(bad)?,
                "dhcp.first_ip" => {
                    c.boot.first_ip = Some(value.parse().map_err(|_| bad(format!("{value:?} is not an IPv4 address")))?)
                }
                "dhcp.defer_ms" => c.boot.defer_ms = int_value(value, 0, 10_000).map_err(bad)?,
                "dhcp.bios_file" | "dhcp.efi_file" => {
                    let v = boot_file_name(value).map_err(bad)?;
                    if key == "dhcp.bios_file" { c.boot.bios_file = v } else { c.boot.efi_file = v }
                }
                k if k.starts_with(BOOT_FILE_PREFIX) => {
                    let arch = k[BOOT_FILE_PREFIX.len()..].parse::<u16>().map_err(|_| {
                        bad(format!(
                            "`{}` is not a client architecture: dhcp.boot_file.N takes the number of DHCP option 93 (0 BIOS, 6 IA32 UEFI, 7 and 9 x64 UEFI, 10 ARM32, 11 ARM64, 16 x64 HTTP Boot, 19 ARM64 HTTP Boot, …)",
                            crate::ids::shown(&k[BOOT_FILE_PREFIX.len()..])
                        ))
                    })?;
                    let file = match value {
                        "none" => None,
                        v => Some(boot_file_name(v).map_err(bad)?),
                    };
                    c.boot.arch_files.insert(arch, file);
                }
                "dhcp.ipv6_ra" => c.boot.ra = bool_value(value).map_err(bad)?,
                "tftp.enabled" => c.boot.tftp_enabled = bool_value(value).map_err(bad)?,
                "tftp.port" => c.boot.tftp_port = port_value(value).map_err(bad)?,
                "tftp.dir" => c.boot.tftp_dir = path_value(value).map_err(bad)?,
                "secure_boot.boot_file" => {
                    let v = boot_file_name(value).map_err(bad)?;
                    if !v.ends_with(".efi") || v.starts_with("grub/") || v.starts_with("cw/") {
                        return Err(bad(format!(
                            "{v:?}: the Secure Boot boot file is a .efi name outside grub/ and cw/ (default sb/shimx64.efi)"
                        )));
                    }
                    c.boot.secure_boot.boot_file = v
                }
                "secure_boot.shim" => c.boot.secure_boot.shim = path_value(value).map_err(bad)?,
                "secure_boot.grub" => c.boot.secure_boot.grub = path_value(value).map_err(bad)?,
                "secure_boot.mokmanager" => {
                    c.boot.secure_boot.mokmanager = match value {
                        "none" => None,
                        v => Some(path_value(v).map_err(bad)?),
                    }
                }
                "power.ipmitool" => c.ipmitool = path_value(value).map_err(bad)?,
                "power.concurrency" => c.power_concurrency = int_value(value, 1, 1024).map_err(bad)? as usize,
                "power.redfish_ca" => c.redfish_ca = Some(path_value(value).map_err(bad)?),
                "head.lease_ttl" => c.lease_ttl_secs = int_value(value, 2, 300).map_err(bad)?,
                "logging.dir" => c.log_dir = path_value(value).map_err(bad)?,
                "logging.level" => {
                    if !matches!(value, "error" | "warn" | "info" | "debug" | "trace") {
                        return Err(bad(format!("{value:?} is not one of error, warn, info, debug, trace")));
                    }
                    c.log_level = value.to_string();
                }
                "local_files.path" => c.storage_dir = path_value(value).map_err(bad)?,
                "local_files.audit_interval" => c.audit_interval_secs = int_value(value, 1, 86_400).map_err(bad)?,
                "local_files.sweep_interval" => c.sweep_interval_secs = int_value(value, 1, 3600).map_err(bad)?,
                "local_files.deleted_ttl" => c.deleted_ttl_secs = int_value(value, 60, 30 * 86_400).map_err(bad)?,
                "local_files.min_copies" => c.min_copies = int_value(value, 0, 64).map_err(bad)? as u32,
                "local_files.scrub_interval" => c.scrub_interval_secs = int_value(value, 0, 365 * 86_400).map_err(bad)?,
                "local_files.scrub_rate" => c.scrub_rate_mib = int_value(value, 1, 1 << 20).map_err(bad)?,
                "local_files.max_transfers" => c.max_transfers = int_value(value, 0, 100_000).map_err(bad)? as u32,
                "local_files.max_rate" => c.max_rate_mib = int_value(value, 0, 1 << 20).map_err(bad)?,
                _ => warnings.push(unknown_key(path, line, key)),
            }
        }
        Ok(Loaded { config: c, warnings })
    }

    /// The admin password, or an error naming the key that is missing.
    pub fn require_admin_pass(&self) -> Result<&str, ConfigError> {
        self.admin_pass
            .as_deref()
            .ok_or_else(|| ConfigError::Missing { path: self.path.clone(), key: "database.admin_pass".into() })
    }
}

/// Every key [`Config::parse`] reads (not `database.client_port`, which is no longer used): what
/// an unknown key is compared with for a "did you mean".
pub const KNOWN_KEYS: &[&str] = &[
    "database.type",
    "database.admin_pass",
    "database.path",
    "database.endpoints",
    "database.etcd_binary",
    "database.data_dir",
    "database.peer_port",
    "database.initial_cluster",
    "database.initial_cluster_state",
    "database.cluster_token",
    "database.max_txn_ops",
    "database.state",
    "database.recover",
    "database.etcdctl_binary",
    "database.peers",
    "database.import_on_start",
    "database.ready_timeout",
    "head.name",
    "head.ip",
    "head.port",
    "head.tls_port",
    "head.bind",
    "head.ssh_keys",
    "head.lease_ttl",
    "tls.dir",
    "events.keep",
    "events.keep_days",
    "rebalance.enabled",
    "rebalance.interval",
    "rebalance.threshold",
    "rebalance.holdoff",
    "metrics.enabled",
    "dhcp.interface",
    "dhcp.port",
    "dhcp.netmask",
    "dhcp.router",
    "dhcp.dns",
    "dhcp.domain",
    "dhcp.lease_time",
    "dhcp.register_unknown",
    "dhcp.first_ip",
    "dhcp.defer_ms",
    "dhcp.bios_file",
    "dhcp.efi_file",
    "dhcp.boot_file.7",
    "dhcp.ipv6_ra",
    "tftp.enabled",
    "tftp.port",
    "tftp.dir",
    "secure_boot.boot_file",
    "secure_boot.shim",
    "secure_boot.grub",
    "secure_boot.mokmanager",
    "power.ipmitool",
    "power.concurrency",
    "power.redfish_ca",
    "logging.dir",
    "logging.level",
    "local_files.path",
    "local_files.audit_interval",
    "local_files.sweep_interval",
    "local_files.deleted_ttl",
    "local_files.min_copies",
    "local_files.scrub_interval",
    "local_files.scrub_rate",
    "local_files.max_transfers",
    "local_files.max_rate",
];

/// `dhcp.boot_file.<arch>`: the boot file of one client architecture.
pub const BOOT_FILE_PREFIX: &str = "dhcp.boot_file.";

/// A boot file name as DHCP hands it out and TFTP and HTTP serve it: 1 to 127 characters, no
/// control characters, no `..` or leading `/` (it names a file inside `tftp.dir`).
fn boot_file_name(v: &str) -> Result<String, String> {
    if v.is_empty() || v.len() > 127 || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("a boot file name is 1 to 127 characters, no spaces or control characters".into());
    }
    if v.starts_with('/') || v.split('/').any(|p| p == ".." || p == "." || p.is_empty()) {
        return Err(format!("{v:?} is not a file name inside tftp.dir (no leading /, no . or .. parts)"));
    }
    Ok(v.to_string())
}

/// Client architectures (DHCP option 93, IANA's "Processor Architecture Types") by name, for
/// messages.
pub fn arch_name(arch: u16) -> &'static str {
    match arch {
        0 => "x86 BIOS",
        6 => "x86 (32-bit) UEFI",
        7 => "x64 UEFI",
        9 => "x64 UEFI (EBC number, used by x64 firmware)",
        10 => "ARM 32-bit UEFI",
        11 => "ARM 64-bit UEFI",
        15 => "x86 (32-bit) UEFI HTTP Boot",
        16 => "x64 UEFI HTTP Boot",
        18 => "ARM 32-bit UEFI HTTP Boot",
        19 => "ARM 64-bit UEFI HTTP Boot",
        25 => "RISC-V 32-bit UEFI",
        27 => "RISC-V 64-bit UEFI",
        28 => "RISC-V 64-bit UEFI HTTP Boot",
        _ => "architecture without a name here",
    }
}

impl BootNet {
    /// The boot file offered to client architecture `arch` (DHCP option 93), or `None` when this
    /// head offers nothing to it: `dhcp.boot_file.<arch>` if set, else `dhcp.bios_file` for BIOS
    /// (0), `dhcp.efi_file` for x64 UEFI (7, 9) and x64 UEFI HTTP Boot (16): what Debian's `ipxe`
    /// package ships. It ships no iPXE for other architectures, so they get nothing by default.
    pub fn boot_file(&self, arch: u16) -> Option<&str> {
        if let Some(f) = self.arch_files.get(&arch) {
            return f.as_deref();
        }
        match arch {
            0 => Some(&self.bios_file),
            7 | 9 | 16 => Some(&self.efi_file),
            _ => None,
        }
    }
}

/// The warning for a key [`Config::parse`] does not know, with the known key it is probably a
/// typo of.
fn unknown_key(path: &Path, line: usize, key: &str) -> String {
    let shown = crate::ids::shown(key);
    match crate::suggest::did_you_mean(key, KNOWN_KEYS) {
        Some(k) => format!("{}:{line}: unknown key `{shown}` ignored; did you mean `{k}`?", path.display()),
        None => format!("{}:{line}: unknown key `{shown}` ignored", path.display()),
    }
}

fn bool_value(v: &str) -> Result<bool, String> {
    match v {
        "yes" | "true" | "1" | "on" => Ok(true),
        "no" | "false" | "0" | "off" => Ok(false),
        _ => Err(format!("{v:?} is not yes or no")),
    }
}

/// Changes keys of a configuration file in place, keeping every other line and comment: a key
/// with `Some(value)` replaces the key's line (the first one; later duplicates are removed) or is
/// appended; `None` removes the key's lines. The file is replaced atomically, mode 0600 (it holds
/// the database password). The new text must parse.
pub fn edit(path: &Path, changes: &[(&str, Option<&str>)]) -> Result<(), ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let new = edit_text(&text, changes);
    Config::parse(&new, path)?;
    crate::fsutil::write_atomic(path, None, new.as_bytes(), Some(0o600))
        .map_err(|source| ConfigError::Write { path: path.to_path_buf(), source })
}

/// The text of [`edit`].
pub fn edit_text(text: &str, changes: &[(&str, Option<&str>)]) -> String {
    let mut done: Vec<&str> = Vec::new();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim();
        let key =
            (!t.starts_with('#') && !t.starts_with(';')).then(|| t.split_once('=').map(|(k, _)| k.trim())).flatten();
        match key.and_then(|k| changes.iter().find(|(c, _)| *c == k)) {
            Some((k, v)) => {
                if let (Some(v), false) = (v, done.contains(k)) {
                    out.push_str(&format!("{k} = {v}\n"));
                }
                done.push(k);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (k, v) in changes {
        if let (Some(v), false) = (v, done.contains(k)) {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    out
}

fn path_value(v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err("empty path".into());
    }
    if !v.starts_with('/') {
        return Err(format!("{v:?} is not an absolute path"));
    }
    Ok(PathBuf::from(v))
}

fn port_value(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{v:?} is not a port number (1-65535)")),
    }
}

fn int_value(v: &str, min: u64, max: u64) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("{v:?} is not a whole number from {min} to {max}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Loaded, ConfigError> {
        Config::parse(t, Path::new("/x/base.ini"))
    }

    #[test]
    fn rebalance_power_and_boot_keys_are_checked() {
        let ok = parse("rebalance.interval = 30\nrebalance.threshold = 25%\nrebalance.holdoff = 60\npower.concurrency = 8\ndhcp.interface = eth1\ndhcp.dns = 10.0.0.1, 10.0.0.2\npower.redfish_ca = /etc/clusterware/bmc-ca.pem\n").unwrap().config;
        assert_eq!((ok.rebalance_interval_secs, ok.rebalance_threshold_pct, ok.power_concurrency), (30, 25, 8));
        assert_eq!(ok.redfish_ca, Some(PathBuf::from("/etc/clusterware/bmc-ca.pem")));
        assert_eq!(ok.boot.dns.len(), 2);
        for bad in [
            "rebalance.interval = 0",
            "rebalance.threshold = 0",
            "rebalance.threshold = 5000",
            "rebalance.holdoff = 1",
            "rebalance.enabled = maybe",
            "power.concurrency = 0",
            "power.redfish_ca = bmc-ca.pem",
            "dhcp.interface = a/b",
            "dhcp.netmask = 255.0.255.0",
            "dhcp.dns = 10.0.0.x",
            "tftp.dir = relative",
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(":1: "), "{bad}: {e}");
        }
    }

    /// `dhcp.boot_file.<arch>` fills the table; `none` turns an architecture off; the table wins
    /// over `dhcp.bios_file`/`dhcp.efi_file`; bad numbers and names are refused with the key.
    #[test]
    fn boot_files_by_architecture() {
        let c = parse("dhcp.efi_file = ipxe.efi\ndhcp.boot_file.11 = arm64/snponly.efi\ndhcp.boot_file.0 = none\ntftp.enabled = no\n").unwrap().config;
        let b = &c.boot;
        assert_eq!(b.boot_file(11), Some("arm64/snponly.efi"));
        assert_eq!(b.boot_file(0), None);
        assert_eq!(
            (b.boot_file(7), b.boot_file(9), b.boot_file(16)),
            (Some("ipxe.efi"), Some("ipxe.efi"), Some("ipxe.efi"))
        );
        assert_eq!((b.boot_file(6), b.boot_file(19)), (None, None));
        assert!(!b.tftp_enabled);
        let d = BootNet::default();
        assert_eq!(
            (d.boot_file(0), d.boot_file(7), d.boot_file(16), d.boot_file(11)),
            (Some("undionly.kpxe"), Some("snponly.efi"), Some("snponly.efi"), None)
        );
        for (line, says) in [
            ("dhcp.boot_file.arm = x.efi", "not a client architecture"),
            ("dhcp.boot_file.70000 = x.efi", "not a client architecture"),
            ("dhcp.boot_file.7 = ../etc/passwd", "not a file name inside tftp.dir"),
            ("dhcp.boot_file.7 = /boot/ipxe.efi", "not a file name inside tftp.dir"),
            ("dhcp.boot_file.7 = a b.efi", "no spaces"),
            ("dhcp.efi_file = x//y.efi", "not a file name inside tftp.dir"),
        ] {
            let e = parse(line).unwrap_err().to_string();
            assert!(e.contains(line.split(" =").next().unwrap()) && e.contains(says), "{line}: {e}");
        }
    }

    /// `secure_boot.*`: Debian's paths by default; the boot file a .efi name in tftp's namespace.
    #[test]
    fn secure_boot_files() {
        let d = SecureBootFiles::default();
        assert_eq!(d.boot_file, "sb/shimx64.efi");
        assert_eq!(d.shim, PathBuf::from("/usr/lib/shim/shimx64.efi.signed"));
        assert_eq!(d.mokmanager, None);
        let c = parse("secure_boot.boot_file = x/shim.efi\nsecure_boot.shim = /s\nsecure_boot.grub = /g\nsecure_boot.mokmanager = /m\n")
            .unwrap()
            .config;
        let sb = &c.boot.secure_boot;
        assert_eq!((sb.boot_file.as_str(), sb.shim.to_str(), sb.grub.to_str()), ("x/shim.efi", Some("/s"), Some("/g")));
        assert_eq!(sb.mokmanager.as_deref(), Some(Path::new("/m")));
        for line in [
            "secure_boot.boot_file = ../shim.efi",
            "secure_boot.boot_file = sb/shim",
            "secure_boot.boot_file = grub/shim.efi",
            "secure_boot.shim = relative",
        ] {
            assert!(parse(line).is_err(), "{line}");
        }
    }

    #[test]
    fn defaults_and_values() {
        let l = parse(
            "# comment\n\n database.admin_pass = s3cret \nlocal_thing.x = 1\ndatabase.type=etcd\nhead.port = \"8080\"\nhead.lease_ttl=3\n",
        )
        .unwrap();
        assert_eq!(l.config.admin_pass.as_deref(), Some("s3cret"));
        assert_eq!(l.config.database_type, DatabaseType::Etcd);
        assert_eq!(l.config.head_port, 8080);
        assert_eq!(l.config.lease_ttl_secs, 3);
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].contains("/x/base.ini:4") && l.warnings[0].contains("local_thing.x"));
        // A key of older versions: loads, with a warning that says what replaced it.
        let l = parse("database.client_port = 2379\n").unwrap();
        assert!(l.warnings.len() == 1 && l.warnings[0].contains("socket in database.data_dir"), "{:?}", l.warnings);
    }

    #[test]
    fn bad_value_names_file_line_and_key() {
        let e = parse("database.admin_pass = x\n\nhead.port = 99999\n").unwrap_err().to_string();
        assert_eq!(e, "/x/base.ini:3: head.port: \"99999\" is not a port number (1-65535)");
        let e = parse("head.lease_ttl = 1\n").unwrap_err().to_string();
        assert!(e.contains(":1: head.lease_ttl:"), "{e}");
        let e = parse("just words\n").unwrap_err().to_string();
        assert!(e.contains(":1: expected `key = value`"), "{e}");
        for bad in [
            "database.type = mongo",
            "head.ip = 10.0.0",
            "database.path = relative",
            "database.initial_cluster = a",
            "head.name = a/b",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_suggest_the_known_key_they_are_near() {
        let l = parse(
            "head.prot = 80\nHead.Port = 81\nlocal_files.audit_intervall = 5\nfrobnicate = 1\nhead.x\u{1b}[2J = 1\n",
        )
        .unwrap();
        assert_eq!(l.config.head_port, 80, "nothing read from unknown keys");
        assert_eq!(
            l.warnings,
            [
                "/x/base.ini:1: unknown key `head.prot` ignored; did you mean `head.port`?",
                "/x/base.ini:2: unknown key `Head.Port` ignored; did you mean `head.port`?",
                "/x/base.ini:3: unknown key `local_files.audit_intervall` ignored; did you mean `local_files.audit_interval`?",
                "/x/base.ini:4: unknown key `frobnicate` ignored",
                "/x/base.ini:5: unknown key `head.x\\u{1b}[2J` ignored",
            ]
        );
    }

    /// [`KNOWN_KEYS`] is exactly what the parser reads: every key in it is known to the parser,
    /// and every key the parser's `match` names is in it.
    #[test]
    fn known_keys_are_the_parsers() {
        for k in KNOWN_KEYS {
            match parse(&format!("{k} = \u{1}")) {
                Ok(l) => assert!(l.warnings.iter().all(|w| !w.contains("unknown key")), "{k}: {:?}", l.warnings),
                Err(e) => assert!(e.to_string().contains(k), "{k}: {e}"),
            }
        }
        let src = include_str!("config.rs");
        let body = &src[src.find("match key {").unwrap()..src.find("_ => warnings.push(unknown_key").unwrap()];
        let mut named = 0;
        for line in body.lines().map(str::trim).filter(|l| l.starts_with('"') && l.contains("=>")) {
            for k in line.split("=>").next().unwrap().split('|').map(|k| k.trim().trim_matches('"')) {
                if k.contains('.') && k != "database.client_port" {
                    named += 1;
                    assert!(KNOWN_KEYS.contains(&k), "{k} is read but not in KNOWN_KEYS");
                }
            }
        }
        // The table's keys are read by prefix: KNOWN_KEYS has one of them, for suggestions.
        assert!(body.contains("k if k.starts_with(BOOT_FILE_PREFIX)"));
        assert_eq!(named + 1, KNOWN_KEYS.len());
    }

    #[test]
    fn a_readable_file_holding_the_password_is_warned_about() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("cw-config-test-{}.ini", std::process::id()));
        std::fs::write(&path, "database.admin_pass = s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let w = Config::load(&path).unwrap().warnings;
        assert_eq!(
            w,
            [format!(
                "{p}: mode 0644 lets other users read the database password it holds; run chmod 600 {p}",
                p = path.display()
            )]
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Config::load(&path).unwrap().warnings.is_empty());
        // Without the password there is nothing to protect.
        std::fs::write(&path, "head.port = 8080\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(Config::load(&path).unwrap().warnings.is_empty());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn duplicate_key_warns() {
        let l = parse("head.port = 1\nhead.port = 2\n").unwrap();
        assert_eq!(l.config.head_port, 2);
        assert!(l.warnings[0].contains("also set on line 1"));
    }

    #[test]
    fn missing_password_is_named() {
        let l = parse("").unwrap();
        assert_eq!(
            l.config.require_admin_pass().unwrap_err().to_string(),
            "/x/base.ini: database.admin_pass is not set"
        );
    }
}

#[cfg(test)]
mod edit_tests {
    use super::*;

    #[test]
    fn edit_replaces_appends_removes_and_keeps_comments() {
        let text = "# head\ndatabase.type = embedded\nhead.port = 80\n; note\nhead.port = 81\ndatabase.state = left\n";
        let out = edit_text(
            text,
            &[
                ("database.type", Some("etcd")),
                ("head.port", Some("8080")),
                ("database.state", None),
                ("database.peers", Some("http://1.2.3.4")),
            ],
        );
        assert_eq!(out, "# head\ndatabase.type = etcd\nhead.port = 8080\n; note\ndatabase.peers = http://1.2.3.4\n");
        let c = Config::parse(&out, Path::new("x")).unwrap().config;
        assert_eq!(c.database_type, DatabaseType::Etcd);
        assert_eq!(c.membership, Membership::Member);
        assert_eq!(c.peers, vec!["http://1.2.3.4".to_string()]);
    }

    #[test]
    fn membership_keys_parse_and_bad_values_name_the_key() {
        let c = Config::parse("database.state = ejected\ndatabase.recover = yes\n", Path::new("x")).unwrap().config;
        assert_eq!(c.membership, Membership::Ejected);
        assert!(c.recover);
        let e = Config::parse("database.state = gone\n", Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("database.state") && e.contains("gone"), "{e}");
        let e = Config::parse("database.peers = ftp://x\n", Path::new("x")).unwrap_err().to_string();
        assert!(e.contains("database.peers"), "{e}");
    }

    /// The annotated base.ini the package ships lists settings the parser knows, with valid values:
    /// with every commented-out setting enabled, it parses without a warning.
    #[test]
    fn the_shipped_example_parses() {
        let example = include_str!("../../head/base.ini.example");
        let enabled: String = example
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.split_once(" = ").is_some_and(|(k, _)| k.contains('.') && !k.contains(' ')))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(enabled.lines().count() > 40, "{enabled}");
        let loaded = Config::parse(&enabled, Path::new("base.ini.example")).unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    }
}
