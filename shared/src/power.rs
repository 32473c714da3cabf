//! Power control of compute nodes through their BMCs (IPMI over LAN), and the cluster secrets a
//! node's `_bmc_pass_ref` may name.
//!
//! Node attributes: `_bmc_addr` (`HOST[:PORT]`), `_bmc_user`, `_bmc_pass` (a secret: never shown
//! by `ls` or `--json`, never served to nodes) or `_bmc_pass_ref` (the name of a cluster secret),
//! `_bmc_protocol` (`lanplus`, the default, or `lan`), `_bmc_cipher` (RMCP+ cipher suite, default
//! 3).

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

/// Boot device for the next boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum BootDevice {
    Pxe,
    Disk,
}

/// `POST /api/v1/nodes/power`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PowerRequest {
    pub nodes: Vec<String>,
    pub action: PowerAction,
    /// `off` as an ACPI soft shutdown.
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
    /// `on` or `off`, for `status`.
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

/// Checks `HOST[:PORT]` of a BMC; returns (host, port).
pub fn parse_bmc_addr(s: &str) -> Result<(String, u16), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0).ok_or(format!("{p:?} is not a port"))?),
        None => (s, 623),
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !host.starts_with(['-', '.']);
    if !ok {
        return Err(format!("{host:?} is not a host name or IPv4 address"));
    }
    Ok((host.to_string(), port))
}

/// Checks a BMC attribute's value (`validate_attr` calls this for `_bmc_*`).
pub fn validate_bmc_attr(key: &str, value: &str) -> Result<(), String> {
    match key {
        "_bmc_addr" => parse_bmc_addr(value).map(|_| ()),
        "_bmc_user" if value.is_empty() || value.len() > 16 => Err("1 to 16 characters".into()),
        "_bmc_pass" if value.is_empty() || value.len() > 20 => {
            Err("1 to 20 characters (IPMI 2.0 passwords are at most 20 bytes)".into())
        }
        "_bmc_pass_ref" => crate::ids::validate_attr_key(value).map_err(|e| e.to_string()),
        "_bmc_protocol" if value != "lanplus" && value != "lan" => Err("`lanplus` or `lan`".into()),
        "_bmc_cipher" => match value.parse::<u8>() {
            Ok(n) if n <= 17 => Ok(()),
            _ => Err("an RMCP+ cipher suite number from 0 to 17".into()),
        },
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
        assert_eq!(parse_bmc_addr("10.0.0.5").unwrap(), ("10.0.0.5".into(), 623));
        assert_eq!(parse_bmc_addr("bmc-n1.cluster:6230").unwrap(), ("bmc-n1.cluster".into(), 6230));
        for bad in ["", ":623", "a b", "x:0", "x:99999", "-x", "x;rm -rf"] {
            assert!(parse_bmc_addr(bad).is_err(), "{bad}");
        }
        assert!(validate_bmc_attr("_bmc_pass", "").is_err());
        assert!(validate_bmc_attr("_bmc_pass", &"x".repeat(21)).is_err());
        assert!(validate_bmc_attr("_bmc_protocol", "redfish").is_err());
        assert!(validate_bmc_attr("_bmc_cipher", "18").is_err());
        assert!(validate_bmc_attr("_bmc_cipher", "17").is_ok());
        let mut a = std::collections::BTreeMap::from([("_bmc_pass".to_string(), "hunter2".to_string())]);
        mask_secrets(&mut a);
        assert_eq!(a["_bmc_pass"], SECRET_SHOWN);
    }
}
