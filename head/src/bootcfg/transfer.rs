//! Export and import of a boot configuration between clusters.
//!
//! An export is a POSIX tar archive (inspectable with `tar tvf`): first `manifest.json` (format,
//! version, the boot config, its image, and every file's name, kind, size and SHA-256), then one
//! entry `files/<id>` per file. It is produced as a stream, so memory stays bounded whatever
//! the image size.
//!
//! An import reads the archive as a stream too. The manifest comes first and is checked before
//! any file data is read: format version, names, conflicts with what exists here (a conflict
//! names the option that resolves it), free space for what will be stored. Then each entry must
//! be a regular file named `files/<id>` of the manifest, once, of the manifest's size; its bytes
//! are hashed (and, when the file is not already here, written to a private staging directory
//! under `.tmp`). Only when every file of the manifest has arrived intact are the new files moved
//! into storage and the database changed, in one transaction. A refused archive leaves nothing
//! outside the staging directory, which is removed. The archive's own headers are bounded
//! before they are read: a GNU long name or link, or a PAX header, larger than 64 KiB, and a
//! path longer than 4 KiB, are refused.

use crate::bootcfg::{self, BootError, encode};
use crate::core::db::{Compare, Database, Txn, TxnOp};
use crate::core::error::RecordError;
use crate::core::schema;
use crate::core::schema::FILES;
use crate::core::unix_now as now;
use crate::storage::Storage;
use bytes::Bytes;
use clusterware_shared::api::{
    BootConfig, FILE_KINDS, FileRecord, Image, ImportReport, ImportedFile, is_file_id, valid_object_name,
};
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

/// The format name and the version this code writes and reads.
pub const FORMAT: &str = "clusterware-boot-export";
pub const VERSION: u32 = 1;
const MANIFEST: &str = "manifest.json";
const MAX_MANIFEST: u64 = 1 << 20;
/// Space left free in the storage directory after an import.
const SPACE_MARGIN: u64 = 64 << 20;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub version: u32,
    pub created: u64,
    pub boot_config: BootConfig,
    pub image: Option<Image>,
    pub files: Vec<FileRecord>,
}

/// A refusal; the message may quote archive bytes, so it is kept to one printable line.
fn bad(m: impl Into<String>) -> BootError {
    let m: String =
        m.into().chars().map(|c| if c.is_control() || c == '\u{fffd}' { '?' } else { c }).take(300).collect();
    BootError::from(RecordError::Invalid(format!("archive refused: {m}")))
}

/// How much of a file an export reads at a time: each block is read from the file straight into
/// the buffer that becomes the response body's chunk (no copy in between).
const EXPORT_BLOCK: usize = 1 << 20;
/// Blocks an export reads ahead of the client (so at most this many MiB in memory).
const EXPORT_AHEAD: usize = 8;
const TAR_PAD: [u8; TAR_BLOCK] = [0; TAR_BLOCK];

/// Writes the export's archive to `tx` as blocks: a ustar header, then the entry's bytes padded
/// to 512, for the manifest and every file, then the two zero blocks that end a tar archive.
/// The same bytes as `tar::Builder::append_data` for each entry and `finish`, without their
/// copies: a file is read into the block that is sent. Fails if a file is shorter than its
/// record (a copy changed after it was opened verified) or the client went away.
fn send_archive(
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Bytes>>,
    manifest: &[u8],
    created: u64,
    files: &[(FileRecord, std::fs::File)],
) -> std::io::Result<()> {
    let send = |b: Vec<u8>| {
        tx.blocking_send(Ok(Bytes::from(b)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    };
    let new_block = || Vec::with_capacity(EXPORT_BLOCK + 3 * TAR_BLOCK);
    let add_header = |v: &mut Vec<u8>, path: &str, size: u64, mtime: u64| -> std::io::Result<()> {
        let mut h = header(size, mtime);
        h.set_path(path)?;
        h.set_cksum();
        v.extend_from_slice(h.as_bytes());
        Ok(())
    };
    let pad = |v: &mut Vec<u8>, size: u64| {
        let rem = (size % TAR_BLOCK as u64) as usize;
        if rem != 0 {
            v.extend_from_slice(&TAR_PAD[rem..]);
        }
    };
    // What is not sent yet: an entry's last bytes go out with the next header.
    let mut block = new_block();
    add_header(&mut block, MANIFEST, manifest.len() as u64, created)?;
    block.extend_from_slice(manifest);
    pad(&mut block, manifest.len() as u64);
    for (rec, file) in files {
        let mut f = file;
        f.rewind()?;
        add_header(&mut block, &format!("files/{}", rec.id), rec.size, rec.created)?;
        let mut left = rec.size;
        while left > 0 {
            let at = block.len();
            let want = left.min(EXPORT_BLOCK.saturating_sub(at).max(TAR_BLOCK) as u64) as usize;
            block.resize(at + want, 0);
            f.read_exact(&mut block[at..]).map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("file {} unreadable after {} bytes: {e}", rec.id, rec.size - left),
                )
            })?;
            left -= want as u64;
            if left > 0 {
                send(std::mem::replace(&mut block, new_block()))?;
            }
        }
        pad(&mut block, rec.size);
    }
    // The end of the archive: two zero blocks.
    block.extend_from_slice(&TAR_PAD);
    block.extend_from_slice(&TAR_PAD);
    send(block)
}

