//! A read-only TFTP server (RFC 1350) for the iPXE binaries, with the `blksize`, `tsize` and
//! `timeout` options (RFC 2347-2349) and `windowsize` (RFC 7440) when the client asks. Files come
//! from one directory (default: Debian's `ipxe` package, `/usr/lib/ipxe`): a name is resolved
//! through every symbolic link on its way and served only if it reaches a regular file inside
//! the directory (Debian's `ipxe.efi -> /boot/ipxe.efi` is refused too: copy the file in to serve
//! it); writes are refused. A transfer reads each block from the open file when it sends it (one
//! block in memory, not the file), and at most [`MAX_TRANSFERS`] run at once,
//! [`MAX_PER_CLIENT`] for one client address; a request past either gets an error packet.

use crate::core::complaints::Complaints;
use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// Error codes (RFC 1350).
const E_UNDEFINED: u16 = 0;
pub(crate) const E_NOT_FOUND: u16 = 1;
pub(crate) const E_ACCESS: u16 = 2;
const E_TOO_LARGE: u16 = 3;
const E_ILLEGAL: u16 = 4;
/// Largest file served (the iPXE binaries are well under a megabyte or two).
const MAX_FILE: u64 = 64 << 20;
const RETRIES: u32 = 5;
/// Transfers running at once, in all and for one client address.
pub const MAX_TRANSFERS: usize = 64;
pub const MAX_PER_CLIENT: usize = 4;
/// What a request past those caps is told.
const BUSY: &str = "too many transfers, try again";

#[derive(Default)]
pub struct TftpCounters {
    pub requests: AtomicU64,
    pub transfers: AtomicU64,
    pub refused: AtomicU64,
}

/// Why a transfer ended early: refused before it began (the file cannot be served), or failed
/// while under way.
#[derive(Debug)]
enum Ended {
    Refused(String),
    Failed(String),
}

impl From<String> for Ended {
    fn from(s: String) -> Ended {
        Ended::Failed(s)
    }
}

impl From<&str> for Ended {
    fn from(s: &str) -> Ended {
        Ended::Failed(s.to_string())
    }
}

/// A parsed read or write request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub write: bool,
    pub file: String,
    pub mode: String,
    pub options: Vec<(String, String)>,
}

/// Parses a request packet; `Err` says why it is not one.
pub fn parse_request(p: &[u8]) -> Result<Request, String> {
    if p.len() < 4 || p.len() > 1024 {
        return Err(format!("a request of {} bytes", p.len()));
    }
    let op = u16::from_be_bytes([p[0], p[1]]);
    if op != RRQ && op != WRQ {
        return Err(format!("opcode {op} is not a request"));
    }
    let body = &p[2..];
    if body.last() != Some(&0) {
        return Err("fields are not NUL-terminated".into());
    }
    let fields: Vec<&[u8]> = body[..body.len() - 1].split(|b| *b == 0).collect();
    if fields.len() < 2 || fields.len() % 2 != 0 {
        return Err("expected file, mode and option pairs".into());
    }
    let text = |b: &[u8]| -> Result<String, String> {
        std::str::from_utf8(b).map(str::to_string).map_err(|_| "a field is not text".to_string())
    };
    let file = text(fields[0])?;
    let mode = text(fields[1])?.to_ascii_lowercase();
    if file.is_empty() {
        return Err("empty file name".into());
    }
    let mut options = Vec::new();
    for pair in fields[2..].chunks(2) {
        options.push((text(pair[0])?.to_ascii_lowercase(), text(pair[1])?));
    }
    Ok(Request { write: op == WRQ, file, mode, options })
}

/// A file opened for a transfer: the handle every block is read from, and its size then.
#[derive(Debug)]
pub struct Opened {
    file: File,
    len: u64,
}

/// Why a name is not served: the TFTP error code and the message.
pub type Refusal = (u16, String);

/// Whether a refusal is for a name that does not exist (the rest are refused access).
pub fn not_found(r: &Refusal) -> bool {
    r.0 == E_NOT_FOUND
}

/// What a transfer sends: a file opened (read block by block), or bytes in memory (generated).
#[derive(Debug)]
pub enum Content {
    File(Opened),
    Mem(bytes::Bytes),
}

/// Names served from elsewhere than the TFTP directory (Secure Boot's virtual names).
pub trait Names: Send + Sync {
    /// `None`: not one of these names (the directory is looked in); `Some(Err)`: refused;
    /// `Some(Ok)`: what to send. `peer` is the client asking.
    fn resolve<'a>(
        &'a self,
        name: &'a str,
        peer: IpAddr,
    ) -> futures::future::BoxFuture<'a, Option<Result<Content, Refusal>>>;
}

