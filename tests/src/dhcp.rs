//! DHCP from a test's side: a DISCOVER as a PXE ROM or iPXE sends it, and the offers that come
//! back within a network namespace of the test's (`netns`), on the segment's interface `cwn0`.

use crate::netns::run_in;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A MAC address as its six bytes.
pub fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':').map(|h| u8::from_str_radix(h, 16).unwrap()).collect()
}

/// A DISCOVER for `mac` (relayed through `giaddr` when given; from iPXE with `ipxe`).
pub fn discover(mac: &str, giaddr: Option<Ipv4Addr>, ipxe: bool) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest).set_xid(0x1234_5678).set_chaddr(&mac_bytes(mac));
    if let Some(g) = giaddr {
        m.set_giaddr(g).set_hops(1);
    }
    m.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    if ipxe {
        m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).unwrap();
    buf
}

/// Sends a DISCOVER from namespace `ns` (bound to `local`) to `to` and collects the answers for
/// `wait`: (server identifier, offered address, boot file name).
pub fn offers(
    ns: &str,
    local: SocketAddr,
    to: SocketAddr,
    packet: Vec<u8>,
    wait: Duration,
) -> Vec<(Ipv4Addr, Ipv4Addr, String)> {
    run_in(Some(ns), move || {
        let s = UdpSocket::bind(local).unwrap();
        bind_device(&s);
        s.set_broadcast(true).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        s.send_to(&packet, to).unwrap();
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n])) else { continue };
                if m.opcode() != Opcode::BootReply || m.opts().msg_type() != Some(MessageType::Offer) {
                    continue;
                }
                let sid = match m.opts().get(OptionCode::ServerIdentifier) {
                    Some(DhcpOption::ServerIdentifier(ip)) => *ip,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                let file = m.fname_str().and_then(Result::ok).unwrap_or("").trim_end_matches('\0').to_string();
                got.push((sid, m.yiaddr(), file));
            }
        }
        got
    })
}

/// SO_BINDTODEVICE: broadcasts leave through the segment's interface without a route.
pub fn bind_device(s: &UdpSocket) {
    crate::sys::bind_to_device(s, "cwn0").unwrap_or_else(|e| panic!("SO_BINDTODEVICE: {e}"));
}
