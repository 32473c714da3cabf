//! Boot-file storage on a head: every head keeps a copy of every file (kernel, initramfs, root
//! image, …) under `local_files.path`, named by the file's id, and checks it against the size
//! and SHA-256 in the database before serving it.
//!
//! - **Verification**: what was verified is remembered as (device, inode, size, mtime, ctime)
//!   → checksum, in memory and in `.verified-<head>.json`, and a request hashes a file again only
//!   when one of those changes. ctime is in the stamp because nobody can set it back: a copy
//!   changed behind the head's back and given its old mtime is hashed again.
//! - **Scrub**: bit rot changes no timestamp, so a verification expires. The scrub hashes every
//!   local copy whose last hash is older than `local_files.scrub_interval` again, reading at most
//!   `local_files.scrub_rate` MiB/s, and treats a copy that no longer matches like any other bad
//!   copy (renamed, fetched again); what it found is logged, counted and in `heads ls -l`.
//! - **One check per file**: requests from nodes and from peers, the audit and the scrub take
//!   one file's guard before they hash, rename or write its copy: an async mutex within the head
//!   and an `flock` on `.locks/<id>` among heads that share the directory. A request is served
//!   from the file it opened and verified (or found verified): a rename after that does not
//!   change the bytes it sends. A head asked by a peer does not wait long for the guard and
//!   answers "not here" at once while it is fetching the file itself.
//! - **Quarantine**: a local copy that does not match is renamed `<id>.old.NN` (the next free NN
//!   from 00 to 99; link-then-unlink, so nothing is ever overwritten), then fetched again.
//! - **Peer download**: a head without a good copy asks the other alive heads that do not share
//!   its directory, in random order, whether they have one of the right size (HEAD), downloads
//!   it from the first that does, hashing while it receives, and keeps it only if the checksum
//!   matches; otherwise it tries the next. A head asked by a peer never downloads from peers
//!   itself (no cascade when a file is missing everywhere). Concurrent requests for one file
//!   share one download. Nothing unverified is ever served.
//! - **Shared storage**: the directory holds `.storage-id`, a random id written by the first
//!   head that used it; each head publishes it in its record. Heads with the same id count as
//!   one copy and never download from each other.
//! - **Copies**: an upload (and an import) is acknowledged only once the file is verified on
//!   `local_files.min_copies` storages (by default 2 when the cluster has two or more); the
//!   other alive heads are then asked to fetch it in the background, and each head's audit
//!   fetches whatever it is missing. Each head publishes the ids it holds, their count and bytes
//!   in `storage/<head>`, moments after each change to its files (`publish_loop`) and at
//!   each audit.
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
use clusterware_shared::api::{FileCopies, FileRecord, StorageCounters, StorageSummary, is_file_id};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Unreferenced local files younger than this are left alone (an upload on shared storage may
/// not have written its record yet).
const UNREFERENCED_GRACE: Duration = Duration::from_secs(60);
/// How long a peer may stay silent during a download.
const PEER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request from a peer waits for a file's guard before it answers "not here".
const PEER_GUARD_WAIT: Duration = Duration::from_secs(5);
/// How long an upload waits for each head asked to hold a copy before it is acknowledged.
const COPY_TIMEOUT: Duration = Duration::from_secs(3600);
const CHUNK: usize = 1 << 20;
/// The marker naming a storage directory, shared or not.
const MARKER: &str = ".storage-id";
/// How long the summary waits after a change to the local files before it is published, so
/// that a burst of changes (an import of many files, a sweep) makes one write.
const PUBLISH_DELAY: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no file with id {0}")]
    NotFound(String),
    #[error("file {id} has no good copy here")]
    NotHere { id: String },
    #[error("file {id} ({name}) has no good copy on this head nor on any of the {asked} other heads asked")]
    Unavailable { id: String, name: String, asked: usize },
    /// Fewer heads can hold a copy than the minimum asks for.
    #[error("{0}")]
    TooFewCopies(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage I/O on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A fault of the head itself.
    #[error("{0}")]
    Internal(String),
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
            StorageError::TooFewCopies(_) => ErrorKind::Unavailable,
            StorageError::Invalid(_) => ErrorKind::BadRequest,
            StorageError::Io { .. } | StorageError::Internal(_) => ErrorKind::Internal,
            StorageError::Db(e) => e.kind(),
        }
    }

    fn degraded(&self) -> bool {
        matches!(self, StorageError::Db(e) if e.degraded())
    }
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io { path: path.to_path_buf(), source }
}

/// What identifies one version of a file on disk. ctime is there because no user can set it
/// back: whoever writes a copy and restores its mtime still changes its ctime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Verified {
    stamp: Stamp,
    sha256: String,
    /// Wall-clock time of the last hash of every byte, in ns since the epoch (the scrub hashes
    /// again what is older than its interval).
    at_ns: i64,
    /// This head wrote these bytes while hashing them (an upload or a download), and took the
    /// stamp after the rename: the racy window below does not apply.
    #[serde(default)]
    written: bool,
}

/// A file changed less than this before it was verified may have been changed again within
/// the same timestamp tick without its stamp changing (git's "racily clean" problem): such a
/// verification is not trusted, and the file is hashed again at the next request.
const RACY_NS: i64 = 100_000_000;

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl Verified {
    fn new(stamp: Stamp, sha256: String, written: bool) -> Verified {
        Verified { stamp, sha256, at_ns: now_ns(), written }
    }

    /// Whether this verification still vouches for a file with this stamp and checksum.
    fn vouches(&self, stamp: &Stamp, sha256: &str) -> bool {
        self.stamp == *stamp
            && self.sha256 == sha256
            && (self.written || self.at_ns - stamp.mtime_ns.max(stamp.ctime_ns) > RACY_NS)
    }
}

/// What a check of the local copy found.
#[derive(Debug)]
enum Local {
    /// Verified: the file, opened and at its start.
    Good(std::fs::File),
    Missing,
    /// It did not match and was renamed `.old.NN`.
    Bad,
}

/// How a check reads the copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Trust a verification of the same stamp.
    Cached,
    /// Hash every byte again, at most this many bytes per second (the scrub).
    Scrub(u64),
}

#[derive(Default)]
struct Counters {
    hashed_bytes: AtomicU64,
    peer_requests: AtomicU64,
    peer_downloads: AtomicU64,
    peer_rejects: AtomicU64,
    quarantined: AtomicU64,
    audits: AtomicU64,
    scrubbed_bytes: AtomicU64,
    scrub_bad: AtomicU64,
    scrubs: AtomicU64,
}

/// What storage is configured to do (`local_files.*`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Storages an upload must be verified on before it is acknowledged; 0: 2 when the cluster
    /// has two or more.
    pub min_copies: u32,
    /// The longest time a local copy goes without being hashed again.
    pub scrub_interval: Duration,
    /// Bytes per second the scrub reads at most.
    pub scrub_rate: u64,
    /// Transfers to nodes at once (`local_files.max_transfers`; 0: no limit).
    pub max_transfers: u32,
    /// Bytes per second those transfers send together (0: no limit).
    pub max_rate: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            min_copies: 0,
            scrub_interval: Duration::from_secs(7 * 86_400),
            scrub_rate: 64 << 20,
            max_transfers: 128,
            max_rate: 0,
        }
    }
}

