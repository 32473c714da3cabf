//! Boot-file storage on a head: every head keeps a copy of every file (kernel, initramfs, root
//! image, …) under `local_files.path`, named by the file's id, and checks it against the size
//! and SHA-256 in the database before serving it.
//!
//! - **Verification** is done once: what was verified is remembered as (device, inode, size,
//!   mtime) → checksum, in memory and in `.verified-<head>.json`, and a file is hashed again only
//!   when one of those changes.
//! - **Quarantine**: a local copy that does not match is renamed `<id>.old.NN` (the next free NN
//!   from 00 to 99; link-then-unlink, so two heads on shared storage never overwrite each
//!   other's), then fetched again.
//! - **Peer download**: a head without a good copy asks the other alive heads, in random order,
//!   whether they have one of the right size (HEAD), downloads it from the first that does,
//!   hashing while it receives, and keeps it only if the checksum matches; otherwise it tries
//!   the next. A head asked by a peer never downloads from peers itself (no cascade when a file
//!   is missing everywhere). Concurrent requests for one file share one download. The requester
//!   serves the bytes once they are verified: nothing unverified is ever served.
//! - **Writes** (uploads and downloads) go to `.tmp/<head>-<id>-<random>.part`, are fsynced,
//!   renamed into place and the directory fsynced; the database record of an upload is written
//!   only after that. A crash leaves nothing under a final name.
//! - **Deletion**: the deleting head removes its copy and moves the record to `deleted/<id>`
//!   with the alive heads that still have to remove theirs; each removes its copy and itself
//!   from the entry, which goes when none is left (or after `local_files.deleted_ttl`). A head
//!   that was down finds its copy unreferenced at start-up and renames it `.old.NN`.

pub mod routes;

use crate::core::db::{Compare, Database, DbError, Txn, TxnOp};
use crate::core::peers::Peers;
use crate::core::schema;
use crate::core::schema::{ALIVE, DELETED, DeletedEntry, FILES, HEADS, HeadRecord};

use crate::core::unix_now as now;
use bytes::Bytes;
use clusterware_shared::api::{FileRecord, StorageCounters, StorageSummary, is_file_id};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Unreferenced local files younger than this are left alone (an upload on shared storage may
/// not have written its record yet).
const UNREFERENCED_GRACE: Duration = Duration::from_secs(60);
/// How long a peer may stay silent during a download.
const PEER_READ_TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no file with id {0}")]
    NotFound(String),
    #[error("file {id} has no good copy here")]
    NotHere { id: String },
    #[error("file {id} ({name}) has no good copy on this head nor on any of the {asked} other heads asked")]
    Unavailable { id: String, name: String, asked: usize },
    #[error("{0}")]
    Invalid(String),
    #[error("storage I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] DbError),
}

impl crate::core::http::HasKind for StorageError {
    fn kind(&self) -> clusterware_shared::api::ErrorKind {
        use clusterware_shared::api::ErrorKind;
        match self {
            StorageError::NotFound(_) | StorageError::NotHere { .. } | StorageError::Unavailable { .. } => {
                ErrorKind::NotFound
            }
            StorageError::Invalid(_) => ErrorKind::BadRequest,
            StorageError::Io { .. } => ErrorKind::Internal,
            StorageError::Db(e) => e.kind(),
        }
    }
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

/// What identifies one version of a file on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp { dev: m.dev(), ino: m.ino(), size: m.len(), mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verified {
    stamp: Stamp,
    sha256: String,
    /// Wall-clock time of the verification, in ns since the epoch.
    #[serde(default)]
    at_ns: i64,
}

/// A file modified less than this before it was verified may have been modified again within
/// the same timestamp tick without its mtime changing (git's "racily clean" problem): such a
/// verification is not trusted, and the file is hashed again at the next request.
const RACY_NS: i64 = 100_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl Verified {
    fn new(stamp: Stamp, sha256: String) -> Verified {
        Verified { stamp, sha256, at_ns: now_ns() }
    }

    /// Whether this verification still vouches for a file with this stamp and checksum.
    fn vouches(&self, stamp: &Stamp, sha256: &str) -> bool {
        self.stamp == *stamp && self.sha256 == sha256 && self.at_ns - stamp.mtime_ns > RACY_NS
    }
}

/// Why a local copy cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    Good,
    Missing,
    /// It did not match and was renamed `.old.NN`.
    Bad,
}

#[derive(Default)]
struct Counters {
    hashed_bytes: AtomicU64,
    peer_requests: AtomicU64,
    peer_downloads: AtomicU64,
    peer_rejects: AtomicU64,
    quarantined: AtomicU64,
    audits: AtomicU64,
}

