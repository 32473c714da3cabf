//! A read-only TFTP server (RFC 1350) for the iPXE binaries, with the `blksize`, `tsize` and
//! `timeout` options (RFC 2347-2349) and `windowsize` (RFC 7440) when the client asks. Files come
//! from one directory (default: Debian's `ipxe` package, `/usr/lib/ipxe`); names that leave it
//! (`..`, symbolic links pointing out) are refused, and so are writes.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;
/// Largest file served (the iPXE binaries are well under a megabyte or two).
const MAX_FILE: u64 = 64 << 20;
const RETRIES: u32 = 5;

#[derive(Default)]
pub struct TftpCounters {
    pub requests: AtomicU64,
    pub transfers: AtomicU64,
    pub refused: AtomicU64,
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

/// The file a request names, inside `root`, or why not.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, String> {
    let rel = Path::new(name.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("{name:?} is not a file name inside the TFTP directory"));
    }
    let root = root.canonicalize().map_err(|e| format!("TFTP directory: {e}"))?;
    let p = root.join(rel).canonicalize().map_err(|_| format!("{name:?} does not exist"))?;
    // Debian's ipxe links some binaries to /boot (ipxe.efi -> /boot/ipxe.efi): a link that
    // keeps its file name may point outside; nothing else may.
    if !p.starts_with(&root) && p.file_name() != rel.file_name() {
        return Err(format!("{name:?} leads outside the TFTP directory"));
    }
    if !p.is_file() {
        return Err(format!("{name:?} is not a regular file"));
    }
    Ok(p)
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
    pub counters: TftpCounters,
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
        Arc::new(TftpServer { root, counters: TftpCounters::default() })
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
                    self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    let _ = sock.send_to(&error_packet(4, &format!("illegal TFTP operation: {why}")), peer).await;
                    continue;
                }
            };
            if req.write {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let _ = sock.send_to(&error_packet(2, "this TFTP server is read-only"), peer).await;
                continue;
            }
            let me = self.clone();
            let stop = stop.clone();
            let bind_ip = local_ip.filter(|ip| !ip.is_unspecified());
            tokio::spawn(async move {
                if let Err(e) = me.transfer(req, peer, bind_ip, stop).await {
                    tracing::debug!(%peer, error = %e, "TFTP transfer ended");
                }
            });
        }
    }

    async fn transfer(
        &self,
        req: Request,
        peer: SocketAddr,
        bind_ip: Option<std::net::IpAddr>,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let local: SocketAddr = match bind_ip {
            Some(ip) => SocketAddr::new(ip, 0),
            None => "0.0.0.0:0".parse().expect("literal address"),
        };
        let sock = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
        sock.connect(peer).await.map_err(|e| e.to_string())?;
        let path = match resolve(&self.root, &req.file) {
            Ok(p) => p,
            Err(why) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                let code = if why.contains("does not exist") { 1 } else { 2 };
                let _ = sock.send(&error_packet(code, &why)).await;
                return Err(why);
            }
        };
        let data = match tokio::fs::metadata(&path).await {
            Ok(m) if m.len() <= MAX_FILE => tokio::fs::read(&path).await.map_err(|e| e.to_string())?,
            Ok(_) => {
                let _ = sock.send(&error_packet(3, "file too large")).await;
                return Err("file too large".into());
            }
            Err(e) => {
                let _ = sock.send(&error_packet(1, "cannot read the file")).await;
                return Err(e.to_string());
            }
        };
        self.counters.transfers.fetch_add(1, Ordering::Relaxed);
        let o = negotiate(&req, data.len() as u64);
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
        let blocks = data.len() / o.blksize + 1;
        let mut base = 0usize; // blocks acknowledged so far
        let mut tries = 0;
        while base < blocks {
            let end = (base + o.window).min(blocks);
            for b in base..end {
                let start = b * o.blksize;
                let chunk = &data[start.min(data.len())..(start + o.blksize).min(data.len())];
                let mut p = Vec::with_capacity(4 + chunk.len());
                p.extend_from_slice(&DATA.to_be_bytes());
                p.extend_from_slice(&(((b + 1) & 0xffff) as u16).to_be_bytes());
                p.extend_from_slice(chunk);
                sock.send(&p).await.map_err(|e| e.to_string())?;
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
                        return Err(format!("no acknowledgement after block {base}"));
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

    #[test]
    fn names_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.bin"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("out")).unwrap();
        assert!(resolve(d.path(), "a.bin").is_ok());
        assert!(resolve(d.path(), "/a.bin").is_ok());
        for bad in ["../etc/passwd", "x/../../etc/passwd", "out", "missing", "."] {
            assert!(resolve(d.path(), bad).is_err(), "{bad}");
        }
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
