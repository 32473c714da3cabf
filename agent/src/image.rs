//! The root image of a network boot: fetched from the parent, else the other heads in turn,
//! hashed and unpacked while it arrives (no copy of it is kept), and accepted only when its size
//! and SHA-256 are the ones on the kernel command line. A head that is busy (`503` with
//! `Retry-After`: its `local_files.max_transfers` are taken) or that dies mid-transfer costs a
//! retry on the next head, from the byte where the transfer stopped (a range request), not a
//! failed boot; when every head is busy or gone, the node waits with jittered, capped backoff.
//!
//! Used by `/init` (the sink writes the tree into the new root) and by `clusterware-node sim
//! --boot` (the sink checks the archive and counts).

use crate::client::{Endpoint, FetchError, HeadClient};
use clusterware_shared::api::path;
use clusterware_shared::cpio::{AnyStream, Header, Sink};
use serde::Serialize;
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A transfer that sends nothing for this long is given up (and resumed elsewhere).
pub const IDLE: Duration = Duration::from_secs(15);

/// The image the kernel command line names.
#[derive(Debug, Clone)]
pub struct Want {
    pub id: String,
    pub size: u64,
    pub sha256: String,
}

/// How the image came: bytes by head URL, busy answers, transfers that failed, resumptions.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub served: BTreeMap<String, u64>,
    pub busy: u32,
    pub failed: u32,
    pub resumed: u32,
}

/// Backoff when every head is busy or failed: `first`, doubling to `cap`, each wait drawn from
/// its upper half (so that nodes refused together do not come back together); a `Retry-After`
/// hint longer than the backoff is honoured. `give_up`: none for `/init` (a node keeps trying).
#[derive(Debug, Clone)]
pub struct Retry {
    pub first: Duration,
    pub cap: Duration,
    pub give_up: Option<Duration>,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry { first: Duration::from_millis(500), cap: Duration::from_secs(10), give_up: None }
    }
}

/// A small generator for jitter (no dependency; quality does not matter here).
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        Jitter((seed ^ t) | 1)
    }

    /// A duration drawn from [d/2, d).
    pub fn half_to_full(&mut self, d: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let f = 0.5 + (self.0 >> 11) as f64 / (1u64 << 53) as f64 / 2.0;
        d.mul_f64(f)
    }
}

/// Fetches `want` from `heads` (in order, the parent first) into `sink`. `say` gets a line for
/// each head that failed and each wait.
pub async fn fetch<S: Sink + Send>(
    client: &mut HeadClient,
    heads: &[Endpoint],
    want: &Want,
    sink: S,
    retry: &Retry,
    jitter: &mut Jitter,
    say: &(dyn Fn(&str) + Sync),
) -> Result<(S, Report), String> {
    if heads.is_empty() {
        return Err("no head to fetch the image from".into());
    }
    let started = tokio::time::Instant::now();
    let path = path::full(&path::file_content(&want.id, false));
    let mut hasher = sha2::Sha256::new();
    let mut stream = AnyStream::new(sink);
    let mut offset = 0u64;
    let mut report = Report::default();
    let mut backoff = retry.first;
    loop {
        let mut hint = Duration::ZERO;
        let mut errors = Vec::new();
        for ep in heads {
            let from = offset;
            let mut take = |b: &[u8]| -> Result<(), String> {
                if offset + b.len() as u64 > want.size {
                    return Err(format!("more than the image's {} bytes", want.size));
                }
                hasher.update(b);
                stream.feed(b).map_err(|e| format!("the image is not a newc archive: {e}"))?;
                offset += b.len() as u64;
                Ok(())
            };
            let r = client.fetch(ep, &path, from, (Some(want.size), Some(&want.sha256)), IDLE, &mut take).await;
            if offset > from {
                *report.served.entry(ep.url.clone()).or_default() += offset - from;
                if from > 0 {
                    report.resumed += 1;
                }
            }
            match r {
                Ok(()) => {
                    if offset != want.size {
                        return Err(format!("{}: the image ended after {offset} of {} bytes", ep.url, want.size));
                    }
                    let sha = hex::encode(std::mem::take(&mut hasher).finalize());
                    if sha != want.sha256 {
                        return Err(format!("the image's SHA-256 is {sha}, not {} (from {})", want.sha256, ep.url));
                    }
                    let sink = stream.finish().map_err(|e| format!("the image is not a whole archive: {e}"))?;
                    return Ok((sink, report));
                }
                Err(FetchError::Busy(d)) => {
                    report.busy += 1;
                    hint = hint.max(d);
                    errors.push(format!("{}: busy", ep.url));
                }
                Err(FetchError::Taken(e)) => return Err(e),
                Err(FetchError::Client(e)) => {
                    report.failed += 1;
                    let at = if offset > 0 { format!(" at byte {offset}") } else { String::new() };
                    say(&format!("image from {}: {e}{at}; trying the next head", ep.url));
                    errors.push(format!("{}: {e}", ep.url));
                }
            }
        }
        if retry.give_up.is_some_and(|g| started.elapsed() > g) {
            return Err(format!("no head gave the image: {}", errors.join("; ")));
        }
        let wait = jitter.half_to_full(backoff.max(hint).min(retry.cap.max(hint)));
        say(&format!("no head gave the image: {}; trying again in {:.1} s", errors.join("; "), wait.as_secs_f64()));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(retry.cap);
    }
}

