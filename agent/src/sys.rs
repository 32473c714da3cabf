//! The agent's only `unsafe`: the network-interface ioctls `/init` needs to bring the boot
//! interface up, give it its address and add the default route (no `ip` program in the
//! initramfs, and neither `nix` nor `rustix` wraps these requests). Everything else the agent asks
//! of the kernel goes through `nix`.

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

/// An `ifreq` naming interface `name` (truncated to `IFNAMSIZ - 1` bytes), all else zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data (a name array and a union of plain structs and integers),
    // for which all-zero bytes are a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        r.ifr_name[i] = b as libc::c_char;
    }
    r
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data on Linux (sockaddr_in is
    // how an AF_INET sockaddr is laid out), so every bit pattern of one is a valid other.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// The interface requests used here, each with the argument type it takes.
enum Request<'a> {
    GetFlags(&'a mut libc::ifreq),
    SetFlags(&'a mut libc::ifreq),
    SetAddress(&'a mut libc::ifreq),
    SetNetmask(&'a mut libc::ifreq),
    AddRoute(&'a mut libc::rtentry),
}

/// Runs one request on a datagram socket made for it; `EEXIST` (a route already there) is no
/// error.
fn ioctl(req: Request<'_>, what: &str) -> Result<(), String> {
    let fd = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("{what}: {}", std::io::Error::from(e)))?;
    let (code, arg): (libc::c_ulong, *mut libc::c_void) = match req {
        Request::GetFlags(r) => (libc::SIOCGIFFLAGS, (r as *mut libc::ifreq).cast()),
        Request::SetFlags(r) => (libc::SIOCSIFFLAGS, (r as *mut libc::ifreq).cast()),
        Request::SetAddress(r) => (libc::SIOCSIFADDR, (r as *mut libc::ifreq).cast()),
        Request::SetNetmask(r) => (libc::SIOCSIFNETMASK, (r as *mut libc::ifreq).cast()),
        Request::AddRoute(r) => (libc::SIOCADDRT, (r as *mut libc::rtentry).cast()),
    };
    // SAFETY: `fd` is an open socket (owned above, closed on return); `arg` points to a live,
    // exclusively borrowed struct of the type the request code takes (the match above pairs
    // them), which the kernel reads or fills within the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), code as _, arg) };
    let e = std::io::Error::last_os_error();
    if r != 0 && e.raw_os_error() != Some(libc::EEXIST) {
        return Err(format!("{what}: {e}"));
    }
    Ok(())
}

/// Brings `lo` and `name` up (`IFF_UP | IFF_RUNNING`).
pub fn link_up(name: &str) -> Result<(), String> {
    for n in ["lo", name] {
        let mut r = ifreq(n);
        ioctl(Request::GetFlags(&mut r), &format!("flags of {n}"))?;
        // SAFETY: SIOCGIFFLAGS filled the union's flags member, the one read and written here.
        unsafe { r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        ioctl(Request::SetFlags(&mut r), &format!("bringing up {n}"))?;
    }
    Ok(())
}

/// Gives interface `name` its address and netmask.
pub fn set_address(name: &str, ip: Ipv4Addr, mask: Ipv4Addr) -> Result<(), String> {
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_addr = sockaddr(ip);
    ioctl(Request::SetAddress(&mut r), "setting the address")?;
    let mut r = ifreq(name);
    r.ifr_ifru.ifru_netmask = sockaddr(mask);
    ioctl(Request::SetNetmask(&mut r), "setting the netmask")
}

/// Adds the default route through `gw` on interface `name`.
pub fn add_default_route(name: &str, gw: Ipv4Addr) -> Result<(), String> {
    // SAFETY: rtentry is plain old data (integers, sockaddrs and pointers that may be null), for
    // which all-zero bytes are a valid value.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr(gw);
    rt.rt_flags = (libc::RTF_UP | libc::RTF_GATEWAY) as libc::c_ushort;
    let dev = std::ffi::CString::new(name).map_err(|_| format!("interface name {name:?} holds a NUL"))?;
    // The kernel reads the name during the call; `dev` outlives it.
    rt.rt_dev = dev.as_ptr() as *mut libc::c_char;
    ioctl(Request::AddRoute(&mut rt), "adding the default route")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_names_are_truncated_and_terminated() {
        let r = ifreq("a-very-long-interface-name");
        assert_eq!(r.ifr_name[libc::IFNAMSIZ - 1], 0);
        assert_eq!(r.ifr_name[0], b'a' as libc::c_char);
    }

    #[test]
    fn sockaddr_is_an_inet_address_in_network_order() {
        let s = sockaddr(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(s.sa_family, libc::AF_INET as libc::sa_family_t);
        // Port (2 bytes) then the address, as sockaddr_in lays them out.
        assert_eq!(&s.sa_data[2..6], &[10, 1, 2, 3].map(|b: u8| b as libc::c_char));
    }

    #[test]
    fn reading_the_flags_of_loopback_works_and_of_a_missing_interface_fails() {
        let mut r = ifreq("lo");
        ioctl(Request::GetFlags(&mut r), "flags of lo").unwrap();
        // SAFETY: SIOCGIFFLAGS filled the flags member.
        assert_ne!(unsafe { r.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short, 0);
        let mut r = ifreq("cw-none0");
        assert!(ioctl(Request::GetFlags(&mut r), "flags").unwrap_err().contains("No such device"));
    }
}
