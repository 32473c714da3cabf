//! `clusterware-node sim`: a fleet of simulated nodes in one process. Each node is an
//! [`Agent`](crate::node::Agent) with its own MAC, its own source address on loopback
//! (127.x.y.z, which must be the node's registered IP), its own files under `DIR/<mac>/`, and
//! the machine's real status facts with the node's identity put in. Statistics for tests and
//! benchmarks go to `DIR/summary.json`, rewritten every half second and at exit.
//!
//! With `--boot`, every node first boots as a network-booted node does after DHCP ([`crate::boot`]:
//! boot script, kernel, initramfs, CA, enrollment, root image checked and unpacked as it
//! arrives), all at once unless `--ramp-secs` spreads them: a boot storm. Each node's timings,
//! retries and the heads that served its image go to the summary; a node that could not boot
//! within `--boot-timeout-secs` is counted as failed and runs no agent.

use crate::client::HeadClient;
use crate::node::{Agent, Files, Observer, Settings, Source};
use clusterware_shared::agent::{HeadEntry, Interface, Phase, Script, StatusReport};
use clusterware_shared::ids::{MacAddr, ipv4_offset};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// Latency histogram: 100 µs buckets up to 1 s; the last bucket holds everything slower.
const BUCKETS: usize = 10_000;
const BUCKET_US: u64 = 100;

pub struct SimArgs {
    pub nodes: u32,
    pub heads: Vec<HeadEntry>,
    pub ip_start: Ipv4Addr,
    pub mac_start: MacAddr,
    pub dir: PathBuf,
    pub settings: Settings,
    /// First pushes are spread over this long, as real nodes do not boot in the same instant.
    pub ramp: Duration,
    /// The cluster CA (PEM) for https:// heads.
    pub ca_pem: Option<Vec<u8>>,
    /// Each node's one-time enrollment token (`scyld-nodectl enroll --json`), traded at its start.
    pub tokens: std::collections::HashMap<MacAddr, String>,
    /// Every node enrolls before any agent starts (the ramp then spreads the agents' starts).
    pub enroll_first: bool,
    /// Boot first from these heads' plain-HTTP ports (node i starts at the i-th, round robin);
    /// empty: no boot, the agents start with `heads`.
    pub boot: Vec<crate::client::Endpoint>,
    /// A node that has not booted after this long fails.
    pub boot_give_up: Duration,
}

