//! The head's one module of `unsafe`: what no safe wrapper offers. Everything else calls the
//! operating system through `nix` and `socket2`.

use std::os::fd::AsRawFd;
use std::process::Command;

/// Makes `cmd`'s child get SIGKILL when the thread that spawned it exits (`PR_SET_PDEATHSIG`):
/// a child such as the etcd member never outlives a killed head.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // calls are allowed; prctl(2) is one, and the closure touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// Registers an owned socket with the current tokio runtime.
pub fn async_fd<T: std::os::fd::AsRawFd>(owned: T) -> std::io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: tokio requires that the descriptor stays open and is not registered twice while
    // the AsyncFd lives: `owned` is moved into it (it closes with it) and no other handle to the
    // descriptor exists.
    unsafe { tokio::io::unix::AsyncFd::register(owned) }.map_err(|e| e.into_parts().1)
}

/// Reads up to `n` bytes of `file` at `offset` into `buf`'s spare room only if they are in the
/// page cache (`preadv2` with `RWF_NOWAIT`): `Ok(None)` when the read would wait for the disk
/// (or the file system cannot say), so that the caller reads on a blocking thread instead. A
/// short count means only that much was cached; `Ok(Some(0))` is the end of the file.
pub fn read_cached(
    file: &std::fs::File,
    offset: u64,
    buf: &mut bytes::BytesMut,
    n: usize,
) -> std::io::Result<Option<usize>> {
    buf.reserve(n);
    let spare = buf.spare_capacity_mut();
    let iov = libc::iovec { iov_base: spare.as_mut_ptr().cast(), iov_len: n.min(spare.len()) };
    // SAFETY: the iovec points into `buf`'s reserved capacity, which outlives the call and is
    // at least `iov_len` bytes long; the kernel writes at most that many bytes there, and only
    // the count it returns is marked initialised below.
    let got = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
    if got < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: the kernel initialised `got` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + got as usize) };
    Ok(Some(got as usize))
}
