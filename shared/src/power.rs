//! Power control of compute nodes through their BMCs (IPMI over LAN, or Redfish over HTTPS), and
//! the cluster secrets a node's `_bmc_pass_ref` may name.
//!
//! Node attributes: `_bmc_addr` (`HOST[:PORT]`, or `https://HOST[:PORT]` for Redfish), `_bmc_user`,
//! `_bmc_pass` (a secret: never shown by `ls` or `--json`, never served to nodes) or
//! `_bmc_pass_ref` (the name of a cluster secret), `_bmc_type` (`ipmi` or `redfish`; absent: the
//! head probes for a Redfish service it can trust, else IPMI). IPMI: `_bmc_protocol` (`lanplus`,
//! the default, or `lan`), `_bmc_cipher` (RMCP+ cipher suite, default 3). Redfish:
//! `_bmc_tls_fingerprint` (the SHA-256 of the BMC's certificate, pinned instead of checking it
//! against `power.redfish_ca`), `_bmc_system` (which system of a BMC that manages several).

use serde::{Deserialize, Serialize};

/// Attributes whose values are secrets.
pub const SECRET_ATTRS: [&str; 1] = ["_bmc_pass"];
/// What `ls` and `--json` show instead of a secret attribute's value.
pub const SECRET_SHOWN: &str = "(set)";

/// What to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PowerAction {
    Status,
    On,
    Off,
    Cycle,
    Reset,
}

impl PowerAction {
    pub const ALL: [PowerAction; 5] =
        [PowerAction::Status, PowerAction::On, PowerAction::Off, PowerAction::Cycle, PowerAction::Reset];

    pub fn name(self) -> &'static str {
        match self {
            PowerAction::Status => "status",
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
            PowerAction::Reset => "reset",
        }
    }

    pub fn parse(s: &str) -> Option<PowerAction> {
        PowerAction::ALL.into_iter().find(|a| a.name() == s)
    }
}

/// Boot device for the next boot (once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    Pxe,
    Disk,
    /// UEFI HTTP boot (Redfish BMCs only: IPMI has no such boot device).
    UefiHttp,
}

impl BootDevice {
    /// The command-line flag that asks for it (`--pxe`).
    pub fn flag(self) -> &'static str {
        match self {
            BootDevice::Pxe => "--pxe",
            BootDevice::Disk => "--disk",
            BootDevice::UefiHttp => "--uefi-http",
        }
    }

    /// In words, for results: `next boot from the network`.
    pub fn words(self) -> &'static str {
        match self {
            BootDevice::Pxe => "next boot from the network",
            BootDevice::Disk => "next boot from disk",
            BootDevice::UefiHttp => "next boot over UEFI HTTP",
        }
    }
}

/// How the head talks to a node's BMC (`_bmc_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcType {
    /// IPMI over LAN, through ipmitool.
    Ipmi,
    /// Redfish over HTTPS.
    Redfish,
}

impl BmcType {
    pub fn parse(s: &str) -> Result<BmcType, String> {
        match s {
            "ipmi" => Ok(BmcType::Ipmi),
            "redfish" => Ok(BmcType::Redfish),
            _ => Err(format!("{s:?} is not `redfish` or `ipmi`")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BmcType::Ipmi => "ipmi",
            BmcType::Redfish => "redfish",
        }
    }
}

/// `POST /api/v1/nodes/power`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PowerRequest {
    pub nodes: Vec<String>,
    pub action: PowerAction,
    /// `off` as a graceful (ACPI soft) shutdown; `reset` as a graceful restart (Redfish only).
    #[serde(default)]
    pub soft: bool,
    /// Set the next boot's device first (`on`, `cycle`, `reset`).
    #[serde(default)]
    pub boot: Option<BootDevice>,
    /// Seconds each node's BMC gets.
    pub timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PowerOutcome {
    Ok,
    Failed,
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodePower {
    pub uid: String,
    pub name: String,
    pub outcome: PowerOutcome,
    /// `on` or `off`, for `status` (Redfish BMCs may also say `powering on`, `powering off` or
    /// `paused`).
    #[serde(default)]
    pub power: Option<String>,
    #[serde(default)]
    pub message: String,
}

/// Answer of `POST /api/v1/nodes/power`, one entry per node asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PowerResults {
    pub results: Vec<NodePower>,
}

/// A cluster secret as listed (the value is never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretInfo {
    pub name: String,
    /// Seconds since the Unix epoch.
    pub set: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretList {
    pub secrets: Vec<SecretInfo>,
}

/// `PUT /api/v1/secrets/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SetSecret {
    pub value: String,
}

