//! The database schema's version (`cluster/schema`) and its migrations.
//!
//! - A release writes schema [`SCHEMA`] and still works with [`OLDEST_SCHEMA`] (the previous
//!   release's), so heads of two adjacent releases share the cluster while they are upgraded one
//!   at a time. A field added with a default is not a new schema; a change an older head would
//!   misread is.
//! - At start, before it writes anything, a head [`check`]s the version: a schema newer than it
//!   knows (or older than it works with) stops it with a message saying what to do. A new
//!   database is created at [`SCHEMA`].
//! - Each head records in its `heads/` record the newest schema it knows. The [`start`]ed task
//!   migrates once every registered head (alive or not: a head that is down comes back) knows
//!   the next schema: under a leased lock, each step in one transaction that holds only if the
//!   version is still the one it migrates from, so a migration runs once whichever heads try.
//!
//! The migrations ([`steps`]):
//! - 1: the version itself is recorded (databases from before it have none, version 0).

use crate::core::db::{Compare, Database, DbError, Txn, TxnOp};
use crate::core::schema::{HEADS, HeadRecord, MIGRATION_LOCK, SCHEMA_VERSION, SchemaRecord};
use crate::core::supervisor::Stage;
use crate::core::unix_now;
use std::time::Duration;

/// The schema this release writes.
pub const SCHEMA: u32 = 1;
/// The oldest schema this release works with.
pub const OLDEST_SCHEMA: u32 = 0;
/// How often a head that waits for the others to be upgraded looks again, besides every change
/// of the heads' records.
const RECHECK: Duration = Duration::from_secs(60);
/// The lock's lease: a head that dies while migrating holds nobody up longer.
const LOCK_TTL: i64 = 30;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the cluster database has schema {found} (written by {by}), newer than this head's release {release} knows \
         ({SCHEMA}): update this head to the release of the other heads (`scyld-install --update`) and start it \
         again; nothing was written"
    )]
    TooNew { found: u32, by: String, release: &'static str },
    #[error(
        "the cluster database has schema {found}, older than this head's release {release} works with \
         ({OLDEST_SCHEMA} or newer): update the cluster's heads one release at a time; nothing was written"
    )]
    TooOld { found: u32, release: &'static str },
    #[error("the cluster database's {SCHEMA_VERSION} is unreadable ({0}); nothing was written")]
    Unreadable(String),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// The version in the database: `None` when it has none.
async fn read(db: &Database) -> Result<Option<(SchemaRecord, Vec<u8>)>, SchemaError> {
    match db.get(SCHEMA_VERSION).await? {
        None => Ok(None),
        Some(kv) => match serde_json::from_slice::<SchemaRecord>(&kv.value) {
            Ok(r) => Ok(Some((r, kv.value))),
            Err(e) => Err(SchemaError::Unreadable(e.to_string())),
        },
    }
}

/// The schema in force (0 for a database without a version, or with one unreadable).
pub async fn in_force(db: &Database) -> Result<u32, DbError> {
    match read(db).await {
        Ok(r) => Ok(r.map_or(0, |(r, _)| r.version)),
        Err(SchemaError::Db(e)) => Err(e),
        Err(_) => Ok(0),
    }
}

fn encode(version: u32, by: &str) -> Vec<u8> {
    serde_json::to_vec(&SchemaRecord { version, by: by.to_string(), at: unix_now() }).expect("a schema record")
}

/// Checks the database's schema before this head (`me`) writes anything, and gives a new
/// database (no head has registered in it) the current one. Returns the version in force.
// `OLDEST_SCHEMA` is 0 in this release, and rises when a release drops an old schema.
#[allow(clippy::absurd_extreme_comparisons)]
pub async fn check(db: &Database, me: &str) -> Result<u32, SchemaError> {
    let release = clusterware_shared::VERSION;
    let found = match read(db).await? {
        Some((r, _)) if r.version > SCHEMA => return Err(SchemaError::TooNew { found: r.version, by: r.by, release }),
        Some((r, _)) => r.version,
        None => {
            let (heads, _) = db.range(HEADS).await?;
            if heads.is_empty() {
                let t = Txn::new()
                    .when([Compare::absent(SCHEMA_VERSION)])
                    .and_then([TxnOp::put(SCHEMA_VERSION, encode(SCHEMA, me))]);
                if db.txn(t).await?.succeeded {
                    tracing::info!(schema = SCHEMA, "new cluster database at the current schema");
                    return Ok(SCHEMA);
                }
                // Another head created it at the same moment: check what it wrote.
                return Box::pin(check(db, me)).await;
            }
            0
        }
    };
    if found < OLDEST_SCHEMA {
        return Err(SchemaError::TooOld { found, release });
    }
    if found < SCHEMA {
        tracing::info!(
            schema = found,
            to = SCHEMA,
            "the cluster database has an older schema; it is migrated once every head runs a release that knows \
             the new one"
        );
    }
    Ok(found)
}

/// Whether records of schema `schema` (a `managedb save` dump's) can be loaded by this
/// release: its own schema or an older one it works with, whose records the steps between leave
/// as they are (a step that rewrites records must rewrite a loaded dump's as well).
// `OLDEST_SCHEMA` is 0 in this release, and rises when a release drops an old schema.
#[allow(clippy::absurd_extreme_comparisons)]
pub fn loadable(schema: u32) -> Result<(), String> {
    if schema > SCHEMA {
        return Err(format!(
            "its records are of database schema {schema}, newer than this head's release {} knows ({SCHEMA}): load \
             it with heads of the release that saved it",
            clusterware_shared::VERSION
        ));
    }
    if schema < OLDEST_SCHEMA {
        return Err(format!(
            "its records are of database schema {schema}, older than this head's release {} works with \
             ({OLDEST_SCHEMA} or newer)",
            clusterware_shared::VERSION
        ));
    }
    Ok(())
}

/// The operations that take the database from schema `to - 1` to `to` (besides the version).
async fn steps(_db: &Database, to: u32) -> Result<Vec<TxnOp>, DbError> {
    match to {
        // Schema 1 adds the version record only.
        1 => Ok(Vec::new()),
        _ => unreachable!("no migration to schema {to} in this release (see every_schema_has_its_step)"),
    }
}

/// Where the migration stands after one look.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The schema is the current one.
    Current,
    /// Not yet, and why (in words for the log).
    Waiting(String),
    /// This head migrated the database from the first version to the second.
    Migrated(u32, u32),
}

