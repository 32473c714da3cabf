//! Router advertisements that offer nothing, in answer to IPv6 router solicitations on the
//! cluster-network interface (`dhcp.ipv6_ra`, on by default).
//!
//! iPXE configures IPv6 alongside DHCPv4 and waits for a router advertisement before it moves
//! on; on a segment without an IPv6 router that wait made a measured boot take 23 s instead of
//! 10 s. An advertisement with router lifetime 0, no prefixes and neither the managed nor the
//! other-configuration flag tells it at once that there is nothing to configure, and tells every
//! other host that this head is not a router.

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;

/// The advertisement: type 134, code 0, checksum (filled by the kernel), hop limit 64, no flags,
/// router lifetime 0, reachable time 0, retransmit timer 0, no options.
pub fn advertisement() -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = ROUTER_ADVERTISEMENT;
    p[4] = 64;
    p
}

/// A raw ICMPv6 socket on `iface` that may send with hop limit 255 (RFC 4861), registered with
/// the current tokio runtime.
pub fn bind(iface: &str) -> std::io::Result<(AsyncFd<Socket>, u32)> {
    register(open(iface)?)
}

/// The socket of [`bind`], not yet registered (for a caller that opens it in another network
/// namespace than the runtime's thread).
pub fn open(iface: &str) -> std::io::Result<(Socket, u32)> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.bind_device(Some(iface.as_bytes()))?;
    s.set_multicast_hops_v6(255)?;
    s.set_unicast_hops_v6(255)?;
    s.set_nonblocking(true)?;
    let index = nix::net::if_::if_nametoindex(iface)
        .map_err(|e| std::io::Error::other(format!("no interface {iface}: {e}")))?;
    // All-routers group: router solicitations are sent to ff02::2.
    s.join_multicast_v6(&Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2), index)?;
    Ok((s, index))
}

/// Registers an [`open`]ed socket with the current tokio runtime.
pub fn register((s, index): (Socket, u32)) -> std::io::Result<(AsyncFd<Socket>, u32)> {
    let fd = crate::core::sys::async_fd(s)?;
    Ok((fd, index))
}

/// Answers solicitations until `stop` turns true.
pub async fn run((sock, index): (AsyncFd<Socket>, u32), iface: String, mut stop: watch::Receiver<bool>) {
    let all_nodes = SockAddr::from(SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, index));
    let ra = advertisement();
    let mut answered = 0u64;
    loop {
        let ready = tokio::select! {
            r = sock.readable() => r,
            _ = stop.changed() => return,
        };
        let Ok(mut guard) = ready else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut buf = [0u8; 1500];
        match guard.try_io(|s| std::io::Read::read(&mut s.get_ref(), &mut buf)) {
            Ok(Ok(n)) if n >= 1 => {
                let first = buf[0];
                if first == ROUTER_SOLICITATION {
                    if sock.get_ref().send_to(&ra, &all_nodes).is_ok() {
                        answered += 1;
                        if answered == 1 {
                            tracing::info!(interface = %iface, "answering IPv6 router solicitations (nothing to configure)");
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(_would_block) => {}
        }
    }
}
