//! `scyld-install`: sets up this machine as a ClusterWare head: a fresh solo head (a generated
//! database password, the directories, the systemd unit, started), a head that joins an
//! existing cluster (`--join IP_HEAD`), or a fresh cluster from a cluster configuration file
//! (`--config`). `--clear-all` removes the local installation's state first.
//!
//! Cluster configuration file (`--config`), one setting per line, `#` comments:
//!
//! ```text
//! interface enp2s0                  # the private cluster network (DHCP, TFTP)
//! iprange 10.54.0.100/24            # first node address / prefix length of the network
//! iprange 10.54.0.100-10.54.0.199/24   # the same with a last address (nodes must fit)
//! domain cluster.local              # optional DNS domain given to nodes
//! node 52:54:00:00:00:01            # one line per node, its MAC(s), in index order
//! node 52:54:00:00:00:02 52:54:00:00:01:02
//! ```

use clap::Parser;
use clusterware_cli::args::install::{Args, Cmd, DEFAULT_PREFIX};
use clusterware_cli::membership::{self, Start};
use clusterware_cli::sys;
use clusterware_cli::{CliResult, Client, fail, print_json, run, update, usage};
use clusterware_shared::api::{CreateNodes, NodeSpec};
use clusterware_shared::auth::admin_token;
use clusterware_shared::config::Config;
use clusterware_shared::ids::MacAddr;
use clusterware_shared::outln;
use nix::sys::signal::Signal;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

const UNIT: &str = "/etc/systemd/system/clusterware.service";

/// A parsed cluster configuration.
#[derive(Debug, Default)]
struct ClusterConfig {
    interface: Option<String>,
    first: Option<Ipv4Addr>,
    last: Option<Ipv4Addr>,
    prefix_len: Option<u8>,
    domain: Option<String>,
    nodes: Vec<Vec<MacAddr>>,
}

fn parse_cluster_config(path: &Path) -> CliResult<ClusterConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let mut c = ClusterConfig::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |m: String| fail(format!("{}:{}: {m}", path.display(), i + 1));
        let mut words = line.split_whitespace();
        let key = words.next().unwrap_or_default();
        let rest: Vec<&str> = words.collect();
        match key {
            "interface" => {
                let [name] = rest[..] else { return Err(bad("interface takes one name".into())) };
                c.interface = Some(name.to_string());
            }
            "iprange" => {
                let [range] = rest[..] else { return Err(bad("iprange takes FIRST[-LAST]/PREFIX".into())) };
                let (addrs, len) =
                    range.split_once('/').ok_or_else(|| bad(format!("{range:?}: give FIRST[-LAST]/PREFIX")))?;
                let len: u8 = len
                    .parse()
                    .ok()
                    .filter(|l| (8..=30).contains(l))
                    .ok_or_else(|| bad(format!("{len:?} is not a prefix length from 8 to 30")))?;
                let (first, last) = match addrs.split_once('-') {
                    Some((a, b)) => (a, Some(b)),
                    None => (addrs, None),
                };
                let ip = |s: &str| s.parse::<Ipv4Addr>().map_err(|_| bad(format!("{s:?} is not an IPv4 address")));
                c.first = Some(ip(first)?);
                c.last = last.map(ip).transpose()?;
                if let (Some(f), Some(l)) = (c.first, c.last) {
                    if u32::from(l) < u32::from(f) {
                        return Err(bad(format!("{l} comes before {f}")));
                    }
                }
                c.prefix_len = Some(len);
            }
            "domain" => {
                let [d] = rest[..] else { return Err(bad("domain takes one name".into())) };
                c.domain = Some(d.to_string());
            }
            "node" => {
                if rest.is_empty() {
                    return Err(bad("node takes one or more MAC addresses".into()));
                }
                let macs = rest
                    .iter()
                    .map(|m| m.parse::<MacAddr>().map_err(|_| bad(format!("{m:?} is not a MAC address"))))
                    .collect::<CliResult<Vec<_>>>()?;
                c.nodes.push(macs);
            }
            other => return Err(bad(format!("unknown setting {other:?} (interface, iprange, domain, node)"))),
        }
    }
    if !c.nodes.is_empty() && c.first.is_none() {
        return Err(fail(format!("{}: nodes need an iprange for their addresses", path.display())));
    }
    if let (Some(f), Some(l)) = (c.first, c.last) {
        let room = u32::from(l) - u32::from(f) + 1;
        if c.nodes.len() as u32 > room {
            return Err(fail(format!("{}: {} nodes do not fit in {f}-{l}", path.display(), c.nodes.len())));
        }
    }
    Ok(c)
}