fn header(size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// The archive of a boot config, as a stream of bytes.
pub async fn export(
    db: &Database,
    storage: &Arc<Storage>,
    name: &str,
) -> Result<impl Stream<Item = std::io::Result<Bytes>> + use<>, BootError> {
    let d = bootcfg::detail(db, name).await?;
    let mut needed = vec![d.boot_config.kernel.clone(), d.boot_config.initramfs.clone()];
    if let Some(i) = &d.image {
        needed.push(i.rootfs.clone());
        needed.extend(i.extra_files.clone());
    }
    for id in &needed {
        if !d.files.iter().any(|f| &f.id == id) {
            return Err(BootError::from(RecordError::NotFound(format!(
                "file {id} of boot config {name} has no record; it cannot be exported"
            ))));
        }
    }
    // Each file opened once verified: the archive carries the bytes that were checked.
    let mut opened = Vec::new();
    for f in &d.files {
        opened.push((f.clone(), storage.open_verified(f, true).await?));
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        version: VERSION,
        created: now(),
        boot_config: d.boot_config.clone(),
        image: d.image.clone(),
        files: d.files.clone(),
    };
    let body = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_AHEAD);
    let name = name.to_string();
    tokio::task::spawn_blocking(move || match send_archive(&tx, &body, manifest.created, &opened) {
        Ok(()) => tracing::info!(boot_config = %name, files = opened.len(), "boot config exported"),
        Err(e) => {
            tracing::warn!(boot_config = %name, error = %e, "export stopped");
            let _ = tx.blocking_send(Err(e));
        }
    });
    Ok(tokio_stream_from(rx))
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What the administrator asked of an import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    pub image: Option<String>,
    pub boot_config: Option<String>,
    pub no_recurse: bool,
    pub dry_run: bool,
}

/// Checks the manifest on its own: format, version, names, ids, references.
fn check_manifest(m: &Manifest) -> Result<(), BootError> {
    if m.format != FORMAT {
        return Err(bad(format!("not a ClusterWare boot-config export (format {:?})", m.format)));
    }
    if m.version != VERSION {
        return Err(bad(format!(
            "made by a newer ClusterWare (export format version {}); this ClusterWare reads version {VERSION}",
            m.version
        )));
    }
    if !valid_object_name(&m.boot_config.name) {
        return Err(bad(format!("invalid boot config name {:?}", m.boot_config.name)));
    }
    let text = |field: &str, v: &str| clusterware_shared::ids::check_text(field, v).map_err(|e| bad(e.to_string()));
    text("the manifest's boot config description", &m.boot_config.description)?;
    text("the manifest's kernel command line", &m.boot_config.cmdline)?;
    if let Some(i) = &m.image {
        text("the manifest's image description", &i.description)?;
    }
    let mut ids = HashSet::new();
    for f in &m.files {
        text(&format!("the manifest's name of file {}", f.id), &f.name)?;
        if !is_file_id(&f.id) || f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("malformed file entry {:?} in the manifest", f.id)));
        }
        if !FILE_KINDS.contains(&f.kind.as_str()) || f.name.is_empty() || f.name.contains('/') || f.name.len() > 255 {
            return Err(bad(format!("file {} has an invalid name or kind", f.id)));
        }
        if !ids.insert(f.id.as_str()) {
            return Err(bad(format!("file {} is listed twice in the manifest", f.id)));
        }
    }
    let mut refs = vec![("kernel", &m.boot_config.kernel), ("initramfs", &m.boot_config.initramfs)];
    if let Some(i) = &m.image {
        if !valid_object_name(&i.name) || m.boot_config.image.as_deref() != Some(i.name.as_str()) {
            return Err(bad(format!("image {:?} does not match the boot config", i.name)));
        }
        refs.push(("root filesystem", &i.rootfs));
        refs.extend(i.extra_files.iter().map(|f| ("extra file", f)));
    }
    for (what, id) in refs {
        if !ids.contains(id.as_str()) {
            return Err(bad(format!("the {what} {id} is not among the manifest's files")));
        }
    }
    Ok(())
}

/// The decisions taken before any file data is read.
struct Plan {
    config_name: String,
    image_name: Option<String>,
    /// Archive file id → id on this cluster, for the files the import needs.
    ids: HashMap<String, String>,
    /// Archive ids of the files to store (the others needed are reused).
    store: HashSet<String>,
}

async fn plan(db: &Database, m: &Manifest, o: &ImportOptions) -> Result<Plan, BootError> {
    if o.no_recurse && o.image.is_some() {
        return Err(BootError::from(RecordError::Invalid("--image and --no-recurse exclude each other".into())));
    }
    let config_name = o.boot_config.clone().unwrap_or_else(|| m.boot_config.name.clone());
    if !valid_object_name(&config_name) {
        return Err(BootError::from(RecordError::Invalid(format!("invalid boot config name {config_name:?}"))));
    }
    // Every conflict at once, each with the option that resolves it: a dry run shows all an
    // administrator has to decide.
    let mut conflicts = Vec::new();
    if db.get(&schema::bootconfig(&config_name)).await?.is_some() {
        let opt = if o.boot_config.is_some() { "another --boot-config NAME" } else { "--boot-config NEW_NAME" };
        conflicts.push(format!("boot config {config_name} already exists (import with {opt})"));
    }
    let image_name = match (&m.image, o.no_recurse) {
        (Some(i), false) => {
            let n = o.image.clone().unwrap_or_else(|| i.name.clone());
            if !valid_object_name(&n) {
                return Err(BootError::from(RecordError::Invalid(format!("invalid image name {n:?}"))));
            }
            if db.get(&schema::image(&n)).await?.is_some() {
                let opt = if o.image.is_some() { "another --image NAME" } else { "--image NEW_NAME" };
                conflicts.push(format!(
                    "image {n} already exists (import with {opt}, or --no-recurse to import the boot config without \
                     its image)"
                ));
            }
            Some(n)
        }
        _ => None,
    };
    if !conflicts.is_empty() {
        return Err(BootError::from(RecordError::Conflict(format!("{}; nothing was imported", conflicts.join("; ")))));
    }
    let mut needed = vec![m.boot_config.kernel.clone(), m.boot_config.initramfs.clone()];
    if let (Some(i), Some(_)) = (&m.image, &image_name) {
        needed.push(i.rootfs.clone());
        needed.extend(i.extra_files.clone());
    }
    let (existing, _) = db.range(FILES).await?;
    let existing: Vec<FileRecord> = existing.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
    let mut ids = HashMap::new();
    let mut store = HashSet::new();
    for id in needed {
        if ids.contains_key(&id) {
            continue;
        }
        let rec = m.files.iter().find(|f| f.id == id).expect("checked by check_manifest");
        match existing.iter().find(|e| e.sha256 == rec.sha256 && e.size == rec.size) {
            Some(e) => {
                ids.insert(id, e.id.clone());
            }
            None => {
                ids.insert(id.clone(), format!("{:032x}", rand::random::<u128>()));
                store.insert(id);
            }
        }
    }
    Ok(Plan { config_name, image_name, ids, store })
}

