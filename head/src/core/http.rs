//! The HTTP server of the head: the `/api/v1` router assembled from the capabilities' routes,
//! the admin credential, and the one mapping from errors to answers.
//!
//! Two listeners serve the same router: HTTPS on `head.tls_port` (the certificate of
//! [`crate::core::tls`]) serves everything; plain HTTP on `head.port` serves only what firmware
//! fetches before the agent runs (see [`Transport`]) and points everything else to HTTPS.
//!
//! Every endpoint but the node-facing ones (health, boot script, boot files, the agent channel)
//! needs the admin credential (`Authorization: Bearer <token>`, the token derived from
//! `database.admin_pass`, or a named token): 401 without one, 403 with a wrong one; so does
//! `/metrics`, outside `/api/v1`. Every error is JSON
//! `{kind, message}`; its HTTP status comes from its [`ErrorKind`] alone
//! (`ErrorKind::http_status`, one exhaustive match), and each capability's error type says its
//! kind through [`HasKind`].

use crate::core::complaints::Complaints;
use crate::core::events::EventLog;
use crate::core::tokens::Tokens;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, OriginalUri, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use clusterware_shared::api::path;
use clusterware_shared::api::{ApiError, ErrorKind, Health, PREFIX};
use clusterware_shared::auth::{BEARER, tokens_equal};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Added to every "database unavailable" answer.
const DEGRADED: &str = "; this head cannot reach a quorum of the cluster database's members: it keeps serving the boot \
     files it has verified and DHCP for the nodes it knows, refuses changes until the quorum returns, and recovers by \
     itself then (with two heads and one gone for good, run `managedb recover`)";

/// Largest request body accepted (a CSV of 100,000 nodes fits).
pub const BODY_LIMIT: usize = 64 << 20;

/// An error that knows which class of failure it is (and so its HTTP status).
pub trait HasKind: std::fmt::Display {
    fn kind(&self) -> ErrorKind;

    /// Whether the failure comes from the database's lack of quorum (the answer then says what
    /// the head still does and how it recovers).
    fn degraded(&self) -> bool {
        self.kind() == ErrorKind::Unavailable
    }
}

/// Why a request failed: its kind and the message the administrator reads.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiFailure {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> ApiFailure {
        ApiFailure { kind, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiFailure {
        ApiFailure::new(ErrorKind::NotFound, message)
    }
}

impl<E: HasKind> From<E> for ApiFailure {
    fn from(e: E) -> ApiFailure {
        let mut message = e.to_string();
        if e.degraded() {
            message.push_str(DEGRADED);
        }
        ApiFailure { kind: e.kind(), message }
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        if self.kind == ErrorKind::Internal || self.kind == ErrorKind::Unavailable {
            tracing::warn!(error = %self.message, "request failed");
        }
        self.answer()
    }
}

impl ApiFailure {
    /// The answer: the status of its kind and the protocol's error body.
    fn answer(self) -> Response {
        let kind = self.kind;
        let status = StatusCode::from_u16(kind.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(ApiError { kind, message: self.message.clone() })).into_response();
        r.extensions_mut().insert(Failed(self));
        r
    }
}

/// The answer of a head at a limit it keeps on purpose (`core::admission`): 503 `unavailable`
/// with the protocol's error body and `Retry-After: secs`. Not logged (a storm would make a log
/// line of every refused request): the limit's owner counts refusals.
pub fn busy(message: impl Into<String>, secs: u64) -> Response {
    let mut r = ApiFailure::new(ErrorKind::Unavailable, message).answer();
    r.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
    r
}

/// The failure an answer carries, for the event log.
#[derive(Clone)]
struct Failed(ApiFailure);

/// What a change did, in a sentence, for the event log (`power off n[1-4]: 4 ok`): a handler
/// puts it on its answer with [`described`]; without one, the log says only the request.
#[derive(Clone)]
pub struct Described(pub String);

/// `r` with `what` for the event log.
pub fn described(mut r: Response, what: impl Into<String>) -> Response {
    r.extensions_mut().insert(Described(what.into()));
    r
}

