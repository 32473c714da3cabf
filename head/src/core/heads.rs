//! Head nodes in the cluster database: a persistent member record per head (`heads/<name>`) and
//! a liveness record (`alive/<name>`) bound to a lease that the head renews every third of its
//! TTL. Renewals are lease keep-alives, not writes: a head's heartbeat costs the database no
//! revision. When a head dies its lease expires and its liveness record disappears.

use crate::core::db::{Database, DbError, LeaseId, Txn, TxnOp};
use crate::core::schema;
use crate::core::schema::{ALIVE, AliveRecord, DbMode, HEADS, HeadRecord};
use clusterware_shared::api::{DbMember, HeadInfo};
use serde::Serialize;
use std::collections::HashSet;
use std::time::Duration;
use tokio::sync::watch;

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("head records always serialise")
}

/// Writes (or refreshes) the head's member record.
pub async fn register(db: &Database, rec: &HeadRecord) -> Result<(), DbError> {
    db.put(&schema::head(&rec.name), encode(rec)).await.map(|_| ())
}

/// Renews this head's liveness record until `shutdown` turns true, then revokes it so that the
/// other heads see this one gone at once rather than after the TTL. When `stopping` turns true
/// first (the head hands its nodes over before it stops), the record says so: the head is still
/// alive, but no other head sends it nodes.
pub async fn keep_alive(
    db: Database,
    rec: HeadRecord,
    ttl_secs: u64,
    mut stopping: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let key = schema::alive(&rec.name);
    let record = |stopping| {
        encode(&AliveRecord { name: rec.name.clone(), pid: std::process::id(), started: rec.started, stopping })
    };
    let period = Duration::from_millis(ttl_secs * 1000 / 3);
    let mut lease: Option<LeaseId> = None;
    let mut failing = false;
    // What the record says now.
    let mut says_stopping = false;
    loop {
        let stop_now = *stopping.borrow_and_update();
        let step: Result<(), DbError> = async {
            match lease {
                Some(id) if stop_now && !says_stopping => {
                    db.txn(Txn::new().and_then([TxnOp::put_with_lease(key.clone(), record(true), id)])).await?;
                    says_stopping = true;
                    tracing::info!(head = %rec.name, "liveness record says this head is stopping");
                    Ok(())
                }
                Some(id) => match db.keep_alive(id).await {
                    Err(DbError::LeaseNotFound(_)) => {
                        tracing::warn!(head = %rec.name, "liveness lease expired (this head was unreachable); registering again");
                        lease = None;
                        Err(DbError::LeaseNotFound(id))
                    }
                    r => r.map(|_| ()),
                },
                None => {
                    let id = db.grant_lease(ttl_secs as i64).await?;
                    db.txn(Txn::new().and_then([TxnOp::put_with_lease(key.clone(), record(stop_now), id)])).await?;
                    says_stopping = stop_now;
                    lease = Some(id);
                    Ok(())
                }
            }
        }
        .await;
        match step {
            Ok(()) if failing => {
                tracing::info!(head = %rec.name, "liveness renewed again");
                failing = false;
            }
            Ok(()) => {}
            Err(DbError::LeaseNotFound(_)) => continue,
            Err(e) => {
                if !failing {
                    tracing::warn!(head = %rec.name, error = %e, "cannot renew liveness; other heads will see this head as down");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            // Said at once (and only once: a closed sender is no news).
            Ok(()) = stopping.changed(), if !says_stopping => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Some(id) = lease {
        match tokio::time::timeout(Duration::from_secs(3), db.revoke_lease(id)).await {
            Ok(Ok(())) => tracing::info!(head = %rec.name, "liveness record removed"),
            Ok(Err(e)) => {
                tracing::warn!(head = %rec.name, error = %e, "cannot remove liveness record; it expires with its lease")
            }
            Err(_) => {
                tracing::warn!(head = %rec.name, "database did not answer; liveness record expires with its lease")
            }
        }
    }
}

/// Every head the cluster knows, with liveness and database membership.
pub async fn list(db: &Database) -> Result<Vec<HeadInfo>, DbError> {
    let (recs, _) = db.range(HEADS).await?;
    let (alive, _) = db.range(ALIVE).await?;
    let alive: HashSet<&str> = alive.iter().filter_map(|kv| kv.key.strip_prefix(ALIVE)).collect();
    let members = db.members().await;
    let leader = db.leader().await.ok().flatten();
    let (summaries, _) = db.range(schema::SUMMARY).await?;
    let summary = |name: &str| {
        summaries
            .iter()
            .find(|kv| kv.key.strip_prefix(schema::SUMMARY) == Some(name))
            .and_then(|kv| serde_json::from_slice(&kv.value).ok())
    };
    let mut out = Vec::new();
    for kv in &recs {
        let rec: HeadRecord = match serde_json::from_slice(&kv.value) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(key = %kv.key, error = %e, "skipping unreadable head record");
                continue;
            }
        };
        let db_member = match rec.db_mode {
            DbMode::Embedded => DbMember { backend: "embedded".into(), id: None, state: "solo".into(), leader: false },
            DbMode::EtcdExternal => {
                DbMember { backend: "etcd".into(), id: None, state: "external".into(), leader: false }
            }
            DbMode::EtcdMember => match &members {
                Ok(ms) => match ms.iter().find(|m| rec.is_member(m)) {
                    Some(m) => DbMember {
                        backend: "etcd".into(),
                        id: Some(format!("{:x}", m.id)),
                        state: if m.is_learner { "learner" } else { "voting" }.into(),
                        leader: leader == Some(m.id),
                    },
                    None => DbMember { backend: "etcd".into(), id: None, state: "not a member".into(), leader: false },
                },
                Err(_) => DbMember { backend: "etcd".into(), id: None, state: "unknown".into(), leader: false },
            },
        };
        out.push(HeadInfo {
            storage: summary(&rec.name),
            nodes: 0,
            alive: alive.contains(rec.name.as_str()),
            name: rec.name,
            ip: rec.ip,
            api_url: rec.api_url,
            version: rec.version,
            started: rec.started,
            db_member,
            schema: rec.schema,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::Member;

    fn member(name: &str, peer: &str) -> Member {
        Member { id: 1, name: name.into(), peer_urls: vec![peer.into()], client_urls: vec![], is_learner: false }
    }

    #[test]
    fn a_member_is_its_heads_by_name_once_published_and_by_peer_url_before() {
        let rec = HeadRecord { peer_url: Some("http://10.0.0.2:2380".into()), ..HeadRecord::for_test("head2", 2) };
        assert!(rec.is_member(&member("", "http://10.0.0.2:2380")), "not yet named: by peer URL");
        assert!(rec.is_member(&member("head2", "http://10.0.0.9:2380")), "named: by name");
        assert!(!rec.is_member(&member("head7", "http://10.0.0.2:2380")), "another head at a reused address");
        assert!(!rec.is_member(&member("", "http://10.0.0.3:2380")));
        let old = HeadRecord { peer_url: None, ..rec };
        assert!(!old.is_member(&member("", "http://10.0.0.2:2380")), "a record without a peer URL");
        // Records written before the field existed still read.
        let text = r#"{"name":"h","ip":"10.0.0.1","api_url":"u","version":"v","started":0,"db_mode":"etcd-member"}"#;
        assert_eq!(serde_json::from_str::<HeadRecord>(text).unwrap().peer_url, None);
    }
}