/// Imports an archive read from `body`.
pub async fn import<S, E>(
    db: &Database,
    storage: &Arc<Storage>,
    body: S,
    o: ImportOptions,
) -> Result<ImportReport, BootError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    if !o.dry_run {
        storage.check_copies_possible("the import").await?;
    }
    let reader = tokio_util::io::StreamReader::new(body.map(|r| r.map_err(|e| std::io::Error::other(e.to_string()))));
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let staging = storage.new_staging("import")?;
    let (db2, st2, stg2) = (db.clone(), storage.clone(), staging.clone());
    let handle = tokio::runtime::Handle::current();
    let r = tokio::task::spawn_blocking(move || import_blocking(&handle, &db2, &st2, reader, &stg2, &o))
        .await
        .map_err(|e| BootError::from(RecordError::Invalid(format!("import task failed: {e}"))));
    let _ = std::fs::remove_dir_all(&staging);
    let report = r??;
    if !report.dry_run {
        // Acknowledged only once every new file is verified on its minimum of heads; else undone.
        for f in report.files.iter().filter(|f| f.action == "added") {
            let copied = match storage.record(&f.id).await {
                Ok(rec) => storage.replicate(&rec).await.map(drop),
                Err(e) => Err(e),
            };
            if let Err(e) = copied {
                undo_import(db, storage, &report).await;
                return Err(e.into());
            }
        }
    }
    Ok(report)
}

/// Removes what an import created (its boot config, its image, the files it added).
async fn undo_import(db: &Database, storage: &Arc<Storage>, report: &ImportReport) {
    if let Err(e) = bootcfg::delete_config(db, storage, &report.boot_config, true).await {
        tracing::error!(boot_config = %report.boot_config, error = %e, "cannot undo an import that was not acknowledged");
    }
    if let Some(image) = &report.image {
        if let Err(e) = bootcfg::delete_image(db, storage, image, true).await {
            tracing::error!(%image, error = %e, "cannot undo an import that was not acknowledged");
        }
    }
    for f in report.files.iter().filter(|f| f.action == "added") {
        match storage.delete(&f.id).await {
            Ok(_) | Err(crate::storage::StorageError::NotFound(_)) => {}
            Err(e) => tracing::error!(file = %f.id, error = %e, "cannot undo an import that was not acknowledged"),
        }
    }
    tracing::warn!(boot_config = %report.boot_config, "import undone: its files could not be verified on their minimum of heads");
}

const BLOCK: usize = 1 << 20;
/// Blocks each consumer of an entry may have waiting.
const AHEAD: usize = 8;

/// One consumer of an entry's blocks on a thread of its own: the blocks are shared, not copied.
struct Pipe<T> {
    tx: Option<std::sync::mpsc::SyncSender<Bytes>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<T>>>,
}

impl<T: Send + 'static> Pipe<T> {
    fn spawn(
        name: &str,
        f: impl FnOnce(std::sync::mpsc::Receiver<Bytes>) -> std::io::Result<T> + Send + 'static,
    ) -> Result<Pipe<T>, BootError> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(AHEAD);
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || f(rx))
            .map_err(|e| bad(format!("staging: {e}")))?;
        Ok(Pipe { tx: Some(tx), thread: Some(thread) })
    }

    /// False once the thread stopped (its error comes from `finish`).
    fn send(&self, block: Bytes) -> bool {
        self.tx.as_ref().is_some_and(|tx| tx.send(block).is_ok())
    }

    fn finish(&mut self) -> std::io::Result<T> {
        drop(self.tx.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("its thread failed")),
            None => Err(std::io::Error::other("finished already")),
        }
    }
}

impl<T> Drop for Pipe<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Where an entry's bytes go: its SHA-256, and the staged copy when the file is stored, each on
/// a thread of its own, so that hashing, disk writes and the reading of the next bytes overlap.
/// The staged copy is fsynced by [`StagedFile::finish`].
struct EntrySink {
    hash: Pipe<String>,
    file: Option<StagedFile>,
}

/// A staged file being written (with early writeback) and fsynced on its own thread.
struct StagedFile(Pipe<()>);

impl StagedFile {
    fn finish(mut self) -> Result<(), BootError> {
        self.0.finish().map_err(|e| bad(format!("staging: {e}")))
    }
}

/// Alignment (of memory, file offset and length) that direct I/O needs; 4096 covers disks with
/// 4 KiB logical blocks.
const DIRECT_ALIGN: usize = 4096;

/// Writes a staged file from its blocks and fsyncs it. Whole aligned blocks go through `direct`
/// (the file opened with `O_DIRECT`, when the file system allows it): from the block straight
/// to the disk, without a copy into the page cache and without taking fresh page-cache memory
/// for a file nobody reads soon (an image is read when nodes boot, or by the next audit).
/// The rest (an entry's last block, or every block where direct I/O is refused) is written
/// through the page cache, with early writeback.
fn write_staged(
    file: std::fs::File,
    mut direct: Option<std::fs::File>,
    rx: std::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<()> {
    use std::io::{Seek, Write};
    use std::os::unix::fs::FileExt;
    let mut plain = clusterware_shared::fsutil::EarlyWriteback::new(file);
    let mut at = 0u64;
    for block in rx {
        let aligned = block.as_ptr().align_offset(DIRECT_ALIGN) == 0
            && block.len().is_multiple_of(DIRECT_ALIGN)
            && at.is_multiple_of(DIRECT_ALIGN as u64);
        let mut written = false;
        if let Some(d) = direct.as_ref().filter(|_| aligned) {
            match d.write_all_at(&block, at) {
                Ok(()) => written = true,
                // Direct I/O refused after all (alignment, file system): the page cache then.
                Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EINVAL as i32) => direct = None,
                Err(e) => return Err(e),
            }
        }
        if !written {
            if plain.get_ref().stream_position()? != at {
                let mut f = plain.get_ref();
                f.seek(std::io::SeekFrom::Start(at))?;
            }
            plain.write_all(&block)?;
        }
        at += block.len() as u64;
    }
    drop(direct);
    plain.into_inner().sync_all()
}