fn netmask(len: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX << (32 - len as u32))
}

fn random_password() -> CliResult<String> {
    let mut b = [0u8; 16];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| fail(format!("cannot read /dev/urandom: {e}")))?;
    Ok(hex::encode(b))
}

fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The units the `clusterware` package ships (Debian's path, and the same under /usr).
const PACKAGED_UNITS: [&str; 2] =
    ["/lib/systemd/system/clusterware.service", "/usr/lib/systemd/system/clusterware.service"];

/// The head daemon to run: the installation's own (`PREFIX/bin/clusterware-head`, where the
/// package puts it), else the one beside this program (a build tree).
fn head_binary(prefix: &Path) -> CliResult<PathBuf> {
    let installed = prefix.join("bin/clusterware-head");
    if installed.is_file() {
        return Ok(installed);
    }
    let me = std::env::current_exe().map_err(|e| fail(format!("cannot find this program's path: {e}")))?;
    let beside = me.with_file_name("clusterware-head");
    if !beside.is_file() {
        return Err(fail(format!(
            "no head daemon: neither {} nor {} exists; install the clusterware package first",
            installed.display(),
            beside.display()
        )));
    }
    Ok(beside)
}

/// The unit the head package ships, with this installation's binary and configuration.
fn unit_text(bin: &Path, conf: &Path) -> String {
    const SHIPPED: &str = include_str!("../../../head/systemd/clusterware.service");
    SHIPPED
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                format!("ExecStart={} --config {}\n", bin.display(), conf.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect()
}

/// The unit to write to /etc/systemd/system, or `None` when a packaged unit (one of `packaged`)
/// already says exactly that.
fn unit_to_write(bin: &Path, conf: &Path, packaged: &[&str]) -> Option<String> {
    let text = unit_text(bin, conf);
    let shipped = packaged.iter().any(|p| std::fs::read_to_string(p).is_ok_and(|t| t == text));
    (!shipped).then_some(text)
}

/// Where a head started without systemd records its pid (the package's prerm stops it by this).
fn pid_file(conf: &Path) -> PathBuf {
    conf.with_file_name("clusterware-head.pid")
}

/// Starts the head: through systemd when it runs (the packaged unit, or one written for this
/// installation's paths, enabled), else directly as a background process (its output in the log
/// directory, its pid in conf/clusterware-head.pid).
fn start_head(args: &Args, conf: &Path, log_dir: &Path, undo: &mut Undo) -> CliResult<(String, u32)> {
    let bin = head_binary(&args.prefix)?;
    if systemd_runs() && !args.no_systemd {
        let how = match unit_to_write(&bin, conf, &PACKAGED_UNITS) {
            Some(unit) => {
                undo.file(Path::new(UNIT));
                clusterware_shared::fsutil::write_atomic(Path::new(UNIT), None, unit.as_bytes(), Some(0o644))
                    .map_err(|e| fail(format!("cannot write {UNIT}: {e}")))?;
                format!("systemd unit {UNIT} installed, enabled and started")
            }
            None => {
                // An override left by an earlier installation would hide the packaged unit.
                if Path::new(UNIT).exists() {
                    std::fs::remove_file(UNIT).map_err(|e| fail(format!("cannot remove {UNIT}: {e}")))?;
                }
                "the packaged systemd unit clusterware.service enabled and started".to_string()
            }
        };
        undo.systemd = true;
        for a in [&["daemon-reload"][..], &["enable", "--now", "clusterware"][..]] {
            let st = std::process::Command::new("systemctl")
                .args(a)
                .status()
                .map_err(|e| fail(format!("cannot run systemctl: {e}")))?;
            if !st.success() {
                return Err(fail(format!("systemctl {} failed", a.join(" "))));
            }
        }
        let pid = std::process::Command::new("systemctl")
            .args(["show", "-p", "MainPID", "--value", "clusterware"])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u32>().ok())
            .unwrap_or(0);
        return Ok((how, pid));
    }
    undo.dir(log_dir)?;
    let out_path = log_dir.join("clusterware-head.out");
    undo.file(&out_path);
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&out_path)
        .map_err(|e| fail(format!("cannot open {}: {e}", out_path.display())))?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--config")
        .arg(conf)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().map_err(|e| fail(e.to_string()))?)
        .stderr(out);
    // Its own session, so it outlives this command's.
    clusterware_cli::sys::in_new_session(&mut cmd);
    let child = cmd.spawn().map_err(|e| fail(format!("cannot start {}: {e}", bin.display())))?;
    undo.pid = Some(child.id());
    let pid_path = pid_file(conf);
    undo.file(&pid_path);
    clusterware_shared::fsutil::write_atomic(&pid_path, None, format!("{}\n", child.id()).as_bytes(), Some(0o644))
        .map_err(|e| fail(format!("cannot write {}: {e}", pid_path.display())))?;
    Ok((
        format!(
            "systemd is {}: started {} directly (pid {}, output in {})",
            if args.no_systemd { "not used (--no-systemd)" } else { "not running here" },
            bin.display(),
            child.id(),
            out_path.display()
        ),
        child.id(),
    ))
}