/// How a shared check-and-fetch ended, for every request that waited on it.
#[derive(Debug, Clone)]
enum FlightError {
    NotHere,
    Unavailable { asked: usize },
    Other(String),
}

type Flight = Shared<BoxFuture<'static, Result<(), FlightError>>>;

/// One head's storage.
pub struct Storage {
    dir: PathBuf,
    tmp: PathBuf,
    head: String,
    db: Database,
    verified: Mutex<HashMap<String, Verified>>,
    /// The verification cache changed since it was last saved.
    verified_dirty: std::sync::atomic::AtomicBool,
    flights: Mutex<HashMap<(String, bool), Flight>>,
    /// Other heads (boot file contents need no credential).
    peers: Peers,
    counters: Counters,
    /// The records read last, by id: while the database has no quorum, a file whose copy was
    /// verified against its record is still served.
    records: Mutex<HashMap<String, FileRecord>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hashes a file; returns (size, hex SHA-256).
fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let r = f.read(&mut buf)?;
        if r == 0 {
            break;
        }
        h.update(&buf[..r]);
        n += r as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

use clusterware_shared::fsutil::{fsync_dir, write_atomic};

impl Storage {
    /// Opens the storage directory (creating it), removes this head's leftover temporary files
    /// and loads what it verified before.
    /// `head_token`: the heads' credential, which peer downloads carry (a root image is served
    /// only to heads, nodes and administrators).
    pub fn open(dir: &Path, head: &str, db: Database, head_token: &str) -> Result<Arc<Storage>> {
        let tmp = dir.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let prefix = format!("{head}-");
        for e in std::fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                // Partial uploads and downloads, and import staging directories.
                let _ = std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
            }
        }
        let verified = std::fs::read(dir.join(format!(".verified-{head}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Arc::new(Storage {
            dir: dir.to_path_buf(),
            tmp,
            head: head.to_string(),
            db,
            verified: Mutex::new(verified),
            verified_dirty: std::sync::atomic::AtomicBool::new(false),
            flights: Mutex::new(HashMap::new()),
            peers: Peers::new(Some(head_token), crate::core::peers::timeouts(PEER_READ_TIMEOUT.as_secs())),
            counters: Counters::default(),
            records: Mutex::new(HashMap::new()),
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The local path of a file id (ids are 32 hex digits: they cannot leave the directory).
    pub fn path(&self, id: &str) -> PathBuf {
        debug_assert!(is_file_id(id));
        self.dir.join(id)
    }

    pub fn counters(&self) -> StorageCounters {
        let c = &self.counters;
        StorageCounters {
            hashed_bytes: c.hashed_bytes.load(Ordering::Relaxed),
            peer_requests: c.peer_requests.load(Ordering::Relaxed),
            peer_downloads: c.peer_downloads.load(Ordering::Relaxed),
            peer_rejects: c.peer_rejects.load(Ordering::Relaxed),
            quarantined: c.quarantined.load(Ordering::Relaxed),
            audits: c.audits.load(Ordering::Relaxed),
        }
    }

    pub fn count_peer_request(&self) {
        self.counters.peer_requests.fetch_add(1, Ordering::Relaxed);
    }

    fn remember(&self, id: &str, v: Verified) {
        lock(&self.verified).insert(id.to_string(), v);
        self.verified_dirty.store(true, Ordering::Relaxed);
    }

    fn forget(&self, id: &str) {
        if lock(&self.verified).remove(id).is_some() {
            self.verified_dirty.store(true, Ordering::Relaxed);
        }
    }

    /// Saves the verification cache, when it changed.
    fn persist_verified(&self) {
        if !self.verified_dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let path = self.dir.join(format!(".verified-{}.json", self.head));
        let body = serde_json::to_vec(&*lock(&self.verified)).expect("verification cache serialises");
        if let Err(e) = write_atomic(&path, Some(&self.tmp), &body, None) {
            self.verified_dirty.store(true, Ordering::Relaxed);
            tracing::warn!(path = %path.display(), error = %e, "cannot save the verification cache; files will be hashed again after a restart");
        }
    }

    /// The record of a file.
    pub async fn record(&self, id: &str) -> Result<FileRecord> {
        if !is_file_id(id) {
            return Err(StorageError::NotFound(id.to_string()));
        }
        let kv = match self.db.get(&schema::file(&id)).await {
            Ok(kv) => kv,
            Err(DbError::Unavailable(m)) => {
                // Degraded: the last record seen, for a copy verified against it.
                let last = lock(&self.records).get(id).cloned();
                return match last {
                    Some(rec) if self.known_good(&rec) => {
                        tracing::debug!(file = %id, "database unavailable: serving a verified copy by its last record");
                        Ok(rec)
                    }
                    _ => Err(DbError::Unavailable(m).into()),
                };
            }
            Err(e) => return Err(e.into()),
        };
        let kv = kv.ok_or_else(|| {
            lock(&self.records).remove(id);
            StorageError::NotFound(id.to_string())
        })?;
        let rec: FileRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| StorageError::Invalid(format!("corrupt record for file {id}: {e}")))?;
        lock(&self.records).insert(id.to_string(), rec.clone());
        Ok(rec)
    }

    pub async fn list(&self) -> Result<Vec<FileRecord>> {
        let (kvs, _) = self.db.range(FILES).await?;
        let mut out: Vec<FileRecord> = kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// True when the local copy is known good without reading it.
    fn known_good(&self, rec: &FileRecord) -> bool {
        let Ok(m) = std::fs::symlink_metadata(self.path(&rec.id)) else { return false };
        m.file_type().is_file()
            && m.len() == rec.size
            && lock(&self.verified).get(&rec.id).is_some_and(|v| v.vouches(&Stamp::of(&m), &rec.sha256))
    }

    /// Checks the local copy, hashing it if it was not verified in this version; a copy that
    /// does not match is quarantined.
    async fn check_local(&self, rec: &FileRecord) -> Result<Local> {
        let path = self.path(&rec.id);
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Local::Missing),
            Err(e) => return Err(io(&path)(e)),
        };
        if self.known_good(rec) {
            return Ok(Local::Good);
        }
        let good = if !m.file_type().is_file() || m.len() != rec.size {
            false
        } else {
            let p = path.clone();
            let (n, sha) = tokio::task::spawn_blocking(move || hash_file(&p))
                .await
                .map_err(|e| StorageError::Invalid(format!("hashing task failed: {e}")))?
                .map_err(io(&path))?;
            self.counters.hashed_bytes.fetch_add(n, Ordering::Relaxed);
            // Stat again: the stamp must be the one of the bytes just hashed.
            let m2 = std::fs::symlink_metadata(&path).map_err(io(&path))?;
            if sha == rec.sha256 && n == rec.size && Stamp::of(&m2) == Stamp::of(&m) {
                self.remember(&rec.id, Verified::new(Stamp::of(&m), sha));
                true
            } else {
                false
            }
        };
        if good {
            return Ok(Local::Good);
        }
        self.forget(&rec.id);
        match quarantine(&path)? {
            Some(to) => {
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %rec.id, name = %rec.name, renamed = %to.display(), "local copy does not match its size and checksum; renamed");
            }
            None => tracing::info!(file = %rec.id, "bad local copy already moved away (shared storage)"),
        }
        Ok(Local::Bad)
    }

