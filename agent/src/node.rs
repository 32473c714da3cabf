//! The agent itself: one node's conversation with its heads. The daemon (`run`) and every node
//! of the simulator (`sim`) run this same code; only where the status facts come from, which
//! source address is used and where files go differ.
//!
//! The loop: push status to the head at the top of the list; then hold a long poll open to it
//! until the next push is due, running any script it hands over at once. A push or poll that
//! fails (refused, reset, garbage, no answer in time) rotates the list: the unresponsive head
//! goes to the bottom, the next one becomes the parent, and status goes there at once. When a
//! whole round of heads failed, the agent waits (1 s doubling to 30 s, with jitter) before the
//! next round: it never busy-loops.

use crate::client::{ClientError, Endpoint, HeadClient};
use clusterware_shared::agent::{
    Command, DEFAULT_STATUS_SECS, Directives, HeadEntry, HeadsReply, KeysReply, MAX_WAIT_SECS, Script, ScriptOutcome,
    StatusReport, merge_authorized_keys, merge_hosts,
};
use clusterware_shared::api::path;
use clusterware_shared::fsutil::write_atomic;
use clusterware_shared::ids::MacAddr;
use nix::errno::Errno;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Where a node's files are. `None`: not kept.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// The head list, parent first (`/etc/clusterware/heads`).
    pub heads: Option<PathBuf>,
    /// `/etc/hosts`, with its managed `parent-head-node` line.
    pub hosts: Option<PathBuf>,
    /// root's `authorized_keys`.
    pub keys: Option<PathBuf>,
    /// What `clusterware-node status` shows.
    pub state: Option<PathBuf>,
}

/// Where status reports come from.
pub trait Source: Send + Sync {
    /// A report; `first` asks for the hardware inventory too.
    fn report(&self, first: bool) -> StatusReport;
}

/// Hooks for the simulator's statistics; the daemon uses none.
pub trait Observer: Send + Sync {
    fn pushed(&self, _latency: Duration, _ok: bool) {}
    fn parent_changed(&self, _parent: &str) {}
    /// The parent (the same head) is known by a new name: the head list it sent names it
    /// (a list given by URL alone names each head by its host until then).
    fn parent_renamed(&self, _parent: &str) {}
    /// The parent did not answer and the next head became the parent.
    fn failed_over(&self) {}
    fn heads_fetched(&self, _count: usize) {}
    fn script_done(&self, _script: Script, _ok: bool) {}
}

pub struct NoObserver;
impl Observer for NoObserver {}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Deadline of a push (connecting included).
    pub push_timeout: Duration,
    /// How much longer than the head's hold a long poll may take before the head counts as hung.
    pub poll_grace: Duration,
    /// Longest wait between two rounds of failed heads.
    pub max_backoff: Duration,
    /// Status interval until a head says otherwise.
    pub status_secs: u32,
    /// No log lines (the simulator).
    pub quiet: bool,
    /// Push at this fixed interval whatever the heads say (benchmarks offering a set load).
    pub fixed_interval: Option<Duration>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            push_timeout: Duration::from_secs(3),
            poll_grace: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            status_secs: DEFAULT_STATUS_SECS,
            quiet: false,
            fixed_interval: None,
        }
    }
}

/// What `clusterware-node status` prints (the daemon's state file).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    pub mac: String,
    pub pid: u32,
    pub parent: Option<HeadEntry>,
    pub heads: Vec<HeadEntry>,
    pub status_secs: u32,
    /// Seconds since the Unix epoch.
    pub last_push: Option<u64>,
    pub last_push_ok: bool,
    #[serde(default)]
    pub last_error: Option<String>,
    pub pushes_ok: u64,
    pub pushes_failed: u64,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Reads a heads file: one head per line, `URL [NAME]`; `#` starts a comment.
pub fn read_heads_file(text: &str) -> Result<Vec<HeadEntry>, String> {
    let mut v = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        let url = f.next().unwrap_or_default();
        let ep = Endpoint::parse(url).map_err(|e| format!("line {}: {e}", i + 1))?;
        let name = f.next().map_or_else(|| ep.host.clone(), str::to_string);
        v.push(HeadEntry { name, url: ep.url });
    }
    Ok(v)
}

fn heads_file_text(heads: &[HeadEntry]) -> String {
    let mut s = String::from("# Head nodes, parent first; written by clusterware-node.\n");
    for h in heads {
        s.push_str(&format!("{} {}\n", h.url, h.name));
    }
    s
}