/// What an installation created, so that one that is refused or fails half-way can take it all
/// back: the directories and files that did not exist before, the head it started, the unit it
/// enabled. [`Undo::keep`] once the installation stands.
#[derive(Default)]
struct Undo {
    /// In creation order; removed in reverse.
    created: Vec<PathBuf>,
    pid: Option<u32>,
    systemd: bool,
    kept: bool,
}

impl Undo {
    /// `create_dir_all`, remembering each directory it creates.
    fn dir(&mut self, d: &Path) -> CliResult<()> {
        let missing: Vec<PathBuf> = d.ancestors().take_while(|a| !a.exists()).map(Path::to_path_buf).collect();
        std::fs::create_dir_all(d).map_err(|e| fail(format!("cannot create {}: {e}", d.display())))?;
        self.created.extend(missing.into_iter().rev());
        Ok(())
    }

    /// A file (or directory) about to be written by us or the head: removed on undo if it does
    /// not exist yet.
    fn file(&mut self, f: &Path) {
        if !f.exists() && !self.created.iter().any(|c| c == f) {
            self.created.push(f.to_path_buf());
        }
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if self.systemd {
            let _ = std::process::Command::new("systemctl").args(["disable", "--now", "clusterware"]).status();
        }
        if let Some(pid) = self.pid {
            stop_pid(pid);
        }
        let mut removed = Vec::new();
        for p in self.created.iter().rev() {
            let r = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
            match r {
                Ok(()) => removed.push(p.display().to_string()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("scyld-install: cannot remove {}: {e}", p.display()),
            }
        }
        if self.systemd {
            let _ = std::process::Command::new("systemctl").arg("daemon-reload").status();
        }
        if !removed.is_empty() {
            eprintln!(
                "scyld-install: the installation did not complete; removed what it had created: {}",
                removed.join(", ")
            );
        }
    }
}

/// SIGTERM, up to 10 s for the process to end, then SIGKILL.
fn stop_pid(pid: u32) {
    let _ = sys::kill(pid, Signal::SIGTERM);
    for _ in 0..100 {
        if !membership::process_alive(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = sys::kill(pid, Signal::SIGKILL);
}

/// Stops the local head (for --clear-all): SIGTERM, wait for it to go.
fn stop_head(cfg: &Config) -> CliResult<()> {
    let url = membership::local_url(cfg);
    let Some(h) = membership::health(&url, None) else { return Ok(()) };
    if systemd_runs() && std::iter::once(UNIT).chain(PACKAGED_UNITS).any(|u| Path::new(u).exists()) {
        let _ = std::process::Command::new("systemctl").args(["stop", "clusterware"]).status();
    } else if h.pid != 0 {
        let _ = sys::kill(h.pid, Signal::SIGTERM);
    }
    for _ in 0..150 {
        if membership::health(&url, None).is_none() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(fail(format!("the head at {url} did not stop within 30 s")))
}

fn clear_all(conf: &Path, say: &dyn Fn(&str)) -> CliResult<()> {
    if !conf.exists() {
        return Ok(());
    }
    let cfg = Config::load(conf).map_err(|e| fail(e.to_string()))?.config;
    let url = membership::local_url(&cfg);
    if let Some(h) = membership::health(&url, None) {
        if h.state == "serving" {
            let token = admin_token(cfg.admin_pass.as_deref().unwrap_or(""));
            let api = membership::local_api(&cfg);
            let ca = clusterware_cli::cluster_ca(None, Some(&cfg)).unwrap_or_default();
            if let Ok(info) = Client::to(&api, &token, &ca, 10).and_then(|c| Ok(c.cluster(false)?)) {
                let voting = info.members.iter().filter(|m| !m.learner).count();
                if voting > 1 {
                    return Err(fail(format!(
                        "this head is one of the {voting} heads of a cluster: remove it first (`managedb leave`, or \
                         `managedb eject` from another head; with two heads `managedb recover` on both)"
                    )));
                }
            }
        }
    }
    stop_head(&cfg)?;
    let mut removed = Vec::new();
    let mut rm = |p: &Path| {
        if p.exists() {
            let r = if p.is_dir() { std::fs::remove_dir_all(p) } else { std::fs::remove_file(p) };
            match r {
                Ok(()) => removed.push(p.display().to_string()),
                Err(e) => say(&format!("cannot remove {}: {e}", p.display())),
            }
        }
    };
    rm(&cfg.storage_dir);
    if let Some(db_dir) = cfg.database_path.parent() {
        rm(db_dir);
    }
    if let Some(parent) = cfg.etcd_data_dir.parent() {
        if let Ok(rd) = std::fs::read_dir(parent) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_string();
                let base = cfg.etcd_data_dir.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
                if n == base || n.starts_with("etcd-") || n.starts_with(&format!("{base}.old-")) {
                    rm(&e.path());
                }
            }
        }
    }
    let confdir = conf.parent().unwrap_or(Path::new("/"));
    rm(&confdir.join("peers.json"));
    rm(&pid_file(conf));
    rm(conf);
    say(&format!("removed the previous installation: {}", removed.join(", ")));
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-install", || match &args.cmd {
        Some(Cmd::Completion(c)) => c.print::<Args>(),
        None => install(&args),
    })
}