/// A sink that checks the archive and counts its entries and bytes (`sim --boot`).
#[derive(Debug, Default)]
pub struct Count {
    pub entries: u64,
    pub bytes: u64,
}

impl Sink for Count {
    fn entry(&mut self, _h: &Header) -> Result<(), String> {
        self.entries += 1;
        Ok(())
    }
    fn data(&mut self, chunk: &[u8]) -> Result<(), String> {
        self.bytes += chunk.len() as u64;
        Ok(())
    }
    fn done(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// Longest symlink target taken from an image.
const MAX_LINK: u64 = 4096;

enum Open {
    None,
    File(std::fs::File, PathBuf),
    Link(PathBuf, Vec<u8>),
}

/// A sink that writes the tree under `root` (an empty directory: `/init`'s new root in RAM).
/// Nothing is written outside it: paths were checked by the reader, and no entry may go through
/// a symlink an earlier entry made (nor replace a directory with something else).
pub struct Unpack {
    root: PathBuf,
    links: std::collections::HashSet<String>,
    open: Open,
    pub entries: u64,
}

impl Unpack {
    pub fn new(root: &Path) -> Unpack {
        Unpack { root: root.to_path_buf(), links: Default::default(), open: Open::None, entries: 0 }
    }

    fn through_link(&self, path: &str) -> Option<String> {
        let mut at = String::new();
        for c in path.split('/') {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(c);
            if self.links.contains(&at) {
                return Some(at);
            }
        }
        None
    }
}

impl Sink for Unpack {
    fn entry(&mut self, h: &Header) -> Result<(), String> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if let Some(l) = self.through_link(&h.path)
            && (l != h.path || h.kind() != 0o120000)
        {
            return Err(format!("{:?} goes through the image's symlink {l:?}", h.path));
        }
        self.entries += 1;
        let p = self.root.join(&h.path);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let perm = h.mode & 0o7777;
        match h.kind() {
            0o040000 => {
                std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(perm));
            }
            0o100000 => {
                let _ = std::fs::remove_file(&p);
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(perm)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&p)
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                let _ = f.set_permissions(std::fs::Permissions::from_mode(perm));
                self.open = Open::File(f, p);
            }
            0o120000 => {
                if h.size > MAX_LINK {
                    return Err(format!("{:?}: a symlink target of {} bytes", h.path, h.size));
                }
                self.links.insert(h.path.clone());
                self.open = Open::Link(p, Vec::new());
            }
            0o020000 => {
                use nix::sys::stat::{Mode, SFlag, makedev, mknod};
                let dev = makedev(h.rdev.0.into(), h.rdev.1.into());
                let _ = mknod(&p, SFlag::S_IFCHR, Mode::from_bits_truncate(perm), dev);
            }
            _ => {}
        }
        Ok(())
    }

    fn data(&mut self, chunk: &[u8]) -> Result<(), String> {
        match &mut self.open {
            Open::File(f, p) => std::io::Write::write_all(f, chunk).map_err(|e| format!("{}: {e}", p.display())),
            Open::Link(_, t) => {
                t.extend_from_slice(chunk);
                Ok(())
            }
            Open::None => Ok(()),
        }
    }

    fn done(&mut self) -> Result<(), String> {
        if let Open::Link(p, target) = std::mem::replace(&mut self.open, Open::None) {
            let target = String::from_utf8_lossy(&target).to_string();
            let _ = std::fs::remove_file(&p);
            std::os::unix::fs::symlink(&target, &p).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clusterware_shared::cpio::{Entry, write};

    fn image() -> Vec<u8> {
        let mut e = std::collections::BTreeMap::new();
        e.insert("bin".to_string(), Entry::Dir(0o755));
        e.insert("bin/busybox".to_string(), Entry::File { data: vec![7; 300_000], mode: 0o755 });
        e.insert("bin/sh".to_string(), Entry::Symlink("busybox".into()));
        e.insert("etc/motd".to_string(), Entry::File { data: b"hi".to_vec(), mode: 0o644 });
        clusterware_shared::cpio::gzip(&write(&e), 1)
    }

    #[test]
    fn unpacks_in_pieces_and_keeps_inside_its_root() {
        let d = tempfile::tempdir().unwrap();
        let a = image();
        let mut s = AnyStream::new(Unpack::new(d.path()));
        for c in a.chunks(1000) {
            s.feed(c).unwrap();
        }
        assert_eq!(s.finish().unwrap().entries, 4);
        assert_eq!(std::fs::read(d.path().join("bin/busybox")).unwrap().len(), 300_000);
        assert_eq!(std::fs::read_link(d.path().join("bin/sh")).unwrap().to_str(), Some("busybox"));

        // A symlink out of the root, then a file through it: refused, nothing written outside.
        let outside = tempfile::tempdir().unwrap();
        let mut e = std::collections::BTreeMap::new();
        e.insert("a".to_string(), Entry::Symlink(outside.path().display().to_string()));
        e.insert("a/evil".to_string(), Entry::File { data: b"x".to_vec(), mode: 0o644 });
        let d2 = tempfile::tempdir().unwrap();
        let mut s = AnyStream::new(Unpack::new(d2.path()));
        assert!(s.feed(&write(&e)).unwrap_err().contains("goes through the image's symlink"));
        assert!(!outside.path().join("evil").exists());
    }

    /// A fake head: answers each connection from a script (busy, or bytes of the image from the
    /// range asked for, optionally cut short), and counts what it was asked.
    async fn fake_head(
        image: Vec<u8>,
        plan: Vec<&'static str>,
    ) -> (Endpoint, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())).unwrap();
        let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let a2 = asked.clone();
        let sha = hex::encode(sha2::Sha256::digest(&image));
        tokio::spawn(async move {
            let mut plan = plan.into_iter();
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let from: usize = req
                    .lines()
                    .find_map(|l| l.strip_prefix("range: bytes=").or_else(|| l.strip_prefix("Range: bytes=")))
                    .map(|r| r.trim_end_matches('-').parse().unwrap())
                    .unwrap_or(0);
                a2.lock().unwrap().push(format!("from {from}"));
                let step = plan.next().unwrap_or("all");
                if step == "busy" {
                    let body = br#"{"kind":"unavailable","message":"busy"}"#;
                    let h = format!(
                        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(h.as_bytes()).await;
                    let _ = s.write_all(body).await;
                    continue;
                }
                let (status, range) = if from > 0 {
                    (
                        "206 Partial Content",
                        format!("Content-Range: bytes {from}-{}/{}\r\n", image.len() - 1, image.len()),
                    )
                } else {
                    ("200 OK", String::new())
                };
                let h = format!(
                    "HTTP/1.1 {status}\r\n{range}Content-Length: {}\r\nX-Checksum-Sha256: {sha}\r\n\r\n",
                    image.len() - from
                );
                let _ = s.write_all(h.as_bytes()).await;
                let end = if step == "cut" { from + (image.len() - from) / 2 } else { image.len() };
                let _ = s.write_all(&image[from..end]).await;
                // "cut": the head dies mid-transfer.
            }
        });
        (ep, asked)
    }

    #[tokio::test]
    async fn a_busy_or_dying_head_costs_a_retry_elsewhere_not_the_boot() {
        let img = image();
        let want = Want { id: "0".repeat(32), size: img.len() as u64, sha256: hex::encode(sha2::Sha256::digest(&img)) };
        // The parent is busy, then dies half-way; the second head is busy once, then finishes
        // what the parent started.
        let (h1, asked1) = fake_head(img.clone(), vec!["busy", "cut", "cut"]).await;
        let (h2, asked2) = fake_head(img.clone(), vec!["busy", "all"]).await;
        let retry = Retry {
            first: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            give_up: Some(Duration::from_secs(20)),
        };
        let mut c = HeadClient::new(None, None);
        let (sink, r) =
            fetch(&mut c, &[h1.clone(), h2.clone()], &want, Count::default(), &retry, &mut Jitter::new(1), &|_| {})
                .await
                .unwrap();
        assert_eq!(sink.entries, 4);
        assert_eq!(r.busy, 2, "{r:?}");
        assert!(r.resumed >= 1, "{r:?}");
        assert_eq!(r.served.values().sum::<u64>(), want.size, "every byte once: {r:?}");
        assert!(
            asked2.lock().unwrap().iter().any(|a| a != "from 0"),
            "the second head resumed: {asked2:?}, {asked1:?}"
        );

        // A wrong checksum is never accepted.
        let bad = Want { sha256: "0".repeat(64), ..want.clone() };
        let (h3, _) = fake_head(img.clone(), vec![]).await;
        let soon = Retry { give_up: Some(Duration::from_millis(100)), ..retry };
        let e = fetch(&mut c, &[h3], &bad, Count::default(), &soon, &mut Jitter::new(1), &|_| {}).await.unwrap_err();
        assert!(e.contains("another file") || e.contains("SHA-256"), "{e}");
    }
}
