//! The Redfish driver: power control of one node through its BMC's Redfish service over HTTPS.
//!
//! - **Trust**: the BMC's certificate is checked against `power.redfish_ca` (the CA the
//!   administrator gives, name or IP address checked as for any HTTPS server), or, when the node
//!   has `_bmc_tls_fingerprint`, compared with that SHA-256 (the address is then not checked: a
//!   pinned certificate is the BMC's identity). Either way rustls still checks the handshake's
//!   signatures with the certificate's key. Nothing else is accepted: a refusal says the
//!   fingerprint it saw, so the administrator can pin it after checking it.
//! - **Credentials** go over HTTPS only (the client refuses `http://`, follows no redirect). A
//!   session (`POST` to the service's `Sessions`, then `X-Auth-Token`, `DELETE` at the end,
//!   best effort) when the service root links one, HTTP Basic otherwise.
//! - **Actions**: `ComputerSystem.Reset` with the reset type the action asks for (`On`,
//!   `ForceOff`, `GracefulShutdown`, `PowerCycle`, `ForceRestart`, `GracefulRestart`); a BMC
//!   that offers no `PowerCycle` gets `ForceOff`, a wait for the power to be off, then `On`. The
//!   boot override is a `PATCH` of the system's `Boot` (`Once`, `Pxe`/`Hdd`/`UefiHttp`).
//! - **Bounds**: every request within the node's deadline, every answer read up to 1 MiB. A
//!   read the BMC answers with a passing server error (a busy BMC) is tried up to three times;
//!   a change is sent once.
//!   Each failure is its own message: refused password, unreachable, untrusted certificate, an
//!   answer that is not Redfish, a refusal with the BMC's own words. No message holds the
//!   password.

use super::{Ask, Outcome};
use clusterware_shared::power::{BootDevice, PowerAction, format_fingerprint};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tokio_rustls::rustls;

/// The most of one answer the head reads.
const MAX_BODY: usize = 1 << 20;
/// How long the end of a session may take beyond a deadline that has passed (so that a slow BMC
/// does not keep a session the head opened); it bounds how late a timed-out node's result is.
const LOGOUT_GRACE: Duration = Duration::from_secs(1);
/// Between two looks at the power state while a cycle waits for the system to be off.
const POLL: Duration = Duration::from_millis(500);
/// How many times a read is tried when the BMC answers it with a passing server error (500,
/// 502, 503, 504): BMCs refuse reads while busy (a chassis BMC serving several nodes at once, a
/// BMC locking its own state), and a read is safe to repeat. Changes are never repeated.
const READ_TRIES: u32 = 3;
/// The wait before the second try of a read (doubled for each further one); a `Retry-After` of
/// the BMC's own is followed up to [`READ_RETRY_MAX`].
const READ_RETRY: Duration = Duration::from_millis(250);
const READ_RETRY_MAX: Duration = Duration::from_secs(2);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA BMC certificates are checked against (`power.redfish_ca`), read for one request.
pub(super) struct Trust {
    /// `None`: no CA is given; `Some(Err)`: it is given and cannot be used (why).
    ca: Option<Result<Arc<WebPkiServerVerifier>, String>>,
}

impl Trust {
    pub(super) fn load(path: Option<&Path>) -> Trust {
        Trust { ca: path.map(load_ca) }
    }

    /// Why the CA that is given cannot be used.
    pub(super) fn problem(&self) -> Option<String> {
        match &self.ca {
            Some(Err(e)) => Some(e.clone()),
            _ => None,
        }
    }
}