/// Marks an answer to a request that changed nothing (a power status): not logged.
#[derive(Clone)]
struct Quiet;

/// `r`, kept out of the event log.
pub fn quiet(mut r: Response) -> Response {
    r.extensions_mut().insert(Quiet);
    r
}

/// `names` as a node range with their count when more than one: `n[1-4] (4 nodes)`.
pub fn node_range<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let v: Vec<&str> = names.into_iter().collect();
    let r = clusterware_shared::select::compress(v.iter().copied());
    if v.len() == 1 { r } else { format!("{r} ({} nodes)", v.len()) }
}

/// Requests that change nothing, though not `GET`s (their bodies are queries): not logged.
const QUERIES: [&str; 2] = [path::NODES_STATUS, path::NODES_REPORTS];

/// Records an admin request that changes something in the event log (not the heads' own calls).
fn record_action(
    events: &EventLog,
    actor: Option<String>,
    method: &axum::http::Method,
    uri: &str,
    peer: Option<IpAddr>,
    resp: &Response,
) {
    let Some(actor) = actor else { return };
    if matches!(*method, axum::http::Method::GET | axum::http::Method::HEAD)
        || resp.extensions().get::<Quiet>().is_some()
    {
        return;
    }
    let rel = uri.split('?').next().unwrap_or(uri);
    if QUERIES.iter().any(|q| rel.strip_prefix(PREFIX) == Some(q)) {
        return;
    }
    // The path is the admin's own, but bounded all the same.
    let mut subject = format!("{method} {}", clusterware_shared::ids::shown(uri));
    if subject.len() > 300 {
        let mut cut = 297;
        while !subject.is_char_boundary(cut) {
            cut -= 1;
        }
        subject.truncate(cut);
        subject.push_str("...");
    }
    let message = resp.extensions().get::<Described>().map_or_else(|| subject.clone(), |d| d.0.clone());
    let outcome = match resp.extensions().get::<Failed>() {
        Some(Failed(f)) => format!("{}: {}", f.kind, f.message),
        None if resp.status().is_success() => "ok".to_string(),
        None => format!("HTTP {}", resp.status().as_u16()),
    };
    events.admin(actor, peer.map_or_else(|| "(unknown)".into(), |p| p.to_string()), subject, message, outcome);
}

pub type ApiResult<T> = Result<T, ApiFailure>;

/// A JSON request body.
pub fn parse<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiFailure::bad_request(format!("malformed request body: {e}")))
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    (status, axum::Json(v)).into_response()
}

/// Decodes `a=b&c=d` with percent-escapes and `+` for space; a malformed escape is refused
/// (form decoding would pass it through, and a name with `%zz` in it is a typo, not a name).
pub fn query_pairs(q: Option<&str>) -> ApiResult<Vec<(String, String)>> {
    let dec = |s: &str| -> ApiResult<String> {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let h = b
                        .get(i + 1..i + 3)
                        .and_then(|h| std::str::from_utf8(h).ok())
                        .and_then(|h| u8::from_str_radix(h, 16).ok());
                    out.push(h.ok_or_else(|| ApiFailure::bad_request(format!("bad escape in query {s:?}")))?);
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).map_err(|_| ApiFailure::bad_request("query is not UTF-8"))
    };
    let mut v = Vec::new();
    for part in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, val) = part.split_once('=').unwrap_or((part, ""));
        v.push((dec(k)?, dec(val)?));
    }
    Ok(v)
}

/// Whether a query flag (`force=1`, `force=true`) is set.
pub fn flag(q: &Option<String>, name: &str) -> ApiResult<bool> {
    Ok(query_pairs(q.as_deref())?.iter().any(|(k, v)| k == name && (v == "1" || v == "true")))
}

/// The bearer credential of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix(BEARER))
}

/// Checks the admin credential against `token`.
pub fn check_token(headers: &HeaderMap, token: &str) -> ApiResult<()> {
    match bearer(headers) {
        None => {
            Err(ApiFailure::new(ErrorKind::Unauthorized, "admin credential required (Authorization: Bearer <token>)"))
        }
        Some(t) if !tokens_equal(t.trim(), token) => {
            Err(ApiFailure::new(ErrorKind::Forbidden, "wrong admin credential"))
        }
        Some(_) => Ok(()),
    }
}

