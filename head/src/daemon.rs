//! The head daemon's life: read the configuration, open the cluster database (starting this
//! head's etcd member when it runs one), register the head, start the core's cluster view and
//! each capability (one line each), serve the API, and on SIGTERM or SIGINT stop the
//! supervisor's tasks stage by stage (requests, work, the last status write, follows, the
//! liveness record last), then the etcd member.

use crate::agent_channel;
use crate::core::db::embedded::Embedded;
use crate::core::db::etcd::Etcd;
use crate::core::db::member::{MemberError, MemberHandle, MemberSpec};
use crate::core::db::{Database, DbError, Refusal};
use crate::core::heads;
use crate::core::schema::{DbMode, HeadRecord};
use crate::core::supervisor::{STAGE_LIMIT, Stage, Supervisor};
use crate::core::view::ClusterView;
use crate::core::{Ctx, http, tls};
use crate::membership::{self, Control};
use crate::registry;
use crate::storage::StorageError;
use crate::{bootcfg, netboot};
use clusterware_shared::auth::admin_token;
use clusterware_shared::config::{Config, ConfigError, DatabaseType, Membership};
use clusterware_shared::ids::validate_head_name;
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot use log directory {}: {source}", path.display())]
    LogDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("this host's name {0:?} is not a valid head name; set head.name in base.ini")]
    HeadName(String),
    #[error(transparent)]
    Member(#[from] MemberError),
    #[error("managedb recover: {0}")]
    Recover(String),
    #[error("cluster database: {0}")]
    Db(#[from] DbError),
    #[error("the cluster database did not become ready within {secs} s: {last} ({hint})")]
    DbNotReady { secs: u64, last: DbError, hint: String },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    BootNet(#[from] crate::netboot::StartError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Schema(#[from] crate::core::versions::SchemaError),
}

/// The longest a stopping head waits for its nodes to take the directive to go to another head.
const HAND_OVER_LIMIT: Duration = Duration::from_secs(5);

/// This host's name, from the kernel.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "head".into())
}

/// The address this head advertises: `head.ip`, else the host name's first non-loopback IPv4.
fn advertised_ip(cfg: &Config, name: &str) -> Ipv4Addr {
    if let Some(ip) = cfg.head_ip {
        return ip;
    }
    let found = (name, 0).to_socket_addrs().ok().and_then(|mut it| {
        it.find_map(|a| match a.ip() {
            std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
            _ => None,
        })
    });
    found.unwrap_or_else(|| {
        tracing::warn!("head.ip is not set and {} resolves to no non-loopback IPv4 address; advertising 127.0.0.1, which other heads and nodes cannot reach", clusterware_shared::ids::shown(name));
        Ipv4Addr::LOCALHOST
    })
}

/// Sets up logging to stderr and to `<logging.dir>/head_<name>.log`.
pub fn init_logging(cfg: &Config, name: &str) -> Result<tracing_appender::non_blocking::WorkerGuard, StartError> {
    use tracing_subscriber::prelude::*;
    std::fs::create_dir_all(&cfg.log_dir).map_err(|source| StartError::LogDir { path: cfg.log_dir.clone(), source })?;
    let file_name = format!("head_{name}.log");
    // Opened here first so that an unwritable directory is an error now, not a silent loss.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.log_dir.join(&file_name))
        .map_err(|source| StartError::LogDir { path: cfg.log_dir.clone(), source })?;
    let (writer, guard) = tracing_appender::non_blocking(tracing_appender::rolling::never(&cfg.log_dir, file_name));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{},etcd_client=warn,h2=warn,tower=warn,hyper=warn", cfg.log_level))
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_writer(std::io::stderr),
        )
        .with(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer))
        .init();
    Ok(guard)
}

