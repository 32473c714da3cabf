//! This head's own etcd member: started from the distribution's `etcd` binary with its data dir
//! under the ClusterWare tree, and supervised (restarted with capped backoff when it exits).
//!
//! The member listens for clients on a unix socket inside its data dir (mode 0700), so that only
//! the head (root) reaches the database: no TCP client port, nothing another user of the machine
//! can connect to. It listens for peers on the head's cluster address, over TLS with the head's
//! certificate, and accepts only peers whose certificate the cluster CA issued. It is started with
//! `PR_SET_PDEATHSIG`, so it never outlives a head daemon that was killed: the restarted daemon
//! starts it again.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The client socket's name in the data dir.
const SOCKET: &str = "client.sock:0";
/// Longest path of a unix socket (`sun_path`, with its terminating NUL).
const SOCKET_PATH_MAX: usize = 107;

/// Everything needed to start the member.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    pub binary: PathBuf,
    pub name: String,
    pub data_dir: PathBuf,
    pub peer_url: String,
    /// `name=peer-url,…`
    pub initial_cluster: String,
    /// `new` or `existing`
    pub initial_state: String,
    pub token: String,
    pub max_txn_ops: usize,
    /// Where the member's own output goes.
    pub log_file: PathBuf,
    /// The head's `tls.dir`: the member talks to its peers over TLS with the head's certificate
    /// and accepts only peers with a certificate from the cluster CA.
    pub tls_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    #[error(
        "the member's socket {} is longer than a unix socket path can be ({SOCKET_PATH_MAX} bytes): choose a shorter database.data_dir",
        .0.display()
    )]
    SocketPath(PathBuf),
    #[error(
        "etcd program {0:?} not found (install Debian's etcd-server package, or set database.etcd_binary in base.ini)"
    )]
    NotFound(PathBuf),
    #[error("cannot prepare {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {}: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Finds a program: a path with a `/` as is, otherwise on `PATH`.
