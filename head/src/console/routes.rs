//! The console's routes: the page and its assets outside `/api/v1` (no credential: they carry
//! no data), `/` pointing to the page, and the live-update stream under `/api/v1` (admin).

use crate::console::{COALESCE, Console, KEEP_ALIVE, MAX_STREAMS};
use crate::core::http::{Routes, Verdict};
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use clusterware_shared::api::{ApiError, ErrorKind, path};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::Instant;

/// Where the page is.
pub const PAGE: &str = "/console/";

const INDEX_HTML: &str = include_str!("index.html");
const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// What the page allows itself: its own script, style and API, nothing inline, no framing.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; \
                       frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The routes under `/api/v1`.
pub fn routes(console: Arc<Console>) -> Routes {
    Routes { admin: Router::new().route(path::CONSOLE_UPDATES, get(updates)).with_state(console), open: Router::new() }
}

/// The page, its assets, and `/` pointing to the page.
pub fn site() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to(PAGE) }))
        .route("/console", get(|| async { Redirect::to(PAGE) }))
        .route(PAGE, get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }))
}

/// The security headers every answer of the console carries.
fn secure(r: &mut Response) {
    let h = r.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    secure(&mut r);
    r
}

/// `GET /api/v1/console/updates`: the live-update stream (see the module's documentation).
async fn updates(
    State(c): State<Arc<Console>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
) -> Response {
    let Ok(permit) = c.streams.clone().try_acquire_owned() else {
        // Answered here rather than as an `ApiFailure`, whose 503s are logged one by one.
        c.complaints.complain(format!("console streams {}", peer.ip()), || {
            tracing::warn!(%peer, "console update stream refused: {MAX_STREAMS} are open (logged once a minute per address)")
        });
        let e = ApiError {
            kind: ErrorKind::Unavailable,
            message: format!(
                "this head has {MAX_STREAMS} console update streams open, its limit; close console tabs you do not use, \
                 or open the console on another head"
            ),
        };
        return (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], axum::Json(e)).into_response();
    };
    let sources = vec![
        ("heads", c.hub.view.heads.changes()),
        ("heads", c.hub.view.alive.changes()),
        ("nodes", c.hub.nodes.changes()),
        ("status", c.hub.status_changes()),
    ];
    let head = c.hub.view.me.name.clone();
    let mut auth = axum::http::HeaderMap::new();
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        auth.insert(header::AUTHORIZATION, v.clone());
    }
    let c2 = c.clone();
    let allowed: Allowed = Box::new(move || c2.creds.judge(Some(&c2.tokens), &auth, Some(peer.ip())) == Verdict::Admin);
    let body = Body::from_stream(stream(head, sources, c.stop.clone(), permit, allowed));
    let mut r = (
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response();
    secure(&mut r);
    r
}

/// Why a stream ended, or what it sends next.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Event(Vec<&'static str>),
    KeepAlive,
    End,
}

/// One table a stream follows: its topic, its change counter, and the count last reported.
struct Source {
    topic: &'static str,
    rx: watch::Receiver<u64>,
    seen: u64,
}

/// Whether the stream's credential is still accepted.
type Allowed = Box<dyn Fn() -> bool + Send + Sync>;

/// The state of one update stream.
struct Updates {
    sources: Vec<Source>,
    stop: watch::Receiver<bool>,
    last: Instant,
    _permit: Option<OwnedSemaphorePermit>,
    allowed: Allowed,
}

