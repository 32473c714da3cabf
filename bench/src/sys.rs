//! The benchmark's only `unsafe`: `wait4`, which `nix` does not wrap (a child's own peak RSS comes
//! only with its exit status; `getrusage(RUSAGE_CHILDREN)` would give the largest of all children).

/// Waits for child `pid` to end; its exit status (`None` when a signal ended it) and peak RSS in
/// KiB.
pub fn wait_rss(pid: u32) -> std::io::Result<(Option<i32>, u64)> {
    let mut status = 0;
    // SAFETY: rusage is plain old data (integers and timevals), for which all-zero bytes are a
    // valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4(2) gets pointers to two locals that live for the call; it writes the status
    // and the usage there and touches nothing else.
    let r = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut ru) };
    if r != pid as i32 {
        return Err(std::io::Error::last_os_error());
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((code, ru.ru_maxrss as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exit_code_and_peak_rss_of_a_child() {
        let c = std::process::Command::new("sh").args(["-c", "exit 3"]).spawn().unwrap();
        let (code, rss) = super::wait_rss(c.id()).unwrap();
        assert_eq!(code, Some(3));
        assert!(rss > 0);
    }
}
