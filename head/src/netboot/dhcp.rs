//! The DHCP server every head runs on its cluster-network interface (`dhcp.interface`).
//!
//! Answers come from memory (the node table that follows `nodes/`): the same MAC gets the same
//! IP from every head, each head naming itself as server identifier and next server. No database
//! round trip and no disk write per packet; no lease state (bindings are static). PXE: a plain PXE
//! ROM gets the iPXE binary for its architecture over TFTP; iPXE (user class `iPXE`) gets the URL
//! of its boot script on this head. A relayed request (giaddr set) is answered to the relay.
//! Unknown MACs are ignored and logged once an hour each, or registered as new nodes when
//! `dhcp.register_unknown` is on (the registry's transactions make sure that one DISCOVER seen by
//! several heads creates one node). A node whose `_preferred_head` is another live head gets this
//! head's offer `dhcp.defer_ms` later, so that the preferred head usually wins; so does every
//! node while this head is stopping (its liveness record says so), so that another head wins.

use crate::core::complaints::Complaints;
use crate::core::db::Database;
use crate::core::view::ClusterView;
use crate::netboot::flags::BootFlags;
use crate::registry::cache::NodeCache;
use clusterware_shared::api::path;
use clusterware_shared::config::BootNet;
use clusterware_shared::ids::MacAddr;
use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct DhcpSettings {
    /// The `dhcp.*` section of the configuration.
    pub net: BootNet,
    /// This head's address on the cluster network (server identifier, next server).
    pub server_ip: Ipv4Addr,
    /// Base URL of this head's API, for iPXE.
    pub http_base: String,
}

#[derive(Default)]
pub struct DhcpCounters {
    pub received: AtomicU64,
    pub offers: AtomicU64,
    pub acks: AtomicU64,
    pub naks: AtomicU64,
    pub unknown: AtomicU64,
    pub dropped: AtomicU64,
    pub no_boot_file: AtomicU64,
}

pub struct DhcpServer {
    db: Database,
    nodes: Arc<NodeCache>,
    view: Arc<ClusterView>,
    settings: DhcpSettings,
    /// Which boot configs want Secure Boot (x64 UEFI PXE clients of those get shim).
    flags: Arc<BootFlags>,
    pub counters: DhcpCounters,
    complaints: Complaints,
    /// Unknown-MAC log lines in the current minute, and those held back.
    unknown_log: Mutex<(Instant, u32, u64)>,
    registering: Mutex<HashSet<MacAddr>>,
}

/// What to do with a request.
#[derive(Debug)]
pub struct Reply {
    pub msg: Message,
    pub to: SocketAddrV4,
    pub delay: Duration,
}

/// Why a packet got no answer (counted; logged at a bounded rate).
#[derive(Debug, PartialEq, Eq)]
pub enum Drop {
    Malformed(String),
    NotForUs,
    Unknown(MacAddr),
    /// A firmware client of an architecture this head has no boot file for (`dhcp.boot_file.N`).
    NoBootFile(u16),
}

/// How a firmware client (not iPXE) boots, from its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Firmware {
    /// Client architecture (option 93; for UEFI HTTP Boot also in the vendor class).
    pub arch: u16,
    /// UEFI HTTP Boot: vendor class (option 60) `HTTPClient…`.
    pub http: bool,
}

/// The vendor class (option 60) of UEFI HTTP Boot clients, and of the answer they need.
const HTTP_CLIENT: &[u8] = b"HTTPClient";

/// What kind of firmware sent `msg`: `None` for a client that is not network-booting firmware
/// (no option 93 and no PXE or HTTP Boot vendor class).
pub fn firmware(msg: &Message) -> Option<Firmware> {
    let class = match msg.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v.as_slice(),
        _ => &[],
    };
    let http = class.starts_with(HTTP_CLIENT);
    let arch = match msg.opts().get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(a)) => Some(u16::from(*a)),
        // `PXEClient:Arch:00007:UNDI:003016`, `HTTPClient:Arch:00016:…`.
        _ => std::str::from_utf8(class)
            .ok()
            .and_then(|c| c.split(':').skip_while(|p| *p != "Arch").nth(1))
            .and_then(|a| a.parse().ok()),
    };
    match (arch, http) {
        (Some(arch), _) => Some(Firmware { arch, http }),
        (None, true) => Some(Firmware { arch: 16, http }),
        (None, false) => None,
    }
}