fn install(args: &Args) -> CliResult<()> {
    if !args.prefix.is_absolute() {
        return Err(usage(format!("--prefix {}: give an absolute path", args.prefix.display())));
    }
    let json = args.json;
    let say = |m: &str| {
        if !json {
            eprintln!("scyld-install: {m}");
        }
    };
    let cluster = args.config.as_deref().map(parse_cluster_config).transpose()?;
    let extra: Vec<(String, String)> = args
        .set
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| usage(format!("--set {kv:?}: give KEY=VALUE")))
        })
        .collect::<CliResult<_>>()?;
    let conf = args.prefix.join("conf/base.ini");
    if args.update && !update_first(args, &conf, &say)? {
        return Ok(());
    }
    if args.clear_all {
        clear_all(&conf, &say)?;
    }
    if conf.exists() {
        let cfg = Config::load(&conf).map_err(|e| fail(e.to_string()))?.config;
        let Some(target) = &args.join else {
            return Err(fail(format!(
                "ClusterWare is installed here already ({}): give --clear-all to reinstall, or --join IP_HEAD to join a \
                 cluster",
                conf.display()
            )));
        };
        // An installed head joins like `managedb join`; what it starts is part of it already.
        let password = password_for(args)?;
        let url = membership::local_url(&cfg);
        let log_dir = cfg.log_dir.clone();
        let undo = std::cell::RefCell::new(Undo::default());
        let starter = || {
            start_head(args, &conf, &log_dir, &mut undo.borrow_mut()).map(|(m, pid)| {
                say(&m);
                pid
            })
        };
        let start = match membership::health(&url, None) {
            Some(h) => Start::Running(h),
            None => Start::With(&starter),
        };
        let joined = membership::join(&conf, target, &password, start, &say);
        undo.into_inner().keep();
        return done_join(args, &joined?);
    }
    // A fresh installation: everything is checked before anything is created, and what it
    // creates is removed again if it does not complete.
    let password = match &args.join {
        Some(target) => {
            let p = password_for(args)?;
            membership::check_access(target, &p, args.port)?;
            p
        }
        None => random_password()?,
    };
    let p = &args.prefix;
    let log_dir = if p == Path::new(DEFAULT_PREFIX) { PathBuf::from("/var/log/clusterware") } else { p.join("log") };
    let name = match &args.name {
        Some(n) => n.clone(),
        None => clusterware_cli::head_name_of(&Config::default())?,
    };
    clusterware_shared::ids::validate_head_name(&name).map_err(|e| usage(format!("--name {name:?}: {e}")))?;
    let ip = match args.ip {
        Some(ip) => ip,
        None => detect_ip(&name)?,
    };
    let database = if args.join.is_some() { "etcd" } else { args.database.as_str() };
    let mut ini = format!(
        "# ClusterWare head configuration, written by scyld-install\n\
         database.admin_pass = {password}\n\
         database.type = {database}\n\
         database.path = {db}/cluster.redb\n\
         database.data_dir = {p}/etcd\n\
         database.peer_port = {peer}\n\
         database.initial_cluster = {name}=https://{ip}:{peer}\n\
         database.cluster_token = clusterware-{token}\n\
         head.name = {name}\n\
         head.ip = {ip}\n\
         head.port = {port}\n\
         head.tls_port = {tls_port}\n\
         logging.dir = {log}\n\
         local_files.path = {p}/storage\n",
        db = p.join("db").display(),
        p = p.display(),
        peer = args.peer_port,
        token = &random_password()?[..16],
        port = args.port,
        tls_port = args.tls_port,
        log = log_dir.display(),
    );
    if let Some(c) = &cluster {
        if let Some(i) = &c.interface {
            ini.push_str(&format!("dhcp.interface = {i}\n"));
        }
        if let (Some(f), Some(l)) = (c.first, c.prefix_len) {
            ini.push_str(&format!("dhcp.first_ip = {f}\ndhcp.netmask = {}\n", netmask(l)));
        }
        if let Some(d) = &c.domain {
            ini.push_str(&format!("dhcp.domain = {d}\n"));
        }
    }
    for (k, v) in &extra {
        ini.push_str(&format!("{k} = {v}\n"));
    }
    Config::parse(&ini, &conf).map_err(|e| usage(format!("the configuration would be invalid: {e}")))?;
    head_binary(p)?;

    let mut undo = Undo::default();
    for d in [p.join("conf"), p.join("storage"), p.join("db"), log_dir.clone()] {
        undo.dir(&d)?;
    }
    // Made by the head itself.
    undo.file(&p.join("etcd"));
    undo.file(&conf);
    clusterware_shared::fsutil::write_atomic(&conf, None, ini.as_bytes(), Some(0o600))
        .map_err(|e| fail(format!("cannot write {}: {e}", conf.display())))?;
    say(&format!(
        "wrote {} (mode 0600, with a {} database password)",
        conf.display(),
        if args.join.is_some() { "given" } else { "generated" }
    ));
    if let Some(target) = &args.join {
        let undo = std::cell::RefCell::new(undo);
        let starter = || {
            start_head(args, &conf, &log_dir, &mut undo.borrow_mut()).map(|(m, pid)| {
                say(&m);
                pid
            })
        };
        let j = membership::join(&conf, target, &password, Start::With(&starter), &say)?;
        undo.into_inner().keep();
        return done_join(args, &j);
    }
    let (how, pid) = start_head(args, &conf, &log_dir, &mut undo)?;
    say(&how);
    let url = format!("http://{ip}:{}", args.port);
    let e = membership::Expect {
        state: "serving",
        name: Some(&name),
        pid: (pid != 0).then_some(pid),
        ..Default::default()
    };
    membership::wait_state(&url, None, &e, Duration::from_secs(120)).map_err(|last| {
        let log = log_dir.join(format!("head_{name}.log"));
        let out = log_dir.join("clusterware-head.out");
        let tail = [&out, &log]
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .filter_map(|t| t.lines().rev().find(|l| l.contains("error")).map(str::to_string))
            .next()
            .map(|l| format!(": {}", l.trim()))
            .unwrap_or_default();
        match last {
            // It may have answered `starting` before it gave up.
            _ if pid != 0 && !membership::process_alive(pid) => fail(format!("the head exited at start{tail}")),
            last => fail(format!(
                "the head did not start serving within 120 s (it reports {:?}){tail}",
                last.map(|h| h.state)
            )),
        }
    })?;
    let mut created = 0;
    if let Some(c) = &cluster {
        if !c.nodes.is_empty() {
            let first = c.first.expect("checked: nodes need an iprange");
            let nodes = c
                .nodes
                .iter()
                .enumerate()
                .map(|(i, macs)| NodeSpec {
                    macs: macs.clone(),
                    ip: Some(Ipv4Addr::from(u32::from(first) + i as u32)),
                    index: None,
                    attributes: Default::default(),
                })
                .collect();
            let cfg = Config::load(&conf).map_err(|e| fail(e.to_string()))?.config;
            let ca = clusterware_cli::cluster_ca(None, Some(&cfg))?;
            let client = Client::to(&membership::local_api(&cfg), &admin_token(&password), &ca, 120)?;
            let r = client.create_nodes(&CreateNodes { nodes, force: false })?;
            created = r.nodes.len();
        }
    }
    undo.keep();
    if args.json {
        print_json(
            &serde_json::json!({"config": conf, "name": name, "ip": ip, "url": url, "database": database, "nodes": created}),
        );
    } else {
        outln!(
            "installed head {name} at {url} ({database} database{}); the database password is database.admin_pass in {}",
            if created > 0 { format!(", {created} nodes") } else { String::new() },
            conf.display()
        );
    }
    Ok(())
}

