//! The storage API: uploads, the file list and counters, and file contents (a file is served only
//! once verified): kernels and initramfs images to anyone (firmware fetches them, over plain HTTP
//! too), any other file over HTTPS to enrolled nodes (by certificate), heads and administrators
//! (by credential).

use crate::core::http::{ApiFailure, ApiResult, ClientCert, Routes, Transport, json, query_pairs};
use crate::storage::{Storage, StorageError, Upload};
use axum::Router;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clusterware_shared::api::path;
use clusterware_shared::api::{ErrorKind, FileCopy, FileList, is_file_id};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub storage: Arc<Storage>,
    /// Who may fetch a file that is not a kernel or initramfs: heads and administrators (by
    /// credential) and enrolled nodes (by certificate); not other users of this machine.
    pub creds: crate::core::http::Credentials,
    pub tokens: crate::core::tokens::Tokens,
    pub identity: Arc<crate::registry::identity::Identity>,
}

impl Api {
    /// Whether the request may have a root image (or another file firmware does not fetch).
    fn may_fetch_image(&self, headers: &HeaderMap, peer: std::net::IpAddr, cert: Option<&ClientCert>) -> bool {
        use crate::core::http::Verdict;
        self.creds.judge(Some(&self.tokens), headers, Some(peer)) == Verdict::Admin || self.identity.is_node(cert)
    }
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes {
        admin: Router::new()
            .route(path::FILES, get(list_files).put(upload_file).layer(axum::extract::DefaultBodyLimit::disable()))
            .route(path::FILE_FETCH, axum::routing::post(fetch_file))
            .route(path::STORAGE, get(storage_counters))
            .with_state(api.clone()),
        open: Router::new().route(path::FILE_CONTENT, get(file_content)).with_state(api),
    }
}

async fn list_files(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    let files = st.storage.list().await?;
    let (copies, min_copies) = st.storage.copies(&files).await?;
    Ok(json(StatusCode::OK, &FileList { files, copies, min_copies }))
}

/// A peer asks this head to hold a verified copy (after an upload or an import).
async fn fetch_file(State(st): State<Arc<Api>>, Path(id): Path<String>) -> ApiResult<Response> {
    let rec = st.storage.record(&id).await?;
    st.storage.ensure(&rec).await?;
    st.storage.publish().await;
    Ok(json(StatusCode::OK, &FileCopy { id, head: st.storage.head().to_string() }))
}

async fn storage_counters(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &st.storage.counters()))
}

async fn upload_file(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let up = Upload::from_query(&query_pairs(q.as_deref())?, declared).map_err(ApiFailure::bad_request)?;
    let (name, kind, size, sha) = (up.name.as_str(), up.kind.as_str(), up.size, up.sha256.as_deref());
    let up = st.storage.upload(name, kind, size, sha, body.into_data_stream()).await.map_err(|e| match e {
        StorageError::Invalid(m) => ApiFailure::bad_request(format!("upload of {name} refused: {m}")),
        e => e.into(),
    })?;
    let rec = up.rec;
    tracing::info!(%peer, id = %rec.id, name = %rec.name, size = rec.size, kind = %rec.kind, reused = up.reused, "file uploaded");
    // The same file uploaded again is the file recorded before: nothing was created.
    Ok(json(if up.reused { StatusCode::OK } else { StatusCode::CREATED }, &rec))
}

/// A request's byte range: the whole file, `start..=end`, or none that fits.
#[derive(Debug, PartialEq, Eq)]
enum Span {
    Full,
    Part(u64, u64),
    Unsatisfiable,
}

/// Parses a single `Range: bytes=…`; anything else (several ranges, other units, bad syntax)
/// is ignored and the whole file sent, as RFC 9110 allows.
fn parse_range(h: Option<&str>, size: u64) -> Span {
    let Some(spec) = h.and_then(|h| h.trim().strip_prefix("bytes=")) else { return Span::Full };
    if spec.contains(',') {
        return Span::Full;
    }
    let Some((a, b)) = spec.split_once('-') else { return Span::Full };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            None => Span::Full,
            Some(0) => Span::Unsatisfiable,
            Some(_) if size == 0 => Span::Unsatisfiable,
            Some(n) => Span::Part(size.saturating_sub(n), size - 1),
        },
        (false, _) => match (num(a), if b.is_empty() { Some(u64::MAX) } else { num(b) }) {
            (Some(s), Some(e)) if s <= e => {
                if s >= size {
                    Span::Unsatisfiable
                } else {
                    Span::Part(s, e.min(size - 1))
                }
            }
            _ => Span::Full,
        },
        (true, true) => Span::Full,
    }
}

