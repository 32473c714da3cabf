//! The harness's only `unsafe`, and the process and socket calls the tests share (on `nix`).

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use std::net::{SocketAddrV4, TcpStream};
use std::os::fd::AsRawFd;

/// Sends `sig` to process `pid` (errors ignored: the process may be gone).
pub fn kill(pid: u32, sig: Signal) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), sig);
}

/// Sends `sig` to process group `pgid` (errors ignored: the group may be gone).
pub fn killpg(pgid: u32, sig: Signal) {
    let _ = nix::sys::signal::killpg(Pid::from_raw(pgid as i32), sig);
}

/// Makes the child that `cmd` starts die with SIGKILL when the thread that started it ends
/// (`PR_SET_PDEATHSIG`), so that a test that crashes leaves no process behind.
pub fn die_with_parent(cmd: &mut std::process::Command) {
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // calls are allowed: it makes one system call (prctl(2)), allocates nothing and takes no
    // lock.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
}

/// A TCP connection from the local address `from` (any port) to `to`.
pub fn connect_from(from: std::net::Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(from, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// `SO_BINDTODEVICE`: what the socket sends leaves through interface `dev`, route or not.
pub fn bind_to_device(s: &impl std::os::fd::AsFd, dev: &str) -> std::io::Result<()> {
    nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::BindToDevice, &dev.into()).map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_leaves_from_the_address_asked() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = match l.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        let s = connect_from("127.0.0.2".parse().unwrap(), to).unwrap();
        assert_eq!(s.local_addr().unwrap().ip().to_string(), "127.0.0.2");
        let (_, peer) = l.accept().unwrap();
        assert_eq!(peer.ip().to_string(), "127.0.0.2");
    }

    #[test]
    fn a_child_dies_when_the_thread_that_started_it_ends() {
        let mut child = std::thread::spawn(|| {
            let mut cmd = std::process::Command::new("sleep");
            cmd.arg("30");
            die_with_parent(&mut cmd);
            cmd.spawn().unwrap()
        })
        .join()
        .unwrap();
        let t0 = std::time::Instant::now();
        let status = child.wait().unwrap();
        assert!(t0.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&status), Some(9));
    }
}