    /// Makes sure a good local copy exists and returns its path. With `from_peers`, a missing
    /// or bad copy is fetched from another head; without (a peer is asking), it is not.
    /// Concurrent calls for one file share the work.
    pub async fn ensure(self: &Arc<Self>, rec: &FileRecord, from_peers: bool) -> Result<PathBuf> {
        if self.known_good(rec) {
            return Ok(self.path(&rec.id));
        }
        let key = (rec.id.clone(), from_peers);
        let flight = {
            let mut flights = lock(&self.flights);
            flights
                .entry(key.clone())
                .or_insert_with(|| {
                    let me = self.clone();
                    let rec = rec.clone();
                    async move {
                        let r = me.ensure_once(&rec, from_peers).await;
                        lock(&me.flights).remove(&(rec.id.clone(), from_peers));
                        r
                    }
                    .boxed()
                    .shared()
                })
                .clone()
        };
        match flight.await {
            Ok(()) => Ok(self.path(&rec.id)),
            Err(_) if self.known_good(rec) => Ok(self.path(&rec.id)),
            Err(FlightError::NotHere) => Err(StorageError::NotHere { id: rec.id.clone() }),
            Err(FlightError::Unavailable { asked }) => {
                Err(StorageError::Unavailable { id: rec.id.clone(), name: rec.name.clone(), asked })
            }
            Err(FlightError::Other(m)) => Err(StorageError::Invalid(m)),
        }
    }

    async fn ensure_once(self: &Arc<Self>, rec: &FileRecord, from_peers: bool) -> Result<(), FlightError> {
        let other = |e: StorageError| FlightError::Other(e.to_string());
        match self.check_local(rec).await.map_err(other)? {
            Local::Good => {
                self.persist_verified();
                return Ok(());
            }
            Local::Missing | Local::Bad if !from_peers => return Err(FlightError::NotHere),
            Local::Missing | Local::Bad => {}
        }
        if let Some(asked) = self.fetch_from_peers(rec).await.map_err(other)? {
            return Err(FlightError::Unavailable { asked });
        }
        self.persist_verified();
        Ok(())
    }

