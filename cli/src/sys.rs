//! The CLIs' only `unsafe`, and the system calls around processes they share.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Sends `sig` to process `pid`.
pub fn kill(pid: u32, sig: Signal) -> std::io::Result<()> {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).map_err(std::io::Error::from)
}

/// Makes the child that `cmd` starts the leader of a new session (`setsid`), so that it
/// outlives this command's session and terminal.
pub fn in_new_session(cmd: &mut std::process::Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes one system call (setsid(2)), allocates nothing and takes no
    // lock. Its failure (already a group leader, impossible for a fresh child) is ignored, as
    // the child runs either way.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            let _ = nix::unistd::setsid();
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_in_a_new_session_leads_it() {
        // The shell prints its own /proc/PID/stat: "pid (comm) state ppid pgrp session …".
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "read -r l < /proc/$$/stat; echo \"$l\""]).stdout(std::process::Stdio::piped());
        in_new_session(&mut cmd);
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text.split_whitespace().next().unwrap();
        let rest: Vec<&str> = text.rsplit_once(')').unwrap().1.split_whitespace().collect();
        assert_eq!(rest[3], pid, "the child's session is its own pid: {text}");
    }

    #[test]
    fn signalling_a_missing_process_fails() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        // Reaped: no such process (pids are not reused this fast).
        assert!(kill(pid, Signal::SIGTERM).is_err());
        // Signal 0-like check on ourselves works.
        kill(std::process::id(), Signal::SIGCONT).unwrap();
    }
}
