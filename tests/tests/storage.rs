//! Boot-file storage across real heads: uploads, peer downloads, verification and quarantine,
//! no cascade, shared downloads, deletion (also for a head that was down), crashes during an
//! upload, shared storage, and bad input.

use clusterware_tests::{Backend, Cluster, Head, poll_until};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Deterministic test content.
fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0] ^ seed).collect()
}

fn upload(c: &Cluster, h: usize, data: &[u8], name: &str) -> Value {
    let path = c.dir().join(name);
    std::fs::write(&path, data).unwrap();
    c.heads[h]
        .cli("scyld-clusterctl", &["files", "upload", path.to_str().unwrap(), "--kind", "rootfs", "--json"])
        .json()
}

fn local(h: &Head, id: &str) -> PathBuf {
    h.dir.join("storage").join(id)
}

/// GET of a file's content through a head, as an administrator (root images go to enrolled
/// nodes, heads and administrators only): (status, body).
fn fetch(h: &Head, id: &str, extra_headers: &str) -> (u16, Vec<u8>, String) {
    let auth = clusterware_shared::auth::admin_token(clusterware_tests::PASS);
    raw(
        h,
        &format!(
            "GET /api/v1/files/{id}/content HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {auth}\r\n{extra_headers}\r\n"
        ),
        b"",
    )
}

/// One raw HTTP exchange over HTTPS: (status, body, head).
fn raw(h: &Head, head: &str, body: &[u8]) -> (u16, Vec<u8>, String) {
    let tcp = TcpStream::connect((h.ip, h.tls_port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut s = clusterware_tests::tls_stream(tcp, h);
    s.write_all(head.as_bytes()).unwrap();
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = buf[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body, head)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n").unwrap();
        let n = usize::from_str_radix(std::str::from_utf8(&b[..nl]).unwrap().trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[nl + 2..nl + 2 + n]);
        b = &b[nl + 4 + n..];
    }
}

fn counters(c: &Cluster, h: usize) -> Value {
    let (status, v) = c.heads[h].api("GET", "/storage", Some(&c.token), None);
    assert_eq!(status, 200);
    v
}

fn counter(c: &Cluster, h: usize, name: &str) -> u64 {
    counters(c, h)[name].as_u64().unwrap()
}

/// Requests the file from head `h` until a request costs no hashing: its verification is then
/// trusted (the file is older than the racy window after a write).
fn settle(c: &Cluster, h: usize, id: &str) {
    let mut last = u64::MAX;
    poll_until("verification settles", Duration::from_secs(5), || {
        assert_eq!(fetch(&c.heads[h], id, "").0, 200);
        let now = counter(c, h, "hashed_bytes");
        std::mem::replace(&mut last, now) == now
    });
}

/// The names in `dir` that `keep` accepts, sorted.
fn names_in(dir: &std::path::Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| keep(n))
        .collect();
    v.sort();
    v
}

fn old_copies(h: &Head, id: &str) -> Vec<String> {
    names_in(&h.dir.join("storage"), |n| n.starts_with(&format!("{id}.old.")))
}