fn is_ipxe(msg: &Message) -> bool {
    match msg.opts().get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(v)) => v.windows(4).any(|w| w == b"iPXE"),
        _ => false,
    }
}

impl DhcpServer {
    pub fn new(
        db: Database,
        nodes: Arc<NodeCache>,
        view: Arc<ClusterView>,
        settings: DhcpSettings,
        flags: Arc<BootFlags>,
    ) -> Arc<DhcpServer> {
        Arc::new(DhcpServer {
            db,
            nodes,
            view,
            settings,
            flags,
            counters: DhcpCounters::default(),
            complaints: Complaints::default(),
            unknown_log: Mutex::new((Instant::now(), 0, 0)),
            registering: Mutex::new(HashSet::new()),
        })
    }

    fn complain(&self, key: String, every: Duration, f: impl FnOnce()) {
        self.complaints.complain_every(key, every, f)
    }

    /// The answer to one packet, from memory. Pure apart from counters (and the
    /// `clusterware_dhcp_messages_total` metric, by message type and outcome): the tests and
    /// the fuzz-style property test call it directly.
    pub fn respond(&self, bytes: &[u8], from: SocketAddrV4) -> Result<Reply, Drop> {
        let mut kind = "malformed";
        let r = self.answer(bytes, from, &mut kind);
        if let Some(m) = crate::core::metrics::on() {
            let outcome = match &r {
                Ok(reply) => match reply.msg.opts().msg_type() {
                    Some(MessageType::Offer) => "offered",
                    Some(MessageType::Ack) => "acked",
                    _ => "nak",
                },
                Err(Drop::Malformed(_)) => "malformed",
                Err(Drop::NotForUs) => "not_for_us",
                Err(Drop::Unknown(_)) if self.settings.net.register_unknown => "registering_unknown",
                Err(Drop::Unknown(_)) => "ignored_unknown",
                Err(Drop::NoBootFile(_)) => "no_boot_file",
            };
            m.dhcp(kind, outcome);
        }
        r
    }

