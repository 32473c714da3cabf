//! Following a key prefix: a snapshot, then every change after it, kept up across database
//! outages and compactions (a fresh snapshot replaces the old view). In-memory tables that must
//! answer without a database round trip (nodes by MAC, node status, SSH keys, heads) are built on
//! this.

use crate::core::db::{Database, EventKind, KeyValue};
use crate::core::supervisor::{Stage, Supervisor};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// A change under the followed prefix. Keys have the prefix removed.
#[derive(Debug)]
pub enum Change {
    /// Everything under the prefix now; replaces whatever was known.
    Reset(Vec<KeyValue>),
    Put(KeyValue),
    Delete(String),
}

/// Calls `apply` with a snapshot of `prefix` and then with every change, in order, until
/// `stop` turns true. After an error it waits a moment and starts again from a fresh snapshot.
pub async fn follow(
    db: Database,
    prefix: &'static str,
    mut apply: impl FnMut(Change) + Send,
    mut stop: watch::Receiver<bool>,
) {
    let strip = |mut kv: KeyValue| {
        kv.key = kv.key.strip_prefix(prefix).unwrap_or(&kv.key).to_string();
        kv
    };
    let mut failing = false;
    loop {
        let round = async {
            let (kvs, rev) = db.range(prefix).await?;
            apply(Change::Reset(kvs.into_iter().map(strip).collect()));
            let mut w = db.watch(prefix, Some(rev + 1)).await?;
            loop {
                let ev = w.next().await?;
                match ev.kind {
                    EventKind::Put => apply(Change::Put(strip(ev.kv))),
                    EventKind::Delete => apply(Change::Delete(strip(ev.kv).key)),
                }
            }
            #[allow(unreachable_code)]
            Ok::<(), crate::core::db::DbError>(())
        };
        tokio::select! {
            r = round => if let Err(e) = r {
                if !failing {
                    tracing::warn!(%prefix, error = %e, "lost the database view; reloading");
                }
                failing = true;
            },
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A decoded copy of everything under a prefix, kept current by [`follow`].
pub struct Mirror<T> {
    map: RwLock<BTreeMap<String, Arc<T>>>,
    ready: watch::Sender<bool>,
    /// Counts the changes applied (a snapshot counts as one), for those who follow the mirror
    /// itself (the console's live updates).
    changes: watch::Sender<u64>,
}

/// A record under `prefix` decoded, or `None` with a warning naming its key (an unreadable
/// record is left out of in-memory tables rather than stopping them).
pub fn decoded<T: serde::de::DeserializeOwned>(prefix: &str, kv: &KeyValue) -> Option<T> {
    match serde_json::from_slice(&kv.value) {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::warn!(key = %format!("{prefix}{}", kv.key), error = %e, "ignoring unreadable record");
            None
        }
    }
}

impl<T: serde::de::DeserializeOwned + Send + Sync + 'static> Mirror<T> {
    /// Starts following `prefix`; records that do not decode are logged and left out.
    pub fn spawn(db: Database, prefix: &'static str, sup: &Supervisor) -> Arc<Mirror<T>> {
        let m = Arc::new(Mirror {
            map: RwLock::new(BTreeMap::new()),
            ready: watch::channel(false).0,
            changes: watch::channel(0).0,
        });
        let m2 = m.clone();
        let dec = move |kv: &KeyValue| decoded::<T>(prefix, kv).map(Arc::new);
        sup.spawn(Stage::Views, prefix, move |stop| {
            follow(
                db,
                prefix,
                move |c| {
                    let mut map = m2.map.write().unwrap_or_else(|p| p.into_inner());
                    match c {
                        Change::Reset(kvs) => {
                            map.clear();
                            for kv in kvs {
                                if let Some(v) = dec(&kv) {
                                    map.insert(kv.key, v);
                                }
                            }
                            drop(map);
                            m2.ready.send_replace(true);
                        }
                        Change::Put(kv) => match dec(&kv) {
                            Some(v) => {
                                map.insert(kv.key, v);
                            }
                            None => {
                                map.remove(&kv.key);
                            }
                        },
                        Change::Delete(k) => {
                            map.remove(&k);
                        }
                    }
                    m2.changes.send_modify(|n| *n += 1);
                },
                stop,
            )
        });
        m
    }

    /// A mirror of fixed records, never updated (unit tests).
    #[cfg(test)]
    pub fn fixed(records: Vec<(String, T)>) -> Mirror<T> {
        Mirror {
            map: RwLock::new(records.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            ready: watch::channel(true).0,
            changes: watch::channel(0).0,
        }
    }

    /// Waits until the first snapshot is in (at most `limit`).
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|r| *r)).await.is_ok_and(|r| r.is_ok())
    }

    /// A receiver that sees a new value after every change applied.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// How many changes were applied so far. Read before the records, it tells whether a copy
    /// derived from them is still current (a change applied in between only makes the copy look
    /// older than it is).
    pub fn generation(&self) -> u64 {
        *self.changes.borrow()
    }

    pub fn get(&self, key: &str) -> Option<Arc<T>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(key).cloned()
    }

    pub fn values(&self) -> Vec<Arc<T>> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}
