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