    /// [`DhcpServer::respond`]'s work; `kind` is set to the message type once it is known.
    fn answer(&self, bytes: &[u8], from: SocketAddrV4, kind: &mut &'static str) -> Result<Reply, Drop> {
        if bytes.len() < 240 || bytes.len() > 1500 {
            return Err(Drop::Malformed(format!("{} bytes", bytes.len())));
        }
        let clean = sanitize(bytes).map_err(Drop::Malformed)?;
        let msg = Message::decode(&mut Decoder::new(&clean)).map_err(|e| Drop::Malformed(e.to_string()))?;
        if msg.opcode() != Opcode::BootRequest {
            return Err(Drop::NotForUs);
        }
        if msg.hlen() != 6 || msg.chaddr().len() < 6 {
            return Err(Drop::Malformed("hardware address is not Ethernet".into()));
        }
        let c = msg.chaddr();
        let mac: MacAddr = format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", c[0], c[1], c[2], c[3], c[4], c[5])
            .parse()
            .map_err(|_| Drop::Malformed("bad hardware address".into()))?;
        let mtype = msg.opts().msg_type();
        *kind = match mtype {
            Some(MessageType::Discover) => "discover",
            Some(MessageType::Request) => "request",
            Some(MessageType::Inform) => "inform",
            Some(MessageType::Release) => "release",
            Some(MessageType::Decline) => "decline",
            Some(_) => "other",
            None => "none",
        };
        let mtype = mtype.ok_or_else(|| Drop::Malformed("no message type".into()))?;
        let Some(node) = self.nodes.by_mac(&mac) else {
            return Err(Drop::Unknown(mac));
        };
        // Firmware gets its architecture's boot file, or no answer at all when there is none
        // (an offer it cannot boot from would only keep it from trying another server).
        let fw = if is_ipxe(&msg) { None } else { firmware(&msg) };
        // Secure Boot: an x64 UEFI PXE client (not HTTP Boot: signed GRUB has no HTTP) of a
        // node whose boot config wants it gets the signed shim, which loads the signed GRUB.
        let shim = fw.is_some_and(|f| matches!(f.arch, 7 | 9) && !f.http) && self.flags.secure_boot(&node);
        let boot_file = match fw {
            Some(_) if shim => Some(self.settings.net.secure_boot.boot_file.as_str()),
            Some(f) => match self.settings.net.boot_file(f.arch) {
                Some(file) => Some(file),
                None if matches!(mtype, MessageType::Discover | MessageType::Request) => {
                    return Err(Drop::NoBootFile(f.arch));
                }
                None => None,
            },
            None => None,
        };
        let me = self.settings.server_ip;
        let (reply_type, yiaddr) = match mtype {
            MessageType::Discover => (MessageType::Offer, node.ip),
            MessageType::Request => {
                if let Some(DhcpOption::ServerIdentifier(sid)) = msg.opts().get(OptionCode::ServerIdentifier) {
                    if *sid != me {
                        // The client took another head's offer.
                        return Err(Drop::NotForUs);
                    }
                }
                let wanted = match msg.opts().get(OptionCode::RequestedIpAddress) {
                    Some(DhcpOption::RequestedIpAddress(ip)) => *ip,
                    _ => msg.ciaddr(),
                };
                if wanted == node.ip { (MessageType::Ack, node.ip) } else { (MessageType::Nak, Ipv4Addr::UNSPECIFIED) }
            }
            MessageType::Inform => (MessageType::Ack, Ipv4Addr::UNSPECIFIED),
            MessageType::Release | MessageType::Decline => {
                let kind = if mtype == MessageType::Release { "release" } else { "decline" };
                tracing::info!(node = %node.name, %mac, %kind, "DHCP client gave up its address");
                return Err(Drop::NotForUs);
            }
            _ => return Err(Drop::NotForUs),
        };
        let mut r = Message::default();
        r.set_opcode(Opcode::BootReply)
            .set_xid(msg.xid())
            .set_flags(msg.flags())
            .set_giaddr(msg.giaddr())
            .set_chaddr(&c[..6])
            .set_yiaddr(yiaddr);
        if mtype == MessageType::Inform {
            r.set_ciaddr(msg.ciaddr());
        }
        let o = r.opts_mut();
        o.insert(DhcpOption::MessageType(reply_type));
        o.insert(DhcpOption::ServerIdentifier(me));
        if reply_type != MessageType::Nak {
            r.set_siaddr(me);
            let o = r.opts_mut();
            if mtype != MessageType::Inform {
                o.insert(DhcpOption::AddressLeaseTime(self.settings.net.lease_secs));
            }
            o.insert(DhcpOption::SubnetMask(self.settings.net.netmask));
            if let Some(gw) = self.settings.net.router {
                o.insert(DhcpOption::Router(vec![gw]));
            }
            if !self.settings.net.dns.is_empty() {
                o.insert(DhcpOption::DomainNameServer(self.settings.net.dns.clone()));
            }
            o.insert(DhcpOption::Hostname(node.name.clone()));
            if let Some(d) = &self.settings.net.domain {
                o.insert(DhcpOption::DomainName(d.clone()));
            }
            // iPXE gets its script; a PXE ROM the iPXE binary for its architecture over TFTP;
            // UEFI HTTP Boot the binary's URL on this head, with the vendor class it requires.
            if is_ipxe(&msg) {
                r.set_fname_str(format!(
                    "{}{}",
                    self.settings.http_base,
                    path::full(&path::boot_script(&mac.to_string()))
                ));
            } else if let (Some(fw), Some(file)) = (fw, boot_file) {
                if fw.http {
                    let url = format!("{}{}", self.settings.http_base, path::full(&path::boot_file(file)));
                    r.opts_mut().insert(DhcpOption::ClassIdentifier(HTTP_CLIENT.to_vec()));
                    // The file field holds 127 characters; a longer URL goes in option 67.
                    if url.len() < 128 {
                        r.set_fname_str(&url);
                    } else {
                        r.opts_mut().insert(DhcpOption::BootfileName(url.into_bytes()));
                    }
                } else {
                    r.set_fname_str(file);
                }
            }
        }
        let to = if !msg.giaddr().is_unspecified() {
            SocketAddrV4::new(msg.giaddr(), 67)
        } else if !msg.ciaddr().is_unspecified() && reply_type != MessageType::Nak {
            SocketAddrV4::new(msg.ciaddr(), from.port().max(68))
        } else {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 68)
        };
        let mut delay = Duration::ZERO;
        if reply_type == MessageType::Offer {
            let me = &self.view.me.name;
            let elsewhere = self.view.preferred_head(&node).is_some_and(|p| p != *me && self.view.takes_nodes(&p));
            // It prefers another head that takes nodes, or this head stops: another head should take it.
            if elsewhere || self.view.stopping(me) {
                delay = Duration::from_millis(self.settings.net.defer_ms);
            }
        }
        match reply_type {
            MessageType::Offer => self.counters.offers.fetch_add(1, Ordering::Relaxed),
            MessageType::Ack => self.counters.acks.fetch_add(1, Ordering::Relaxed),
            _ => self.counters.naks.fetch_add(1, Ordering::Relaxed),
        };
        Ok(Reply { msg: r, to, delay })
    }

    /// Logs an ignored MAC, at most 20 lines a minute in all: a flood of random MACs is summed
    /// up, not logged packet by packet.
    fn log_unknown(&self, mac: MacAddr) {
        let mut l = self.unknown_log.lock().unwrap_or_else(|p| p.into_inner());
        if l.0.elapsed() >= Duration::from_secs(60) {
            if l.2 > 0 {
                tracing::warn!(
                    held_back = l.2,
                    "more DHCP requests from unknown MACs were ignored in the last minute than are logged one by one"
                );
            }
            *l = (Instant::now(), 0, 0);
        }
        if l.1 < 20 {
            l.1 += 1;
            tracing::info!(%mac, "DHCP request from an unknown MAC ignored (set dhcp.register_unknown = yes to add such nodes)");
        } else {
            l.2 += 1;
        }
    }

    /// Registers an unknown MAC as a new node (one registration per MAC at a time).
    fn register(self: &Arc<Self>, mac: MacAddr) {
        {
            let mut r = self.registering.lock().unwrap_or_else(|p| p.into_inner());
            if r.len() >= 64 || !r.insert(mac) {
                return;
            }
        }
        let me = self.clone();
        tokio::spawn(async move {
            let db = me.db.clone();
            let ip = if me.nodes.all().is_empty() { me.settings.net.first_ip } else { None };
            let spec = clusterware_shared::api::NodeSpec { macs: vec![mac], ip, ..Default::default() };
            match crate::registry::create(&db, vec![spec], false).await {
                Ok(n) => {
                    tracing::info!(node = %n[0].name, %mac, ip = %n[0].ip, "registered a new node from its DHCP request")
                }
                Err(crate::registry::RegistryError::Conflict(m)) => {
                    tracing::debug!(%mac, reason = %m, "another head registered this MAC first")
                }
                Err(e) => tracing::warn!(%mac, error = %e, "cannot register a new node from its DHCP request"),
            }
            me.registering.lock().unwrap_or_else(|p| p.into_inner()).remove(&mac);
        });
    }

    /// Serves until `stop` turns true.
    pub async fn run(self: Arc<Self>, sock: UdpSocket, mut stop: watch::Receiver<bool>) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = tokio::select! {
                r = sock.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "DHCP receive failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = stop.changed() => return,
            };
            self.counters.received.fetch_add(1, Ordering::Relaxed);
            let SocketAddr::V4(from) = from else { continue };
            match self.respond(&buf[..n], from) {
                Ok(reply) => {
                    let mut out = Vec::with_capacity(576);
                    if reply.msg.encode(&mut Encoder::new(&mut out)).is_err() {
                        continue;
                    }
                    // Some clients ignore replies shorter than a BOOTP packet.
                    if out.len() < 300 {
                        out.resize(300, 0);
                    }
                    if reply.delay.is_zero() {
                        let _ = sock.send_to(&out, reply.to).await;
                    } else {
                        let sock = sock.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(reply.delay).await;
                            let _ = sock.send_to(&out, reply.to).await;
                        });
                    }
                }
                Err(Drop::Unknown(mac)) => {
                    self.counters.unknown.fetch_add(1, Ordering::Relaxed);
                    if self.settings.net.register_unknown {
                        self.register(mac);
                    } else {
                        self.complain(format!("unknown {mac}"), Duration::from_secs(3600), || self.log_unknown(mac));
                    }
                }
                Err(Drop::Malformed(why)) => {
                    self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    self.complain(
                        "malformed".into(),
                        Duration::from_secs(60),
                        || tracing::warn!(%from, reason = %why, "malformed DHCP packet dropped (logged once a minute)"),
                    );
                }
                Err(Drop::NoBootFile(arch)) => {
                    self.counters.no_boot_file.fetch_add(1, Ordering::Relaxed);
                    self.complain(format!("arch {arch}"), Duration::from_secs(60), || {
                        tracing::warn!(
                            arch,
                            architecture = clusterware_shared::config::arch_name(arch),
                            "a network-booting client of this architecture got no offer: no boot file is set for it (set dhcp.boot_file.{arch} in base.ini; logged once a minute)"
                        )
                    });
                }
                Err(Drop::NotForUs) => {}
            }
        }
    }
}