impl EntrySink {
    fn new(staged: Option<&Path>) -> Result<EntrySink, BootError> {
        let hash = Pipe::spawn("import-hash", |rx| {
            let mut h = Sha256::new();
            for block in rx {
                h.update(&block);
            }
            Ok(hex::encode(h.finalize()))
        })?;
        let file = match staged {
            None => None,
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(path)
                    .map_err(|e| bad(format!("staging: {e}")))?;
                // The same file for direct I/O, where the file system has it.
                let direct = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
                    .open(path)
                    .ok();
                Some(StagedFile(Pipe::spawn("import-writer", move |rx| write_staged(file, direct, rx))?))
            }
        };
        Ok(EntrySink { hash, file })
    }

    fn send(&mut self, block: Bytes) -> Result<(), BootError> {
        let written = match &self.file {
            Some(f) => f.0.send(block.clone()),
            None => true,
        };
        if !written {
            let e = self.file.take().map(|mut f| f.0.finish());
            return Err(bad(format!(
                "staging: {}",
                e.and_then(Result::err).map_or("the writer stopped".into(), |e| e.to_string())
            )));
        }
        if !self.hash.send(block) {
            return Err(bad("the hashing thread stopped"));
        }
        Ok(())
    }

    /// The entry's SHA-256 once every block is hashed, and its staged file (still being written).
    fn finish(mut self) -> Result<(String, Option<StagedFile>), BootError> {
        let sum = self.hash.finish().map_err(|e| bad(format!("hashing: {e}")))?;
        Ok((sum, self.file.take()))
    }
}

/// At most this much of a refused archive is read (and discarded) so that the client, which
/// sends the whole body before it reads the answer, gets the error instead of a broken pipe.
const DRAIN_LIMIT: u64 = 64 << 30;
/// Longest path an archive entry may have.
const MAX_PATH: usize = 4 << 10;
/// Largest GNU long-name or long-link entry, and largest PAX extension header (local or global).
const MAX_EXTENSION: u64 = 64 << 10;
const TAR_BLOCK: usize = 512;

/// The archive as the tar crate reads it, with the bound the crate lacks: it reads a GNU long
/// name or link and a PAX extension header whole into memory, whatever size its header claims.
/// This reader follows the archive header by header as the bytes pass and refuses such an entry
/// larger than [`MAX_EXTENSION`] before any byte of it is passed on (and a GNU sparse entry,
/// whose extension blocks the crate reads itself: the import takes regular files only).
///
/// It sees the layout as the crate does: a header of 512 bytes (the crate's own parsing of its
/// type and size, base-256 included), then the entry's data, whose size is the header's or, for
/// an entry after a PAX header, that header's `size` record, rounded up to 512 bytes. A block
/// whose checksum is wrong is passed on as it is (the crate refuses it).
struct BoundedHeaders<R> {
    inner: R,
    /// Bytes of the current entry's data and padding still to pass before the next header.
    data_left: u64,
    /// The next header, as far as it has passed.
    header: [u8; TAR_BLOCK],
    have: usize,
    /// The body of the PAX header passing now (its padding excluded), kept for its `size`.
    pax: Option<(Vec<u8>, u64)>,
    /// The data size a PAX header set for the next entry that is not an extension.
    pax_size: Option<u64>,
    /// Once refused, every later read fails with the same message.
    refused: Option<String>,
}

impl<R: Read> BoundedHeaders<R> {
    fn new(inner: R) -> Self {
        BoundedHeaders {
            inner,
            data_left: 0,
            header: [0; TAR_BLOCK],
            have: 0,
            pax: None,
            pax_size: None,
            refused: None,
        }
    }

    /// Takes in a complete header: where the next one is, or why the archive is refused.
    fn on_header(&mut self) -> Result<(), String> {
        let h = tar::Header::from_byte_slice(&self.header);
        let sum = self.header[..148].iter().chain(&self.header[156..]).map(|b| u32::from(*b)).sum::<u32>() + 8 * 32;
        if self.header.iter().all(|b| *b == 0) || h.cksum().ok() != Some(sum) {
            // The end of the archive, or a block the crate refuses.
            return Ok(());
        }
        let kind = h.entry_type();
        let what = match kind {
            tar::EntryType::GNULongName => Some("a GNU long name"),
            tar::EntryType::GNULongLink => Some("a GNU long link name"),
            tar::EntryType::XHeader => Some("a PAX extension header"),
            tar::EntryType::XGlobalHeader => Some("a PAX global extension header"),
            _ => None,
        };
        if kind.is_gnu_sparse() {
            return Err("a GNU sparse entry; only regular files are accepted".into());
        }
        let size = h.entry_size().map_err(|e| format!("an entry header with an unreadable size: {e}"))?;
        let size = match what {
            Some(what) if size > MAX_EXTENSION => {
                return Err(format!("{what} of {size} bytes (at most {MAX_EXTENSION} are accepted)"));
            }
            Some(_) => size,
            None => self.pax_size.take().unwrap_or(size),
        };
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        if kind == tar::EntryType::XHeader && recognized {
            self.pax = Some((Vec::with_capacity(size as usize), size));
        }
        self.data_left = size.checked_next_multiple_of(TAR_BLOCK as u64).ok_or("an entry size that overflows")?;
        Ok(())
    }

    /// Keeps the bytes of a PAX header's body; at its end, its `size` record (read as the tar
    /// crate does: the first `size`, and none after a malformed record).
    fn on_data(&mut self, b: &[u8]) {
        let Some((body, want)) = self.pax.as_mut() else { return };
        let room = (*want as usize).saturating_sub(body.len());
        body.extend_from_slice(&b[..b.len().min(room)]);
        if body.len() as u64 == *want {
            self.pax_size = tar::PaxExtensions::new(body)
                .map_while(Result::ok)
                .find(|e| e.key_bytes() == b"size")
                .and_then(|e| e.value().ok()?.parse().ok());
            self.pax = None;
        }
    }

    fn refusal(&self) -> Option<std::io::Error> {
        self.refused.as_ref().map(|m| std::io::Error::new(std::io::ErrorKind::InvalidData, m.clone()))
    }
}