    /// The other alive heads, in random order.
    async fn peers(&self) -> Result<Vec<HeadRecord>> {
        let (heads, _) = self.db.range(HEADS).await?;
        let (alive, _) = self.db.range(ALIVE).await?;
        let alive: Vec<&str> = alive.iter().filter_map(|kv| kv.key.strip_prefix(ALIVE)).collect();
        let mut out: Vec<HeadRecord> = heads
            .iter()
            .filter_map(|kv| serde_json::from_slice::<HeadRecord>(&kv.value).ok())
            .filter(|h| h.name != self.head && alive.contains(&h.name.as_str()))
            .collect();
        use rand::seq::SliceRandom;
        out.shuffle(&mut rand::rng());
        Ok(out)
    }

    /// Downloads the file from the first peer that has it; returns `None` on success, else how
    /// many peers were asked.
    async fn fetch_from_peers(&self, rec: &FileRecord) -> Result<Option<usize>> {
        let peers = self.peers().await?;
        let total = peers.len();
        for p in peers {
            let client = match self.peers.to(&p.api_url) {
                Ok(c) => c,
                Err(e) => {
                    tracing::info!(file = %rec.id, peer = %p.name, error = %e, "peer cannot be asked");
                    continue;
                }
            };
            // Whether the peer has a good copy of the right size (it answers from its local copy
            // only, and only once verified).
            match client.file_content_info(&rec.id, true).await {
                Ok(info) if info.len == Some(rec.size) => {}
                Ok(_) => {
                    tracing::debug!(file = %rec.id, peer = %p.name, "peer has a copy of another size");
                    continue;
                }
                Err(e) if e.is_transport() => {
                    tracing::info!(file = %rec.id, peer = %p.name, error = %e, "peer did not answer");
                    continue;
                }
                Err(e) => {
                    tracing::debug!(file = %rec.id, peer = %p.name, error = %e, "peer has no good copy");
                    continue;
                }
            }
            let download = match client.file_content(&rec.id, true).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::info!(file = %rec.id, peer = %p.name, error = %e, "peer download failed");
                    continue;
                }
            };
            let stream = futures::stream::unfold(Some(download), |d| async move {
                let mut d = d?;
                match d.chunk().await {
                    Ok(Some(b)) => Some((Ok(b), Some(d))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e.to_string()), None)),
                }
            });
            match self.receive(&rec.id, stream, rec.size, Some(&rec.sha256)).await {
                Ok(_) => {
                    self.counters.peer_downloads.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(file = %rec.id, name = %rec.name, peer = %p.name, bytes = rec.size, "downloaded from peer");
                    return Ok(None);
                }
                Err(e) => {
                    self.counters.peer_rejects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %rec.id, peer = %p.name, error = %e, "download from peer discarded");
                }
            }
        }
        Ok(Some(total))
    }

    /// Writes a stream to a temporary file while hashing it; it becomes `<dir>/<id>` only when
    /// exactly `size` bytes arrived (and match `expected`, when given), fsynced. Returns the
    /// checksum.
    pub async fn receive<S, E>(&self, id: &str, stream: S, size: u64, expected: Option<&str>) -> Result<String>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let tmp = self.tmp.join(format!("{}-{id}-{:016x}.part", self.head, rand::random::<u64>()));
        let r = self.receive_into(&tmp, id, stream, size, expected).await;
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    async fn receive_into<S, E>(
        &self,
        tmp: &Path,
        id: &str,
        stream: S,
        size: u64,
        expected: Option<&str>,
    ) -> Result<String>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let mut file = clusterware_shared::fsutil::EarlyWriteback::new(
            std::fs::OpenOptions::new().write(true).create_new(true).open(tmp).map_err(io(tmp))?,
        );
        let mut hasher = Sha256::new();
        let mut got = 0u64;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK);
        let mut stream = std::pin::pin!(stream);
        loop {
            let next = tokio::time::timeout(PEER_READ_TIMEOUT, stream.next())
                .await
                .map_err(|_| StorageError::Invalid(format!("no data for {} s", PEER_READ_TIMEOUT.as_secs())))?;
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| StorageError::Invalid(format!("transfer broke after {got} bytes: {e}")))?;
            got += chunk.len() as u64;
            if got > size {
                return Err(StorageError::Invalid(format!("more than the declared {size} bytes")));
            }
            hasher.update(&chunk);
            buf.extend_from_slice(&chunk);
            if buf.len() >= CHUNK {
                tokio::task::block_in_place(|| file.write_all(&buf)).map_err(io(tmp))?;
                buf.clear();
            }
        }
        if got != size {
            return Err(StorageError::Invalid(format!("{got} bytes arrived, {size} declared")));
        }
        let sha = hex::encode(hasher.finalize());
        if let Some(want) = expected {
            if sha != want {
                return Err(StorageError::Invalid(format!("checksum {sha} does not match the expected {want}")));
            }
        }
        tokio::task::block_in_place(|| -> std::io::Result<()> {
            file.write_all(&buf)?;
            file.get_ref().sync_all()
        })
        .map_err(io(tmp))?;
        drop(file);
        let dest = self.path(id);
        std::fs::rename(tmp, &dest).map_err(io(&dest))?;
        fsync_dir(&self.dir).map_err(io(&self.dir))?;
        let m = std::fs::symlink_metadata(&dest).map_err(io(&dest))?;
        self.remember(id, Verified::new(Stamp::of(&m), sha.clone()));
        Ok(sha)
    }

    /// Stores an upload and then records it in the database.
    pub async fn upload<S, E>(
        &self,
        name: &str,
        kind: &str,
        size: u64,
        expected: Option<&str>,
        body: S,
    ) -> Result<FileRecord>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        let id = format!("{:032x}", rand::random::<u128>());
        let sha = self.receive(&id, body, size, expected).await?;
        let rec = FileRecord {
            id: id.clone(),
            name: name.to_string(),
            size,
            sha256: sha,
            kind: kind.to_string(),
            created: now(),
        };
        let key = schema::file(&id);
        let body = serde_json::to_vec(&rec).expect("file record serialises");
        let written =
            self.db.txn(Txn::new().when([Compare::absent(key.clone())]).and_then([TxnOp::put(key, body)])).await;
        match written {
            Ok(r) if r.succeeded => {
                self.persist_verified();
                Ok(rec)
            }
            other => {
                // No record, so no file: remove the bytes.
                self.delete_local(&id);
                match other {
                    Err(e) => Err(e.into()),
                    Ok(_) => Err(StorageError::Invalid(format!("file id {id} already exists"))),
                }
            }
        }
    }

    /// A new private staging directory under `.tmp` (removed at the next start if left over).
    pub fn new_staging(&self, what: &str) -> Result<PathBuf> {
        let d = self.tmp.join(format!("{}-{what}-{:016x}", self.head, rand::random::<u64>()));
        std::fs::create_dir(&d).map_err(io(&d))?;
        Ok(d)
    }

    /// Bytes available to new files in the storage directory.
    pub fn available_bytes(&self) -> Result<u64> {
        let st = nix::sys::statvfs::statvfs(&self.dir).map_err(|e| io(&self.dir)(e.into()))?;
        Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
    }

    /// Moves a verified, fsynced file from a staging directory to `<dir>/<id>`.
    pub fn adopt(&self, from: &Path, id: &str, sha256: &str) -> Result<()> {
        let dest = self.path(id);
        std::fs::rename(from, &dest).map_err(io(&dest))?;
        fsync_dir(&self.dir).map_err(io(&self.dir))?;
        let m = std::fs::symlink_metadata(&dest).map_err(io(&dest))?;
        self.remember(id, Verified::new(Stamp::of(&m), sha256.to_string()));
        self.persist_verified();
        Ok(())
    }

    /// Removes this head's copy of a file (the record is the caller's business).
    pub fn delete_local(&self, id: &str) {
        self.forget(id);
        match std::fs::remove_file(self.path(id)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %id, error = %e, "cannot remove local copy"),
        }
    }

    /// Deletes a file from the cluster: the record goes to the deleted list for the other alive
    /// heads, and this head's copy is removed.
    pub async fn delete(&self, id: &str) -> Result<FileRecord> {
        let key = schema::file(&id);
        let kv = if is_file_id(id) { self.db.get(&key).await? } else { None };
        let kv = kv.ok_or_else(|| StorageError::NotFound(id.to_string()))?;
        let rec: FileRecord =
            serde_json::from_slice(&kv.value).map_err(|e| StorageError::Invalid(format!("corrupt record: {e}")))?;
        let pending: Vec<String> = self.peers().await?.into_iter().map(|h| h.name).collect();
        let entry = DeletedEntry { file: rec.clone(), deleted: now(), by: self.head.clone(), pending };
        let r = self
            .db
            .txn(Txn::new().when([Compare::unchanged(key.clone(), kv.mod_revision)]).and_then([
                TxnOp::delete(key),
                TxnOp::put(schema::deleted(&id), serde_json::to_vec(&entry).expect("serialises")),
            ]))
            .await?;
        if !r.succeeded {
            return Err(StorageError::NotFound(id.to_string()));
        }
        self.delete_local(id);
        self.persist_verified();
        tracing::info!(file = %id, name = %rec.name, others = ?entry.pending, "file deleted");
        Ok(rec)
    }

    /// Processes the deleted-files list: removes this head's copies of files deleted elsewhere
    /// and drops entries no head needs any more.
    pub async fn sweep_deleted(&self, ttl: Duration) -> Result<()> {
        let (kvs, _) = self.db.range(DELETED).await?;
        for kv in kvs {
            let Ok(mut e) = serde_json::from_slice::<DeletedEntry>(&kv.value) else { continue };
            let mine = e.pending.iter().any(|h| h == &self.head);
            if mine {
                self.delete_local(&e.file.id);
                tracing::info!(file = %e.file.id, name = %e.file.name, by = %e.by, "removed local copy of a deleted file");
                e.pending.retain(|h| h != &self.head);
            }
            let expired = now().saturating_sub(e.deleted) > ttl.as_secs();
            let op = if e.pending.is_empty() || expired {
                TxnOp::delete(kv.key.clone())
            } else if mine {
                TxnOp::put(kv.key.clone(), serde_json::to_vec(&e).expect("serialises"))
            } else {
                continue;
            };
            // Lost races are retried at the next sweep.
            self.db.txn(Txn::new().when([Compare::unchanged(kv.key.clone(), kv.mod_revision)]).and_then([op])).await?;
        }
        self.persist_verified();
        Ok(())
    }

    /// Checks every file the database names, renames unreferenced local files `.old.NN`, and
    /// records the summary in `storage/<head>` when it changed.
    pub async fn audit(&self) -> Result<StorageSummary> {
        let files = self.list().await?;
        let mut s = StorageSummary::default();
        for rec in &files {
            match self.check_local(rec).await? {
                Local::Good => {
                    s.files += 1;
                    s.bytes += rec.size;
                }
                Local::Missing => s.missing += 1,
                Local::Bad => {
                    s.bad += 1;
                    s.missing += 1;
                }
            }
        }
        let (deleted, _) = self.db.range(DELETED).await?;
        let pending_here: Vec<String> = deleted
            .iter()
            .filter_map(|kv| serde_json::from_slice::<DeletedEntry>(&kv.value).ok())
            .filter(|e| e.pending.contains(&self.head))
            .map(|e| e.file.id)
            .collect();
        let known: std::collections::HashSet<&str> = files.iter().map(|f| f.id.as_str()).collect();
        for e in std::fs::read_dir(&self.dir).map_err(io(&self.dir))?.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !is_file_id(&name) || known.contains(name.as_str()) || pending_here.contains(&name) {
                continue;
            }
            let young = e
                .metadata()
                .ok()
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age < UNREFERENCED_GRACE);
            if young {
                continue;
            }
            self.forget(&name);
            if let Some(to) = quarantine(&e.path())? {
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %name, renamed = %to.display(), "local file is not referenced by the database; renamed (remove it once you are sure it is not needed)");
            }
        }
        self.persist_verified();
        s.audited = now();
        let key = schema::summary(&self.head);
        let old: Option<StorageSummary> =
            self.db.get(&key).await?.and_then(|kv| serde_json::from_slice(&kv.value).ok());
        let changed =
            old.as_ref().is_none_or(|o| (o.files, o.missing, o.bad, o.bytes) != (s.files, s.missing, s.bad, s.bytes));
        if changed {
            self.db.put(&key, serde_json::to_vec(&s).expect("serialises")).await?;
        }
        self.counters.audits.fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }
}

