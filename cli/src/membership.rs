//! Joining a head to a cluster, shared by `managedb join` and `scyld-install --join`, and the
//! checks `managedb --heads` and `scyld-clusterctl heads ls -l` make (host names, clocks).
//!
//! A join: ask the head at IP_HEAD (with the database password) what its cluster is; convert
//! it into a one-member etcd cluster first when it is a solo head on the embedded database;
//! refuse what cannot work (wrong password, another cluster, a name or version clash); have it
//! add this head's etcd member as a learner; rewrite this head's `base.ini` for the cluster;
//! restart (or start) the local head daemon, which starts its member, asks to be promoted once
//! caught up, and serves. If the local head does not come up as a member in time, the learner
//! is removed and the old `base.ini` put back: a failed join changes nothing.

use crate::{CliResult, Client, fail};
use clusterware_client::{BlockingClient, Config as ClientConfig};
use clusterware_shared::api::{
    AddMember, ClusterCa, ClusterInfo, ConvertDatabase, DataSummary, HeadList, HeadRef, Health,
};
use clusterware_shared::auth::admin_token;
use clusterware_shared::config::{self, Config, DatabaseType, Membership};
use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::{Duration, Instant};

/// `IP`, `IP:PORT` or `http://IP:PORT` → the head's plain-HTTP base URL (`default_port`, its
/// head.port, when none is given): where a joining head fetches the cluster CA.
pub fn head_url(target: &str, default_port: u16) -> CliResult<String> {
    let t = target.trim().trim_end_matches('/');
    if t.starts_with("http://") {
        return Ok(t.to_string());
    }
    if let Some(rest) = t.strip_prefix("https://") {
        // The CA comes over plain HTTP (it is checked with the password): its head.port.
        let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
        return Ok(format!("http://{host}:{default_port}"));
    }
    let (host, port) = match t.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| crate::usage(format!("{target:?}: bad port")))?),
        None => (t, default_port),
    };
    if host.is_empty() || host.contains('/') {
        return Err(crate::usage(format!("{target:?} is not IP_HEAD (an address, optionally :PORT)")));
    }
    Ok(format!("http://{host}:{port}"))
}

/// The local head's plain-HTTP URL, from its configuration (its health answers there).
pub fn local_url(cfg: &Config) -> String {
    let ip = cfg.head_ip.map_or("127.0.0.1".to_string(), |i| i.to_string());
    format!("http://{ip}:{}", cfg.head_port)
}

/// The local head's API URL (HTTPS), from its configuration.
pub fn local_api(cfg: &Config) -> String {
    let ip = cfg.head_ip.map_or("127.0.0.1".to_string(), |i| i.to_string());
    format!("https://{ip}:{}", cfg.tls_port)
}

/// The health of the head at `url`, if it answers (an `https://` URL is checked against `ca`).
pub fn health(url: &str, ca: Option<&str>) -> Option<Health> {
    let mut c = ClientConfig::new(url).timeout_secs(3);
    if let Some(ca) = ca {
        c = c.ca_pem(ca);
    }
    BlockingClient::new(c).ok()?.health().ok()
}

/// The cluster CA of the head at `plain_url`, checked with the database password: a machine in
/// the middle cannot hand a joining head its own CA without knowing the password.
pub fn cluster_ca_of(plain_url: &str, password: &str, target: &str) -> CliResult<ClusterCa> {
    let c = BlockingClient::new(ClientConfig::new(plain_url).timeout_secs(60))?;
    let ca = c.cluster_ca().map_err(|e| match e.status() {
        None if e.is_transport() => fail(format!("cannot reach the head at {target} ({plain_url}): {}", e.reason())),
        _ => fail(format!("the head at {target} did not give its cluster CA: {}", e.reason())),
    })?;
    let fp = clusterware_shared::pki::fingerprint(&ca.cert_pem);
    if fp.is_empty() {
        return Err(fail(format!("the head at {target} sent a CA that is not a PEM certificate")));
    }
    if !clusterware_shared::auth::tokens_equal(&ca.proof, &clusterware_shared::pki::ca_proof(password, &ca.cert_pem)) {
        return Err(fail(format!(
            "the head at {target} could not prove that it knows this database password: either the password is not \
             that cluster's (database.admin_pass in {} on {target}) or something between the two machines answered \
             in its place; nothing was changed",
            config::DEFAULT_CONFIG_PATH
        )));
    }
    if !ca.api_url.starts_with("https://") {
        return Err(fail(format!("the head at {target} gave {:?} as its API, which is not https://", ca.api_url)));
    }
    Ok(ca)
}