fn load_ca(path: &Path) -> Result<Arc<WebPkiServerVerifier>, String> {
    use rustls::pki_types::pem::PemObject;
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("power.redfish_ca {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&pem) {
        let c = c.map_err(|e| format!("power.redfish_ca {shown} is not PEM: {e}"))?;
        roots.add(c).map_err(|e| format!("power.redfish_ca {shown}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("power.redfish_ca {shown} holds no certificate"));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| format!("power.redfish_ca {shown}: {e}"))
}

/// What the verifier saw of the BMC's certificate, for the message when it refused it.
#[derive(Debug, Default)]
struct Seen {
    fingerprint: Option<[u8; 32]>,
    rejected: Option<String>,
}

/// Accepts the BMC's certificate when it is the pinned one, or when the CA vouches for it; never
/// otherwise. Records the fingerprint it saw.
#[derive(Debug)]
struct BmcVerifier {
    pin: Option<[u8; 32]>,
    ca: Option<Arc<WebPkiServerVerifier>>,
    /// Why there is no CA to check with.
    no_ca: String,
    seen: Arc<Mutex<Seen>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for BmcVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        let verdict = match (&self.pin, &self.ca) {
            (Some(pin), _) if *pin == fp => Ok(ServerCertVerified::assertion()),
            (Some(pin), _) => {
                Err(format!("it is not the certificate _bmc_tls_fingerprint pins ({})", format_fingerprint(pin)))
            }
            (None, Some(ca)) => ca
                .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| format!("power.redfish_ca does not vouch for it ({e})")),
            (None, None) => Err(self.no_ca.clone()),
        };
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.fingerprint = Some(fp);
        verdict.map_err(|why| {
            seen.rejected = Some(why.clone());
            rustls::Error::General(why)
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// An HTTPS client for one BMC: only its verifier decides about the certificate; no redirect is
/// followed (a redirect could carry the credentials elsewhere), no plain `http://`.
fn http_client(trust: &Trust, pin: Option<[u8; 32]>, seen: Arc<Mutex<Seen>>) -> Result<reqwest::Client, String> {
    // reqwest asks for the process's provider; ring, as everywhere in the head.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (ca, no_ca) = match &trust.ca {
        Some(Ok(v)) => (Some(v.clone()), String::new()),
        Some(Err(e)) => (None, format!("the CA to check it with cannot be used ({e})")),
        None => (None, "there is no power.redfish_ca to check it with and no _bmc_tls_fingerprint pins it".to_string()),
    };
    let provider = provider();
    let verifier = Arc::new(BmcVerifier { pin, ca, no_ca, seen, provider: provider.clone() });
    // `dangerous()` is rustls's door to a verifier of one's own; this one verifies.
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("clusterware-head/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("cannot set up the HTTPS client: {e}"))
}

/// One node's Redfish BMC. Not `Debug`: it holds the password.
pub(super) struct Target {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub pass: String,
    /// `_bmc_tls_fingerprint`.
    pub pin: Option<[u8; 32]>,
    /// `_bmc_system`: which of several systems.
    pub system: Option<String>,
}

/// Why a node's Redfish exchange failed; each says what to do about it, none holds the password.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum RfError {
    #[error("{message}")]
    Untrusted { fingerprint: Option<String>, message: String },
    #[error("cannot reach the BMC at {base}: {why}")]
    Unreachable { base: String, why: String },
    #[error("TLS with the BMC at {base} failed: {why}")]
    Tls { base: String, why: String },
    #[error("the BMC refused user {user:?} with this password (HTTP 401 for {what})")]
    Refused { user: String, what: String },
    #[error("the BMC does not allow user {user:?} this: {what} (HTTP 403){detail}")]
    Forbidden { user: String, what: String, detail: String },
    #[error("the BMC answered something that is not Redfish: {0}")]
    NotRedfish(String),
    #[error("the BMC refused {what}: HTTP {status}{detail}")]
    Status { what: String, status: u16, detail: String },
    #[error("no answer from the BMC at {base} within {secs} s{during}")]
    Timeout { base: String, secs: u64, during: String },
    #[error("the exchange with the BMC at {base} broke: {why}")]
    Broken { base: String, why: String },
    #[error("{0}")]
    Plain(String),
}

/// Runs `ask` against one Redfish BMC within `deadline`.
pub(super) async fn run(trust: &Trust, t: &Target, ask: Ask, deadline: Instant, limit: Duration) -> Outcome {
    match session(trust, t, ask, deadline, limit).await {
        Ok((power, message)) => Outcome::Ok { power, message },
        Err(e @ RfError::Timeout { .. }) => Outcome::Timeout(e.to_string()),
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

/// What a probe of `https://ADDR/redfish/v1/` found.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Probe {
    /// A Redfish service, over a certificate this head trusts.
    Redfish,
    /// Nothing, or not Redfish.
    NotRedfish,
    /// An HTTPS service whose certificate this head does not trust (its SHA-256).
    Untrusted(String),
}

/// Looks for a Redfish service at the BMC's address (no credentials are sent), within `within`.
pub(super) async fn probe(trust: &Trust, t: &Target, within: Duration) -> Probe {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let Ok(http) = http_client(trust, t.pin, seen.clone()) else {
        return Probe::NotRedfish;
    };
    let c = Conn::new(http, t, seen, Instant::now() + within, within);
    match c.service_root().await {
        Ok(root) if root.contains_key("RedfishVersion") => Probe::Redfish,
        Err(RfError::Untrusted { fingerprint: Some(fp), .. }) => Probe::Untrusted(fp),
        _ => Probe::NotRedfish,
    }
}

async fn session(
    trust: &Trust,
    t: &Target,
    ask: Ask,
    deadline: Instant,
    limit: Duration,
) -> Result<(Option<String>, String), RfError> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let http = http_client(trust, t.pin, seen.clone()).map_err(RfError::Plain)?;
    let mut c = Conn::new(http, t, seen, deadline, limit);
    let root = c.service_root().await?;
    c.login(&root).await?;
    let r = act(&c, &root, ask).await;
    c.logout().await;
    r
}

/// An answer, read whole (up to [`MAX_BODY`]).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
    }
}

/// The exchange with one BMC.
struct Conn<'a> {
    http: reqwest::Client,
    t: &'a Target,
    base: String,
    /// `X-Auth-Token` of the session, when there is one (else HTTP Basic).
    token: Option<String>,
    /// The session's own path, to end it.
    session: Option<String>,
    seen: Arc<Mutex<Seen>>,
    deadline: Instant,
    limit: Duration,
}

impl<'a> Conn<'a> {
    fn new(http: reqwest::Client, t: &'a Target, seen: Arc<Mutex<Seen>>, deadline: Instant, limit: Duration) -> Self {
        Conn {
            http,
            t,
            base: format!("https://{}:{}", t.host, t.port),
            token: None,
            session: None,
            seen,
            deadline,
            limit,
        }
    }

    fn timeout(&self, during: &str) -> RfError {
        RfError::Timeout { base: self.base.clone(), secs: self.limit.as_secs(), during: during.to_string() }
    }

    /// A link of the service as a URL of this BMC. An absolute link (a `Location` header may be
    /// one) gives its path only: the credentials go to this BMC, whatever host a link names.
    fn url(&self, link: &str) -> Result<String, RfError> {
        let lower = link.get(..8).unwrap_or("").to_ascii_lowercase();
        let path = if lower.starts_with("https://") || lower.starts_with("http://") {
            let after = &link[link.find("//").map_or(0, |i| i + 2)..];
            after.find('/').map_or("/", |i| &after[i..])
        } else {
            link
        };
        if !path.starts_with('/') || path.starts_with("//") || path.len() > 1024 || path.chars().any(char::is_control) {
            return Err(RfError::NotRedfish(format!("a link that is not a path of this service: {}", snippet(link))));
        }
        Ok(format!("{}{path}", self.base))
    }

    /// One request; a read the BMC answers with a passing server error is tried again (see
    /// [`READ_TRIES`]), within the deadline.
    async fn send(
        &self,
        method: reqwest::Method,
        link: &str,
        body: Option<&Value>,
        auth: bool,
        if_match: Option<&str>,
    ) -> Result<Answer, RfError> {
        let mut tries = 1;
        loop {
            let a = self.send_once(method.clone(), link, body, auth, if_match).await?;
            if method != reqwest::Method::GET || tries >= READ_TRIES || !matches!(a.status, 500 | 502 | 503 | 504) {
                return Ok(a);
            }
            let backoff = READ_RETRY * 2u32.pow(tries - 1);
            let wait = a
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(backoff, |s| Duration::from_secs(s).min(READ_RETRY_MAX));
            if Instant::now() + wait >= self.deadline {
                return Ok(a);
            }
            tracing::debug!(base = %self.base, link, status = a.status, try_ = tries, "BMC busy; reading again");
            tokio::time::sleep(wait).await;
            tries += 1;
        }
    }

    async fn send_once(
        &self,
        method: reqwest::Method,
        link: &str,
        body: Option<&Value>,
        auth: bool,
        if_match: Option<&str>,
    ) -> Result<Answer, RfError> {
        let url = self.url(link)?;
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timeout(""));
        }
        let mut rb = self.http.request(method, url).timeout(left).header(reqwest::header::ACCEPT, "application/json");
        if auth {
            rb = match &self.token {
                Some(t) => rb.header("X-Auth-Token", t),
                None => rb.basic_auth(&self.t.user, Some(&self.t.pass)),
            };
        }
        if let Some(b) = body {
            rb = rb.header(reqwest::header::CONTENT_TYPE, "application/json").body(b.to_string());
        }
        if let Some(tag) = if_match {
            rb = rb.header(reqwest::header::IF_MATCH, tag);
        }
        let work = async {
            let mut resp = rb.send().await.map_err(|e| self.transport(&e))?;
            let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
            if let Some(n) = resp.content_length().filter(|n| *n > MAX_BODY as u64) {
                return Err(RfError::NotRedfish(format!("an answer of {n} bytes (more than 1 MiB)")));
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| self.transport(&e))? {
                if body.len() + chunk.len() > MAX_BODY {
                    return Err(RfError::NotRedfish("an answer larger than 1 MiB".into()));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(Answer { status, headers, body })
        };
        match tokio::time::timeout_at(self.deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout("")),
        }
    }

    /// A transport failure in words: the certificate refused (with its fingerprint),
    /// unreachable, TLS, not HTTP, or a broken exchange.
    fn transport(&self, e: &reqwest::Error) -> RfError {
        {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(why) = seen.rejected.take() {
                return untrusted(&self.base, seen.fingerprint.as_ref(), &why, self.t.pin.is_some());
            }
        }
        if e.is_timeout() {
            return self.timeout("");
        }
        let base = self.base.clone();
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(x) = cur {
            if let Some(io) = x.downcast_ref::<std::io::Error>() {
                if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return RfError::Tls { base, why: tls.to_string() };
                }
                use std::io::ErrorKind as K;
                if matches!(
                    io.kind(),
                    K::ConnectionRefused
                        | K::HostUnreachable
                        | K::NetworkUnreachable
                        | K::AddrNotAvailable
                        | K::TimedOut
                ) {
                    return RfError::Unreachable { base, why: io.to_string() };
                }
            }
            if let Some(tls) = x.downcast_ref::<rustls::Error>() {
                return RfError::Tls { base, why: tls.to_string() };
            }
            if let Some(h) = x.downcast_ref::<hyper::Error>() {
                if h.is_parse() || h.is_parse_status() {
                    return RfError::NotRedfish(format!("it does not speak HTTP ({h})"));
                }
                if h.is_incomplete_message() {
                    return RfError::Broken { base, why: "the BMC closed the connection without an answer".into() };
                }
            }
            cur = x.source();
        }
        let why = std::iter::successors(Some(e as &dyn std::error::Error), |x| x.source())
            .last()
            .map(|x| x.to_string())
            .unwrap_or_default();
        if e.is_connect() { RfError::Unreachable { base, why } } else { RfError::Broken { base, why } }
    }

    /// The error for an answer that is not a success, if it is not.
    fn refusal(&self, a: &Answer, what: &str) -> Option<RfError> {
        let what = what.to_string();
        match a.status {
            200..=299 => None,
            401 => Some(RfError::Refused { user: self.t.user.clone(), what }),
            403 => Some(RfError::Forbidden { user: self.t.user.clone(), what, detail: detail(&a.body) }),
            status => Some(RfError::Status { what, status, detail: detail(&a.body) }),
        }
    }

    /// `GET` of a resource (with the credentials): its JSON object and ETag.
    async fn get(&self, link: &str, what: &str) -> Result<(Map<String, Value>, Option<String>), RfError> {
        let a = self.send(reqwest::Method::GET, link, None, true, None).await?;
        if let Some(e) = self.refusal(&a, &format!("reading {what}")) {
            return Err(e);
        }
        let obj = object(&a.body, what)?;
        let etag = a.header("etag").or_else(|| obj.get("@odata.etag").and_then(Value::as_str).map(str::to_string));
        Ok((obj, etag))
    }

    /// The service root, which a client reads without credentials. A BMC that wants them
    /// there (against the standard) gets the standard paths.
    async fn service_root(&self) -> Result<Map<String, Value>, RfError> {
        let a = self.send(reqwest::Method::GET, "/redfish/v1/", None, false, None).await?;
        match a.status {
            200..=299 => {
                let root = object(&a.body, "the service root")?;
                if !["RedfishVersion", "Systems", "@odata.id"].iter().any(|k| root.contains_key(*k)) {
                    return Err(RfError::NotRedfish(format!(
                        "the service root has no RedfishVersion, Systems or @odata.id: {}",
                        snippet(&String::from_utf8_lossy(&a.body))
                    )));
                }
                Ok(root)
            }
            401 | 403 => Ok(Map::new()),
            404 => Err(RfError::NotRedfish("there is no /redfish/v1/ (HTTP 404)".into())),
            _ => Err(self.refusal(&a, "reading the service root").expect("not a success")),
        }
    }

    /// Opens a session when the service has a session service; else the requests carry HTTP
    /// Basic credentials.
    async fn login(&mut self, root: &Map<String, Value>) -> Result<(), RfError> {
        let linked = root.get("Links").and_then(|l| link(l, "Sessions"));
        let sessions = match linked {
            Some(p) => p,
            None if root.contains_key("SessionService") || root.is_empty() => {
                "/redfish/v1/SessionService/Sessions".to_string()
            }
            None => return Ok(()),
        };
        let body = json!({ "UserName": self.t.user, "Password": self.t.pass });
        let a = self.send(reqwest::Method::POST, &sessions, Some(&body), false, None).await?;
        match a.status {
            200..=299 => {
                let token = a
                    .header("x-auth-token")
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| RfError::NotRedfish("the BMC opened a session but gave no X-Auth-Token".into()))?;
                let at = a.header("location").or_else(|| {
                    object(&a.body, "the session").ok().and_then(|o| o.get("@odata.id")?.as_str().map(str::to_string))
                });
                self.token = Some(token);
                self.session = at;
                Ok(())
            }
            // No session service after all: HTTP Basic.
            404 | 405 | 501 => Ok(()),
            _ => Err(self.refusal(&a, "the session login").expect("not a success")),
        }
    }

    /// Ends the session, best effort: a BMC has few session slots. It may take
    /// [`LOGOUT_GRACE`] beyond a deadline that passed.
    async fn logout(&mut self) {
        let Some(at) = self.session.take() else { return };
        self.deadline = self.deadline.max(Instant::now() + LOGOUT_GRACE);
        match self.send(reqwest::Method::DELETE, &at, None, true, None).await {
            Ok(a) if (200..300).contains(&a.status) => {}
            Ok(a) => tracing::debug!(bmc = %self.base, status = a.status, "the BMC did not end the session"),
            Err(e) => tracing::debug!(bmc = %self.base, error = %e, "the BMC did not end the session"),
        }
    }

    /// `POST` of a reset type to the system's reset action.
    async fn reset(&self, target: &str, ty: &str) -> Result<(), RfError> {
        let a = self.send(reqwest::Method::POST, target, Some(&json!({ "ResetType": ty })), true, None).await?;
        match self.refusal(&a, &format!("ResetType {ty}")) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// The refusal for a certificate the verifier did not accept: what it saw and how to trust it.
fn untrusted(base: &str, fp: Option<&[u8; 32]>, why: &str, pinned: bool) -> RfError {
    let fingerprint = fp.map(format_fingerprint);
    let message = match (&fingerprint, pinned) {
        (Some(fp), true) => format!(
            "the certificate of the BMC at {base} (SHA-256 {fp}) is refused: {why}; if the BMC's certificate was \
             replaced on purpose, pin the new one with _bmc_tls_fingerprint={fp}"
        ),
        (Some(fp), false) => format!(
            "the certificate of the BMC at {base} (SHA-256 {fp}) is not trusted: {why}; give power.redfish_ca the \
             CA that issued it, or, once you have checked that this is the BMC's certificate, pin it with \
             _bmc_tls_fingerprint={fp}"
        ),
        (None, _) => format!("the certificate of the BMC at {base} is not trusted: {why}"),
    };
    RfError::Untrusted { fingerprint, message }
}

/// Up to 80 printable characters of what a BMC said, quoted.
fn snippet(s: &str) -> String {
    let t: String = s.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).take(80).collect();
    if t.is_empty() { "an empty answer".into() } else { format!("{t:?}") }
}

