//! One conformance suite for both cluster-database backends: every case runs against the
//! embedded store and against a real etcd member (Debian's `etcd`, started by the same
//! supervisor code the head daemon uses).

use clusterware_head::core::db::embedded::Embedded;
use clusterware_head::core::db::etcd::Etcd;
use clusterware_head::core::db::member::{MemberHandle, MemberSpec};
use clusterware_head::core::db::{Compare, Database, DbError, EventKind, OpResult, Txn, TxnOp};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

const STEP: Duration = Duration::from_secs(15);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The member's peers speak TLS with a certificate from a CA, as a head's member does.
fn etcd_spec(dir: &Path) -> MemberSpec {
    use clusterware_shared::pki;
    let peer = format!("https://127.0.0.1:{}", free_port());
    let tls = dir.join("tls");
    let ca = pki::Ca::create().unwrap();
    ca.write(&tls).unwrap();
    let issued = ca.issue("conf", &pki::head_names("conf", &[]), 1).unwrap();
    pki::write_issued(&tls, pki::HEAD_CERT, pki::HEAD_KEY, &issued).unwrap();
    MemberSpec {
        binary: "etcd".into(),
        name: "conf".into(),
        data_dir: dir.join("etcd"),
        initial_cluster: format!("conf={peer}"),
        peer_url: peer,
        initial_state: "new".into(),
        token: "conformance".into(),
        max_txn_ops: 1024,
        log_file: dir.join("etcd.log"),
        tls_dir: tls,
    }
}