/// Largest body of a request on the routes without credential (nodes and peers).
pub const OPEN_BODY_LIMIT: usize = clusterware_shared::agent::MAX_REPORT_BYTES;

/// 413 for a request that says its body is larger than [`OPEN_BODY_LIMIT`], before any of it
/// is read (a body without a length is cut at the limit as it is read).
async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let len = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    match len {
        Some(n) if n > OPEN_BODY_LIMIT as u64 => ApiFailure::new(
            ErrorKind::TooLarge,
            format!("a request body here is at most {OPEN_BODY_LIMIT} bytes; this one says {n}"),
        )
        .into_response(),
        _ => next.run(req).await,
    }
}

/// The credentials a head accepts besides named tokens.
#[derive(Clone)]
pub struct Credentials {
    /// The heads' own (random, in the database): head-to-head calls.
    pub head: String,
    /// Derived from the database password: on the head itself, and for what a joining head asks
    /// before it is one ([`BOOTSTRAP`]).
    pub password: String,
}

/// What a joining head asks of the cluster with the password-derived credential, from its own
/// machine: the cluster, its learner's addition and promotion (and removal when the join is
/// undone), and the conversion of a solo head.
const BOOTSTRAP: [(&str, &str); 5] = [
    ("GET", path::CLUSTER),
    ("POST", path::CLUSTER_MEMBERS),
    ("POST", path::CLUSTER_PROMOTE),
    ("POST", path::CLUSTER_EJECT),
    ("POST", path::DATABASE_CONVERT),
];

/// Whether `ip` is this machine: loopback's own address or one of its interfaces' addresses (a
/// CLI on the head connects from one of them).
pub fn is_this_machine(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4 == std::net::Ipv4Addr::LOCALHOST
                || clusterware_shared::sys::ipv4_addrs().iter().any(|(_, a, _)| *a == v4)
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| is_this_machine(IpAddr::V4(v4))),
    }
}

/// What the credential check needs: the credentials, and a bound on its log lines.
struct Admin {
    creds: Credentials,
    /// Named tokens (none in the minimal routers of a starting or detached head).
    named: Option<Tokens>,
    /// Where changes are recorded (none in the minimal routers).
    events: Option<EventLog>,
    complaints: Complaints,
}

/// What a presented credential is worth.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A named token, the heads' credential, or the password's from this machine.
    Admin,
    /// The password's, from another machine.
    PasswordElsewhere,
    /// None, or a wrong one.
    Not,
}

impl Credentials {
    /// Judges the bearer credential of a request from `peer`.
    pub fn judge(&self, named: Option<&Tokens>, headers: &HeaderMap, peer: Option<IpAddr>) -> Verdict {
        let presented = bearer(headers).map(str::trim).unwrap_or_default();
        if presented.is_empty() {
            return Verdict::Not;
        }
        if named.and_then(|t| t.check(presented)).is_some() || tokens_equal(presented, &self.head) {
            return Verdict::Admin;
        }
        if tokens_equal(presented, &self.password) {
            return if peer.is_some_and(is_this_machine) { Verdict::Admin } else { Verdict::PasswordElsewhere };
        }
        Verdict::Not
    }