#[test]
fn peer_download_verification_and_repair() {
    let c = Cluster::etcd(3);
    let data = content(3 << 20, 7);
    let rec = upload(&c, 0, &data, "root.img");
    let id = rec["id"].as_str().unwrap().to_string();
    assert_eq!(rec["size"], data.len());
    assert_eq!(rec["kind"], "rootfs");

    // Served by C through a peer download; C then holds a copy.
    assert!(!local(&c.heads[2], &id).exists());
    let (status, body, head) = fetch(&c.heads[2], &id, "");
    assert_eq!(status, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert_eq!(body, data);
    assert!(head.to_ascii_lowercase().contains(&format!("x-checksum-sha256: {}", rec["sha256"].as_str().unwrap())));
    assert_eq!(std::fs::read(local(&c.heads[2], &id)).unwrap(), data);
    assert_eq!(counter(&c, 2, "peer_downloads"), 1);

    // Range requests, and a range beyond the end.
    let (status, body, head) = fetch(&c.heads[2], &id, "Range: bytes=100-199\r\n");
    assert_eq!(status, 206, "{head}");
    assert_eq!(body, &data[100..200]);
    assert!(head.contains(&format!("bytes 100-199/{}", data.len())), "{head}");
    let (status, _, head) = fetch(&c.heads[2], &id, &format!("Range: bytes={}-\r\n", data.len()));
    assert_eq!(status, 416, "{head}");
    // HEAD answers size and checksum without a body.
    let (status, body, head) = raw(
        &c.heads[2],
        &format!(
            "HEAD /api/v1/files/{id}/content HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {}\r\n\r\n",
            clusterware_shared::auth::admin_token(clusterware_tests::PASS)
        ),
        b"",
    );
    assert_eq!((status, body.len()), (200, 0));
    assert!(head.to_ascii_lowercase().contains(&format!("content-length: {}", data.len())), "{head}");
    // A root image goes to nobody else, not even another user of the head's machine.
    let (status, body, _) = raw(
        &c.heads[2],
        &format!("GET /api/v1/files/{id}/content HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        b"",
    );
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("enrolled nodes"));

    // Repeated requests of a verified file hash nothing more (once the file is older than the
    // racy window just after it was written, in which the head verifies again).
    // A periodic audit (every 2 s here) hashes files too: measure a window without one.
    settle(&c, 2, &id);
    let mut clean_window = false;
    for _ in 0..10 {
        let (audits, hashed) = (counter(&c, 2, "audits"), counter(&c, 2, "hashed_bytes"));
        for _ in 0..5 {
            assert_eq!(fetch(&c.heads[2], &id, "").0, 200);
        }
        if counter(&c, 2, "audits") != audits {
            continue;
        }
        assert_eq!(counter(&c, 2, "hashed_bytes"), hashed, "requests of a verified file hashed it again");
        clean_window = true;
        break;
    }
    assert!(clean_window, "no window without an audit");

    // On B: a bit flip, a truncation, a missing file: each detected, renamed .old.NN, repaired.
    let b = &c.heads[1];
    assert_eq!(fetch(b, &id, "").1, data);
    let p = local(b, &id);
    let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
    f.write_all_at_offset(12345, &[data[12345] ^ 0x01]);
    drop(f);
    assert_eq!(fetch(b, &id, "").1, data, "bit flip repaired");
    assert_eq!(old_copies(b, &id), [format!("{id}.old.00")]);
    std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(1000).unwrap();
    assert_eq!(fetch(b, &id, "").1, data, "truncation repaired");
    assert_eq!(old_copies(b, &id), [format!("{id}.old.00"), format!("{id}.old.01")]);
    assert_eq!(std::fs::metadata(b.dir.join("storage").join(format!("{id}.old.01"))).unwrap().len(), 1000);
    std::fs::remove_file(&p).unwrap();
    assert_eq!(fetch(b, &id, "").1, data, "missing file fetched");
    assert_eq!(old_copies(b, &id).len(), 2);
    assert_eq!(counter(&c, 1, "quarantined"), 2);

    // A peer that sends wrong bytes (A's copy corrupted behind its back, mtime kept, so A still
    // believes it verified): C discards that download and takes B's.
    settle(&c, 0, &id);
    let pa = local(&c.heads[0], &id);
    let mtime = std::fs::metadata(&pa).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&pa).unwrap();
    f.write_all_at_offset(999, &[data[999] ^ 0xff]);
    f.set_modified(mtime).unwrap();
    drop(f);
    let pc = local(&c.heads[2], &id);
    let mut rejected = false;
    for _ in 0..30 {
        // Gone already (the audit may have moved it) is as good: the next fetch downloads.
        let _ = std::fs::remove_file(&pc);
        let before = counter(&c, 2, "peer_rejects");
        assert_eq!(fetch(&c.heads[2], &id, "").1, data, "C must serve the right bytes");
        if counter(&c, 2, "peer_rejects") > before {
            rejected = true;
            break;
        }
    }
    assert!(rejected, "C never asked A first in 30 tries");

    // heads ls -l shows storage per head after an audit (every 2 s in the harness).
    poll_until("audits report the file", Duration::from_secs(15), || {
        let v = c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json();
        v["heads"].as_array().unwrap().iter().all(|h| h["storage"]["files"] == 1 && h["storage"]["bytes"] == data.len())
    });
    let text = c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "-l"]);
    assert!(text.ok().contains("FILES") && text.stdout.contains("3.0 MiB"), "{text:?}");
}

