//! `managedb save` and `load`: the cluster's data as one JSON document, taken from one
//! consistent snapshot and loadable into an empty cluster of either backend.
//!
//! Saved: nodes and their index keys, file records and the deleted-files list, images, boot
//! configs, cluster settings, cluster SSH keys and secrets (BMC passwords: the
//! CLI writes the file mode 0600). Not saved: head records, liveness, storage
//! summaries, node status and pending scripts, which belong to the heads of one cluster. File contents are not in the database either; the heads
//! of the loading cluster need their own copies (or fetch them from a peer that has them).

use crate::core::db::{Compare, Database, OpResult, Piece, Txn, TxnOp, batch, undo_puts};
use crate::core::schema;

pub const FORMAT: &str = "clusterware-database";
pub const VERSION: u32 = 1;
/// The prefixes that hold the cluster's data.

/// The document `managedb save` writes (defined in `shared`, read by the CLI too).
pub use clusterware_shared::api::DatabaseDump as Dump;

/// See [`RecordError`](crate::core::error::RecordError).
pub type DumpError = crate::core::error::RecordError;

fn snapshot_txn() -> Txn {
    Txn::new().and_then(schema::saved().map(|p| TxnOp::GetPrefix { prefix: p.to_string() }))
}

/// Reads every saved key in one transaction (one revision).
pub async fn save(db: &Database) -> Result<Dump, DumpError> {
    let r = db.txn(snapshot_txn()).await?;
    let mut keys = std::collections::BTreeMap::new();
    for res in r.results {
        if let OpResult::Got(kvs) = res {
            for kv in kvs {
                let v = String::from_utf8(kv.value)
                    .map_err(|_| DumpError::Invalid(format!("key {} holds a value that is not UTF-8", kv.key)))?;
                keys.insert(kv.key, v);
            }
        }
    }
    let schema = crate::core::versions::in_force(db).await?;
    let saved = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Ok(Dump {
        format: FORMAT.into(),
        version: VERSION,
        saved,
        backend: db.backend().into(),
        revision: r.revision,
        schema,
        keys,
    })
}

/// Checks a dump on its own: format, version, key names, and that every record parses and every
/// index key names a node of the dump.
fn check(d: &Dump) -> Result<(), DumpError> {
    let bad = |m: String| DumpError::Invalid(format!("not a loadable database dump: {m}"));
    if d.format != FORMAT {
        return Err(bad(format!("format is {:?}", d.format)));
    }
    if d.version != VERSION {
        return Err(bad(format!(
            "made by a newer ClusterWare (dump format version {}); this one reads {VERSION}",
            d.version
        )));
    }
    crate::core::versions::loadable(d.schema).map_err(bad)?;
    for (k, v) in &d.keys {
        if !schema::saved().any(|p| k.starts_with(p) && k.len() > p.len()) || k.chars().any(|c| c.is_control()) {
            return Err(bad(format!("unexpected key {k:?}")));
        }
        let parsed = match k.strip_prefix(schema::INDEX) {
            Some(_) => Ok(d.keys.contains_key(&schema::node(v))),
            None => schema::check_saved(k, v),
        };
        match parsed {
            Ok(true) => {}
            Ok(false) => return Err(bad(format!("key {k:?} does not match its record"))),
            Err(e) => return Err(bad(format!("record {k:?} is invalid: {e}"))),
        }
    }
    Ok(())
}

/// Loads a dump into a cluster that holds none of the saved data; all keys or none.
pub async fn load(db: &Database, d: &Dump) -> Result<usize, DumpError> {
    check(d)?;
    let r = db.txn(snapshot_txn()).await?;
    let present: Vec<String> = r
        .results
        .iter()
        .zip(schema::saved())
        .filter_map(|(res, p)| match res {
            OpResult::Got(kvs) if !kvs.is_empty() => Some(format!("{} under {p}", kvs.len())),
            _ => None,
        })
        .collect();
    if !present.is_empty() {
        return Err(DumpError::Conflict(format!(
            "this cluster already has data ({} keys); load needs an empty cluster (nothing was loaded)",
            present.join(", ")
        )));
    }
    let pieces = d
        .keys
        .iter()
        .map(|(k, v)| Piece {
            compares: vec![Compare::absent(k.clone())],
            ops: vec![TxnOp::put(k.clone(), v.as_bytes())],
        })
        .collect();
    let mut done = Vec::new();
    for txn in batch(pieces, db.max_txn_ops()) {
        match db.txn(txn.clone()).await {
            Ok(r) if r.succeeded => done.push(txn),
            other => {
                undo_puts(db, &done).await;
                return Err(match other {
                    Err(e) => e.into(),
                    Ok(_) => {
                        DumpError::Conflict("data appeared in this cluster while loading; nothing was loaded".into())
                    }
                });
            }
        }
    }
    tracing::info!(keys = d.keys.len(), from = %d.backend, revision = d.revision, "database loaded");
    Ok(d.keys.len())
}