/// Why a one-shot operation failed.
#[derive(Debug)]
pub struct OpError(pub String);

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub struct Agent {
    mac: MacAddr,
    heads: Vec<(HeadEntry, Endpoint)>,
    client: HeadClient,
    files: Files,
    source: Arc<dyn Source>,
    observer: Arc<dyn Observer>,
    settings: Settings,
    status_secs: u32,
    sent_hardware: bool,
    state: AgentState,
    state_warned: bool,
    failed_rounds: u32,
    failures_in_round: usize,
    /// No head list has been fetched yet: ask again after the next successful push.
    need_heads: bool,
}

impl Agent {
    /// `heads`: the starting list, parent first (from the kernel command line, the heads file
    /// or the configuration); it must not be empty.
    pub fn new(
        mac: MacAddr,
        heads: Vec<HeadEntry>,
        client: HeadClient,
        files: Files,
        source: Arc<dyn Source>,
        observer: Arc<dyn Observer>,
        settings: Settings,
    ) -> Result<Agent, String> {
        let mut list = Vec::new();
        for h in heads {
            let ep = Endpoint::parse(&h.url)?;
            if !list.iter().any(|(_, e): &(HeadEntry, Endpoint)| e.url == ep.url) {
                list.push((HeadEntry { name: h.name, url: ep.url.clone() }, ep));
            }
        }
        if list.is_empty() {
            return Err("no head to talk to: give cw.parent=/cw.heads= on the kernel command line, heads= in the configuration, or a heads file".into());
        }
        let status_secs = settings.status_secs;
        Ok(Agent {
            mac,
            heads: list,
            client,
            files,
            source,
            observer,
            status_secs,
            settings,
            sent_hardware: false,
            state: AgentState { mac: mac.to_string(), pid: std::process::id(), status_secs, ..Default::default() },
            state_warned: false,
            failed_rounds: 0,
            failures_in_round: 0,
            need_heads: true,
        })
    }

    fn log(&self, msg: std::fmt::Arguments<'_>) {
        if !self.settings.quiet {
            eprintln!("clusterware-node[{}]: {msg}", self.mac);
        }
    }

    pub fn heads(&self) -> Vec<HeadEntry> {
        self.heads.iter().map(|(h, _)| h.clone()).collect()
    }

    fn parent(&self) -> (HeadEntry, Endpoint) {
        self.heads[0].clone()
    }

    /// Writes the heads file and the hosts line for the current list.
    fn persist_heads(&mut self) {
        if let Some(p) = &self.files.heads {
            if let Err(e) = write_atomic(p, None, heads_file_text(&self.heads()).as_bytes(), Some(0o644)) {
                self.log(format_args!("cannot write {}: {e}", p.display()));
            }
        }
        if let Some(p) = self.files.hosts.clone() {
            let (_, ep) = self.parent();
            match ep.ip() {
                Some(ip) => {
                    let old = std::fs::read_to_string(&p).unwrap_or_default();
                    let new = merge_hosts(&old, &ip.to_string());
                    if new != old {
                        if let Err(e) = write_hosts(&p, new.as_bytes()) {
                            self.log(format_args!("cannot write {}: {e}", p.display()));
                        }
                    }
                }
                None => self.log(format_args!("parent {} has no IPv4 address; {} not updated", ep.host, p.display())),
            }
        }
        self.state.parent = Some(self.heads[0].0.clone());
        self.state.heads = self.heads();
    }

    /// Moves the parent to the bottom of the list; the next head becomes the parent.
    fn rotate(&mut self, why: &ClientError) {
        let (old, _) = self.parent();
        self.client.reset();
        self.failures_in_round += 1;
        if self.heads.len() > 1 {
            self.heads.rotate_left(1);
            let new = self.heads[0].0.clone();
            self.log(format_args!("parent {} did not answer ({why}); new parent {}", old.name, new.name));
            self.persist_heads();
            self.observer.parent_changed(&new.name);
            self.observer.failed_over();
        } else {
            self.log(format_args!("head {} did not answer ({why}); it is the only head known", old.name));
        }
    }

