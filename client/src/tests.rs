//! The client against a tiny HTTPS server made here with `std::net::TcpListener` and rustls (a
//! certificate from a CA made for the tests): what goes on the wire (paths, credential, lengths)
//! and how every kind of answer is decoded.

use crate::{BlockingClient, Client, Config, Error, Timeouts, Transport};
use clusterware_shared::api::{ApiError, CreateNodes, ErrorKind, FileRecord, ImportOptions, NodeList, NodeSpec};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// One request as the server saw it.
#[derive(Debug)]
struct Seen {
    /// Request line and headers, lower-cased header names.
    line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// A server's side of one TLS connection.
type Conn = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// The tests' CA (PEM) and the server configuration of a certificate it issued for 127.0.0.1.
static TLS: std::sync::LazyLock<(String, std::sync::Arc<rustls::ServerConfig>)> = std::sync::LazyLock::new(|| {
    use clusterware_shared::pki;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let ca = pki::Ca::create().unwrap();
    let i = ca.issue("test", &pki::head_names("test", &[]), 1).unwrap();
    let chain = CertificateDer::pem_slice_iter(i.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).unwrap();
    let cfg =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
    (ca.cert_pem, std::sync::Arc::new(cfg))
});

/// A configuration for the test server at `base`, trusting the tests' CA.
fn cfg(base: &str) -> Config {
    Config::new(base).ca_pem(&TLS.0)
}

/// Serves `n` connections over TLS, one request each: `respond` writes the answer. Returns the
/// base URL and what the server saw.
fn serve(n: usize, respond: impl Fn(&Seen, &mut Conn) + Send + 'static) -> (String, mpsc::Receiver<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", l.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for _ in 0..n {
            let (tcp, _) = l.accept().unwrap();
            let s = rustls::StreamOwned::new(rustls::ServerConnection::new(TLS.1.clone()).unwrap(), tcp);
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                r.read_line(&mut h).unwrap();
                let h = h.trim_end();
                if h.is_empty() {
                    break;
                }
                let (k, v) = h.split_once(':').unwrap();
                headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
            let mut seen = Seen { line: line.trim_end().to_string(), headers, body: Vec::new() };
            if let Some(len) = seen.header("content-length").map(|v| v.parse::<usize>().unwrap()) {
                seen.body = vec![0; len];
                r.read_exact(&mut seen.body).unwrap();
            }
            let mut s = r.into_inner();
            respond(&seen, &mut s);
            let _ = s.flush();
            let _ = tx.send(seen);
        }
    });
    (base, rx)
}