/// Sends SIGHUP to the local head daemon (it restarts in place with its configuration as it is
/// now). Checks first that the pid is a `clusterware-head`.
pub fn restart_local(h: &Health) -> CliResult<()> {
    let cmd = std::fs::read(format!("/proc/{}/cmdline", h.pid)).unwrap_or_default();
    if h.pid == 0 || !String::from_utf8_lossy(&cmd).contains("clusterware-head") {
        return Err(fail(format!(
            "the head answering locally (pid {}) is not a clusterware-head process on this machine; restart it by hand \
             (systemctl restart clusterware)",
            h.pid
        )));
    }
    if let Err(e) = crate::sys::kill(h.pid, nix::sys::signal::Signal::SIGHUP) {
        return Err(fail(format!("cannot signal the head daemon (pid {}): {e} (run as root)", h.pid)));
    }
    Ok(())
}

/// What [`wait_state`] waits for.
#[derive(Default)]
pub struct Expect<'a> {
    pub state: &'a str,
    /// The database backend, when it matters.
    pub database: Option<&'a str>,
    /// The head's name (another head may answer on a shared port).
    pub name: Option<&'a str>,
    /// The daemon's process: if it is gone, waiting is over.
    pub pid: Option<u32>,
    /// The `started_ms` of the daemon before it was told to restart: only another start counts
    /// (a restart in place keeps the pid, and the old process may still answer as expected;
    /// "another", not "later", so a clock stepped back cannot hold the wait).
    pub restarted_after: Option<u64>,
}

pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

fn pid_alive_or_unknown(pid: u32) -> bool {
    pid == 0 || process_alive(pid)
}

/// Waits until the head at `url` answers as expected; the last health seen otherwise.
pub fn wait_state(url: &str, ca: Option<&str>, e: &Expect, within: Duration) -> Result<Health, Option<Health>> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        if let Some(h) = health(url, ca) {
            if h.state == e.state
                && e.database.is_none_or(|d| h.database == d)
                && e.name.is_none_or(|n| h.name == n)
                && e.pid.is_none_or(|p| h.pid == p)
                && e.restarted_after.is_none_or(|t| h.started_ms != t)
            {
                return Ok(h);
            }
            last = Some(h);
        }
        if Instant::now() > deadline || e.pid.is_some_and(|p| !process_alive(p)) {
            return Err(last);
        }
        // A local request a few ms long: asked often, a head that starts serving is seen at once.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An authenticated client for another head, over HTTPS checked against its (checked) CA.
fn remote(ca: &ClusterCa, password: &str, secs: u64) -> CliResult<Client> {
    Client::to(&ca.api_url, &admin_token(password), &ca.cert_pem, secs)
}

/// A client for this head with its own credential and CA.
pub fn local_client(cfg: &Config, secs: u64) -> CliResult<Client> {
    let ca = crate::cluster_ca(None, Some(cfg))?;
    Client::to(&local_api(cfg), &admin_token(cfg.admin_pass.as_deref().unwrap_or("")), &ca, secs)
}

/// Asks a head for its cluster; turns the usual failures into what the administrator must do.
fn cluster_of(c: &Client, target: &str) -> CliResult<ClusterInfo> {
    c.cluster(false).map_err(|e| match e.status() {
        Some(403) => fail(format!(
            "the head at {target} refused the database password: it is not that cluster's (see database.admin_pass in \
             {} on {target})",
            config::DEFAULT_CONFIG_PATH
        )),
        Some(409) => fail(format!("the head at {target} cannot take a join: {}", e.reason())),
        None if e.is_transport() => fail(format!("cannot reach the head at {target}: {}", e.reason())),
        _ => fail(format!("the head at {target}: {}", e.reason())),
    })
}