async fn connect_etcd(url: &str) -> Database {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Etcd::connect(&[url.to_string()], 1024).await {
            Ok(e) => return Database::Etcd(e),
            Err(e) if Instant::now() > deadline => panic!("etcd at {url} did not come up: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A backend under test, with whatever keeps it alive.
struct Backend {
    db: Database,
    dir: TempDir,
    member: Option<MemberHandle>,
}

impl Backend {
    async fn embedded() -> Backend {
        let dir = TempDir::new().unwrap();
        let db = Database::Embedded(Embedded::open(&dir.path().join("db.redb")).unwrap());
        Backend { db, dir, member: None }
    }

    async fn etcd() -> Backend {
        let dir = TempDir::new().unwrap();
        let member =
            MemberHandle::start(etcd_spec(dir.path())).expect("etcd member starts (is etcd-server installed?)");
        let db = connect_etcd(&member.client_url()).await;
        Backend { db, dir, member: Some(member) }
    }

    /// Closes the database (stops the etcd member, or drops the embedded store) and opens it
    /// again from the same files.
    async fn restart(&mut self) {
        match self.member.take() {
            Some(mut m) => {
                m.stop();
                let spec = m.spec().clone();
                // Same data dir: the member ignores the initial-cluster flags and resumes.
                assert!(self.dir.path().join("etcd/member").is_dir());
                let m = MemberHandle::start(spec).unwrap();
                self.db = connect_etcd(&m.client_url()).await;
                self.member = Some(m);
            }
            None => {
                let path = self.dir.path().join("db.redb");
                // Drop this handle (the last one) so the file closes.
                self.db = Database::Embedded(Embedded::open_in_memory().unwrap());
                let deadline = Instant::now() + Duration::from_secs(10);
                self.db = loop {
                    match Embedded::open(&path) {
                        Ok(e) => break Database::Embedded(e),
                        Err(e) if Instant::now() > deadline => panic!("reopen: {e}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                };
            }
        }
    }
}

async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, f).await.unwrap_or_else(|_| panic!("{what}: no result within {STEP:?}"))
}

macro_rules! both {
    ($name:ident, $case:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$case(super::Backend::embedded().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn etcd() {
                super::$case(super::Backend::etcd().await).await;
            }
        }
    };
}

both!(cas, case_cas);
both!(prefix_range, case_prefix_range);
both!(lease_expiry, case_lease_expiry);
both!(watch_order, case_watch_order);
both!(watch_resume, case_watch_resume);
both!(compaction, case_compaction);

async fn case_cas(b: Backend) {
    let db = &b.db;
    let create = |v: &'static str| {
        Txn::new().when([Compare::absent("k")]).and_then([TxnOp::put("k", v)]).or_else([TxnOp::get("k")])
    };
    let r1 = db.txn(create("one")).await.unwrap();
    assert!(r1.succeeded);
    let r2 = db.txn(create("two")).await.unwrap();
    assert!(!r2.succeeded, "second create of the same key must lose");
    match &r2.results[0] {
        OpResult::Got(kvs) => assert_eq!(kvs[0].value, b"one"),
        other => panic!("failure branch should read the key: {other:?}"),
    }
    assert_eq!(r2.revision, r1.revision, "a failed compare writes nothing");

    let kv = db.get("k").await.unwrap().unwrap();
    assert_eq!((kv.version, kv.create_revision, kv.mod_revision), (1, r1.revision, r1.revision));
    let upd = |rev| Txn::new().when([Compare::unchanged("k", rev)]).and_then([TxnOp::put("k", "three")]);
    assert!(db.txn(upd(kv.mod_revision)).await.unwrap().succeeded);
    assert!(!db.txn(upd(kv.mod_revision)).await.unwrap().succeeded, "stale mod_revision must lose");
    let kv2 = db.get("k").await.unwrap().unwrap();
    assert_eq!(kv2.version, 2);
    assert_eq!(kv2.create_revision, kv.create_revision);
    assert!(
        db.txn(Txn::new().when([Compare::value_is("k", "three")]).and_then([TxnOp::delete("k")]))
            .await
            .unwrap()
            .succeeded
    );
    assert!(db.get("k").await.unwrap().is_none());
    assert!(
        !db.txn(Txn::new().when([Compare::value_is("k", "three")])).await.unwrap().succeeded,
        "value compare on an absent key fails"
    );

    // Many racers on one key: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.txn(Txn::new().when([Compare::absent("race")]).and_then([TxnOp::put("race", format!("{i}"))]))
                .await
                .unwrap()
                .succeeded
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += t.await.unwrap() as i32;
    }
    assert_eq!(wins, 1);
}

async fn case_prefix_range(b: Backend) {
    let db = &b.db;
    for k in ["nodes/b", "nodes/a", "nodesx", "node", "nodes/c/d"] {
        db.put(k, k.as_bytes()).await.unwrap();
    }
    let (kvs, rev) = db.range("nodes/").await.unwrap();
    let keys: Vec<&str> = kvs.iter().map(|k| k.key.as_str()).collect();
    assert_eq!(keys, ["nodes/a", "nodes/b", "nodes/c/d"]);
    assert!(kvs.iter().all(|k| k.mod_revision <= rev));
    assert_eq!(kvs[0].value, b"nodes/a");
    let r = db.txn(Txn::new().and_then([TxnOp::DeletePrefix { prefix: "nodes/".into() }])).await.unwrap();
    assert_eq!(r.results[0], OpResult::Deleted(3));
    assert_eq!(db.range("node").await.unwrap().0.len(), 2);
    assert!(db.range("zzz/").await.unwrap().0.is_empty());
}

async fn case_lease_expiry(b: Backend) {
    let db = &b.db;
    let lease = db.grant_lease(2).await.unwrap();
    db.txn(
        Txn::new()
            .and_then([TxnOp::put_with_lease("alive/a", "x", lease), TxnOp::put_with_lease("alive/b", "y", lease)]),
    )
    .await
    .unwrap();
    db.put("plain", "z").await.unwrap();
    assert_eq!(db.keep_alive(lease).await.unwrap(), 2);
    // Renewed for a while, the keys stay.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        db.keep_alive(lease).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(db.range("alive/").await.unwrap().0.len(), 2);
    assert_eq!(db.get("alive/a").await.unwrap().unwrap().lease, lease);
    // Not renewed, they go (etcd checks expiry every 500 ms).
    let deadline = Instant::now() + Duration::from_secs(8);
    while !db.range("alive/").await.unwrap().0.is_empty() {
        assert!(Instant::now() < deadline, "lease keys not removed after expiry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(db.get("plain").await.unwrap().is_some(), "keys without the lease stay");
    let r = db.keep_alive(lease).await;
    assert!(matches!(r, Err(DbError::LeaseNotFound(_))), "{r:?}");
    assert!(matches!(
        db.txn(Txn::new().and_then([TxnOp::put_with_lease("k", "v", lease)])).await,
        Err(DbError::LeaseNotFound(_))
    ));
    assert!(db.get("k").await.unwrap().is_none());

    let l2 = db.grant_lease(30).await.unwrap();
    db.txn(Txn::new().and_then([TxnOp::put_with_lease("alive/c", "x", l2)])).await.unwrap();
    db.revoke_lease(l2).await.unwrap();
    assert!(db.get("alive/c").await.unwrap().is_none(), "revoke removes keys at once");
}

async fn case_watch_order(b: Backend) {
    let db = &b.db;
    let mut w = db.watch("w/", None).await.unwrap();
    let mut expected = Vec::new();
    for i in 0..30 {
        let k = format!("w/{}", i % 7);
        db.put(&k, format!("v{i}")).await.unwrap();
        expected.push((EventKind::Put, k.clone(), format!("v{i}")));
        if i % 5 == 0 {
            db.delete(&k).await.unwrap();
            expected.push((EventKind::Delete, k, String::new()));
        }
        db.put("other/x", "ignored").await.unwrap();
    }
    // Several keys in one transaction share a revision and all arrive.
    db.txn(Txn::new().and_then([TxnOp::put("w/t1", "a"), TxnOp::put("w/t2", "b")])).await.unwrap();
    expected.push((EventKind::Put, "w/t1".into(), "a".into()));
    expected.push((EventKind::Put, "w/t2".into(), "b".into()));
    let mut last_rev = 0;
    for (i, (kind, key, value)) in expected.iter().enumerate() {
        let e = within("watch event", w.next()).await.unwrap();
        assert_eq!(
            (&e.kind, &e.kv.key, &String::from_utf8(e.kv.value.clone()).unwrap()),
            (kind, key, value),
            "event {i}"
        );
        assert!(e.kv.mod_revision >= last_rev, "revisions in order");
        last_rev = e.kv.mod_revision;
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err(), "no extra events");
}

async fn case_watch_resume(mut b: Backend) {
    let start = b.db.put("r/0", "start").await.unwrap();
    for i in 1..=5 {
        b.db.put(&format!("r/{i}"), "x").await.unwrap();
    }
    // From a revision in the past: history first, in order.
    let mut w = b.db.watch("r/", Some(start)).await.unwrap();
    for i in 0..=5 {
        let e = within("history", w.next()).await.unwrap();
        assert_eq!(e.kv.key, format!("r/{i}"));
    }
    let resume_at = w.next_revision();
    drop(w);
    b.db.put("r/6", "missed").await.unwrap();
    b.db.delete("r/1").await.unwrap();
    let mut w = b.db.watch("r/", Some(resume_at)).await.unwrap();
    let e = within("missed put", w.next()).await.unwrap();
    assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Put, "r/6"));
    let e = within("missed delete", w.next()).await.unwrap();
    assert_eq!((e.kind, e.kv.key.as_str()), (EventKind::Delete, "r/1"));

    // The database goes away and comes back: an open watch (etcd) resumes by itself, and a new
    // watch from the last revision seen gets what happened meanwhile.
    let resume_at = w.next_revision();
    // The embedded store is in this process: its file closes only when every handle is gone.
    let mut open = if matches!(b.db, Database::Etcd(_)) {
        Some(w)
    } else {
        drop(w);
        None
    };
    b.restart().await;
    b.db.put("r/7", "after restart").await.unwrap();
    if let Some(w) = open.as_mut() {
        let e = within("event after reconnect", w.next()).await.unwrap();
        assert_eq!(e.kv.key, "r/7");
    }
    drop(open);
    let mut w = b.db.watch("r/", Some(resume_at)).await.unwrap();
    let e = within("resumed after restart", w.next()).await.unwrap();
    assert_eq!((e.kv.key.as_str(), e.kv.value.as_slice()), ("r/7", b"after restart".as_slice()));
    assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err(), "nothing delivered twice");
}

async fn case_compaction(b: Backend) {
    let db = &b.db;
    let first = db.put("c/a", "1").await.unwrap();
    db.put("c/a", "2").await.unwrap();
    let third = db.put("c/a", "3").await.unwrap();
    db.compact(third).await.unwrap();
    match db.watch("c/", Some(first)).await {
        Err(DbError::Compacted { .. }) => {}
        Ok(mut w) => match within("compacted watch", w.next()).await {
            Err(DbError::Compacted { .. }) => {}
            other => panic!("watch from a compacted revision must fail, got {other:?}"),
        },
        Err(e) => panic!("unexpected error {e}"),
    }
    let mut w = db.watch("c/", Some(third)).await.unwrap();
    let e = within("watch at compaction point", w.next()).await.unwrap();
    assert_eq!(e.kv.value, b"3");
}