/// Renames `path` to the next free `path.old.NN` (00 to 99) without ever replacing one; returns
/// the new name, or `None` when the file was already gone (another head moved it).
pub fn quarantine(path: &Path) -> Result<Option<PathBuf>> {
    for nn in 0..100 {
        let to = PathBuf::from(format!("{}.old.{nn:02}", path.display()));
        match std::fs::hard_link(path, &to) {
            Ok(()) => {
                std::fs::remove_file(path)
                    .or_else(|e| if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) })
                    .map_err(io(path))?;
                if let Some(dir) = path.parent() {
                    fsync_dir(dir).map_err(io(dir))?;
                }
                return Ok(Some(to));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        }
    }
    tracing::error!(path = %path.display(), "all of .old.00 to .old.99 exist; removing the bad copy instead");
    match std::fs::remove_file(path) {
        Ok(()) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// An upload's parameters (`PUT /files?name=&kind=&size=[&sha256=]`), checked.
#[derive(Debug, PartialEq, Eq)]
pub struct Upload {
    pub name: String,
    pub kind: String,
    pub size: u64,
    /// Lowercase.
    pub sha256: Option<String>,
}

impl Upload {
    /// From the query's pairs and the request's `Content-Length` (`size=` may stand for it;
    /// when both are given they must agree).
    pub fn from_query(pairs: &[(String, String)], content_length: Option<u64>) -> std::result::Result<Upload, String> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let name = get("name").ok_or("name= is required")?;
        if name.is_empty() || name.len() > 255 || name.contains('/') {
            return Err(format!("{name:?} is not a file name (1-255 characters, no '/')"));
        }
        clusterware_shared::ids::check_text("the file name", name).map_err(|e| e.to_string())?;
        let kind = get("kind").unwrap_or("other");
        if !clusterware_shared::api::FILE_KINDS.contains(&kind) {
            return Err(format!("kind {kind:?} is not one of {}", clusterware_shared::api::FILE_KINDS.join(", ")));
        }
        let size = match get("size") {
            Some(s) => s.parse::<u64>().map_err(|_| format!("size {s:?} is not a number"))?,
            None => content_length.ok_or("the upload needs size= or a Content-Length")?,
        };
        if let Some(d) = content_length.filter(|d| *d != size) {
            return Err(format!("Content-Length {d} differs from size={size}"));
        }
        let sha256 = get("sha256");
        if let Some(s) = sha256 {
            if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("sha256 {s:?} is not 64 hex digits"));
            }
        }
        Ok(Upload {
            name: name.to_string(),
            kind: kind.to_string(),
            size,
            sha256: sha256.map(|s| s.to_ascii_lowercase()),
        })
    }
}