    /// Who the event log names for a credential judged [`Verdict::Admin`]: the named token, or
    /// the database password's credential; `None` for the heads' own.
    /// The user the client says runs it (`X-Clusterware-User`, what the CLIs send) is added:
    /// `token alice (user bob)`.
    pub fn actor(&self, named: Option<&Tokens>, headers: &HeaderMap) -> Option<String> {
        let presented = bearer(headers).map(str::trim).unwrap_or_default();
        let who = if let Some(name) = named.and_then(|t| t.check(presented)) {
            format!("token {name}")
        } else if tokens_equal(presented, &self.password) {
            "database password".to_string()
        } else {
            return None;
        };
        let user: String = headers
            .get("x-clusterware-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_graphic() || *c == ' ')
            .take(64)
            .collect();
        Some(if user.trim().is_empty() { who } else { format!("{who} (user {})", user.trim()) })
    }
}

async fn require_admin(State(admin): State<Arc<Admin>>, req: Request, next: Next) -> Response {
    let path =
        req.extensions().get::<OriginalUri>().map_or_else(|| req.uri().path().to_string(), |u| u.path().to_string());
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let verdict = admin.creds.judge(admin.named.as_ref(), req.headers(), peer);
    if verdict == Verdict::Admin {
        let Some(events) = &admin.events else { return next.run(req).await };
        let method = req.method().clone();
        let writes = !matches!(method, axum::http::Method::GET | axum::http::Method::HEAD);
        let actor = if writes { admin.creds.actor(admin.named.as_ref(), req.headers()) } else { None };
        let uri = req.extensions().get::<OriginalUri>().map_or_else(|| req.uri().to_string(), |u| u.0.to_string());
        let resp = next.run(req).await;
        record_action(events, actor, &method, &uri, peer, &resp);
        return resp;
    }
    if verdict == Verdict::PasswordElsewhere {
        let rel = path.strip_prefix(PREFIX).unwrap_or(&path);
        if BOOTSTRAP.iter().any(|(m, p)| req.method().as_str() == *m && rel == *p) {
            return next.run(req).await;
        }
        let who = peer.map_or_else(String::new, |p| p.to_string());
        admin.complaints.complain(format!("password credential {who}"), || {
            tracing::warn!(%path, from = %who, "the password-derived credential used from another machine: refused (logged once a minute per address)")
        });
        return ApiFailure::new(
            ErrorKind::Forbidden,
            "the credential derived from the database password works only on the head itself; from elsewhere use a \
             named token (scyld-clusterctl tokens create NAME, on a head)",
        )
        .into_response();
    }
    match check_token(req.headers(), &admin.creds.password) {
        Ok(()) => next.run(req).await,
        Err(e) => {
            if e.kind == ErrorKind::Forbidden {
                let who = peer.map_or_else(String::new, |p| p.to_string());
                admin.complaints.complain(format!("credential {who}"), || {
                    tracing::warn!(%path, from = %who, "request with a wrong admin credential refused (logged once a minute per address)")
                });
            }
            e.into_response()
        }
    }
}

/// What a capability serves under `/api/v1`.
#[derive(Default)]
pub struct Routes {
    /// Endpoints that need the admin credential.
    pub admin: Router,
    /// Endpoints for nodes and peers (no credential; each checks what it needs itself).
    pub open: Router,
}

/// The whole API: every capability's routes under `/api/v1`, the admin ones behind the
/// credential, health, `/metrics` (outside `/api/v1`, behind the credential too), a JSON 404
/// for anything else, and the body limits (admin routes [`BODY_LIMIT`] unless they set their
/// own, the open ones a few KiB). Every answer is counted by route template
/// ([`metrics::count_requests`](crate::core::metrics::count_requests)). `site` holds what is
/// served outside `/api/v1` (the console's page and assets, which carry no data and need no
/// credential; the plain-HTTP listener refuses them like every other non-firmware path).
pub fn router(
    creds: Credentials,
    named: Option<Tokens>,
    events: Option<EventLog>,
    name: &str,
    backend: &'static str,
    caps: impl IntoIterator<Item = Routes>,
    metrics: Router,
    site: impl IntoIterator<Item = Router>,
) -> Router {
    let (mut admin, mut open) = (Router::new(), Router::new());
    for r in caps {
        admin = admin.merge(r.admin);
        open = open.merge(r.open);
    }
    let check = middleware::from_fn_with_state(
        Arc::new(Admin { creds, named, events, complaints: Complaints::default() }),
        require_admin,
    );
    let admin = admin.route_layer(check.clone());
    let metrics = metrics.route_layer(check);
    let name = name.to_string();
    // Nodes and peers send small bodies (or none): refused before they are read.
    let open = open
        .layer(axum::extract::DefaultBodyLimit::max(OPEN_BODY_LIMIT))
        .route_layer(middleware::from_fn(refuse_large_bodies));
    let api = open
        .route(
            path::HEALTH,
            axum::routing::get(move || async move { json(StatusCode::OK, &health_of(&name, backend, "serving")) }),
        )
        .merge(admin);
    let mut top = Router::new().nest(PREFIX, api).merge(metrics);
    for s in site {
        top = top.merge(s);
    }
    top.fallback(|| async { ApiFailure::not_found("no such endpoint") })
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(crate::core::metrics::count_requests))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// When this process started (forced by `main`; a restart in place is a new process image).
pub static STARTED_MS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(now_ms);

/// The answer of `GET /api/v1/health`.
pub fn health_of(name: &str, database: &str, state: &str) -> Health {
    Health {
        name: name.to_string(),
        version: clusterware_shared::VERSION.to_string(),
        database: database.to_string(),
        pid: std::process::id(),
        now_ms: now_ms(),
        started_ms: *STARTED_MS,
        state: state.to_string(),
    }
}

/// What one client can hold of the API server: without these, idle or half-sent connections
/// from one address use up the head's file descriptors, and slow bodies hold memory forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once, all clients together (three quarters of the descriptor limit).
    pub total: usize,
    /// Connections open at once from one address (a node holds two: pushes and its long poll).
    pub per_source: usize,
    /// Time to send a request's headers; also how long a kept-alive connection may sit idle.
    pub header_read: Duration,
    /// Longest wait for the next part of a request body.
    pub body_idle: Duration,
}