/// `Content-Disposition` for a file's content: `attachment; filename="NAME"`, NAME the record's
/// name made safe for any client (only letters, digits, `.`, `_` and `-`; anything else becomes
/// `_`; never empty, no leading dot), plus `filename*=UTF-8''…` with the name percent-encoded
/// (RFC 6266, RFC 8187) when the safe one differs from it.
fn content_disposition(name: &str) -> String {
    let mut safe: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if safe.is_empty() {
        safe.push_str("file");
    }
    if safe.starts_with('.') {
        safe.replace_range(..1, "_");
    }
    let mut v = format!("attachment; filename=\"{safe}\"");
    if safe != name && !name.is_empty() {
        v.push_str("; filename*=UTF-8''");
        for b in name.bytes() {
            // RFC 8187's attr-char: ALPHA / DIGIT / "!" / "#" / "$" / "&" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~".
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                v.push(b as char);
            } else {
                v.push_str(&format!("%{b:02X}"));
            }
        }
    }
    v
}

/// What firmware fetches over plain HTTP (before any agent runs); everything else only over HTTPS.
const FIRMWARE_KINDS: [&str; 2] = ["kernel", "initramfs"];

// An axum handler: each argument is one extractor.
#[allow(clippy::too_many_arguments)]
async fn file_content(
    State(st): State<Arc<Api>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
    method: Method,
    headers: HeaderMap,
    transport: Option<axum::Extension<Transport>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    cert: Option<axum::Extension<ClientCert>>,
) -> ApiResult<Response> {
    let plain = transport.is_some_and(|t| t.0 == Transport::Plain);
    let from_peer = query_pairs(q.as_deref())?.iter().any(|(k, v)| k == "peer" && v == "1");
    if from_peer && plain {
        return Err(ApiFailure::new(ErrorKind::Forbidden, "heads fetch files from each other over HTTPS only"));
    }
    if from_peer {
        st.storage.count_peer_request();
    }
    if !is_file_id(&id) {
        return Err(ApiFailure::not_found(format!("no file with id {id}")));
    }
    // A peer's request is rare and reads the database; a node's is answered from the followed
    // record while this head holds a verified copy.
    let (rec, opened) =
        if from_peer { (st.storage.record(&id).await?, None) } else { st.storage.served_record(&id).await? };
    if !FIRMWARE_KINDS.contains(&rec.kind.as_str()) {
        if plain {
            return Err(ApiFailure::new(
                ErrorKind::Forbidden,
                format!(
                    "a file of kind {} is served over HTTPS only (plain HTTP serves kernels and initramfs images)",
                    rec.kind
                ),
            ));
        }
        if !st.may_fetch_image(&headers, peer.ip(), cert.as_ref().map(|c| &c.0)) {
            return Err(ApiFailure::new(
                ErrorKind::Forbidden,
                format!(
                    "a file of kind {} is served to enrolled nodes (by their certificate), heads and administrators \
                     (with a credential) only",
                    rec.kind
                ),
            ));
        }
    }
    // A root image for a node takes one of this head's transfer slots before anything is opened:
    // past the limit the node waits a moment in line, then is told to go elsewhere (firmware's
    // kernel and initramfs, peers and HEAD requests are never refused here).
    let counted = crate::core::metrics::on();
    let permit = if from_peer || method == Method::HEAD || FIRMWARE_KINDS.contains(&rec.kind.as_str()) {
        None
    } else {
        match st.storage.admission.admit().await {
            Some(p) => Some(p),
            None => {
                if let Some(m) = counted {
                    m.file_requests.get_or_create(&[("kind", "busy")]).inc();
                }
                return Ok(busy(st.storage.admission.limit()));
            }
        }
    };
    let file = match opened {
        Some(f) => f,
        None => match st.storage.open_verified(&rec, !from_peer).await {
            Ok(f) => f,
            Err(e) => {
                st.storage.complain(&rec, peer, from_peer, &e);
                return Err(e.into());
            }
        },
    };
    let size = rec.size;
    let span = parse_range(headers.get(header::RANGE).and_then(|v| v.to_str().ok()), size);
    let (status, start, len) = match span {
        Span::Full => (StatusCode::OK, 0, size),
        Span::Part(s, e) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
        Span::Unsatisfiable => {
            let mut r =
                ApiFailure::bad_request(format!("range beyond the end of the {size}-byte file")).into_response();
            *r.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            r.headers_mut().insert(header::CONTENT_RANGE, format!("bytes */{size}").parse().expect("valid header"));
            return Ok(r);
        }
    };
    let mut b = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, format!("\"{}\"", rec.sha256))
        .header("x-checksum-sha256", &rec.sha256)
        .header(header::CONTENT_DISPOSITION, content_disposition(&rec.name));
    if status == StatusCode::PARTIAL_CONTENT {
        b = b.header(header::CONTENT_RANGE, format!("bytes {start}-{}/{size}", start + len - 1));
    }
    if method == Method::HEAD {
        return Ok(b.body(axum::body::Body::empty()).expect("valid response"));
    }
    if let Some(m) = counted {
        let kind = if status == StatusCode::PARTIAL_CONTENT { "range" } else { "full" };
        m.file_requests.get_or_create(&[("kind", kind)]).inc();
    }
    let stream = crate::core::http::file_chunks(Arc::new(file), start, len);
    // Bytes as they are handed to the connection (a client that goes away early counts what it
    // was sent), one addition per 256 KiB chunk.
    use futures::StreamExt;
    let stream = stream.inspect(move |chunk| {
        if let (Some(m), Ok(c)) = (counted, chunk) {
            m.file_bytes.inc_by(c.len() as u64);
        }
    });
    // The slot goes with the body: it is free once the last byte is handed over, or the node
    // went away. Under `local_files.max_rate` every chunk is charged as it goes, and its cost
    // waited out before the next (`Admission::pace`).
    let (storage, permit) = (st.storage.clone(), Arc::new(permit));
    let owed = Arc::new(std::sync::Mutex::new(std::time::Duration::ZERO));
    let stream = stream.then(move |chunk| {
        let (storage, slot, owed) = (storage.clone(), permit.clone(), owed.clone());
        async move {
            if let Ok(c) = &chunk {
                let before = std::mem::take(&mut *owed.lock().unwrap_or_else(|p| p.into_inner()));
                let cost = storage.admission.pace(before, c.len()).await;
                *owed.lock().unwrap_or_else(|p| p.into_inner()) = cost;
            }
            drop(slot);
            chunk
        }
    });
    Ok(b.body(axum::body::Body::from_stream(stream)).expect("valid response"))
}