/// Every node's [`node_tls`], all at once (the heads admit what they can take and tell the rest
/// to come back), in `plan`'s order.
async fn enroll_all(plan: &[(MacAddr, Ipv4Addr)], args: &SimArgs) -> Result<Vec<Option<TlsResult>>, String> {
    let started = std::time::Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, (mac, ip)) in plan.iter().copied().enumerate() {
        let (heads, ca, token) = (args.heads.clone(), args.ca_pem.clone(), args.tokens.get(&mac).cloned());
        set.spawn(async move { (i, node_tls(ca.as_deref(), token.as_deref(), &heads, mac, ip).await) });
    }
    let mut out: Vec<Option<TlsResult>> = plan.iter().map(|_| None).collect();
    while let Some(done) = set.join_next().await {
        let (i, r) = done.map_err(|e| format!("an enrollment task failed: {e}"))?;
        out[i] = Some(r);
    }
    let ok = out.iter().filter(|r| matches!(r, Some(Ok(_)))).count();
    eprintln!(
        "clusterware-node sim: {ok} of {} nodes enrolled in {:.1} s",
        plan.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

/// What [`node_tls`] gives a node.
type TlsResult = Result<Option<Arc<tokio_rustls::rustls::ClientConfig>>, String>;

/// A simulated node's TLS: the CA, and the certificate it enrolls for with its token (from its
/// own address, through the first head that takes it; heads that are not up yet are tried again
/// for five minutes).
async fn node_tls(
    ca: Option<&[u8]>,
    token: Option<&str>,
    heads: &[HeadEntry],
    mac: MacAddr,
    ip: Ipv4Addr,
) -> TlsResult {
    let Some(ca) = ca else { return Ok(None) };
    let plain = crate::client::tls_config_pem(ca, None)?;
    let Some(token) = token else { return Ok(Some(plain)) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    // Nodes told to try again (a head at its limit of enrollments) do not all come back at once.
    let mut jitter = crate::image::Jitter::new(u64::from(u32::from(ip)) ^ 0x5eed);
    loop {
        let mut last = String::new();
        for h in heads {
            let ep = crate::client::Endpoint::parse(&h.url)?;
            let mut c = HeadClient::new(Some(ip), Some(plain.clone()));
            match crate::client::enroll(&mut c, &ep, &mac, token, crate::client::ENROLL_LIMIT).await {
                Ok(e) => {
                    return crate::client::tls_config_pem(
                        e.ca_pem.as_bytes(),
                        Some((e.cert_pem.as_bytes(), e.key_pem.as_bytes())),
                    )
                    .map(Some);
                }
                // A refusal will not change: the token is not this node's, or used.
                Err(e) if e.is_refusal() => return Err(format!("{}: {e}", ep.url)),
                Err(e) => last = format!("{}: {e}", ep.url),
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(last);
        }
        tokio::time::sleep(jitter.half_to_full(Duration::from_secs(2))).await;
    }
}

#[derive(Debug, Clone, Default, Serialize)]
struct NodeInfo {
    mac: String,
    ip: String,
    /// The head that took the node's last successful push.
    parent: String,
    /// Unix time (ms) of the first successful push to the current parent.
    switched_ms: u64,
    /// The head at the top of the node's list (the parent once a push succeeds).
    #[serde(skip)]
    candidate: String,
    switches: u64,
    /// Parent changes because the parent did not answer (the rest were directed by a head).
    failovers: u64,
    heads: usize,
    scripts_ok: u64,
    scripts_failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<crate::boot::Booted>,
}

struct Stats {
    pushes_ok: AtomicU64,
    pushes_failed: AtomicU64,
    hist: Vec<AtomicU64>,
    nodes: Mutex<Vec<NodeInfo>>,
    started_ms: u64,
    /// When the agents began to start (after every enrollment, with --enroll-first).
    agents_started_ms: AtomicU64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[derive(Serialize)]
struct Summary<'a> {
    nodes: usize,
    started_ms: u64,
    /// When the agents began to start: after every enrollment with --enroll-first, else at once
    /// (0 while the nodes are enrolling).
    agents_started_ms: u64,
    now_ms: u64,
    pushes_ok: u64,
    pushes_failed: u64,
    /// Nodes whose boot got their root image verified, and nodes whose boot failed (`--boot`).
    booted: usize,
    boot_failed: usize,
    /// Bucket index (100 µs each) → pushes.
    latency_100us: BTreeMap<usize, u64>,
    parents: BTreeMap<String, usize>,
    node: &'a [NodeInfo],
}

impl Stats {
    fn summary(&self) -> Vec<u8> {
        // A copy, so that the pushes recorded meanwhile do not wait for the serialisation.
        let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut parents = BTreeMap::new();
        for n in nodes.iter() {
            *parents.entry(n.parent.clone()).or_insert(0) += 1;
        }
        let latency_100us = self
            .hist
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let c = c.load(Ordering::Relaxed);
                (c > 0).then_some((i, c))
            })
            .collect();
        serde_json::to_vec(&Summary {
            nodes: nodes.len(),
            started_ms: self.started_ms,
            agents_started_ms: self.agents_started_ms.load(Ordering::Relaxed),
            now_ms: now_ms(),
            pushes_ok: self.pushes_ok.load(Ordering::Relaxed),
            pushes_failed: self.pushes_failed.load(Ordering::Relaxed),
            booted: nodes.iter().filter(|n| n.boot.as_ref().is_some_and(|b| b.error.is_none())).count(),
            boot_failed: nodes.iter().filter(|n| n.boot.as_ref().is_some_and(|b| b.error.is_some())).count(),
            latency_100us,
            parents,
            node: &nodes,
        })
        .expect("summary serialises")
    }
}

struct NodeObserver {
    i: usize,
    stats: Arc<Stats>,
}

impl Observer for NodeObserver {
    fn pushed(&self, latency: Duration, ok: bool) {
        if ok {
            self.stats.pushes_ok.fetch_add(1, Ordering::Relaxed);
            let b = ((latency.as_micros() as u64) / BUCKET_US).min(BUCKETS as u64 - 1) as usize;
            self.stats.hist[b].fetch_add(1, Ordering::Relaxed);
            let mut n = self.stats.nodes.lock().unwrap_or_else(|p| p.into_inner());
            let e = &mut n[self.i];
            if e.parent != e.candidate {
                e.parent = e.candidate.clone();
                e.switched_ms = now_ms();
                e.switches += 1;
            }
        } else {
            self.stats.pushes_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn parent_changed(&self, parent: &str) {
        self.stats.nodes.lock().unwrap_or_else(|p| p.into_inner())[self.i].candidate = parent.to_string();
    }
    fn parent_renamed(&self, parent: &str) {
        let mut n = self.stats.nodes.lock().unwrap_or_else(|p| p.into_inner());
        let e = &mut n[self.i];
        // The same head under its own name: not a switch (before the first push, the first
        // push is the node's first switch).
        if !e.parent.is_empty() && e.parent == e.candidate {
            e.parent = parent.to_string();
        }
        e.candidate = parent.to_string();
    }
    fn failed_over(&self) {
        self.stats.nodes.lock().unwrap_or_else(|p| p.into_inner())[self.i].failovers += 1;
    }
    fn heads_fetched(&self, count: usize) {
        self.stats.nodes.lock().unwrap_or_else(|p| p.into_inner())[self.i].heads = count;
    }
    fn script_done(&self, _script: Script, ok: bool) {
        let mut n = self.stats.nodes.lock().unwrap_or_else(|p| p.into_inner());
        if ok {
            n[self.i].scripts_ok += 1;
        } else {
            n[self.i].scripts_failed += 1;
        }
    }
}

/// The machine's facts, refreshed once a second and shared by every simulated node.
struct SimSource {
    template: Arc<RwLock<StatusReport>>,
    mac: MacAddr,
    ip: Ipv4Addr,
    boot_id: String,
    hostname: String,
}

impl Source for SimSource {
    fn report(&self, first: bool) -> StatusReport {
        let mut r = self.template.read().unwrap_or_else(|p| p.into_inner()).clone();
        r.mac = self.mac;
        r.boot_id.clone_from(&self.boot_id);
        r.hostname.clone_from(&self.hostname);
        r.interfaces =
            vec![Interface { name: "eth0".into(), mac: Some(self.mac), addrs: vec![format!("{}/8", self.ip)] }];
        if !first {
            r.hardware = None;
        }
        r
    }
}

/// Runs the fleet until `stop` turns true.
pub async fn run(args: SimArgs, mut stop: watch::Receiver<bool>) -> Result<(), String> {
    std::fs::create_dir_all(&args.dir).map_err(|e| format!("cannot create {}: {e}", args.dir.display()))?;
    let template = Arc::new(RwLock::new(crate::facts::report(args.mac_start, "0", Phase::Up, true)));
    let t2 = template.clone();
    let template_mac = args.mac_start;
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let r = tokio::task::spawn_blocking(move || crate::facts::report(template_mac, "0", Phase::Up, true)).await;
            if let Ok(r) = r {
                *t2.write().unwrap_or_else(|p| p.into_inner()) = r;
            }
        }
    });
    let mut infos = Vec::new();
    let mut plan = Vec::new();
    let run_id = format!("{:08x}", (now_ms() & 0xffff_ffff) as u32);
    for i in 0..args.nodes {
        let mac = args.mac_start.offset(i as u64).map_err(|e| format!("--mac-start: {e}"))?;
        let ip = ipv4_offset(args.ip_start, i as u64).map_err(|e| format!("--ip-start: {e}"))?;
        if ip.octets()[0] != 127 {
            return Err(format!("simulated node address {ip} is not on loopback (127.0.0.0/8)"));
        }
        infos.push(NodeInfo { mac: mac.to_string(), ip: ip.to_string(), ..Default::default() });
        plan.push((mac, ip));
    }
    let stats = Arc::new(Stats {
        pushes_ok: AtomicU64::new(0),
        pushes_failed: AtomicU64::new(0),
        hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        nodes: Mutex::new(infos),
        started_ms: now_ms(),
        agents_started_ms: AtomicU64::new(0),
    });
    let n = plan.len().max(1) as u32;
    // With --enroll-first: every node's certificate (or why it has none) before any agent runs.
    let enrolled = if args.enroll_first && args.boot.is_empty() {
        tokio::select! {
            e = enroll_all(&plan, &args) => e?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    } else {
        plan.iter().map(|_| None).collect()
    };
    stats.agents_started_ms.store(now_ms(), Ordering::Relaxed);
    let mut tasks = Vec::new();
    for ((i, (mac, ip)), enrolled) in plan.into_iter().enumerate().zip(enrolled) {
        let dir = args.dir.join(mac.to_string().replace(':', ""));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let files = Files {
            heads: Some(dir.join("heads")),
            hosts: Some(dir.join("hosts")),
            keys: Some(dir.join("authorized_keys")),
            state: None,
        };
        let source = Arc::new(SimSource {
            template: template.clone(),
            mac,
            ip,
            boot_id: format!("{run_id}-{}", mac.to_string().replace(':', "")),
            hostname: format!("sim-{}", mac.to_string().replace(':', "")),
        });
        let observer = Arc::new(NodeObserver { i, stats: stats.clone() });
        let delay = args.ramp.mul_f64(i as f64 / n as f64);
        let stop = stop.clone();
        let (heads, settings, ca, token) =
            (args.heads.clone(), args.settings.clone(), args.ca_pem.clone(), args.tokens.get(&mac).cloned());
        let (boot, give_up, stats) = (args.boot.clone(), args.boot_give_up, stats.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let (heads, tls) = if boot.is_empty() {
                let tls = match enrolled {
                    Some(r) => r,
                    None => node_tls(ca.as_deref(), token.as_deref(), &heads, mac, ip).await,
                };
                match tls {
                    Ok(t) => (heads, t),
                    Err(e) => {
                        eprintln!("clusterware-node sim: {mac}: enrollment failed: {e}");
                        return;
                    }
                }
            } else {
                let booted = crate::boot::boot(&boot, i, mac, ip, give_up).await;
                let mut nodes = stats.nodes.lock().unwrap_or_else(|p| p.into_inner());
                match booted {
                    Ok(o) => {
                        nodes[i].boot = Some(o.booted);
                        (o.heads, o.tls)
                    }
                    Err(b) => {
                        eprintln!("clusterware-node sim: {mac}: boot failed: {}", b.error.as_deref().unwrap_or("?"));
                        nodes[i].boot = Some(*b);
                        return;
                    }
                }
            };
            match Agent::new(mac, heads, HeadClient::new(Some(ip), tls), files, source, observer, settings) {
                Ok(agent) => agent.run(stop).await,
                Err(e) => eprintln!("clusterware-node sim: {mac}: {e}"),
            }
        }));
    }
    let summary = Arc::new(args.dir.join("summary.json"));
    // Written (and synced) on a blocking thread: on the runtime's it stalled every node's push
    // twice a second.
    let write = |stats: &Arc<Stats>| {
        let (stats, summary) = (stats.clone(), summary.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = clusterware_shared::fsutil::write_atomic(&summary, None, &stats.summary(), None) {
                eprintln!("clusterware-node sim: cannot write {}: {e}", summary.display());
            }
        })
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => { let _ = write(&stats).await; }
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let _ = write(&stats).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> Arc<Stats> {
        Arc::new(Stats {
            pushes_ok: AtomicU64::new(0),
            pushes_failed: AtomicU64::new(0),
            hist: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            nodes: Mutex::new(vec![NodeInfo::default()]),
            started_ms: 0,
            agents_started_ms: AtomicU64::new(0),
        })
    }

    /// A parent first known by its address (a list given by URL alone) and then by its name is one
    /// head: no switch is counted, and the node is counted under the name.
    #[test]
    fn a_parent_learning_its_name_is_not_a_switch() {
        let s = stats();
        let o = NodeObserver { i: 0, stats: s.clone() };
        let node = || s.nodes.lock().unwrap()[0].clone();
        // Named before the first push: the first push is the first switch.
        o.parent_renamed("head1");
        assert_eq!((node().parent.as_str(), node().switches), ("", 0));
        o.pushed(Duration::from_millis(1), true);
        assert_eq!((node().parent.as_str(), node().switches), ("head1", 1));
        // Failed over to a head known by address, then named by its list.
        o.parent_changed("10.0.0.2");
        o.pushed(Duration::from_millis(1), true);
        assert_eq!((node().parent.as_str(), node().switches), ("10.0.0.2", 2));
        o.parent_renamed("head2");
        o.parent_changed("head2");
        o.pushed(Duration::from_millis(1), true);
        assert_eq!((node().parent.as_str(), node().switches), ("head2", 2));
    }
}