/// A BMC address as `_bmc_addr` gives it: `HOST[:PORT]`, or `https://HOST[:PORT]` (Redfish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcAddr {
    /// Written as `https://…`: a Redfish service.
    pub https: bool,
    pub host: String,
    /// The port given, if any (see [`BmcAddr::port_or`]).
    pub port: Option<u16>,
}

/// IPMI over LAN's port (RMCP).
pub const IPMI_PORT: u16 = 623;
/// HTTPS's port, where a Redfish service is unless `_bmc_addr` says otherwise.
pub const REDFISH_PORT: u16 = 443;

impl BmcAddr {
    /// Parses `_bmc_addr`. A plain `http://` address is refused: the BMC's password would cross
    /// the network unencrypted.
    pub fn parse(s: &str) -> Result<BmcAddr, String> {
        let lower = s.to_ascii_lowercase();
        if lower.starts_with("http://") {
            return Err(format!(
                "{s:?} is plain http: a BMC password goes over HTTPS only (give https://HOST[:PORT], or HOST[:PORT])"
            ));
        }
        let (https, rest) = match lower.strip_prefix("https://") {
            Some(_) => (true, s[8..].strip_suffix('/').unwrap_or(&s[8..])),
            None if s.contains("://") => return Err(format!("{s:?}: only https:// BMC addresses are known")),
            None => (false, s),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("{p:?} is not a port"))?)),
            None => (rest, None),
        };
        let ok = !host.is_empty()
            && host.len() <= 253
            && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && !host.starts_with(['-', '.']);
        if !ok {
            return Err(format!("{host:?} is not a host name or IPv4 address"));
        }
        Ok(BmcAddr { https, host: host.to_string(), port })
    }

    /// The port, [`IPMI_PORT`] or [`REDFISH_PORT`] when none is given.
    pub fn port_or(&self, kind: BmcType) -> u16 {
        self.port.unwrap_or(match kind {
            BmcType::Ipmi => IPMI_PORT,
            BmcType::Redfish => REDFISH_PORT,
        })
    }
}

/// Parses `_bmc_tls_fingerprint`: the SHA-256 of the BMC's certificate (DER) as 64 hex digits,
/// with or without colons between the bytes (`openssl x509 -noout -fingerprint -sha256` prints
/// it with colons, after `sha256 Fingerprint=`, which may be kept).
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], String> {
    let t = s.trim();
    let t = match t.split_once('=') {
        Some((label, rest)) if label.to_ascii_lowercase().contains("sha256") => rest,
        _ => t,
    };
    let hex: String = t.chars().filter(|c| *c != ':').collect();
    let colons_ok = !t.contains(':') || t.split(':').all(|b| b.len() == 2);
    let mut out = [0u8; 32];
    if hex.len() != 64 || !colons_ok || hex::decode_to_slice(&hex, &mut out).is_err() {
        return Err("expected the certificate's SHA-256: 64 hex digits, with or without colons (AB:CD:…)".to_string());
    }
    Ok(out)
}

/// A fingerprint as the head shows it (lowercase hex, as `_bmc_tls_fingerprint` takes it).
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    hex::encode(fp)
}

/// Checks a BMC attribute's value (`validate_attr` calls this for `_bmc_*`).
pub fn validate_bmc_attr(key: &str, value: &str) -> Result<(), String> {
    match key {
        "_bmc_addr" => BmcAddr::parse(value).map(|_| ()),
        "_bmc_type" => BmcType::parse(value).map(|_| ()),
        // IPMI's own limits (16-byte user names, 20-byte passwords) are checked when ipmitool
        // is run: a Redfish BMC takes longer ones.
        "_bmc_user" if value.is_empty() || value.len() > 64 => Err("1 to 64 characters".into()),
        "_bmc_pass" if value.is_empty() || value.len() > 256 => Err("1 to 256 characters".into()),
        "_bmc_pass_ref" => crate::ids::validate_attr_key(value).map_err(|e| e.to_string()),
        "_bmc_protocol" if value != "lanplus" && value != "lan" => Err("`lanplus` or `lan`".into()),
        "_bmc_cipher" => match value.parse::<u8>() {
            Ok(n) if n <= 17 => Ok(()),
            _ => Err("an RMCP+ cipher suite number from 0 to 17".into()),
        },
        "_bmc_tls_fingerprint" => parse_fingerprint(value).map(|_| ()),
        "_bmc_system"
            if value.is_empty()
                || value.len() > 128
                || value.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#')) =>
        {
            Err("a system's Id as the BMC lists it (1 to 128 characters, no spaces or '/')".into())
        }
        _ => Ok(()),
    }
}

