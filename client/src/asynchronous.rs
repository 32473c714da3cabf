//! The async face, and the implementation of both faces.

use crate::error::{Transport, from_reqwest};
use crate::{AUTHORIZATION, Config, Error, Result, USER_HEADER, decode, http_client, refusal};
use bytes::Bytes;
use clusterware_shared::api::{FileRecord, ImportOptions, ImportReport, PREFIX, path};
use clusterware_shared::auth::BEARER;
use futures_util::{Stream, StreamExt};
use reqwest::Method;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The header a head sends with a boot file's SHA-256 (`HEAD …/content`).
pub const CHECKSUM_HEADER: &str = "X-Checksum-Sha256";

/// An authenticated client of one head's API. Cheap to clone (connections are pooled and
/// shared between clones).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    cfg: Arc<Config>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.cfg.base).finish_non_exhaustive()
    }
}

/// What `HEAD …/files/{id}/content` tells of a head's copy of a boot file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentInfo {
    pub len: Option<u64>,
    pub sha256: Option<String>,
}

/// A streamed answer (an export, a boot file's bytes), read chunk by chunk.
#[derive(Debug)]
pub struct Download {
    resp: reqwest::Response,
    base: String,
    connect: Duration,
    idle: Duration,
}

impl Download {
    /// The length the head announced (`Content-Length`), if it did (an export is streamed
    /// without one).
    pub fn content_length(&self) -> Option<u64> {
        header_u64(self.resp.headers(), CONTENT_LENGTH.as_str())
    }

    /// A header of the answer.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    /// The next chunk; `None` at the end. Fails when no byte arrives for the idle timeout.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        match tokio::time::timeout(self.idle, self.resp.chunk()).await {
            Err(_) => Err(timed_out(&self.base, self.idle)),
            Ok(Err(e)) => Err(from_reqwest(&self.base, &e, self.connect, self.idle)),
            Ok(Ok(c)) => Ok(c),
        }
    }
}

