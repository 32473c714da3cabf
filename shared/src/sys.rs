//! Small system helpers the head and the agent share, and the crate's only `unsafe` (a system
//! call `nix` has no wrapper for).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

/// Raises the open-files limit to the hard limit: a head keeps a connection per node, the
/// simulator one per simulated node.
pub fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
        _ => {}
    }
}

/// (interface, address, prefix length) of every IPv4 address of this machine.
pub fn ipv4_addrs() -> Vec<(String, Ipv4Addr, u32)> {
    let Ok(list) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    list.filter_map(|ifa| {
        let ip = ifa.address.as_ref()?.as_sockaddr_in()?.ip();
        let prefix =
            ifa.netmask.as_ref().and_then(|m| m.as_sockaddr_in()).map_or(32, |m| m.ip().to_bits().count_ones());
        Some((ifa.interface_name, ip, prefix))
    })
    .collect()
}

/// Starts the kernel's writeback of `len` bytes of `fd` from `offset` (`sync_file_range` with
/// `SYNC_FILE_RANGE_WRITE`: no waiting), so that a later fsync has little left to do.
pub fn start_writeback(fd: BorrowedFd<'_>, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: sync_file_range(2) takes a descriptor (borrowed, so open for the call) and plain
    // integers; it touches no memory of ours. Neither nix nor rustix wraps it.
    let r = unsafe {
        libc::sync_file_range(
            fd.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// The first IPv4 address of an interface.
pub fn interface_ip(name: &str) -> Option<Ipv4Addr> {
    ipv4_addrs().into_iter().find(|(n, _, _)| n == name).map(|(_, ip, _)| ip)
}

/// Where the clusterware package puts the static node agent for the program at `exe`:
/// `<directory of exe>/../libexec/clusterware-node`, so `/opt/scyld/clusterware/bin/scyld-modimg`
/// finds `/opt/scyld/clusterware/libexec/clusterware-node` (`None` when `exe` has no grandparent
/// directory). Lexical: `exe` is the resolved path of the running program (`/proc/self/exe`), so
/// `..` is its directory's parent.
fn packaged_agent_for(exe: &Path) -> Option<PathBuf> {
    let prefix = exe.parent()?.parent()?;
    Some(prefix.join("libexec").join("clusterware-node"))
}

/// The agent to bake into an initramfs or image: `given` (`--agent PATH`), else the packaged one
/// beside this program (see [`packaged_agent_for`]).
/// The error tells how to get one.
pub fn agent_path(given: Option<&Path>) -> Result<PathBuf, String> {
    agent_path_for(given, std::env::current_exe().ok().as_deref())
}

fn agent_path_for(given: Option<&Path>, exe: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_path_buf());
    }
    let packaged = exe.and_then(packaged_agent_for);
    match packaged {
        Some(p) if p.is_file() => Ok(p),
        _ => Err(format!(
            "no node agent: pass --agent PATH (`make agent` builds \
             target/x86_64-unknown-linux-gnu/agent/clusterware-node; the clusterware package installs \
             /opt/scyld/clusterware/libexec/clusterware-node){}",
            packaged.map(|p| format!(", and {} is not there", p.display())).unwrap_or_default()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_among_the_addresses_with_its_prefix() {
        assert!(ipv4_addrs().contains(&("lo".to_string(), Ipv4Addr::LOCALHOST, 8)), "{:?}", ipv4_addrs());
        assert_eq!(interface_ip("lo"), Some(Ipv4Addr::LOCALHOST));
    }

    #[test]
    fn writeback_of_a_file_succeeds_and_of_a_socket_fails() {
        let f = tempfile_in_target();
        std::fs::write(&f, vec![1u8; 1 << 16]).unwrap();
        let file = std::fs::File::open(&f).unwrap();
        start_writeback(std::os::fd::AsFd::as_fd(&file), 0, 1 << 16).unwrap();
        let _ = std::fs::remove_file(&f);
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(start_writeback(std::os::fd::AsFd::as_fd(&r), 0, 1).is_err());
    }

    fn tempfile_in_target() -> PathBuf {
        std::env::temp_dir().join(format!("cw-writeback-{}", std::process::id()))
    }

    #[test]
    fn the_packaged_agent_is_in_libexec_beside_bin() {
        assert_eq!(
            packaged_agent_for(Path::new("/opt/scyld/clusterware/bin/scyld-modimg")),
            Some(PathBuf::from("/opt/scyld/clusterware/libexec/clusterware-node"))
        );
        assert_eq!(
            packaged_agent_for(Path::new("/usr/bin/scyld-mkinitramfs")),
            Some(PathBuf::from("/usr/libexec/clusterware-node"))
        );
        assert_eq!(packaged_agent_for(Path::new("/scyld-modimg")), None);
        assert_eq!(packaged_agent_for(Path::new("scyld-modimg")), None);
    }

    #[test]
    fn an_agent_given_wins_else_the_packaged_one_else_a_clear_error() {
        let d = std::env::temp_dir().join(format!("cw-packaged-agent-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("bin")).unwrap();
        let exe = d.join("bin/scyld-modimg");
        let given = Path::new("/somewhere/clusterware-node");
        assert_eq!(agent_path_for(Some(given), Some(&exe)).unwrap(), given);

        let e = agent_path_for(None, Some(&exe)).unwrap_err();
        for says in ["--agent PATH", "make agent", "/opt/scyld/clusterware/libexec/clusterware-node"] {
            assert!(e.contains(says), "{e}");
        }
        assert!(e.contains(&format!("{} is not there", d.join("libexec/clusterware-node").display())), "{e}");
        assert!(agent_path_for(None, None).unwrap_err().contains("--agent PATH"));

        std::fs::create_dir_all(d.join("libexec")).unwrap();
        std::fs::write(d.join("libexec/clusterware-node"), b"\x7fELF").unwrap();
        assert_eq!(agent_path_for(None, Some(&exe)).unwrap(), d.join("libexec/clusterware-node"));
        // A directory by that name is not an agent.
        std::fs::remove_file(d.join("libexec/clusterware-node")).unwrap();
        std::fs::create_dir(d.join("libexec/clusterware-node")).unwrap();
        assert!(agent_path_for(None, Some(&exe)).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}

/// Writes to standard output for the command-line programs (through [`outln!`](crate::outln)):
/// a reader that went away (`… | head`) ends the program quietly with exit code 0, since it has
/// what it wanted, rather than the panic of `println!`; any other write error ends it with a
/// one-line error and exit code 1. Commands promise exit codes 0, 1 and 2 only.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        stdout_failed(&e);
    }
}

/// Flushes standard output, with [`write_stdout`]'s handling of a reader that went away.
pub fn flush_stdout() {
    use std::io::Write;
    if let Err(e) = std::io::stdout().lock().flush() {
        stdout_failed(&e);
    }
}

fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    let prog = std::env::args().next().unwrap_or_default();
    let prog = Path::new(&prog).file_name().map_or("error".into(), |n| n.to_string_lossy().into_owned());
    eprintln!("{prog}: error: cannot write to standard output: {e}");
    std::process::exit(1);
}

/// `println!` for the command-line programs: see [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => {
        $crate::sys::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::sys::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the command-line programs: see [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::sys::write_stdout(format_args!($($arg)*))
    };
}
