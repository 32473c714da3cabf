//! Named admin API tokens (`scyld-clusterctl tokens create|ls|revoke`): credentials an
//! administrator can give to one person or script and take back, unlike the token derived from
//! the database password (the same on every head, for as long as the password stays).
//!
//! A token is 32 random bytes (`cwt_` and 64 hex digits), shown once when it is created; the
//! database keeps only its SHA-256 (`tokens/<name>`). Every head follows `tokens/`, so a token
//! works on every head and a revoked one stops working on all of them as soon as they see the
//! deletion.

use crate::core::db::{Compare, Database, Txn, TxnOp};
use crate::core::error::RecordError;
use crate::core::follow::Mirror;
use crate::core::http::{ApiResult, Routes, json, parse};
use crate::core::schema::{self, TOKENS, TokenRecord};
use crate::core::supervisor::Supervisor;
use axum::http::StatusCode;
use axum::response::Response;
use clusterware_shared::api::{NewToken, TokenInfo};
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// What every token starts with (so a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "cwt_";

fn sha256_hex(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn check_name(name: &str) -> Result<(), RecordError> {
    clusterware_shared::ids::validate_attr_key(name).map_err(|e| RecordError::Invalid(format!("token name: {e}")))
}

/// Creates token `name`; the answer holds the token itself, which is not kept.
pub async fn create(db: &Database, name: &str, from: &str) -> Result<NewToken, RecordError> {
    check_name(name)?;
    let token = format!("{TOKEN_PREFIX}{}", hex::encode(rand::random::<[u8; 32]>()));
    let info = TokenInfo { name: name.to_string(), created: crate::core::unix_now(), created_from: from.to_string() };
    let rec = TokenRecord { info: info.clone(), sha256: sha256_hex(&token) };
    let key = schema::token(name);
    let value = serde_json::to_vec(&rec).expect("token records serialise");
    let txn = Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key, value)]);
    if !db.txn(txn).await?.succeeded {
        return Err(RecordError::Conflict(format!("token {name} exists; revoke it first or choose another name")));
    }
    Ok(NewToken { info, token })
}

/// Every token's name, creation time and origin (never the token).
pub async fn list(db: &Database) -> Result<Vec<TokenInfo>, RecordError> {
    let (kvs, _) = db.range(TOKENS).await?;
    let mut out = Vec::new();
    for kv in kvs {
        let r: TokenRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| RecordError::Corrupt { key: kv.key.clone(), reason: e.to_string() })?;
        out.push(r.info);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Revokes token `name`.
pub async fn revoke(db: &Database, name: &str) -> Result<TokenInfo, RecordError> {
    check_name(name)?;
    let key = schema::token(name);
    let Some(kv) = db.get(&key).await? else {
        return Err(RecordError::NotFound(format!("no token is named {name}")));
    };
    let r: TokenRecord = serde_json::from_slice(&kv.value)
        .map_err(|e| RecordError::Corrupt { key: key.clone(), reason: e.to_string() })?;
    db.delete(&key).await?;
    Ok(r.info)
}

/// The tokens this head accepts, kept current by a watch.
#[derive(Clone)]
pub struct Tokens(Arc<Mirror<TokenRecord>>);

impl Tokens {
    pub fn spawn(db: &Database, sup: &Supervisor) -> Tokens {
        Tokens(Mirror::spawn(db.clone(), TOKENS, sup))
    }

    /// The name of the token `given` is, if it is one.
    pub fn check(&self, given: &str) -> Option<String> {
        if !given.starts_with(TOKEN_PREFIX) {
            return None;
        }
        let h = sha256_hex(given);
        self.0
            .values()
            .into_iter()
            .find(|r| clusterware_shared::auth::tokens_equal(&r.sha256, &h))
            .map(|r| r.info.name.clone())
    }
}

/// `GET`/`POST /tokens`, `DELETE /tokens/{name}` (admin routes).
pub fn routes(db: Database) -> Routes {
    use axum::extract::{ConnectInfo, Path, State};
    use axum::routing::{delete, get};
    use clusterware_shared::api::{CreateToken, TokenList, path};
    use std::net::SocketAddr;
    async fn ls(State(db): State<Database>) -> ApiResult<Response> {
        Ok(json(StatusCode::OK, &TokenList { tokens: list(&db).await? }))
    }
    async fn add(
        State(db): State<Database>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        body: axum::body::Bytes,
    ) -> ApiResult<Response> {
        let req: CreateToken = parse(&body)?;
        let t = create(&db, &req.name, &peer.ip().to_string()).await?;
        tracing::info!(%peer, name = %t.info.name, "admin API token created");
        Ok(json(StatusCode::CREATED, &t))
    }
    async fn rm(
        State(db): State<Database>,
        ConnectInfo(peer): ConnectInfo<SocketAddr>,
        Path(name): Path<String>,
    ) -> ApiResult<Response> {
        let t = revoke(&db, &name).await?;
        tracing::info!(%peer, name = %t.name, "admin API token revoked");
        Ok(json(StatusCode::OK, &t))
    }
    Routes {
        admin: axum::Router::new().route(path::TOKENS, get(ls).post(add)).route(path::TOKEN, delete(rm)).with_state(db),
        open: axum::Router::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;

    #[tokio::test]
    async fn create_check_list_revoke() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let t = create(&db, "ci", "127.0.0.1").await.unwrap();
        assert!(t.token.starts_with(TOKEN_PREFIX) && t.token.len() == 68);
        let stored = db.get(&schema::token("ci")).await.unwrap().unwrap();
        assert!(!String::from_utf8_lossy(&stored.value).contains(&t.token), "the token itself is not stored");
        assert!(matches!(create(&db, "ci", "x").await, Err(RecordError::Conflict(_))));
        assert!(matches!(create(&db, "bad name\n", "x").await, Err(RecordError::Invalid(_))));
        assert_eq!(list(&db).await.unwrap(), vec![t.info.clone()]);
        let rec: TokenRecord = serde_json::from_slice(&stored.value).unwrap();
        let m = Tokens(Arc::new(Mirror::fixed(vec![(stored.key.clone(), rec)])));
        assert_eq!(m.check(&t.token).as_deref(), Some("ci"));
        // The token with its last character changed (to another one: '0' may be its own).
        let last = if t.token.ends_with('0') { '1' } else { '0' };
        assert_eq!(m.check(&format!("{}{last}", &t.token[..67])), None);
        assert_eq!(m.check("anything"), None);
        assert_eq!(revoke(&db, "ci").await.unwrap().name, "ci");
        assert!(matches!(revoke(&db, "ci").await, Err(RecordError::NotFound(_))));
        assert!(list(&db).await.unwrap().is_empty());
    }
}