/// Opens the database the configuration names; returns it with the etcd member, if any.
async fn open_database(
    cfg: &Config,
    name: &str,
    ip: Ipv4Addr,
    ctl: &Control,
) -> Result<(Database, DbMode, Option<MemberHandle>), StartError> {
    match cfg.database_type {
        DatabaseType::Embedded => {
            tracing::info!(path = %cfg.database_path.display(), "opening embedded database");
            Ok((Database::Embedded(Embedded::open(&cfg.database_path)?), DbMode::Embedded, None))
        }
        DatabaseType::Etcd if !cfg.etcd_endpoints.is_empty() => {
            tracing::info!(endpoints = %crate::core::listed(&cfg.etcd_endpoints), "connecting to external etcd");
            let hint = format!("check that etcd answers at {}", cfg.etcd_endpoints.join(", "));
            let db = wait_for_etcd(&cfg.etcd_endpoints, cfg, hint, None).await?;
            Ok((db, DbMode::EtcdExternal, None))
        }
        DatabaseType::Etcd => {
            let peer_url = format!("https://{ip}:{}", cfg.etcd_peer_port);
            let (data_dir, initial_cluster, initial_state, token) = if cfg.recover {
                let r = membership::restore_alone(cfg, ctl).map_err(|e| StartError::Recover(e.to_string()))?;
                (r.0, r.1, "new".to_string(), r.2)
            } else {
                (
                    cfg.etcd_data_dir.clone(),
                    cfg.etcd_initial_cluster.clone().unwrap_or_else(|| format!("{name}={peer_url}")),
                    cfg.etcd_initial_cluster_state.clone(),
                    cfg.etcd_cluster_token.clone(),
                )
            };
            let spec = MemberSpec {
                binary: cfg.etcd_binary.clone(),
                name: name.to_string(),
                data_dir,
                initial_cluster,
                peer_url,
                initial_state,
                token,
                max_txn_ops: cfg.max_txn_ops,
                log_file: cfg.log_dir.join(format!("etcd_{name}.log")),
                tls_dir: cfg.tls_dir.canonicalize().unwrap_or_else(|_| cfg.tls_dir.clone()),
            };
            tracing::info!(data_dir = %spec.data_dir.display(), peer = %spec.peer_url, client = %spec.client_url(), "starting etcd member");
            let hint = format!("the member's output is in {}", spec.log_file.display());
            let member = MemberHandle::start(spec)?;
            let db = wait_for_etcd(&[member.client_url()], cfg, hint, Some(ctl)).await?;
            Ok((db, DbMode::EtcdMember, Some(member)))
        }
    }
}

/// How often a learner asks the other heads to promote it, and looks whether it was.
const LEARNER_ASK: Duration = Duration::from_millis(20);
const LEARNER_POLL: Duration = Duration::from_millis(10);

