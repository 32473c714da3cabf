//! Identifiers: MAC addresses, head names, node names and attribute keys; and the one check of
//! free text (descriptions, kernel command lines, file names, attribute values): no control
//! characters ([`check_text`]).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An Ethernet MAC address, printed lowercase with colons (`52:54:00:12:34:56`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("malformed MAC address {0:?} (expected six hex octets such as 52:54:00:12:34:56)")]
    Mac(String),
    #[error("malformed IPv4 address {0:?}")]
    Ip(String),
    #[error(
        "invalid head name {0:?} (1-63 characters: letters, digits, '-', '_' or '.', starting with a letter or digit)"
    )]
    HeadName(String),
    #[error("invalid attribute name {0:?} (letters, digits, '_', '-' or '.'; at most 64 characters)")]
    AttrKey(String),
    #[error("bad value for {key}: {reason}")]
    AttrValue { key: String, reason: String },
    #[error("MAC range starting at {0} runs past ff:ff:ff:ff:ff:ff")]
    MacOverflow(MacAddr),
    #[error("IP range starting at {0} runs past 255.255.255.255")]
    IpOverflow(Ipv4Addr),
    #[error("{field} contains the control character U+{code:04X} at byte {at}; control characters are not accepted")]
    Control { field: String, code: u32, at: usize },
}

impl MacAddr {
    /// The MAC `n` addresses after this one, for ranges of consecutive MACs.
    pub fn offset(self, n: u64) -> Result<MacAddr, IdError> {
        let mut v = [0u8; 8];
        v[2..].copy_from_slice(&self.0);
        let x = u64::from_be_bytes(v).checked_add(n).filter(|x| *x < (1u64 << 48)).ok_or(IdError::MacOverflow(self))?;
        let b = x.to_be_bytes();
        let mut out = [0u8; 6];
        out.copy_from_slice(&b[2..]);
        Ok(MacAddr(out))
    }
}

impl FromStr for MacAddr {
    type Err = IdError;
    /// Accepts `aa:bb:cc:dd:ee:ff`, `aa-bb-cc-dd-ee-ff` and `aabb.ccdd.eeff`, any case.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let bad = || IdError::Mac(s.to_string());
        let hex: String = if s.contains(':') || s.contains('-') {
            let parts: Vec<&str> = s.split([':', '-']).collect();
            if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
                return Err(bad());
            }
            parts.concat()
        } else if s.contains('.') {
            let parts: Vec<&str> = s.split('.').collect();
            if parts.len() != 3 || parts.iter().any(|p| p.len() != 4) {
                return Err(bad());
            }
            parts.concat()
        } else {
            return Err(bad());
        };
        let mut out = [0u8; 6];
        hex::decode_to_slice(&hex, &mut out).map_err(|_| bad())?;
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Parses an IPv4 address with an error that names the input.
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, IdError> {
    s.parse().map_err(|_| IdError::Ip(s.to_string()))
}

/// The address `n` after `ip`, for ranges of consecutive IPs.
pub fn ipv4_offset(ip: Ipv4Addr, n: u64) -> Result<Ipv4Addr, IdError> {
    u64::from(u32::from(ip))
        .checked_add(n)
        .and_then(|x| u32::try_from(x).ok())
        .map(Ipv4Addr::from)
        .ok_or(IdError::IpOverflow(ip))
}

/// Checks text the head keeps and the CLIs print or a node's boot script carries (a name, a
/// description, a kernel command line, a file name, an attribute's value): no control character
/// ([`char::is_control`]: tab, newline, carriage return, escape and the rest of C0, DEL, C1),
/// which a terminal or iPXE would act on. `field` names the text in the message. The name
/// checks here and `api::valid_object_name` allow letters, digits and a few marks only, so no
/// control character passes them either.
pub fn check_text(field: &str, value: &str) -> Result<(), IdError> {
    match value.char_indices().find(|(_, c)| c.is_control()) {
        Some((at, c)) => Err(IdError::Control { field: field.to_string(), code: u32::from(c), at }),
        None => Ok(()),
    }
}

/// The text as a terminal should show it: each control character escaped (`\n`, `\t`,
/// `\u{1b}`, …), the rest as it is. The CLIs print what heads send through it, so that text
/// stored before [`check_text`] existed, or sent by something else, cannot drive the terminal.
pub fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Checks a head name: it becomes a database key, an etcd member name and part of a log file name.
pub fn validate_head_name(s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(IdError::HeadName(s.to_string())) }
}

/// Checks a node attribute name. Names starting with `_` are the ones ClusterWare itself reads
/// (`_boot_config`, `_preferred_head`, `_status_secs`); any other name is the administrator's.
pub fn validate_attr_key(s: &str) -> Result<(), IdError> {
    let ok =
        !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok { Ok(()) } else { Err(IdError::AttrKey(s.to_string())) }
}

