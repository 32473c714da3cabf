//! `clusterware-node`: the compute-node agent.

mod boot;
mod client;
mod config;
mod facts;
mod image;
mod init;
mod node;
mod sim;
mod sys;

use clap::Parser;
use client::{Endpoint, HeadClient};
use clusterware_node::args::{Cli, Cmd};
use clusterware_shared::agent::HeadEntry;
use clusterware_shared::ids::MacAddr;
use clusterware_shared::outln;
use config::NodeConfig;
use node::{Agent, AgentState, Files, NoObserver, Settings, Source};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// mimalloc rather than glibc's allocator for the simulator (the workspace build): its thousands
/// of pushes a second spent a fifth of its CPU in glibc's malloc and free. The static agent of
/// `make agent` keeps glibc's (built without the feature): one node's agent allocates little, and
/// mimalloc's heaps tripled its memory (9.2 MiB RSS against 3.2, its target 8).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("clusterware-node: error: {msg}");
    ExitCode::FAILURE
}

/// A real node's status source.
struct Machine {
    mac: MacAddr,
    boot_id: String,
    phase: clusterware_shared::agent::Phase,
}

impl Source for Machine {
    fn report(&self, first: bool) -> clusterware_shared::agent::StatusReport {
        facts::report(self.mac, &self.boot_id, self.phase, first)
    }
}

/// Everything a real node's agent needs, from the configuration and the kernel command line.
fn prepare(cli_config: Option<&PathBuf>) -> Result<(NodeConfig, Vec<HeadEntry>, MacAddr, HeadClient), String> {
    let path = cli_config.cloned().unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
    let cfg = NodeConfig::load(&path, cli_config.is_some())?;
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let (boot_heads, boot_mac) = config::from_cmdline(&cmdline).map_err(|e| format!("kernel command line: {e}"))?;
    let file_heads = match std::fs::read_to_string(&cfg.heads_file) {
        Ok(t) => node::read_heads_file(&t).map_err(|e| format!("{}: {e}", cfg.heads_file.display()))?,
        Err(_) => Vec::new(),
    };
    let heads = if !boot_heads.is_empty() {
        boot_heads
    } else if !file_heads.is_empty() {
        file_heads
    } else {
        cfg.heads.clone()
    };
    if heads.is_empty() {
        return Err(format!(
            "no head known: no cw.parent=/cw.heads= on the kernel command line, no {}, no heads= in {}",
            cfg.heads_file.display(),
            path.display()
        ));
    }
    let mac = match cfg.mac.or(boot_mac) {
        Some(m) => m,
        None => {
            let ip = Endpoint::parse(&heads[0].url)?.ip();
            ip.and_then(facts::mac_towards).ok_or_else(|| {
                format!(
                    "cannot tell this node's boot MAC (no route to {}); set mac= in the configuration",
                    heads[0].url
                )
            })?
        }
    };
    let tls = node_tls(&cfg, true)?;
    Ok((cfg, heads, mac, HeadClient::new(None, tls)))
}

/// The CA (a network boot leaves it at `clusterware_shared::agent::CA_FILE`, unless `ca_file` is
/// set) and, with `identity`, the node's certificate and key from enrollment when it has them.
fn node_tls(cfg: &NodeConfig, identity: bool) -> Result<Option<Arc<tokio_rustls::rustls::ClientConfig>>, String> {
    let default_ca = std::path::Path::new(clusterware_shared::agent::CA_FILE);
    let Some(ca_file) = cfg.ca_file.clone().or_else(|| default_ca.exists().then(|| default_ca.to_path_buf())) else {
        return Ok(None);
    };
    let ca = std::fs::read(&ca_file).map_err(|e| format!("cannot read CA file {}: {e}", ca_file.display()))?;
    let pair = match (identity, std::fs::read(&cfg.cert_file), std::fs::read(&cfg.key_file)) {
        (true, Ok(c), Ok(k)) => Some((c, k)),
        _ => None,
    };
    client::tls_config_pem(&ca, pair.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())))
        .map(Some)
        .map_err(|e| format!("{}: {e}", ca_file.display()))
}

fn make_agent(cli_config: Option<&PathBuf>, quiet: bool) -> Result<(Agent, NodeConfig), String> {
    let (cfg, heads, mac, client) = prepare(cli_config)?;
    let files = Files {
        heads: Some(cfg.heads_file.clone()),
        hosts: Some(cfg.hosts_file.clone()),
        keys: Some(cfg.authorized_keys.clone()),
        state: Some(cfg.state_file.clone()),
    };
    let settings =
        Settings { push_timeout: cfg.push_timeout, status_secs: cfg.status_secs, quiet, ..Settings::default() };
    let source = Arc::new(Machine { mac, boot_id: facts::boot_id(), phase: cfg.phase });
    let agent = Agent::new(mac, heads, client, files, source, Arc::new(NoObserver), settings)?;
    Ok((agent, cfg))
}