/// The body as a JSON object, or why it is not one.
fn object(body: &[u8], what: &str) -> Result<Map<String, Value>, RfError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(RfError::NotRedfish(format!(
            "{what} is JSON but not an object: {}",
            snippet(&String::from_utf8_lossy(body))
        ))),
        Err(_) => Err(RfError::NotRedfish(format!("{what} is not JSON: {}", snippet(&String::from_utf8_lossy(body))))),
    }
}

/// A Redfish error's own message (`error.@Message.ExtendedInfo[0].Message`, else
/// `error.message`), as `: …` to append; empty when there is none.
fn detail(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return String::new() };
    let e = &v["error"];
    let m = e["@Message.ExtendedInfo"][0]["Message"].as_str().or_else(|| e["message"].as_str());
    match m {
        Some(m) if !m.trim().is_empty() => {
            let m: String = m.trim().chars().filter(|c| !c.is_control()).take(200).collect();
            format!(": {m}")
        }
        _ => String::new(),
    }
}

/// `v[key]["@odata.id"]`.
fn link(v: &Value, key: &str) -> Option<String> {
    v.get(key)?.get("@odata.id")?.as_str().map(str::to_string)
}

/// The last segment of a resource path (a system's Id).
fn last_segment(p: &str) -> &str {
    p.trim_end_matches('/').rsplit('/').next().unwrap_or(p)
}