/// Connections open at once from one address.
pub const PER_SOURCE: usize = 64;

impl ConnLimits {
    /// The limits for this process (its descriptor limit sets `total`).
    pub fn for_process() -> ConnLimits {
        let fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| usize::try_from(soft).unwrap_or(usize::MAX));
        ConnLimits {
            total: (fds - fds / 4).clamp(16, 65_536),
            per_source: PER_SOURCE,
            header_read: Duration::from_secs(clusterware_shared::api::IDLE_SECS),
            body_idle: Duration::from_secs(30),
        }
    }
}

/// Open connections, in all and per address; a [`Slot`] gives its place back when dropped.
#[derive(Default)]
struct Conns(std::sync::Mutex<Open>);

#[derive(Default)]
struct Open {
    total: usize,
    per_source: std::collections::HashMap<IpAddr, usize>,
}

struct Slot {
    conns: Arc<Conns>,
    ip: IpAddr,
}

impl Conns {
    /// A place for a connection from `ip`, or why there is none.
    fn take(self: &Arc<Self>, ip: IpAddr, limits: &ConnLimits) -> Result<Slot, String> {
        let mut o = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if o.total >= limits.total {
            return Err(format!("this head has {} connections open, its limit", o.total));
        }
        let n = o.per_source.entry(ip).or_insert(0);
        if *n >= limits.per_source {
            return Err(format!("{ip} has {n} connections open to this head, the limit per address"));
        }
        *n += 1;
        o.total += 1;
        Ok(Slot { conns: self.clone(), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut o = self.conns.0.lock().unwrap_or_else(|p| p.into_inner());
        o.total -= 1;
        if let Some(n) = o.per_source.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                o.per_source.remove(&self.ip);
            }
        }
    }
}