impl Updates {
    fn new(
        sources: Vec<(&'static str, watch::Receiver<u64>)>,
        stop: watch::Receiver<bool>,
        permit: Option<OwnedSemaphorePermit>,
        allowed: Allowed,
    ) -> Updates {
        let sources = sources
            .into_iter()
            .map(|(topic, mut rx)| {
                let seen = *rx.borrow_and_update();
                Source { topic, rx, seen }
            })
            .collect();
        Updates { sources, stop, last: Instant::now(), _permit: permit, allowed }
    }

    /// Waits for the next change (coalesced), keep-alive or end (the head stops, or the
    /// credential is no longer accepted).
    async fn next(&mut self) -> Next {
        let n = self.wait().await;
        if n != Next::End && !(self.allowed)() {
            return Next::End;
        }
        n
    }

    async fn wait(&mut self) -> Next {
        // At most one event per COALESCE: wait out the rest of it first (changes meanwhile are
        // kept by the receivers and sent together).
        tokio::select! {
            () = tokio::time::sleep_until(self.last + COALESCE) => {}
            _ = self.stop.wait_for(|s| *s) => return Next::End,
        }
        loop {
            let mut topics: Vec<&'static str> = Vec::new();
            for s in &mut self.sources {
                let now = *s.rx.borrow_and_update();
                if now != s.seen {
                    s.seen = now;
                    if !topics.contains(&s.topic) {
                        topics.push(s.topic);
                    }
                }
            }
            if !topics.is_empty() {
                self.last = Instant::now();
                return Next::Event(topics);
            }
            let any_change = async {
                let waits = self.sources.iter_mut().map(|s| Box::pin(s.rx.changed()));
                futures::future::select_all(waits).await.0
            };
            tokio::select! {
                r = any_change => if r.is_err() {
                    // A table went away: the head is stopping.
                    return Next::End;
                },
                () = tokio::time::sleep(KEEP_ALIVE) => return Next::KeepAlive,
                _ = self.stop.wait_for(|s| *s) => return Next::End,
            }
        }
    }
}

/// The bytes of one event naming what changed.
pub fn event(topics: &[&str]) -> String {
    format!("event: change\ndata: {}\n\n", serde_json::to_string(topics).unwrap_or_default())
}

/// The stream: a `ready` event, then change events and keep-alive comments until the head stops.
fn stream(
    head: String,
    sources: Vec<(&'static str, watch::Receiver<u64>)>,
    stop: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    allowed: Allowed,
) -> impl futures::Stream<Item = Result<String, std::convert::Infallible>> {
    let hello = format!("retry: 2000\nevent: ready\ndata: {}\n\n", serde_json::json!({ "head": head }));
    let st = Updates::new(sources, stop, Some(permit), allowed);
    futures::stream::unfold((Some(hello), st), |(first, mut st)| async move {
        if let Some(h) = first {
            return Some((Ok(h), (None, st)));
        }
        let out = match st.next().await {
            Next::End => return None,
            Next::KeepAlive => ": keep-alive\n\n".to_string(),
            Next::Event(t) => event(&t),
        };
        Some((Ok(out), (None, st)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn changes_are_coalesced_named_and_end_with_the_head() {
        let (heads, alive, nodes) = (watch::channel(0u64).0, watch::channel(0u64).0, watch::channel(0u64).0);
        let (stop_tx, stop) = watch::channel(false);
        let mut u = Updates::new(
            vec![("heads", heads.subscribe()), ("heads", alive.subscribe()), ("nodes", nodes.subscribe())],
            stop,
            None,
            Box::new(|| true),
        );
        // Nothing changes: a keep-alive after KEEP_ALIVE.
        assert_eq!(u.next().await, Next::KeepAlive);
        // A burst of changes to both heads sources and the nodes: one event naming each once.
        for i in 1..=50 {
            heads.send_replace(i);
            alive.send_replace(i);
            nodes.send_replace(i);
        }
        let t0 = Instant::now();
        assert_eq!(u.next().await, Next::Event(vec!["heads", "nodes"]));
        // The next change waits out the coalescing interval.
        nodes.send_replace(51);
        assert_eq!(u.next().await, Next::Event(vec!["nodes"]));
        assert!(Instant::now() - t0 >= COALESCE);
        // The head stops: the stream ends.
        stop_tx.send_replace(true);
        assert_eq!(u.next().await, Next::End);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_ends_when_its_credential_is_refused() {
        let nodes = watch::channel(0u64).0;
        let ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let ok2 = ok.clone();
        let allowed: Allowed = Box::new(move || ok2.load(std::sync::atomic::Ordering::SeqCst));
        let (_stop_tx, stop) = watch::channel(false);
        let mut u = Updates::new(vec![("nodes", nodes.subscribe())], stop, None, allowed);
        nodes.send_replace(1);
        assert_eq!(u.next().await, Next::Event(vec!["nodes"]));
        ok.store(false, std::sync::atomic::Ordering::SeqCst);
        nodes.send_replace(2);
        assert_eq!(u.next().await, Next::End);
    }

    #[test]
    fn events_are_server_sent_events() {
        assert_eq!(event(&["heads", "status"]), "event: change\ndata: [\"heads\",\"status\"]\n\n");
    }
}