/// A node's attributes with secret values replaced by [`SECRET_SHOWN`].
pub fn mask_secrets(attrs: &mut std::collections::BTreeMap<String, String>) {
    for k in SECRET_ATTRS {
        if let Some(v) = attrs.get_mut(k) {
            *v = SECRET_SHOWN.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bmc_attrs() {
        let a = BmcAddr::parse("10.0.0.5").unwrap();
        assert_eq!((a.host.as_str(), a.port_or(BmcType::Ipmi), a.port_or(BmcType::Redfish)), ("10.0.0.5", 623, 443));
        let a = BmcAddr::parse("bmc-n1.cluster:6230").unwrap();
        assert_eq!((a.host.as_str(), a.port_or(BmcType::Ipmi), a.https), ("bmc-n1.cluster", 6230, false));
        for bad in ["", ":623", "a b", "x:0", "x:99999", "-x", "x;rm -rf", "ftp://x", "https://"] {
            assert!(BmcAddr::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            BmcAddr::parse("HTTPS://bmc7.cluster:8443/").unwrap(),
            BmcAddr { https: true, host: "bmc7.cluster".into(), port: Some(8443) }
        );
        assert_eq!(BmcAddr::parse("10.0.0.5").unwrap(), BmcAddr { https: false, host: "10.0.0.5".into(), port: None });
        let e = BmcAddr::parse("http://10.0.0.5").unwrap_err();
        assert!(e.contains("plain http") && e.contains("https://"), "{e}");
        assert!(validate_bmc_attr("_bmc_addr", "http://10.0.0.5:8000").is_err());
        assert!(validate_bmc_attr("_bmc_pass", "").is_err());
        assert!(validate_bmc_attr("_bmc_pass", &"x".repeat(21)).is_ok(), "Redfish passwords may be longer than IPMI's");
        assert!(validate_bmc_attr("_bmc_pass", &"x".repeat(257)).is_err());
        assert!(validate_bmc_attr("_bmc_protocol", "redfish").is_err());
        assert!(validate_bmc_attr("_bmc_cipher", "18").is_err());
        assert!(validate_bmc_attr("_bmc_cipher", "17").is_ok());
        assert!(validate_bmc_attr("_bmc_system", "System.Embedded.1").is_ok());
        assert!(validate_bmc_attr("_bmc_system", "../x").is_err());
        let mut a = std::collections::BTreeMap::from([("_bmc_pass".to_string(), "hunter2".to_string())]);
        mask_secrets(&mut a);
        assert_eq!(a["_bmc_pass"], SECRET_SHOWN);
    }

    #[test]
    fn bmc_types() {
        assert_eq!(BmcType::parse("redfish"), Ok(BmcType::Redfish));
        assert_eq!(BmcType::parse("ipmi"), Ok(BmcType::Ipmi));
        for bad in ["", "Redfish", "IPMI", "lanplus", "redfish "] {
            assert!(BmcType::parse(bad).is_err(), "{bad:?}");
            assert!(validate_bmc_attr("_bmc_type", bad).is_err(), "{bad:?}");
        }
        assert_eq!(BmcType::parse(BmcType::Redfish.name()), Ok(BmcType::Redfish));
    }

    #[test]
    fn fingerprints_with_or_without_colons() {
        let plain = "5e8f16062ea3cd2c4a0d547876baa6f38cabf625ead2f2d1a0f5a5c1b2b3d4e5";
        let want = parse_fingerprint(plain).unwrap();
        assert_eq!(format_fingerprint(&want), plain);
        let colons: Vec<String> =
            plain.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_uppercase()).collect();
        let colons = colons.join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), want);
        assert_eq!(parse_fingerprint(&format!("sha256 Fingerprint={colons}")).unwrap(), want);
        assert_eq!(parse_fingerprint(&format!("  {plain}\n")).unwrap(), want);
        for bad in [
            "",
            &plain[..62],
            &format!("{plain}00"),
            &plain.replace('5', "g"),
            "5e8:f16",
            &format!("{}:{}", &plain[..3], &plain[3..]),
            &format!("md5 Fingerprint={plain}"),
        ] {
            assert!(parse_fingerprint(bad).is_err(), "{bad:?}");
            assert!(validate_bmc_attr("_bmc_tls_fingerprint", bad).is_err(), "{bad:?}");
        }
    }
}