/// `clusterware-node enroll`: trades a token from `scyld-nodectl enroll` for this node's
/// certificate and key, written to `cert_file` and `key_file` (mode 0600).
async fn enroll_cmd(cli_config: Option<&PathBuf>, token_file: &std::path::Path) -> Result<String, String> {
    let (cfg, heads, mac, _) = prepare(cli_config)?;
    let token = if token_file == std::path::Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map_err(|e| format!("standard input: {e}"))?;
        s
    } else {
        std::fs::read_to_string(token_file).map_err(|e| format!("cannot read {}: {e}", token_file.display()))?
    };
    let token = token.lines().next().unwrap_or_default().trim().to_string();
    let tls = node_tls(&cfg, false)?.ok_or("no cluster CA: set ca_file in the configuration (a head's tls/ca.pem)")?;
    let mut errors = Vec::new();
    for h in &heads {
        let ep = client::Endpoint::parse(&h.url)?;
        let mut c = HeadClient::new(None, Some(tls.clone()));
        match client::enroll(&mut c, &ep, &mac, &token, client::ENROLL_LIMIT).await {
            Ok(e) => {
                use std::os::unix::fs::OpenOptionsExt;
                for (path, body, mode) in [(&cfg.key_file, &e.key_pem, 0o600), (&cfg.cert_file, &e.cert_pem, 0o644)] {
                    if let Some(d) = path.parent() {
                        std::fs::create_dir_all(d).map_err(|err| format!("{}: {err}", d.display()))?;
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .mode(mode)
                        .open(path)
                        .map_err(|err| format!("{}: {err}", path.display()))?;
                    std::io::Write::write_all(&mut f, body.as_bytes())
                        .map_err(|err| format!("{}: {err}", path.display()))?;
                }
                return Ok(format!(
                    "enrolled with {}: certificate in {}, key in {} (restart the clusterware-node service to use it)",
                    ep.url,
                    cfg.cert_file.display(),
                    cfg.key_file.display()
                ));
            }
            Err(e) => errors.push(format!("{}: {e}", ep.url)),
        }
    }
    Err(format!("no head enrolled this node: {}", errors.join("; ")))
}

/// The tokens of `scyld-nodectl enroll --json`, by MAC.
fn read_tokens(path: &std::path::Path) -> Result<std::collections::HashMap<MacAddr, String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--enroll-file {}: {e}", path.display()))?;
    let t: clusterware_shared::agent::EnrollTokens =
        serde_json::from_str(&text).map_err(|e| format!("--enroll-file {}: {e}", path.display()))?;
    Ok(t.tokens.into_iter().map(|e| (e.mac, e.token)).collect())
}

fn stop_on_signals(rt: &tokio::runtime::Runtime) -> Result<watch::Receiver<bool>, String> {
    let (tx, rx) = watch::channel(false);
    let _g = rt.enter();
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("cannot install signal handlers: {e}"))?;
    rt.spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, String> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    }
    .map_err(|e| format!("cannot start the runtime: {e}"))
}

