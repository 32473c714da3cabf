//! The cluster as this head sees it: every head's record and which heads are alive, kept current
//! by watches ([`Mirror`]), and the decisions every head must take alike from them: the order of
//! heads a node is given, a node's preferred head, and the hash that orders nodes
//! ([`order_hash`]: rebalancing and head lists).

use crate::core::complaints::Complaints;
use crate::core::db::Database;
use crate::core::follow::Mirror;
use crate::core::schema::{ALIVE, AliveRecord, HEADS, HeadRecord};
use crate::core::supervisor::Supervisor;
use clusterware_shared::agent::HeadEntry;
use clusterware_shared::api::Node;
use clusterware_shared::ids::MacAddr;
use std::collections::HashSet;
use std::sync::Arc;

/// A hash every head computes alike (FNV-1a: stable across heads and versions, unlike the
/// standard library's hasher), for orders that heads must agree on without talking.
pub fn order_hash(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

/// See the module's documentation.
pub struct ClusterView {
    /// This head's record as it registered.
    pub me: HeadRecord,
    pub heads: Arc<Mirror<HeadRecord>>,
    pub alive: Arc<Mirror<AliveRecord>>,
    complaints: Complaints,
}

impl ClusterView {
    /// Starts following `heads/` and `alive/`.
    pub fn spawn(db: &Database, me: HeadRecord, sup: &Supervisor) -> Arc<ClusterView> {
        Arc::new(ClusterView {
            heads: Mirror::spawn(db.clone(), HEADS, sup),
            alive: Mirror::spawn(db.clone(), ALIVE, sup),
            me,
            complaints: Complaints::default(),
        })
    }

    /// A view of fixed records (unit tests).
    #[cfg(test)]
    pub fn fixed(me: HeadRecord, heads: Vec<HeadRecord>, alive: &[&str]) -> ClusterView {
        let a = alive
            .iter()
            .map(|n| (n.to_string(), AliveRecord { name: n.to_string(), pid: 1, started: 0, stopping: false }))
            .collect::<Vec<_>>();
        ClusterView {
            heads: Arc::new(Mirror::fixed(heads.into_iter().map(|h| (h.name.clone(), h)).collect())),
            alive: Arc::new(Mirror::fixed(a)),
            me,
            complaints: Complaints::default(),
        }
    }

    /// The same view with `name`'s liveness record saying it stops (unit tests).
    #[cfg(test)]
    pub fn with_stopping(self, name: &str) -> ClusterView {
        let a = self
            .alive
            .values()
            .into_iter()
            .map(|r| (r.name.clone(), AliveRecord { stopping: r.stopping || r.name == name, ..(*r).clone() }))
            .collect();
        ClusterView { alive: Arc::new(Mirror::fixed(a)), ..self }
    }

    /// The names of the heads alive now.
    pub fn alive_names(&self) -> HashSet<String> {
        self.alive.keys().into_iter().collect()
    }

    /// The heads that may be given nodes: alive and not stopping.
    pub fn taking_nodes(&self) -> HashSet<String> {
        self.alive.values().into_iter().filter(|r| !r.stopping).map(|r| r.name.clone()).collect()
    }

    /// Whether `name` is alive and not stopping.
    pub fn takes_nodes(&self, name: &str) -> bool {
        self.alive.get(name).is_some_and(|r| !r.stopping)
    }

    /// Whether `name`'s liveness record says it is stopping.
    pub fn stopping(&self, name: &str) -> bool {
        self.alive.get(name).is_some_and(|r| r.stopping)
    }

    /// The other heads that are alive.
    pub fn peers(&self) -> Vec<Arc<HeadRecord>> {
        let alive = self.alive_names();
        self.heads.values().into_iter().filter(|h| h.name != self.me.name && alive.contains(&h.name)).collect()
    }

    /// The head a node's `_preferred_head` names (by name or IP), if any head has it; a name
    /// that matches no head is logged (once a minute per node) and counts as no preference.
    pub fn preferred_head(&self, node: &Node) -> Option<String> {
        let want = node.attributes.get("_preferred_head")?;
        let found = self.heads.values().into_iter().find(|h| h.name == *want || h.ip.to_string() == *want);
        match found {
            Some(h) => Some(h.name.clone()),
            None => {
                self.complaints.complain(format!("pref {} {want}", node.uid), || {
                    tracing::warn!(node = %node.name, preferred = %want, "_preferred_head names no head; the node is treated as having no preference")
                });
                None
            }
        }
    }

    /// Whether `_preferred_head` names a head (for `status` problems; nothing logged).
    pub fn names_a_head(&self, want: &str) -> bool {
        self.heads.values().iter().any(|h| h.name == want || h.ip.to_string() == want)
    }

    /// The head list for a node: this head first, then the other live heads (in an order that
    /// differs from node to node, so that the nodes of a head that dies spread over the others),
    /// then heads that are down.
    pub fn heads_for(&self, mac: &MacAddr) -> Vec<HeadEntry> {
        let alive = self.alive_names();
        let mut up = Vec::new();
        let mut down = Vec::new();
        for h in self.heads.values() {
            if h.name == self.me.name {
                continue;
            }
            let e = HeadEntry { name: h.name.clone(), url: h.api_url.clone() };
            if alive.contains(&h.name) { up.push(e) } else { down.push(e) }
        }
        if !up.is_empty() {
            let n = (order_hash(&mac.to_string()) % up.len() as u64) as usize;
            up.rotate_left(n);
        }
        let mut v = vec![HeadEntry { name: self.me.name.clone(), url: self.me.api_url.clone() }];
        v.extend(up);
        v.extend(down);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(name: &str, last: u8) -> HeadRecord {
        HeadRecord::for_test(name, last)
    }

    #[test]
    fn the_order_hash_is_fixed() {
        // Every head of every version must compute these alike: changing the function moves nodes.
        assert_eq!(order_hash(""), 0xcbf29ce484222325);
        assert_eq!(order_hash("a"), 0xaf63dc4c8601ec8c);
    }

    #[test]
    fn head_lists_start_here_then_live_heads_spread_then_dead_ones() {
        let hs = vec![head("h1", 1), head("h2", 2), head("h3", 3), head("h4", 4)];
        let v = ClusterView::fixed(hs[0].clone(), hs, &["h1", "h2", "h3"]);
        let mut seconds = HashSet::new();
        for i in 0..32u8 {
            let mac: MacAddr = format!("52:54:00:00:00:{i:02x}").parse().unwrap();
            let l: Vec<String> = v.heads_for(&mac).into_iter().map(|e| e.name).collect();
            assert_eq!(l[0], "h1");
            assert_eq!(l[3], "h4", "the dead head comes last");
            seconds.insert(l[1].clone());
        }
        assert_eq!(seconds.len(), 2, "nodes spread over both live peers");
        assert_eq!(v.peers().len(), 2);
    }

    #[test]
    fn preferred_head_by_name_or_address() {
        let hs = vec![head("h1", 1), head("h2", 2)];
        let v = ClusterView::fixed(hs[0].clone(), hs, &["h1"]);
        let mut n = Node {
            uid: "u".into(),
            index: 0,
            name: "n0".into(),
            macs: vec![],
            ip: std::net::Ipv4Addr::new(10, 1, 0, 1),
            attributes: Default::default(),
            created: 0,
        };
        assert_eq!(v.preferred_head(&n), None);
        n.attributes.insert("_preferred_head".into(), "10.0.0.2".into());
        assert_eq!(v.preferred_head(&n).as_deref(), Some("h2"));
        n.attributes.insert("_preferred_head".into(), "h9".into());
        assert_eq!(v.preferred_head(&n), None);
        assert!(!v.names_a_head("h9"));
    }
}