impl<R: Read> Read for BoundedHeaders<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(e) = self.refusal() {
            return Err(e);
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if self.data_left == 0 {
            // Within a header: no read goes past its end before it is looked at.
            let want = (TAR_BLOCK - self.have).min(buf.len());
            let n = self.inner.read(&mut buf[..want])?;
            self.header[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            if self.have == TAR_BLOCK {
                self.have = 0;
                if let Err(m) = self.on_header() {
                    self.refused = Some(m);
                    return Err(self.refusal().expect("just set"));
                }
            }
            return Ok(n);
        }
        let want = self.data_left.min(buf.len() as u64) as usize;
        let n = self.inner.read(&mut buf[..want])?;
        self.data_left -= n as u64;
        self.on_data(&buf[..n]);
        Ok(n)
    }
}

fn import_blocking(
    handle: &tokio::runtime::Handle,
    db: &Database,
    storage: &Arc<Storage>,
    reader: impl Read,
    staging: &Path,
    o: &ImportOptions,
) -> Result<ImportReport, BootError> {
    let mut ar = tar::Archive::new(BoundedHeaders::new(reader));
    let r = import_archive(handle, db, storage, &mut ar, staging, o);
    if r.is_err() {
        let mut rest = ar.into_inner().inner.take(DRAIN_LIMIT);
        let _ = std::io::copy(&mut rest, &mut std::io::sink());
    }
    r
}

/// Refuses an entry whose path (from its header, a GNU long name or a PAX record) is longer
/// than [`MAX_PATH`].
fn check_path<R: Read>(e: &tar::Entry<'_, R>) -> Result<(), BootError> {
    let n = e.path_bytes().len();
    if n > MAX_PATH {
        return Err(bad(format!("an entry's path is {n} bytes long (at most {MAX_PATH} are accepted)")));
    }
    Ok(())
}