impl Opened {
    /// A file opened elsewhere than the TFTP directory, and its size; `Err` past the largest
    /// size served (`max`).
    pub fn new(file: File, len: u64, max: u64) -> Result<Opened, Refusal> {
        if len > max {
            return Err((E_TOO_LARGE, "file too large".into()));
        }
        Ok(Opened { file, len })
    }

    /// The open handle and the file's size when it was opened.
    pub fn into_parts(self) -> (File, u64) {
        (self.file, self.len)
    }
}

/// Opens the file a request names inside `root`, or says why not. Every symbolic link on the
/// way is resolved and what it reaches must be a regular file inside the canonical `root`; the
/// handle opened is checked again (where it really is, what it is), and it is what the transfer
/// reads, so a name swapped for a link after the checks changes nothing.
pub fn open(root: &Path, name: &str) -> Result<Opened, Refusal> {
    let rel = Path::new(name.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err((E_ACCESS, format!("{name:?} is not a file name inside the TFTP directory")));
    }
    let root = root.canonicalize().map_err(|e| (E_NOT_FOUND, format!("TFTP directory: {e}")))?;
    let path = root.join(rel).canonicalize().map_err(|_| (E_NOT_FOUND, format!("{name:?} does not exist")))?;
    let outside = || (E_ACCESS, format!("{name:?} leads outside the TFTP directory"));
    if !path.starts_with(&root) {
        return Err(outside());
    }
    // No link followed at the last step; a FIFO put there does not block the open.
    let flags = nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_NONBLOCK;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits())
        .open(&path)
        .map_err(|e| (E_ACCESS, format!("{name:?} cannot be opened: {e}")))?;
    let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .map_err(|e| (E_ACCESS, format!("{name:?}: where the opened file is: {e}")))?;
    if !real.starts_with(&root) {
        return Err(outside());
    }
    let meta = file.metadata().map_err(|e| (E_ACCESS, format!("{name:?}: {e}")))?;
    if !meta.is_file() {
        return Err((E_ACCESS, format!("{name:?} is not a regular file")));
    }
    if meta.len() > MAX_FILE {
        return Err((E_TOO_LARGE, "file too large".into()));
    }
    Ok(Opened { file, len: meta.len() })
}

/// A transfer's blocks, read from the open file when each is sent (a block sent again is read
/// again): one block in memory, whatever the size of the file.
struct Blocks {
    src: Source,
    len: u64,
    blksize: usize,
    /// The DATA packet of the last block read.
    pkt: Vec<u8>,
}

enum Source {
    File(Arc<File>),
    Mem(bytes::Bytes),
}

impl Blocks {
    fn new(f: Opened, blksize: usize) -> Blocks {
        Blocks { src: Source::File(Arc::new(f.file)), len: f.len, blksize, pkt: Vec::with_capacity(4 + blksize) }
    }

    fn of(c: Content, blksize: usize) -> Blocks {
        match c {
            Content::File(f) => Blocks::new(f, blksize),
            Content::Mem(b) => {
                Blocks { len: b.len() as u64, src: Source::Mem(b), blksize, pkt: Vec::with_capacity(4 + blksize) }
            }
        }
    }

    /// How many blocks the transfer has (the last one shorter than `blksize`, perhaps empty).
    fn count(&self) -> usize {
        (self.len / self.blksize as u64) as usize + 1
    }

    /// The DATA packet of block `b`, counted from 0 (TFTP numbers it `b + 1`, modulo 2^16).
    async fn packet(&mut self, b: usize) -> Result<&[u8], String> {
        let file = match &self.src {
            Source::File(f) => f.clone(),
            Source::Mem(m) => {
                let start = (b * self.blksize).min(m.len());
                let end = (start + self.blksize).min(m.len());
                self.pkt.clear();
                self.pkt.extend_from_slice(&DATA.to_be_bytes());
                self.pkt.extend_from_slice(&(((b + 1) & 0xffff) as u16).to_be_bytes());
                self.pkt.extend_from_slice(&m[start..end]);
                return Ok(&self.pkt);
            }
        };
        let (len, blksize) = (self.len, self.blksize);
        let mut pkt = std::mem::take(&mut self.pkt);
        let (pkt, read) = tokio::task::spawn_blocking(move || {
            let r = fill(&file, len, blksize, b, &mut pkt);
            (pkt, r)
        })
        .await
        .map_err(|e| e.to_string())?;
        self.pkt = pkt;
        read.map_err(|e| format!("reading block {}: {e}", b + 1))?;
        Ok(&self.pkt)
    }
}