/// Checks that the head at `target` takes this password (before anything is written).
pub fn check_access(target: &str, password: &str, default_port: u16) -> CliResult<ClusterInfo> {
    let url = head_url(target, default_port)?;
    let ca = cluster_ca_of(&url, password, target)?;
    cluster_of(&remote(&ca, password, 30)?, target)
}

/// Whether two versions are of one release (patch versions of a release work together).
pub fn same_release(a: &str, b: &str) -> bool {
    use clusterware_shared::release::Version;
    match (Version::parse(a), Version::parse(b)) {
        (Some(a), Some(b)) => a.release() == b.release(),
        _ => a == b,
    }
}

/// The refusal of a join between releases, with the command that brings this head to the
/// cluster's release first.
pub fn release_mismatch(target: &str, theirs: &str, ours: &str) -> Option<String> {
    (!same_release(theirs, ours)).then(|| {
        format!(
            "the head at {target} runs ClusterWare {theirs} and this head {ours}: bring this head to the cluster's \
             release first, and join in the same step, with `scyld-install --update --join {target} \
             --database-passwd-file FILE` (add --deb FILE for a package of {theirs} that the package repository does \
             not offer); nothing was changed"
        )
    })
}

/// What a join did.
#[derive(Debug, serde::Serialize)]
pub struct Joined {
    pub cluster_head: String,
    pub member_id: String,
    pub members: usize,
    pub converted: bool,
    pub discarded: Option<DataSummary>,
    pub seconds: f64,
}

/// How the local head daemon is (re)started after the configuration changed.
pub enum Start<'a> {
    /// It runs: SIGHUP it.
    Running(Health),
    /// It does not run: this starts it and returns its pid.
    With(&'a dyn Fn() -> CliResult<u32>),
}