/// `--update`: updates this head; with `--join`, to the release of the head joined, and then
/// the join is made by the updated `scyld-install` (this process is replaced by it). Returns
/// whether this process goes on with the join (the release was the cluster's already).
fn update_first(args: &Args, conf: &Path, say: &dyn Fn(&str)) -> CliResult<bool> {
    let Some(target) = &args.join else {
        if !conf.exists() {
            return Err(fail(format!(
                "ClusterWare is not installed under {} ({} is missing): install it first (scyld-install), or give \
                 --join IP_HEAD to install by joining a cluster",
                args.prefix.display(),
                conf.display()
            )));
        }
        let u = update::update(Some(conf), &args.deb, args.force, say)?;
        if args.json {
            print_json(&u);
        } else if u.restarted {
            outln!(
                "updated clusterware {} -> {}; the head serves again with release {} (out of service {:.1} s)",
                u.from,
                u.to,
                u.serving.as_deref().unwrap_or("?"),
                u.out_of_service_secs.unwrap_or_default()
            );
        } else if u.from != u.to {
            outln!("updated clusterware {} -> {} (no head runs here to restart)", u.from, u.to);
        } else {
            outln!("clusterware {} is up to date", u.to);
        }
        return Ok(false);
    };
    let port = match Config::load(conf) {
        Ok(l) if conf.exists() => l.config.head_port,
        _ => args.port,
    };
    let url = membership::head_url(target, port)?;
    let theirs = membership::health(&url, None)
        .ok_or_else(|| fail(format!("cannot reach the head at {target} ({url}) to learn its release")))?
        .version;
    if membership::same_release(&theirs, clusterware_shared::VERSION) {
        say(&format!("this head has the release of the head at {target} ({theirs}) already: no update needed"));
        return Ok(true);
    }
    say(&format!(
        "the head at {target} runs ClusterWare {theirs} and this head {}: updating before the join",
        clusterware_shared::VERSION
    ));
    let u = update::update(Some(conf), &args.deb, args.force, say)?;
    // This program was replaced by the update: the installed one joins.
    let exe = std::env::current_exe()
        .ok()
        .map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(" (deleted)")))
        .filter(|p| p.is_file())
        .ok_or_else(|| fail("cannot find the installed scyld-install after the update"))?;
    let now = std::process::Command::new(&exe)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    if !membership::same_release(&theirs, &now) {
        return Err(fail(format!(
            "updated clusterware {} -> {}, which is release {now}, but the head at {target} runs {theirs}: give the \
             clusterware package of release {theirs} with --deb FILE; nothing was joined",
            u.from, u.to
        )));
    }
    say(&format!("updated clusterware {} -> {}; joining with the updated scyld-install", u.from, u.to));
    let mut skip = false;
    let rest: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| {
            if std::mem::take(&mut skip) {
                return false;
            }
            let s = a.to_string_lossy();
            if s == "--deb" {
                skip = true;
                return false;
            }
            !(s == "-u" || s == "--update" || s == "--force" || s.starts_with("--deb="))
        })
        .collect();
    let err = std::os::unix::process::CommandExt::exec(std::process::Command::new(&exe).args(rest));
    Err(fail(format!("cannot run {}: {err}", exe.display())))
}

