//! Small system helpers the head and the agent share.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

/// Raises the open-files limit to the hard limit: a head keeps a connection per node, the
/// simulator one per simulated node.
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// (interface, address, prefix length) of every IPv4 address of this machine.
pub fn ipv4_addrs() -> Vec<(String, Ipv4Addr, u32)> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a list that is read, then freed with freeifaddrs.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let ifa = &*p;
            if !ifa.ifa_addr.is_null() && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let prefix = if ifa.ifa_netmask.is_null() {
                    32
                } else {
                    u32::from_be((*(ifa.ifa_netmask as *const libc::sockaddr_in)).sin_addr.s_addr).count_ones()
                };
                let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
                out.push((name, ip, prefix));
            }
            p = ifa.ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
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