pub fn find_binary(p: &Path) -> Result<PathBuf, MemberError> {
    if p.as_os_str().to_string_lossy().contains('/') {
        return if p.is_file() { Ok(p.to_path_buf()) } else { Err(MemberError::NotFound(p.to_path_buf())) };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .ok_or_else(|| MemberError::NotFound(p.to_path_buf()))
}

/// The client socket of the member whose data dir is `data_dir` (see [`MemberSpec::client_url`]).
pub fn client_url_of(data_dir: &Path) -> String {
    format!("{}{}", crate::core::db::etcd::UNIX_PREFIX, data_dir.join(SOCKET).display())
}

impl MemberSpec {
    /// The member's client socket: etcd 3.4 takes a unix URL only in the form `unix://HOST:PORT`,
    /// which it makes a socket of that name in its working directory, the data dir.
    pub fn client_url(&self) -> String {
        client_url_of(&self.data_dir)
    }

    fn args(&self) -> Vec<String> {
        let client = format!("{}{SOCKET}", crate::core::db::etcd::UNIX_PREFIX);
        vec![
            format!("--name={}", self.name),
            format!("--data-dir={}", self.data_dir.display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={}", self.peer_url),
            format!("--initial-advertise-peer-urls={}", self.peer_url),
            format!("--initial-cluster={}", self.initial_cluster),
            format!("--initial-cluster-state={}", self.initial_state),
            format!("--initial-cluster-token={}", self.token),
            format!("--max-txn-ops={}", self.max_txn_ops),
            format!("--peer-cert-file={}", self.tls_dir.join(clusterware_shared::pki::HEAD_CERT).display()),
            format!("--peer-key-file={}", self.tls_dir.join(clusterware_shared::pki::HEAD_KEY).display()),
            format!("--peer-trusted-ca-file={}", self.tls_dir.join(clusterware_shared::pki::CA_CERT).display()),
            "--peer-client-cert-auth".into(),
            // Bulk node creation sends large transactions.
            "--max-request-bytes=16777216".into(),
            // Keep an hour of history, so that watches can resume after a disconnection.
            "--auto-compaction-mode=periodic".into(),
            "--auto-compaction-retention=1h".into(),
            "--logger=zap".into(),
            "--log-outputs=stderr".into(),
        ]
    }
}

/// A running, supervised member. Stopping (or dropping) it ends the process.
pub struct MemberHandle {
    spec: MemberSpec,
    stop: Arc<AtomicBool>,
    pid: Arc<Mutex<Option<i32>>>,
    thread: Option<JoinHandle<()>>,
}

impl MemberHandle {
    /// Starts the member and its supervisor thread. The supervisor is a plain thread that lives
    /// as long as the handle: the parent-death signal is tied to the thread that spawned the
    /// child, so it must not be a short-lived worker thread.
    pub fn start(mut spec: MemberSpec) -> Result<MemberHandle, MemberError> {
        spec.binary = find_binary(&spec.binary)?;
        std::fs::create_dir_all(&spec.data_dir)
            .map_err(|source| MemberError::Io { path: spec.data_dir.clone(), source })?;
        std::fs::set_permissions(&spec.data_dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(|source| MemberError::Io { path: spec.data_dir.clone(), source })?;
        // The member runs in its data dir (where it makes its socket): the path must be absolute.
        spec.data_dir =
            spec.data_dir.canonicalize().map_err(|source| MemberError::Io { path: spec.data_dir.clone(), source })?;
        let socket = spec.data_dir.join(SOCKET);
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(MemberError::SocketPath(socket));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let pid = Arc::new(Mutex::new(None));
        // Start once here so that a binary that cannot run is an error of the caller.
        let first = spawn(&spec)?;
        *pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(first.id() as i32);
        let (s2, p2, spec2) = (stop.clone(), pid.clone(), spec.clone());
        let thread = std::thread::Builder::new()
            .name("etcd-supervisor".into())
            .spawn(move || supervise(spec2, first, s2, p2))
            .map_err(|source| MemberError::Spawn { binary: spec.binary.clone(), source })?;
        Ok(MemberHandle { spec, stop, pid, thread: Some(thread) })
    }

    pub fn client_url(&self) -> String {
        self.spec.client_url()
    }

    pub fn spec(&self) -> &MemberSpec {
        &self.spec
    }

    /// Stops the member: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut signalled = false;
        loop {
            let current = *self.pid.lock().unwrap_or_else(|p| p.into_inner());
            let Some(pid) = current else { break };
            if !signalled {
                // A pid we spawned and have not reaped yet.
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                signalled = true;
            }
            if Instant::now() > deadline {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MemberHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn(spec: &MemberSpec) -> Result<std::process::Child, MemberError> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log_file)
        .map_err(|source| MemberError::Io { path: spec.log_file.clone(), source })?;
    let log2 = log.try_clone().map_err(|source| MemberError::Io { path: spec.log_file.clone(), source })?;
    // A member that was killed leaves its socket behind, and etcd will not bind over it.
    let socket = spec.data_dir.join(SOCKET);
    if std::fs::symlink_metadata(&socket).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
        std::fs::remove_file(&socket).map_err(|source| MemberError::Io { path: socket.clone(), source })?;
    }
    let mut cmd = Command::new(&spec.binary);
    cmd.args(spec.args()).current_dir(&spec.data_dir).stdin(Stdio::null()).stdout(log).stderr(log2);
    crate::core::sys::die_with_parent(&mut cmd);
    cmd.spawn().map_err(|source| MemberError::Spawn { binary: spec.binary.clone(), source })
}

fn supervise(spec: MemberSpec, first: std::process::Child, stop: Arc<AtomicBool>, pid: Arc<Mutex<Option<i32>>>) {
    let set_pid = |v: Option<i32>| *pid.lock().unwrap_or_else(|p| p.into_inner()) = v;
    // Sleeps in short steps; false when asked to stop meanwhile.
    let pause = |d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !stop.load(Ordering::SeqCst)
    };
    let mut backoff = Duration::from_millis(500);
    let mut child = Some(first);
    loop {
        let mut c = match child.take() {
            Some(c) => c,
            None => match spawn(&spec) {
                Ok(c) => {
                    set_pid(Some(c.id() as i32));
                    c
                }
                Err(e) => {
                    tracing::error!(error = %e, retry_secs = backoff.as_secs_f64(), "cannot restart etcd member");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    if !pause(backoff) {
                        return;
                    }
                    continue;
                }
            },
        };
        let started = Instant::now();
        let status = c.wait();
        set_pid(None);
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        tracing::error!(%status, log = %spec.log_file.display(), retry_secs = backoff.as_secs_f64(), "etcd member exited; restarting");
        if !pause(backoff) {
            return;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
