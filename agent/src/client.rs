//! A small HTTP/1.1 client for the agent: one kept-alive connection to the current parent,
//! optionally from a given source address (each simulated node has its own), over TLS (rustls)
//! when the head URL is `https`. Every request has a deadline; answers are size-limited.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;

/// Largest answer the agent reads.
const MAX_ANSWER: usize = 4 << 20;

/// A head's base URL, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Endpoint {
    /// Accepts `http://host[:port]`, `https://host[:port]`, `host:port` and a bare host (port
    /// 80). The host is an IPv4 address or a name.
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let s = s.trim().trim_end_matches('/');
        let (tls, rest) = if let Some(r) = s.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("http://") {
            (false, r)
        } else if s.contains("://") {
            return Err(format!("{s:?}: only http:// and https:// head URLs are supported"));
        } else {
            (false, s)
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!("{s:?} is not a head address (http://HOST[:PORT])"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| format!("{s:?}: {p:?} is not a port"))?),
            None => (rest, if tls { 443 } else { 80 }),
        };
        if host.is_empty() || port == 0 {
            return Err(format!("{s:?} is not a head address"));
        }
        let scheme = if tls { "https" } else { "http" };
        Ok(Endpoint { url: format!("{scheme}://{host}:{port}"), host: host.to_string(), port, tls })
    }

    /// The head's IPv4 address, when the host is one.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.host.parse().ok()
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// No connection (refused, unreachable, name not resolved, TLS failed).
    Connect(String),
    /// No complete answer within the deadline.
    Timeout,
    /// The connection broke or the answer was not HTTP.
    Broken(String),
    /// The head answered with an error status; `message` is its explanation.
    Status { status: u16, message: String },
    /// The answer was not what the protocol says.
    Garbage(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Connect(m) => write!(f, "cannot connect: {m}"),
            ClientError::Timeout => write!(f, "no answer in time"),
            ClientError::Broken(m) => write!(f, "connection broken: {m}"),
            ClientError::Status { status, message } => write!(f, "HTTP {status}: {message}"),
            ClientError::Garbage(m) => write!(f, "unexpected answer: {m}"),
        }
    }
}

/// Why [`HeadClient::fetch`] stopped.
#[derive(Debug)]
pub enum FetchError {
    /// The head is sending all it may at once (503 with `Retry-After`): another head, or later.
    Busy(Duration),
    Client(ClientError),
    /// The receiver refused what arrived (its error).
    Taken(String),
}

impl From<ClientError> for FetchError {
    fn from(e: ClientError) -> FetchError {
        FetchError::Client(e)
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Busy(d) => write!(f, "busy (try again in {} s)", d.as_secs()),
            FetchError::Client(e) => e.fmt(f),
            FetchError::Taken(e) => f.write_str(e),
        }
    }
}

impl ClientError {
    /// True when the head answered deliberately (a 4xx with the protocol's error body): it is
    /// alive, and asking another head would not help.
    pub fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Status { status, .. } if (400..500).contains(status))
    }
}

/// TLS settings from PEM: the CA, and the node's certificate and key from enrollment, which it
/// presents to every head (heads answer node requests only with it).
pub fn tls_config_pem(
    ca_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<tokio_rustls::rustls::ClientConfig>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| e.to_string())?;
        roots.add(c).map_err(|e| e.to_string())?;
    }
    if roots.is_empty() {
        return Err("no certificate in the CA".into());
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let b = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("the node's certificate: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("the node's key: {e}"))?;
            b.with_client_auth_cert(chain, key).map_err(|e| format!("the node's certificate: {e}"))?
        }
    };
    Ok(Arc::new(cfg))
}

