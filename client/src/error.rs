//! The one error of every call, and how transport failures are told apart.

use clusterware_shared::api::{ApiError, ErrorKind};
use std::time::Duration;

pub type Result<T> = std::result::Result<T, Error>;

/// How a request failed before the head could answer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// No connection: refused, no route, a name that does not resolve, …
    Connect,
    /// The connection attempt got no answer within this time.
    ConnectTimeout(Duration),
    /// Connected, but no (further) answer within this time.
    Timeout(Duration),
    /// The connection broke during the exchange (reset, closed early, unreadable answer).
    Broken,
}

/// A failed call.
#[derive(Debug)]
pub enum Error {
    /// The head could not be asked, or did not answer.
    Transport { base: String, kind: Transport, reason: String },
    /// The head refused: its HTTP status and, when it sent one, its `{kind, message}` body.
    Api { base: String, status: u16, error: Option<ApiError> },
    /// A success answer that is not what this client expects (another release of the head?).
    Decode { base: String, status: u16, reason: String },
    /// A local file or stream failed (what an upload reads, where a download writes).
    Local { what: String, source: std::io::Error },
    /// The client cannot be made (a bad URL, say).
    Setup(String),
}

impl Error {
    /// The HTTP status of an answer (refusals and undecodable answers).
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } | Error::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error kind, when the head sent its error body.
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Api { error: Some(e), .. } => Some(e.kind),
            _ => None,
        }
    }

    /// The API's error message, when the head sent its error body.
    pub fn api_message(&self) -> Option<&str> {
        match self {
            Error::Api { error: Some(e), .. } => Some(&e.message),
            _ => None,
        }
    }

    /// The transport failure, when the head did not answer.
    pub fn transport(&self) -> Option<&Transport> {
        match self {
            Error::Transport { kind, .. } => Some(kind),
            _ => None,
        }
    }

    /// Whether the request got no answer at all (nothing is known of its effect for a
    /// [`Transport::Timeout`] or [`Transport::Broken`]; a refused connection had none).
    pub fn is_transport(&self) -> bool {
        matches!(self, Error::Transport { .. })
    }

    /// What went wrong without naming the head (for messages that name it their own way).
    pub fn reason(&self) -> String {
        match self {
            Error::Transport { kind: Transport::Connect, reason, .. } => {
                format!("{reason} (is the head daemon running there, and is the address right?)")
            }
            Error::Transport { kind: Transport::ConnectTimeout(t), .. } => format!(
                "no answer to the connection attempt within {} s (is the address right, and the head up?)",
                secs(*t)
            ),
            Error::Transport { kind: Transport::Timeout(t), .. } => format!(
                "no answer within {} s (the head may be busy or waiting for its database's quorum: try again, or \
                 allow more time with --timeout)",
                secs(*t)
            ),
            Error::Transport { kind: Transport::Broken, reason, .. } => {
                format!("{reason} (try again; the head's log may tell why)")
            }
            Error::Api { error: Some(e), .. } => e.message.clone(),
            Error::Api { status, error: None, .. } => format!("HTTP {}", status_text(*status)),
            Error::Decode { reason, .. } => format!("an answer this command does not understand: {reason}"),
            Error::Local { what, source } => format!("{what}: {source}"),
            Error::Setup(m) => m.clone(),
        }
    }
}

fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 { format!("{}", s as u64) } else { format!("{s:.1}") }
}

fn status_text(status: u16) -> String {
    reqwest::StatusCode::from_u16(status).map_or_else(|_| status.to_string(), |s| s.to_string())
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // The wording of these is what the CLIs have always printed (tests match on it).
            Error::Transport { base, kind: Transport::Connect | Transport::ConnectTimeout(_), .. } => {
                write!(f, "cannot reach the head at {base}: {}", self.reason())
            }
            Error::Transport { base, kind: Transport::Timeout(_), .. } => {
                write!(f, "the head at {base} gave {}", self.reason())
            }
            Error::Transport { base, kind: Transport::Broken, .. } => {
                write!(f, "transfer from {base} broke: {}", self.reason())
            }
            // The head's own message says what is wrong and what to do.
            Error::Api { error: Some(e), .. } => f.write_str(&e.message),
            Error::Api { base, status, error: None } => {
                write!(f, "head at {base} answered HTTP {}", status_text(*status))
            }
            Error::Decode { base, .. } => write!(f, "head at {base} sent {}", self.reason()),
            Error::Local { .. } | Error::Setup(_) => f.write_str(&self.reason()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Local { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Classifies a failure of the HTTP stack. `waited` is the limit that applied, for timeouts.
pub(crate) fn from_reqwest(base: &str, e: &reqwest::Error, connect: Duration, waited: Duration) -> Error {
    let kind = if e.is_timeout() && e.is_connect() {
        Transport::ConnectTimeout(connect)
    } else if e.is_timeout() {
        Transport::Timeout(waited)
    } else if e.is_connect() {
        Transport::Connect
    } else {
        Transport::Broken
    };
    Error::Transport { base: base.to_string(), kind, reason: cause(e) }
}

/// The innermost cause of an error, in words an administrator reads (not `os error 111`).
pub(crate) fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut inner: &(dyn std::error::Error + 'static) = e;
    let mut io = None;
    loop {
        if let Some(i) = inner.downcast_ref::<std::io::Error>() {
            io = Some(i);
        }
        match inner.source() {
            Some(s) => inner = s,
            None => break,
        }
    }
    use std::io::ErrorKind as K;
    match io.map(|i| (i.kind(), i)) {
        Some((K::ConnectionRefused, _)) => "connection refused".into(),
        Some((K::ConnectionReset, _)) => "connection reset".into(),
        Some((K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof, _)) => "connection closed by the head".into(),
        Some((K::HostUnreachable, _)) => "no route to the host".into(),
        Some((K::NetworkUnreachable, _)) => "network unreachable".into(),
        Some((K::AddrNotAvailable, _)) => "address not available here".into(),
        Some((_, i)) => i.to_string(),
        None => inner.to_string(),
    }
}