/// Starts storage: opens the directory (checked now: a head without its storage does not start),
/// starts the audits and the deletion sweep, and serves the file routes.
pub fn start(ctx: &crate::core::Ctx, identity: &Arc<crate::registry::identity::Identity>) -> Result<Arc<Storage>> {
    let cfg = ctx.config;
    let storage = Storage::open(&cfg.storage_dir, &ctx.me().name, ctx.db.clone(), &ctx.token)?;
    tracing::info!(path = %cfg.storage_dir.display(), "local file storage");
    let (audit, sweep, ttl) = (
        Duration::from_secs(cfg.audit_interval_secs),
        Duration::from_secs(cfg.sweep_interval_secs),
        Duration::from_secs(cfg.deleted_ttl_secs),
    );
    let s = storage.clone();
    ctx.sup.spawn(crate::core::supervisor::Stage::Work, "storage audits", move |stop| {
        storage_loop(s, audit, sweep, ttl, stop)
    });
    ctx.serve(routes::routes(Arc::new(routes::Api {
        storage: storage.clone(),
        creds: ctx.creds.clone(),
        tokens: ctx.tokens.clone(),
        identity: identity.clone(),
    })));
    Ok(storage)
}

/// Audits the local storage at start and every `audit`, and processes the deleted-files list
/// every `sweep`, until shutdown.
async fn storage_loop(
    storage: Arc<Storage>,
    audit: Duration,
    sweep: Duration,
    ttl: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut next_audit = tokio::time::Instant::now();
    loop {
        // Shutdown does not wait for an audit that is hashing a large file.
        tokio::select! {
            r = storage.sweep_deleted(ttl) => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "cannot process the deleted-files list");
                }
            }
            _ = stop.changed() => return,
        }
        if tokio::time::Instant::now() >= next_audit {
            tokio::select! {
                r = storage.audit() => match r {
                    Ok(s) => tracing::info!(files = s.files, missing = s.missing, bad = s.bad, bytes = s.bytes, "storage audited"),
                    Err(e) => tracing::warn!(error = %e, "storage audit failed"),
                },
                _ = stop.changed() => return,
            }
            next_audit = tokio::time::Instant::now() + audit;
        }
        tokio::select! {
            _ = tokio::time::sleep(sweep) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_parameters_are_checked() {
        let q = |s: &[(&str, &str)]| s.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let ok =
            Upload::from_query(&q(&[("name", "vmlinuz"), ("kind", "kernel"), ("sha256", &"AB".repeat(32))]), Some(5));
        assert_eq!(
            ok.unwrap(),
            Upload { name: "vmlinuz".into(), kind: "kernel".into(), size: 5, sha256: Some("ab".repeat(32)) }
        );
        for (pairs, len, want) in [
            (q(&[]), Some(5), "name= is required"),
            (q(&[("name", "a/b")]), Some(5), "is not a file name"),
            (q(&[("name", "")]), Some(5), "is not a file name"),
            (q(&[("name", "a\u{1b}[2Jb")]), Some(5), "the file name contains the control character U+001B at byte 1"),
            (q(&[("name", "a\tb")]), Some(5), "the file name contains the control character U+0009"),
            (q(&[("name", "x"), ("kind", "weird")]), Some(5), "is not one of"),
            (q(&[("name", "x")]), None, "needs size= or a Content-Length"),
            (q(&[("name", "x"), ("size", "ten")]), None, "is not a number"),
            (q(&[("name", "x"), ("size", "6")]), Some(5), "differs from size=6"),
            (q(&[("name", "x"), ("sha256", "00")]), Some(5), "not 64 hex digits"),
        ] {
            let e = Upload::from_query(&pairs, len).unwrap_err();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    /// A verification made right after the file's last change is not trusted (the racy case);
    /// one made later is, for the same stamp and checksum only.
    #[test]
    fn racily_clean_verifications_are_not_trusted() {
        let stamp = Stamp { dev: 1, ino: 2, size: 3, mtime_ns: 1_000_000_000 };
        let soon = Verified { stamp, sha256: "a".into(), at_ns: stamp.mtime_ns + RACY_NS / 2 };
        assert!(!soon.vouches(&stamp, "a"));
        let later = Verified { stamp, sha256: "a".into(), at_ns: stamp.mtime_ns + 2 * RACY_NS };
        assert!(later.vouches(&stamp, "a"));
        assert!(!later.vouches(&stamp, "b"));
        assert!(!later.vouches(&Stamp { ino: 9, ..stamp }, "a"));
    }
    use crate::core::db::embedded::Embedded;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = std::result::Result<Bytes, String>> + Send + use<> {
        let v: Vec<std::result::Result<Bytes, String>> = parts.iter().map(|p| Ok(Bytes::copy_from_slice(p))).collect();
        futures::stream::iter(v)
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
        v.sort();
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn receive_keeps_only_exact_verified_bytes() {
        let d = tempfile::TempDir::new().unwrap();
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let st = Storage::open(d.path(), "h", db, "t").unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let sha = hex::encode(Sha256::digest(b"hello world"));
        // Too many bytes, too few, a broken stream, a wrong checksum: nothing under a final name.
        let e = st.receive(id, chunks(&[b"hello ", b"world!"]), 11, None).await.unwrap_err();
        assert!(e.to_string().contains("more than the declared 11 bytes"), "{e}");
        let e = st.receive(id, chunks(&[b"hello"]), 11, None).await.unwrap_err();
        assert!(e.to_string().contains("5 bytes arrived, 11 declared"), "{e}");
        let broken = futures::stream::iter(vec![Ok(Bytes::from_static(b"hel")), Err("connection reset".to_string())]);
        let e = st.receive(id, broken, 11, None).await.unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
        let e = st.receive(id, chunks(&[b"hello world"]), 11, Some(&"0".repeat(64))).await.unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        assert_eq!(entries(d.path()), [".tmp"]);
        assert!(entries(&d.path().join(".tmp")).is_empty());
        // The right bytes land.
        assert_eq!(st.receive(id, chunks(&[b"hello ", b"world"]), 11, Some(&sha)).await.unwrap(), sha);
        assert_eq!(std::fs::read(d.path().join(id)).unwrap(), b"hello world");
        let rec =
            FileRecord { id: id.into(), name: "x".into(), size: 11, sha256: sha, kind: "other".into(), created: 0 };
        // An older file is verified once, then trusted without hashing.
        let f = std::fs::File::options().write(true).open(d.path().join(id)).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).unwrap();
        st.ensure(&rec, false).await.unwrap();
        assert_eq!(st.counters().hashed_bytes, 11);
        assert!(st.known_good(&rec));
        st.ensure(&rec, false).await.unwrap();
        assert_eq!(st.counters().hashed_bytes, 11);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn links_and_wrong_sizes_are_never_served() {
        let d = tempfile::TempDir::new().unwrap();
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let st = Storage::open(d.path(), "h", db, "t").unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let outside = d.path().join("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, d.path().join(id)).unwrap();
        let rec = FileRecord {
            id: id.into(),
            name: "x".into(),
            size: 6,
            sha256: hex::encode(Sha256::digest(b"secret")),
            kind: "other".into(),
            created: 0,
        };
        assert!(matches!(st.ensure(&rec, false).await, Err(StorageError::NotHere { .. })));
        assert!(std::fs::symlink_metadata(d.path().join(format!("{id}.old.00"))).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret", "the link target is untouched");
    }

    #[test]
    fn quarantine_numbers_up_and_never_overwrites() {
        let d = tempfile::TempDir::new().unwrap();
        let p = d.path().join("f");
        for nn in 0..3 {
            std::fs::write(&p, format!("v{nn}")).unwrap();
            let to = quarantine(&p).unwrap().unwrap();
            assert_eq!(to, d.path().join(format!("f.old.{nn:02}")));
            assert!(!p.exists());
        }
        assert_eq!(std::fs::read_to_string(d.path().join("f.old.00")).unwrap(), "v0");
        assert_eq!(quarantine(&p).unwrap(), None, "already gone");
    }

    #[test]
    fn atomic_write_replaces_whole() {
        let d = tempfile::TempDir::new().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, Some(d.path()), b"one", None).unwrap();
        write_atomic(&p, Some(d.path()), b"two", None).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
