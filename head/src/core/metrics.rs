//! Prometheus metrics: one `prometheus-client` registry for the whole head process, typed
//! families that the capabilities record into on their real code paths, and `GET /metrics`
//! (HTTPS, admin credential) that encodes it in the OpenMetrics text format.
//!
//! Every family is named `clusterware_…`. Labels are small fixed sets (message types,
//! outcomes, database operations, node states) or values bounded by the cluster itself (head
//! names, the API's route templates, HTTP status codes): never a raw URL path, a MAC, or
//! anything else a client sends, so no request can grow the registry.
//!
//! The registry is a process-wide static ([`on`]), not a field of [`crate::core::Ctx`]: the
//! hot paths that record (the DHCP and TFTP loops, the database wrapper, the HTTP middleware,
//! the agents' pushes) are reached from places that have no `Ctx` (the `Database` is opened
//! before there is one), and counters must outlive a restart in place (SIGHUP), which builds a
//! new `Ctx`. What depends on a running head's state (nodes by state and parent, heads alive,
//! quorum, failover, unservable files) is computed at scrape time by hooks the capabilities
//! hand to [`Ctx::on_scrape`](crate::core::Ctx::on_scrape), so they go with each start.
//!
//! `metrics.enabled = no` turns recording off ([`set_enabled`]): [`on`] answers `None`, every
//! recording site is one relaxed atomic load and a branch, and `/metrics` answers 404.

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use clusterware_shared::api::ErrorKind;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

/// Where Prometheus scrapes (outside `/api/v1`, where Prometheus looks by default).
pub const PATH: &str = "/metrics";

/// The prefix of every family.
pub const PREFIX: &str = "clusterware";

/// One fixed label.
type L1 = [(&'static str, &'static str); 1];
/// Two fixed labels.
type L2 = [(&'static str, &'static str); 2];
/// Labels with values bounded by the cluster (head names, route templates, status codes).
type Owned = Vec<(&'static str, String)>;

/// The API route of a request that matched none.
pub const UNMATCHED: &str = "unmatched";

/// How a TFTP request ended.
pub const TFTP_OUTCOMES: [&str; 3] = ["completed", "failed", "refused"];
/// The database operations timed at the `Database` boundary.
pub const DB_OPS: [&str; 10] = [
    "txn",
    "range",
    "lease_grant",
    "lease_keepalive",
    "lease_revoke",
    "watch",
    "compact",
    "members",
    "member_change",
    "leader",
];
/// How an automatic-failover check ended when it did something worth counting.
pub const FAILOVER_EVENTS: [&str; 3] = ["ejected", "eject_failed", "several_down"];

/// Buckets for handling times of fast in-memory work (a status push): 10 µs to 1 s.
const FAST: [f64; 14] =
    [0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.25, 1.0];
/// Buckets for database calls: 100 µs to 10 s (every call has a 5 s deadline).
const DB: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 10.0];

/// Every family the head exports (see the module's documentation).
pub struct Metrics {
    registry: Registry,
    pub head_info: Family<Owned, Gauge>,
    pub dhcp_messages: Family<L2, Counter>,
    pub tftp_transfers: Family<L1, Counter>,
    pub tftp_bytes: Counter,
    pub file_requests: Family<L1, Counter>,
    pub file_bytes: Counter,
    pub file_transfers: Gauge,
    pub file_verifications: Family<L1, Counter>,
    pub file_quarantines: Counter,
    pub peer_downloads: Family<L1, Counter>,
    pub files_unservable: Gauge,
    pub files_under_minimum: Gauge,
    pub status_pushes: Family<L1, Counter>,
    pub status_push_seconds: Histogram,
    pub long_polls_open: Gauge,
    pub nodes: Family<Owned, Gauge>,
    pub heads: Family<L1, Gauge>,
    pub rebalance_moves: Counter,
    pub failover_events: Family<L1, Counter>,
    pub failover_enabled: Gauge,
    pub failover_armed: Gauge,
    pub database_quorum_ok: Gauge,
    pub db_seconds: Family<L1, Histogram, fn() -> Histogram>,
    pub db_errors: Family<L1, Counter>,
    pub api_requests: Family<Owned, Counter>,
}