fn print_state(s: &AgentState, json: bool) {
    if json {
        outln!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    let parent = s.parent.as_ref().map_or("-".to_string(), |p| format!("{} ({})", p.name, p.url));
    outln!("MAC:          {}", s.mac);
    outln!("Parent:       {parent}");
    outln!("Status every: {} s", s.status_secs);
    let last = match s.last_push {
        None => "never".to_string(),
        Some(t) => {
            let ago = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(t);
            format!("{ago} s ago, {}", if s.last_push_ok { "ok" } else { "failed" })
        }
    };
    outln!("Last push:    {last}");
    if let Some(e) = &s.last_error {
        outln!("Last error:   {e}");
    }
    outln!("Pushes:       {} ok, {} failed", s.pushes_ok, s.pushes_failed);
    outln!("Heads:");
    for (i, h) in s.heads.iter().enumerate() {
        outln!("  {}. {} {}", i + 1, h.name, h.url);
    }
}

fn main() -> ExitCode {
    // The kernel runs /init as process 1 with no arguments.
    if std::process::id() == 1 {
        init::main();
    }
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run => {
            let rt = match runtime(1) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let (agent, cfg) = match make_agent(cli.config.as_ref(), false) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let stop = match stop_on_signals(&rt) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            eprintln!(
                "clusterware-node: starting; parent {}, status every {} s",
                agent.heads()[0].name,
                cfg.status_secs
            );
            rt.block_on(agent.run(stop));
            eprintln!("clusterware-node: stopped");
            ExitCode::SUCCESS
        }
        Cmd::Enroll { token_file } => {
            let rt = match runtime(1) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            match rt.block_on(enroll_cmd(cli.config.as_ref(), &token_file)) {
                Ok(m) => {
                    outln!("{m}");
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Init => {
            if std::process::id() != 1 {
                return fail("`init` runs only as /init (process 1) in the initramfs");
            }
            init::main()
        }
        Cmd::FetchHosts | Cmd::UpdateKeys => {
            let rt = match runtime(1) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let fetch = matches!(cli.cmd, Cmd::FetchHosts);
            let (mut agent, _) = match make_agent(cli.config.as_ref(), true) {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let r = rt.block_on(async {
                if fetch {
                    agent.fetch_heads().await.map(|n| format!("{n} heads")).map_err(|e| e.to_string())
                } else {
                    agent.update_keys().await.map(|n| format!("{n} keys written")).map_err(|e| e.0)
                }
            });
            match r {
                Ok(m) => {
                    if fetch {
                        for h in agent.heads() {
                            outln!("{} {}", h.name, h.url);
                        }
                    } else {
                        outln!("{m}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => fail(e),
            }
        }
        Cmd::Status { json } => {
            let path = cli.config.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_CONFIG));
            let cfg = match NodeConfig::load(&path, cli.config.is_some()) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let text = match std::fs::read_to_string(&cfg.state_file) {
                Ok(t) => t,
                Err(e) => {
                    return fail(format!(
                        "no agent state in {} ({e}); is the clusterware-node service running?",
                        cfg.state_file.display()
                    ));
                }
            };
            match serde_json::from_str::<AgentState>(&text) {
                Ok(s) => {
                    print_state(&s, json);
                    ExitCode::SUCCESS
                }
                Err(e) => fail(format!("{} is not an agent state file: {e}", cfg.state_file.display())),
            }
        }
        Cmd::Sim {
            nodes,
            heads,
            ip_start,
            mac_start,
            dir,
            status_secs,
            push_timeout_ms,
            ramp_secs,
            threads,
            push_interval_ms,
            ca_file,
            enroll_file,
            enroll_first,
            boot,
            boot_timeout_secs,
        } => {
            if push_interval_ms.is_some_and(|m| !(10..=86_400_000).contains(&m)) {
                return fail("--push-interval-ms must be from 10 to 86400000");
            }
            clusterware_shared::sys::raise_fd_limit();
            let mut list = Vec::new();
            for h in heads.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|h| !h.is_empty()) {
                match Endpoint::parse(h) {
                    Ok(ep) => list.push(HeadEntry { name: ep.host.clone(), url: ep.url }),
                    Err(e) => return fail(format!("--heads: {e}")),
                }
            }
            let mut boot_list = Vec::new();
            for h in boot.as_deref().unwrap_or_default().split(',').map(str::trim).filter(|h| !h.is_empty()) {
                match Endpoint::parse(h) {
                    Ok(ep) => boot_list.push(ep),
                    Err(e) => return fail(format!("--boot: {e}")),
                }
            }
            if list.is_empty() && boot_list.is_empty() {
                return fail("--heads (or --boot): at least one head URL is needed");
            }
            if !(1..=86_400).contains(&boot_timeout_secs) {
                return fail("--boot-timeout-secs must be from 1 to 86400");
            }
            if !(1..=1_000_000).contains(&nodes) {
                return fail("--nodes must be from 1 to 1000000");
            }
            if !clusterware_shared::agent::STATUS_SECS_RANGE.contains(&status_secs) {
                return fail("--status-secs must be from 1 to 86400");
            }
            if !(ramp_secs.is_finite() && (0.0..=3600.0).contains(&ramp_secs)) {
                return fail("--ramp-secs must be from 0 to 3600");
            }
            let ca_pem = match ca_file.as_deref().map(std::fs::read).transpose() {
                Ok(c) => c,
                Err(e) => return fail(format!("--ca-file: {e}")),
            };
            let tokens = match enroll_file.as_deref().map(read_tokens).transpose() {
                Ok(t) => t.unwrap_or_default(),
                Err(e) => return fail(e),
            };
            let rt = match runtime(threads.max(1)) {
                Ok(r) => r,
                Err(e) => return fail(e),
            };
            let stop = match stop_on_signals(&rt) {
                Ok(s) => s,
                Err(e) => return fail(e),
            };
            let args = sim::SimArgs {
                nodes,
                heads: list,
                ip_start,
                mac_start,
                dir,
                settings: Settings {
                    push_timeout: Duration::from_millis(push_timeout_ms.clamp(100, 60_000)),
                    status_secs,
                    quiet: true,
                    fixed_interval: push_interval_ms.map(Duration::from_millis),
                    ..Settings::default()
                },
                ramp: Duration::from_secs_f64(ramp_secs),
                ca_pem,
                tokens,
                enroll_first,
                boot: boot_list,
                boot_give_up: Duration::from_secs(boot_timeout_secs),
            };
            match rt.block_on(sim::run(args, stop)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
