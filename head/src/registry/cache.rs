//! Every node in memory, by uid and by MAC, kept current by following `nodes/`: node-facing
//! requests (status pushes, long polls) are answered without a database round trip.

use crate::core::db::Database;
use crate::core::follow::{Change, decoded, follow};
use crate::core::schema::NODES;
use crate::core::supervisor::{Stage, Supervisor};
use clusterware_shared::api::Node;
use clusterware_shared::ids::MacAddr;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Default)]
struct Tables {
    by_uid: HashMap<String, Arc<Node>>,
    by_mac: HashMap<MacAddr, String>,
}

impl Tables {
    fn insert(&mut self, n: Node) {
        self.remove(&n.uid.clone());
        for m in &n.macs {
            self.by_mac.insert(*m, n.uid.clone());
        }
        self.by_uid.insert(n.uid.clone(), Arc::new(n));
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_uid.remove(uid) {
            for m in &old.macs {
                if self.by_mac.get(m).is_some_and(|u| u == uid) {
                    self.by_mac.remove(m);
                }
            }
        }
    }
}

pub struct NodeCache {
    tables: RwLock<Tables>,
    ready: watch::Sender<bool>,
    /// Counts the changes applied (the console's live updates follow it).
    changes: watch::Sender<u64>,
}

impl NodeCache {
    pub fn spawn(db: Database, sup: &Supervisor) -> Arc<NodeCache> {
        let c = Arc::new(NodeCache {
            tables: RwLock::new(Tables::default()),
            ready: watch::channel(false).0,
            changes: watch::channel(0).0,
        });
        let c2 = c.clone();
        let decode = |kv: &crate::core::db::KeyValue| decoded::<Node>(NODES, kv);
        sup.spawn(Stage::Views, "node table", move |stop| {
            follow(
                db,
                NODES,
                move |ch| {
                    let mut t = c2.tables.write().unwrap_or_else(|p| p.into_inner());
                    match ch {
                        Change::Reset(kvs) => {
                            *t = Tables::default();
                            for kv in &kvs {
                                if let Some(n) = decode(kv) {
                                    t.insert(n);
                                }
                            }
                            drop(t);
                            c2.ready.send_replace(true);
                        }
                        Change::Put(kv) => match decode(&kv) {
                            Some(n) => t.insert(n),
                            None => t.remove(&kv.key),
                        },
                        Change::Delete(uid) => t.remove(&uid),
                    }
                    c2.changes.send_modify(|n| *n += 1);
                },
                stop,
            )
        });
        c
    }

    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok())
    }

    /// A receiver that sees a new value after every change to the table.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn by_mac(&self, mac: &MacAddr) -> Option<Arc<Node>> {
        let t = self.tables.read().unwrap_or_else(|p| p.into_inner());
        t.by_mac.get(mac).and_then(|u| t.by_uid.get(u)).cloned()
    }

    pub fn by_uid(&self, uid: &str) -> Option<Arc<Node>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner()).by_uid.get(uid).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Node>> {
        let mut v: Vec<Arc<Node>> =
            self.tables.read().unwrap_or_else(|p| p.into_inner()).by_uid.values().cloned().collect();
        v.sort_by_key(|n| n.index);
        v
    }
}