/// Reads block `b` of a `len`-byte file into `pkt`, after the DATA header.
fn fill(file: &File, len: u64, blksize: usize, b: usize, pkt: &mut Vec<u8>) -> std::io::Result<()> {
    let start = b as u64 * blksize as u64;
    let n = len.saturating_sub(start).min(blksize as u64) as usize;
    pkt.clear();
    pkt.extend_from_slice(&DATA.to_be_bytes());
    pkt.extend_from_slice(&(((b + 1) & 0xffff) as u16).to_be_bytes());
    pkt.resize(4 + n, 0);
    // A file that shrank since it was opened ends the transfer here.
    file.read_exact_at(&mut pkt[4..], start)
}

/// Transfers running, in all and per client address.
#[derive(Default)]
struct Slots {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
}

/// A running transfer's place; given back when dropped.
struct Slot {
    slots: Arc<Mutex<Slots>>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        s.total -= 1;
        if let Some(n) = s.per_client.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                s.per_client.remove(&self.client);
            }
        }
    }
}

fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + msg.len());
    v.extend_from_slice(&ERROR.to_be_bytes());
    v.extend_from_slice(&code.to_be_bytes());
    v.extend_from_slice(msg.as_bytes());
    v.push(0);
    v
}

pub struct TftpServer {
    root: PathBuf,
    /// Names served from elsewhere, looked at before the directory.
    names: Option<Arc<dyn Names>>,
    pub counters: TftpCounters,
    slots: Arc<Mutex<Slots>>,
    /// Log lines for requests refused as too many (bounded, summed up).
    complaints: Complaints,
}

struct Opts {
    blksize: usize,
    timeout: Duration,
    window: usize,
    oack: Vec<(String, String)>,
}

fn negotiate(req: &Request, size: u64) -> Opts {
    let mut o = Opts { blksize: 512, timeout: Duration::from_secs(1), window: 1, oack: Vec::new() };
    for (k, v) in &req.options {
        match k.as_str() {
            "blksize" => {
                if let Ok(n) = v.parse::<usize>() {
                    if (8..=65464).contains(&n) {
                        // Stay within one Ethernet frame unless the client asked for less.
                        o.blksize = n.min(1468);
                        o.oack.push(("blksize".into(), o.blksize.to_string()));
                    }
                }
            }
            "tsize" => o.oack.push(("tsize".into(), size.to_string())),
            "timeout" => {
                if let Ok(n) = v.parse::<u64>() {
                    if (1..=255).contains(&n) {
                        o.timeout = Duration::from_secs(n);
                        o.oack.push(("timeout".into(), n.to_string()));
                    }
                }
            }
            "windowsize" => {
                if let Ok(n) = v.parse::<usize>() {
                    if (1..=65535).contains(&n) {
                        o.window = n.min(64);
                        o.oack.push(("windowsize".into(), o.window.to_string()));
                    }
                }
            }
            // Unknown options are ignored (RFC 2347).
            _ => {}
        }
    }
    o
}

impl TftpServer {
    pub fn new(root: PathBuf) -> Arc<TftpServer> {
        TftpServer::with_names(root, None)
    }

    /// A server that looks `names` up first, then the directory `root`.
    pub fn with_names(root: PathBuf, names: Option<Arc<dyn Names>>) -> Arc<TftpServer> {
        Arc::new(TftpServer {
            root,
            names,
            counters: TftpCounters::default(),
            slots: Arc::new(Mutex::new(Slots::default())),
            complaints: Complaints::default(),
        })
    }

    /// A place for one more transfer for `client`, or `None` past [`MAX_TRANSFERS`] in all or
    /// [`MAX_PER_CLIENT`] for that address.
    fn admit(&self, client: IpAddr) -> Option<Slot> {
        let mut s = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mine = s.per_client.get(&client).copied().unwrap_or(0);
        if s.total >= MAX_TRANSFERS || mine >= MAX_PER_CLIENT {
            return None;
        }
        s.total += 1;
        *s.per_client.entry(client).or_default() += 1;
        Some(Slot { slots: self.slots.clone(), client })
    }