fn import_archive<R: Read>(
    handle: &tokio::runtime::Handle,
    db: &Database,
    storage: &Arc<Storage>,
    ar: &mut tar::Archive<R>,
    staging: &Path,
    o: &ImportOptions,
) -> Result<ImportReport, BootError> {
    let mut entries = ar.entries().map_err(|e| bad(format!("not a tar archive: {e}")))?;
    let first =
        entries.next().ok_or_else(|| bad("the archive is empty"))?.map_err(|e| bad(format!("unreadable: {e}")))?;
    let m: Manifest = {
        let mut first = first;
        check_path(&first)?;
        let path = first.path_bytes().to_vec();
        if path != MANIFEST.as_bytes() || first.header().entry_type() != tar::EntryType::Regular {
            return Err(bad(format!("the first entry must be {MANIFEST}, found {:?}", String::from_utf8_lossy(&path))));
        }
        if first.size() > MAX_MANIFEST {
            return Err(bad(format!("{MANIFEST} is larger than {MAX_MANIFEST} bytes")));
        }
        let mut text = Vec::new();
        first.read_to_end(&mut text).map_err(|e| bad(format!("{MANIFEST} unreadable: {e}")))?;
        // Anything the format does not know is refused: the version check comes first.
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| bad(format!("{MANIFEST} is not JSON: {e}")))?;
        if let Some(ver) = v.get("version").and_then(|x| x.as_u64()) {
            if ver != u64::from(VERSION) && v.get("format").and_then(|f| f.as_str()) == Some(FORMAT) {
                return Err(bad(format!(
                    "made by a newer ClusterWare (export format version {ver}); this ClusterWare reads version {VERSION}"
                )));
            }
        }
        serde_json::from_value(v).map_err(|e| bad(format!("{MANIFEST} is not valid: {e}")))?
    };
    check_manifest(&m)?;
    let p = handle.block_on(plan(db, &m, o))?;
    let to_store: u64 = m.files.iter().filter(|f| p.store.contains(&f.id)).map(|f| f.size).sum();
    let avail = storage.available_bytes()?;
    if !o.dry_run && to_store.saturating_add(SPACE_MARGIN) > avail {
        return Err(bad(format!("it needs {to_store} bytes in local storage, {avail} are available")));
    }

    let by_id: HashMap<&str, &FileRecord> = m.files.iter().map(|f| (f.id.as_str(), f)).collect();
    let mut seen: HashSet<String> = HashSet::new();
    let mut staged = std::collections::VecDeque::new();
    for e in entries {
        let mut e = e.map_err(|e| bad(format!("unreadable entry: {e}")))?;
        check_path(&e)?;
        let path = String::from_utf8_lossy(&e.path_bytes()).to_string();
        let kind = e.header().entry_type();
        if kind != tar::EntryType::Regular {
            return Err(bad(format!("entry {path:?} is a {kind:?}, not a regular file")));
        }
        let id = path
            .strip_prefix("files/")
            .filter(|id| is_file_id(id))
            .ok_or_else(|| bad(format!("unexpected entry {path:?} (only files/<id> may follow {MANIFEST})")))?;
        let rec = by_id.get(id).ok_or_else(|| bad(format!("entry {path:?} is not in the manifest")))?;
        if !seen.insert(id.to_string()) {
            return Err(bad(format!("entry {path:?} appears twice")));
        }
        if e.size() != rec.size {
            return Err(bad(format!(
                "{} ({path}) is {} bytes in the archive, {} in the manifest",
                rec.name,
                e.size(),
                rec.size
            )));
        }
        let stored = p.store.contains(id) && !o.dry_run;
        let mut sink = EntrySink::new(stored.then(|| staging.join(id)).as_deref())?;
        let mut got = 0u64;
        loop {
            // Read straight into the block the consumers share, aligned for direct I/O.
            let mut block = bytes::BytesMut::zeroed(BLOCK + DIRECT_ALIGN);
            let skip = block.as_ptr().align_offset(DIRECT_ALIGN);
            bytes::Buf::advance(&mut block, skip);
            block.truncate(BLOCK);
            let mut filled = 0;
            while filled < BLOCK {
                let n = e
                    .read(&mut block[filled..])
                    .map_err(|err| bad(format!("{} ({path}) unreadable: {err}", rec.name)))?;
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            got += filled as u64;
            block.truncate(filled);
            sink.send(block.freeze())?;
            if filled < BLOCK {
                break;
            }
        }
        if got != rec.size {
            return Err(bad(format!("{} ({path}) is truncated: {got} of {} bytes", rec.name, rec.size)));
        }
        let (sum, file) = sink.finish()?;
        if sum != rec.sha256 {
            return Err(bad(format!("{} ({path}) does not match the manifest's SHA-256", rec.name)));
        }
        // Its fsync runs while the next entry arrives; a few at most wait at a time.
        if let Some(f) = file {
            staged.push_back(f);
            if staged.len() > 2 {
                staged.pop_front().expect("not empty").finish()?;
            }
        }
    }
    for f in staged {
        f.finish()?;
    }
    if let Some(missing) = m.files.iter().find(|f| !seen.contains(&f.id)) {
        return Err(bad(format!(
            "the manifest names {} (files/{}), which is not in the archive (truncated?)",
            missing.name, missing.id
        )));
    }

    let files: Vec<ImportedFile> = m
        .files
        .iter()
        .filter(|f| p.ids.contains_key(&f.id))
        .map(|f| ImportedFile {
            name: f.name.clone(),
            kind: f.kind.clone(),
            size: f.size,
            sha256: f.sha256.clone(),
            id: p.ids[&f.id].clone(),
            action: if p.store.contains(&f.id) { "added" } else { "reused" }.into(),
        })
        .collect();
    let report = ImportReport {
        dry_run: o.dry_run,
        boot_config: p.config_name.clone(),
        boot_config_was: m.boot_config.name.clone(),
        image: p.image_name.clone(),
        image_was: m.image.as_ref().map(|i| i.name.clone()),
        files,
    };
    if o.dry_run {
        return Ok(report);
    }

    // Commit: move the new files into storage, then one transaction for every record.
    let mut adopted = Vec::new();
    let undo = |adopted: &[String]| {
        for id in adopted {
            storage.delete_local(id);
        }
    };
    for f in m.files.iter().filter(|f| p.store.contains(&f.id)) {
        let new_id = &p.ids[&f.id];
        if let Err(e) = storage.adopt(&staging.join(&f.id), new_id, &f.sha256) {
            undo(&adopted);
            return Err(e.into());
        }
        adopted.push(new_id.clone());
    }
    let created = now();
    let mut txn = Txn::new().when([Compare::absent(schema::bootconfig(&p.config_name))]);
    for f in &m.files {
        let Some(new_id) = p.ids.get(&f.id) else { continue };
        let key = schema::file(&new_id);
        if p.store.contains(&f.id) {
            let rec = FileRecord { id: new_id.clone(), created, ..f.clone() };
            txn.compares.push(Compare::absent(key.clone()));
            txn.success.push(TxnOp::put(key, encode(&rec)));
        } else {
            txn.compares.push(Compare::present(key));
        }
    }
    if let (Some(img), Some(name)) = (&m.image, &p.image_name) {
        let key = schema::image(&name);
        let new = Image {
            name: name.clone(),
            rootfs: p.ids[&img.rootfs].clone(),
            extra_files: img.extra_files.iter().map(|f| p.ids[f].clone()).collect(),
            created,
            ..img.clone()
        };
        txn.compares.push(Compare::absent(key.clone()));
        txn.success.push(TxnOp::put(key, encode(&new)));
    }
    let cfg = BootConfig {
        name: p.config_name.clone(),
        kernel: p.ids[&m.boot_config.kernel].clone(),
        initramfs: p.ids[&m.boot_config.initramfs].clone(),
        image: p.image_name.clone(),
        created,
        ..m.boot_config.clone()
    };
    txn.success.push(TxnOp::put(schema::bootconfig(&p.config_name), encode(&cfg)));
    match handle.block_on(db.txn(txn)) {
        Ok(r) if r.succeeded => {
            // The new files count in this head's storage summary now that their records exist.
            storage.note_change();
            tracing::info!(boot_config = %p.config_name, image = %crate::core::or_none(p.image_name.as_deref()), added = adopted.len(), "boot config imported");
            Ok(report)
        }
        Ok(_) => {
            undo(&adopted);
            let what = match &p.image_name {
                Some(i) => format!("boot config {} or image {i}", p.config_name),
                None => format!("boot config {}", p.config_name),
            };
            Err(BootError::from(RecordError::Conflict(format!(
                "{what} was created, or a reused file deleted, while importing; nothing was imported"
            ))))
        }
        Err(e) => {
            undo(&adopted);
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;
    use crate::core::http::HasKind;
    use clusterware_shared::api::ErrorKind;

    /// A manifest for boot config `c1` with a kernel and an initramfs of these contents.
    fn manifest(kernel: &[u8], initramfs: &[u8]) -> Manifest {
        let rec = |n: u8, name: &str, kind: &str, body: &[u8]| FileRecord {
            id: format!("{n:032x}"),
            name: name.into(),
            size: body.len() as u64,
            sha256: hex::encode(Sha256::digest(body)),
            kind: kind.into(),
            created: 1,
        };
        Manifest {
            format: FORMAT.into(),
            version: VERSION,
            created: 1,
            boot_config: BootConfig {
                name: "c1".into(),
                description: "a config".into(),
                kernel: format!("{:032x}", 1),
                initramfs: format!("{:032x}", 2),
                image: None,
                cmdline: "console=ttyS0".into(),
                secure_boot: true,
                created: 1,
            },
            image: None,
            files: vec![rec(1, "vmlinuz", "kernel", kernel), rec(2, "initrd.img", "initramfs", initramfs)],
        }
    }

    /// The archive an export makes of `m` with these file contents, each entry preceded by the
    /// raw blocks `before` gives for its position (0: the manifest).
    fn archive(m: &Manifest, bodies: &[&[u8]], before: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let text = serde_json::to_vec(m).unwrap();
        b.get_mut().extend(before(0));
        b.append_data(&mut header(text.len() as u64, 1), MANIFEST, text.as_slice()).unwrap();
        for (i, (f, body)) in m.files.iter().zip(bodies).enumerate() {
            b.get_mut().extend(before(i + 1));
            b.append_data(&mut header(f.size, 1), format!("files/{}", f.id), *body).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A header block of this type claiming `size` bytes of data.
    fn claiming(kind: tar::EntryType, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_path("././@LongLink").unwrap();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// A PAX extension header with these records, as a header block and its padded body.
    fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut n = rest + rest.to_string().len();
            if n.to_string().len() + rest != n {
                n += 1;
            }
            body.extend(format!("{n} {k}=").as_bytes());
            body.extend(*v);
            body.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        h.set_path("PaxHeaders/x").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(body.len() as u64);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend(&body);
        out.resize(out.len().next_multiple_of(TAR_BLOCK), 0);
        out
    }

    struct Fixture {
        db: Database,
        storage: Arc<Storage>,
        dir: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), "h1", db.clone(), "t").unwrap();
        Fixture { db, storage, dir }
    }

    impl Fixture {
        async fn import(&self, bytes: Vec<u8>) -> Result<ImportReport, BootError> {
            let chunks: Vec<Result<Bytes, std::io::Error>> =
                bytes.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            import(&self.db, &self.storage, futures::stream::iter(chunks), ImportOptions::default()).await
        }

        /// Nothing in the database's boot records, nothing in storage.
        async fn untouched(&self) {
            for prefix in [FILES, schema::IMAGES, schema::BOOTCONFIGS] {
                assert!(self.db.range(prefix).await.unwrap().0.is_empty(), "{prefix} written");
            }
            let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, [".locks", ".storage-id", ".tmp"], "storage written");
            assert_eq!(std::fs::read_dir(self.dir.path().join(".tmp")).unwrap().count(), 0, "staging left");
        }
    }

    /// The export's archive is byte for byte what the tar crate's builder makes of the same
    /// entries (sizes on and off the 512-byte blocks, empty, larger than a read block), and a
    /// file shorter than its record stops it with an error.
    #[test]
    fn the_export_archive_is_plain_tar() {
        let dir = tempfile::tempdir().unwrap();
        let sizes = [0usize, 1, 511, 512, 513, EXPORT_BLOCK - 700, EXPORT_BLOCK, 2 * EXPORT_BLOCK + 77];
        let mut files = Vec::new();
        for (i, size) in sizes.iter().enumerate() {
            let body: Vec<u8> = (0..*size).map(|j| (j * 7 + i) as u8).collect();
            let path = dir.path().join(format!("f{i}"));
            std::fs::write(&path, &body).unwrap();
            let rec = FileRecord {
                id: format!("{i:032x}"),
                name: format!("f{i}"),
                size: *size as u64,
                sha256: hex::encode(Sha256::digest(&body)),
                kind: "kernel".into(),
                created: 1_700_000_000 + i as u64,
            };
            files.push((rec, std::fs::File::open(&path).unwrap(), body));
        }
        let manifest = b"{\"format\": \"test\"}".to_vec();
        let mut want = tar::Builder::new(Vec::new());
        want.append_data(&mut header(manifest.len() as u64, 42), MANIFEST, manifest.as_slice()).unwrap();
        for (rec, _, body) in &files {
            want.append_data(&mut header(rec.size, rec.created), format!("files/{}", rec.id), body.as_slice()).unwrap();
        }
        let want = want.into_inner().unwrap();
        let collect = |files: Vec<(FileRecord, std::fs::File)>| {
            let (tx, mut rx) = tokio::sync::mpsc::channel(2);
            let m = manifest.clone();
            let t = std::thread::spawn(move || send_archive(&tx, &m, 42, &files));
            let mut got = Vec::new();
            while let Some(b) = rx.blocking_recv() {
                let b = b.unwrap();
                assert!(b.len() <= EXPORT_BLOCK + 3 * TAR_BLOCK, "a block of {} bytes", b.len());
                got.extend_from_slice(&b);
            }
            (t.join().unwrap(), got)
        };
        let opened: Vec<_> = files.iter().map(|(r, f, _)| (r.clone(), f.try_clone().unwrap())).collect();
        let (r, got) = collect(opened);
        r.unwrap();
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the archive differs from tar::Builder's");
        // A copy shorter than its record.
        let mut short = files[6].0.clone();
        short.size += 1;
        let (r, _) = collect(vec![(short, std::fs::File::open(dir.path().join("f6")).unwrap())]);
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
    }

    /// An archive as export makes it imports, also with a PAX header (as GNU tar writes) before
    /// an entry; the bounded reader does not get in the way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_plain_archive_imports() {
        let (k, i) = (b"kernel bytes".as_slice(), vec![7u8; 3000]);
        let m = manifest(k, &i);
        let f = fixture();
        let bytes = archive(&m, &[k, &i], |n| if n == 1 { pax(&[("mtime", b"1.5")]) } else { Vec::new() });
        let r = f.import(bytes).await.unwrap();
        assert_eq!(r.boot_config, "c1");
        assert_eq!(f.db.range(FILES).await.unwrap().0.len(), 2);
    }

    /// Files of several blocks (whole blocks written directly, the last one through the page
    /// cache) are stored byte for byte; the import's report names the ids they got.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_files_are_stored_intact() {
        let k: Vec<u8> = (0..(2 * BLOCK + 4096)).map(|i| (i % 251) as u8).collect();
        let i: Vec<u8> = (0..(3 * BLOCK + 77)).map(|i| (i % 241) as u8).collect();
        let m = manifest(&k, &i);
        let f = fixture();
        let r = f.import(archive(&m, &[&k, &i], |_| Vec::new())).await.unwrap();
        for (want, name) in [(&k, "vmlinuz"), (&i, "initrd.img")] {
            let id = &r.files.iter().find(|x| x.name == name).unwrap().id;
            let got = std::fs::read(f.dir.path().join(id)).unwrap();
            assert_eq!(got.len(), want.len(), "{name}");
            assert!(&got == want, "{name} differs");
        }
    }

    /// GNU long names and links, PAX headers (local and global) that claim more than 64 KiB are
    /// refused from their header: a clear error, nothing written to the database or storage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn huge_extension_headers_are_refused() {
        let (k, i) = (b"kernel bytes".as_slice(), b"initramfs".as_slice());
        let m = manifest(k, i);
        for (kind, what) in [
            (tar::EntryType::GNULongName, "a GNU long name of"),
            (tar::EntryType::GNULongLink, "a GNU long link name of"),
            (tar::EntryType::XHeader, "a PAX extension header of"),
            (tar::EntryType::XGlobalHeader, "a PAX global extension header of"),
        ] {
            for at in [0, 2] {
                let f = fixture();
                // The header claims 1 GiB; 4 KiB of it follow, then the archive goes on.
                let bytes = archive(&m, &[k, i], |n| {
                    if n == at {
                        let mut v = claiming(kind, 1 << 30);
                        v.extend(vec![b'a'; 4096]);
                        v
                    } else {
                        Vec::new()
                    }
                });
                let e = f.import(bytes).await.unwrap_err();
                assert_eq!(e.kind(), ErrorKind::BadRequest);
                let msg = e.to_string();
                assert!(
                    msg.contains(&format!("{what} 1073741824 bytes (at most 65536 are accepted)")),
                    "{kind:?} at {at}: {msg}"
                );
                f.untouched().await;
            }
        }
    }

    /// Counts the bytes read from it.
    struct Counting<R>(R, Arc<std::sync::atomic::AtomicU64>);

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(b)?;
            self.1.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
            Ok(n)
        }
    }

    /// A long name claiming 1 GiB that is really there (generated, never stored): the refusal
    /// comes once its header has been read, before any byte of the name.
    #[test]
    fn a_huge_long_name_is_refused_before_it_is_read() {
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let src = std::io::Cursor::new(claiming(tar::EntryType::GNULongName, 1 << 30))
            .chain(std::io::repeat(b'a').take(1 << 30));
        let mut ar = tar::Archive::new(BoundedHeaders::new(Counting(src, read.clone())));
        let e = ar.entries().unwrap().next().unwrap().err().expect("refused");
        assert!(e.to_string().contains("a GNU long name of 1073741824 bytes"), "{e}");
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), TAR_BLOCK as u64);
    }

    /// The reader keeps its place where the data size comes from a PAX `size` record (the
    /// header says 0): the data, a valid-looking header claiming 1 GiB, is passed as data, and
    /// the long name after it is caught.
    #[test]
    fn the_reader_follows_pax_sizes() {
        let decoy = claiming(tar::EntryType::Regular, 1 << 30);
        let mut bytes = pax(&[("size", decoy.len().to_string().as_bytes())]);
        let mut h = tar::Header::new_ustar();
        h.set_path("data").unwrap();
        h.set_size(0);
        h.set_cksum();
        bytes.extend(h.as_bytes());
        bytes.extend(&decoy);
        bytes.extend(claiming(tar::EntryType::GNULongName, 1 << 20));
        bytes.extend(vec![0u8; 4096]);
        let mut ar = tar::Archive::new(BoundedHeaders::new(bytes.as_slice()));
        let mut entries = ar.entries().unwrap();
        let mut first = entries.next().unwrap().unwrap();
        assert_eq!(first.size(), decoy.len() as u64);
        let mut data = Vec::new();
        first.read_to_end(&mut data).unwrap();
        assert!(data == decoy);
        let e = entries.next().unwrap().err().expect("refused");
        assert!(e.to_string().contains("a GNU long name of 1048576 bytes"), "{e}");
    }

    /// Control characters in the manifest's free text are refused, the field named, nothing
    /// written; the names are checked as before (letters, digits and a few marks only).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_characters_in_the_manifest_are_refused() {
        let (k, i) = (b"kernel bytes".as_slice(), b"initramfs".as_slice());
        type Spoil = fn(&mut Manifest);
        let cases: [(Spoil, &str); 6] = [
            (
                |m| m.boot_config.description = "line\nbreak".into(),
                "the manifest's boot config description contains the control character U+000A at byte 4",
            ),
            (
                |m| m.boot_config.cmdline = "quiet\r\nchain http://evil".into(),
                "the manifest's kernel command line contains the control character U+000D at byte 5",
            ),
            (
                |m| m.files[0].name = "vm\u{1b}]0;pwned\u{7}linuz".into(),
                "the manifest's name of file 00000000000000000000000000000001 contains the control character U+001B at byte 2",
            ),
            (
                |m| m.files[1].name = "initrd\u{85}".into(),
                "the manifest's name of file 00000000000000000000000000000002 contains the control character U+0085",
            ),
            (
                |m| {
                    m.files.push(FileRecord {
                        id: format!("{:032x}", 3),
                        name: "root".into(),
                        kind: "rootfs".into(),
                        ..m.files[0].clone()
                    });
                    m.image = Some(Image {
                        name: "img".into(),
                        description: "tab\there".into(),
                        rootfs: format!("{:032x}", 3),
                        extra_files: vec![],
                        created: 1,
                    });
                    m.boot_config.image = Some("img".into());
                },
                "the manifest's image description contains the control character U+0009 at byte 3",
            ),
            (|m| m.boot_config.name = "c\u{7f}".into(), "invalid boot config name \"c\\u{7f}\""),
        ];
        for (spoil, want) in cases {
            let mut m = manifest(k, i);
            spoil(&mut m);
            let f = fixture();
            let bytes = archive(&m, &[k, i, k], |_| Vec::new());
            let e = f.import(bytes).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadRequest);
            assert!(e.to_string().contains(want), "{e}");
            f.untouched().await;
        }
    }

    /// A path longer than 4 KiB is refused, whether from a GNU long name or a PAX record within
    /// the 64 KiB bound.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_paths_are_refused() {
        let (k, i) = (b"kernel bytes".as_slice(), b"initramfs".as_slice());
        let m = manifest(k, i);
        let long = format!("files/{}", "a".repeat(5000));
        let gnu = |n: usize| {
            if n != 2 {
                return Vec::new();
            }
            let mut v = claiming(tar::EntryType::GNULongName, long.len() as u64 + 1);
            v.extend(long.as_bytes());
            v.push(0);
            v.resize(v.len().next_multiple_of(TAR_BLOCK), 0);
            v
        };
        let with_pax = |n: usize| if n == 0 { pax(&[("path", long.as_bytes())]) } else { Vec::new() };
        for bytes in [archive(&m, &[k, i], gnu), archive(&m, &[k, i], with_pax)] {
            let f = fixture();
            let e = f.import(bytes).await.unwrap_err().to_string();
            assert!(e.contains("an entry's path is 5006 bytes long (at most 4096 are accepted)"), "{e}");
            f.untouched().await;
        }
    }
}