/// `write_at` for tests.
trait WriteAt {
    fn write_all_at_offset(&self, off: u64, b: &[u8]);
}
impl WriteAt for std::fs::File {
    fn write_all_at_offset(&self, off: u64, b: &[u8]) {
        std::os::unix::fs::FileExt::write_all_at(self, b, off).unwrap();
    }
}

#[test]
fn missing_everywhere_is_404_without_cascade_and_downloads_are_shared() {
    let c = Arc::new(Cluster::etcd(3));
    let data = content(1 << 20, 3);
    let id = upload(&c, 0, &data, "k")["id"].as_str().unwrap().to_string();
    std::fs::remove_file(local(&c.heads[0], &id)).unwrap();
    let before: Vec<u64> = (0..3).map(|h| counter(&c, h, "peer_requests")).collect();
    let (status, body, _) = fetch(&c.heads[1], &id, "");
    assert_eq!(status, 404);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "not_found");
    assert!(v["message"].as_str().unwrap().contains("2 other heads"), "{v}");
    let after: Vec<u64> = (0..3).map(|h| counter(&c, h, "peer_requests")).collect();
    // B asked A and C once each (a HEAD); neither asked anyone in turn.
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2]], [1, 0, 1]);
    assert_eq!(counter(&c, 0, "peer_downloads") + counter(&c, 2, "peer_downloads"), 0);

    // 50 concurrent requests on C for a file only B has: one peer download.
    let data2 = content(4 << 20, 9);
    let id2 = upload(&c, 1, &data2, "big")["id"].as_str().unwrap().to_string();
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (c, id2) = (c.clone(), id2.clone());
            std::thread::spawn(move || fetch(&c.heads[2], &id2, ""))
        })
        .collect();
    for t in threads {
        let (status, body, _) = t.join().unwrap();
        assert_eq!(status, 200);
        assert!(body == data2, "wrong bytes served");
    }
    assert_eq!(counter(&c, 2, "peer_downloads"), 1);

    // Ids never leave the storage directory.
    for bad in ["..%2F..%2Fetc%2Fpasswd", "..", "ABCDEF0123456789ABCDEF0123456789", "x"] {
        let (status, _, _) = fetch(&c.heads[0], bad, "");
        assert_eq!(status, 404, "{bad}");
    }
}

#[test]
fn deletion_reaches_every_head_and_a_down_head_quarantines_later() {
    let mut c = Cluster::etcd(3);
    let data = content(200_000, 1);
    let id = upload(&c, 0, &data, "gone")["id"].as_str().unwrap().to_string();
    for h in 1..3 {
        assert_eq!(fetch(&c.heads[h], &id, "").0, 200);
    }
    // C is down (cleanly stopped: not alive) while the file is deleted.
    assert_eq!(c.heads[2].stop(), Some(0));
    let out = c.heads[0].cli("scyld-clusterctl", &["files", "rm", &id]);
    assert!(out.ok().starts_with(&format!("deleted {id}")), "{out:?}");
    assert!(!local(&c.heads[0], &id).exists(), "removed at once on the deleting head");
    poll_until("B removes its copy", Duration::from_secs(10), || !local(&c.heads[1], &id).exists());
    assert_eq!(c.heads[0].cli("scyld-clusterctl", &["files", "ls"]).ok(), "");
    assert_eq!(fetch(&c.heads[1], &id, "").0, 404);
    // C's copy is old and unreferenced when C comes back: renamed, not deleted.
    let pc = local(&c.heads[2], &id);
    std::fs::File::options()
        .write(true)
        .open(&pc)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    c.heads[2].start();
    c.heads[2].wait_ready(Duration::from_secs(60));
    poll_until("C renames its unreferenced copy", Duration::from_secs(15), || !pc.exists());
    assert_eq!(old_copies(&c.heads[2], &id), [format!("{id}.old.00")]);
    let out = c.heads[0].cli("scyld-clusterctl", &["files", "rm", &id]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains(&format!("no file with id {id}")), "{out:?}");
}