    /// Makes `target` the parent (moving it to the top; added when unknown).
    fn switch_to(&mut self, target: &HeadEntry) {
        let Ok(ep) = Endpoint::parse(&target.url) else {
            self.log(format_args!("ignoring a switch to {:?}: not a head URL", target.url));
            return;
        };
        if self.heads[0].1.url == ep.url {
            return;
        }
        self.heads.retain(|(_, e)| e.url != ep.url);
        self.heads.insert(0, (HeadEntry { name: target.name.clone(), url: ep.url.clone() }, ep));
        self.client.reset();
        self.log(format_args!("switching parent to {} as directed", target.name));
        self.persist_heads();
        self.observer.parent_changed(&target.name);
        // The rest of the list is the old parent's order: the new parent's list (itself, then
        // the live heads rotated by this node's MAC) is fetched after the first push to it, so
        // that if it dies its nodes spread over every other head rather than the old parent.
        self.need_heads = true;
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> Result<T, ClientError> {
        let (_, ep) = self.parent();
        let b = self.client.request(&ep, method, path, body, limit).await?;
        serde_json::from_slice(&b).map_err(|e| {
            self.client.reset();
            ClientError::Garbage(e.to_string())
        })
    }

    /// Asks the parent for the head list and keeps it (`fetch_hosts`).
    pub async fn fetch_heads(&mut self) -> Result<usize, ClientError> {
        let path = path::full(&path::agent::heads(&self.mac.to_string()));
        let r: HeadsReply = self.call("GET", &path, None, self.settings.push_timeout).await?;
        let mut list = Vec::new();
        for h in r.heads {
            match Endpoint::parse(&h.url) {
                Ok(ep) if !list.iter().any(|(_, e): &(HeadEntry, Endpoint)| e.url == ep.url) => {
                    list.push((HeadEntry { name: h.name, url: ep.url.clone() }, ep))
                }
                Ok(_) => {}
                Err(e) => return Err(ClientError::Garbage(format!("head list: {e}"))),
            }
        }
        if list.is_empty() {
            return Err(ClientError::Garbage("empty head list".into()));
        }
        // The parent answers with itself first; keep talking to the head we asked.
        let asked = self.heads[0].1.url.clone();
        if let Some(i) = list.iter().position(|(_, e)| e.url == asked) {
            list[..=i].rotate_right(1);
        }
        let n = list.len();
        let changed = list.iter().map(|(h, _)| h).ne(self.heads.iter().map(|(h, _)| h));
        let renamed = list[0].0.url == self.heads[0].0.url && list[0].0.name != self.heads[0].0.name;
        self.heads = list;
        if renamed {
            self.observer.parent_renamed(&self.heads[0].0.name);
        }
        self.persist_heads();
        if changed {
            let names: Vec<&str> = self.heads.iter().map(|(h, _)| h.name.as_str()).collect();
            self.log(format_args!("head list: {}", names.join(", ")));
        }
        self.observer.heads_fetched(n);
        self.need_heads = false;
        Ok(n)
    }

    /// Rewrites the managed block of root's `authorized_keys` (`update_keys`).
    pub async fn update_keys(&mut self) -> Result<usize, OpError> {
        let path = path::full(&path::agent::keys(&self.mac.to_string()));
        let r: KeysReply = self
            .call("GET", &path, None, self.settings.push_timeout)
            .await
            .map_err(|e| OpError(format!("cannot get the keys: {e}")))?;
        let Some(p) = self.files.keys.clone() else {
            return Err(OpError("no authorized_keys file is configured".into()));
        };
        let keys: Vec<String> =
            r.keys.into_iter().filter(|k| clusterware_shared::agent::validate_ssh_key(k).is_ok()).collect();
        let old = match std::fs::read_to_string(&p) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(OpError(format!("cannot read {}: {e}", p.display()))),
        };
        if let Some(dir) = p.parent() {
            if !dir.as_os_str().is_empty() && !dir.exists() {
                std::fs::create_dir_all(dir).map_err(|e| OpError(format!("cannot create {}: {e}", dir.display())))?;
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        let new = merge_authorized_keys(&old, &keys);
        write_atomic(&p, None, new.as_bytes(), Some(0o600))
            .map_err(|e| OpError(format!("cannot write {}: {e}", p.display())))?;
        Ok(keys.len())
    }

    async fn push(&mut self) -> Result<Directives, ClientError> {
        let report = self.source.report(!self.sent_hardware);
        let body = serde_json::to_vec(&report).expect("reports serialise");
        let started = Instant::now();
        let path = path::full(&path::agent::status());
        let r: Result<Directives, ClientError> = self.call("POST", &path, Some(body), self.settings.push_timeout).await;
        self.observer.pushed(started.elapsed(), r.is_ok());
        self.state.last_push = Some(unix_now());
        self.state.last_push_ok = r.is_ok();
        match &r {
            Ok(_) => {
                self.sent_hardware = true;
                self.state.pushes_ok += 1;
                self.state.last_error = None;
            }
            Err(e) => {
                self.state.pushes_failed += 1;
                self.state.last_error = Some(format!("{}: {e}", self.heads[0].0.name));
            }
        }
        r
    }

    async fn run_command(&mut self, c: &Command) {
        let (ok, message) = match c.script {
            Script::FetchHosts => match self.fetch_heads().await {
                Ok(n) => (true, format!("{n} heads")),
                Err(e) => (false, format!("cannot fetch the head list: {e}")),
            },
            Script::UpdateKeys => match self.update_keys().await {
                Ok(n) => (true, format!("{n} keys")),
                Err(e) => (false, e.0),
            },
        };
        if !ok {
            self.log(format_args!("script {} failed: {message}", c.script.name()));
        }
        self.observer.script_done(c.script, ok);
        let body = serde_json::to_vec(&ScriptOutcome { mac: self.mac, id: c.id.clone(), ok, message })
            .expect("outcomes serialise");
        let (_, ep) = self.parent();
        let path = path::full(&path::agent::result());
        if let Err(e) = self.client.request(&ep, "POST", &path, Some(body), self.settings.push_timeout).await {
            self.log(format_args!("cannot report the outcome of {}: {e}", c.script.name()));
        }
    }

    /// Carries out directives; true when the parent changed (push to it at once).
    async fn apply(&mut self, d: Directives) -> bool {
        if let Some(s) = d.status_secs {
            if s > 0 && s != self.status_secs {
                self.status_secs = s;
                self.state.status_secs = s;
            }
        }
        for c in &d.commands {
            self.run_command(c).await;
        }
        match d.switch_parent {
            Some(t) if t.url.trim_end_matches('/') != self.heads[0].1.url => {
                self.switch_to(&t);
                true
            }
            _ => false,
        }
    }

    /// Writes the state file (on tmpfs, `/run`) after every push, for `clusterware-node status`.
    fn write_state(&mut self) {
        let Some(p) = self.files.state.clone() else { return };
        let body = serde_json::to_vec_pretty(&self.state).expect("state serialises");
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Err(e) = write_atomic(&p, None, &body, Some(0o644)) {
            if !self.state_warned {
                self.log(format_args!("cannot write {}: {e}", p.display()));
                self.state_warned = true;
            }
        }
    }

    /// After a failure: try the next head at once, unless a whole round failed; then wait.
    async fn backoff(&mut self, stop: &mut watch::Receiver<bool>) -> bool {
        if self.failures_in_round < self.heads.len() {
            return true;
        }
        self.failures_in_round = 0;
        self.failed_rounds += 1;
        let base =
            Duration::from_secs(1u64 << self.failed_rounds.min(5).saturating_sub(1)).min(self.settings.max_backoff);
        // Jitter of ±20 % so that many nodes do not retry in step.
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let factor = 0.8 + (nanos % 400) as f64 / 1000.0;
        let wait = base.mul_f64(factor);
        self.log(format_args!("no head answered; trying again in {:.1} s", wait.as_secs_f64()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stop.wait_for(|s| *s) => false,
        }
    }

    /// The daemon: runs until `stop` turns true.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        // Ask the parent (else the next head) for the whole list.
        for _ in 0..self.heads.len() {
            match self.fetch_heads().await {
                Ok(_) => break,
                Err(e) if e.is_refusal() => {
                    self.log(format_args!("head {} refused the head list: {e}", self.heads[0].0.name));
                    break;
                }
                Err(e) => self.rotate(&e),
            }
        }
        self.failures_in_round = 0;
        self.persist_heads();
        self.observer.parent_changed(&self.heads[0].0.name.clone());
        // With a fixed interval: when the next push is due.
        let mut due: Option<Instant> = None;
        'outer: loop {
            if *stop.borrow() {
                break;
            }
            let push_started = Instant::now();
            let pushed = self.push().await;
            self.write_state();
            let mut switched = false;
            match pushed {
                Ok(d) => {
                    self.failures_in_round = 0;
                    self.failed_rounds = 0;
                    if self.need_heads && self.fetch_heads().await.is_ok() {
                        // The list could not be fetched at start (the parent refused it before
                        // the node's enrollment reached it, say): the parent answers now, under
                        // its name.
                        self.observer.parent_changed(&self.heads[0].0.name.clone());
                    }
                    switched = self.apply(d).await;
                }
                Err(e) if e.is_refusal() => {
                    // The head is alive but will not take this node's status (unknown MAC,
                    // wrong address): say so and try again next interval.
                    self.log(format_args!("head {} refused the status: {e}", self.heads[0].0.name));
                }
                Err(e) => {
                    self.rotate(&e);
                    if !self.backoff(&mut stop).await {
                        break;
                    }
                    continue;
                }
            }
            if switched {
                continue;
            }
            // A fixed interval (a benchmark's set load) runs on a schedule ([`next_due`]), so that
            // the rate offered is the one asked for; the heads' interval runs from the answer.
            let next = match self.settings.fixed_interval {
                Some(i) => {
                    let d = next_due(due, push_started, i);
                    due = Some(d);
                    d.max(Instant::now())
                }
                None => Instant::now() + Duration::from_secs(self.status_secs as u64),
            };
            // The long poll until the next push is due.
            loop {
                let left = next.saturating_duration_since(Instant::now());
                if left < Duration::from_secs(1) {
                    // Too short for a poll (a head holds whole seconds): wait for the push.
                    tokio::select! {
                        _ = tokio::time::sleep_until(next.into()) => {}
                        _ = stop.wait_for(|s| *s) => break 'outer,
                    }
                    break;
                }
                let secs = (left.as_secs() as u32).clamp(1, MAX_WAIT_SECS);
                let path = path::full(&path::agent::wait(&self.mac.to_string(), secs));
                let limit = Duration::from_secs(secs as u64) + self.settings.poll_grace;
                let polled = tokio::select! {
                    r = self.call::<Directives>("GET", &path, None, limit) => r,
                    _ = stop.wait_for(|s| *s) => break 'outer,
                };
                match polled {
                    Ok(d) => {
                        let idle = d == Directives::default();
                        if self.apply(d).await {
                            continue 'outer;
                        }
                        if idle && Instant::now() + Duration::from_millis(200) < next {
                            // The head ended the poll early with nothing to say (it is shutting
                            // down, say): push now to find out.
                            continue 'outer;
                        }
                    }
                    Err(e) if e.is_refusal() => {
                        // Not (or no longer) this head's node: push again, which claims it.
                        if matches!(e, ClientError::Status { status: 409, .. }) {
                            continue 'outer;
                        }
                        self.log(format_args!("head {} refused the long poll: {e}", self.heads[0].0.name));
                        tokio::select! {
                            _ = tokio::time::sleep_until(next.into()) => {}
                            _ = stop.wait_for(|s| *s) => break 'outer,
                        }
                    }
                    Err(e) => {
                        self.rotate(&e);
                        continue 'outer;
                    }
                }
            }
        }
        self.write_state();
    }
}

/// With a fixed interval `i`: when the push after one that started at `started` is due, given
/// when that one was due. On schedule (a push starts a little after it was due: the timer rounds
/// up to the next millisecond, a wake-up can be late), the next is due one interval after the
/// last was due, not after it started, so that the lateness does not add up; a push more than an
/// interval late (the first, or one after a failover) starts the schedule again from itself.
fn next_due(due: Option<Instant>, started: Instant, i: Duration) -> Instant {
    due.filter(|d| started.saturating_duration_since(*d) <= i).unwrap_or(started) + i
}

/// Writes `/etc/hosts` atomically; where it cannot be replaced (a bind mount in a container),
/// rewrites it in place.
fn write_hosts(p: &std::path::Path, body: &[u8]) -> std::io::Result<()> {
    match write_atomic(p, None, body, Some(0o644)) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error().map(Errno::from_raw), Some(Errno::EBUSY | Errno::EXDEV)) => {
            std::fs::write(p, body)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_interval_keeps_its_schedule() {
        let i = Duration::from_millis(80);
        let t0 = Instant::now();
        // The first push starts the schedule.
        let d1 = next_due(None, t0, i);
        assert_eq!(d1, t0 + i);
        // Each push starting a millisecond late: the lateness does not add up.
        let mut due = d1;
        for _ in 0..1000 {
            due = next_due(Some(due), due + Duration::from_millis(1), i);
        }
        assert_eq!(due, t0 + i * 1001);
        // A push more than an interval late starts again from itself.
        let late = due + Duration::from_millis(200);
        assert_eq!(next_due(Some(due), late, i), late + i);
    }

    #[test]
    fn heads_file_round_trip() {
        let h = vec![
            HeadEntry { name: "head1".into(), url: "http://10.0.0.1:80".into() },
            HeadEntry { name: "head2".into(), url: "https://10.0.0.2:443".into() },
        ];
        assert_eq!(read_heads_file(&heads_file_text(&h)).unwrap(), h);
        assert_eq!(read_heads_file("10.0.0.3 # c\n\n").unwrap()[0].url, "http://10.0.0.3:80");
        assert!(read_heads_file("ftp://x\n").unwrap_err().contains("line 1"));
    }
}