/// One look: migrates if every registered head knows the current schema and no other head is
/// migrating.
pub async fn migrate_once(db: &Database, me: &str) -> Result<Progress, SchemaError> {
    let (from, current) = match read(db).await? {
        Some((r, _)) if r.version >= SCHEMA => return Ok(Progress::Current),
        Some((r, bytes)) => (r.version, Some(bytes)),
        None => (0, None),
    };
    let (recs, _) = db.range(HEADS).await?;
    let behind: Vec<String> = recs
        .iter()
        .filter_map(|kv| serde_json::from_slice::<HeadRecord>(&kv.value).ok())
        .filter(|h| h.schema < SCHEMA)
        .map(|h| format!("{} (release {})", h.name, h.version))
        .collect();
    if !behind.is_empty() {
        return Ok(Progress::Waiting(format!(
            "the database stays at schema {from} until every head knows schema {SCHEMA}; update {}",
            behind.join(", ")
        )));
    }
    let lease = db.grant_lease(LOCK_TTL).await?;
    let lock = Txn::new().when([Compare::absent(MIGRATION_LOCK)]).and_then([TxnOp::put_with_lease(
        MIGRATION_LOCK,
        me.as_bytes().to_vec(),
        lease,
    )]);
    if !db.txn(lock).await?.succeeded {
        let _ = db.revoke_lease(lease).await;
        return Ok(Progress::Waiting("another head is migrating the database".into()));
    }
    let r = async {
        let mut at = from;
        let mut was = current;
        while at < SCHEMA {
            let to = at + 1;
            let mut ops = steps(db, to).await?;
            let next = encode(to, me);
            ops.push(TxnOp::put(SCHEMA_VERSION, next.clone()));
            let guard = match &was {
                Some(bytes) => Compare::value_is(SCHEMA_VERSION, bytes.clone()),
                None => Compare::absent(SCHEMA_VERSION),
            };
            if !db.txn(Txn::new().when([guard]).and_then(ops)).await?.succeeded {
                return Ok(Progress::Waiting("the schema changed under this head's migration".into()));
            }
            tracing::info!(from = at, to, "database schema migrated");
            at = to;
            was = Some(next);
        }
        Ok::<_, SchemaError>(Progress::Migrated(from, at))
    }
    .await;
    let _ = db.revoke_lease(lease).await;
    r
}

