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

    // Acknowledged once verified on two heads (the default minimum); the third fetches it in
    // the background without being asked for it.
    let holding = |c: &Cluster| (0..3).filter(|h| local(&c.heads[*h], &id).exists()).count();
    assert!(holding(&c) >= 2, "acknowledged with fewer than two copies");
    poll_until("every head holds the upload", Duration::from_secs(30), || holding(&c) == 3);

    // Served by C through a peer download once its copy is gone; C then holds a copy again.
    let before = counter(&c, 2, "peer_downloads");
    std::fs::remove_file(local(&c.heads[2], &id)).unwrap();
    let (status, body, head) = fetch(&c.heads[2], &id, "");
    assert_eq!(status, 200, "{head} {}", String::from_utf8_lossy(&body));
    assert_eq!(body, data);
    assert!(head.to_ascii_lowercase().contains(&format!("x-checksum-sha256: {}", rec["sha256"].as_str().unwrap())));
    assert_eq!(std::fs::read(local(&c.heads[2], &id)).unwrap(), data);
    assert_eq!(counter(&c, 2, "peer_downloads"), before + 1, "one download, by the request or the audit");

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

    // A peer that sends wrong bytes: A's copy rots on disk after A verified it (simulated by a
    // verification that vouches for the changed copy, which is what a cache does when the disk
    // changes underneath: bit rot changes no timestamp). C discards that download and takes B's.
    let mut c = c;
    assert_eq!(c.heads[0].stop(), Some(0));
    corrupt_keeping_mtime(&local(&c.heads[0], &id), 999);
    forge_verification(&c.heads[0], &id, rec["sha256"].as_str().unwrap(), 0);
    c.heads[0].start();
    c.heads[0].wait_ready(Duration::from_secs(60));
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

/// Flips the byte at `off` and puts the mtime back, as `touch -r copy ref; …; touch -r ref copy`.
fn corrupt_keeping_mtime(p: &std::path::Path, off: u64) {
    let mtime = std::fs::metadata(p).unwrap().modified().unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    let mut b = [0u8];
    std::os::unix::fs::FileExt::read_exact_at(&std::fs::File::open(p).unwrap(), &mut b, off).unwrap();
    f.write_all_at_offset(off, &[b[0] ^ 0x01]);
    f.set_modified(mtime).unwrap();
}

/// Makes stopped head `h` believe that its copy of `id`, as it is now, was verified `age_s`
/// seconds ago: what its cache does once the disk changed underneath (bit rot changes no
/// timestamp, so no stamp tells).
fn forge_verification(h: &Head, id: &str, sha: &str, age_s: i64) {
    use std::os::unix::fs::MetadataExt;
    let path = h.dir.join("storage").join(format!(".verified-{}.json", h.name));
    let mut v: Value =
        std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(serde_json::json!({}));
    let m = std::fs::metadata(local(h, id)).unwrap();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as i64;
    v[id] = serde_json::json!({
        "stamp": {
            "dev": m.dev(), "ino": m.ino(), "size": m.len(),
            "mtime_ns": m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            "ctime_ns": m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        },
        "sha256": sha,
        "at_ns": now - age_s * 1_000_000_000,
        "written": true,
    });
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
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
    // No periodic audit (they fetch what is missing, which would ask peers in the background).
    let c = Arc::new(Cluster::start(Backend::Etcd, 3, "local_files.audit_interval = 86400\n"));
    let data = content(1 << 20, 3);
    let id = upload(&c, 0, &data, "k")["id"].as_str().unwrap().to_string();
    let all_hold = |id: &str| (0..3).all(|h| local(&c.heads[h], id).exists());
    poll_until("every head holds the upload", Duration::from_secs(30), || all_hold(&id));
    for h in &c.heads {
        std::fs::remove_file(local(h, &id)).unwrap();
    }
    let before: Vec<u64> = (0..3).map(|h| counter(&c, h, "peer_requests")).collect();
    let downloads = counter(&c, 0, "peer_downloads") + counter(&c, 2, "peer_downloads");
    let (status, body, _) = fetch(&c.heads[1], &id, "");
    assert_eq!(status, 404);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["kind"], "not_found");
    assert!(v["message"].as_str().unwrap().contains("2 other heads"), "{v}");
    let after: Vec<u64> = (0..3).map(|h| counter(&c, h, "peer_requests")).collect();
    // B asked A and C once each (a HEAD); neither asked anyone in turn.
    assert_eq!([after[0] - before[0], after[1] - before[1], after[2] - before[2]], [1, 0, 1]);
    assert_eq!(counter(&c, 0, "peer_downloads") + counter(&c, 2, "peer_downloads"), downloads);

    // 50 concurrent requests on C for a file only B has: one peer download.
    let data2 = content(4 << 20, 9);
    let id2 = upload(&c, 1, &data2, "big")["id"].as_str().unwrap().to_string();
    poll_until("every head holds the upload", Duration::from_secs(30), || all_hold(&id2));
    std::fs::remove_file(local(&c.heads[0], &id2)).unwrap();
    std::fs::remove_file(local(&c.heads[2], &id2)).unwrap();
    let downloads = counter(&c, 2, "peer_downloads");
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
    assert_eq!(counter(&c, 2, "peer_downloads"), downloads + 1);

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

