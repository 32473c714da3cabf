//! The head's core: what every capability builds on.
//!
//! - [`db`]: the cluster database (etcd or the embedded store) behind one API.
//! - [`schema`]: every key prefix, key builder and record.
//! - [`follow`]: in-memory copies of prefixes kept current by watches.
//! - [`heads`]: this head's record and liveness; the head list.
//! - [`view`]: the cluster as this head sees it (heads, liveness, the shared orderings).
//! - [`admission`]: slots for costly requests, a bounded line, a shared byte rate.
//! - [`complaints`]: log lines about remote parties, bounded whatever they send.
//! - [`http`]: the API server, the admin credential, the error mapping.
//! - [`tokens`]: named admin API tokens.
//! - [`events`]: the event log (admin actions, cluster events).
//! - [`openapi`]: the OpenAPI document of the API.
//! - [`tls`]: the cluster CA and this head's certificate.
//! - [`supervisor`]: the background tasks and the order they stop in.
//! - [`metrics`]: the Prometheus registry the capabilities record into, and `/metrics`.
//! - [`versions`]: the database schema's version, the check at start, the migrations.
//!
//! A capability starts from a [`Ctx`]: it takes its configuration section from `config`,
//! starts its tasks on `sup`, and hands its routes to [`Ctx::serve`]; whatever it offers other
//! capabilities (the node table, the agent hub, storage) it returns from its `start`.
pub mod admission;
pub mod complaints;
pub mod db;
pub mod error;
pub mod events;
pub mod follow;
pub mod heads;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod peers;
pub mod schema;
pub mod supervisor;
pub mod sys;
pub mod tls;
pub mod tokens;
pub mod versions;
pub mod view;

use clusterware_shared::config::Config;
use std::sync::{Arc, Mutex};

/// Seconds since the Unix epoch (0 if the clock is before it), for record timestamps.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A list for a log field, as an administrator reads it: `a,b,c`, or `(none)` when empty (not
/// Rust's `["a", "b"]`); control characters escaped ([`shown`](clusterware_shared::ids::shown)).
pub fn listed<I>(items: I) -> String
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let v: Vec<String> = items.into_iter().map(|s| clusterware_shared::ids::shown(s.as_ref()).into_owned()).collect();
    if v.is_empty() { "(none)".to_string() } else { v.join(",") }
}

/// An optional value for a log field: the value, or `(none)` (not Rust's `Some("x")`/`None`);
/// control characters escaped.
pub fn or_none(v: Option<&str>) -> std::borrow::Cow<'_, str> {
    match v {
        Some(s) => clusterware_shared::ids::shown(s),
        None => std::borrow::Cow::Borrowed("(none)"),
    }
}

/// What every capability starts from (see the module's documentation).
pub struct Ctx<'a> {
    pub db: db::Database,
    pub config: &'a Config,
    pub view: Arc<view::ClusterView>,
    pub sup: &'a supervisor::Supervisor,
    /// The heads' own credential (head-to-head calls carry it).
    pub token: String,
    /// What the admin credential check accepts besides named tokens.
    pub creds: http::Credentials,
    /// Named tokens.
    pub tokens: tokens::Tokens,
    /// The event log.
    pub events: events::EventLog,
    routes: Mutex<Vec<http::Routes>>,
    /// What `/metrics` runs before it encodes ([`Ctx::on_scrape`]).
    scrape_hooks: Mutex<Vec<metrics::Hook>>,
    /// What is served outside `/api/v1` (see [`http::router`]).
    site: Mutex<Vec<axum::Router>>,
}

impl<'a> Ctx<'a> {
    pub fn new(
        db: db::Database,
        config: &'a Config,
        view: Arc<view::ClusterView>,
        sup: &'a supervisor::Supervisor,
        creds: http::Credentials,
    ) -> Ctx<'a> {
        let tokens = tokens::Tokens::spawn(&db, sup);
        let retention = events::Retention { keep: config.events_keep, keep_secs: config.events_keep_days * 86_400 };
        let events = events::EventLog::spawn(&db, &view.me.name, retention, sup);
        metrics::set_enabled(config.metrics_enabled);
        if let Some(m) = metrics::on() {
            m.set_head(&view.me.name);
        }
        let ctx = Ctx {
            db,
            config,
            view,
            sup,
            token: creds.head.clone(),
            creds,
            tokens,
            events,
            routes: Mutex::new(Vec::new()),
            scrape_hooks: Mutex::new(Vec::new()),
            site: Mutex::new(Vec::new()),
        };
        let v = ctx.view.clone();
        ctx.on_scrape(move || {
            if let Some(m) = metrics::on() {
                let alive = v.alive.keys();
                let all = v.heads.keys();
                let up = all.iter().filter(|h| alive.contains(h)).count();
                m.heads.get_or_create(&[("state", "alive")]).set(up as i64);
                m.heads.get_or_create(&[("state", "down")]).set((all.len() - up) as i64);
            }
            std::future::ready(())
        });
        ctx
    }

    /// This head's record.
    pub fn me(&self) -> &schema::HeadRecord {
        &self.view.me
    }

    /// Adds a capability's routes to the API.
    pub fn serve(&self, routes: http::Routes) {
        self.routes.lock().unwrap_or_else(|p| p.into_inner()).push(routes);
    }

    /// Adds pages served outside `/api/v1` (no credential: they must carry no data).
    pub fn serve_site(&self, site: axum::Router) {
        self.site.lock().unwrap_or_else(|p| p.into_inner()).push(site);
    }

    /// Adds a scrape-time hook: before `/metrics` encodes, it sets the gauges that come from a
    /// capability's state (nodes by state, failover, unservable files).
    pub fn on_scrape<F, Fut>(&self, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let hook: metrics::Hook = Arc::new(move || Box::pin(f()));
        self.scrape_hooks.lock().unwrap_or_else(|p| p.into_inner()).push(hook);
    }

    /// The whole API, from every capability's routes and the named tokens', and `/metrics`.
    pub fn router(&self) -> axum::Router {
        let mut routes = std::mem::take(&mut *self.routes.lock().unwrap_or_else(|p| p.into_inner()));
        routes.push(tokens::routes(self.db.clone()));
        routes.push(events::routes(self.events.clone()));
        routes.push(openapi::routes());
        let site = std::mem::take(&mut *self.site.lock().unwrap_or_else(|p| p.into_inner()));
        let hooks = std::mem::take(&mut *self.scrape_hooks.lock().unwrap_or_else(|p| p.into_inner()));
        http::router(
            self.creds.clone(),
            Some(self.tokens.clone()),
            Some(self.events.clone()),
            &self.me().name,
            self.db.backend(),
            routes,
            metrics::route(hooks),
            site,
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_forms_are_plain() {
        assert_eq!(super::listed(["a", "b"]), "a,b");
        assert_eq!(super::listed(Vec::<String>::new()), "(none)");
        assert_eq!(super::listed(["x\ny"]), "x\\ny");
        assert_eq!(super::or_none(Some("xyzImage")), "xyzImage");
        assert_eq!(super::or_none(None), "(none)");
    }

    /// The Display forms logs use are the API's spellings.
    #[test]
    fn displayed_enums_are_spelled_as_in_json() {
        use clusterware_shared::agent::{NodeState, Phase};
        for p in [Phase::Booting, Phase::Up] {
            assert_eq!(serde_json::to_value(p).unwrap(), p.to_string());
        }
        for s in [NodeState::New, NodeState::Booting, NodeState::Up, NodeState::Down] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.to_string());
        }
        assert_eq!(super::supervisor::Stage::Flush.to_string(), "flush");
    }
}