/// Waits until the database answers. With this head's own member (`ctl`), a learner (a head
/// that is joining) asks the other heads to promote it, which they do once it has caught up;
/// it then keeps waiting as long as that takes. A member that cannot reach a quorum asks the other
/// heads whether it was ejected meanwhile.
async fn wait_for_etcd(
    endpoints: &[String],
    cfg: &Config,
    hint: String,
    ctl: Option<&Control>,
) -> Result<Database, StartError> {
    let mut start = Instant::now();
    let limit = Duration::from_secs(cfg.db_ready_timeout_secs);
    let mut last_report = Instant::now();
    let mut last_ask = Instant::now();
    let peers = ctl.map(|c| c.known_peers(&cfg.peers)).unwrap_or_default();
    loop {
        let connected = match Etcd::connect(endpoints, cfg.max_txn_ops).await {
            // A learner may answer some reads: this head serves only once it votes.
            Ok(e) if ctl.is_some() => match e.members().await {
                // By peer URL: a new member publishes its name only some time after it starts.
                Ok(ms) if ms.iter().any(|m| m.is_learner && ctl.is_some_and(|c| c.is_me(m))) => Err(DbError::Refused {
                    why: Refusal::Learner,
                    message: "this head's etcd member is a learner".into(),
                }),
                Ok(_) => Ok(e),
                Err(err) => Err(err),
            },
            r => r,
        };
        match connected {
            Ok(e) => {
                tracing::info!(after_ms = start.elapsed().as_millis() as u64, "cluster database ready");
                return Ok(Database::Etcd(e));
            }
            Err(DbError::Refused { why: Refusal::Learner, .. }) if ctl.is_some() => {
                // Catching up with 10,000 nodes takes a while: a learner is making progress.
                // etcd promotes it as soon as it has caught up, so it asks often (a refusal
                // costs the peer one member list), and looks again at once when promoted.
                start = Instant::now();
                let mut promoted = false;
                if last_ask.elapsed() >= LEARNER_ASK {
                    if let Some(c) = ctl {
                        promoted = c.request_promotion(&peers).await;
                    }
                    last_ask = Instant::now();
                }
                if !promoted {
                    tokio::time::sleep(LEARNER_POLL).await;
                }
            }
            Err(last) if start.elapsed() > limit => {
                return Err(StartError::DbNotReady { secs: cfg.db_ready_timeout_secs, last, hint });
            }
            Err(e) => {
                if let Some(c) = ctl.filter(|_| last_ask.elapsed() > Duration::from_secs(3) && !peers.is_empty()) {
                    last_ask = Instant::now();
                    if let Some(by) = c.ejected_per_peers(&peers).await {
                        c.detach(
                            clusterware_shared::config::Membership::Ejected,
                            &format!("this head was ejected from its cluster (as {by} reports)"),
                        );
                    }
                }
                if last_report.elapsed() > Duration::from_secs(5) {
                    tracing::info!(error = %e, "waiting for the cluster database (an etcd cluster needs a quorum of its members)");
                    last_report = Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Root's public keys from the configured files; unreadable or malformed ones are logged.
fn read_ssh_keys(files: &[PathBuf]) -> Vec<String> {
    let mut keys = Vec::new();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
                    match clusterware_shared::agent::validate_ssh_key(line) {
                        Ok(k) => keys.push(k),
                        Err(e) => {
                            tracing::warn!(path = %f.display(), error = %e, "skipping a line that is not an SSH public key")
                        }
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %f.display(), error = %e, "cannot read SSH public key"),
        }
    }
    keys
}

/// How the daemon ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// SIGTERM or SIGINT: exit.
    Stopped,
    /// SIGHUP, or a membership change: start again with the configuration as it is now.
    Restart,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, StartError> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(StartError::Signals)?,
            int: signal(SignalKind::interrupt()).map_err(StartError::Signals)?,
            hup: signal(SignalKind::hangup()).map_err(StartError::Signals)?,
        })
    }

    /// The next signal or restart request.
    async fn next(&mut self, ctl: &Control) -> Exit {
        tokio::select! {
            _ = self.term.recv() => { tracing::info!("SIGTERM: shutting down"); Exit::Stopped }
            _ = self.int.recv() => { tracing::info!("SIGINT: shutting down"); Exit::Stopped }
            _ = self.hup.recv() => { tracing::info!("SIGHUP: restarting with the configuration as it is now"); Exit::Restart }
            _ = ctl.restart_requested() => { tracing::info!("restarting to take up a membership change"); Exit::Restart }
        }
    }
}