/// A HEAD as a peer asks it (`?peer=1`: the local copy only, never fetched): (status, body).
fn peer_head(h: &Head, id: &str) -> (u16, String) {
    let auth = clusterware_shared::auth::admin_token(clusterware_tests::PASS);
    let (status, body, _) = raw(
        h,
        &format!(
            "HEAD /api/v1/files/{id}/content?peer=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {auth}\r\n\r\n"
        ),
        b"",
    );
    (status, String::from_utf8_lossy(&body).to_string())
}

/// The corruption that used to be served for ever (mtime put back), also across a restart; and
/// a node's request and a peer's racing on a bad copy: one check, one rename, no 400.
#[test]
fn a_corrupted_copy_with_its_mtime_restored_is_repaired_and_races_are_clean() {
    let mut c = Cluster::etcd(3);
    let data = content(1 << 20, 11);
    let rec = upload(&c, 0, &data, "kernel");
    let id = rec["id"].as_str().unwrap().to_string();
    poll_until("every head holds the upload", Duration::from_secs(30), || {
        (0..3).all(|h| local(&c.heads[h], &id).exists())
    });
    settle(&c, 1, &id);
    let pb = local(&c.heads[1], &id);
    corrupt_keeping_mtime(&pb, 4242);
    let (status, body, _) = fetch(&c.heads[1], &id, "");
    assert_eq!(status, 200);
    assert!(body == data, "the head served the corrupted copy");
    assert_eq!(old_copies(&c.heads[1], &id), [format!("{id}.old.00")]);

    // Saved to disk, the verification does not vouch for a changed copy after a restart either.
    settle(&c, 1, &id);
    assert_eq!(c.heads[1].stop(), Some(0));
    corrupt_keeping_mtime(&pb, 77);
    c.heads[1].start();
    c.heads[1].wait_ready(Duration::from_secs(60));
    assert!(fetch(&c.heads[1], &id, "").1 == data, "the restarted head served the corrupted copy");
    assert_eq!(old_copies(&c.heads[1], &id).len(), 2);

    // A node and a peer ask for a bad copy at the same moment, in either order.
    let c = Arc::new(c);
    for round in 0..4u64 {
        settle(&c, 1, &id);
        corrupt_keeping_mtime(&pb, 1000 + round);
        let b = Arc::new(std::sync::Barrier::new(2));
        // Both released together; `late` 2 ms after the other.
        let at_once = |late: bool, ask: fn(&Head, &str) -> (u16, Vec<u8>)| {
            let (b, c, id) = (b.clone(), c.clone(), id.clone());
            std::thread::spawn(move || {
                b.wait();
                if late {
                    std::thread::sleep(Duration::from_millis(2));
                }
                ask(&c.heads[1], &id)
            })
        };
        let node = at_once(round % 2 == 1, |h, id| {
            let (status, body, _) = fetch(h, id, "");
            (status, body)
        });
        let peer = at_once(round % 2 == 0, |h, id| {
            let (status, body) = peer_head(h, id);
            (status, body.into_bytes())
        });
        let (ns, nb) = node.join().unwrap();
        let (ps, pbody) = peer.join().unwrap();
        let pbody = String::from_utf8_lossy(&pbody);
        assert_eq!(ns, 200, "round {round}: the node got {}", String::from_utf8_lossy(&nb));
        assert!(nb == data, "round {round}: wrong bytes to the node");
        assert!(ps == 200 || ps == 404, "round {round}: the peer got {ps} {pbody}");
        assert_eq!(old_copies(&c.heads[1], &id).len(), 3 + round as usize, "round {round}: one rename");
    }
}