/// Joins this head (configuration at `cfg_path`) to the cluster of the head at `target`.
/// `say` prints progress.
pub fn join(cfg_path: &Path, target: &str, password: &str, start: Start, say: &dyn Fn(&str)) -> CliResult<Joined> {
    let t0 = Instant::now();
    let old_text =
        std::fs::read_to_string(cfg_path).map_err(|e| fail(format!("cannot read {}: {e}", cfg_path.display())))?;
    let cfg = Config::parse(&old_text, cfg_path).map_err(|e| fail(e.to_string()))?.config;
    let name = crate::head_name_of(&cfg)?;
    let ip = cfg.head_ip.ok_or_else(|| {
        fail(format!("head.ip is not set in {}: the other heads need this head's cluster address", cfg_path.display()))
    })?;
    let plain = head_url(target, cfg.head_port)?;
    let ca = cluster_ca_of(&plain, password, target)?;
    let c = remote(&ca, password, 60)?;
    let mut info = cluster_of(&c, target)?;
    if let Some(m) = release_mismatch(target, &info.version, clusterware_shared::VERSION) {
        return Err(fail(m));
    }
    // Everything that can be checked is checked before the first change (a save of this head's
    // data, a conversion of the head joined).
    let same_cluster = !cfg.etcd_cluster_token.is_empty() && info.cluster_token == cfg.etcd_cluster_token;
    if plain == format!("http://{ip}:{}", cfg.head_port) || (info.head == name && same_cluster) {
        return Err(fail(format!(
            "{target} is this head ({name}) itself: give the address of a head of the cluster to join; nothing was \
             changed"
        )));
    }
    if info.members.iter().any(|m| m.name == name) && info.cluster_token != cfg.etcd_cluster_token {
        return Err(fail(format!(
            "a head named {name} is already a member of the cluster at {target}: give this head another name \
             (head.name in {}); nothing was changed",
            cfg_path.display()
        )));
    }
    // This head's own state: in another cluster, or data that the join discards.
    let local = local_url(&cfg);
    let running = match &start {
        Start::Running(h) => Some(h.clone()),
        Start::With(_) => None,
    };
    if running.is_none()
        && cfg.membership == Membership::Member
        && cfg.database_type == DatabaseType::Etcd
        && cfg.etcd_initial_cluster.as_deref().is_some_and(|c| c.contains(','))
        && cfg.etcd_cluster_token != info.cluster_token
    {
        return Err(fail(format!(
            "{} says this head belongs to a cluster of several heads: start it and leave that cluster first (`managedb \
             leave`), or reinstall with `scyld-install --clear-all`",
            cfg_path.display()
        )));
    }
    if running.as_ref().is_some_and(|h| h.state == "starting") {
        return Err(fail(
            "this head is waiting for its own cluster's quorum: it is still a member there. Recover it first \
             (`managedb recover`), then join",
        ));
    }
    let mut discarded = None;
    if let (Some(h), Membership::Member) = (&running, cfg.membership) {
        if h.state == "serving" {
            if let Ok(mine) = local_client(&cfg, 10).and_then(|lc| Ok(lc.cluster(true)?)) {
                let voting = mine.members.iter().filter(|m| !m.learner).count();
                if mine.cluster_token == info.cluster_token && info.members.iter().any(|m| m.name == name) {
                    return Err(fail(format!("this head ({name}) is already a member of the cluster at {target}")));
                }
                if voting > 1 {
                    let names: Vec<&str> = mine.members.iter().map(|m| m.name.as_str()).collect();
                    return Err(fail(format!(
                        "this head is one of the {voting} heads of another cluster ({}): leave it first with `managedb \
                         leave` (or eject it from there)",
                        names.join(", ")
                    )));
                }
                let d = mine.data.clone().unwrap_or_default();
                if d.nodes + d.images + d.boot_configs + d.files > 0 {
                    // Nothing is lost: the records go to a file first (boot files stay in storage
                    // until the first audit renames them .old.NN).
                    let lc = local_client(&cfg, 300)?;
                    let dump = lc.save_database()?;
                    let file = cfg_path.parent().unwrap_or(Path::new("/")).join(format!(
                        "before-join-{}.json",
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
                    ));
                    let body = serde_json::to_vec_pretty(&dump).expect("a dump serialises");
                    clusterware_shared::fsutil::write_atomic(&file, None, &body, Some(0o600))
                        .map_err(|e| fail(format!("cannot save this head's data to {}: {e}", file.display())))?;
                    say(&format!(
                        "joining discards this head's own data ({} nodes, {} images, {} boot configs, {} files); a copy \
                         of its database is in {} (`managedb load` puts it into an empty cluster; boot configs travel \
                         with `scyld-bootctl export`)",
                        d.nodes,
                        d.images,
                        d.boot_configs,
                        d.files,
                        file.display()
                    ));
                }
                discarded = Some(d);
            }
        }
    }
    let mut converted = false;
    match info.db_mode.as_str() {
        "etcd-member" => {}
        "embedded" => {
            say(&format!(
                "{} at {target} is a solo head on the embedded database: converting it into a one-member etcd cluster \
                 first (its data is kept)",
                info.head
            ));
            let before = health(&plain, None).map(|h| h.started_ms);
            c.convert_database(&ConvertDatabase { to: "etcd".into() })?;
            let e = Expect {
                state: "serving",
                database: Some("etcd"),
                name: Some(&info.head),
                restarted_after: before,
                ..Default::default()
            };
            wait_state(&plain, None, &e, Duration::from_secs(300))
                .map_err(|_| fail(format!("{} did not come back on etcd within 300 s; see its log", info.head)))?;
            info = cluster_of(&c, target)?;
            converted = true;
        }
        other => {
            return Err(fail(format!(
                "the head at {target} uses {other} (a database it does not run itself): point this head's \
                 database.endpoints at the same etcd instead of joining"
            )));
        }
    }
    if info.members.iter().any(|m| m.name == name) {
        return Err(fail(if info.cluster_token == cfg.etcd_cluster_token {
            format!("this head ({name}) is already a member of the cluster at {target}")
        } else {
            format!(
                "a head named {name} is already a member of the cluster at {target}: give this head another name \
                 (head.name in {})",
                cfg_path.display()
            )
        }));
    }
    let peer_url = format!("https://{ip}:{}", cfg.etcd_peer_port);
    let added = c
        .add_member(&AddMember { name: name.clone(), peer_url })
        .map_err(|e| fail(format!("the head at {target} did not add this head: {e}")))?;
    say(&format!("added as etcd learner {} of the cluster at {target}; starting this head's member", added.id));
    let base = cfg.etcd_data_dir.parent().unwrap_or(Path::new("/")).to_path_buf();
    let data_dir = base.join(format!("etcd-{}", added.id));
    let local_api = local_api(&cfg);
    let peers: Vec<String> = added.peers.iter().filter(|u| **u != local_api).cloned().collect();
    let pass_line = password.to_string();
    let edits = [
        ("database.type", Some("etcd")),
        ("database.state", None),
        ("database.admin_pass", Some(pass_line.as_str())),
        ("database.initial_cluster", Some(added.initial_cluster.as_str())),
        ("database.initial_cluster_state", Some("existing")),
        ("database.cluster_token", Some(added.cluster_token.as_str())),
        ("database.data_dir", Some(&*data_dir.to_string_lossy())),
        ("database.peers", Some(&*peers.join(","))),
        ("database.recover", None),
        ("database.import_on_start", None),
    ];
    // This head takes the cluster's CA (the certificate now, the key from the database once its
    // member has caught up); its own CA and certificate, if any, are kept aside until then.
    let tls = TlsFiles::read(&cfg.tls_dir);
    let undo = |why: String| -> crate::CliError {
        // By address: a member that never started has no name yet.
        let _ = c.eject(&HeadRef { head: ip.to_string(), force: true });
        let _ = clusterware_shared::fsutil::write_atomic(cfg_path, None, old_text.as_bytes(), Some(0o600));
        tls.restore(&cfg.tls_dir);
        if let Some(h) = health(&local, None) {
            let _ = restart_local(&h);
        }
        let _ = std::fs::remove_dir_all(&data_dir);
        fail(format!("{why}; the join was undone (learner removed, {} restored)", cfg_path.display()))
    };
    if let Err(e) = config::edit(cfg_path, &edits) {
        return Err(undo(format!("cannot rewrite {}: {e}", cfg_path.display())));
    }
    let (Some(cert), Some(key)) = (&added.cert_pem, &added.key_pem) else {
        return Err(undo(format!("the head at {target} gave no certificate for this head's etcd member")));
    };
    if let Err(e) = TlsFiles::take_cluster_ca(&cfg.tls_dir, &ca.cert_pem, cert, key) {
        return Err(undo(format!("cannot write the cluster CA into {}: {e}", cfg.tls_dir.display())));
    }
    let r = match &start {
        Start::Running(h) => restart_local(h).map(|()| h.pid),
        Start::With(f) => f(),
    };
    let pid = match r {
        Ok(pid) => pid,
        Err(e) => return Err(undo(e.message().to_string())),
    };
    // Catching up copies the whole database: allow for a large one.
    let e = Expect {
        state: "serving",
        database: Some("etcd"),
        name: Some(&name),
        pid: (pid != 0).then_some(pid),
        // A head restarted in place keeps its pid; one that was on etcd already answers as
        // expected until it has restarted.
        restarted_after: match &start {
            Start::Running(h) => Some(h.started_ms),
            Start::With(_) => None,
        },
    };
    let waited = Instant::now();
    let mut r = wait_state(&local, None, &e, Duration::from_secs(15));
    while r.is_err() && waited.elapsed() < Duration::from_secs(600) && pid_alive_or_unknown(pid) {
        say(&format!(
            "still waiting for this head's member to catch up and be promoted ({} s; the head reports {:?})",
            waited.elapsed().as_secs(),
            r.as_ref().err().and_then(|h| h.as_ref().map(|h| h.state.clone())).unwrap_or_default()
        ));
        r = wait_state(&local, None, &e, Duration::from_secs(15));
    }
    if let Err(last) = r {
        let how = match last {
            _ if pid != 0 && !process_alive(pid) => "exited".to_string(),
            Some(h) if h.name != name => format!("is not answering at {local} (head {} answers there)", h.name),
            Some(h) => format!("still reports {:?} after {} s", h.state, waited.elapsed().as_secs()),
            None => "does not answer".to_string(),
        };
        return Err(undo(format!("this head's daemon {how} (see its log in {})", cfg.log_dir.display())));
    }
    // The old data dir of a former etcd member is of no use any more.
    if cfg.database_type == DatabaseType::Etcd && cfg.etcd_data_dir != data_dir && cfg.etcd_endpoints.is_empty() {
        let _ = std::fs::remove_dir_all(&cfg.etcd_data_dir);
    }
    tls.forget(&cfg.tls_dir);
    let after = cluster_of(&c, target)?;
    Ok(Joined {
        cluster_head: info.head,
        member_id: added.id,
        members: after.members.len(),
        converted,
        discarded,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// A head's TLS files as they were before a join: put back if the join is undone.
struct TlsFiles(Vec<(&'static str, Vec<u8>)>);

impl TlsFiles {
    const NAMES: [&'static str; 4] = [
        clusterware_shared::pki::CA_CERT,
        clusterware_shared::pki::CA_KEY,
        clusterware_shared::pki::HEAD_CERT,
        clusterware_shared::pki::HEAD_KEY,
    ];

    fn read(dir: &Path) -> TlsFiles {
        TlsFiles(Self::NAMES.iter().filter_map(|n| Some((*n, std::fs::read(dir.join(n)).ok()?))).collect())
    }

    /// Leaves the cluster's CA certificate and the certificate it issued this head in `dir`
    /// (the head takes the CA's key from the database once its member has caught up).
    fn take_cluster_ca(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) -> std::io::Result<()> {
        use clusterware_shared::pki::{CA_CERT, HEAD_CERT, HEAD_KEY};
        std::fs::create_dir_all(dir)?;
        for n in Self::NAMES {
            match std::fs::remove_file(dir.join(n)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        let write = |n: &str, body: &str, mode| {
            clusterware_shared::fsutil::write_atomic(&dir.join(n), None, body.as_bytes(), Some(mode))
        };
        write(HEAD_KEY, key_pem, 0o600)?;
        write(HEAD_CERT, cert_pem, 0o644)?;
        write(CA_CERT, ca_pem, 0o644)
    }

    fn restore(&self, dir: &Path) {
        for n in Self::NAMES {
            let _ = std::fs::remove_file(dir.join(n));
        }
        for (n, body) in &self.0 {
            let mode = if n.ends_with(".key") { 0o600 } else { 0o644 };
            let _ = clusterware_shared::fsutil::write_atomic(&dir.join(n), None, body, Some(mode));
        }
    }

    /// The join went through: the old files are of no use any more.
    fn forget(self, _dir: &Path) {}
}

/// Warnings about the heads the spec asks administrators to get right: every head's name must
/// resolve on this head (once there is another head to reach: a solo head's name matters to no
/// one), and clocks must agree within a second.
pub fn head_warnings(list: &HeadList, ca: Option<&str>) -> Vec<String> {
    let mut out = release_warnings(list);
    let unresolved: Vec<String> = list
        .heads
        .iter()
        .filter(|_| list.heads.len() > 1)
        .filter(|h| (h.name.as_str(), 0).to_socket_addrs().map(|mut a| a.next().is_none()).unwrap_or(true))
        .map(|h| format!("{} ({})", h.name, h.ip))
        .collect();
    if !unresolved.is_empty() {
        out.push(format!(
            "the names of {} do not resolve on this head; add them to /etc/hosts or DNS on every head",
            unresolved.join(", ")
        ));
    }
    for h in &list.heads {
        if !h.alive {
            continue;
        }
        let t0 = now_ms();
        if let Some(hh) = health(&h.api_url, ca) {
            let t1 = now_ms();
            if let Some(skew) = clock_skew(t0, t1, hh.now_ms) {
                out.push(format!(
                    "head {} ({}): its clock differs from this head's by {:.1} s; run a common time service (chrony) \
                     on every head",
                    h.name,
                    h.ip,
                    skew as f64 / 1000.0
                ));
            }
        }
    }
    out
}

/// The heads' versions differ; the database waits at an older schema for some of them.
pub fn release_warnings(list: &HeadList) -> Vec<String> {
    let mut out: Vec<String> =
        clusterware_shared::release::skew(list.heads.iter().map(|h| (h.name.as_str(), h.version.as_str())))
            .into_iter()
            .collect();
    let newest = list.heads.iter().map(|h| h.schema).max().unwrap_or(0);
    if let Some(at) = list.schema.filter(|at| *at < newest) {
        let behind: Vec<&str> = list.heads.iter().filter(|h| h.schema < newest).map(|h| h.name.as_str()).collect();
        out.push(format!(
            "the cluster database stays at schema {at} until every head knows schema {newest} (not yet: {})",
            behind.join(", ")
        ));
    }
    out
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The skew in ms when a clock read `theirs` between our `t0` and `t1` is more than a second
/// off (the round trip's middle is our estimate of the moment it was read; a reading inside
/// the round trip is no skew at all).
pub fn clock_skew(t0: u64, t1: u64, theirs: u64) -> Option<u64> {
    if theirs == 0 {
        return None;
    }
    let off = if theirs < t0 {
        t0 - theirs
    } else if theirs > t1 {
        theirs - t1
    } else {
        0
    };
    (off > 1000).then_some(off)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skew_counts_only_what_lies_outside_the_round_trip() {
        assert_eq!(clock_skew(1000, 1200, 1100), None);
        assert_eq!(clock_skew(10_000, 10_200, 8_000), Some(2000));
        assert_eq!(clock_skew(10_000, 10_200, 11_500), Some(1300));
        assert_eq!(clock_skew(10_000, 10_200, 10_900), None);
        assert_eq!(clock_skew(10_000, 10_200, 0), None);
    }

    #[test]
    fn head_urls() {
        assert_eq!(head_url("10.0.0.2", 80).unwrap(), "http://10.0.0.2:80");
        assert_eq!(head_url("10.0.0.2:8080", 80).unwrap(), "http://10.0.0.2:8080");
        assert_eq!(head_url("http://h:1/", 80).unwrap(), "http://h:1");
        assert_eq!(head_url("https://h:443", 80).unwrap(), "http://h:80");
        assert!(head_url("10.0.0.2:x", 80).is_err());
        assert!(same_release("0.1.0", "0.1.7") && !same_release("0.1.0", "0.2.0"));
        assert!(same_release("0.1.0-rc1", "0.1.0") && !same_release("0.10.0", "0.1.0"));
    }

    #[test]
    fn a_join_across_releases_is_refused_with_the_command_that_updates_first() {
        assert_eq!(release_mismatch("10.0.0.2", "0.1.3", "0.1.0"), None);
        let m = release_mismatch("10.0.0.2", "0.2.0", "0.1.0").unwrap();
        assert!(m.contains("runs ClusterWare 0.2.0 and this head 0.1.0"), "{m}");
        assert!(m.contains("`scyld-install --update --join 10.0.0.2 --database-passwd-file FILE`"), "{m}");
    }

    #[test]
    fn release_skew_and_a_waiting_schema_are_warned_about() {
        let head = |name: &str, version: &str, schema: u32| clusterware_shared::api::HeadInfo {
            name: name.into(),
            ip: std::net::Ipv4Addr::LOCALHOST,
            api_url: String::new(),
            version: version.into(),
            alive: true,
            started: 0,
            db_member: clusterware_shared::api::DbMember {
                backend: "etcd".into(),
                id: None,
                state: "voting".into(),
                leader: false,
            },
            storage: None,
            nodes: 0,
            schema,
        };
        let same =
            HeadList { heads: vec![head("h1", "0.2.0", 2), head("h2", "0.2.0", 2)], mean_nodes: 0.0, schema: Some(2) };
        assert!(release_warnings(&same).is_empty());
        let mixed =
            HeadList { heads: vec![head("h1", "0.2.0", 2), head("h2", "0.1.0", 1)], mean_nodes: 0.0, schema: Some(1) };
        let w = release_warnings(&mixed);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("(0.1.0 on h2; 0.2.0 on h1)"), "{w:?}");
        assert_eq!(w[1], "the cluster database stays at schema 1 until every head knows schema 2 (not yet: h2)");
    }
}