fn header_u64(h: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    h.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn timed_out(base: &str, after: Duration) -> Error {
    Error::Transport { base: base.to_string(), kind: Transport::Timeout(after), reason: "timed out".into() }
}

impl Client {
    pub fn new(cfg: Config) -> Result<Client> {
        Client::build(cfg, true)
    }

    /// `pooled`: see [`http_client`].
    pub(crate) fn build(cfg: Config, pooled: bool) -> Result<Client> {
        Ok(Client { http: http_client(&cfg, pooled)?, cfg: Arc::new(cfg) })
    }

    /// The head's base URL (`http://HOST:PORT`).
    pub fn base(&self) -> &str {
        &self.cfg.base
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{PREFIX}{path}", self.cfg.base));
        if let Some(t) = token {
            r = r.header(AUTHORIZATION, format!("{BEARER}{t}"));
        }
        if let Some(u) = &self.cfg.user {
            r = r.header(USER_HEADER, u.as_str());
        }
        r
    }

    /// A request with this client's credential.
    fn authed(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path, self.cfg.token.as_deref())
    }

    fn fail(&self, e: reqwest::Error, waited: Duration) -> Error {
        from_reqwest(&self.cfg.base, &e, self.cfg.timeouts.connect, waited)
    }

    /// Sends a request (with the request timeout over the whole exchange); the status and body.
    async fn exchange(&self, req: reqwest::RequestBuilder) -> Result<(u16, reqwest::header::HeaderMap, Bytes)> {
        let t = self.cfg.timeouts.request;
        let resp = req.timeout(t).send().await.map_err(|e| self.fail(e, t))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.map_err(|e| self.fail(e, t))?;
        Ok((status, headers, body))
    }

    /// A JSON call: `body` sent as JSON, the answer decoded as `T` or as the head's refusal.
    pub(crate) async fn json<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T> {
        let mut req = self.authed(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, _, bytes) = self.exchange(req).await?;
        decode(&self.cfg.base, status, &bytes)
    }

    /// The escape hatch, for tests of malformed and hostile requests: any method and path
    /// (relative to `/api/v1`), the credential given (`None`: none at all, whatever this
    /// client's), an optional JSON body (else an empty one). Answers the status and the body as
    /// JSON (a body that is not JSON comes back as a JSON string). Only transport failures are
    /// errors.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let m = Method::from_bytes(method.as_bytes())
            .map_err(|_| Error::Setup(format!("{method:?} is not an HTTP method")))?;
        let req = self
            .request(m, path, token)
            .header(CONTENT_TYPE, "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default());
        let (status, _, bytes) = self.exchange(req).await?;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok((status, v))
    }

    /// `PUT /files?name=&kind=&size=[&sha256=]`: uploads `size` bytes from `body` as a boot file
    /// (sent with that `Content-Length`; the head refuses more or fewer).
    pub async fn upload_file<S>(
        &self,
        name: &str,
        kind: &str,
        size: u64,
        sha256: Option<&str>,
        body: S,
    ) -> Result<FileRecord>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        self.put_stream(&path::upload(name, kind, size, sha256), size, body).await
    }

    /// `PUT /import?…`: sends an export archive of `len` bytes.
    pub async fn import<S>(&self, o: &ImportOptions, len: u64, body: S) -> Result<ImportReport>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        self.put_stream(&path::import(o), len, body).await
    }

    /// `GET /bootconfigs/{name}/export`: the archive, as a stream.
    pub async fn export_boot_config(&self, name: &str) -> Result<Download> {
        self.get_stream(&path::boot_config_export(name)).await
    }

    /// `GET /files/{id}/content[?peer=1]`: a boot file's bytes, as a stream.
    pub async fn file_content(&self, id: &str, peer: bool) -> Result<Download> {
        self.get_stream(&path::file_content(id, peer)).await
    }

    /// `HEAD /files/{id}/content[?peer=1]`: whether the head has the file, its size and checksum.
    pub async fn file_content_info(&self, id: &str, peer: bool) -> Result<ContentInfo> {
        let (status, headers, body) = self.exchange(self.authed(Method::HEAD, &path::file_content(id, peer))).await?;
        if !(200..300).contains(&status) {
            return Err(refusal(&self.cfg.base, status, &body));
        }
        Ok(ContentInfo {
            len: header_u64(&headers, CONTENT_LENGTH.as_str()),
            sha256: headers.get(CHECKSUM_HEADER).and_then(|v| v.to_str().ok()).map(str::to_string),
        })
    }

    /// A streamed upload: no overall limit, but no byte taken for the idle timeout (or no
    /// answer that long after the last one) fails it.
    pub(crate) async fn put_stream<T, S>(&self, path: &str, len: u64, body: S) -> Result<T>
    where
        T: DeserializeOwned,
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        let idle = self.cfg.timeouts.idle;
        let start = Instant::now();
        // Milliseconds after `start` when the HTTP stack last took a chunk.
        let last = Arc::new(AtomicU64::new(0));
        let seen = last.clone();
        let body = body.inspect(move |_| seen.store(start.elapsed().as_millis() as u64, Ordering::Relaxed));
        let req = self
            .authed(Method::PUT, path)
            .header(CONTENT_LENGTH, len)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(reqwest::Body::wrap_stream(body));
        let watchdog = async {
            loop {
                let due = start + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if Instant::now() >= due {
                    return;
                }
                tokio::time::sleep_until(due.into()).await;
            }
        };
        let resp = tokio::select! {
            r = req.send() => r.map_err(|e| self.fail(e, idle))?,
            () = watchdog => return Err(timed_out(&self.cfg.base, idle)),
        };
        let status = resp.status().as_u16();
        let bytes = match tokio::time::timeout(idle, resp.bytes()).await {
            Err(_) => return Err(timed_out(&self.cfg.base, idle)),
            Ok(r) => r.map_err(|e| self.fail(e, idle))?,
        };
        decode(&self.cfg.base, status, &bytes)
    }

    /// A streamed download: the answer once its status is a success, else the refusal.
    pub(crate) async fn get_stream(&self, path: &str) -> Result<Download> {
        let idle = self.cfg.timeouts.idle;
        let resp = match tokio::time::timeout(idle, self.authed(Method::GET, path).send()).await {
            Err(_) => return Err(timed_out(&self.cfg.base, idle)),
            Ok(r) => r.map_err(|e| self.fail(e, idle))?,
        };
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let body = tokio::time::timeout(idle, resp.bytes()).await.ok().and_then(|r| r.ok()).unwrap_or_default();
            return Err(refusal(&self.cfg.base, status, &body));
        }
        Ok(Download { resp, base: self.cfg.base.clone(), connect: self.cfg.timeouts.connect, idle })
    }
}