type LockMap = Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>;

/// The right to check, rename or write one file's copy: within the head and among the heads
/// that share the directory. Released on drop.
struct Guard {
    id: String,
    locks: LockMap,
    _flock: nix::fcntl::Flock<std::fs::File>,
    _inner: tokio::sync::OwnedMutexGuard<()>,
}

fn forget_lock(locks: &LockMap, id: &str, holders: usize) {
    let mut m = lock(locks);
    if m.get(id).is_some_and(|a| Arc::strong_count(a) <= holders) {
        m.remove(id);
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The map's and this guard's: nobody else waits.
        forget_lock(&self.locks, &self.id, 2);
    }
}

/// Marks a file as being fetched from peers while it lives.
struct Fetching<'a>(&'a Mutex<HashSet<String>>, String);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        lock(self.0).remove(&self.1);
    }
}

/// One head's storage.
pub struct Storage {
    dir: PathBuf,
    tmp: PathBuf,
    locks_dir: PathBuf,
    head: String,
    /// The id in the directory's marker (the same for heads sharing it).
    storage_id: String,
    settings: Settings,
    db: Database,
    verified: Mutex<HashMap<String, Verified>>,
    /// The verification cache changed since it was last saved.
    verified_dirty: AtomicBool,
    locks: LockMap,
    /// Files this head is downloading from peers now.
    fetching: Mutex<HashSet<String>>,
    /// Other heads, for boot file contents.
    peers: Peers,
    /// Other heads, asked to take a copy (a call that lasts as long as the download).
    copiers: Peers,
    counters: Arc<Counters>,
    complaints: crate::core::complaints::Complaints,
    /// Where quarantines and copies fetched from peers are recorded (set at start).
    events: std::sync::OnceLock<crate::core::events::EventLog>,
    /// The records read last, by id: while the database has no quorum, a file whose copy was
    /// verified against its record is still served.
    records: Mutex<HashMap<String, FileRecord>>,
    /// Every file record, followed from the database (set at start): a node's request for a
    /// file this head holds a verified copy of is answered without a database read
    /// ([`Storage::served_record`]).
    followed: std::sync::OnceLock<Arc<crate::core::follow::Mirror<FileRecord>>>,
    /// The summary last published in `storage/<head>`, and whether the files held may have
    /// changed since.
    published: tokio::sync::Mutex<Option<StorageSummary>>,
    held_dirty: AtomicBool,
    /// Wakes the publisher ([`publish_loop`]) after a change to the local files.
    changed: tokio::sync::Notify,
    /// When the last scrub that hashed anything ended, seconds since the epoch.
    scrubbed_at: AtomicU64,
    /// How many root images go to nodes at once, and how fast ([`crate::core::admission`]).
    pub admission: crate::core::admission::Admission,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Hashes what is left of a reader, at most `rate` bytes per second when given; stops early
/// when `stop` is set. Returns (size, hex SHA-256).
/// `counted` gets every chunk's size as it is hashed.
fn hash_reader(
    r: &mut impl Read,
    rate: Option<u64>,
    stop: &AtomicBool,
    counted: &[&AtomicU64],
) -> std::io::Result<(u64, String)> {
    let started = std::time::Instant::now();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("stopped"));
        }
        let got = r.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
        for c in counted {
            c.fetch_add(got as u64, Ordering::Relaxed);
        }
        if let Some(rate) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Opens a copy for reading without following a link and without blocking on a FIFO.
fn open_copy(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK).open(path)
}