fn password_for(args: &Args) -> CliResult<String> {
    clusterware_cli::password_from(
        args.database_passwd_file.as_deref(),
        args.database_passwd.as_deref(),
        "Database password of the head to join (database.admin_pass in its base.ini): ",
        "give --database-passwd-file FILE (- for standard input)",
    )
}

fn detect_ip(name: &str) -> CliResult<Ipv4Addr> {
    use std::net::ToSocketAddrs;
    (name, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| {
            it.find_map(|a| match a.ip() {
                std::net::IpAddr::V4(v4) if !v4.is_loopback() => Some(v4),
                _ => None,
            })
        })
        .ok_or_else(|| fail(format!("{name:?} resolves to no cluster address: give --ip")))
}

fn done_join(args: &Args, j: &membership::Joined) -> CliResult<()> {
    if args.json {
        print_json(j);
    } else {
        outln!(
            "joined the cluster of {} as etcd member {} ({} members now) in {:.1} s{}; the other heads take up the new \
             membership by themselves (no restart needed)",
            j.cluster_head,
            j.member_id,
            j.members,
            j.seconds,
            if j.converted { format!(" ({} was converted to etcd first)", j.cluster_head) } else { String::new() }
        );
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);

#[cfg(test)]
mod cluster_config_tests {
    use super::*;

    #[test]
    fn parses_the_documented_example_and_refuses_bad_lines() {
        let dir = tempfile_dir();
        let p = dir.join("cluster.conf");
        std::fs::write(
            &p,
            "interface enp2s0 # cluster\niprange 10.54.0.100-10.54.0.199/24\ndomain c.local\nnode 52:54:00:00:00:01\nnode 52:54:00:00:00:02 52:54:00:00:01:02\n",
        )
        .unwrap();
        let c = parse_cluster_config(&p).unwrap();
        assert_eq!(c.interface.as_deref(), Some("enp2s0"));
        assert_eq!(c.first, Some("10.54.0.100".parse().unwrap()));
        assert_eq!(netmask(c.prefix_len.unwrap()), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.nodes[1].len(), 2);
        for (bad, says) in [
            ("iprange 10.0.0.1\n", "FIRST"),
            ("node zz\n", "not a MAC"),
            ("color blue\n", "unknown setting"),
            ("node 52:54:00:00:00:01\n", "need an iprange"),
            ("iprange 10.0.0.9-10.0.0.9/24\nnode 52:54:00:00:00:01\nnode 52:54:00:00:00:02\n", "do not fit"),
        ] {
            std::fs::write(&p, bad).unwrap();
            let e = parse_cluster_config(&p).unwrap_err();
            assert!(e.message().contains(says), "{bad:?}: {}", e.message());
        }
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("cw-install-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_is_the_shipped_one_with_this_installations_paths() {
        let text = unit_text(Path::new("/srv/cw/bin/clusterware-head"), Path::new("/srv/cw/conf/base.ini"));
        let exec: Vec<&str> = text.lines().filter(|l| l.starts_with("ExecStart=")).collect();
        assert_eq!(exec, ["ExecStart=/srv/cw/bin/clusterware-head --config /srv/cw/conf/base.ini"]);
        for l in ["ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure", "WantedBy=multi-user.target"] {
            assert!(text.lines().any(|x| x == l), "{l} missing from:\n{text}");
        }
    }

    #[test]
    fn a_packaged_unit_that_says_the_same_is_enabled_as_it_is() {
        let d = std::env::temp_dir().join(format!("cw-install-unit-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let packaged = d.join("clusterware.service");
        std::fs::write(&packaged, include_str!("../../../head/systemd/clusterware.service")).unwrap();
        let packaged = [packaged.to_str().unwrap()];
        let (bin, conf) = (
            Path::new("/opt/scyld/clusterware/bin/clusterware-head"),
            Path::new("/opt/scyld/clusterware/conf/base.ini"),
        );
        assert_eq!(unit_to_write(bin, conf, &packaged), None, "the package's own paths");
        let other =
            unit_to_write(Path::new("/srv/cw/bin/clusterware-head"), Path::new("/srv/cw/conf/base.ini"), &packaged);
        assert!(other.is_some_and(|t| t.contains("ExecStart=/srv/cw/bin/clusterware-head")), "another prefix");
        assert!(unit_to_write(bin, conf, &["/nonexistent/clusterware.service"]).is_some(), "no package");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_installed_daemon_comes_before_the_one_beside_this_program() {
        let d = std::env::temp_dir().join(format!("cw-install-bin-{}", std::process::id()));
        std::fs::create_dir_all(d.join("bin")).unwrap();
        let e = head_binary(&d).unwrap_err();
        assert!(e.message().contains(&d.join("bin/clusterware-head").display().to_string()), "{}", e.message());
        std::fs::write(d.join("bin/clusterware-head"), "").unwrap();
        assert_eq!(head_binary(&d).unwrap(), d.join("bin/clusterware-head"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn undo_removes_what_it_created_and_only_that() {
        let d = std::env::temp_dir().join(format!("cw-install-undo-{}", std::process::id()));
        std::fs::create_dir_all(d.join("old")).unwrap();
        std::fs::write(d.join("old/keep"), "x").unwrap();
        let mut u = Undo::default();
        u.dir(&d.join("new/a/b")).unwrap();
        u.dir(&d.join("old")).unwrap();
        u.file(&d.join("old/keep"));
        u.file(&d.join("old/made"));
        std::fs::write(d.join("old/made"), "y").unwrap();
        u.file(&d.join("never-made"));
        drop(u);
        assert!(!d.join("new").exists() && !d.join("old/made").exists());
        assert!(d.join("old/keep").exists(), "what existed before stays");
        let mut u = Undo::default();
        u.dir(&d.join("kept")).unwrap();
        u.keep();
        assert!(d.join("kept").is_dir(), "a completed installation keeps everything");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
