//! Cluster SSH keys (`keys/<name>`): public keys that `update_keys` gives root on every node,
//! besides the heads' own root keys.

use crate::core::db::{Compare, Database, Txn, TxnOp};
use crate::core::schema;
use crate::core::schema::KEYS;
use clusterware_shared::agent::{SshKey, validate_ssh_key};
use clusterware_shared::ids::validate_attr_key;

/// See [`RecordError`](crate::core::error::RecordError).
pub type KeyError = crate::core::error::RecordError;

fn check_name(name: &str) -> Result<(), KeyError> {
    validate_attr_key(name).map_err(|e| KeyError::Invalid(format!("key name {name:?}: {e}")))
}

/// Adds a key under a new name.
pub async fn add(db: &Database, name: &str, key: &str) -> Result<SshKey, KeyError> {
    check_name(name)?;
    let key = validate_ssh_key(key).map_err(|e| KeyError::Invalid(format!("key {name:?}: {e}")))?;
    let rec = SshKey { name: name.to_string(), key, added: crate::core::unix_now() };
    let k = schema::key(&name);
    let t = Txn::new()
        .when([Compare::absent(k.clone())])
        .and_then([TxnOp::put(k, serde_json::to_vec(&rec).expect("keys serialise"))]);
    if !db.txn(t).await?.succeeded {
        return Err(KeyError::Conflict(format!("a key named {name:?} exists; remove it first")));
    }
    Ok(rec)
}

/// Every cluster key, by name.
pub async fn list(db: &Database) -> Result<Vec<SshKey>, KeyError> {
    let (kvs, _) = db.range(KEYS).await?;
    Ok(kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect())
}

/// Removes a key; returns what it was.
pub async fn remove(db: &Database, name: &str) -> Result<SshKey, KeyError> {
    check_name(name)?;
    let k = schema::key(&name);
    let t = Txn::new().when([Compare::present(k.clone())]).and_then([TxnOp::get(k.clone()), TxnOp::delete(k)]);
    let r = db.txn(t).await?;
    let got = match r.results.first() {
        Some(crate::core::db::OpResult::Got(kvs)) if r.succeeded => kvs.first().cloned(),
        _ => None,
    };
    let kv = got.ok_or_else(|| KeyError::NotFound(format!("no key named {name:?}")))?;
    serde_json::from_slice(&kv.value).map_err(|e| KeyError::Invalid(format!("stored key {name:?} is unreadable: {e}")))
}
