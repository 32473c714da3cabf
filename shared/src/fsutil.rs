//! File-writing helpers shared by the head and the CLIs.

use std::io::Write;
use std::os::fd::AsFd;

/// Starts the kernel's writeback of what was written every `step` bytes, so that a large file's
/// final fsync has little left to do: disk writes overlap the transfer instead of following it.
pub struct EarlyWriteback<W: Write + AsFd> {
    inner: W,
    written: u64,
    flushed: u64,
    step: u64,
}

impl<W: Write + AsFd> EarlyWriteback<W> {
    pub fn new(inner: W) -> Self {
        EarlyWriteback { inner, written: 0, flushed: 0, step: 32 << 20 }
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write + AsFd> Write for EarlyWriteback<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.written += n as u64;
        if self.written - self.flushed >= self.step {
            // A failure only loses the optimisation (the final fsync still makes the data
            // durable).
            let _ = crate::sys::start_writeback(self.inner.as_fd(), self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_everything() {
        let d = std::env::temp_dir().join(format!("cw-ewb-{}", std::process::id()));
        let f = std::fs::File::create(&d).unwrap();
        let mut w = EarlyWriteback::new(f);
        w.step = 1000;
        for _ in 0..10 {
            w.write_all(&[7u8; 777]).unwrap();
        }
        w.into_inner().sync_all().unwrap();
        assert_eq!(std::fs::read(&d).unwrap(), vec![7u8; 7770]);
        std::fs::remove_file(&d).unwrap();
    }
}

/// A file written by a thread of its own, in blocks of 1 MiB (with [`EarlyWriteback`]), so that
/// the writer's caller (receiving and decrypting a download, say) does not wait for the page
/// cache and the disk: the two overlap. At most 5 blocks are in memory. [`WriterThread::finish`]
/// writes the rest, fsyncs the file and answers the first error.
pub struct WriterThread {
    buf: Vec<u8>,
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
}

const WRITER_BLOCK: usize = 1 << 20;
const WRITER_AHEAD: usize = 3;

impl WriterThread {
    pub fn new(file: std::fs::File) -> std::io::Result<WriterThread> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(WRITER_AHEAD);
        let thread = std::thread::Builder::new().name("file-writer".into()).spawn(move || {
            let mut w = EarlyWriteback::new(file);
            for block in rx {
                w.write_all(&block)?;
            }
            w.into_inner().sync_all()
        })?;
        Ok(WriterThread { buf: Vec::with_capacity(WRITER_BLOCK), tx: Some(tx), thread: Some(thread) })
    }

    /// The writer thread's error once it stopped (or that it panicked).
    fn stopped(&mut self) -> std::io::Error {
        drop(self.tx.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => std::io::Error::other("the file's writer thread failed"),
            _ => std::io::Error::other("the file's writer thread stopped"),
        }
    }

    fn ship(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(WRITER_BLOCK));
        match self.tx.as_ref().map(|tx| tx.send(block)) {
            Some(Ok(())) => Ok(()),
            _ => Err(self.stopped()),
        }
    }

    /// Writes what is buffered, waits for the thread and fsyncs the file.
    pub fn finish(mut self) -> std::io::Result<()> {
        self.ship()?;
        drop(self.tx.take());
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(std::io::Error::other("the file's writer thread failed")),
            None => Err(std::io::Error::other("the file's writer thread stopped")),
        }
    }
}

impl Write for WriterThread {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() && b.len() >= WRITER_BLOCK {
            // A large block goes as it is.
            let block = b.to_vec();
            return match self.tx.as_ref().map(|tx| tx.send(block)) {
                Some(Ok(())) => Ok(b.len()),
                _ => Err(self.stopped()),
            };
        }
        let n = b.len().min(WRITER_BLOCK - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= WRITER_BLOCK {
            self.ship()?;
        }
        Ok(n)
    }

    /// Hands what is buffered to the thread (it does not wait for the disk: see `finish`).
    fn flush(&mut self) -> std::io::Result<()> {
        self.ship()
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod writer_thread_tests {
    use super::*;

    #[test]
    fn writes_everything_in_order() {
        let d = tempfile_path("wt");
        let mut w = WriterThread::new(std::fs::File::create(&d).unwrap()).unwrap();
        let mut want = Vec::new();
        for i in 0..300usize {
            // Small writes, and some larger than a block.
            let chunk: Vec<u8> =
                (0..(i * 997 % 40_000 + if i % 50 == 0 { 3 << 20 } else { 0 })).map(|j| (i + j) as u8).collect();
            w.write_all(&chunk).unwrap();
            want.extend_from_slice(&chunk);
        }
        w.finish().unwrap();
        assert!(std::fs::read(&d).unwrap() == want);
        std::fs::remove_file(&d).unwrap();
    }

    #[test]
    fn a_write_error_is_answered() {
        // /dev/full refuses every write.
        let Ok(f) = std::fs::OpenOptions::new().write(true).open("/dev/full") else { return };
        let mut w = WriterThread::new(f).unwrap();
        let r = (0..20).try_for_each(|_| w.write_all(&vec![1u8; 1 << 20]));
        let e = r.err().or_else(|| w.finish().err()).expect("an error");
        assert!(e.to_string().contains("space"), "{e}");
    }

    fn tempfile_path(tag: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("cw-{tag}-{}", std::process::id()))
    }
}

/// fsync of a directory, so that a rename or unlink in it survives a crash.
pub fn fsync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Writes a small file atomically: a temporary file in `tmp_dir` (the target's directory when
/// `None`; it must be on the same file system), fsync, rename over the target, fsync of the
/// directory. Readers see the old content or the new one, never a mix. `mode` sets the
/// permissions before the rename (0600 for key files, say).
pub fn write_atomic(
    path: &std::path::Path,
    tmp_dir: Option<&std::path::Path>,
    body: &[u8],
    mode: Option<u32>,
) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map_or_else(|| "file".into(), |n| n.to_string_lossy().into_owned());
    let tmp = tmp_dir.unwrap_or(dir).join(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Some(m) = mode {
            use std::os::unix::fs::PermissionsExt;
            f.set_permissions(std::fs::Permissions::from_mode(m))?;
        }
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        fsync_dir(dir)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

#[cfg(test)]
mod atomic_tests {
    use super::*;

    #[test]
    fn replaces_whole_file_with_mode() {
        let d = std::env::temp_dir().join(format!("cw-fsutil-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        write_atomic(&p, None, b"one", None).unwrap();
        write_atomic(&p, None, b"two", Some(0o600)).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 1, "no temporary file left");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