/// Heads sharing a directory: one corruption, requests on both heads at once (and their audits
/// and scrubs every second): one `.old.NN`, one repair, the right bytes to everyone.
#[test]
fn shared_storage_corruption_gives_one_old_copy_and_one_repair() {
    let mut c = Cluster::configure(Backend::Etcd, 3, "local_files.scrub_interval = 20\n");
    let shared = c.heads[0].dir.join("storage");
    let ini = std::fs::read_to_string(&c.heads[1].config).unwrap();
    let ini = ini.replace(&c.heads[1].dir.join("storage").display().to_string(), &shared.display().to_string());
    std::fs::write(&c.heads[1].config, ini).unwrap();
    for h in &mut c.heads {
        h.start();
    }
    for h in &mut c.heads {
        h.wait_ready(Duration::from_secs(60));
    }
    let c = Arc::new(c);
    let data = content(2 << 20, 4);
    let id = upload(&c, 0, &data, "shared-root")["id"].as_str().unwrap().to_string();
    // Two storages: the upload's second copy is on head3, never on head2 (it shares head1's).
    assert!(local(&c.heads[2], &id).exists(), "acknowledged before the other storage held it");
    for round in 0..3u64 {
        settle(&c, 0, &id);
        settle(&c, 1, &id);
        let downloads: u64 = (0..2).map(|h| counter(&c, h, "peer_downloads")).sum();
        corrupt_keeping_mtime(&shared.join(&id), 5000 + round);
        let threads: Vec<_> = (0..10)
            .map(|i| {
                let (c, id) = (c.clone(), id.clone());
                std::thread::spawn(move || fetch(&c.heads[i % 2], &id, ""))
            })
            .collect();
        for t in threads {
            let (status, body, _) = t.join().unwrap();
            assert_eq!(status, 200, "round {round}: {}", String::from_utf8_lossy(&body));
            assert!(body == data, "round {round}: wrong bytes served");
        }
        let olds = names_in(&shared, |n| n.starts_with(&format!("{id}.old.")));
        assert_eq!(olds.len() as u64, round + 1, "round {round}: one rename for one corruption: {olds:?}");
        let after: u64 = (0..2).map(|h| counter(&c, h, "peer_downloads")).sum();
        assert_eq!(after, downloads + 1, "round {round}: one repair");
    }
    let list = c.heads[0].cli("scyld-clusterctl", &["files", "ls", "--json"]).json();
    assert_eq!(list["min_copies"], 2);
    poll_until("the listing shows two copies on three heads", Duration::from_secs(15), || {
        let list = c.heads[0].cli("scyld-clusterctl", &["files", "ls", "--json"]).json();
        list["copies"][&id]["copies"] == 2 && list["copies"][&id]["heads"].as_array().is_some_and(|h| h.len() == 3)
    });
}

/// An acknowledged upload outlives the head that took it; with too few heads alive for the
/// minimum, an upload is refused before anything is stored; bit rot that no stamp shows is
/// found by the scrub, renamed, repaired and reported.
#[test]
fn acknowledged_uploads_outlive_their_head_and_the_scrub_finds_rot() {
    let mut c = Cluster::start(Backend::Etcd, 3, "local_files.scrub_interval = 20\n");
    let data = content(1 << 20, 21);
    let rec = upload(&c, 0, &data, "new-root");
    let id = rec["id"].as_str().unwrap().to_string();
    c.heads[0].kill9();
    for h in 1..3 {
        let (status, body, _) = fetch(&c.heads[h], &id, "");
        assert_eq!(status, 200, "head {h}: {}", String::from_utf8_lossy(&body));
        assert!(body == data, "head {h}: wrong bytes");
    }

    // Too few heads for local_files.min_copies = 3: refused before a byte is stored (once the
    // killed head's liveness has run out).
    poll_until("head1 is seen gone", Duration::from_secs(30), || {
        let v = c.heads[1].cli("scyld-clusterctl", &["heads", "ls", "--json"]).json();
        v["heads"].as_array().unwrap().iter().any(|h| h["name"] == "head1" && h["alive"] == false)
    });
    let cfg = c.heads[1].config.clone();
    let ini = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, format!("{ini}local_files.min_copies = 3\n")).unwrap();
    assert_eq!(c.heads[1].stop(), Some(0));
    c.heads[1].start();
    c.heads[1].wait_ready(Duration::from_secs(60));
    let path = c.dir().join("refused");
    std::fs::write(&path, content(1000, 1)).unwrap();
    let out = c.heads[1].cli("scyld-clusterctl", &["files", "upload", path.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("needs a verified copy on 3 heads") && out.stderr.contains("min_copies = 1"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("quorum"), "{out:?}");
    let files = c.heads[1].cli("scyld-clusterctl", &["files", "ls"]).ok().to_string();
    assert_eq!(files.lines().count(), 1, "{files}");

    // Rot on head1's copy that no stamp shows, last hashed long ago: its scrub finds it.
    corrupt_keeping_mtime(&local(&c.heads[0], &id), 31337);
    forge_verification(&c.heads[0], &id, rec["sha256"].as_str().unwrap(), 3600);
    c.heads[0].start();
    c.heads[0].wait_ready(Duration::from_secs(60));
    poll_until("head1's scrub finds the rot and fetches a good copy", Duration::from_secs(30), || {
        counter(&c, 0, "scrub_bad") == 1 && local(&c.heads[0], &id).exists()
    });
    assert_eq!(old_copies(&c.heads[0], &id), [format!("{id}.old.00")]);
    assert!(std::fs::read(local(&c.heads[0], &id)).unwrap() == data, "repaired from a peer");
    poll_until("heads ls -l reports it", Duration::from_secs(15), || {
        let out = c.heads[0].cli("scyld-clusterctl", &["heads", "ls", "-l"]);
        out.stderr.contains("head head1: its scrub found 1 local copies")
    });
}