static ENABLED: AtomicBool = AtomicBool::new(true);
static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The metrics, when they are on.
#[inline]
pub fn on() -> Option<&'static Metrics> {
    if ENABLED.load(Ordering::Relaxed) { Some(&METRICS) } else { None }
}

/// Turns recording on or off (`metrics.enabled`), for the whole process.
pub fn set_enabled(yes: bool) {
    ENABLED.store(yes, Ordering::Relaxed);
}

/// Whether metrics are recorded.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn db_histogram() -> Histogram {
    Histogram::new(DB)
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix(PREFIX);
        let m = Metrics {
            registry: Registry::default(),
            head_info: Family::default(),
            dhcp_messages: Family::default(),
            tftp_transfers: Family::default(),
            tftp_bytes: Counter::default(),
            file_requests: Family::default(),
            file_bytes: Counter::default(),
            file_transfers: Gauge::default(),
            file_verifications: Family::default(),
            file_quarantines: Counter::default(),
            peer_downloads: Family::default(),
            files_unservable: Gauge::default(),
            files_under_minimum: Gauge::default(),
            status_pushes: Family::default(),
            status_push_seconds: Histogram::new(FAST),
            long_polls_open: Gauge::default(),
            nodes: Family::default(),
            heads: Family::default(),
            rebalance_moves: Counter::default(),
            failover_events: Family::default(),
            failover_enabled: Gauge::default(),
            failover_armed: Gauge::default(),
            database_quorum_ok: Gauge::default(),
            db_seconds: Family::new_with_constructor(db_histogram as fn() -> Histogram),
            db_errors: Family::default(),
            api_requests: Family::default(),
        };
        r.register("head_info", "This head: its name and version (always 1)", m.head_info.clone());
        r.register(
            "dhcp_messages",
            "DHCP messages received, by message type and what became of them",
            m.dhcp_messages.clone(),
        );
        r.register("tftp_transfers", "TFTP read requests, by how they ended", m.tftp_transfers.clone());
        r.register(
            "tftp_sent_bytes",
            "Bytes of file data sent over TFTP (resent blocks included)",
            m.tftp_bytes.clone(),
        );
        r.register(
            "file_requests",
            "Boot file contents asked for (kind: full or range request served, or busy: refused past local_files.max_transfers)",
            m.file_requests.clone(),
        );
        r.register(
            "file_transfers",
            "Root images being sent to nodes at the last scrape (local_files.max_transfers bounds them)",
            m.file_transfers.clone(),
        );
        r.register("file_sent_bytes", "Bytes of boot file contents sent", m.file_bytes.clone());
        r.register(
            "file_verifications",
            "Local copies hashed against their record (result: ok or bad)",
            m.file_verifications.clone(),
        );
        r.register(
            "file_quarantines",
            "Local copies that did not match their record and were renamed .old.NN",
            m.file_quarantines.clone(),
        );
        r.register("peer_downloads", "Boot files downloaded from another head, by result", m.peer_downloads.clone());
        r.register(
            "files_unservable",
            "Boot files that no head in the cluster holds a verified copy of (at scrape time)",
            m.files_unservable.clone(),
        );
        r.register(
            "files_under_minimum",
            "Boot files with fewer verified copies than local_files.min_copies asks (at scrape time)",
            m.files_under_minimum.clone(),
        );
        r.register("status_pushes", "Status pushes from node agents, by outcome", m.status_pushes.clone());
        r.register(
            "status_push_duration_seconds",
            "Time this head took to absorb a status push (its handler, not the network)",
            m.status_push_seconds.clone(),
        );
        r.register("long_polls_open", "Agents' long polls open on this head now", m.long_polls_open.clone());
        r.register(
            "nodes",
            "Nodes by state and parent head as this head sees the cluster (parent empty for none; at scrape time)",
            m.nodes.clone(),
        );
        r.register("heads", "Heads in the cluster by liveness (alive or down; at scrape time)", m.heads.clone());
        r.register("rebalance_moves", "Nodes this head's rebalancing rounds moved", m.rebalance_moves.clone());
        r.register(
            "failover_events",
            "Automatic failover acting (ejected, eject_failed) or declining because several heads are down",
            m.failover_events.clone(),
        );
        r.register(
            "failover_enabled",
            "Whether automatic failover is enabled (at scrape time)",
            m.failover_enabled.clone(),
        );
        r.register(
            "failover_armed",
            "Whether automatic failover is armed; 0 after it ejected a head, until managedb failover reset",
            m.failover_armed.clone(),
        );
        r.register(
            "database_quorum_ok",
            "Whether this head's cluster database answered a read at scrape time (1) or not (0: no quorum)",
            m.database_quorum_ok.clone(),
        );
        r.register(
            "db_request_duration_seconds",
            "Cluster database calls (etcd or the embedded store) by operation",
            m.db_seconds.clone(),
        );
        r.register("db_request_errors", "Cluster database calls that failed, by operation", m.db_errors.clone());
        r.register(
            "api_requests",
            "HTTP requests answered, by route template, method and status",
            m.api_requests.clone(),
        );
        // Every fixed label value from the start, so that rates and alerts see zeros rather
        // than absent series.
        for (t, o) in [
            ("discover", "offered"),
            ("request", "acked"),
            ("request", "nak"),
            ("discover", "ignored_unknown"),
            ("request", "not_for_us"),
            ("malformed", "malformed"),
        ] {
            let _ = m.dhcp_messages.get_or_create(&[("type", t), ("outcome", o)]);
        }
        for o in TFTP_OUTCOMES {
            let _ = m.tftp_transfers.get_or_create(&[("outcome", o)]);
        }
        for k in ["full", "range", "busy"] {
            let _ = m.file_requests.get_or_create(&[("kind", k)]);
        }
        for x in ["ok", "bad"] {
            let _ = m.file_verifications.get_or_create(&[("result", x)]);
        }
        for x in ["ok", "failed"] {
            let _ = m.peer_downloads.get_or_create(&[("result", x)]);
        }
        for x in ["ok", "rejected"] {
            let _ = m.status_pushes.get_or_create(&[("outcome", x)]);
        }
        for x in FAILOVER_EVENTS {
            let _ = m.failover_events.get_or_create(&[("event", x)]);
        }
        for op in DB_OPS {
            let _ = m.db_seconds.get_or_create(&[("op", op)]);
            let _ = m.db_errors.get_or_create(&[("op", op)]);
        }
        m.database_quorum_ok.set(1);
        Metrics { registry: r, ..m }
    }

    /// The registry in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 << 10);
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// One DHCP message: its type (discover, request, inform, release, decline, other, none,
    /// malformed) and outcome (offered, acked, nak, ignored_unknown, registering_unknown,
    /// not_for_us, malformed).
    #[inline]
    pub fn dhcp(&self, kind: &'static str, outcome: &'static str) {
        self.dhcp_messages.get_or_create(&[("type", kind), ("outcome", outcome)]).inc();
    }

    /// Sets this head's info series (one: an earlier start's name is dropped).
    pub fn set_head(&self, name: &str) {
        self.head_info.clear();
        self.head_info
            .get_or_create(&vec![("name", name.to_string()), ("version", clusterware_shared::VERSION.to_string())])
            .set(1);
    }

    /// Times one database call of `op`.
    #[inline]
    pub fn db_call<T, E>(&self, op: &'static str, started: Instant, r: &Result<T, E>) {
        self.db_seconds.get_or_create(&[("op", op)]).observe(started.elapsed().as_secs_f64());
        if r.is_err() {
            self.db_errors.get_or_create(&[("op", op)]).inc();
        }
    }
}