/// The system to act on: the only one, or the one `_bmc_system` names.
fn pick_system(coll: &Map<String, Value>, wanted: Option<&str>) -> Result<String, RfError> {
    let members: Vec<&str> = coll
        .get("Members")
        .and_then(Value::as_array)
        .ok_or_else(|| RfError::NotRedfish("the list of systems has no Members".into()))?
        .iter()
        .filter_map(|m| m.get("@odata.id").and_then(Value::as_str))
        .collect();
    let ids = || {
        let mut s: Vec<&str> = members.iter().take(8).map(|m| last_segment(m)).collect();
        if members.len() > 8 {
            s.push("…");
        }
        s.join(", ")
    };
    match (wanted, members.as_slice()) {
        (Some(w), _) => members.iter().find(|m| last_segment(m) == w).map(|m| m.to_string()).ok_or_else(|| {
            if members.is_empty() {
                RfError::Plain(format!("_bmc_system={w}, but the BMC lists no system"))
            } else {
                RfError::Plain(format!("_bmc_system={w} names none of the BMC's systems ({})", ids()))
            }
        }),
        (None, []) => Err(RfError::Plain("the BMC lists no system".into())),
        (None, [one]) => Ok(one.to_string()),
        (None, many) => Err(RfError::Plain(format!(
            "the BMC manages {} systems ({}): name the node's with _bmc_system=ID",
            many.len(),
            ids()
        ))),
    }
}

/// The system's power state as results say it.
fn power_state(sys: &Map<String, Value>) -> Result<String, RfError> {
    match sys.get("PowerState").and_then(Value::as_str) {
        Some("On") => Ok("on".into()),
        Some("Off") => Ok("off".into()),
        Some("PoweringOn") => Ok("powering on".into()),
        Some("PoweringOff") => Ok("powering off".into()),
        Some("Paused") => Ok("paused".into()),
        Some(other) => Err(RfError::NotRedfish(format!("PowerState {} is not a Redfish power state", snippet(other)))),
        None => Err(RfError::NotRedfish("the system has no PowerState".into())),
    }
}

/// The system's reset action: where to post, and which reset types it takes (`None`: it does
/// not say).
struct ResetAction {
    target: String,
    allowed: Option<Vec<String>>,
}