/// Sets a flag when dropped (a blocking hash whose caller went away stops).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The id of a storage directory: read from its marker, or written there first (creating the
/// directory). Heads that share the directory read the same id.
pub fn storage_id(dir: &Path) -> Result<String> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let marker = dir.join(MARKER);
    for _ in 0..50 {
        match std::fs::read_to_string(&marker) {
            Ok(s) if is_file_id(s.trim()) => return Ok(s.trim().to_string()),
            // Another head is writing it (create then write): read again.
            Ok(s) if s.is_empty() => std::thread::sleep(Duration::from_millis(20)),
            Ok(s) => {
                return Err(StorageError::Internal(format!(
                    "{} holds {:?}, not a storage id: remove it (a new id is written at the next start)",
                    marker.display(),
                    s.chars().take(40).collect::<String>()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let id = format!("{:032x}", rand::random::<u128>());
                match std::fs::OpenOptions::new().write(true).create_new(true).open(&marker) {
                    Ok(mut f) => {
                        f.write_all(id.as_bytes()).and_then(|()| f.sync_all()).map_err(io(&marker))?;
                        fsync_dir(dir).map_err(io(dir))?;
                        return Ok(id);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(io(&marker)(e)),
                }
            }
            Err(e) => return Err(io(&marker)(e)),
        }
    }
    Err(StorageError::Internal(format!("{} stays empty: remove it", marker.display())))
}

use clusterware_shared::fsutil::{fsync_dir, write_atomic};

/// The heads in the database: every record, and the names of the alive ones.
struct HeadsNow {
    all: Vec<HeadRecord>,
    alive: HashSet<String>,
}

impl Storage {
    /// Opens the storage directory (creating it), removes this head's leftover temporary files
    /// and loads what it verified before.
    /// `head_token`: the heads' credential, which peer downloads carry (a root image is served
    /// only to heads, nodes and administrators).
    /// Records a file event (once the head's event log is set).
    fn event(&self, subject: String, message: String) {
        if let Some(ev) = self.events.get() {
            ev.record(clusterware_shared::api::EventKind::File, subject, message);
        }
    }

    pub fn open(dir: &Path, head: &str, db: Database, head_token: &str) -> Result<Arc<Storage>> {
        Storage::open_with(dir, head, db, head_token, Settings::default())
    }

    pub fn open_with(
        dir: &Path,
        head: &str,
        db: Database,
        head_token: &str,
        settings: Settings,
    ) -> Result<Arc<Storage>> {
        let storage_id = storage_id(dir)?;
        let tmp = dir.join(".tmp");
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let locks_dir = dir.join(".locks");
        std::fs::create_dir_all(&locks_dir).map_err(io(&locks_dir))?;
        let prefix = format!("{head}-");
        for e in std::fs::read_dir(&tmp).map_err(io(&tmp))?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                // Partial uploads and downloads, and import staging directories.
                let _ = std::fs::remove_file(e.path()).or_else(|_| std::fs::remove_dir_all(e.path()));
            }
        }
        // A cache from before ctime was in the stamp does not read: everything is hashed again.
        let verified = std::fs::read(dir.join(format!(".verified-{head}.json")))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Ok(Arc::new(Storage {
            events: std::sync::OnceLock::new(),
            dir: dir.to_path_buf(),
            tmp,
            locks_dir,
            head: head.to_string(),
            storage_id,
            db,
            verified: Mutex::new(verified),
            verified_dirty: AtomicBool::new(false),
            locks: LockMap::default(),
            fetching: Mutex::new(HashSet::new()),
            peers: Peers::new(Some(head_token), crate::core::peers::timeouts(PEER_READ_TIMEOUT.as_secs())),
            copiers: Peers::new(
                Some(head_token),
                clusterware_client::Timeouts {
                    request: COPY_TIMEOUT,
                    ..crate::core::peers::timeouts(PEER_READ_TIMEOUT.as_secs())
                },
            ),
            counters: Arc::default(),
            complaints: Default::default(),
            records: Mutex::new(HashMap::new()),
            followed: std::sync::OnceLock::new(),
            published: tokio::sync::Mutex::new(None),
            held_dirty: AtomicBool::new(true),
            changed: tokio::sync::Notify::new(),
            scrubbed_at: AtomicU64::new(0),
            admission: crate::core::admission::Admission::new(settings.max_transfers, settings.max_rate),
            settings,
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
            scrubbed_bytes: c.scrubbed_bytes.load(Ordering::Relaxed),
            scrub_bad: c.scrub_bad.load(Ordering::Relaxed),
            scrubs: c.scrubs.load(Ordering::Relaxed),
            transfers_active: self.admission.active(),
            transfers_waiting: self.admission.waiting(),
            transfers_refused: self.admission.refused(),
            max_transfers: self.admission.limit(),
        }
    }

    pub fn count_peer_request(&self) {
        self.counters.peer_requests.fetch_add(1, Ordering::Relaxed);
    }

    fn remember(&self, id: &str, v: Verified) {
        lock(&self.verified).insert(id.to_string(), v);
        self.verified_dirty.store(true, Ordering::Relaxed);
        self.note_change();
    }

    fn forget(&self, id: &str) {
        if lock(&self.verified).remove(id).is_some() {
            self.verified_dirty.store(true, Ordering::Relaxed);
            self.note_change();
        }
    }

    /// The files held, or their records, may have changed: the summary is published again soon
    /// (by the publisher, coalesced; see [`Storage::publish`]).
    pub fn note_change(&self) {
        self.held_dirty.store(true, Ordering::Relaxed);
        // One stored permit at most: a burst of changes wakes the publisher once.
        self.changed.notify_one();
    }

    fn vouched(&self, id: &str, stamp: &Stamp, sha256: &str) -> bool {
        lock(&self.verified).get(id).is_some_and(|v| v.vouches(stamp, sha256))
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
            .map_err(|e| StorageError::Internal(format!("corrupt record for file {id}: {e}")))?;
        lock(&self.records).insert(id.to_string(), rec.clone());
        Ok(rec)
    }

    /// The record of a file a node asks for: the followed record when this head holds a copy
    /// verified against it (no database read: in a boot storm every node asks for each boot
    /// file, and asks again after every refusal), otherwise the database's, as [`record`]
    /// (a file just uploaded and not followed yet, a copy to hash or to fetch from a peer: the
    /// record is then known current before anything is done by it). Records never change once
    /// written; a deleted one is followed within moments, and its copies go at the next sweep.
    ///
    /// With the followed record comes the copy it vouched for, already open (the request is
    /// served from it: not opened and checked a second time); with the database's, none.
    ///
    /// [`record`]: Storage::record
    pub async fn served_record(&self, id: &str) -> Result<(FileRecord, Option<std::fs::File>)> {
        let followed = self.followed.get().filter(|_| is_file_id(id)).and_then(|m| m.get(id));
        if let Some(rec) = followed
            && let Some(f) = self.open_known_good(&rec)
        {
            return Ok((FileRecord::clone(&rec), Some(f)));
        }
        Ok((self.record(id).await?, None))
    }

    /// Follows the file records from now on ([`served_record`](Storage::served_record)).
    pub fn follow_records(&self, db: Database, sup: &crate::core::supervisor::Supervisor) {
        let _ = self.followed.set(crate::core::follow::Mirror::spawn(db, FILES, sup));
    }

    pub async fn list(&self) -> Result<Vec<FileRecord>> {
        let (kvs, _) = self.db.range(FILES).await?;
        let mut out: Vec<FileRecord> = kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
        // The records a head serves by while the database has no quorum (audits list them all).
        *lock(&self.records) = out.iter().map(|r| (r.id.clone(), r.clone())).collect();
        Ok(out)
    }

    /// True when the local copy is known good without reading it.
    fn known_good(&self, rec: &FileRecord) -> bool {
        self.open_known_good(rec).is_some()
    }

    /// The local copy opened, when a verification vouches for the file opened.
    fn open_known_good(&self, rec: &FileRecord) -> Option<std::fs::File> {
        let f = open_copy(&self.path(&rec.id)).ok()?;
        let m = f.metadata().ok()?;
        (m.file_type().is_file() && m.len() == rec.size && self.vouched(&rec.id, &Stamp::of(&m), &rec.sha256))
            .then_some(f)
    }

    /// Takes one file's guard: `wait` bounds the wait (`None` when it ran out).
    async fn guard(&self, id: &str, wait: Option<Duration>) -> Result<Option<Guard>> {
        let deadline = wait.map(|w| tokio::time::Instant::now() + w);
        let m = lock(&self.locks).entry(id.to_string()).or_default().clone();
        let inner = match deadline {
            None => Some(m.lock_owned().await),
            Some(d) => tokio::time::timeout_at(d, m.lock_owned()).await.ok(),
        };
        let flock = match &inner {
            Some(_) => self.flock(id, deadline).await,
            None => Ok(None),
        };
        match (inner, flock) {
            (Some(inner), Ok(Some(flock))) => {
                Ok(Some(Guard { id: id.to_string(), locks: self.locks.clone(), _flock: flock, _inner: inner }))
            }
            (inner, r) => {
                // Not taken: the entry goes unless someone else waits on it.
                drop(inner);
                forget_lock(&self.locks, id, 1);
                r.map(|_| None)
            }
        }
    }

    /// Creates `.locks/<id>` with the copy it guards, so that the directory does not change
    /// later when a check first takes the guard; it goes with the copy (`delete_local`).
    fn lock_file_for(&self, id: &str) -> Result<()> {
        let path = self.locks_dir.join(id);
        std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        Ok(())
    }

    /// The `flock` on `.locks/<id>` (polled: a head sharing the directory holds it for a check or
    /// a download); `None` when `deadline` passed first.
    async fn flock(
        &self,
        id: &str,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<nix::fcntl::Flock<std::fs::File>>> {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.locks_dir.join(id);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(flock) => return Ok(Some(flock)),
                Err((_, nix::errno::Errno::EWOULDBLOCK))
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) =>
                {
                    return Ok(None);
                }
                Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                    file = f;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err((_, e)) => return Err(io(&path)(e.into())),
            }
        }
    }

    /// Checks the local copy (the caller holds its guard), hashing it unless a verification
    /// of this very version vouches for it (or always, for the scrub); a copy that does not
    /// match is quarantined.
    async fn check_local(&self, rec: &FileRecord, how: Check) -> Result<Local> {
        let path = self.path(&rec.id);
        let opened = match open_copy(&path) {
            Ok(f) => Some(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Local::Missing),
            // A link.
            Err(e) if e.raw_os_error() == Some(nix::libc::ELOOP) => None,
            Err(e) => return Err(io(&path)(e)),
        };
        if let Some(f) = opened {
            let m = f.metadata().map_err(io(&path))?;
            let stamp = Stamp::of(&m);
            if m.file_type().is_file() && m.len() == rec.size {
                if how == Check::Cached && self.vouched(&rec.id, &stamp, &rec.sha256) {
                    return Ok(Local::Good(f));
                }
                let rate = match how {
                    Check::Cached => None,
                    Check::Scrub(r) => Some(r),
                };
                let stop = Arc::new(AtomicBool::new(false));
                let _stop = StopOnDrop(stop.clone());
                let counters = self.counters.clone();
                let (f, hashed) = tokio::task::spawn_blocking(move || {
                    let mut f = f;
                    let counted: &[&AtomicU64] = match rate {
                        None => &[&counters.hashed_bytes],
                        Some(_) => &[&counters.hashed_bytes, &counters.scrubbed_bytes],
                    };
                    let r = hash_reader(&mut f, rate, &stop, counted);
                    (f, r)
                })
                .await
                .map_err(|e| StorageError::Internal(format!("hashing task failed: {e}")))?;
                let (n, sha) = hashed.map_err(io(&path))?;
                // The stamp must be the one of the bytes just hashed.
                let m2 = f.metadata().map_err(io(&path))?;
                if sha == rec.sha256 && n == rec.size && Stamp::of(&m2) == stamp {
                    if let Some(m) = crate::core::metrics::on() {
                        m.file_verifications.get_or_create(&[("result", "ok")]).inc();
                    }
                    self.remember(&rec.id, Verified::new(stamp, sha, false));
                    let mut f = f;
                    f.rewind().map_err(io(&path))?;
                    return Ok(Local::Good(f));
                }
            }
        }
        self.forget(&rec.id);
        if let Some(m) = crate::core::metrics::on() {
            m.file_verifications.get_or_create(&[("result", "bad")]).inc();
        }
        match quarantine(&path)? {
            Some(to) => {
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                if matches!(how, Check::Scrub(_)) {
                    self.counters.scrub_bad.fetch_add(1, Ordering::Relaxed);
                }
                tracing::warn!(file = %rec.id, name = %rec.name, renamed = %to.display(), scrub = matches!(how, Check::Scrub(_)), "local copy does not match its size and checksum; renamed");
                self.event(
                    format!("{} ({})", rec.name, rec.id),
                    format!(
                        "the copy on {} does not match its size and checksum: quarantined as {}",
                        self.head,
                        to.display()
                    ),
                );
            }
            None => tracing::info!(file = %rec.id, "bad local copy already moved away"),
        }
        Ok(Local::Bad)
    }

    /// A verified copy, opened: the bytes served are the ones verified, whatever is renamed
    /// later. With `from_peers`, a missing or bad copy is fetched from another head; without (a
    /// peer is asking), it is not, and a file this head is fetching itself is "not here".
    /// Concurrent calls for one file share the work.
    pub async fn open_verified(self: &Arc<Self>, rec: &FileRecord, from_peers: bool) -> Result<std::fs::File> {
        if let Some(f) = self.open_known_good(rec) {
            return Ok(f);
        }
        let not_here = || StorageError::NotHere { id: rec.id.clone() };
        if !from_peers && lock(&self.fetching).contains(&rec.id) {
            return Err(not_here());
        }
        let Some(_guard) = self.guard(&rec.id, (!from_peers).then_some(PEER_GUARD_WAIT)).await? else {
            return Err(not_here());
        };
        match self.check_local(rec, Check::Cached).await? {
            Local::Good(f) => {
                self.persist_verified();
                Ok(f)
            }
            Local::Missing | Local::Bad if !from_peers => Err(not_here()),
            Local::Missing | Local::Bad => self.fetch_locked(rec).await,
        }
    }

    /// Fetches a copy from the peers; the caller holds the file's guard.
    async fn fetch_locked(&self, rec: &FileRecord) -> Result<std::fs::File> {
        lock(&self.fetching).insert(rec.id.clone());
        let _fetching = Fetching(&self.fetching, rec.id.clone());
        if let Some(asked) = self.fetch_from_peers(rec).await? {
            return Err(StorageError::Unavailable { id: rec.id.clone(), name: rec.name.clone(), asked });
        }
        self.persist_verified();
        self.open_known_good(rec).ok_or_else(|| {
            StorageError::Internal(format!("file {} changed right after it was downloaded and verified", rec.id))
        })
    }

    /// Makes sure a verified copy is here (fetching it from a peer if need be).
    pub async fn ensure(self: &Arc<Self>, rec: &FileRecord) -> Result<()> {
        self.open_verified(rec, true).await.map(drop)
    }

    /// The heads in the database now.
    async fn heads_now(&self) -> Result<HeadsNow> {
        let (heads, _) = self.db.range(HEADS).await?;
        let (alive, _) = self.db.range(ALIVE).await?;
        Ok(HeadsNow {
            all: heads.iter().filter_map(|kv| serde_json::from_slice::<HeadRecord>(&kv.value).ok()).collect(),
            alive: alive.iter().filter_map(|kv| kv.key.strip_prefix(ALIVE)).map(str::to_string).collect(),
        })
    }

    /// Whether a head keeps its files in this head's directory.
    fn shares_mine(&self, h: &HeadRecord) -> bool {
        h.storage_id.as_deref() == Some(self.storage_id.as_str())
    }

    /// The other alive heads with storage of their own, in random order.
    async fn peers(&self) -> Result<Vec<HeadRecord>> {
        Ok(self.peers_in(&self.heads_now().await?))
    }

    /// [`Storage::peers`] among heads read already.
    fn peers_in(&self, now: &HeadsNow) -> Vec<HeadRecord> {
        let mut out: Vec<HeadRecord> = now
            .all
            .iter()
            .filter(|h| h.name != self.head && now.alive.contains(&h.name) && !self.shares_mine(h))
            .cloned()
            .collect();
        use rand::seq::SliceRandom;
        out.shuffle(&mut rand::rng());
        out
    }

    /// The storages an upload must be verified on: `min_copies`, or 2 by default, and never more
    /// than the cluster's heads have (heads sharing a directory count once).
    fn needed_copies(&self, heads: &[HeadRecord]) -> usize {
        let storages: BTreeSet<&str> =
            heads.iter().map(|h| h.storage_id.as_deref().unwrap_or(h.name.as_str())).collect();
        let want = if self.settings.min_copies == 0 { 2 } else { self.settings.min_copies as usize };
        want.min(storages.len().max(1)).max(1)
    }

    /// The minimum of copies of a file for the cluster as it is now.
    pub async fn min_copies(&self) -> Result<usize> {
        Ok(self.needed_copies(&self.heads_now().await?.all))
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
                    if let Some(m) = crate::core::metrics::on() {
                        m.peer_downloads.get_or_create(&[("result", "ok")]).inc();
                    }
                    tracing::info!(file = %rec.id, name = %rec.name, peer = %p.name, bytes = rec.size, "downloaded from peer");
                    self.event(
                        format!("{} ({})", rec.name, rec.id),
                        format!("{} fetched a verified copy from {}", self.head, p.name),
                    );
                    return Ok(None);
                }
                Err(e) => {
                    self.counters.peer_rejects.fetch_add(1, Ordering::Relaxed);
                    if let Some(m) = crate::core::metrics::on() {
                        m.peer_downloads.get_or_create(&[("result", "failed")]).inc();
                    }
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
        self.lock_file_for(id)?;
        let m = std::fs::symlink_metadata(&dest).map_err(io(&dest))?;
        self.remember(id, Verified::new(Stamp::of(&m), sha.clone(), true));
        Ok(sha)
    }

    /// Refuses, before anything is read, an upload that could not reach its minimum of copies
    /// with the heads alive now.
    pub async fn check_copies_possible(&self, what: &str) -> Result<()> {
        let now = self.heads_now().await?;
        let need = self.needed_copies(&now.all);
        let mut storages: BTreeSet<&str> = BTreeSet::from([self.storage_id.as_str()]);
        for h in now.all.iter().filter(|h| now.alive.contains(&h.name) && h.name != self.head) {
            storages.insert(h.storage_id.as_deref().unwrap_or(h.name.as_str()));
        }
        if storages.len() < need {
            return Err(StorageError::TooFewCopies(format!(
                "{what} needs a verified copy on {need} heads with storage of their own before it is acknowledged \
                 (local_files.min_copies), and only {} such heads are alive; nothing was stored. Start the other \
                 heads, or set local_files.min_copies = 1 in base.ini to accept a single copy",
                storages.len()
            )));
        }
        Ok(())
    }

    /// Has the file verified on its minimum of storages (this one and others asked one by one),
    /// then asks every other alive head to fetch it too, in the background. Returns the heads
    /// that hold it now.
    pub async fn replicate(self: &Arc<Self>, rec: &FileRecord) -> Result<Vec<String>> {
        let now = self.heads_now().await?;
        let (peers, need) = (self.peers_in(&now), self.needed_copies(&now.all));
        let mut holders = vec![self.head.clone()];
        let mut storages: BTreeSet<String> = BTreeSet::from([self.storage_id.clone()]);
        let mut failures = Vec::new();
        let mut rest = Vec::new();
        for p in peers {
            let sid = p.storage_id.clone().unwrap_or_else(|| p.name.clone());
            if storages.len() >= need || storages.contains(&sid) {
                rest.push(p);
                continue;
            }
            let asked = match self.copiers.to(&p.api_url) {
                Ok(c) => c.fetch_file(&rec.id).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match asked {
                Ok(_) => {
                    holders.push(p.name.clone());
                    storages.insert(sid);
                }
                Err(e) => {
                    tracing::warn!(file = %rec.id, peer = %p.name, error = %e, "a head could not take a copy");
                    failures.push(format!("{}: {e}", p.name));
                }
            }
        }
        if storages.len() < need {
            return Err(StorageError::TooFewCopies(format!(
                "file {} ({}) was verified on {} of the {need} heads it needs (local_files.min_copies){}",
                rec.id,
                rec.name,
                storages.len(),
                if failures.is_empty() { String::new() } else { format!(": {}", failures.join("; ")) }
            )));
        }
        for p in rest {
            let Ok(c) = self.copiers.to(&p.api_url) else { continue };
            let id = rec.id.clone();
            tokio::spawn(async move {
                match c.fetch_file(&id).await {
                    Ok(_) => tracing::debug!(file = %id, peer = %p.name, "copy made in the background"),
                    Err(e) => {
                        tracing::info!(file = %id, peer = %p.name, error = %e, "background copy failed; its audit fetches it later")
                    }
                }
            });
        }
        Ok(holders)
    }

    /// Stores an upload, records it in the database, and acknowledges it once it is verified
    /// on its minimum of storages; an upload that cannot reach that is deleted again. An upload
    /// of the same bytes (size and SHA-256), name and kind as a file already recorded is that
    /// file: its copy is dropped and the existing record returned, nothing changed
    /// ([`Uploaded::reused`]).
    pub async fn upload<S, E>(
        self: &Arc<Self>,
        name: &str,
        kind: &str,
        size: u64,
        expected: Option<&str>,
        body: S,
    ) -> Result<Uploaded>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.check_copies_possible(&format!("the upload of {name}")).await?;
        let id = format!("{:032x}", rand::random::<u128>());
        let sha = self.receive(&id, body, size, expected).await?;
        let same = match self.list().await {
            Ok(files) => {
                files.into_iter().find(|f| f.sha256 == sha && f.size == size && f.name == name && f.kind == kind)
            }
            Err(e) => {
                self.delete_local(&id);
                return Err(e);
            }
        };
        if let Some(rec) = same {
            self.delete_local(&id);
            self.persist_verified();
            tracing::info!(file = %rec.id, name = %rec.name, "upload is the same as a recorded file; that file is kept, the new copy dropped");
            return Ok(Uploaded { rec, reused: true });
        }
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
                lock(&self.records).insert(id.clone(), rec.clone());
                // Counted only now that its record exists.
                self.note_change();
            }
            other => {
                // No record, so no file: remove the bytes.
                self.delete_local(&id);
                return match other {
                    Err(e) => Err(e.into()),
                    Ok(_) => Err(StorageError::Internal(format!("file id {id} already exists"))),
                };
            }
        }
        self.publish().await;
        match self.replicate(&rec).await {
            Ok(holders) => {
                tracing::info!(file = %id, name = %rec.name, heads = %crate::core::listed(&holders), "upload verified on its minimum of heads");
                Ok(Uploaded { rec, reused: false })
            }
            Err(e) => {
                if let Err(d) = self.delete(&id).await {
                    tracing::error!(file = %id, error = %d, "cannot delete an upload that was not acknowledged");
                }
                Err(e)
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
        self.lock_file_for(id)?;
        let m = std::fs::symlink_metadata(&dest).map_err(io(&dest))?;
        self.remember(id, Verified::new(Stamp::of(&m), sha256.to_string(), true));
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
        // Its guard's lock file: nobody takes the guard of a file without a record (requests
        // stop at the record, the audit leaves files pending deletion alone).
        let _ = std::fs::remove_file(self.locks_dir.join(id));
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
        tracing::info!(file = %id, name = %rec.name, others = %crate::core::listed(&entry.pending), "file deleted");
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

    pub fn head(&self) -> &str {
        &self.head
    }

    /// Logs, in bounded number, that a node's request found no good copy (a peer's request
    /// finding none is routine; the head's own faults are logged with the answer).
    pub fn complain(&self, rec: &FileRecord, from: std::net::SocketAddr, peer: bool, e: &StorageError) {
        if peer || !matches!(e, StorageError::Unavailable { .. } | StorageError::NotHere { .. }) {
            return;
        }
        self.complaints.complain(format!("file {}", rec.id), || {
            tracing::warn!(file = %rec.id, name = %rec.name, %from, error = %e, "a request for a boot file found no good copy on any head");
        });
    }

    /// Where each file is, from the heads' reports: the heads holding it, its distinct copies,
    /// and whether that is under the minimum (which is returned too).
    pub async fn copies(&self, files: &[FileRecord]) -> Result<(BTreeMap<String, FileCopies>, u32)> {
        let now = self.heads_now().await?;
        let need = self.needed_copies(&now.all);
        let storage_of: HashMap<&str, &str> =
            now.all.iter().map(|h| (h.name.as_str(), h.storage_id.as_deref().unwrap_or(h.name.as_str()))).collect();
        let (sums, _) = self.db.range(schema::SUMMARY).await?;
        let mut holders: HashMap<String, Vec<String>> = HashMap::new();
        for kv in &sums {
            // Heads no longer in the cluster (ejected, left) hold nothing it can use.
            let Some(head) = kv.key.strip_prefix(schema::SUMMARY).filter(|h| storage_of.contains_key(h)) else {
                continue;
            };
            let Ok(sum) = serde_json::from_slice::<StorageSummary>(&kv.value) else { continue };
            for id in sum.held {
                holders.entry(id).or_default().push(head.to_string());
            }
        }
        let mut out = BTreeMap::new();
        for f in files {
            let mut heads = holders.remove(&f.id).unwrap_or_default();
            heads.sort();
            let copies = heads
                .iter()
                .map(|h| storage_of.get(h.as_str()).copied().unwrap_or(h.as_str()))
                .collect::<BTreeSet<_>>()
                .len() as u32;
            out.insert(f.id.clone(), FileCopies { heads, copies, under_minimum: (copies as usize) < need });
        }
        Ok((out, need as u32))
    }

    /// For `/metrics`: the files no alive head holds a verified copy of (as the heads' summaries
    /// say), and the files under the minimum of copies.
    pub async fn unservable(&self) -> Result<(u64, u64)> {
        let files = self.list().await?;
        let (copies, _) = self.copies(&files).await?;
        let alive = self.heads_now().await?.alive;
        let none = copies.values().filter(|c| !c.heads.iter().any(|h| alive.contains(h))).count() as u64;
        let under = copies.values().filter(|c| c.under_minimum).count() as u64;
        Ok((none, under))
    }

    /// The ids of the files this head holds a verified copy of, sorted.
    fn held_ids(&self) -> Vec<String> {
        let cache: Vec<(String, Stamp)> = lock(&self.verified).iter().map(|(k, v)| (k.clone(), v.stamp)).collect();
        let mut held: Vec<String> = cache
            .into_iter()
            .filter(|(id, stamp)| {
                is_file_id(id)
                    && std::fs::symlink_metadata(self.path(id))
                        .is_ok_and(|m| m.file_type().is_file() && Stamp::of(&m) == *stamp)
            })
            .map(|(id, _)| id)
            .collect();
        held.sort();
        held
    }

    /// Writes `storage/<head>` (the ids held now with their count and bytes, the last audit's
    /// bad copies and time, the last scrub) when it changed; `audit` gives the counts, else they
    /// are counted from the files held now and the records.
    async fn publish_summary(&self, audit: Option<StorageSummary>) -> Result<()> {
        let mut last = self.published.lock().await;
        let held = self.held_ids();
        let mut s = match audit {
            Some(a) => a,
            None => {
                let records = self.list().await?;
                let sizes: HashMap<&str, u64> = records.iter().map(|r| (r.id.as_str(), r.size)).collect();
                let mut s = last.clone().unwrap_or_default();
                (s.files, s.bytes) = (0, 0);
                for size in held.iter().filter_map(|id| sizes.get(id.as_str())) {
                    s.files += 1;
                    s.bytes += size;
                }
                s.missing = records.len() as u64 - s.files;
                s
            }
        };
        s.held = held;
        s.scrub_bad = self.counters.scrub_bad.load(Ordering::Relaxed);
        s.scrubbed = self.scrubbed_at.load(Ordering::Relaxed);
        if let Some(old) = last.as_ref() {
            // The time of an audit that changed nothing is not worth a write.
            if (StorageSummary { audited: old.audited, ..s.clone() }) == *old {
                return Ok(());
            }
        }
        self.db.put(&schema::summary(&self.head), serde_json::to_vec(&s).expect("serialises")).await?;
        *last = Some(s);
        Ok(())
    }

    /// Publishes the summary, when the files held may have changed. One publish runs at a time
    /// (the others wait for it, then find nothing left to do).
    pub async fn publish(&self) {
        if !self.held_dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        if let Err(e) = self.publish_summary(None).await {
            self.held_dirty.store(true, Ordering::Relaxed);
            tracing::debug!(error = %e, "cannot publish the files this head holds yet");
        }
    }

    /// Checks every file the database names and fetches those missing or bad here, renames
    /// unreferenced local files `.old.NN`, and records the summary in `storage/<head>`.
    pub async fn audit(self: &Arc<Self>) -> Result<StorageSummary> {
        let files = self.list().await?;
        let mut s = StorageSummary::default();
        for rec in &files {
            let Some(_guard) = self.guard(&rec.id, None).await? else { continue };
            let found = self.check_local(rec, Check::Cached).await?;
            let good = match found {
                Local::Good(_) => true,
                Local::Missing | Local::Bad => {
                    if matches!(found, Local::Bad) {
                        s.bad += 1;
                    }
                    match self.fetch_locked(rec).await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::debug!(file = %rec.id, error = %e, "audit: no good copy to fetch");
                            false
                        }
                    }
                }
            };
            if good {
                s.files += 1;
                s.bytes += rec.size;
            } else {
                s.missing += 1;
            }
        }
        let (deleted, _) = self.db.range(DELETED).await?;
        let pending_here: Vec<String> = deleted
            .iter()
            .filter_map(|kv| serde_json::from_slice::<DeletedEntry>(&kv.value).ok())
            .filter(|e| e.pending.contains(&self.head))
            .map(|e| e.file.id)
            .collect();
        let known: HashSet<&str> = files.iter().map(|f| f.id.as_str()).collect();
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
            let Some(_guard) = self.guard(&name, None).await? else { continue };
            self.forget(&name);
            if let Some(to) = quarantine(&e.path())? {
                self.counters.quarantined.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(file = %name, renamed = %to.display(), "local file is not referenced by the database; renamed (remove it once you are sure it is not needed)");
                self.event(
                    name.clone(),
                    format!("a file on {} that no record names was quarantined as {}", self.head, to.display()),
                );
            }
        }
        self.persist_verified();
        s.audited = now();
        self.held_dirty.store(false, Ordering::Relaxed);
        self.publish_summary(Some(s.clone())).await?;
        self.counters.audits.fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }

    /// Hashes again every local copy whose last hash is older than the scrub interval, at the
    /// scrub's rate; a copy that no longer matches is renamed and fetched again. Returns (files,
    /// bytes, bad).
    pub async fn scrub(self: &Arc<Self>) -> Result<(u64, u64, u64)> {
        let horizon = now_ns() - self.settings.scrub_interval.as_nanos() as i64;
        let due = |id: &str| lock(&self.verified).get(id).is_none_or(|v| v.at_ns < horizon);
        let (mut files, mut bytes, mut bad) = (0, 0, 0);
        for rec in self.list().await? {
            if !due(&rec.id) || std::fs::symlink_metadata(self.path(&rec.id)).is_err() {
                continue;
            }
            let Some(_guard) = self.guard(&rec.id, None).await? else { continue };
            // Another check may have hashed it while this one waited.
            if !due(&rec.id) {
                continue;
            }
            match self.check_local(&rec, Check::Scrub(self.settings.scrub_rate)).await? {
                Local::Good(_) => {
                    files += 1;
                    bytes += rec.size;
                }
                Local::Missing => {}
                Local::Bad => {
                    bad += 1;
                    match self.fetch_locked(&rec).await {
                        Ok(_) => {
                            tracing::info!(file = %rec.id, name = %rec.name, "scrub: bad copy replaced by a verified one from a peer")
                        }
                        Err(e) => {
                            tracing::warn!(file = %rec.id, name = %rec.name, error = %e, "scrub: bad copy renamed and no good copy found")
                        }
                    }
                }
            }
            self.persist_verified();
        }
        self.counters.scrubs.fetch_add(1, Ordering::Relaxed);
        if files + bad > 0 {
            self.scrubbed_at.store(now(), Ordering::Relaxed);
            self.held_dirty.store(true, Ordering::Relaxed);
            self.publish().await;
        }
        Ok((files, bytes, bad))
    }
}

