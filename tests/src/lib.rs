//! Test harness: starts real `clusterware-head` processes, each on its own loopback address
//! (127.A.B.11, .12, … — a fresh A.B block per cluster so that tests run in parallel), each
//! with its own etcd member forming one etcd cluster, or one solo head on the embedded store.
//! Per-test temp dirs, ports chosen by the kernel, processes killed on drop (and tied to the
//! test thread with PR_SET_PDEATHSIG, so a crashed test leaves nothing behind); leftovers of an
//! earlier run whose test process is gone are killed before the first start.
//!
//! The binaries are the workspace's own build (`cargo build --workspace` first; `make test`
//! does it).

use clusterware_client::{BlockingClient, Config as ClientConfig};
use clusterware_shared::api::path;
use clusterware_shared::auth::admin_token;
use nix::sys::signal::Signal;
use serde_json::Value;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

pub mod dhcp;
pub mod netns;
pub mod redfish;
pub mod releases;
pub mod sys;
pub mod vm;
pub mod webdriver;

/// The lease TTL the harness gives heads (seconds).
pub const LEASE_TTL: u64 = 3;
/// The database password of every harness cluster.
pub const PASS: &str = "harness-db-pass";
const PID_DIR: &str = "/tmp/clusterware-tests/pids";

/// Where the workspace's binaries are: `target/<profile>/`, beside a test executable's `deps/`
/// or beside the benchmark executable.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("executable path");
    let mut dir = exe.parent().expect("target/<profile>");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target/<profile>");
    }
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing: run `cargo build --workspace` first (make test does)", p.display());
    p
}

/// Polls `f` until it returns true or `within` passes; panics naming `what` on timeout.
pub fn poll_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A free TCP port on `ip`, below the kernel's ephemeral range: a port the kernel hands out itself
/// (`bind` to port 0) can be taken, before the head binds it, by the source port of a connection
/// to `ip` (Linux uses a local destination address as the source), which once made a head fail
/// with "Address already in use" at start-up. Ports below the range are only ever bound on purpose.
pub fn free_port(ip: Ipv4Addr) -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    // Ports handed out by this process: one that is free now may already be another head's
    // (a port is only bound when its head starts), and two listeners of one head on the same
    // port stopped it with "Address already in use".
    static GIVEN: std::sync::Mutex<Vec<(Ipv4Addr, u16)>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    const FIRST: u16 = 20000;
    if low > FIRST + 1000 {
        let seed =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
                ^ (u64::from(std::process::id()) << 32)
                ^ NEXT.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        let mut x = seed | 1;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let port = FIRST + (x % u64::from(low - FIRST)) as u16;
            if !given.contains(&(ip, port)) && TcpListener::bind((ip, port)).is_ok() {
                given.push((ip, port));
                return port;
            }
        }
    }
    let port = TcpListener::bind((ip, 0)).expect("bind port 0").local_addr().expect("local addr").port();
    given.push((ip, port));
    port
}

/// Kills head processes left by earlier test runs whose test process is gone.
fn sweep_leftovers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = std::fs::create_dir_all(PID_DIR);
        let Ok(rd) = std::fs::read_dir(PID_DIR) else {
            return;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let Some((owner, child)) = name.split_once('-') else {
                continue;
            };
            let (Ok(owner), Ok(child)) = (owner.parse::<i32>(), child.parse::<i32>()) else {
                continue;
            };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let cmd = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmd).contains("clusterware-head") {
                sys::kill(child as u32, Signal::SIGKILL);
            }
            let _ = std::fs::remove_file(e.path());
        }
    });
}

fn is_head_process(pid: u32) -> bool {
    proc_alive(pid)
        && String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default())
            .contains("clusterware-head")
}

/// True while the process exists and is not a zombie.
pub fn proc_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| !r.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// The processes (not zombies) whose command line contains `marker`.
pub fn processes_named(marker: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(marker) && crate::proc_alive(*pid)
        })
        .collect()
}

/// A fresh 127.A.B.0/24 block for one cluster.
pub fn address_block() -> (u8, u8) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let a = 100 + (std::process::id() % 100) as u8;
    (a, (n % 250) as u8 + 1)
}

