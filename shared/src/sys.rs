//! Small system helpers the head and the agent share.

use std::net::Ipv4Addr;

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