/// Answers a connection over the limit with 503 and closes it, without reading from it.
async fn refuse(mut stream: tokio::net::TcpStream, why: String) {
    use tokio::io::AsyncWriteExt;
    let body = serde_json::to_string(&ApiError {
        kind: ErrorKind::Unavailable,
        message: format!("{why}; close idle connections or try again later"),
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\nretry-after: 1\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The SHA-256 of the certificate a TLS client presented (a request extension; the listener
/// checked that the cluster CA issued it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert(pub String);

/// Which listener a request came in on (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `head.port`: what firmware fetches before the agent runs, nothing else.
    Plain,
    /// `head.tls_port`: everything.
    Tls,
}

/// Whether plain HTTP serves `path`: health, the boot routes (iPXE script, the CA archive) and
/// file contents (which refuse there all but kernels and initramfs images).
fn firmware_path(p: &str) -> bool {
    let Some(rest) = p.strip_prefix(PREFIX) else { return false };
    rest == path::HEALTH
        || rest == path::CLUSTER_CA
        || rest.starts_with("/boot/")
        || rest.strip_prefix("/files/").and_then(|r| r.strip_suffix("/content")).is_some_and(|id| !id.contains('/'))
}

/// The answer of the plain listener to anything but what firmware fetches.
fn plain_refusal(tls_port: u16) -> Response {
    ApiFailure::new(
        ErrorKind::NotFound,
        format!(
            "plain HTTP serves only what firmware fetches (boot script, kernel, initramfs); the API is on HTTPS, port \
             {tls_port} of this head"
        ),
    )
    .into_response()
}

/// How one listener serves: plain HTTP (with the HTTPS port its refusals point to) or TLS.
#[derive(Clone)]
pub enum Listen {
    Plain { tls_port: u16 },
    Tls(Arc<tokio_rustls::rustls::ServerConfig>),
}

/// Serves `app` on a copy of `listener` until `stop` turns true and the requests running then
/// have finished, within [`ConnLimits::for_process`].
pub fn serve_until(
    listener: &std::net::TcpListener,
    app: Router,
    stop: watch::Receiver<bool>,
    how: Listen,
) -> Result<impl Future<Output = std::io::Result<()>> + Send + 'static, std::io::Error> {
    let l = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
    Ok(serve_limited(l, app, stop, ConnLimits::for_process(), how))
}

/// The accept loop: every connection gets a [`Slot`] or a 503, then (the TLS handshake within
/// the header timeout and) HTTP/1.1 with the header and body timeouts of `limits`; the client's
/// address reaches handlers as `ConnectInfo`, the listener as [`Transport`].
async fn serve_limited(
    l: tokio::net::TcpListener,
    app: Router,
    mut stop: watch::Receiver<bool>,
    limits: ConnLimits,
    how: Listen,
) -> std::io::Result<()> {
    use axum::extract::ConnectInfo;
    use hyper_util::rt::{TokioIo, TokioTimer};
    let conns = Arc::new(Conns::default());
    let complaints = Arc::new(Complaints::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.header_read).max_buf_size(64 << 10);
    let (transport, acceptor, tls_port) = match &how {
        Listen::Plain { tls_port } => (Transport::Plain, None, *tls_port),
        Listen::Tls(c) => (Transport::Tls, Some(tokio_rustls::TlsAcceptor::from(c.clone())), 0),
    };
    loop {
        let (stream, peer) = tokio::select! {
            r = l.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a connection gone before it was accepted.
                    complaints.complain("accept".into(), || tracing::warn!(error = %e, "cannot accept a connection"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = async { let _ = stop.wait_for(|s| *s).await; } => break,
        };
        let slot = match conns.take(peer.ip(), &limits) {
            Ok(s) => s,
            Err(why) => {
                complaints.complain(
                    format!("conns {}", peer.ip()),
                    || tracing::warn!(%peer, "connection refused: {why} (logged once a minute per address)"),
                );
                // Over TLS, a plain-text answer would only be garbage to the client: just close.
                if acceptor.is_none() {
                    tokio::spawn(refuse(stream, why));
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let body_idle = limits.body_idle;
        let client_cert: Arc<std::sync::OnceLock<ClientCert>> = Arc::default();
        let cert_of_conn = client_cert.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(|b| axum::body::Body::new(tower_http::timeout::TimeoutBody::new(body_idle, b)));
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(transport);
            if let Some(c) = cert_of_conn.get() {
                req.extensions_mut().insert(c.clone());
            }
            let gate = transport == Transport::Plain
                && !(matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD)
                    && firmware_path(req.uri().path()));
            let mut app = app.clone();
            async move {
                if gate {
                    return Ok(plain_refusal(tls_port));
                }
                tower_service::Service::call(&mut app, req).await
            }
        });
        let watcher = graceful.watcher();
        let (acceptor, complaints, header_read, http) =
            (acceptor.clone(), complaints.clone(), limits.header_read, http.clone());
        tokio::spawn(async move {
            let _slot = slot;
            match acceptor {
                None => {
                    let _ = watcher.watch(http.serve_connection(TokioIo::new(stream), svc)).await;
                }
                Some(a) => match tokio::time::timeout(header_read, a.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        if let Some(c) = tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                            use sha2::Digest;
                            let _ = client_cert.set(ClientCert(hex::encode(sha2::Sha256::digest(c.as_ref()))));
                        }
                        let _ = watcher.watch(http.serve_connection(TokioIo::new(tls), svc)).await;
                    }
                    Ok(Err(e)) => complaints.complain(
                        format!("tls {}", peer.ip()),
                        || tracing::info!(%peer, error = %e, "TLS handshake failed (logged once a minute per address)"),
                    ),
                    Err(_) => {}
                },
            }
        });
    }
    drop(l);
    graceful.shutdown().await;
    Ok(())
}

/// [`serve_until`] as a task of its own.
pub fn serve(
    listener: &std::net::TcpListener,
    app: Router,
    stop: watch::Receiver<bool>,
    how: Listen,
) -> Result<tokio::task::JoinHandle<std::io::Result<()>>, std::io::Error> {
    Ok(tokio::spawn(serve_until(listener, app, stop, how)?))
}

/// Bytes `start..start + len` of `file` in 256 KiB chunks, for a response body: how the head
/// sends a file it has opened and checked (file contents, UEFI HTTP Boot files). A chunk in the
/// page cache (as a boot storm's files are) is read in place, straight into the buffer handed to
/// the connection; only one the disk must give goes through a blocking thread.
pub fn file_chunks(
    file: Arc<std::fs::File>,
    start: u64,
    len: u64,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    const CHUNK: u64 = 256 << 10;
    futures::stream::try_unfold((file, start, len), |(file, at, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        let n = left.min(CHUNK) as usize;
        let mut buf = bytes::BytesMut::with_capacity(n);
        let chunk = match crate::core::sys::read_cached(&file, at, &mut buf, n)? {
            Some(got) if got > 0 => buf.freeze(),
            _ => {
                let f = file.clone();
                let b = tokio::task::spawn_blocking(move || {
                    use std::os::unix::fs::FileExt;
                    let mut b = vec![0; n];
                    let got = f.read_at(&mut b, at)?;
                    b.truncate(got);
                    Ok::<_, std::io::Error>(b)
                })
                .await
                .map_err(std::io::Error::other)??;
                bytes::Bytes::from(b)
            }
        };
        if chunk.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the file ends at byte {at}, before byte {}", at + left),
            ));
        }
        let got = chunk.len() as u64;
        Ok(Some((chunk, (file, at + got, left - got))))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn file_chunks_give_the_range_asked_and_fail_on_a_short_file() {
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..(600u32 << 10)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let open = || Arc::new(std::fs::File::open(&p).unwrap());
        for (start, len) in [(0, data.len() as u64), (1000, 300 << 10), (data.len() as u64 - 1, 1), (5, 0)] {
            let got: Vec<bytes::Bytes> = file_chunks(open(), start, len).try_collect().await.unwrap();
            assert!(got.iter().all(|c| c.len() <= 256 << 10));
            let got: Vec<u8> = got.concat();
            assert_eq!(got, data[start as usize..(start + len) as usize], "{start} {len}");
        }
        // A file cut short under the transfer: an error, not a silent end.
        let e = file_chunks(open(), 0, data.len() as u64 + 10).try_collect::<Vec<_>>().await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn query_decoding() {
        let q = query_pairs(Some("name=vmlinuz%2D6.1+x&kind=kernel&peer")).unwrap();
        assert_eq!(q[0], ("name".into(), "vmlinuz-6.1 x".into()));
        assert_eq!(q[2], ("peer".into(), "".into()));
        assert!(query_pairs(Some("name=%zz")).is_err());
        assert!(query_pairs(Some("name=%4")).is_err());
    }

    #[test]
    fn credentials() {
        let mut h = HeaderMap::new();
        assert_eq!(check_token(&h, "t").unwrap_err().kind, ErrorKind::Unauthorized);
        h.insert(header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(check_token(&h, "t").unwrap_err().kind, ErrorKind::Forbidden);
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        assert!(check_token(&h, "t").is_ok());
    }
}