/// How long one enrollment request may take. A head answers a burst of enrollments (a whole
/// rack booting) one after another, and a request given up on may still be carried out: its token
/// is then used, and the node can only enroll again at its next network boot. So the limit is
/// long, and the same for the agent at boot, as a service and in the simulator.
pub const ENROLL_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Trades a one-time enrollment token for the node's certificate with one head (over HTTPS,
/// checked against the CA of `client`).
pub async fn enroll(
    client: &mut HeadClient,
    ep: &Endpoint,
    mac: &clusterware_shared::ids::MacAddr,
    token: &str,
    limit: Duration,
) -> Result<clusterware_shared::agent::Enrolled, ClientError> {
    let body = serde_json::to_vec(&clusterware_shared::agent::Enroll { mac: *mac, token: token.to_string() })
        .map_err(|e| ClientError::Broken(e.to_string()))?;
    let path = clusterware_shared::api::path::full(&clusterware_shared::api::path::agent::enroll());
    let answer = client.request(ep, "POST", &path, Some(body), limit).await?;
    serde_json::from_slice(&answer).map_err(|e| ClientError::Garbage(format!("enrollment answer: {e}")))
}

struct Conn {
    url: String,
    sender: SendRequest<Full<Bytes>>,
}

/// One agent's connection to its heads.
pub struct HeadClient {
    bind: Option<Ipv4Addr>,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    conn: Option<Conn>,
}

impl HeadClient {
    pub fn new(bind: Option<Ipv4Addr>, tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>) -> HeadClient {
        HeadClient { bind, tls, conn: None }
    }

    /// Drops the kept connection (the next request connects again).
    pub fn reset(&mut self) {
        self.conn = None;
    }