impl ResetAction {
    /// The first of `prefs` the BMC offers (the first, when it does not say what it offers).
    fn pick(&self, prefs: &[&'static str]) -> Result<&'static str, RfError> {
        match &self.allowed {
            None => Ok(prefs[0]),
            Some(list) => prefs.iter().find(|p| list.iter().any(|a| a == *p)).copied().ok_or_else(|| {
                RfError::Plain(format!(
                    "the BMC does not offer ResetType {} (it offers {})",
                    prefs[0],
                    if list.is_empty() { "none".to_string() } else { list.join(", ") }
                ))
            }),
        }
    }

    fn offers(&self, ty: &str) -> bool {
        self.allowed.as_ref().is_none_or(|l| l.iter().any(|a| a == ty))
    }
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    Some(v?.as_array()?.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
}

/// The reset action of `sys` (at `path`), its reset types from the action or its ActionInfo.
async fn reset_action(c: &Conn<'_>, path: &str, sys: &Map<String, Value>) -> Result<ResetAction, RfError> {
    let action = sys.get("Actions").and_then(|a| a.get("#ComputerSystem.Reset"));
    let target = action
        .and_then(|a| a.get("target"))
        .and_then(Value::as_str)
        .map_or_else(|| format!("{}/Actions/ComputerSystem.Reset", path.trim_end_matches('/')), str::to_string);
    let mut allowed = strings(action.and_then(|a| a.get("ResetType@Redfish.AllowableValues")));
    let info = action.and_then(|a| a.get("@Redfish.ActionInfo")).and_then(Value::as_str);
    if let (None, Some(info)) = (&allowed, info) {
        match c.get(info, "the reset action's parameters").await {
            Ok((ai, _)) => {
                allowed = ai.get("Parameters").and_then(Value::as_array).and_then(|ps| {
                    let p = ps.iter().find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"))?;
                    strings(p.get("AllowableValues"))
                })
            }
            // Not said after all: try the reset type as it is.
            Err(RfError::Status { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ResetAction { target, allowed })
}

/// Sets the next boot (once) to `dev`.
async fn set_boot(
    c: &Conn<'_>,
    path: &str,
    sys: &Map<String, Value>,
    etag: Option<&str>,
    dev: BootDevice,
) -> Result<(), RfError> {
    let want = match dev {
        BootDevice::Pxe => "Pxe",
        BootDevice::Disk => "Hdd",
        BootDevice::UefiHttp => "UefiHttp",
    };
    let offered = strings(sys.get("Boot").and_then(|b| b.get("BootSourceOverrideTarget@Redfish.AllowableValues")));
    if let Some(list) = offered.filter(|l| !l.iter().any(|x| x == want)) {
        return Err(RfError::Plain(format!(
            "the BMC does not offer a boot override to {want} (it offers {})",
            if list.is_empty() { "none".to_string() } else { list.join(", ") }
        )));
    }
    let body = json!({ "Boot": { "BootSourceOverrideEnabled": "Once", "BootSourceOverrideTarget": want } });
    let a = c.send(reqwest::Method::PATCH, path, Some(&body), true, etag).await?;
    match c.refusal(&a, &format!("the boot override to {want}")) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Finds the system and carries out `ask`: (power state for `status`, message).
async fn act(c: &Conn<'_>, root: &Map<String, Value>, ask: Ask) -> Result<(Option<String>, String), RfError> {
    let systems = link(&Value::Object(root.clone()), "Systems").unwrap_or_else(|| "/redfish/v1/Systems".into());
    let (coll, _) = c.get(&systems, "the list of systems").await?;
    let path = pick_system(&coll, c.t.system.as_deref())?;
    let (sys, etag) = c.get(&path, "the system").await?;
    if ask.action == PowerAction::Status {
        let p = power_state(&sys)?;
        return Ok((Some(p.clone()), format!("power is {p}")));
    }
    if let Some(dev) = ask.boot {
        set_boot(c, &path, &sys, etag.as_deref(), dev).await?;
    }
    let reset = reset_action(c, &path, &sys).await?;
    let done = match (ask.action, ask.soft) {
        (PowerAction::Status, _) => unreachable!("answered above"),
        (PowerAction::Cycle, _) if !reset.offers("PowerCycle") => cycle_by_hand(c, &path, &sys, &reset).await?,
        (action, soft) => {
            let prefs: &[&'static str] = match (action, soft) {
                (PowerAction::On, _) => &["On", "ForceOn"],
                (PowerAction::Off, false) => &["ForceOff"],
                (PowerAction::Off, true) => &["GracefulShutdown"],
                (PowerAction::Cycle, _) => &["PowerCycle"],
                (PowerAction::Reset, false) => &["ForceRestart"],
                (PowerAction::Reset, true) => &["GracefulRestart"],
                (PowerAction::Status, _) => unreachable!("answered above"),
            };
            let ty = reset.pick(prefs)?;
            c.reset(&reset.target, ty).await?;
            format!("power {} ({ty})", action.name())
        }
    };
    Ok((
        None,
        match ask.boot {
            Some(dev) => format!("{done}, {}", dev.words()),
            None => done,
        },
    ))
}

/// A cycle for a BMC without `PowerCycle`: `ForceOff`, wait until the system is off, `On`.
async fn cycle_by_hand(
    c: &Conn<'_>,
    path: &str,
    sys: &Map<String, Value>,
    reset: &ResetAction,
) -> Result<String, RfError> {
    let (off, on) = (reset.pick(&["ForceOff"])?, reset.pick(&["On", "ForceOn"])?);
    if power_state(sys)? == "off" {
        c.reset(&reset.target, on).await?;
        return Ok(format!("power cycle (the system was off: {on})"));
    }
    c.reset(&reset.target, off).await?;
    loop {
        let next = (Instant::now() + POLL).min(c.deadline);
        tokio::time::sleep_until(next).await;
        if Instant::now() >= c.deadline {
            return Err(c.timeout(" (waiting for the system to be off before powering it on)"));
        }
        let (now, _) = c.get(path, "the system").await?;
        if power_state(&now)? == "off" {
            break;
        }
    }
    c.reset(&reset.target, on).await?;
    Ok(format!("power cycle ({off}, then {on}: the BMC offers no PowerCycle)"))
}

#[cfg(test)]
mod tests {
    //! The JSON handling of odd answers, and whole exchanges with an in-process Redfish service
    //! over TLS (sushy-emulator, which the integration tests use, has no sessions).

    use super::*;
    use clusterware_shared::pki;
    use std::net::SocketAddr;
    use tokio::io::AsyncWriteExt;

    const PASS: &str = "s3cret-pw";

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn odd_answers_are_named_as_such() {
        let e = object(b"<html><body>Login</body></html>", "the system").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the BMC answered something that is not Redfish: the system is not JSON: \"<html><body>Login</body></html>\""
        );
        assert!(object(b"", "the system").unwrap_err().to_string().contains("is not JSON: an empty answer"));
        assert!(object(b"[1,2]", "the system").unwrap_err().to_string().contains("JSON but not an object"));
        let long = format!("\u{1b}[2J{}", "x".repeat(500));
        let e = object(long.as_bytes(), "the system").unwrap_err().to_string();
        assert!(e.len() < 200 && !e.contains('\u{1b}'), "{e}");
        assert!(power_state(&obj(json!({"PowerState": "On"}))).unwrap() == "on");
        assert!(power_state(&obj(json!({"PowerState": "PoweringOff"}))).unwrap() == "powering off");
        assert!(power_state(&obj(json!({}))).unwrap_err().to_string().contains("has no PowerState"));
        assert!(power_state(&obj(json!({"PowerState": 1}))).unwrap_err().to_string().contains("has no PowerState"));
        assert!(
            power_state(&obj(json!({"PowerState": "Sleepy"}))).unwrap_err().to_string().contains("\"Sleepy\" is not")
        );
        assert_eq!(
            detail(br#"{"error":{"message":"general","@Message.ExtendedInfo":[{"Message":"ResetType Nmi is not allowed"}]}}"#),
            ": ResetType Nmi is not allowed"
        );
        assert_eq!(detail(br#"{"error":{"message":"Access denied"}}"#), ": Access denied");
        assert_eq!(detail(b"not json"), "");
        assert_eq!(detail(br#"{"error":{"@Message.ExtendedInfo":"odd"}}"#), "");
    }

    #[test]
    fn the_system_is_the_only_one_or_the_named_one() {
        let coll = |ids: &[&str]| {
            obj(
                json!({"Members": ids.iter().map(|i| json!({"@odata.id": format!("/redfish/v1/Systems/{i}")})).collect::<Vec<_>>()}),
            )
        };
        assert_eq!(pick_system(&coll(&["1"]), None).unwrap(), "/redfish/v1/Systems/1");
        let e = pick_system(&coll(&["a", "b"]), None).unwrap_err().to_string();
        assert_eq!(e, "the BMC manages 2 systems (a, b): name the node's with _bmc_system=ID");
        assert_eq!(pick_system(&coll(&["a", "b"]), Some("b")).unwrap(), "/redfish/v1/Systems/b");
        assert!(
            pick_system(&coll(&["a", "b"]), Some("c"))
                .unwrap_err()
                .to_string()
                .contains("names none of the BMC's systems (a, b)")
        );
        assert_eq!(pick_system(&coll(&[]), None).unwrap_err().to_string(), "the BMC lists no system");
        let many: Vec<String> = (0..20).map(|i| i.to_string()).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(pick_system(&coll(&many), None).unwrap_err().to_string().contains("(0, 1, 2, 3, 4, 5, 6, 7, …)"));
        assert!(pick_system(&obj(json!({"Members": "x"})), None).unwrap_err().to_string().contains("has no Members"));
        assert!(pick_system(&obj(json!({})), None).unwrap_err().to_string().contains("not Redfish"));
        let r = ResetAction { target: "/x".into(), allowed: Some(vec!["ForceOn".into(), "ForceOff".into()]) };
        assert_eq!(r.pick(&["On", "ForceOn"]).unwrap(), "ForceOn");
        assert_eq!(
            r.pick(&["GracefulShutdown"]).unwrap_err().to_string(),
            "the BMC does not offer ResetType GracefulShutdown (it offers ForceOn, ForceOff)"
        );
        assert!(!r.offers("PowerCycle"));
        let r = ResetAction { target: "/x".into(), allowed: None };
        assert!(r.offers("PowerCycle") && r.pick(&["On"]).unwrap() == "On");
    }

    #[test]
    fn links_stay_on_the_bmc() {
        let t = target(1, None);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let c = Conn::new(reqwest::Client::new(), &t, seen, Instant::now(), Duration::from_secs(1));
        assert_eq!(c.url("/redfish/v1/Systems").unwrap(), "https://127.0.0.1:1/redfish/v1/Systems");
        assert_eq!(c.url("https://127.0.0.1:1/redfish/v1/x").unwrap(), "https://127.0.0.1:1/redfish/v1/x");
        // A session's Location may name the BMC otherwise: its path, on this BMC.
        assert_eq!(c.url("HTTPS://bmc7.cluster/redfish/v1/S/1").unwrap(), "https://127.0.0.1:1/redfish/v1/S/1");
        assert_eq!(c.url("https://evil.example/redfish/v1").unwrap(), "https://127.0.0.1:1/redfish/v1");
        for bad in ["//evil.example/x", "Systems/1", "", "/a\nb", "https://x//y"] {
            assert!(c.url(bad).unwrap_err().to_string().contains("not a path of this service"), "{bad:?}");
        }
    }

    /// How the mock service behaves.
    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Mode {
        /// A session service (and no HTTP Basic).
        Sessions,
        /// HTTP Basic only.
        Basic,
        /// Two systems.
        TwoSystems,
        /// The list of systems is HTML.
        Html,
        /// The list of systems is 2 MiB.
        Huge,
        /// TLS, then bytes that are not HTTP.
        NotHttp,
    }

    #[derive(Debug)]
    struct State {
        mode: Mode,
        power: &'static str,
        reset_types: Vec<&'static str>,
        /// (BootSourceOverrideEnabled, BootSourceOverrideTarget, If-Match).
        boot: Option<(String, String, String)>,
        /// "METHOD PATH AUTH" per request, AUTH being token, basic or none.
        log: Vec<String>,
        live_tokens: Vec<String>,
        sessions_made: usize,
        resets: Vec<String>,
        /// The reset types in an ActionInfo resource rather than in the action.
        action_info: bool,
        /// How many of the next requests to the list of systems get "500 database is locked".
        busy: usize,
        /// Every reset answered "503 busy".
        busy_resets: bool,
    }

    struct Mock {
        addr: SocketAddr,
        fingerprint: [u8; 32],
        ca_file: tempfile::NamedTempFile,
        state: Arc<Mutex<State>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Mock {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Mock {
        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap()
        }
    }

    fn reply(status: u16, headers: &[(&str, &str)], body: String) -> hyper::Response<axum::body::Body> {
        let mut r = hyper::Response::builder().status(status).header("content-type", "application/json");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(axum::body::Body::from(body)).unwrap()
    }

    fn handle(
        st: &Mutex<State>,
        method: &str,
        path: &str,
        h: &hyper::HeaderMap,
        body: &[u8],
    ) -> hyper::Response<axum::body::Body> {
        let mut s = st.lock().unwrap();
        let token = h.get("x-auth-token").and_then(|v| v.to_str().ok()).map(str::to_string);
        let basic = h.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_string);
        let how = match (&token, &basic) {
            (Some(_), _) => "token",
            (None, Some(_)) => "basic",
            _ => "none",
        };
        s.log.push(format!("{method} {path} {how}"));
        let sessions = s.mode == Mode::Sessions;
        if method == "GET" && path == "/redfish/v1/" {
            let mut root = json!({"RedfishVersion": "1.6.0", "@odata.id": "/redfish/v1/", "Systems": {"@odata.id": "/redfish/v1/Systems"}});
            if sessions {
                root["SessionService"] = json!({"@odata.id": "/redfish/v1/SessionService"});
                root["Links"] = json!({"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}});
            }
            return reply(200, &[], root.to_string());
        }
        if method == "POST" && path == "/redfish/v1/SessionService/Sessions" && sessions {
            let b: Value = serde_json::from_slice(body).unwrap_or_default();
            if b["UserName"] != "admin" || b["Password"] != PASS {
                return reply(401, &[], json!({"error": {"message": "bad login"}}).to_string());
            }
            s.sessions_made += 1;
            let n = s.sessions_made;
            let tok = format!("tok-{n}");
            s.live_tokens.push(tok.clone());
            let loc = format!("/redfish/v1/SessionService/Sessions/{n}");
            return reply(201, &[("X-Auth-Token", &tok), ("Location", &loc)], json!({"@odata.id": loc}).to_string());
        }
        let authed = if sessions {
            token.is_some_and(|t| s.live_tokens.contains(&t))
        } else {
            basic
                == Some(format!(
                    "Basic {}",
                    clusterware_shared::agent::base64_encode(format!("admin:{PASS}").as_bytes())
                ))
        };
        if !authed {
            return reply(401, &[("WWW-Authenticate", "Basic realm=\"bmc\"")], "{}".into());
        }
        if method == "DELETE" && path.starts_with("/redfish/v1/SessionService/Sessions/") {
            let tok = format!("tok-{}", last_segment(path));
            s.live_tokens.retain(|t| *t != tok);
            return reply(204, &[], String::new());
        }
        if method == "GET" && path == "/redfish/v1/Systems" && s.busy > 0 {
            s.busy -= 1;
            return reply(500, &[], json!({"error": {"message": "database is locked"}}).to_string());
        }
        if method == "GET" && path == "/redfish/v1/Systems" {
            return match s.mode {
                Mode::Html => reply(200, &[], "<html>Please log in</html>".into()),
                Mode::Huge => reply(200, &[], format!("{{\"Members\": [], \"x\": \"{}\"}}", "x".repeat(2 << 20))),
                Mode::TwoSystems => reply(
                    200,
                    &[],
                    json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}, {"@odata.id": "/redfish/v1/Systems/2"}]})
                        .to_string(),
                ),
                _ => reply(200, &[], json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]}).to_string()),
            };
        }
        if (path == "/redfish/v1/Systems/1" || path == "/redfish/v1/Systems/2") && method == "GET" {
            let reset = if s.action_info {
                json!({"target": format!("{path}/Actions/ComputerSystem.Reset"),
                    "@Redfish.ActionInfo": format!("{path}/ResetActionInfo")})
            } else {
                json!({"target": format!("{path}/Actions/ComputerSystem.Reset"),
                    "ResetType@Redfish.AllowableValues": s.reset_types})
            };
            let sys = json!({
                "Id": "1",
                "PowerState": s.power,
                "Boot": {"BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd", "UefiHttp"]},
                "Actions": {"#ComputerSystem.Reset": reset},
            });
            return reply(200, &[("ETag", "W/\"e1\"")], sys.to_string());
        }
        if path == "/redfish/v1/Systems/1/ResetActionInfo" && method == "GET" {
            let info = json!({"Parameters": [{"Name": "ResetType", "AllowableValues": s.reset_types}]});
            return reply(200, &[], info.to_string());
        }
        if path == "/redfish/v1/Systems/1" && method == "PATCH" {
            let b: Value = serde_json::from_slice(body).unwrap_or_default();
            let m = h.get("if-match").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let f = |k: &str| b["Boot"][k].as_str().unwrap_or("").to_string();
            s.boot = Some((f("BootSourceOverrideEnabled"), f("BootSourceOverrideTarget"), m));
            return reply(204, &[], String::new());
        }
        if method == "POST" && path.ends_with("/Actions/ComputerSystem.Reset") && s.busy_resets {
            return reply(503, &[("Retry-After", "1")], json!({"error": {"message": "busy"}}).to_string());
        }
        if method == "POST" && path.ends_with("/Actions/ComputerSystem.Reset") {
            let b: Value = serde_json::from_slice(body).unwrap_or_default();
            let ty = b["ResetType"].as_str().unwrap_or("").to_string();
            if !s.reset_types.contains(&ty.as_str()) {
                let e = json!({"error": {"code": "Base.1.8.GeneralError", "message": "x",
                    "@Message.ExtendedInfo": [{"Message": format!("The value {ty} for ResetType is not in the list")}]}});
                return reply(400, &[], e.to_string());
            }
            s.power = match ty.as_str() {
                "ForceOff" | "GracefulShutdown" => "Off",
                _ => "On",
            };
            s.resets.push(ty);
            return reply(204, &[], String::new());
        }
        reply(404, &[], json!({"error": {"message": "no such resource"}}).to_string())
    }

    /// A Redfish service over TLS on 127.0.0.1, with a certificate from its own CA.
    async fn mock(mode: Mode) -> Mock {
        use rustls::pki_types::pem::PemObject;
        let ca = pki::Ca::create().unwrap();
        let issued = ca.issue("bmc", &["127.0.0.1".to_string()], 2).unwrap();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let fingerprint: [u8; 32] = Sha256::digest(chain[0].as_ref()).into();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let ca_file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(ca_file.path(), &ca.cert_pem).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            mode,
            power: "Off",
            reset_types: vec!["On", "ForceOff", "GracefulShutdown", "ForceRestart", "GracefulRestart"],
            boot: None,
            log: Vec::new(),
            live_tokens: Vec::new(),
            sessions_made: 0,
            resets: Vec::new(),
            action_info: false,
            busy: 0,
            busy_resets: false,
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, st) = (acceptor.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    if mode == Mode::NotHttp {
                        let _ = tls.write_all(b"\x00\x01garbage, not HTTP at all\r\n\r\n").await;
                        let _ = tls.shutdown().await;
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let st = st.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body =
                                axum::body::to_bytes(axum::body::Body::new(body), 1 << 20).await.unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(handle(
                                &st,
                                parts.method.as_str(),
                                parts.uri.path(),
                                &parts.headers,
                                &body,
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Mock { addr, fingerprint, ca_file, state, task }
    }

    fn target(port: u16, pin: Option<[u8; 32]>) -> Target {
        Target { host: "127.0.0.1".into(), port, user: "admin".into(), pass: PASS.into(), pin, system: None }
    }

    async fn go(trust: &Trust, t: &Target, action: PowerAction, soft: bool, boot: Option<BootDevice>) -> Outcome {
        let limit = Duration::from_secs(5);
        run(trust, t, Ask { action, soft, boot }, Instant::now() + limit, limit).await
    }

    fn ok(o: Outcome) -> (Option<String>, String) {
        match o {
            Outcome::Ok { power, message } => (power, message),
            other => panic!("{other:?}"),
        }
    }

    fn failed(o: Outcome) -> String {
        match o {
            Outcome::Failed(m) => {
                assert!(!m.contains(PASS), "{m}");
                m
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_session_for_each_command_ended_after_it() {
        let m = mock(Mode::Sessions).await;
        let trust = Trust::load(Some(m.ca_file.path()));
        assert!(trust.problem().is_none());
        let t = target(m.addr.port(), None);
        assert_eq!(
            ok(go(&trust, &t, PowerAction::Status, false, None).await),
            (Some("off".into()), "power is off".into())
        );
        let (_, msg) = ok(go(&trust, &t, PowerAction::On, false, Some(BootDevice::UefiHttp)).await);
        assert_eq!(msg, "power on (On), next boot over UEFI HTTP");
        assert_eq!(m.state().boot, Some(("Once".into(), "UefiHttp".into(), "W/\"e1\"".into())));
        // No PowerCycle offered: ForceOff, a wait until it is off, On.
        let (_, msg) = ok(go(&trust, &t, PowerAction::Cycle, false, Some(BootDevice::Pxe)).await);
        assert_eq!(msg, "power cycle (ForceOff, then On: the BMC offers no PowerCycle), next boot from the network");
        assert_eq!(m.state().boot.as_ref().unwrap().1, "Pxe");
        ok(go(&trust, &t, PowerAction::Reset, true, Some(BootDevice::Disk)).await);
        assert_eq!(m.state().boot.as_ref().unwrap().1, "Hdd");
        ok(go(&trust, &t, PowerAction::Reset, false, None).await);
        ok(go(&trust, &t, PowerAction::Off, true, None).await);
        assert_eq!(m.state().resets, ["On", "ForceOff", "On", "GracefulRestart", "ForceRestart", "GracefulShutdown"]);
        let (_, msg) = ok(go(&trust, &t, PowerAction::Cycle, false, None).await);
        assert_eq!(msg, "power cycle (the system was off: On)");
        {
            let s = m.state();
            assert_eq!(s.sessions_made, 7, "one per command: {:?}", s.log);
            assert!(s.live_tokens.is_empty(), "every session ended: {:?}", s.live_tokens);
            assert!(s.log.iter().all(|l| !l.ends_with(" basic")), "no password sent but to log in: {:?}", s.log);
            assert!(s.log.iter().filter(|l| l.starts_with("DELETE /redfish/v1/SessionService/Sessions/")).count() == 7);
        }
        // Reset types listed in an ActionInfo rather than in the action.
        m.state().action_info = true;
        m.state().reset_types = vec!["On", "ForceOff", "PowerCycle"];
        let (_, msg) = ok(go(&trust, &t, PowerAction::Cycle, false, None).await);
        assert_eq!(msg, "power cycle (PowerCycle)");
        assert!(m.state().log.iter().any(|l| l == "GET /redfish/v1/Systems/1/ResetActionInfo token"));
        m.state().action_info = false;
        // A BMC that refuses a reset type says so in its own words.
        m.state().reset_types = vec!["On", "ForceOff"];
        m.state().power = "On";
        let e = failed(go(&trust, &t, PowerAction::Off, true, None).await);
        assert_eq!(e, "the BMC does not offer ResetType GracefulShutdown (it offers On, ForceOff)");
        assert!(m.state().live_tokens.is_empty(), "the session ended after a failure too");
    }

    #[tokio::test]
    async fn a_wrong_password_is_its_own_result() {
        for mode in [Mode::Sessions, Mode::Basic] {
            let m = mock(mode).await;
            let trust = Trust::load(Some(m.ca_file.path()));
            let mut t = target(m.addr.port(), None);
            t.pass = "not-the-password".into();
            let e = failed(go(&trust, &t, PowerAction::Status, false, None).await);
            let what = if mode == Mode::Sessions { "the session login" } else { "reading the list of systems" };
            assert_eq!(e, format!("the BMC refused user \"admin\" with this password (HTTP 401 for {what})"));
            assert!(!e.contains("not-the-password"));
        }
    }

    #[tokio::test]
    async fn http_basic_without_a_session_service() {
        let m = mock(Mode::Basic).await;
        let trust = Trust::load(Some(m.ca_file.path()));
        let t = target(m.addr.port(), None);
        assert_eq!(ok(go(&trust, &t, PowerAction::Status, false, None).await).0.as_deref(), Some("off"));
        ok(go(&trust, &t, PowerAction::On, false, None).await);
        let s = m.state();
        assert!(s.log.iter().all(|l| !l.starts_with("POST /redfish/v1/SessionService")), "{:?}", s.log);
        for l in &s.log {
            let root = l.starts_with("GET /redfish/v1/ ");
            assert!(if root { l.ends_with(" none") } else { l.ends_with(" basic") }, "{l}: {:?}", s.log);
        }
    }

    #[tokio::test]
    async fn certificates_are_verified_or_pinned_never_just_accepted() {
        let m = mock(Mode::Sessions).await;
        let fp = format_fingerprint(&m.fingerprint);
        // Neither a CA nor a pin: refused before anything is sent, with the fingerprint.
        let e = failed(go(&Trust::load(None), &target(m.addr.port(), None), PowerAction::Status, false, None).await);
        assert!(e.contains(&format!("(SHA-256 {fp}) is not trusted")), "{e}");
        assert!(e.contains("no power.redfish_ca") && e.contains(&format!("_bmc_tls_fingerprint={fp}")), "{e}");
        assert!(m.state().log.is_empty(), "nothing sent: {:?}", m.state().log);
        // Another CA: refused.
        let other = pki::Ca::create().unwrap();
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &other.cert_pem).unwrap();
        let e = failed(
            go(&Trust::load(Some(f.path())), &target(m.addr.port(), None), PowerAction::Status, false, None).await,
        );
        assert!(e.contains("power.redfish_ca does not vouch for it") && e.contains(&fp), "{e}");
        // Pinned: accepted without a CA; a wrong pin refused even with the right CA.
        let o =
            go(&Trust::load(None), &target(m.addr.port(), Some(m.fingerprint)), PowerAction::Status, false, None).await;
        assert_eq!(ok(o).0.as_deref(), Some("off"));
        let wrong = [7u8; 32];
        let e = failed(
            go(
                &Trust::load(Some(m.ca_file.path())),
                &target(m.addr.port(), Some(wrong)),
                PowerAction::Status,
                false,
                None,
            )
            .await,
        );
        assert!(
            e.contains(&format!("not the certificate _bmc_tls_fingerprint pins ({})", format_fingerprint(&wrong))),
            "{e}"
        );
        assert!(e.contains(&format!("pin the new one with _bmc_tls_fingerprint={fp}")), "{e}");
        // A CA file that cannot be used says so.
        let bad = Trust::load(Some(Path::new("/nonexistent/ca.pem")));
        assert!(bad.problem().unwrap().contains("/nonexistent/ca.pem"));
        let e = failed(go(&bad, &target(m.addr.port(), None), PowerAction::Status, false, None).await);
        assert!(e.contains("cannot be used") && e.contains("/nonexistent/ca.pem"), "{e}");
        std::fs::write(f.path(), "not a certificate").unwrap();
        assert!(Trust::load(Some(f.path())).problem().unwrap().contains("holds no certificate"));
    }

    #[tokio::test]
    async fn odd_services_each_fail_in_their_own_words() {
        let m = mock(Mode::Html).await;
        let trust = Trust::load(Some(m.ca_file.path()));
        let e = failed(go(&trust, &target(m.addr.port(), None), PowerAction::Status, false, None).await);
        assert_eq!(
            e,
            "the BMC answered something that is not Redfish: the list of systems is not JSON: \"<html>Please log in</html>\""
        );
        let m = mock(Mode::Huge).await;
        let trust = Trust::load(Some(m.ca_file.path()));
        let e = failed(go(&trust, &target(m.addr.port(), None), PowerAction::Status, false, None).await);
        assert!(e.contains("not Redfish") && e.contains("more than 1 MiB"), "{e}");
        let m = mock(Mode::NotHttp).await;
        let trust = Trust::load(Some(m.ca_file.path()));
        let e = failed(go(&trust, &target(m.addr.port(), None), PowerAction::Status, false, None).await);
        assert!(e.starts_with("the BMC answered something that is not Redfish: it does not speak HTTP"), "{e}");
        let m = mock(Mode::TwoSystems).await;
        let trust = Trust::load(Some(m.ca_file.path()));
        let mut t = target(m.addr.port(), None);
        let e = failed(go(&trust, &t, PowerAction::Status, false, None).await);
        assert!(e.contains("manages 2 systems (1, 2)"), "{e}");
        t.system = Some("2".into());
        assert_eq!(ok(go(&trust, &t, PowerAction::Status, false, None).await).0.as_deref(), Some("off"));
        // Nothing listening: unreachable, at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let e = failed(go(&trust, &target(port, None), PowerAction::Status, false, None).await);
        assert!(e.starts_with(&format!("cannot reach the BMC at https://127.0.0.1:{port}: ")), "{e}");
    }

    #[tokio::test]
    async fn a_busy_bmc_is_read_again_but_never_asked_twice_to_act() {
        let m = mock(Mode::Basic).await;
        let trust = Trust::load(Some(m.ca_file.path()));
        let t = target(m.addr.port(), None);
        let systems = |m: &Mock| m.state().log.iter().filter(|l| l.starts_with("GET /redfish/v1/Systems ")).count();
        // Busy twice: the third read answers.
        m.state().busy = 2;
        assert_eq!(ok(go(&trust, &t, PowerAction::Status, false, None).await).0.as_deref(), Some("off"));
        assert_eq!(systems(&m), 3);
        // Busy for longer than the tries: the BMC's own words.
        m.state().busy = 10;
        let e = failed(go(&trust, &t, PowerAction::Status, false, None).await);
        assert!(e.contains("HTTP 500") && e.contains("database is locked"), "{e}");
        assert_eq!(systems(&m), 3 + READ_TRIES as usize);
        // A change is sent once, whatever the BMC answers.
        m.state().busy = 0;
        m.state().busy_resets = true;
        let e = failed(go(&trust, &t, PowerAction::On, false, None).await);
        assert!(e.contains("HTTP 503"), "{e}");
        assert_eq!(m.state().log.iter().filter(|l| l.starts_with("POST ")).count(), 1, "{:?}", m.state().log);
    }

    #[tokio::test]
    async fn a_silent_bmc_times_out_within_the_deadline() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let limit = Duration::from_secs(1);
        let t0 = std::time::Instant::now();
        let o = run(
            &Trust::load(None),
            &target(port, None),
            Ask { action: PowerAction::Status, soft: false, boot: None },
            Instant::now() + limit,
            limit,
        )
        .await;
        assert!(t0.elapsed() < Duration::from_millis(1500), "{:?}", t0.elapsed());
        assert_eq!(o, Outcome::Timeout(format!("no answer from the BMC at https://127.0.0.1:{port} within 1 s")));
        hold.abort();
    }

    #[tokio::test]
    async fn a_probe_finds_redfish_only_behind_a_trusted_certificate() {
        let m = mock(Mode::Sessions).await;
        let t = target(m.addr.port(), None);
        let within = Duration::from_secs(2);
        assert_eq!(probe(&Trust::load(Some(m.ca_file.path())), &t, within).await, Probe::Redfish);
        assert_eq!(probe(&Trust::load(None), &t, within).await, Probe::Untrusted(format_fingerprint(&m.fingerprint)));
        assert_eq!(
            probe(&Trust::load(None), &target(m.addr.port(), Some(m.fingerprint)), within).await,
            Probe::Redfish
        );
        assert!(m.state().log.iter().all(|l| l == "GET /redfish/v1/ none"), "a probe sends no credentials");
        let m = mock(Mode::Html).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(probe(&Trust::load(Some(m.ca_file.path())), &target(port, None), within).await, Probe::NotRedfish);
    }
}
