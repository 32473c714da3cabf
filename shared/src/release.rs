//! Releases and what works across them. Every program reports [`VERSION`](crate::VERSION)
//! (`MAJOR.MINOR.PATCH`, maybe `-SUFFIX`); the release is `MAJOR.MINOR`, and the patch versions
//! of one release are interchangeable.
//!
//! - Heads of two adjacent releases share a cluster while a rolling upgrade is under way: the
//!   newer one reads and writes the older one's database schema until every head runs it (the
//!   schema's own rules are the head's, in `core::versions`).
//! - Heads serve agents of the previous release and of their own ([`OLDEST_AGENT`]); an older
//!   agent is served as well as it can be, and its node shows a problem saying what to install.
//! - Wire types change only by adding fields with defaults, so an older agent's pushes, long
//!   polls and scripts keep working.

use std::fmt;

/// A version as the programs report it; the suffix of a pre-release is kept for display only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    /// `MAJOR.MINOR.PATCH` with an optional `-SUFFIX` or `+BUILD`; `None` for anything else.
    pub fn parse(s: &str) -> Option<Version> {
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let mut num = || -> Option<u32> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 9 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = Version { major: num()?, minor: num()?, patch: num()? };
        parts.next().is_none().then_some(v)
    }

    /// This program's version.
    pub fn this() -> Version {
        Version::parse(crate::VERSION).expect("the crate version is MAJOR.MINOR.PATCH")
    }

    /// The release this version belongs to.
    pub fn release(&self) -> (u32, u32) {
        (self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The oldest agent a head of this release serves: the previous release's (`RELEASES`).
pub const OLDEST_AGENT: Version = Version { major: 0, minor: 1, patch: 0 };

/// What is wrong with a node's agent of version `agent`, if anything, in words an administrator
/// acts on: older than [`OLDEST_AGENT`], or a version that is not one.
pub fn agent_problem(agent: &str) -> Option<String> {
    match Version::parse(agent) {
        None => Some(format!(
            "its agent reports version {:?}, which is not a release; install the clusterware-node package of \
             release {} in the node's image",
            crate::ids::shown(agent),
            crate::VERSION
        )),
        Some(v) if v < OLDEST_AGENT => Some(format!(
            "its agent {v} is older than this head serves ({OLDEST_AGENT} or newer): install the clusterware-node \
             package of release {} in the node's image and reboot it",
            crate::VERSION
        )),
        Some(_) => None,
    }
}

/// When the heads do not all run one version: a warning naming each version and its heads, and
/// saying what to do. `heads` is (name, version).
pub fn skew<'a>(heads: impl IntoIterator<Item = (&'a str, &'a str)>) -> Option<String> {
    let mut by: std::collections::BTreeMap<&str, Vec<&str>> = std::collections::BTreeMap::new();
    for (name, version) in heads {
        by.entry(version).or_default().push(name);
    }
    if by.len() < 2 {
        return None;
    }
    let mut versions: Vec<(&str, Vec<&str>)> = by.into_iter().collect();
    versions.sort_by(|a, b| Version::parse(a.0).cmp(&Version::parse(b.0)).then(a.0.cmp(b.0)));
    let newest = versions.last().map(|v| v.0).unwrap_or_default();
    let list: Vec<String> = versions.iter().map(|(v, names)| format!("{v} on {}", names.join(", "))).collect();
    Some(format!(
        "the heads run different versions ({}): bring every head to one release, {newest}, with `scyld-install \
         --update` on each of the others, one at a time",
        list.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_order_as_releases() {
        let v = |s| Version::parse(s).unwrap();
        assert_eq!(v("0.1.0"), Version { major: 0, minor: 1, patch: 0 });
        assert_eq!(v("1.2.3-rc1"), Version { major: 1, minor: 2, patch: 3 });
        assert!(v("0.10.0") > v("0.9.7") && v("1.0.0") > v("0.99.99"));
        assert_eq!(v("0.2.5").release(), (0, 2));
        for bad in ["", "1", "1.2", "1.2.3.4", "a.b.c", "1..3", "-1.2.3", "1.2.x", "99999999999.0.0", "1.2.3 "] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Version::this().to_string(), crate::VERSION.split('-').next().unwrap());
    }

    #[test]
    fn old_or_odd_agents_are_named_with_what_to_install() {
        assert_eq!(agent_problem(crate::VERSION), None);
        assert_eq!(agent_problem(&OLDEST_AGENT.to_string()), None);
        let p = agent_problem("0.0.9").unwrap();
        assert!(p.contains("0.0.9 is older") && p.contains(&format!("release {}", crate::VERSION)), "{p}");
        let p = agent_problem("t\u{1b}[31m").unwrap();
        assert!(p.contains("not a release") && !p.contains('\u{1b}'), "{p}");
    }

    #[test]
    fn skew_names_every_version_and_the_newest() {
        assert_eq!(skew([("h1", "0.1.0"), ("h2", "0.1.0")]), None);
        assert_eq!(skew([]), None);
        let w = skew([("h1", "0.2.0"), ("h2", "0.1.0"), ("h3", "0.10.0"), ("h4", "0.1.0")]).unwrap();
        assert!(w.contains("(0.1.0 on h2, h4; 0.2.0 on h1; 0.10.0 on h3)"), "{w}");
        assert!(w.contains("one release, 0.10.0"), "{w}");
    }
}