    /// Logs a request refused as too many: once a minute per client address, and within the
    /// budget of [`Complaints`] for all, so a flood is summed up, not logged packet by packet.
    fn log_busy(&self, peer: SocketAddr) {
        self.complaints.complain(format!("tftp busy {}", peer.ip()), || {
            tracing::warn!(%peer, max = MAX_TRANSFERS, per_client = MAX_PER_CLIENT, "TFTP requests refused: too many transfers");
        });
    }

    pub async fn run(self: Arc<Self>, sock: UdpSocket, mut stop: watch::Receiver<bool>) {
        let local_ip = sock.local_addr().map(|a| a.ip()).ok();
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, peer) = tokio::select! {
                r = sock.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(100)).await; continue; }
                },
                _ = stop.changed() => return,
            };
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
            let req = match parse_request(&buf[..n]) {
                Ok(r) => r,
                Err(why) => {
                    self.refused();
                    let _ =
                        sock.send_to(&error_packet(E_ILLEGAL, &format!("illegal TFTP operation: {why}")), peer).await;
                    continue;
                }
            };
            if req.write {
                self.refused();
                let _ = sock.send_to(&error_packet(E_ACCESS, "this TFTP server is read-only"), peer).await;
                continue;
            }
            let Some(slot) = self.admit(peer.ip()) else {
                self.refused();
                self.log_busy(peer);
                let _ = sock.send_to(&error_packet(E_UNDEFINED, BUSY), peer).await;
                continue;
            };
            let me = self.clone();
            let stop = stop.clone();
            let bind_ip = local_ip.filter(|ip| !ip.is_unspecified());
            tokio::spawn(async move {
                let _slot = slot;
                let r = me.transfer(req, peer, bind_ip, stop).await;
                if let Some(m) = crate::core::metrics::on() {
                    let outcome = match &r {
                        Ok(()) => "completed",
                        Err(Ended::Refused(_)) => "refused",
                        Err(Ended::Failed(_)) => "failed",
                    };
                    m.tftp_transfers.get_or_create(&[("outcome", outcome)]).inc();
                }
                if let Err(Ended::Refused(e) | Ended::Failed(e)) = r {
                    tracing::debug!(%peer, error = %e, "TFTP transfer ended");
                }
            });
        }
    }

    /// Counts a request refused before a transfer began.
    fn refused(&self) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        if let Some(m) = crate::core::metrics::on() {
            m.tftp_transfers.get_or_create(&[("outcome", "refused")]).inc();
        }
    }

    async fn transfer(
        &self,
        req: Request,
        peer: SocketAddr,
        bind_ip: Option<std::net::IpAddr>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        let local: SocketAddr = match bind_ip {
            Some(ip) => SocketAddr::new(ip, 0),
            None => "0.0.0.0:0".parse().expect("literal address"),
        };
        let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
        sock.connect(peer).await.map_err(|e| e.to_string())?;
        let virt = match &self.names {
            Some(n) => n.resolve(&req.file, peer.ip()).await,
            None => None,
        };
        let opened = match virt {
            Some(r) => r,
            None => {
                let root = self.root.clone();
                let name = req.file.clone();
                tokio::task::spawn_blocking(move || open(&root, &name).map(Content::File))
                    .await
                    .map_err(|e| e.to_string())?
            }
        };
        let opened = match opened {
            Ok(f) => f,
            Err((code, why)) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send(&error_packet(code, &why)).await;
                return Err(Ended::Refused(why));
            }
        };
        self.counters.transfers.fetch_add(1, Ordering::Relaxed);
        let len = match &opened {
            Content::File(f) => f.len,
            Content::Mem(b) => b.len() as u64,
        };
        let o = negotiate(&req, len);
        let mut data = Blocks::of(opened, o.blksize);
        let mut ack = vec![0u8; 516];
        // Option acknowledgement, answered by ACK 0.
        if !o.oack.is_empty() {
            let mut p = OACK.to_be_bytes().to_vec();
            for (k, v) in &o.oack {
                p.extend_from_slice(k.as_bytes());
                p.push(0);
                p.extend_from_slice(v.as_bytes());
                p.push(0);
            }
            let mut tries = 0;
            loop {
                sock.send(&p).await.map_err(|e| e.to_string())?;
                match self.wait_ack(&sock, &mut ack, o.timeout, &mut stop).await? {
                    Some(0) => break,
                    Some(_) => {}
                    None => {
                        tries += 1;
                        if tries > RETRIES {
                            return Err("no acknowledgement of the options".into());
                        }
                    }
                }
            }
        }
        let blocks = data.count();
        let mut base = 0usize; // blocks acknowledged so far
        let mut tries = 0;
        while base < blocks {
            let end = (base + o.window).min(blocks);
            for b in base..end {
                let p = match data.packet(b).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = sock.send(&error_packet(E_UNDEFINED, "cannot read the file")).await;
                        return Err(Ended::Failed(e));
                    }
                };
                sock.send(p).await.map_err(|e| e.to_string())?;
                if let Some(m) = crate::core::metrics::on() {
                    m.tftp_bytes.inc_by(p.len().saturating_sub(4) as u64);
                }
            }
            match self.wait_ack(&sock, &mut ack, o.timeout, &mut stop).await? {
                Some(n) => {
                    // Map the 16-bit block number back to the absolute block within the window.
                    let n = n as usize;
                    let acked = (base..end).map(|b| b + 1).find(|b| b & 0xffff == n);
                    if let Some(a) = acked {
                        base = a;
                        tries = 0;
                    }
                }
                None => {
                    tries += 1;
                    if tries > RETRIES {
                        return Err(format!("no acknowledgement after block {base}").into());
                    }
                }
            }
        }
        Ok(())
    }

    /// The next ACK's block number; `None` on timeout. A client ERROR ends the transfer.
    async fn wait_ack(
        &self,
        sock: &UdpSocket,
        buf: &mut [u8],
        timeout: Duration,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<u16>, String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = tokio::select! {
                r = tokio::time::timeout_at(deadline, sock.recv(buf)) => r,
                _ = stop.changed() => return Err("shutting down".into()),
            };
            match r {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(e.to_string()),
                Ok(Ok(n)) if n >= 4 => {
                    let op = u16::from_be_bytes([buf[0], buf[1]]);
                    match op {
                        ACK => return Ok(Some(u16::from_be_bytes([buf[2], buf[3]]))),
                        ERROR => return Err("the client ended the transfer".into()),
                        _ => continue,
                    }
                }
                Ok(Ok(_)) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn requests() {
        let r = parse_request(b"\x00\x01undionly.kpxe\x00octet\x00blksize\x001428\x00tsize\x000\x00").unwrap();
        assert_eq!(r.file, "undionly.kpxe");
        assert_eq!(r.options, vec![("blksize".into(), "1428".into()), ("tsize".into(), "0".into())]);
        assert!(parse_request(b"\x00\x02f\x00octet\x00").unwrap().write);
        for bad in
            [&b"\x00"[..], b"\x00\x03f\x00octet\x00", b"\x00\x01f\x00octet", b"\x00\x01\x00octet\x00", b"\x00\x01f\x00"]
        {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        let o = negotiate(
            &parse_request(b"\x00\x01f\x00octet\x00blksize\x0099999\x00bogus\x001\x00windowsize\x008\x00").unwrap(),
            10,
        );
        assert_eq!((o.blksize, o.window), (512, 8));
    }

    fn refused(root: &Path, name: &str) -> Refusal {
        open(root, name).expect_err(name)
    }

    #[test]
    fn names_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.bin"), b"x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("../a.bin", d.path().join("sub/in")).unwrap();
        std::os::unix::fs::symlink("sub", d.path().join("subdir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("out")).unwrap();
        nix::unistd::mkfifo(&d.path().join("fifo"), nix::sys::stat::Mode::S_IRUSR).unwrap();
        for good in ["a.bin", "/a.bin", "sub/in", "subdir/in"] {
            let f = open(d.path(), good).unwrap_or_else(|e| panic!("{good}: {e:?}"));
            assert_eq!(f.len, 1, "{good}");
        }
        for bad in ["../etc/passwd", "x/../../etc/passwd", "out", "sub", "fifo", "."] {
            assert_eq!(refused(d.path(), bad).0, E_ACCESS, "{bad}");
        }
        assert_eq!(refused(d.path(), "missing").0, E_NOT_FOUND);
    }

    /// A symbolic link to a directory outside is not followed out of the TFTP directory (the
    /// attack of issue 17: `sysetc -> /etc` made `sysetc/passwd` return `/etc/passwd`).
    #[test]
    fn a_linked_directory_outside_is_refused() {
        let (d, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(outside.path().join("secret"), b"secret").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("linked")).unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("sysetc")).unwrap();
        for bad in ["linked/secret", "/linked/secret", "sysetc/passwd", "sysetc/hostname"] {
            let (code, why) = refused(d.path(), bad);
            assert!(code == E_ACCESS && why.contains("leads outside"), "{bad}: {why}");
        }
    }

    /// A symbolic link to a file outside is refused, even one keeping its target's name (as
    /// Debian's `ipxe.efi -> /boot/ipxe.efi`, allowed before).
    #[test]
    fn a_linked_file_outside_is_refused() {
        let (d, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(outside.path().join("ipxe.efi"), b"outside").unwrap();
        std::os::unix::fs::symlink(outside.path().join("ipxe.efi"), d.path().join("ipxe.efi")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("ipxe.efi"), d.path().join("other.efi")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("passwd")).unwrap();
        for bad in ["ipxe.efi", "other.efi", "passwd"] {
            let (code, why) = refused(d.path(), bad);
            assert!(code == E_ACCESS && why.contains("leads outside"), "{bad}: {why}");
        }
    }

    /// The handle opened is what is served: the name swapped for a link out afterwards does not
    /// change a byte.
    #[tokio::test]
    async fn a_swap_after_the_open_changes_nothing() {
        let (d, outside) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(d.path().join("f"), b"inside").unwrap();
        std::fs::write(outside.path().join("f"), b"OUTSIDE").unwrap();
        let f = open(d.path(), "f").unwrap();
        std::fs::rename(d.path().join("f"), d.path().join("old")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("f"), d.path().join("f")).unwrap();
        let mut blocks = Blocks::new(f, 512);
        assert_eq!(&blocks.packet(0).await.unwrap()[4..], b"inside");
    }

    /// Bytes that look random, the same for a given seed.
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// Blocks are read from the file, in any order and again, each the file's bytes at its
    /// offset, with one block's packet in memory.
    #[tokio::test]
    async fn blocks_come_from_the_file() {
        let d = tempfile::tempdir().unwrap();
        for (len, blksize) in [(10 * 512 + 100, 512), (3 * 1428, 1428), (0, 512)] {
            let bytes = noise(len, len as u64);
            std::fs::write(d.path().join("f"), &bytes).unwrap();
            let mut blocks = Blocks::new(open(d.path(), "f").unwrap(), blksize);
            let count = blocks.count();
            assert_eq!(count, len / blksize + 1);
            for b in [count - 1, 0, count / 2, 0, count - 1, count / 2] {
                let p = blocks.packet(b).await.unwrap().to_vec();
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), DATA);
                assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, b + 1);
                let start = (b * blksize).min(len);
                assert_eq!(&p[4..], &bytes[start..(start + blksize).min(len)], "block {b} of {len} bytes");
                assert!(blocks.pkt.capacity() <= 4 + blksize, "more than one block held");
            }
        }
    }

    /// A read that finds the file shorter than it was at the open is an error, not short data.
    #[tokio::test]
    async fn a_file_that_shrank_ends_the_transfer() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), noise(2000, 1)).unwrap();
        let mut blocks = Blocks::new(open(d.path(), "f").unwrap(), 512);
        std::fs::OpenOptions::new().write(true).open(d.path().join("f")).unwrap().set_len(600).unwrap();
        assert!(blocks.packet(0).await.is_ok());
        assert!(blocks.packet(2).await.is_err());
    }

    /// A server on 127.0.0.1 serving `root`; it stops when the sender is dropped or sent `true`.
    async fn serve(root: &Path) -> (Arc<TftpServer>, SocketAddr, watch::Sender<bool>) {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let server = TftpServer::new(root.to_path_buf());
        let (tx, rx) = watch::channel(false);
        tokio::spawn(server.clone().run(sock, rx));
        (server, addr, tx)
    }

    fn rrq(name: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = RRQ.to_be_bytes().to_vec();
        for f in [name, "octet"].into_iter().chain(opts.iter().flat_map(|(k, v)| [*k, *v])) {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    fn ack(n: u16) -> Vec<u8> {
        [ACK.to_be_bytes(), n.to_be_bytes()].concat()
    }

    /// The next packet from the server (and where from), or a timeout after 5 s.
    async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
        let mut buf = vec![0u8; 70_000];
        let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        buf.truncate(n);
        (buf, from)
    }

    fn opcode(p: &[u8]) -> u16 {
        u16::from_be_bytes([p[0], p[1]])
    }

    /// Reads `name` as a client on `from` does: the options acknowledged, each window (or the
    /// last block) acknowledged. `Err` is the server's error message.
    async fn fetch(server: SocketAddr, from: IpAddr, name: &str, opts: &[(&str, &str)]) -> Result<Vec<u8>, String> {
        let sock = UdpSocket::bind((from, 0)).await.unwrap();
        sock.send_to(&rrq(name, opts), server).await.unwrap();
        let (mut blksize, mut window, mut next, mut unacked) = (512usize, 1usize, 1u16, 0usize);
        let mut got = Vec::new();
        loop {
            let (p, tid) = recv(&sock).await;
            match opcode(&p) {
                OACK => {
                    let fields: Vec<&[u8]> = p[2..p.len() - 1].split(|b| *b == 0).collect();
                    for kv in fields.chunks(2) {
                        let v: usize = std::str::from_utf8(kv[1]).unwrap().parse().unwrap();
                        match kv[0] {
                            b"blksize" => blksize = v,
                            b"windowsize" => window = v,
                            _ => {}
                        }
                    }
                    sock.send_to(&ack(0), tid).await.unwrap();
                }
                DATA => {
                    let b = u16::from_be_bytes([p[2], p[3]]);
                    if b != next {
                        continue;
                    }
                    got.extend_from_slice(&p[4..]);
                    next = next.wrapping_add(1);
                    unacked += 1;
                    let last = p.len() - 4 < blksize;
                    if last || unacked == window {
                        sock.send_to(&ack(b), tid).await.unwrap();
                        unacked = 0;
                    }
                    if last {
                        return Ok(got);
                    }
                }
                ERROR => return Err(String::from_utf8_lossy(&p[4..p.len() - 1]).into_owned()),
                op => panic!("opcode {op} from the server"),
            }
        }
    }

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Files of many blocks (far more than one block held in memory) arrive byte for byte,
    /// with and without options, and with the empty last block of a file that fills its blocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transfers_carry_the_file() {
        let d = tempfile::tempdir().unwrap();
        let big = noise((3 << 20) + 7, 3);
        std::fs::write(d.path().join("big"), &big).unwrap();
        let even = noise(4 * 512, 4);
        std::fs::write(d.path().join("even"), &even).unwrap();
        std::fs::write(d.path().join("empty"), b"").unwrap();
        let (server, addr, _stop) = serve(d.path()).await;
        let opts = [("blksize", "1428"), ("tsize", "0"), ("windowsize", "16")];
        assert!(fetch(addr, LO, "big", &opts).await.unwrap() == big);
        assert!(fetch(addr, LO, "/big", &[("windowsize", "64")]).await.unwrap() == big);
        assert!(fetch(addr, LO, "even", &[]).await.unwrap() == even);
        assert!(fetch(addr, LO, "empty", &[]).await.unwrap().is_empty());
        assert!(fetch(addr, LO, "missing", &[]).await.unwrap_err().contains("does not exist"));
        assert_eq!(server.counters.transfers.load(Ordering::Relaxed), 4);
    }

    /// Blocks sent again, after an acknowledgement in the middle of a window and after a
    /// timeout, are the file's bytes at their offsets.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resent_blocks_are_the_files() {
        let d = tempfile::tempdir().unwrap();
        let bytes = noise(20 * 512 + 3, 5);
        std::fs::write(d.path().join("f"), &bytes).unwrap();
        let (_server, addr, _stop) = serve(d.path()).await;
        let sock = UdpSocket::bind((LO, 0)).await.unwrap();
        sock.send_to(&rrq("f", &[("windowsize", "4"), ("timeout", "1")]), addr).await.unwrap();
        let (p, tid) = recv(&sock).await;
        assert_eq!(opcode(&p), OACK);
        sock.send_to(&ack(0), tid).await.unwrap();
        let block = |b: usize| bytes[(b - 1) * 512..(b * 512).min(bytes.len())].to_vec();
        let expect = async |numbers: &[usize]| {
            for &b in numbers {
                let (p, _) = recv(&sock).await;
                assert_eq!((opcode(&p), u16::from_be_bytes([p[2], p[3]]) as usize), (DATA, b));
                assert!(p[4..] == block(b)[..], "block {b}");
            }
        };
        expect(&[1, 2, 3, 4]).await;
        // Block 2 acknowledged: 3 and 4 are sent again, with 5 and 6.
        sock.send_to(&ack(2), tid).await.unwrap();
        expect(&[3, 4, 5, 6]).await;
        // No acknowledgement: the same window again after the timeout.
        expect(&[3, 4, 5, 6]).await;
        sock.send_to(&ack(6), tid).await.unwrap();
        expect(&[7, 8, 9, 10]).await;
    }

    /// Past [`MAX_PER_CLIENT`] transfers for one address or [`MAX_TRANSFERS`] in all, a request
    /// is refused with an error packet; a place is given back when its transfer ends.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn transfers_are_capped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), noise(100_000, 6)).unwrap();
        let (server, addr, stop) = serve(d.path()).await;
        let mut held = Vec::new();
        // A transfer held open: its options sent, never acknowledged (the server waits 255 s).
        let hold = async |ip: IpAddr| -> Result<(UdpSocket, SocketAddr), String> {
            let sock = UdpSocket::bind((ip, 0)).await.unwrap();
            sock.send_to(&rrq("f", &[("timeout", "255")]), addr).await.unwrap();
            let (p, tid) = recv(&sock).await;
            match opcode(&p) {
                OACK => Ok((sock, tid)),
                ERROR => {
                    assert_eq!(u16::from_be_bytes([p[2], p[3]]), E_UNDEFINED);
                    Err(String::from_utf8_lossy(&p[4..p.len() - 1]).into_owned())
                }
                op => panic!("opcode {op}"),
            }
        };
        for _ in 0..MAX_PER_CLIENT {
            held.push(hold(LO).await.unwrap());
        }
        assert_eq!(hold(LO).await.unwrap_err(), BUSY);
        assert_eq!(fetch(addr, LO, "f", &[]).await.unwrap_err(), BUSY);
        // Other addresses go on, up to the cap in all.
        let mut i = 0u32;
        while held.len() < MAX_TRANSFERS {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x7f00_0100 + 1 + i / MAX_PER_CLIENT as u32));
            held.push(hold(ip).await.unwrap());
            i += 1;
        }
        let fresh = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 2, 1));
        assert_eq!(hold(fresh).await.unwrap_err(), BUSY);
        assert_eq!(server.slots.lock().unwrap().total, MAX_TRANSFERS);
        // A transfer that ends gives its place back.
        let (sock, tid) = held.pop().unwrap();
        sock.send_to(&error_packet(E_UNDEFINED, "enough"), tid).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.slots.lock().unwrap().total == MAX_TRANSFERS {
            assert!(Instant::now() < deadline, "the ended transfer kept its place");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(fetch(addr, fresh, "f", &[]).await.is_ok());
        // Stopping ends every transfer and gives every place back.
        stop.send(true).unwrap();
        while server.slots.lock().unwrap().total > 0 {
            assert!(Instant::now() < deadline, "places kept after the stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(server.slots.lock().unwrap().per_client.is_empty());
    }

    /// Names from a resolver are asked first: generated bytes are served block by block,
    /// refusals are sent as errors, and names it does not know come from the directory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resolved_names_come_first() {
        struct Fixed(Vec<u8>);
        impl Names for Fixed {
            fn resolve<'a>(
                &'a self,
                name: &'a str,
                _peer: IpAddr,
            ) -> futures::future::BoxFuture<'a, Option<Result<Content, Refusal>>> {
                use futures::FutureExt;
                async move {
                    match name.trim_start_matches('/') {
                        "v/gen" => Some(Ok(Content::Mem(self.0.clone().into()))),
                        n if n.starts_with("v/") => Some(Err((E_NOT_FOUND, "no such name".into()))),
                        _ => None,
                    }
                }
                .boxed()
            }
        }
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("real"), b"from the directory").unwrap();
        let generated = noise(3 * 1024 + 5, 9);
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let server = TftpServer::with_names(d.path().to_path_buf(), Some(Arc::new(Fixed(generated.clone()))));
        let (_tx, rx) = watch::channel(false);
        tokio::spawn(server.run(sock, rx));
        assert!(fetch(addr, LO, "/v/gen", &[("blksize", "1024"), ("tsize", "0")]).await.unwrap() == generated);
        assert!(fetch(addr, LO, "v/gen", &[]).await.unwrap() == generated);
        assert_eq!(fetch(addr, LO, "v/other", &[]).await.unwrap_err(), "no such name");
        assert_eq!(fetch(addr, LO, "real", &[]).await.unwrap(), b"from the directory");
    }

    /// Random bytes never panic the parser.
    #[test]
    fn parser_survives_random_bytes() {
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 600) as usize;
            let mut v = Vec::with_capacity(len);
            let mut y = x;
            for _ in 0..len {
                y = y.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                v.push((y >> 56) as u8);
            }
            if len >= 2 && x % 3 == 0 {
                v[0] = 0;
                v[1] = 1;
            }
            let _ = parse_request(&v);
        }
    }
}