/// Checks an attribute's value; the attributes ClusterWare reads have typed values.
pub fn validate_attr(key: &str, value: &str) -> Result<(), IdError> {
    validate_attr_key(key)?;
    let bad = |reason: &str| Err(IdError::AttrValue { key: key.to_string(), reason: reason.to_string() });
    if value.len() > 4096 {
        return bad("longer than 4096 bytes");
    }
    check_text(&format!("the value of {key}"), value)?;
    match key {
        "_status_secs" => match value.parse::<u32>() {
            Ok(n) if crate::agent::STATUS_SECS_RANGE.contains(&n) => Ok(()),
            _ => bad("expected whole seconds from 1 to 86400"),
        },
        k if k.starts_with("_bmc_") => crate::power::validate_bmc_attr(k, value)
            .map_err(|reason| IdError::AttrValue { key: key.to_string(), reason }),
        "_ssh_keys" => match crate::agent::parse_key_list(value) {
            Ok(_) => Ok(()),
            Err(e) => {
                Err(IdError::AttrValue { key: key.to_string(), reason: format!("{e} (keys are separated by ';')") })
            }
        },
        "_preferred_head" | "_boot_config" if value.is_empty() => bad("empty (use clear to remove it)"),
        "_preferred_head" if value.parse::<std::net::Ipv4Addr>().is_err() && validate_head_name(value).is_err() => {
            bad("expected a head name or IPv4 address")
        }
        _ => Ok(()),
    }
}

/// The name of the node with this index (`n0`, `n1`, …), as ClusterWare names nodes.
pub fn node_name(index: u32) -> String {
    format!("n{index}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_forms() {
        let m: MacAddr = "52:54:00:AB:cd:0f".parse().unwrap();
        assert_eq!(m.to_string(), "52:54:00:ab:cd:0f");
        assert_eq!("52-54-00-ab-cd-0f".parse::<MacAddr>().unwrap(), m);
        assert_eq!("5254.00ab.cd0f".parse::<MacAddr>().unwrap(), m);
        for bad in
            ["", "52:54:00:ab:cd", "52:54:00:ab:cd:0g", "525400abcd0f", "52:54:00:ab:cd:0f:00", "5:54:00:ab:cd:0ff"]
        {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn mac_offset_carries_and_overflows() {
        let m: MacAddr = "52:54:00:00:00:ff".parse().unwrap();
        assert_eq!(m.offset(1).unwrap().to_string(), "52:54:00:00:01:00");
        let top: MacAddr = "ff:ff:ff:ff:ff:ff".parse().unwrap();
        assert!(top.offset(1).is_err());
        assert_eq!(top.offset(0).unwrap(), top);
    }

    #[test]
    fn ip_offset() {
        let ip = parse_ipv4("10.0.0.255").unwrap();
        assert_eq!(ipv4_offset(ip, 1).unwrap().to_string(), "10.0.1.0");
        assert!(ipv4_offset(parse_ipv4("255.255.255.255").unwrap(), 1).is_err());
        assert!(parse_ipv4("10.0.0.256").is_err());
    }

    #[test]
    fn names() {
        assert!(validate_head_name("head-1.cluster").is_ok());
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(64)] {
            assert!(validate_head_name(bad).is_err(), "{bad}");
        }
        assert!(validate_attr_key("_boot_config").is_ok());
        assert!(validate_attr_key("rack=3").is_err());
        assert_eq!(node_name(7), "n7");
        assert!(validate_attr("_status_secs", "10").is_ok());
        assert!(validate_attr("_status_secs", "0").is_err());
        assert!(validate_attr("_preferred_head", "head2").is_ok());
        assert!(validate_attr("_preferred_head", "10.0.0.1").is_ok());
        assert!(validate_attr("_preferred_head", "a b").is_err());
        assert!(validate_attr("rack", "").is_ok());
        assert!(validate_attr("rack", "a\nb").is_err());
    }

    /// Every control character is refused, named with its field and place; other text passes.
    #[test]
    fn control_characters_are_refused() {
        for ok in ["", "console=ttyS0,115200n8 quiet", "Rechenknoten für Ä-Team ✓", "a b\\n"] {
            assert!(check_text("description", ok).is_ok(), "{ok:?}");
        }
        for (bad, code, at) in [
            ("a\nb", 0x0a, 1),
            ("\r", 0x0d, 0),
            ("tab\there", 0x09, 3),
            ("\u{1b}[2J", 0x1b, 0),
            ("x\u{7f}", 0x7f, 1),
            ("é\u{9b}31m", 0x9b, 2),
            ("nul\0", 0, 3),
        ] {
            let e = check_text("kernel command line", bad).unwrap_err();
            assert_eq!(e, IdError::Control { field: "kernel command line".into(), code, at }, "{bad:?}");
            let msg = e.to_string();
            assert!(msg.starts_with("kernel command line contains the control character U+"), "{msg}");
            assert!(!msg.chars().any(char::is_control), "{msg:?}");
        }
        assert_eq!(shown("plain ✓ \\n"), "plain ✓ \\n");
        assert!(matches!(shown("plain"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(shown("a\nb\tc\r\u{1b}[2J\u{7f}\u{9b}é"), "a\\nb\\tc\\r\\u{1b}[2J\\u{7f}\\u{9b}é");
        let e = validate_attr("rack", "a\u{1b}b").unwrap_err().to_string();
        assert!(e.contains("the value of rack contains the control character U+001B at byte 1"), "{e}");
    }
}

/// A MAC in the OpenAPI document: a string, as it is on the wire.
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for MacAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some("^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"))
            .description(Some("a MAC address, lower case with colons"))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for MacAddr {}