/// Records a database call when metrics are on: `timed(op, fut)`.
#[inline]
pub async fn timed<T, E>(op: &'static str, f: impl Future<Output = Result<T, E>>) -> Result<T, E> {
    match on() {
        None => f.await,
        Some(m) => {
            let t = Instant::now();
            let r = f.await;
            m.db_call(op, t, &r);
            r
        }
    }
}

/// A long poll held open, counted in `clusterware_long_polls_open` while it lives.
pub struct OpenPoll(Option<&'static Metrics>);

impl OpenPoll {
    pub fn start() -> OpenPoll {
        let m = on();
        if let Some(m) = m {
            m.long_polls_open.inc();
        }
        OpenPoll(m)
    }
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        if let Some(m) = self.0 {
            m.long_polls_open.dec();
        }
    }
}

/// The method label: the standard methods, everything else as `other` (a client chooses it).
fn method_label(m: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// The middleware that counts API requests by route template (axum's [`MatchedPath`], so
/// `/api/v1/nodes/{id}` and never the id itself; [`UNMATCHED`] for paths no route has),
/// method and status.
pub async fn count_requests(req: Request, next: Next) -> Response {
    let Some(m) = on() else { return next.run(req).await };
    let route = req.extensions().get::<MatchedPath>().map_or(UNMATCHED, |p| p.as_str()).to_string();
    let method = method_label(req.method());
    let resp = next.run(req).await;
    m.api_requests
        .get_or_create(&vec![
            ("route", route),
            ("method", method.to_string()),
            ("status", resp.status().as_u16().to_string()),
        ])
        .inc();
    resp
}

/// A scrape-time hook: sets gauges from a capability's state (it may ask the database).
pub type Hook = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How long one hook may take before the scrape goes on without it (the database's deadline).
const HOOK_LIMIT: Duration = Duration::from_secs(5);

struct Scrape {
    hooks: Vec<Hook>,
    /// One scrape at a time: hooks clear and refill families.
    busy: tokio::sync::Mutex<()>,
}

/// `GET /metrics`, to be put behind the admin credential: the registry after the hooks ran,
/// or 404 saying how to turn metrics on.
pub fn route(hooks: Vec<Hook>) -> Router {
    let state = Arc::new(Scrape { hooks, busy: tokio::sync::Mutex::new(()) });
    Router::new().route(PATH, axum::routing::get(scrape)).with_state(state)
}

async fn scrape(State(s): State<Arc<Scrape>>) -> Response {
    let Some(m) = on() else {
        return crate::core::http::ApiFailure::new(
            ErrorKind::NotFound,
            "metrics are off on this head: set metrics.enabled = yes in base.ini and restart the head \
             (systemctl restart clusterware, or SIGHUP)",
        )
        .into_response();
    };
    let _one = s.busy.lock().await;
    futures::future::join_all(s.hooks.iter().map(|h| tokio::time::timeout(HOOK_LIMIT, h()))).await;
    let body = m.encode();
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], body)
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names of an exposition, as Prometheus stores them (counters with `_total`,
    /// histograms with `_bucket`, `_sum`, `_count`).
    fn series_names(text: &str) -> std::collections::BTreeSet<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.split(['{', ' ']).next())
            .map(str::to_string)
            .collect()
    }

    /// Every family is encoded with its prefix, and with a series from the start where its
    /// labels are fixed.
    #[test]
    fn families_are_prefixed_and_present() {
        let m = &*METRICS;
        m.set_head("h1");
        m.dhcp("discover", "offered");
        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        let names = series_names(&text);
        assert!(names.iter().all(|n| n.starts_with("clusterware_")), "{names:?}");
        for n in [
            "clusterware_head_info",
            "clusterware_dhcp_messages_total",
            "clusterware_tftp_transfers_total",
            "clusterware_db_request_duration_seconds_bucket",
            "clusterware_db_request_errors_total",
            "clusterware_status_push_duration_seconds_count",
            "clusterware_long_polls_open",
            "clusterware_database_quorum_ok",
        ] {
            assert!(names.contains(n), "{n} missing from {names:?}");
        }
        assert!(text.contains(r#"clusterware_dhcp_messages_total{type="discover",outcome="offered"} 1"#), "{text}");
        assert!(text.contains(r#"clusterware_head_info{name="h1",version="#), "{text}");
    }

    #[test]
    fn methods_are_a_fixed_set() {
        assert_eq!(method_label(&axum::http::Method::GET), "GET");
        assert_eq!(method_label(&axum::http::Method::from_bytes(b"BREW").unwrap()), "other");
    }
}
