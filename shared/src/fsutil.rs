//! File-writing helpers shared by the head and the CLIs.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};

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
            // SAFETY: sync_file_range on our own open descriptor; a failure only loses the
            // optimisation (the final fsync still makes the data durable).
            unsafe {
                libc::sync_file_range(
                    self.inner.as_fd().as_raw_fd(),
                    self.flushed as libc::off64_t,
                    (self.written - self.flushed) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
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