/// The request with only the options a server reads, each checked: message type (53),
/// requested address (50), server identifier (54), parameter list (55), vendor class (60),
/// client identifier (61), user class (77), client architecture (93). Everything else (option
/// overload included) is left out, so that the decoder never sees an option it could choke on.
pub fn sanitize(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if bytes.len() < 240 {
        return Err(format!("{} bytes, shorter than a DHCP header", bytes.len()));
    }
    if bytes[236..240] != [99, 130, 83, 99] {
        return Err("wrong magic cookie".into());
    }
    let mut out = bytes[..240].to_vec();
    // sname and file are not read (no option overload): blank them.
    out[44..236].fill(0);
    let mut i = 240;
    let mut ended = false;
    while i < bytes.len() {
        let code = bytes[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 {
            ended = true;
            break;
        }
        let len = *bytes.get(i + 1).ok_or("an option is cut off")? as usize;
        let val =
            bytes.get(i + 2..i + 2 + len).ok_or_else(|| format!("option {code} claims {len} bytes past the end"))?;
        let ok = match code {
            53 => len == 1,
            50 | 54 => len == 4,
            93 => len >= 2 && len % 2 == 0,
            55 | 60 | 61 | 77 => len >= 1,
            _ => false,
        };
        if ok {
            out.push(code);
            out.push(len as u8);
            out.extend_from_slice(if code == 93 { &val[..2] } else { val });
            if code == 93 {
                let n = out.len();
                out[n - 3] = 2;
            }
        } else if matches!(code, 53 | 50 | 54 | 93) {
            return Err(format!("option {code} has a bad length {len}"));
        }
        i += 2 + len;
    }
    if !ended {
        return Err("no end option".into());
    }
    out.push(255);
    Ok(out)
}

/// The DHCP socket: all addresses, port `port`, bound to the interface, broadcast allowed.
pub fn bind(interface: &str, port: u16) -> std::io::Result<UdpSocket> {
    let std_sock = std::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    std_sock.set_broadcast(true)?;
    std_sock.set_nonblocking(true)?;
    let sock = UdpSocket::from_std(std_sock)?;
    sock.bind_device(Some(interface.as_bytes()))?;
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;
    use crate::core::schema::HeadRecord;
    use crate::core::supervisor::Supervisor;

    async fn server() -> (Arc<DhcpServer>, Supervisor) {
        let me = HeadRecord::for_test("h1", 1);
        server_in(ClusterView::fixed(me.clone(), vec![me], &["h1"]), 0).await
    }

    /// The same in a cluster `view`, deferring offers by `defer_ms`.
    async fn server_in(view: ClusterView, defer_ms: u64) -> (Arc<DhcpServer>, Supervisor) {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let spec = clusterware_shared::api::NodeSpec {
            macs: vec!["52:54:00:00:00:01".parse().unwrap()],
            ip: Some("10.0.0.5".parse().unwrap()),
            ..Default::default()
        };
        crate::registry::create(&db, vec![spec], false).await.unwrap();
        let sup = Supervisor::new();
        let nodes = NodeCache::spawn(db.clone(), &sup);
        assert!(nodes.wait_ready(Duration::from_secs(5)).await);
        let view = Arc::new(view);
        let settings = DhcpSettings {
            net: BootNet {
                interface: Some("x".into()),
                netmask: "255.255.255.0".parse().unwrap(),
                lease_secs: 600,
                defer_ms,
                bios_file: "undionly.kpxe".into(),
                efi_file: "snponly.efi".into(),
                ..BootNet::default()
            },
            server_ip: "10.0.0.1".parse().unwrap(),
            http_base: "http://10.0.0.1:80".into(),
        };
        let flags = Arc::new(BootFlags::fixed(&[("sb", true), ("plain", false)], Some("plain")));
        (DhcpServer::new(db, nodes, view, settings, flags), sup)
    }

    fn packet(kind: MessageType, mac: [u8; 6], arch: Option<u16>) -> Vec<u8> {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest).set_xid(7).set_chaddr(&mac);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        if let Some(a) = arch {
            m.opts_mut().insert(DhcpOption::ClientSystemArchitecture(a.into()));
        }
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
    fn from() -> SocketAddrV4 {
        "0.0.0.0:68".parse().unwrap()
    }

    #[tokio::test]
    async fn answers_known_macs_by_architecture() {
        let (s, _stop) = server().await;
        // The metrics are the process's: other tests only add to them.
        let m = crate::core::metrics::on().expect("metrics are on by default");
        let count =
            |t: &'static str, o: &'static str| m.dhcp_messages.get_or_create(&[("type", t), ("outcome", o)]).get();
        let before = [count("discover", "offered"), count("request", "nak"), count("discover", "ignored_unknown")];
        let r = s.respond(&packet(MessageType::Discover, MAC, Some(0)), from()).unwrap();
        assert_eq!(r.msg.yiaddr(), "10.0.0.5".parse::<Ipv4Addr>().unwrap());
        assert_eq!(r.to, "255.255.255.255:68".parse().unwrap());
        assert_eq!(r.msg.fname_str().unwrap().unwrap().trim_end_matches('\0'), "undionly.kpxe");
        let r = s.respond(&packet(MessageType::Discover, MAC, Some(7)), from()).unwrap();
        assert_eq!(r.msg.fname_str().unwrap().unwrap().trim_end_matches('\0'), "snponly.efi");
        // A REQUEST for another address is refused.
        let b = with_opt(
            packet(MessageType::Request, MAC, None),
            DhcpOption::RequestedIpAddress("10.0.0.9".parse().unwrap()),
        );
        assert_eq!(s.respond(&b, from()).unwrap().msg.opts().msg_type(), Some(MessageType::Nak));
        assert!(matches!(
            s.respond(&packet(MessageType::Discover, [2, 0, 0, 0, 0, 9], None), from()),
            Err(Drop::Unknown(_))
        ));
        let after = [count("discover", "offered"), count("request", "nak"), count("discover", "ignored_unknown")];
        assert!(after[0] >= before[0] + 2 && after[1] > before[1] && after[2] > before[2], "{before:?} {after:?}");
    }

    /// A stopping head still answers, but later than the heads that take nodes; a head that
    /// does not stop answers at once.
    #[tokio::test]
    async fn a_stopping_head_defers_its_offers() {
        let heads = || vec![HeadRecord::for_test("h1", 1), HeadRecord::for_test("h2", 2)];
        let view = ClusterView::fixed(HeadRecord::for_test("h1", 1), heads(), &["h1", "h2"]);
        let (s, _stop) = server_in(view.with_stopping("h1"), 300).await;
        let r = s.respond(&packet(MessageType::Discover, MAC, Some(0)), from()).unwrap();
        assert_eq!((r.msg.opts().msg_type(), r.delay), (Some(MessageType::Offer), Duration::from_millis(300)));
        let view = ClusterView::fixed(HeadRecord::for_test("h1", 1), heads(), &["h1", "h2"]);
        let (s, _stop) = server_in(view.with_stopping("h2"), 300).await;
        let r = s.respond(&packet(MessageType::Discover, MAC, Some(0)), from()).unwrap();
        assert_eq!(r.delay, Duration::ZERO);
    }

    /// The packet `p` with option `o` added.
    fn with_opt(mut p: Vec<u8>, o: DhcpOption) -> Vec<u8> {
        let mut m = Message::decode(&mut Decoder::new(&p)).unwrap();
        m.opts_mut().insert(o);
        p.clear();
        m.encode(&mut Encoder::new(&mut p)).unwrap();
        p
    }

    fn with_class(p: Vec<u8>, class: &[u8]) -> Vec<u8> {
        with_opt(p, DhcpOption::ClassIdentifier(class.to_vec()))
    }

    fn file_of(r: &Reply) -> String {
        r.msg.fname_str().and_then(Result::ok).unwrap_or_default().trim_end_matches('\0').to_string()
    }

    /// Each architecture gets its own file; one without a file gets no answer at all; a table
    /// entry wins over `dhcp.bios_file`/`dhcp.efi_file`; `none` turns an architecture off.
    #[tokio::test]
    async fn a_boot_file_per_architecture() {
        let (s, _stop) = server().await;
        let offer = |arch| s.respond(&packet(MessageType::Discover, MAC, Some(arch)), from());
        for (arch, file) in [(0, "undionly.kpxe"), (7, "snponly.efi"), (9, "snponly.efi")] {
            assert_eq!(file_of(&offer(arch).unwrap()), file, "arch {arch}");
        }
        // Debian's ipxe has nothing for ARM64 or 32-bit UEFI: no offer.
        for arch in [6, 10, 11, 19, 4242] {
            assert_eq!(offer(arch).unwrap_err(), Drop::NoBootFile(arch), "arch {arch}");
        }
        // A request (not only a discover) is refused the same way; an INFORM is answered.
        let req = packet(MessageType::Request, MAC, Some(11));
        assert_eq!(s.respond(&req, from()).unwrap_err(), Drop::NoBootFile(11));
        assert!(s.respond(&packet(MessageType::Inform, MAC, Some(11)), from()).is_ok());
        // Without option 93 (an operating system's DHCP client): an answer, no file.
        assert_eq!(file_of(&s.respond(&packet(MessageType::Discover, MAC, None), from()).unwrap()), "");
        // iPXE, whatever its architecture, gets its script.
        let b = with_opt(packet(MessageType::Discover, MAC, Some(11)), DhcpOption::UserClass(b"iPXE".to_vec()));
        assert!(file_of(&s.respond(&b, from()).unwrap()).contains("/api/v1/boot/script?mac=52:54:00:00:00:01"));

        let mut net = s.settings.net.clone();
        net.arch_files.insert(11, Some("arm64/snponly.efi".into()));
        net.arch_files.insert(0, None);
        net.arch_files.insert(7, Some("ipxe-x64.efi".into()));
        let s2 = DhcpServer::new(
            s.db.clone(),
            s.nodes.clone(),
            s.view.clone(),
            DhcpSettings { net, ..s.settings.clone() },
            s.flags.clone(),
        );
        let offer = |arch| s2.respond(&packet(MessageType::Discover, MAC, Some(arch)), from());
        assert_eq!(file_of(&offer(11).unwrap()), "arm64/snponly.efi");
        assert_eq!(file_of(&offer(7).unwrap()), "ipxe-x64.efi");
        assert_eq!(file_of(&offer(9).unwrap()), "snponly.efi", "9 still follows dhcp.efi_file");
        assert_eq!(offer(0).unwrap_err(), Drop::NoBootFile(0));
    }

    /// UEFI HTTP Boot: vendor class `HTTPClient` gets option 60 `HTTPClient` and the URL of the
    /// binary on this head; a PXE client's answer carries neither.
    #[tokio::test]
    async fn uefi_http_boot_gets_a_url() {
        let (s, _stop) = server().await;
        let p = with_class(packet(MessageType::Discover, MAC, Some(16)), b"HTTPClient:Arch:00016:UNDI:003001");
        let r = s.respond(&p, from()).unwrap();
        assert_eq!(file_of(&r), "http://10.0.0.1:80/api/v1/boot/files/snponly.efi");
        assert_eq!(
            r.msg.opts().get(OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
        );
        // The architecture from the vendor class when option 93 is missing.
        let p = with_class(packet(MessageType::Discover, MAC, None), b"HTTPClient:Arch:00019:UNDI:003001");
        assert_eq!(s.respond(&p, from()).unwrap_err(), Drop::NoBootFile(19));
        let pxe = with_class(packet(MessageType::Discover, MAC, Some(7)), b"PXEClient:Arch:00007:UNDI:003016");
        let r = s.respond(&pxe, from()).unwrap();
        assert_eq!(file_of(&r), "snponly.efi");
        assert_eq!(r.msg.opts().get(OptionCode::ClassIdentifier), None);
        // A name with a directory in it is one escaped path segment; a URL too long for the file
        // field goes in option 67.
        let mut net = s.settings.net.clone();
        net.arch_files.insert(16, Some("x64/snponly.efi".into()));
        let long = format!("http://10.0.0.1:80/{}", "p".repeat(120));
        let s2 = DhcpServer::new(
            s.db.clone(),
            s.nodes.clone(),
            s.view.clone(),
            DhcpSettings { net: net.clone(), ..s.settings.clone() },
            s.flags.clone(),
        );
        let p = with_class(packet(MessageType::Discover, MAC, Some(16)), b"HTTPClient");
        assert_eq!(file_of(&s2.respond(&p, from()).unwrap()), "http://10.0.0.1:80/api/v1/boot/files/x64%2Fsnponly.efi");
        let s3 = DhcpServer::new(
            s.db.clone(),
            s.nodes.clone(),
            s.view.clone(),
            DhcpSettings { net, http_base: long.clone(), ..s.settings.clone() },
            s.flags.clone(),
        );
        let r = s3.respond(&p, from()).unwrap();
        assert_eq!(file_of(&r), "");
        assert_eq!(
            r.msg.opts().get(OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(format!("{long}/api/v1/boot/files/x64%2Fsnponly.efi").into_bytes()))
        );
    }

    /// Secure Boot: an x64 UEFI PXE client whose effective boot config has `secure_boot` gets
    /// shim (offer and ack, with this head as next server); BIOS, HTTP Boot, iPXE and the nodes
    /// of other configs get what they got before.
    #[tokio::test]
    async fn secure_boot_configs_get_shim() {
        let (plain, _stop) = server().await;
        let pxe = |kind, arch| with_class(packet(kind, MAC, Some(arch)), b"PXEClient:Arch:00007:UNDI:003000");
        assert_eq!(file_of(&plain.respond(&pxe(MessageType::Discover, 7), from()).unwrap()), "snponly.efi");
        for (configs, default) in [(vec![("sb", true)], Some("sb")), (vec![("sb", true), ("plain", false)], Some("sb"))]
        {
            let s = DhcpServer::new(
                plain.db.clone(),
                plain.nodes.clone(),
                plain.view.clone(),
                plain.settings.clone(),
                Arc::new(BootFlags::fixed(&configs, default)),
            );
            for kind in [MessageType::Discover, MessageType::Request] {
                for arch in [7, 9] {
                    let mut p = pxe(kind, arch);
                    if kind == MessageType::Request {
                        p = with_opt(p, DhcpOption::RequestedIpAddress("10.0.0.5".parse().unwrap()));
                    }
                    let r = s.respond(&p, from()).unwrap();
                    assert_eq!(file_of(&r), "sb/shimx64.efi", "{kind:?} arch {arch}");
                    assert_eq!(r.msg.siaddr(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
                }
            }
            assert_eq!(
                file_of(&s.respond(&packet(MessageType::Discover, MAC, Some(0)), from()).unwrap()),
                "undionly.kpxe"
            );
            let http = with_class(packet(MessageType::Discover, MAC, Some(16)), b"HTTPClient:Arch:00016:UNDI:003001");
            assert!(file_of(&s.respond(&http, from()).unwrap()).ends_with("/boot/files/snponly.efi"));
            let b = with_opt(pxe(MessageType::Discover, 7), DhcpOption::UserClass(b"iPXE".to_vec()));
            assert!(file_of(&s.respond(&b, from()).unwrap()).contains("/api/v1/boot/script"));
        }
        // A default without the flag, or one that does not exist: iPXE.
        for (configs, default) in [(vec![("sb", true)], Some("gone")), (vec![("sb", true), ("plain", false)], None)] {
            let s = DhcpServer::new(
                plain.db.clone(),
                plain.nodes.clone(),
                plain.view.clone(),
                plain.settings.clone(),
                Arc::new(BootFlags::fixed(&configs, default)),
            );
            assert_eq!(file_of(&s.respond(&pxe(MessageType::Discover, 7), from()).unwrap()), "snponly.efi");
        }
    }

    /// Malformed input is dropped, never a panic: truncations, wrong cookie, bad option lengths,
    /// option overload, unknown message types, and random mutations of a valid packet.
    #[tokio::test]
    async fn survives_malformed_and_random_packets() {
        let (s, _stop) = server().await;
        let good = packet(MessageType::Discover, MAC, Some(0));
        for n in 0..good.len() {
            let _ = s.respond(&good[..n], from());
        }
        let mut cookie = good.clone();
        cookie[236] ^= 0xff;
        assert!(s.respond(&cookie, from()).is_err());
        let mut badlen = good.clone();
        badlen[240 + 1] = 200; // the first option claims 200 bytes
        assert!(s.respond(&badlen, from()).is_err());
        let mut overload = good.clone();
        overload.truncate(240);
        overload.extend_from_slice(&[53, 1, 1, 52, 1, 3, 255]);
        let _ = s.respond(&overload, from());
        let mut unknown_type = good.clone();
        unknown_type[242] = 77;
        assert!(s.respond(&unknown_type, from()).is_err());
        assert!(s.respond(&vec![0u8; 2000], from()).is_err());
        let mut x: u64 = 0x243f6a8885a308d3;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut p = good.clone();
            for _ in 0..(next() % 8 + 1) {
                let i = (next() as usize) % p.len();
                p[i] = next() as u8;
            }
            let _ = s.respond(&p, from());
            let len = (next() % 700) as usize;
            let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let _ = s.respond(&junk, from());
        }
    }
}