/// The result of running a CLI.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// A finished command's exit code (-1 for a signal) and output as text.
impl From<std::process::Output> for Out {
    fn from(out: std::process::Output) -> Out {
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl Out {
    /// Stdout, after checking the command succeeded.
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        &self.stdout
    }
    /// Stdout parsed as JSON, after checking success.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }
}

/// Runs one of the admin CLIs with exactly these arguments (and none of the CLIs' environment
/// variables).
pub fn cli(prog: &str, args: &[&str]) -> Out {
    let out = Command::new(bin(prog))
        .args(args)
        .env_remove("CLUSTERWARE_HEAD")
        .env_remove("CLUSTERWARE_TOKEN")
        .env_remove("CLUSTERWARE_CONFIG")
        .output()
        .expect("run CLI");
    out.into()
}

/// One head process.
pub struct Head {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Plain HTTP (`head.port`): what firmware fetches, and health.
    pub port: u16,
    /// HTTPS (`head.tls_port`): the API.
    pub tls_port: u16,
    pub config: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
    /// A head process this harness did not start (`scyld-install` started it): its pid.
    adopted: Option<u32>,
    /// The network namespace the head runs in (network-boot tests), else the machine's own.
    pub netns: Option<String>,
    /// The head program to run, when not this tree's (another release's, [`releases`]).
    pub program: Option<PathBuf>,
}

impl Head {
    /// A head that is not started yet (for harness variants such as [`netns`]).
    pub fn new_for_harness(
        name: String,
        ip: Ipv4Addr,
        (port, tls_port): (u16, u16),
        config: PathBuf,
        dir: PathBuf,
    ) -> Head {
        Head { name, ip, port, tls_port, config, dir, child: None, adopted: None, netns: None, program: None }
    }

    /// The API: `https://IP:TLS_PORT` (checked against [`Head::ca`]).
    pub fn url(&self) -> String {
        format!("https://{}:{}", self.ip, self.tls_port)
    }

    /// What firmware fetches: `http://IP:PORT`.
    pub fn boot_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }

    /// The cluster CA this head wrote into its `tls.dir` (`tls/` beside its base.ini).
    pub fn ca_file(&self) -> PathBuf {
        self.config.parent().expect("config dir").join("tls/ca.pem")
    }

    /// A file holding the `Authorization` header of the harness's admin credential, for curl's
    /// `-H @FILE` (a credential stays off command lines).
    pub fn auth_header_file(&self) -> PathBuf {
        let f = self.dir.join("auth-header");
        std::fs::write(&f, format!("Authorization: Bearer {}\n", admin_token(PASS))).expect("header file");
        f
    }

    /// The cluster CA's certificate (the head writes it when it first starts).
    pub fn ca(&self) -> String {
        std::fs::read_to_string(self.ca_file()).unwrap_or_else(|e| panic!("{}: {e}", self.ca_file().display()))
    }

    /// A client of this head's API without credential, trusting the cluster CA (made where it
    /// is used: inside the head's network namespace if it runs in one).
    pub fn client(&self) -> BlockingClient {
        BlockingClient::new(ClientConfig::new(&self.url()).ca_pem(&self.ca()).timeout_secs(30)).expect("API client")
    }

    /// Takes charge of a head that `scyld-install` started (found by its health answer); it is
    /// killed on drop like the others.
    pub fn adopt(name: &str, ip: Ipv4Addr, port: u16, config: PathBuf, dir: PathBuf) -> Head {
        let base = format!("http://{ip}:{port}");
        let tls_port = clusterware_shared::config::Config::load(&config).expect("the head's base.ini").config.tls_port;
        let mut pid = 0;
        poll_until(&format!("{name} to answer"), Duration::from_secs(60), || {
            pid = api_client(&base).health().ok().filter(|h| h.name == name).map_or(0, |h| h.pid);
            pid != 0
        });
        let _ = std::fs::create_dir_all(PID_DIR);
        let _ = std::fs::write(format!("{PID_DIR}/{}-{pid}", std::process::id()), b"");
        Head {
            name: name.into(),
            ip,
            port,
            tls_port,
            config,
            dir,
            child: None,
            adopted: Some(pid),
            netns: None,
            program: None,
        }
    }

