//! The head's one module of `unsafe`: what no safe wrapper offers. Everything else calls the
//! operating system through `nix` and `socket2`.

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