    async fn connect(&self, ep: &Endpoint) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let addr: SocketAddr = match ep.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, ep.port),
            Err(_) => tokio::net::lookup_host((ep.host.as_str(), ep.port))
                .await
                .map_err(|e| ClientError::Connect(format!("{}: {e}", ep.host)))?
                .find(SocketAddr::is_ipv4)
                .ok_or_else(|| ClientError::Connect(format!("{} has no IPv4 address", ep.host)))?,
        };
        let sock = TcpSocket::new_v4().map_err(|e| ClientError::Connect(e.to_string()))?;
        if let Some(ip) = self.bind {
            sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
                .map_err(|e| ClientError::Connect(format!("cannot use source address {ip}: {e}")))?;
        }
        let stream = sock.connect(addr).await.map_err(|e| ClientError::Connect(format!("{addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        if ep.tls {
            let cfg = self.tls.clone().ok_or_else(|| {
                ClientError::Connect(format!("{} is https but no CA file is configured (ca_file=)", ep.url))
            })?;
            let name = rustls_pki_types::ServerName::try_from(ep.host.clone())
                .map_err(|e| ClientError::Connect(format!("{}: {e}", ep.host)))?;
            let tls = tokio_rustls::TlsConnector::from(cfg)
                .connect(name, stream)
                .await
                .map_err(|e| ClientError::Connect(format!("TLS with {}: {e}", ep.url)))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(sender)
        }
    }

    /// GET `path` from byte `offset` on (a range request when `offset` > 0) on a connection of
    /// its own, handing each piece of the body to `take` as it arrives. The head must be sending
    /// the file expected: `size` bytes in all (when given) and, when it says, the SHA-256 `sha`.
    /// No byte for `idle` ends the transfer (a head that hangs costs that long, not forever).
    /// `Ok` once the body is complete; on an error, `take` has had every byte that arrived.
    pub async fn fetch(
        &mut self,
        ep: &Endpoint,
        path: &str,
        offset: u64,
        expect: (Option<u64>, Option<&str>),
        idle: Duration,
        take: &mut (dyn FnMut(&[u8]) -> Result<(), String> + Send),
    ) -> Result<(), FetchError> {
        let mut sender = tokio::time::timeout(idle, self.connect(ep)).await.map_err(|_| ClientError::Timeout)??;
        let mut req = hyper::Request::builder()
            .method("GET")
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", ep.host, ep.port))
            .header(hyper::header::USER_AGENT, concat!("clusterware-node/", env!("CARGO_PKG_VERSION")));
        if offset > 0 {
            req = req.header(hyper::header::RANGE, format!("bytes={offset}-"));
        }
        let req = req.body(Full::new(Bytes::new())).map_err(|e| ClientError::Broken(e.to_string()))?;
        let resp = tokio::time::timeout(idle, sender.send_request(req))
            .await
            .map_err(|_| ClientError::Timeout)?
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        let status = resp.status().as_u16();
        let header = |name: hyper::header::HeaderName| {
            resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
        };
        if status == 503
            && let Some(secs) = header(hyper::header::RETRY_AFTER).and_then(|v| v.trim().parse::<u64>().ok())
        {
            return Err(FetchError::Busy(Duration::from_secs(secs.min(60))));
        }
        let wanted = if offset > 0 { 206 } else { 200 };
        if status != wanted {
            let body = tokio::time::timeout(idle, Limited::new(resp.into_body(), 64 << 10).collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let message = serde_json::from_slice::<clusterware_shared::api::ApiError>(&body)
                .map(|e| e.message)
                .unwrap_or_else(|_| format!("GET {path}: HTTP {status} where {wanted} was expected"));
            return Err(ClientError::Status { status, message }.into());
        }
        // The head must be sending the file expected, from the byte asked for.
        let length = header(hyper::header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
        if let Some(size) = expect.0 {
            if length != Some(size - offset.min(size)) {
                return Err(ClientError::Garbage(format!(
                    "{path}: {length:?} bytes from byte {offset} of a {size}-byte file"
                ))
                .into());
            }
            if offset > 0
                && header(hyper::header::CONTENT_RANGE).as_deref()
                    != Some(&format!("bytes {offset}-{}/{size}", size - 1))
            {
                return Err(ClientError::Garbage(format!("{path}: not the range asked for")).into());
            }
        }
        if let (Some(sha), Some(theirs)) =
            (expect.1, header(hyper::header::HeaderName::from_static("x-checksum-sha256")))
            && !theirs.eq_ignore_ascii_case(sha)
        {
            return Err(ClientError::Garbage(format!("{path}: the head has another file (SHA-256 {theirs})")).into());
        }
        let mut body = resp.into_body();
        loop {
            match tokio::time::timeout(idle, body.frame()).await {
                Err(_) => return Err(ClientError::Timeout.into()),
                Ok(None) => return Ok(()),
                Ok(Some(Err(e))) => return Err(ClientError::Broken(e.to_string()).into()),
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        take(&data).map_err(FetchError::Taken)?;
                    }
                }
            }
        }
    }

    /// One request; the whole exchange (connecting included) must end within `limit`.
    pub async fn request(
        &mut self,
        ep: &Endpoint,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<Bytes, ClientError> {
        let deadline = tokio::time::Instant::now() + limit;
        let kept = matches!(&self.conn, Some(c) if c.url == ep.url && !c.sender.is_closed());
        let again = if kept { body.clone() } else { None };
        let first = tokio::time::timeout_at(deadline, self.exchange(ep, method, path, body)).await;
        // A kept connection the head closed as we sent (heads close connections idle for 20 s,
        // and a node may push less often): once more on a new one, within the same limit.
        let result = match first {
            Ok(Err(ClientError::Broken(_))) if kept => {
                self.conn = None;
                tokio::time::timeout_at(deadline, self.exchange(ep, method, path, again)).await
            }
            r => r,
        };
        match result {
            Ok(Ok(b)) => Ok(b),
            Ok(Err(e)) => {
                if !e.is_refusal() {
                    self.conn = None;
                }
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                Err(ClientError::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        ep: &Endpoint,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        let reuse = matches!(&self.conn, Some(c) if c.url == ep.url && !c.sender.is_closed());
        if !reuse {
            self.conn = None;
            let sender = self.connect(ep).await?;
            self.conn = Some(Conn { url: ep.url.clone(), sender });
        }
        let conn = self.conn.as_mut().expect("connected above");
        conn.sender.ready().await.map_err(|e| ClientError::Broken(e.to_string()))?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, format!("{}:{}", ep.host, ep.port))
            .header(hyper::header::USER_AGENT, concat!("clusterware-node/", env!("CARGO_PKG_VERSION")));
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Broken(e.to_string()))?;
        let resp = conn.sender.send_request(req).await.map_err(|e| ClientError::Broken(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| ClientError::Broken(format!("reading the answer: {e}")))?
            .to_bytes();
        if (200..300).contains(&status) {
            return Ok(body);
        }
        // The protocol's error body; anything else is garbage.
        match serde_json::from_slice::<clusterware_shared::api::ApiError>(&body) {
            Ok(e) => Err(ClientError::Status { status, message: e.message }),
            Err(_) if (400..500).contains(&status) => {
                Err(ClientError::Garbage(format!("HTTP {status} without the protocol's error body")))
            }
            Err(_) => Err(ClientError::Status {
                status,
                message: String::from_utf8_lossy(&body[..body.len().min(200)]).into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("10.0.0.1").unwrap();
        assert_eq!((e.url.as_str(), e.port, e.tls), ("http://10.0.0.1:80", 80, false));
        assert_eq!(Endpoint::parse("http://10.0.0.1:8080/").unwrap().url, "http://10.0.0.1:8080");
        assert_eq!(Endpoint::parse("https://head1").unwrap().url, "https://head1:443");
        assert_eq!(Endpoint::parse("head1:81").unwrap().ip(), None);
        for bad in ["", "ftp://x", "http://", "http://a:b", "http://a:0", "http://a/b", "a b"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod kept_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The head closes a kept connection just as the next request goes out (its idle timeout):
    /// the request is made again on a new connection and succeeds.
    #[tokio::test]
    async fn a_kept_connection_closed_by_the_head_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let n = conns.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let first = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let _ = s.read(&mut buf).await;
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
                    if first {
                        // The second request on this connection is read, then the connection
                        // is closed without an answer.
                        let _ = s.read(&mut buf).await;
                    } else {
                        while s.read(&mut buf).await.is_ok_and(|n| n > 0) {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
                        }
                    }
                });
            }
        });
        let ep = Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let mut c = HeadClient::new(None, None);
        for _ in 0..3 {
            let body = c.request(&ep, "POST", "/x", Some(b"{}".to_vec()), Duration::from_secs(5)).await.unwrap();
            assert_eq!(&body[..], b"{}");
        }
        assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 2, "one new connection, kept after");
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An https head URL goes through rustls with the configured CA; a wrong CA is refused.
    #[tokio::test]
    async fn https_with_configured_ca() {
        let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert.pem()).unwrap();
        let cert = rustls_pki_types::CertificateDer::from(ca.cert.der().to_vec());
        let key = rustls_pki_types::PrivateKeyDer::try_from(ca.key_pair.serialize_der()).unwrap();
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let server = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else { return };
                    let mut buf = vec![0u8; 4096];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").await;
                    let _ = tls.flush().await;
                });
            }
        });
        let ep = Endpoint::parse(&format!("https://127.0.0.1:{port}")).unwrap();
        let mut c = HeadClient::new(None, Some(tls_config_pem(&std::fs::read(&ca_path).unwrap(), None).unwrap()));
        let health = clusterware_shared::api::path::full(clusterware_shared::api::path::HEALTH);
        let body = c.request(&ep, "GET", &health, None, Duration::from_secs(5)).await.unwrap();
        assert_eq!(&body[..], b"{}");
        // Another CA: the handshake fails, clearly.
        let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let other_path = dir.path().join("other.pem");
        std::fs::write(&other_path, other.cert.pem()).unwrap();
        let mut c = HeadClient::new(None, Some(tls_config_pem(&std::fs::read(&other_path).unwrap(), None).unwrap()));
        let e = c.request(&ep, "GET", "/", None, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(e, ClientError::Connect(ref m) if m.contains("TLS")), "{e}");
        // No CA configured for an https head.
        let mut c = HeadClient::new(None, None);
        let e = c.request(&ep, "GET", "/", None, Duration::from_secs(5)).await.unwrap_err();
        assert!(e.to_string().contains("no CA file"), "{e}");
        assert!(tls_config_pem(b"not a certificate", None).is_err());
    }
}