#[test]
fn kill_during_upload_leaves_nothing_and_bad_uploads_are_refused() {
    let mut c = Cluster::solo();
    let h = &c.heads[0];
    let auth = format!("Authorization: Bearer {}\r\n", c.token);
    // Start a 64 MiB upload, send 1 MiB, then kill -9 the head.
    let mut s = clusterware_tests::tls_stream(TcpStream::connect((h.ip, h.tls_port)).unwrap(), h);
    write!(
        s,
        "PUT /api/v1/files?name=partial&kind=rootfs HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {}\r\n\r\n",
        64 << 20
    )
    .unwrap();
    s.write_all(&content(1 << 20, 5)).unwrap();
    let tmp = h.dir.join("storage/.tmp");
    poll_until("upload in progress", Duration::from_secs(10), || std::fs::read_dir(&tmp).unwrap().count() > 0);
    c.heads[0].kill9();
    drop(s);
    c.heads[0].start();
    c.heads[0].wait_ready(Duration::from_secs(30));
    let h = &c.heads[0];
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0, "leftover temporary files removed at start");
    let names = names_in(&h.dir.join("storage"), |n| !n.starts_with('.'));
    assert!(names.is_empty(), "nothing under a final name: {names:?}");
    assert_eq!(h.cli("scyld-clusterctl", &["files", "ls"]).ok(), "");

    // More bytes than declared (chunked, size=10), a checksum that does not match, a bad name
    // or kind, no size at all: refused, nothing stored.
    let chunked = |q: &str, body: &[u8]| {
        let mut b = format!("{:x}\r\n", body.len()).into_bytes();
        b.extend_from_slice(body);
        b.extend_from_slice(b"\r\n0\r\n\r\n");
        raw(
            h,
            &format!(
                "PUT /api/v1/files?{q} HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            ),
            &b,
        )
    };
    let (status, body, _) = chunked("name=x&size=10", &[1u8; 20]);
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("more than the declared 10 bytes"));
    let (status, body, _) = chunked("name=x&size=30", &[1u8; 20]);
    assert_eq!(status, 400);
    assert!(
        String::from_utf8_lossy(&body).contains("20 bytes arrived, 30 declared"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (status, body, _) = chunked(&format!("name=x&size=20&sha256={}", "0".repeat(64)), &[1u8; 20]);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("does not match"));
    for (q, msg) in [
        ("name=a%2Fb&size=1", "is not a file name"),
        ("name=x&kind=boot&size=1", "is not one of"),
        ("name=x", "needs size="),
    ] {
        let (status, body, _) = chunked(q, b"x");
        assert_eq!(status, 400, "{q}");
        assert!(String::from_utf8_lossy(&body).contains(msg), "{q}: {}", String::from_utf8_lossy(&body));
    }
    assert_eq!(h.cli("scyld-clusterctl", &["files", "ls"]).ok(), "");
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
    let (status, v) = h.api("PUT", "/files?name=x&size=1", None, None);
    assert_eq!((status, v["kind"].as_str()), (401, Some("unauthorized")));
    let out = h.cli("scyld-clusterctl", &["files", "upload", "/nonexistent"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("cannot read /nonexistent"), "{out:?}");
}

#[test]
fn shared_storage_needs_no_peer_downloads() {
    let c = Cluster::configure(Backend::Etcd, 2, "");
    // Both heads use head1's storage directory.
    let shared = c.heads[0].dir.join("storage");
    let ini = std::fs::read_to_string(&c.heads[1].config).unwrap();
    let ini = ini.replace(&c.heads[1].dir.join("storage").display().to_string(), &shared.display().to_string());
    std::fs::write(&c.heads[1].config, ini).unwrap();
    let mut c = c;
    for h in &mut c.heads {
        h.start();
    }
    for h in &mut c.heads {
        h.wait_ready(Duration::from_secs(60));
    }
    let data = content(500_000, 2);
    let id = upload(&c, 0, &data, "shared")["id"].as_str().unwrap().to_string();
    assert_eq!(fetch(&c.heads[1], &id, "").1, data);
    assert_eq!(counter(&c, 1, "peer_downloads"), 0);
    c.heads[1].cli("scyld-clusterctl", &["files", "rm", &id]).ok();
    // Wait until both heads have run a whole audit after the delete (every 2 s in the harness).
    let audits: Vec<u64> = (0..2).map(|h| counter(&c, h, "audits")).collect();
    poll_until("both heads audit after the delete", Duration::from_secs(20), || {
        (0..2).all(|h| counter(&c, h, "audits") >= audits[h] + 2)
    });
    let names = names_in(&shared, |n| !n.starts_with('.'));
    assert!(names.is_empty(), "no copy and no .old after a delete on shared storage: {names:?}");
    assert_eq!(counter(&c, 0, "quarantined") + counter(&c, 1, "quarantined"), 0);
}