/// The answer past `local_files.max_transfers`: 503 with a `Retry-After` hint.
fn busy(limit: u32) -> Response {
    let secs = crate::core::admission::RETRY_AFTER_SECS;
    crate::core::http::busy(
        format!(
            "this head is sending its limit of {limit} root images at once (local_files.max_transfers): \
             ask another head, or this one again in {secs} s"
        ),
        secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_disposition_is_safe() {
        assert_eq!(content_disposition("vmlinuz-6.1.0"), "attachment; filename=\"vmlinuz-6.1.0\"");
        assert_eq!(
            content_disposition("a\"b c\\d;é.img"),
            "attachment; filename=\"a_b_c_d__.img\"; filename*=UTF-8''a%22b%20c%5Cd%3B%C3%A9.img"
        );
        assert_eq!(content_disposition(".hidden"), "attachment; filename=\"_hidden\"; filename*=UTF-8''.hidden");
        assert_eq!(content_disposition("日本"), "attachment; filename=\"__\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC");
        assert_eq!(content_disposition(""), "attachment; filename=\"file\"");
        // Every value is a valid header value.
        for n in ["a\"b", "x\u{7f}y", "ü", "..", "a%b"] {
            let v = content_disposition(n);
            assert!(axum::http::HeaderValue::from_str(&v).is_ok(), "{n:?}: {v}");
            assert!(v.is_ascii() && !v[..v.find("filename*").unwrap_or(v.len())].contains(['\\', '%']), "{n:?}: {v}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 10), Span::Full);
        assert_eq!(parse_range(Some("bytes=0-4"), 10), Span::Part(0, 4));
        assert_eq!(parse_range(Some("bytes=5-"), 10), Span::Part(5, 9));
        assert_eq!(parse_range(Some("bytes=-3"), 10), Span::Part(7, 9));
        assert_eq!(parse_range(Some("bytes=-30"), 10), Span::Part(0, 9));
        assert_eq!(parse_range(Some("bytes=8-100"), 10), Span::Part(8, 9));
        assert_eq!(parse_range(Some("bytes=10-"), 10), Span::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 10), Span::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=5-2"), 10), Span::Full);
        assert_eq!(parse_range(Some("bytes=0-1,3-4"), 10), Span::Full);
        assert_eq!(parse_range(Some("items=0-1"), 10), Span::Full);
        assert_eq!(parse_range(Some("bytes=x-1"), 10), Span::Full);
    }
}