    /// The process id while the head runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id).or(self.adopted)
    }

    pub fn is_running(&mut self) -> bool {
        if let Some(pid) = self.adopted {
            return proc_alive(pid);
        }
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Starts the process (it is not waited for; see [`Head::wait_ready`]).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "head {} already running", self.name);
        sweep_leftovers();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stderr.log"))
            .expect("stderr log");
        let program = self.program.clone().unwrap_or_else(|| bin("clusterware-head"));
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(program);
                c
            }
            None => Command::new(program),
        };
        cmd.arg("--config").arg(&self.config).stdin(Stdio::null()).stdout(out.try_clone().expect("dup")).stderr(out);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn clusterware-head");
        let _ = std::fs::write(format!("{PID_DIR}/{}-{}", std::process::id(), child.id()), b"");
        self.child = Some(child);
    }

    /// Waits until the head answers its health endpoint as serving.
    pub fn wait_ready(&mut self, within: Duration) {
        let base = self.boot_url();
        let deadline = Instant::now() + within;
        loop {
            // A head answers `starting` while its database opens: ready means `serving`.
            let ok =
                netns::run_in(self.netns.as_deref(), || api_client(&base).health().is_ok_and(|h| h.state == "serving"));
            if ok {
                return;
            }
            if !self.is_running() {
                panic!("head {} exited during start-up:\n{}", self.name, self.stderr_tail());
            }
            assert!(
                Instant::now() < deadline,
                "head {} not ready within {within:?}:\n{}",
                self.name,
                self.stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(pid) = self.adopted.take().filter(|p| is_head_process(*p)) {
            // The pid was checked above: not reused after the head exited by itself.
            sys::kill(pid, Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while proc_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit code (an adopted head's is unknown:
    /// 0 once it is gone).
    pub fn stop(&mut self) -> Option<i32> {
        if let Some(pid) = self.adopted.take().filter(|p| is_head_process(*p)) {
            sys::kill(pid, Signal::SIGTERM);
            poll_until(&format!("{} to stop", self.name), Duration::from_secs(20), || !proc_alive(pid));
            return Some(0);
        }
        let mut c = self.child.take()?;
        sys::kill(c.id(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("head {} did not stop within 20 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `etcdctl --endpoints=…` of this head's etcd member: its client socket, in the member's
    /// data dir (root only).
    pub fn etcd_endpoint(&self) -> String {
        let data = self.dir.join("etcd").canonicalize().expect("the head's etcd data dir");
        format!("--endpoints=unix://{}", data.join("client.sock:0").display())
    }

    /// Runs `etcdctl` (Debian package etcd-client) on this head's member, as root: the way an
    /// administrator (or an older release's head) reads and writes the database by hand. Keys
    /// are under `/clusterware/`.
    pub fn etcdctl(&self, args: &[&str]) -> Out {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--dial-timeout=2s", "--command-timeout=5s", &self.etcd_endpoint()])
            .args(args)
            .output()
            .expect("etcdctl (Debian package etcd-client)");
        out.into()
    }

    /// Runs one of the admin CLIs against this head, with this head's configuration.
    pub fn cli(&self, prog: &str, args: &[&str]) -> Out {
        let config = self.config.to_string_lossy();
        let mut all = vec!["--config", &config];
        all.extend_from_slice(args);
        match &self.netns {
            Some(ns) => netns::cli_in(ns, prog, &all),
            None => cli(prog, &all),
        }
    }

    /// The health answer, if the head answers at all (it may be restarting).
    pub fn try_health(&self) -> Option<Value> {
        let base = self.boot_url();
        netns::run_in(self.netns.as_deref(), || {
            api_client(&base).raw("GET", path::HEALTH, None, None).ok().map(|(_, v)| v).filter(Value::is_object)
        })
    }

    /// A raw API call with an optional bearer token: (status, JSON body; a body that is not
    /// JSON comes back as a JSON string). `path` is relative to `/api/v1`.
    pub fn api(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
        let base = self.url();
        netns::run_in(self.netns.as_deref(), || {
            self.client().raw(method, path, token, body).unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
        })
    }

    /// [`Head::api`] on the plain-HTTP port, without credential (what firmware and attackers
    /// without a certificate reach).
    pub fn plain_api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let base = self.boot_url();
        netns::run_in(self.netns.as_deref(), || {
            api_client(&base).raw(method, path, None, body).unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
        })
    }

    /// The URL of a boot file's content on this head's plain-HTTP port (kernels and initramfs
    /// images; no credential needed).
    pub fn content_url(&self, id: &str) -> String {
        format!("{}{}", self.boot_url(), path::full(&path::file_content(id, false)))
    }

    /// A boot file's bytes as this head serves them over HTTPS, to an administrator (the
    /// harness's credential): (status, body; empty on a refusal).
    pub fn content(&self, id: &str) -> (u16, Vec<u8>) {
        let base = self.url();
        netns::run_in(self.netns.as_deref(), || {
            let mut body = Vec::new();
            let c = BlockingClient::new(
                ClientConfig::new(&base).ca_pem(&self.ca()).token(&admin_token(PASS)).timeout_secs(30),
            )
            .expect("API client");
            match c.download_file(id, false, &mut body, &mut |_, _| {}) {
                Ok(_) => (200, body),
                Err(e) => (e.status().unwrap_or_else(|| panic!("GET content {id} from {base}: {e}")), Vec::new()),
            }
        })
    }

    /// `GET /metrics` over HTTPS with `token` as the bearer credential (inside the head's
    /// network namespace if it runs in one): (status, body as text).
    pub fn metrics(&self, token: Option<&str>) -> (u16, String) {
        netns::run_in(self.netns.as_deref(), || {
            let (status, _, body) = self.https_get("/metrics", token, "");
            (status, String::from_utf8_lossy(&body).into_owned())
        })
    }

    /// One raw GET over HTTPS (checked against the cluster CA; `Connection: close`), with
    /// `token` as the bearer credential and `extra` header lines (each ending in CRLF):
    /// (status, response head, body). Called where the head is reachable (see [`netns::run_in`]).
    pub fn https_get(&self, path: &str, token: Option<&str>, extra: &str) -> (u16, String, Vec<u8>) {
        use std::io::Read;
        let tcp = std::net::TcpStream::connect((self.ip, self.tls_port)).expect("connect to the head");
        tcp.set_read_timeout(Some(Duration::from_secs(60))).expect("read timeout");
        let mut s = tls_stream(tcp, self);
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}{extra}\r\n").expect("send");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        split_response(&buf)
    }

    /// Waits (up to 10 s) until this head's log file (`log/head_<name>.log`) satisfies `f`, and
    /// returns it. The head writes its log from a background thread, so a line can land a moment
    /// after the answer whose work it records.
    pub fn wait_log(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let path = self.dir.join(format!("log/head_{}.log", self.name));
        let mut log = String::new();
        poll_until(what, Duration::from_secs(10), || {
            log = std::fs::read_to_string(&path).unwrap_or_default();
            f(&log)
        });
        log
    }

    /// The last lines of this head's stderr and etcd logs.
    pub fn stderr_tail(&self) -> String {
        let mut s = String::new();
        for f in ["stderr.log", &format!("log/etcd_{}.log", self.name)] {
            let text = std::fs::read_to_string(self.dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = lines[lines.len().saturating_sub(25)..].join("\n");
            s.push_str(&format!("--- {} ({f}) ---\n{tail}\n", self.name));
        }
        s
    }
}

impl Drop for Head {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A raw HTTP/1 answer as (status, head, body).
pub fn split_response(buf: &[u8]) -> (u16, String, Vec<u8>) {
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
    let head = String::from_utf8_lossy(&buf[..at]).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
    (status, head, buf[at + 4..].to_vec())
}

/// A client of the head at a plain `http://` base without credential, 30 s per request (made
/// where it is used: inside a network namespace for heads that run in one). For the API see
/// [`Head::client`].
pub fn api_client(base: &str) -> BlockingClient {
    BlockingClient::new(ClientConfig::new(base).timeout_secs(30)).expect("API client")
}

/// One cluster of heads.
pub struct Cluster {
    pub heads: Vec<Head>,
    pub token: String,
    dir: TempDir,
}

/// Which database the heads use.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Etcd,
}

impl Cluster {
    /// `n` heads (1 to 5) forming one etcd cluster, started and ready.
    pub fn etcd(n: usize) -> Cluster {
        assert!((1..=5).contains(&n));
        Self::start(Backend::Etcd, n, "")
    }

    /// One solo head on the embedded store, started and ready.
    pub fn solo() -> Cluster {
        Self::start(Backend::Embedded, 1, "")
    }

    /// Writes the configurations, starts every head, waits for all to answer. `extra` is
    /// appended to every head's base.ini.
    pub fn start(backend: Backend, n: usize, extra: &str) -> Cluster {
        let mut c = Self::configure(backend, n, extra);
        c.start_all();
        c
    }

    /// As [`start`](Cluster::start), with the heads' timings as installed (`head.lease_ttl`,
    /// `local_files.audit_interval` and `local_files.sweep_interval` at their defaults) instead
    /// of the harness's short ones: benchmarks measure what users run.
    pub fn start_as_installed(backend: Backend, n: usize, extra: &str) -> Cluster {
        let mut c = Self::configure_timed(backend, n, extra, false);
        c.start_all();
        c
    }

    /// Writes the configurations only.
    pub fn configure(backend: Backend, n: usize, extra: &str) -> Cluster {
        Self::configure_timed(backend, n, extra, true)
    }

    /// Writes the configurations; `short` gives the heads the harness's short lease and storage
    /// intervals, so that tests need not wait out the defaults.
    fn configure_timed(backend: Backend, n: usize, extra: &str, short: bool) -> Cluster {
        let dir = TempDir::with_prefix("cw-harness-").expect("temp dir");
        let (a, b) = address_block();
        let mut specs = Vec::new();
        for i in 0..n {
            let ip = Ipv4Addr::new(127, a, b, 11 + i as u8);
            specs.push((format!("head{}", i + 1), ip, (free_port(ip), free_port(ip)), free_port(ip)));
        }
        let initial: Vec<String> =
            specs.iter().map(|(name, ip, _, peer)| format!("{name}=https://{ip}:{peer}")).collect();
        // Heads created together share one CA, as the installer's joins would give them.
        let ca = (backend == Backend::Etcd && n > 1).then(|| clusterware_shared::pki::Ca::create().expect("CA"));
        let mut heads = Vec::new();
        for (name, ip, (port, tls_port), peer) in specs {
            let hdir = dir.path().join(&name);
            std::fs::create_dir_all(&hdir).expect("head dir");
            let mut ini = format!(
                "# written by the test harness\ndatabase.admin_pass = {PASS}\nhead.name = {name}\nhead.ip = {ip}\nhead.bind = {ip}\nhead.port = {port}\nhead.tls_port = {tls_port}\nlogging.dir = {d}/log\nlocal_files.path = {d}/storage\n",
                d = hdir.display()
            );
            if short {
                ini.push_str(&format!(
                    "head.lease_ttl = {LEASE_TTL}\nlocal_files.audit_interval = 2\nlocal_files.sweep_interval = 1\n"
                ));
            }
            match backend {
                Backend::Embedded => ini.push_str(&format!("database.type = embedded\ndatabase.path = {}/db/cluster.redb\n", hdir.display())),
                Backend::Etcd => ini.push_str(&format!(
                    "database.type = etcd\ndatabase.data_dir = {d}/etcd\ndatabase.peer_port = {peer}\ndatabase.initial_cluster = {ic}\ndatabase.cluster_token = harness-{a}-{b}\n",
                    d = hdir.display(),
                    ic = initial.join(",")
                )),
            }
            ini.push_str(extra);
            if let Some(ca) = &ca {
                ca.write(&hdir.join("tls")).expect("CA files");
            }
            let config = hdir.join("base.ini");
            let mut f = std::fs::File::create(&config).expect("write base.ini");
            f.write_all(ini.as_bytes()).expect("write base.ini");
            std::fs::set_permissions(&config, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
            heads.push(Head {
                name,
                ip,
                port,
                tls_port,
                config,
                dir: hdir,
                child: None,
                adopted: None,
                netns: None,
                program: None,
            });
        }
        Cluster { heads, token: admin_token(PASS), dir }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A cluster from heads configured elsewhere (see [`netns`]).
    pub fn from_parts(heads: Vec<Head>, dir: TempDir) -> Cluster {
        Cluster { heads, token: admin_token(PASS), dir }
    }

    /// Starts every head and waits until all answer.
    pub fn start_all(&mut self) {
        for h in &mut self.heads {
            h.start();
        }
        for h in &mut self.heads {
            h.wait_ready(Duration::from_secs(60));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for h in &self.heads {
                eprintln!("{}", h.stderr_tail());
            }
        }
        for h in &mut self.heads {
            h.kill9();
        }
    }
}

/// Incompressible bytes from a seed (xorshift).
pub fn pattern(bytes: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(bytes + 8);
    while v.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(bytes);
    v
}

/// A gzip'd newc root image of `files` files of `file_kib` KiB each that do not compress, with
/// an `/sbin/init`.
pub fn root_image(files: u64, file_kib: usize) -> Vec<u8> {
    use clusterware_shared::cpio::Entry;
    let mut e = std::collections::BTreeMap::new();
    e.insert("sbin".to_string(), Entry::Dir(0o755));
    e.insert("sbin/init".to_string(), Entry::File { data: b"#!/bin/sh\n".to_vec(), mode: 0o755 });
    for i in 0..files {
        e.insert(format!("usr/lib/f{i:05}"), Entry::File { data: pattern(file_kib << 10, i + 7), mode: 0o644 });
    }
    clusterware_shared::cpio::gzip(&clusterware_shared::cpio::write(&e), 1)
}

impl Cluster {
    /// What a boot storm boots: image `stormImage` and boot config `storm` (the cluster default)
    /// from the local files `kernel`, `initramfs` and `image`, and `nodes` nodes from `mac` and
    /// `ip` with `attrs`; returns once every head holds a verified copy of every file.
    pub fn storm_config(&self, files: [&Path; 3], nodes: u64, mac: &str, ip: &str, attrs: &[&str]) {
        let h = &self.heads[0];
        let p = |f: &Path| f.display().to_string();
        h.cli("scyld-imgctl", &["create", "--name", "stormImage", "--file", &p(files[2])]).ok();
        let (k, i) = (p(files[0]), p(files[1]));
        let create = ["create", "--name", "storm", "--kernel", &k, "--initramfs", &i, "--image", "stormImage"];
        h.cli("scyld-bootctl", &create).ok();
        h.cli("scyld-bootctl", &["default", "storm"]).ok();
        let (count, mac, ip) = (nodes.to_string(), format!("mac={mac}"), format!("ip={ip}"));
        let mut args = vec!["create", "--count", &count, &mac, &ip];
        args.extend_from_slice(attrs);
        h.cli("scyld-nodectl", &args).ok();
        // The uploads' minimum is 2 copies: the others come in the background.
        poll_until("every head holds the boot files", Duration::from_secs(120), || {
            let (code, v) = h.api("GET", "/files", Some(&self.token), None);
            let copies = v["copies"].as_object().cloned().unwrap_or_default();
            code == 200
                && copies.len() == 3
                && copies.values().all(|c| c["copies"].as_u64() == Some(self.heads.len() as u64))
        });
    }
}

/// A simulated fleet: `clusterware-node sim` as a child process, killed on drop.
pub struct Sim {
    child: Option<Child>,
    pub dir: PathBuf,
    _tmp: TempDir,
}

impl Sim {
    /// Starts `nodes` simulated nodes with MACs from `mac_start` and addresses from `ip_start`
    /// (which must be the nodes' registered IPs), talking to `heads` (parent first). With `enroll`
    /// (a head of the cluster), they trust its cluster CA and enroll with tokens it makes for
    /// every node, as network-booted nodes do with their boot scripts'.
    pub fn start(
        heads: &[String],
        enroll: Option<&Head>,
        nodes: u32,
        ip_start: &str,
        mac_start: &str,
        extra: &[&str],
    ) -> Sim {
        Self::spawn(&["--heads", &heads.join(",")], enroll, nodes, ip_start, mac_start, extra)
    }

    /// A boot storm: every node boots at once from `heads` (their plain-HTTP boot URLs, node i
    /// starting with the i-th) as a network-booted node does after DHCP, then runs its agent.
    pub fn storm(heads: &[&Head], nodes: u32, ip_start: &str, mac_start: &str, extra: &[&str]) -> Sim {
        let urls: Vec<String> = heads.iter().map(|h| h.boot_url()).collect();
        Self::storm_urls(&urls, nodes, ip_start, mac_start, extra)
    }

    /// [`Sim::storm`] from any servers' boot URLs (`http://IP:PORT`).
    pub fn storm_urls(urls: &[String], nodes: u32, ip_start: &str, mac_start: &str, extra: &[&str]) -> Sim {
        Self::spawn(&["--boot", &urls.join(","), "--ramp-secs", "0"], None, nodes, ip_start, mac_start, extra)
    }

    /// [`Sim::start`] with another `clusterware-node` program (another release's agent).
    pub fn start_program(
        program: &Path,
        heads: &[String],
        enroll: Option<&Head>,
        nodes: u32,
        (ip_start, mac_start): (&str, &str),
        extra: &[&str],
    ) -> Sim {
        Self::spawn_program(program, &["--heads", &heads.join(",")], enroll, nodes, ip_start, mac_start, extra)
    }

    fn spawn(how: &[&str], enroll: Option<&Head>, nodes: u32, ip_start: &str, mac_start: &str, extra: &[&str]) -> Sim {
        Self::spawn_program(&bin("clusterware-node"), how, enroll, nodes, ip_start, mac_start, extra)
    }

    fn spawn_program(
        program: &Path,
        how: &[&str],
        enroll: Option<&Head>,
        nodes: u32,
        ip_start: &str,
        mac_start: &str,
        extra: &[&str],
    ) -> Sim {
        let tmp = TempDir::with_prefix_in("cw-sim-", "/dev/shm")
            .or_else(|_| TempDir::with_prefix("cw-sim-"))
            .expect("sim dir");
        let dir = tmp.path().to_path_buf();
        let mut tls: Vec<std::ffi::OsString> = Vec::new();
        if let Some(h) = enroll {
            let tokens = dir.join("tokens.json");
            std::fs::write(&tokens, h.cli("scyld-nodectl", &["-a", "enroll", "--json"]).ok()).expect("tokens file");
            tls.extend(["--ca-file".into(), h.ca_file().into(), "--enroll-file".into(), tokens.into()]);
        }
        let out = std::fs::File::create(dir.join("sim.log")).expect("sim log");
        let mut cmd = Command::new(program);
        cmd.arg("sim")
            .arg("--nodes")
            .arg(nodes.to_string())
            .args(how)
            .arg("--ip-start")
            .arg(ip_start)
            .arg("--mac-start")
            .arg(mac_start)
            .arg("--dir")
            .arg(&dir)
            .args(&tls)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn clusterware-node sim");
        Sim { child: Some(child), dir, _tmp: tmp }
    }

    /// The latest `summary.json` (Null until the first one is written).
    pub fn summary(&self) -> Value {
        std::fs::read_to_string(self.dir.join("summary.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null)
    }

    /// A simulated node's file (`heads`, `hosts`, `authorized_keys`).
    pub fn node_file(&self, mac: &str, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(mac.replace(':', "")).join(file)).unwrap_or_default()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The simulator's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sim.log")).unwrap_or_default()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The MAC `n` places after `start`, as text.
pub fn mac_plus(start: &str, n: u64) -> String {
    let hex: String = start.chars().filter(|c| *c != ':').collect();
    let v = u64::from_str_radix(&hex, 16).expect("MAC") + n;
    let b = v.to_be_bytes();
    b[2..].iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

impl Head {
    /// SIGSTOP (true) or SIGCONT (false): a hung head.
    pub fn freeze(&self, stop: bool) {
        if let Some(pid) = self.pid() {
            sys::kill(pid, if stop { Signal::SIGSTOP } else { Signal::SIGCONT });
        }
    }
}

/// A simulated BMC: OpenIPMI's `ipmi_sim` on a loopback address, its chassis power wired to a
/// state file (`power`: `on`/`off`; `boot`: the next boot device). Killed on drop.
pub struct Bmc {
    child: Option<Child>,
    pub ip: String,
    pub port: u16,
    dir: TempDir,
}

impl Bmc {
    /// Starts a BMC with one admin user and waits until it answers.
    pub fn start(ip: &str, user: &str, pass: &str) -> Bmc {
        let dir = TempDir::with_prefix("cw-bmc-").expect("bmc dir");
        let d = dir.path();
        let port = std::net::UdpSocket::bind((ip, 0)).expect("udp port").local_addr().expect("addr").port();
        std::fs::create_dir_all(d.join("state")).expect("state dir");
        let script = d.join("chassis.sh");
        std::fs::write(
            &script,
            format!(
                r#"#!/bin/sh
# ipmi_sim chassis control: "set power 1", "set boot pxe", "get power", ...
d={d}
op=$1; shift
case "$op" in
  get) for n in "$@"; do
         case $n in
           power) if [ "$(cat $d/power 2>/dev/null)" = on ]; then echo power:1; else echo power:0; fi ;;
           boot) echo "boot:$(cat $d/boot 2>/dev/null || echo default)" ;;
         esac
       done ;;
  set) while [ $# -ge 2 ]; do
         case $1 in
           power) if [ "$2" = 1 ]; then echo on > $d/power; else echo off > $d/power; fi ;;
           reset) echo reset >> $d/resets ;;
           boot) echo "$2" > $d/boot ;;
           shutdown) echo off > $d/power ;;
         esac
         shift 2
       done ;;
esac
exit 0
"#,
                d = d.display()
            ),
        )
        .expect("chassis script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        std::fs::write(d.join("power"), "off\n").expect("power file");
        std::fs::write(
            d.join("lan.conf"),
            format!(
                "name \"bmc\"\nset_working_mc 0x20\n  startlan 1\n    addr {ip} {port}\n    priv_limit admin\n    allowed_auths_callback none md2 md5 straight\n    allowed_auths_user none md2 md5 straight\n    allowed_auths_operator none md2 md5 straight\n    allowed_auths_admin none md2 md5 straight\n    guid a123456789abcdefa123456789abcdef\n  endlan\n  user 2 true \"{user}\" \"{pass}\" admin 10 none md2 md5 straight\n  chassis_control \"{}\"\n",
                script.display()
            ),
        )
        .expect("lan.conf");
        std::fs::write(
            d.join("bmc.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
        )
        .expect("emu");
        let log = std::fs::File::create(d.join("ipmi_sim.log")).expect("log");
        let mut cmd = Command::new("ipmi_sim");
        cmd.arg("-c")
            .arg(d.join("lan.conf"))
            .arg("-f")
            .arg(d.join("bmc.emu"))
            .arg("-s")
            .arg(d.join("state"))
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("ipmi_sim (Debian package openipmi; make test installs it)");
        let bmc = Bmc { child: Some(child), ip: ip.to_string(), port, dir };
        poll_until("ipmi_sim answering", Duration::from_secs(10), || {
            Command::new("ipmitool")
                .args([
                    "-I",
                    "lanplus",
                    "-C",
                    "3",
                    "-H",
                    ip,
                    "-p",
                    &port.to_string(),
                    "-U",
                    user,
                    "-E",
                    "-N",
                    "1",
                    "-R",
                    "1",
                ])
                .args(["chassis", "power", "status"])
                .env("IPMI_PASSWORD", pass)
                .output()
                .is_ok_and(|o| o.status.success())
        });
        bmc
    }

    pub fn addr(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    /// `on` or `off`.
    pub fn power(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("power")).unwrap_or_default().trim().to_string()
    }

    /// The next boot device the BMC was given (`pxe`, `disk`, …; empty if none).
    pub fn boot(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("boot")).unwrap_or_default().trim().to_string()
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs one of the admin CLIs with `input` on its stdin.
pub fn cli_with_stdin(prog: &str, args: &[&str], input: &str) -> Out {
    let mut child = Command::new(bin(prog))
        .args(args)
        .env_remove("CLUSTERWARE_HEAD")
        .env_remove("CLUSTERWARE_TOKEN")
        .env_remove("CLUSTERWARE_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run CLI");
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    let out = child.wait_with_output().expect("CLI output");
    out.into()
}

/// A TLS stream over a TCP connection already made to `h`'s HTTPS port, checked against the
/// cluster CA (for tests that speak raw HTTP to the API).
pub type TlsStream = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// Wraps `tcp` (connected to `h.tls_port`) in TLS trusting `h`'s cluster CA; the handshake
/// happens on the first read or write.
pub fn tls_stream(tcp: std::net::TcpStream, h: &Head) -> TlsStream {
    tls_stream_as(tcp, h, None)
}

/// [`tls_stream`] presenting a client certificate and key (PEM), as an enrolled node does.
pub fn tls_stream_as(tcp: std::net::TcpStream, h: &Head, identity: Option<(&str, &str)>) -> TlsStream {
    tls_stream_to(tcp, h.ip, &h.ca(), identity)
}

/// A TLS stream over `tcp` to the server at `ip`, trusting only `ca_pem`, with a client
/// certificate and key (PEM) if given; the handshake happens on the first read or write.
pub fn tls_stream_to(
    tcp: std::net::TcpStream,
    ip: Ipv4Addr,
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> TlsStream {
    tls_stream_with(tcp, ip, &tls_client_config(ca_pem, identity))
}

/// A client configuration trusting only `ca_pem`, presenting a certificate and key (PEM) if
/// given. Streams made with the same one resume its sessions.
pub fn tls_client_config(ca_pem: &str, identity: Option<(&str, &str)>) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let cfg =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_root_certificates(roots);
    std::sync::Arc::new(match identity {
        None => cfg.with_no_client_auth(),
        Some((cert, key)) => {
            let chain =
                CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().expect("certificate");
            let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
            cfg.with_client_auth_cert(chain, key).expect("client certificate")
        }
    })
}

/// A TLS stream over `tcp` to the server at `ip` with the client configuration `cfg`.
pub fn tls_stream_with(
    tcp: std::net::TcpStream,
    ip: Ipv4Addr,
    cfg: &std::sync::Arc<rustls::ClientConfig>,
) -> TlsStream {
    let name = rustls_pki_types::ServerName::from(std::net::IpAddr::V4(ip));
    let conn = rustls::ClientConnection::new(cfg.clone(), name).expect("TLS client");
    rustls::StreamOwned::new(conn, tcp)
}

/// A power command's JSON answer as (name, outcome, power state or else message) per node.
pub fn power_results(v: &Value) -> Vec<(String, String, String)> {
    v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r["outcome"].as_str().unwrap_or_default().to_string(),
                r["power"].as_str().map_or_else(|| r["message"].as_str().unwrap_or("").to_string(), str::to_string),
            )
        })
        .collect()
}