/// Runs the head until SIGTERM or SIGINT (or until it must restart).
pub async fn run(cfg: Config, name: String) -> Result<Exit, StartError> {
    let mut signals = Signals::new()?;
    clusterware_shared::sys::raise_fd_limit();
    // Before the database opens, so that with `metrics.enabled = no` nothing is recorded at all.
    crate::core::metrics::set_enabled(cfg.metrics_enabled);
    let token = admin_token(cfg.require_admin_pass()?);
    // A configuration others may read is among the warnings of its load (logged by `main`).
    let ip = advertised_ip(&cfg, &name);
    // Bind before starting anything else, so a busy port fails fast.
    let bind = |port: u16| {
        let addr = SocketAddr::new(cfg.head_bind, port);
        std::net::TcpListener::bind(addr)
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(|source| StartError::Listen { addr, source })
    };
    let (plain, tls_listener) = (bind(cfg.head_port)?, bind(cfg.tls_port)?);
    let addr = SocketAddr::new(cfg.head_bind, cfg.tls_port);
    let listen_err = |source| StartError::Listen { addr, source };
    let plain_how = http::Listen::Plain { tls_port: cfg.tls_port };
    let mut head_tls = tls::at_start(&cfg, &name, ip)?;
    // A joining head has the cluster's certificate already (its key comes with the database):
    // enough to ask the other heads to promote it.
    match (&head_tls, tls::local_ca_cert(&cfg)) {
        (Some(t), _) => tls::set_cluster_ca(&t.ca_pem),
        (None, Some(pem)) => tls::set_cluster_ca(&pem),
        (None, None) => {}
    }
    let api_url = format!("https://{ip}:{}", cfg.tls_port);
    let boot_url = format!("http://{ip}:{}", cfg.head_port);
    let ctl = Arc::new(Control::new(
        cfg.path.clone(),
        name.clone(),
        api_url.clone(),
        format!("https://{ip}:{}", cfg.etcd_peer_port),
        token.clone(),
    ));
    if cfg.membership != Membership::Member {
        tracing::warn!(
            state = %cfg.membership.as_str(),
            "this head is in no cluster: it serves nothing and every command says how to join one"
        );
        let (stop_tx, stop_rx) = watch::channel(false);
        let app = crate::membership::routes::detached_router(name.clone(), cfg.membership);
        let mut servers =
            vec![http::serve(&plain, app.clone(), stop_rx.clone(), plain_how.clone()).map_err(listen_err)?];
        if let Some(t) = &head_tls {
            servers.push(
                http::serve(&tls_listener, app, stop_rx, http::Listen::Tls(t.server.clone())).map_err(listen_err)?,
            );
        }
        let exit = signals.next(&ctl).await;
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(servers)).await;
        return Ok(exit);
    }
    // While the database opens (a joining head catches up, a member waits for a quorum), a
    // minimal API answers: health, `recover`, and "starting" for everything else.
    let (pre_tx, pre_rx) = watch::channel(false);
    let app = crate::membership::routes::starting_router(ctl.clone());
    let mut pre = vec![http::serve(&plain, app.clone(), pre_rx.clone(), plain_how.clone()).map_err(listen_err)?];
    if let Some(t) = &head_tls {
        pre.push(http::serve(&tls_listener, app, pre_rx, http::Listen::Tls(t.server.clone())).map_err(listen_err)?);
    }
    let pre = futures::future::join_all(pre);
    let opened = tokio::select! {
        r = open_database(&cfg, &name, ip, &ctl) => Some(r),
        exit = signals.next(&ctl) => {
            let _ = pre_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(10), pre).await;
            return Ok(exit);
        }
    };
    let _ = pre_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), pre).await;
    let (db, db_mode, member) = opened.expect("the database was opened")?;
    *ctl.db_mode.lock().unwrap_or_else(|p| p.into_inner()) = Some(db_mode);
    // Before anything is written: a schema newer than this release knows stops it here.
    let schema = crate::core::versions::check(&db, &name).await?;
    if cfg.recover && db_mode == DbMode::EtcdMember {
        if let Err(e) = membership::after_recover(&db, &ctl).await {
            tracing::error!(error = %e, "recovered, but cannot tidy up the former peers' records");
        }
    }
    if let Some(file) = &cfg.import_on_start {
        if let Err(e) = membership::after_convert(&db, &ctl, file).await {
            tracing::error!(error = %e, "cannot load the converted data; it is loaded again at the next start");
        }
    }
    // The cluster's CA: this head's, the cluster's, or a new one for a new cluster.
    let (ca, head_token) = tls::settle_ca(&db, &cfg).await?;
    let head_tls = match head_tls.take() {
        Some(t) => t,
        None => {
            tls::set_cluster_ca(&ca.cert_pem);
            tls::for_head(&cfg, ca.clone(), &name, ip)?
        }
    };
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let rec = HeadRecord {
        name: name.clone(),
        ip,
        api_url,
        boot_url: Some(boot_url),
        version: clusterware_shared::VERSION.to_string(),
        started,
        db_mode,
        ssh_keys: read_ssh_keys(&cfg.ssh_key_files),
        peer_url: (db_mode == DbMode::EtcdMember).then(|| ctl.peer_url.clone()),
        storage_id: Some(crate::storage::storage_id(&cfg.storage_dir)?),
        schema: crate::core::versions::SCHEMA,
    };
    // A database that just answered can still be too slow for one write (a loaded machine, a
    // leader election): that is worth waiting for, as for the database itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(cfg.db_ready_timeout_secs);
    loop {
        match heads::register(&db, &rec).await {
            Ok(()) => break,
            Err(e @ DbError::Unavailable(_)) if std::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "cannot register this head in the database yet; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let sup = Supervisor::new();
    let view = ClusterView::spawn(&db, rec.clone(), &sup);
    let ctx = Ctx::new(db.clone(), &cfg, view, &sup, http::Credentials { head: head_token, password: token });
    crate::core::versions::start(&ctx, schema);

    // The capabilities, each started from the core and what it depends on: one line each.
    // Storage first (with the node table, whose nodes may fetch root images): a head whose
    // storage cannot be used stops before it is seen alive.
    let nodes = registry::start(&ctx);
    let identity = registry::identity::start(&ctx, &nodes, ca);
    let storage = crate::storage::start(&ctx, &identity)?;
    // Turns true when this head starts handing its nodes over (its liveness record says so).
    let (stopping, stopping_rx) = watch::channel(false);
    {
        let (db, rec, ttl) = (db.clone(), rec.clone(), cfg.lease_ttl_secs);
        sup.spawn(Stage::Liveness, "liveness", move |stop| heads::keep_alive(db, rec, ttl, stopping_rx, stop));
    }
    let hub = agent_channel::start(&ctx, &nodes, &identity);
    bootcfg::start(&ctx, &storage);
    crate::rebalance::start(&ctx, &hub);
    crate::power::start(&ctx, &hub);
    crate::console::start(&ctx, &hub);
    membership::start(&ctx, &ctl, &hub);
    netboot::start(&ctx, &nodes, &hub, &identity, &storage).await?;

    if !nodes.wait_ready(Duration::from_secs(30)).await {
        tracing::warn!("the node table is not loaded yet; node requests are refused until it is");
    }
    let app = ctx.router();
    tracing::info!(head = %name, %ip, https = %addr, http = cfg.head_port, database = %db.backend(), version = %rec.version, ca = %clusterware_shared::pki::fingerprint(&head_tls.ca_pem), "head started");

    for (listener, how, task) in
        [(&plain, plain_how, "http"), (&tls_listener, http::Listen::Tls(head_tls.server.clone()), "https")]
    {
        let server =
            http::serve_until(listener, app.clone(), sup.stop_signal(Stage::Serve), how).map_err(listen_err)?;
        sup.spawn(Stage::Serve, task, move |_stop| async move {
            if let Err(e) = server.await {
                tracing::warn!(error = %e, "{task} server ended with an error");
            }
        });
    }
    drop((plain, tls_listener));
    let exit = signals.next(&ctl).await;
    // The nodes go to the other heads first, while this one still answers them.
    stopping.send_replace(true);
    hub.hand_over(HAND_OVER_LIMIT).await;
    // Stage by stage: requests (the running ones get the stage's 10 s), periodic work, the last
    // status write, the follows, and the liveness record last.
    sup.shutdown(STAGE_LIMIT).await;
    drop((ctx, hub, nodes, storage));
    drop(db);
    if let Some(mut m) = member {
        tokio::task::spawn_blocking(move || m.stop()).await.ok();
        tracing::info!("etcd member stopped");
    }
    tracing::info!("head stopped");
    Ok(exit)
}

/// The head's name: `head.name`, else the host name.
pub fn head_name(cfg: &Config) -> Result<String, StartError> {
    match &cfg.head_name {
        Some(n) => Ok(n.clone()),
        None => {
            let h = host_name();
            let short = h.split('.').next().unwrap_or(&h).to_string();
            validate_head_name(&short).map_err(|_| StartError::HeadName(h))?;
            Ok(short)
        }
    }
}