/// Starts the task that migrates the schema when the heads allow it (nothing to do when the
/// database is current).
pub fn start(ctx: &crate::core::Ctx, found: u32) {
    if found >= SCHEMA {
        return;
    }
    let (db, me, events) = (ctx.db.clone(), ctx.view.me.name.clone(), ctx.events.clone());
    let mut changes = ctx.view.heads.changes();
    ctx.sup.spawn(Stage::Work, "schema-migration", move |mut stop| async move {
        let mut said = String::new();
        loop {
            match migrate_once(&db, &me).await {
                Ok(Progress::Current) => return,
                Ok(Progress::Migrated(from, to)) => {
                    events.record(
                        clusterware_shared::api::EventKind::Head,
                        me.clone(),
                        format!("database schema migrated from {from} to {to} by {me}"),
                    );
                    return;
                }
                Ok(Progress::Waiting(why)) if why != said => {
                    tracing::info!("{why}");
                    said = why;
                }
                Ok(Progress::Waiting(_)) => {}
                Err(e) => tracing::warn!(error = %e, "cannot migrate the database schema yet"),
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(RECHECK) => {}
                _ = stop.changed() => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::Database;

    async fn db() -> ((), Database) {
        ((), Database::Embedded(crate::core::db::embedded::Embedded::open_in_memory().unwrap()))
    }

    async fn register(db: &Database, name: &str, schema: u32) {
        let rec = HeadRecord { schema, ..HeadRecord::for_test(name, 1) };
        db.put(&crate::core::schema::head(name), serde_json::to_vec(&rec).unwrap()).await.unwrap();
    }

    async fn version(db: &Database) -> Option<u32> {
        read(db).await.unwrap().map(|(r, _)| r.version)
    }

    #[test]
    fn dumps_of_a_newer_schema_are_not_loadable() {
        assert_eq!(loadable(SCHEMA), Ok(()));
        assert_eq!(loadable(OLDEST_SCHEMA), Ok(()));
        let e = loadable(SCHEMA + 1).unwrap_err();
        assert!(e.contains(&format!("database schema {}, newer", SCHEMA + 1)), "{e}");
    }

    #[tokio::test]
    async fn every_schema_has_its_step() {
        let (_d, db) = db().await;
        for to in OLDEST_SCHEMA + 1..=SCHEMA {
            steps(&db, to).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_new_database_is_current_and_a_newer_one_refused_untouched() {
        let (_d, db) = db().await;
        assert_eq!(check(&db, "h1").await.unwrap(), SCHEMA);
        assert_eq!(version(&db).await, Some(SCHEMA));
        assert_eq!(migrate_once(&db, "h1").await.unwrap(), Progress::Current);
        let newer = serde_json::to_vec(&SchemaRecord { version: SCHEMA + 1, by: "h9".into(), at: 1 }).unwrap();
        db.put(SCHEMA_VERSION, newer.clone()).await.unwrap();
        let before = db.range("").await.unwrap().0;
        let e = check(&db, "h1").await.unwrap_err();
        let m = e.to_string();
        assert!(matches!(e, SchemaError::TooNew { .. }), "{m}");
        assert!(
            m.contains(&format!("schema {} (written by h9)", SCHEMA + 1)) && m.contains("scyld-install --update"),
            "{m}"
        );
        assert_eq!(db.range("").await.unwrap().0, before, "nothing written");
        db.put(SCHEMA_VERSION, b"{not json".to_vec()).await.unwrap();
        assert!(matches!(check(&db, "h1").await, Err(SchemaError::Unreadable(_))));
    }

    #[tokio::test]
    async fn an_old_database_migrates_once_when_every_head_knows_the_schema() {
        let (_d, db) = db().await;
        // A database from before the version: heads registered, no version.
        register(&db, "h1", SCHEMA).await;
        register(&db, "h2", 0).await;
        assert_eq!(check(&db, "h1").await.unwrap(), 0);
        assert_eq!(version(&db).await, None, "an existing database is not stamped at start");
        match migrate_once(&db, "h1").await.unwrap() {
            Progress::Waiting(why) => assert!(why.contains("update h2 (release t)"), "{why}"),
            p => panic!("{p:?}"),
        }
        assert_eq!(version(&db).await, None);
        // Another head holds the lock: this one waits.
        register(&db, "h2", SCHEMA).await;
        let lease = db.grant_lease(30).await.unwrap();
        db.txn(Txn::new().and_then([TxnOp::put_with_lease(MIGRATION_LOCK, b"h2".to_vec(), lease)])).await.unwrap();
        assert_eq!(
            migrate_once(&db, "h1").await.unwrap(),
            Progress::Waiting("another head is migrating the database".into())
        );
        db.revoke_lease(lease).await.unwrap();
        // Every head knows it: one migration, then nothing.
        assert_eq!(migrate_once(&db, "h1").await.unwrap(), Progress::Migrated(0, SCHEMA));
        let (r, _) = read(&db).await.unwrap().unwrap();
        assert_eq!((r.version, r.by.as_str()), (SCHEMA, "h1"));
        assert_eq!(migrate_once(&db, "h2").await.unwrap(), Progress::Current);
        assert!(db.get(MIGRATION_LOCK).await.unwrap().is_none(), "the lock is released");
        assert_eq!(check(&db, "h2").await.unwrap(), SCHEMA);
    }
}