fn answer(s: &mut Conn, status: &str, body: &str) {
    let _ = write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn client(base: &str) -> BlockingClient {
    BlockingClient::new(cfg(base).token("tok").timeout_secs(5)).unwrap()
}

const NODES: &str =
    r#"{"nodes":[{"uid":"u1","index":0,"name":"n0","macs":["52:54:00:00:00:01"],"ip":"10.0.0.1","created":1}]}"#;

#[test]
fn a_typed_call_sends_its_path_and_credential_and_decodes_the_answer() {
    let (base, seen) = serve(1, |_, s| answer(s, "200 OK", NODES));
    let list = client(&format!("{base}/")).nodes().unwrap();
    assert_eq!(list.nodes[0].name, "n0");
    let r = seen.recv().unwrap();
    assert_eq!(r.line, "GET /api/v1/nodes HTTP/1.1");
    assert_eq!(r.header("authorization"), Some("Bearer tok"));
}

#[test]
fn a_json_body_is_sent_as_json_and_a_201_is_a_success() {
    let (base, seen) = serve(1, |_, s| answer(s, "201 Created", NODES));
    let spec = NodeSpec { macs: vec!["52:54:00:00:00:01".parse().unwrap()], ..Default::default() };
    let c = BlockingClient::new(cfg(&base).token("tok").user("alice")).unwrap();
    let list: NodeList = c.create_nodes(&CreateNodes { nodes: vec![spec], force: false }).unwrap();
    assert_eq!(list.nodes.len(), 1);
    let r = seen.recv().unwrap();
    assert_eq!(r.line, "POST /api/v1/nodes HTTP/1.1");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-clusterware-user"), Some("alice"));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["nodes"][0]["macs"][0], "52:54:00:00:00:01");
}

#[test]
fn path_parameters_and_flags_are_built_and_escaped() {
    let (base, seen) = serve(3, |_, s| answer(s, "200 OK", r#"{"name":"a b","key":"k","added":1}"#));
    let c = client(&base);
    c.delete_key("a b/c").unwrap();
    assert_eq!(seen.recv().unwrap().line, "DELETE /api/v1/keys/a%20b%2Fc HTTP/1.1");
    let _ = c.delete_image("img", true);
    assert_eq!(seen.recv().unwrap().line, "DELETE /api/v1/images/img?force=1 HTTP/1.1");
    let _ = c.cluster(true);
    assert_eq!(seen.recv().unwrap().line, "GET /api/v1/cluster?data=1 HTTP/1.1");
}

#[test]
fn a_refusal_keeps_the_status_and_the_heads_kind_and_message() {
    let (base, _) =
        serve(1, |_, s| answer(s, "409 Conflict", r#"{"kind":"conflict","message":"MAC 52:54:00:00:00:01 is taken"}"#));
    let e = client(&base).nodes().unwrap_err();
    assert_eq!(e.status(), Some(409));
    assert_eq!(e.kind(), Some(ErrorKind::Conflict));
    assert!(!e.is_transport());
    // The head's message is the whole message: it says what to do.
    assert_eq!(e.to_string(), "MAC 52:54:00:00:00:01 is taken");
}

#[test]
fn a_refusal_without_the_error_body_names_the_status() {
    let (base, _) = serve(1, |_, s| answer(s, "502 Bad Gateway", "<html>proxy</html>"));
    let e = client(&base).heads().unwrap_err();
    assert!(matches!(e, Error::Api { status: 502, error: None, .. }), "{e:?}");
    assert_eq!(e.to_string(), format!("head at {base} answered HTTP 502 Bad Gateway"));
}

#[test]
fn an_undecodable_success_is_told_apart() {
    let (base, _) = serve(1, |_, s| answer(s, "200 OK", r#"{"heads": 3}"#));
    let e = client(&base).heads().unwrap_err();
    assert!(matches!(e, Error::Decode { status: 200, .. }), "{e:?}");
    assert!(e.to_string().contains("sent an answer this command does not understand"), "{e}");
}

#[test]
fn decode_is_a_pure_function_of_status_and_body() {
    let ok: NodeList = crate::decode("http://h", 200, br#"{"nodes":[]}"#).unwrap();
    assert!(ok.nodes.is_empty());
    let body = serde_json::to_vec(&ApiError { kind: ErrorKind::Unavailable, message: "no quorum".into() }).unwrap();
    let e = crate::decode::<NodeList>("http://h", 503, &body).unwrap_err();
    assert_eq!((e.status(), e.kind(), e.api_message()), (Some(503), Some(ErrorKind::Unavailable), Some("no quorum")));
    // An error body with an unknown kind (a newer head) still gives the status.
    let e = crate::decode::<NodeList>("http://h", 418, br#"{"kind":"teapot","message":"m"}"#).unwrap_err();
    assert_eq!((e.status(), e.kind()), (Some(418), None));
}

#[test]
fn a_refused_connection_says_the_head_cannot_be_reached() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let base = format!("https://127.0.0.1:{port}");
    let e = client(&base).nodes().unwrap_err();
    assert_eq!(e.transport(), Some(&Transport::Connect), "{e:?}");
    let m = e.to_string();
    assert!(m.starts_with(&format!("cannot reach the head at {base}: connection refused")), "{m}");
    assert!(m.contains("is the head daemon running"), "{m}");
}

#[test]
fn a_head_that_never_answers_times_out() {
    let (base, _) = serve(1, |_, _| std::thread::sleep(Duration::from_secs(3)));
    let t0 = Instant::now();
    let e = BlockingClient::new(cfg(&base).timeout_secs(1)).unwrap().health().unwrap_err();
    assert!(t0.elapsed() < Duration::from_millis(2500), "{:?}", t0.elapsed());
    assert_eq!(e.transport(), Some(&Transport::Timeout(Duration::from_secs(1))), "{e:?}");
    assert!(e.to_string().contains("no answer within 1 s"), "{e}");
}

#[test]
fn an_upload_is_streamed_with_its_content_length() {
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let rec = r#"{"id":"0123456789abcdef0123456789abcdef","name":"k","size":3000000,"sha256":"x","kind":"kernel","created":1}"#;
    let (base, seen) = serve(1, move |_, s| answer(s, "201 Created", rec));
    let r: FileRecord =
        client(&base).upload_file("vm linuz", "kernel", data.len() as u64, None, &mut &data[..]).unwrap();
    assert_eq!(r.size, 3_000_000);
    let s = seen.recv().unwrap();
    assert_eq!(s.line, "PUT /api/v1/files?name=vm%20linuz&kind=kernel&size=3000000 HTTP/1.1");
    assert_eq!(s.header("content-length"), Some("3000000"));
    assert_eq!(s.header("transfer-encoding"), None);
    assert_eq!(s.header("authorization"), Some("Bearer tok"));
    assert!(s.body == data, "the body arrived intact");
}

#[test]
fn an_upload_whose_source_fails_says_so() {
    struct Failing(usize);
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.0 == 0 {
                return Err(std::io::Error::other("disk on fire"));
            }
            self.0 -= 1;
            buf[0] = 1;
            Ok(1)
        }
    }
    // The server may see a broken request or none at all.
    let (base, _) = serve(1, |_, s| answer(s, "400 Bad Request", "{}"));
    let o = ImportOptions { dry_run: true, ..Default::default() };
    let e = client(&base).import(&o, 100, &mut Failing(10)).unwrap_err();
    assert!(matches!(e, Error::Local { .. }), "{e:?}");
    assert!(e.to_string().contains("disk on fire"), "{e}");
}

#[test]
fn a_download_streams_to_the_writer_with_progress() {
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i % 7) as u8).collect();
    let d2 = data.clone();
    let (base, seen) = serve(1, move |_, s| {
        // Chunked, no Content-Length: as an export is sent.
        let _ = write!(s, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
        for c in d2.chunks(100_000) {
            let _ = write!(s, "{:x}\r\n", c.len());
            let _ = s.write_all(c);
            let _ = write!(s, "\r\n");
        }
        let _ = write!(s, "0\r\n\r\n");
    });
    let mut out = Vec::new();
    let mut calls = 0;
    let mut last = (0, Some(0));
    let n = client(&base)
        .export_boot_config("xyzBoot", &mut out, &mut |done, total| {
            calls += 1;
            last = (done, total);
        })
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(out == data);
    assert!(calls >= 1 && last == (n, None), "{calls} {last:?}");
    assert_eq!(seen.recv().unwrap().line, "GET /api/v1/bootconfigs/xyzBoot/export HTTP/1.1");
}

#[test]
fn a_refused_download_is_the_heads_refusal() {
    let (base, _) =
        serve(1, |_, s| answer(s, "404 Not Found", r#"{"kind":"not_found","message":"no boot config named x"}"#));
    let e = client(&base).export_boot_config("x", &mut Vec::new(), &mut |_, _| {}).unwrap_err();
    assert_eq!((e.status(), e.kind()), (Some(404), Some(ErrorKind::NotFound)));
    assert_eq!(e.to_string(), "no boot config named x");
}

#[test]
fn a_download_that_stalls_times_out_on_idleness() {
    let (base, _) = serve(1, |_, s| {
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nConnection: close\r\n\r\nabc");
        let _ = s.flush();
        std::thread::sleep(Duration::from_secs(3));
    });
    let c = BlockingClient::new(cfg(&base).timeouts(Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(60),
        idle: Duration::from_millis(500),
    }))
    .unwrap();
    let mut out = Vec::new();
    let e = c.download_file("0123456789abcdef0123456789abcdef", false, &mut out, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.transport(), Some(&Transport::Timeout(Duration::from_millis(500))), "{e:?}");
    assert_eq!(out, b"abc");
}

#[test]
fn raw_sends_exactly_the_credential_given_and_returns_any_body() {
    let (base, seen) = serve(2, |r, s| {
        if r.line.starts_with("POST") {
            answer(s, "401 Unauthorized", r#"{"kind":"unauthorized","message":"no credential"}"#)
        } else {
            answer(s, "200 OK", "plain text")
        }
    });
    let c = client(&base);
    let (status, v) = c.raw("POST", "/nodes/delete", None, Some(&serde_json::json!({"nodes": []}))).unwrap();
    assert_eq!((status, v["kind"].as_str()), (401, Some("unauthorized")));
    let r = seen.recv().unwrap();
    assert_eq!(r.header("authorization"), None, "no credential, whatever the client's");
    assert_eq!(r.body, br#"{"nodes":[]}"#);
    let (status, v) = c.raw("GET", "/health", Some("nope"), None).unwrap();
    assert_eq!((status, v), (200, serde_json::Value::String("plain text".into())));
    assert_eq!(seen.recv().unwrap().header("authorization"), Some("Bearer nope"));
}

#[test]
fn the_async_face_makes_the_same_calls() {
    let (base, seen) = serve(1, |_, s| answer(s, "200 OK", NODES));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let c = rt.block_on(async { Client::new(cfg(&base).token("t")) }).unwrap();
    let list = rt.block_on(c.nodes()).unwrap();
    assert_eq!(list.nodes[0].uid, "u1");
    assert_eq!(seen.recv().unwrap().header("authorization"), Some("Bearer t"));
}

#[test]
fn bad_urls_a_credential_over_http_and_https_without_a_ca_are_refused_up_front() {
    let e = BlockingClient::new(Config::new("https://10.0.0.1")).unwrap_err();
    assert!(e.to_string().contains("no cluster CA"), "{e}");
    let e = BlockingClient::new(Config::new("http://10.0.0.1").token("t")).unwrap_err();
    assert!(e.to_string().contains("over HTTPS only"), "{e}");
    BlockingClient::new(Config::new("http://10.0.0.1")).expect("plain http without a credential");
    let e = BlockingClient::new(Config::new("10.0.0.1:80")).unwrap_err();
    assert!(matches!(e, Error::Setup(_)), "{e:?}");
}

#[test]
fn a_head_whose_certificate_another_ca_issued_is_refused() {
    let (base, _) = serve(1, |_, s| answer(s, "200 OK", NODES));
    let other = clusterware_shared::pki::Ca::create().unwrap();
    let c = BlockingClient::new(Config::new(&base).ca_pem(&other.cert_pem).token("tok").timeout_secs(5)).unwrap();
    let e = c.nodes().unwrap_err();
    assert!(e.is_transport(), "{e:?}");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[test]
fn connecting_gets_at_most_ten_seconds() {
    assert_eq!(Timeouts::secs(60).connect, Duration::from_secs(10));
    assert_eq!(Timeouts::secs(3).connect, Duration::from_secs(3));
    assert_eq!(Timeouts::secs(0).request, Duration::from_secs(1));
}

#[test]
fn an_upload_the_head_stops_taking_times_out_on_idleness() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        // Accepts and reads nothing: the socket buffers fill, then nothing moves.
        let (_s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_secs(5));
    });
    let c = BlockingClient::new(Config::new(&base).timeouts(Timeouts {
        connect: Duration::from_secs(1),
        request: Duration::from_secs(60),
        idle: Duration::from_millis(500),
    }))
    .unwrap();
    let len = 512u64 << 20;
    let t0 = Instant::now();
    let e = c.upload_file("big", "rootfs", len, None, &mut std::io::repeat(0).take(len)).unwrap_err();
    assert_eq!(e.transport(), Some(&Transport::Timeout(Duration::from_millis(500))), "{e:?}");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

#[test]
fn the_blocking_client_keeps_no_connection_a_restarted_head_closed() {
    // Each request on its own connection: the server answers one request per connection and
    // closes it, as a head that restarts in place does.
    let (base, _) = serve(3, |_, s| {
        let body = r#"{"name":"h","version":"0","database":"etcd"}"#;
        let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
        let _ = s.flush();
        // Closed once the client is done with the answer, before its next request.
        std::thread::sleep(Duration::from_millis(30));
        let _ = s.sock.shutdown(std::net::Shutdown::Both);
    });
    let c = client(&base);
    for _ in 0..3 {
        c.health().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
}