/// What an upload gave.
#[derive(Debug)]
pub struct Uploaded {
    pub rec: FileRecord,
    /// The bytes, name and kind were those of a file already recorded: `rec` is that file's.
    pub reused: bool,
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
                if let Some(m) = crate::core::metrics::on() {
                    m.file_quarantines.inc();
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
/// starts the audits, the scrub and the deletion sweep, and serves the file routes.
pub fn start(ctx: &crate::core::Ctx, identity: &Arc<crate::registry::identity::Identity>) -> Result<Arc<Storage>> {
    let cfg = ctx.config;
    let settings = Settings {
        min_copies: cfg.min_copies,
        scrub_interval: Duration::from_secs(cfg.scrub_interval_secs),
        scrub_rate: cfg.scrub_rate_mib << 20,
        max_transfers: cfg.max_transfers,
        max_rate: cfg.max_rate_mib << 20,
    };
    let storage = Storage::open_with(&cfg.storage_dir, &ctx.me().name, ctx.db.clone(), &ctx.token, settings)?;
    let _ = storage.events.set(ctx.events.clone());
    storage.follow_records(ctx.db.clone(), ctx.sup);
    tracing::info!(path = %cfg.storage_dir.display(), storage_id = %storage.storage_id, "local file storage");
    let (audit, sweep, ttl) = (
        Duration::from_secs(cfg.audit_interval_secs),
        Duration::from_secs(cfg.sweep_interval_secs),
        Duration::from_secs(cfg.deleted_ttl_secs),
    );
    let s = storage.clone();
    ctx.sup.spawn(crate::core::supervisor::Stage::Work, "storage audits", move |stop| {
        storage_loop(s, audit, sweep, ttl, stop)
    });
    let s = storage.clone();
    ctx.sup.spawn(crate::core::supervisor::Stage::Work, "storage summary", move |stop| publish_loop(s, stop));
    if cfg.scrub_interval_secs > 0 {
        let s = storage.clone();
        ctx.sup.spawn(crate::core::supervisor::Stage::Work, "storage scrub", move |stop| scrub_loop(s, stop));
    }
    let s = storage.clone();
    ctx.on_scrape(move || {
        let s = s.clone();
        async move {
            if let (Some(m), Ok((none, under))) = (crate::core::metrics::on(), s.unservable().await) {
                m.files_unservable.set(none as i64);
                m.files_under_minimum.set(under as i64);
                m.file_transfers.set(s.admission.active() as i64);
            }
        }
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
/// (and publishes the files held) every `sweep`, until shutdown.
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
            _ = storage.publish() => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(sweep) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Publishes the storage summary [`PUBLISH_DELAY`] after a change to the local files (an
/// upload, an import, a deletion, a copy fetched from a peer, a quarantine), until shutdown:
/// the changes of a burst are published together, by one task, so at most one publish is in
/// flight whatever the rate of changes; the audit's figures are no longer minutes old.
async fn publish_loop(storage: Arc<Storage>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = storage.changed.notified() => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(PUBLISH_DELAY) => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            _ = storage.publish() => {}
            _ = stop.changed() => return,
        }
    }
}

/// Scrubs what is due every so often (a twentieth of the interval, between 1 s and a minute),
/// until shutdown.
async fn scrub_loop(storage: Arc<Storage>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = (storage.settings.scrub_interval / 20).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        tokio::select! {
            r = storage.scrub() => match r {
                Ok((0, _, 0)) => {}
                Ok((files, bytes, 0)) => tracing::info!(files, bytes, "storage scrubbed: every copy still matches"),
                Ok((files, bytes, bad)) => tracing::warn!(files, bytes, bad, "storage scrubbed: copies that no longer matched were renamed .old.NN and fetched again"),
                Err(e) => tracing::warn!(error = %e, "storage scrub failed"),
            },
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

    /// A verification made right after the file's last change is not trusted (the racy case)
    /// unless this head wrote the bytes itself; one made later is, for the same stamp and
    /// checksum only (ctime included).
    #[test]
    fn racily_clean_verifications_are_not_trusted() {
        let stamp = Stamp { dev: 1, ino: 2, size: 3, mtime_ns: 1_000_000_000, ctime_ns: 1_000_000_000 };
        let soon = Verified { stamp, sha256: "a".into(), at_ns: stamp.mtime_ns + RACY_NS / 2, written: false };
        assert!(!soon.vouches(&stamp, "a"));
        assert!(Verified { written: true, ..soon.clone() }.vouches(&stamp, "a"));
        let later = Verified { stamp, sha256: "a".into(), at_ns: stamp.mtime_ns + 2 * RACY_NS, written: false };
        assert!(later.vouches(&stamp, "a"));
        assert!(!later.vouches(&stamp, "b"));
        assert!(!later.vouches(&Stamp { ino: 9, ..stamp }, "a"));
        assert!(!later.vouches(&Stamp { ctime_ns: stamp.ctime_ns + 1, ..stamp }, "a"), "a changed ctime");
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
        assert_eq!(entries(d.path()), [".locks", ".storage-id", ".tmp"]);
        assert!(entries(&d.path().join(".tmp")).is_empty());
        // The right bytes land.
        assert_eq!(st.receive(id, chunks(&[b"hello ", b"world"]), 11, Some(&sha)).await.unwrap(), sha);
        assert_eq!(std::fs::read(d.path().join(id)).unwrap(), b"hello world");
        let rec =
            FileRecord { id: id.into(), name: "x".into(), size: 11, sha256: sha, kind: "other".into(), created: 0 };
        // An older file is verified once, then trusted without hashing.
        let f = std::fs::File::options().write(true).open(d.path().join(id)).unwrap();
        f.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).unwrap();
        tokio::time::sleep(Duration::from_nanos(2 * RACY_NS as u64)).await;
        st.open_verified(&rec, false).await.unwrap();
        assert_eq!(st.counters().hashed_bytes, 11);
        assert!(st.known_good(&rec));
        st.open_verified(&rec, false).await.unwrap();
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
        assert!(matches!(st.open_verified(&rec, false).await, Err(StorageError::NotHere { .. })));
        assert!(std::fs::symlink_metadata(d.path().join(format!("{id}.old.00"))).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read(&outside).unwrap(), b"secret", "the link target is untouched");
    }

    /// A stored, verified file older than the racy window: (storage, record, path).
    async fn verified_file(d: &Path, settings: Settings) -> (Arc<Storage>, FileRecord, PathBuf) {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let st = Storage::open_with(d, "h", db, "t", settings).unwrap();
        let id = "0123456789abcdef0123456789abcdef";
        let data = vec![7u8; 300_000];
        let sha = st.receive(id, chunks(&[&data]), data.len() as u64, None).await.unwrap();
        let p = d.join(id);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        // Past the racy window of that change (its ctime).
        tokio::time::sleep(Duration::from_nanos(2 * RACY_NS as u64)).await;
        let rec = FileRecord {
            id: id.into(),
            name: "x".into(),
            size: 300_000,
            sha256: sha,
            kind: "rootfs".into(),
            created: 0,
        };
        st.open_verified(&rec, false).await.unwrap();
        assert!(st.known_good(&rec));
        (st, rec, p)
    }

    /// A node's request for a file this head holds verified is answered from the followed record,
    /// without reading the database; a copy that no longer vouches, or a record not followed
    /// yet, sends it to the database; a deleted record stops being served once followed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_verified_file_is_served_by_its_followed_record() {
        let d = tempfile::TempDir::new().unwrap();
        let (st, rec, p) = verified_file(d.path(), Settings::default()).await;
        let sup = crate::core::supervisor::Supervisor::new();
        st.follow_records(st.db.clone(), &sup);
        let followed = st.followed.get().unwrap().clone();
        let key = schema::file(&rec.id);
        let read = |st: &Storage| lock(&st.records).contains_key(&rec.id);
        let until = |present: bool| {
            let followed = followed.clone();
            let id = rec.id.clone();
            async move {
                while followed.get(&id).is_some() != present {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        };
        // Not in the database: not followed, so the database is asked, and has none.
        assert!(matches!(st.served_record(&rec.id).await, Err(StorageError::NotFound(_))));
        st.db.put(&key, serde_json::to_vec(&rec).unwrap()).await.unwrap();
        until(true).await;
        let (got, opened) = st.served_record(&rec.id).await.unwrap();
        assert_eq!(got.sha256, rec.sha256);
        assert!(opened.is_some(), "the verified copy comes open");
        assert!(!read(&st), "answered without reading the record from the database");
        // Deleted: refused once followed, though a verified copy is still here.
        st.db.delete(&key).await.unwrap();
        until(false).await;
        assert!(st.known_good(&rec));
        assert!(matches!(st.served_record(&rec.id).await, Err(StorageError::NotFound(_))));
        // A copy that no longer vouches: the record comes from the database.
        st.db.put(&key, serde_json::to_vec(&rec).unwrap()).await.unwrap();
        until(true).await;
        assert_eq!(st.served_record(&rec.id).await.unwrap().0.sha256, rec.sha256);
        assert!(!read(&st));
        corrupt_keeping_mtime(&p);
        let (got, opened) = st.served_record(&rec.id).await.unwrap();
        assert_eq!(got.sha256, rec.sha256);
        assert!(opened.is_none(), "nothing vouched for: the copy is left to be checked");
        assert!(read(&st), "the record was read from the database");
        sup.shutdown(Duration::from_secs(5)).await;
    }

    /// Flips a byte and puts the mtime back, as `touch -r` does.
    fn corrupt_keeping_mtime(p: &Path) {
        let mtime = std::fs::metadata(p).unwrap().modified().unwrap();
        let f = std::fs::File::options().write(true).open(p).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, &[8u8], 4242).unwrap();
        f.set_modified(mtime).unwrap();
    }

    /// A copy changed behind the head's back with its mtime put back is hashed again (its ctime
    /// changed), renamed and never served; the start-up audit of a restarted head does the same.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupted_copy_with_its_mtime_restored_is_not_served() {
        let d = tempfile::TempDir::new().unwrap();
        let (st, rec, p) = verified_file(d.path(), Settings::default()).await;
        st.persist_verified();
        corrupt_keeping_mtime(&p);
        assert!(!st.known_good(&rec));
        // A restarted head reads the saved cache: it does not vouch either.
        let st2 = Storage::open(d.path(), "h", st.db.clone(), "t").unwrap();
        assert!(!st2.known_good(&rec));
        assert!(matches!(st.open_verified(&rec, false).await, Err(StorageError::NotHere { .. })));
        assert_eq!(entries(d.path()).iter().filter(|n| n.contains(".old.")).count(), 1);
    }

    /// Bit rot changes no stamp at all (here: the verification forged to vouch for the rotten
    /// copy, as a cache does once the disk changed underneath): requests trust it, the scrub does
    /// not, renames it and counts it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_scrub_finds_what_the_cache_vouches_for() {
        let d = tempfile::TempDir::new().unwrap();
        let settings = Settings { scrub_interval: Duration::from_secs(3600), ..Settings::default() };
        let (st, rec, p) = verified_file(d.path(), settings).await;
        // Nothing is due within the interval.
        assert_eq!(st.scrub().await.unwrap(), (0, 0, 0));
        corrupt_keeping_mtime(&p);
        let m = std::fs::metadata(&p).unwrap();
        let old = now_ns() - 2 * 3600 * 1_000_000_000;
        st.remember(&rec.id, Verified { stamp: Stamp::of(&m), sha256: rec.sha256.clone(), at_ns: old, written: true });
        assert!(st.known_good(&rec), "the forged verification vouches");
        // The file is in the database for the scrub to find.
        let key = schema::file(&rec.id);
        st.db.put(&key, serde_json::to_vec(&rec).unwrap()).await.unwrap();
        let (files, _, bad) = st.scrub().await.unwrap();
        assert_eq!((files, bad), (0, 1));
        assert_eq!(st.counters().scrub_bad, 1);
        assert!(st.counters().scrubbed_bytes >= 300_000);
        assert!(!p.exists());
        assert_eq!(entries(d.path()).iter().filter(|n| n.contains(".old.")).count(), 1);
    }

    /// Requests of both kinds, the audit and the scrub, on one bad copy at once, on two heads
    /// that share the directory: one check, one rename, and only "not here" answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_check_and_one_rename_whoever_asks() {
        let d = tempfile::TempDir::new().unwrap();
        let settings = Settings { scrub_interval: Duration::ZERO, ..Settings::default() };
        let (st, rec, p) = verified_file(d.path(), settings.clone()).await;
        st.db.put(&schema::file(&rec.id), serde_json::to_vec(&rec).unwrap()).await.unwrap();
        let other = Storage::open_with(d.path(), "h2", st.db.clone(), "t", settings).unwrap();
        assert_eq!(other.storage_id, st.storage_id, "one directory, one id");
        corrupt_keeping_mtime(&p);
        let mut tasks = Vec::new();
        for i in 0..24 {
            let s = if i % 2 == 0 { st.clone() } else { other.clone() };
            let rec = rec.clone();
            tasks.push(tokio::spawn(async move {
                match i % 4 {
                    0 | 1 => s.open_verified(&rec, i % 4 == 0).await.map(drop),
                    2 => s.audit().await.map(drop),
                    _ => s.scrub().await.map(drop),
                }
            }));
        }
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) | Err(StorageError::NotHere { .. } | StorageError::Unavailable { .. }) => {}
                Err(e) => panic!("a request failed otherwise: {e}"),
            }
        }
        let olds: Vec<String> = entries(d.path()).into_iter().filter(|n| n.contains(".old.")).collect();
        assert_eq!(olds, [format!("{}.old.00", rec.id)]);
        assert_eq!(st.counters().quarantined + other.counters().quarantined, 1);
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
