//! Plumbing shared by the administrator commands (`scyld-nodectl`, `scyld-clusterctl`,
//! `managedb`): which head to talk to and with what credential (the HTTP client itself is
//! `clusterware-client`), errors and exit codes, node selection and table output.
//!
//! Exit codes: 0 success, 1 failure (the head refused, the cluster is unreachable, …),
//! 2 usage error (bad arguments). One line on stderr says what went wrong.

use clusterware_client::{BlockingClient, Config as ClientConfig};
use clusterware_shared::api::{FileList, FileRecord, Node, is_file_id};
use clusterware_shared::auth::admin_token;
use clusterware_shared::config::{self, Config, ConfigError};
use clusterware_shared::outln;
use clusterware_shared::select;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub mod args;
pub mod membership;
pub mod sys;
pub mod update;

/// Where the head is and how to authenticate; every command takes these.
#[derive(clap::Args, Debug)]
pub struct ConnOpts {
    /// Configuration file, for the local head's address and the admin credential
    /// [default: $CLUSTERWARE_CONFIG, else /opt/scyld/clusterware/conf/base.ini]
    #[arg(long, value_name = "PATH", global = true, help_heading = "Connection")]
    pub config: Option<PathBuf>,
    /// Talk to this head instead of the local one (e.g. https://10.54.0.2, its head.tls_port)
    #[arg(
        long,
        value_name = "URL",
        env = "CLUSTERWARE_HEAD",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub head: Option<String>,
    /// The cluster CA to check heads against [default: tls/ca.pem beside the configuration]
    #[arg(
        long,
        value_name = "FILE",
        env = "CLUSTERWARE_CA",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub ca_file: Option<PathBuf>,
    /// Admin API token (a named one: `scyld-clusterctl tokens create`) instead of deriving it from
    /// database.admin_pass in the configuration; on the command line every user of the machine
    /// can read it, so prefer $CLUSTERWARE_TOKEN or --token-file
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CLUSTERWARE_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Connection"
    )]
    pub token: Option<String>,
    /// Admin API token from the first line of FILE (`-`: standard input)
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "token", help_heading = "Connection")]
    pub token_file: Option<PathBuf>,
    /// Seconds to wait for the head to answer
    #[arg(long, value_name = "SECS", default_value_t = 60, global = true, help_heading = "Connection")]
    pub timeout: u64,
}

/// A command's failure.
#[derive(Debug)]
pub enum CliError {
    /// Bad arguments: exit 2.
    Usage(String),
    /// Anything else: exit 1.
    Failure(String),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Failure(_) => 1,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Failure(m) => m,
        }
    }
}

pub type CliResult<T> = Result<T, CliError>;

pub fn fail(m: impl Into<String>) -> CliError {
    CliError::Failure(m.into())
}

pub fn usage(m: impl Into<String>) -> CliError {
    CliError::Usage(m.into())
}

/// Runs a command body and turns its result into the exit code, printing the error once.
pub fn run(prog: &str, f: impl FnOnce() -> CliResult<()>) -> ExitCode {
    match f() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{prog}: error: {}", e.message());
            ExitCode::from(e.code())
        }
    }
}

fn config_error(e: ConfigError) -> CliError {
    match &e {
        ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
            fail(format!("{e} (run as root, or give --head and --token)"))
        }
        ConfigError::Read { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            fail(format!("{e} (is ClusterWare installed here? otherwise give --config, or --head and --token)"))
        }
        _ => fail(e.to_string()),
    }
}

/// An authenticated connection to one head's API: the typed blocking client of
/// `clusterware-client` (every endpoint a method, e.g. `c.nodes()?`), made from the command's
/// [`ConnOpts`]. Its errors turn into a [`CliError`] with `?`.
pub struct Client(BlockingClient);

impl std::ops::Deref for Client {
    type Target = BlockingClient;
    fn deref(&self) -> &BlockingClient {
        &self.0
    }
}

/// What to look at when the local head cannot be reached (its service and log), set when a
/// command talks to the head of this machine's configuration.
static LOCAL_HEAD_HINT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

impl From<clusterware_client::Error> for CliError {
    fn from(e: clusterware_client::Error) -> CliError {
        use clusterware_client::{Error, Transport};
        match (&e, LOCAL_HEAD_HINT.get()) {
            (Error::Transport { base, kind: Transport::Connect, reason }, Some(hint)) => {
                fail(format!("cannot reach the head at {base}: {reason}. {hint}"))
            }
            _ => fail(e.to_string()),
        }
    }
}

impl Client {
    pub fn new(o: &ConnOpts) -> CliResult<Client> {
        Client::with_timeout(o, o.timeout)
    }

    /// A client whose requests may take `secs` (a command that waits on the head's side).
    pub fn with_timeout(o: &ConnOpts, secs: u64) -> CliResult<Client> {
        let given = match &o.token_file {
            Some(f) => Some(secret_from_file(f, "the token")?),
            None => {
                if o.token.is_some() && std::env::var("CLUSTERWARE_TOKEN").ok() != o.token {
                    eprintln!(
                        "warning: --token shows the token to every user of this machine (ps, /proc); prefer \
                         CLUSTERWARE_TOKEN or --token-file FILE"
                    );
                }
                o.token.clone()
            }
        };
        let needs_config = o.head.is_none() || given.is_none();
        let path = config::resolve_path(o.config.as_deref());
        let cfg = if needs_config {
            Some(Config::load(&path).map_err(config_error)?.config)
        } else {
            // Only for the CA: a machine without a head has no configuration.
            Config::load(&path).ok().map(|l| l.config)
        };
        let base = match (&o.head, &cfg) {
            (Some(h), _) => h.trim_end_matches('/').to_string(),
            (None, Some(c)) => {
                let ip = c.head_ip.map_or("127.0.0.1".to_string(), |i| i.to_string());
                format!("https://{ip}:{}", c.tls_port)
            }
            (None, None) => unreachable!("config is loaded when --head is missing"),
        };
        if base.starts_with("http://") {
            return Err(usage(format!(
                "--head {base}: the admin credential goes to a head over HTTPS only; give its https:// URL (port \
                 head.tls_port of its base.ini, 443 by default)"
            )));
        }
        if !base.starts_with("https://") {
            return Err(usage(format!("--head {base:?} is not an https:// URL")));
        }
        let token = match (&given, needs_config.then_some(cfg.as_ref()).flatten()) {
            (Some(t), _) => t.clone(),
            (None, Some(c)) => admin_token(c.require_admin_pass().map_err(config_error)?),
            (None, None) => unreachable!("config is loaded when --token is missing"),
        };
        if let (None, Some(c)) = (&o.head, &cfg) {
            let name = head_name_of(c).unwrap_or_else(|_| "NAME".into());
            let _ = LOCAL_HEAD_HINT.set(format!(
                "Is this machine's head daemon running? `systemctl status clusterware` says, and its log {} tells \
                 why it stopped or did not start",
                c.log_dir.join(format!("head_{name}.log")).display()
            ));
        }
        let ca = cluster_ca(o.ca_file.as_deref(), cfg.as_ref())?;
        Client::to(&base, &token, &ca, secs)
    }

    /// A client for the head at `base` with this token, trusting the CA `ca_pem`.
    pub fn to(base: &str, token: &str, ca_pem: &str, secs: u64) -> CliResult<Client> {
        let cfg = ClientConfig::new(base).token(token).ca_pem(ca_pem).timeout_secs(secs).user(&who());
        Ok(Client(BlockingClient::new(cfg)?))
    }
}

/// The cluster CA's certificate: `--ca-file`, else `ca.pem` in the configuration's `tls.dir`.
pub fn cluster_ca(given: Option<&Path>, cfg: Option<&Config>) -> CliResult<String> {
    if let Some(f) = given {
        return std::fs::read_to_string(f).map_err(|e| fail(format!("cannot read the CA file {}: {e}", f.display())));
    }
    let Some(c) = cfg else {
        return Err(fail(
            "no cluster CA to check the head with: give --ca-file FILE (a head keeps it in tls/ca.pem beside its base.ini)",
        ));
    };
    let f = c.tls_dir.join(clusterware_shared::pki::CA_CERT);
    std::fs::read_to_string(&f).map_err(|e| {
        fail(format!(
            "cannot read the cluster CA {}: {e} (a head writes it when it first starts; elsewhere give --ca-file FILE)",
            f.display()
        ))
    })
}

/// This head's name: `head.name`, else the host name (as the head daemon decides it).
pub fn head_name_of(cfg: &Config) -> CliResult<String> {
    if let Some(n) = &cfg.head_name {
        return Ok(n.clone());
    }
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let short = h.split('.').next().unwrap_or(&h).to_string();
    clusterware_shared::ids::validate_head_name(&short)
        .map_err(|_| fail(format!("this host's name {h:?} is not a valid head name; set head.name in base.ini")))?;
    Ok(short)
}

/// Reads a password from the terminal without echo; fails when there is no terminal.
pub fn read_password_tty(prompt: &str, hint: &str) -> CliResult<String> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() {
        return Err(fail(format!("there is no terminal to ask for the password: {hint}")));
    }
    read_secret(prompt)
}

/// Reads a secret: from the terminal without echo (after `prompt`), or the first line of stdin
/// when stdin is not a terminal.
pub fn read_secret(prompt: &str) -> CliResult<String> {
    use std::io::{BufRead, IsTerminal};
    let stdin = std::io::stdin();
    let mut line = String::new();
    if stdin.is_terminal() {
        line = ask_without_echo(&mut Tty { saved: None }, prompt)?;
    } else {
        stdin.lock().read_line(&mut line).map_err(|e| fail(format!("cannot read stdin: {e}")))?;
    }
    let v = line.trim_end_matches(['\n', '\r']).to_string();
    if v.is_empty() {
        return Err(usage("the secret is empty"));
    }
    Ok(v)
}

/// What asking for a secret on a terminal takes (a trait, so that the order of the steps is
/// tested).
trait Terminal {
    fn echo(&mut self, on: bool) -> std::io::Result<()>;
    fn show(&mut self, text: &str);
    fn read_line(&mut self, line: &mut String) -> std::io::Result<usize>;
}

/// Standard input's terminal, and its settings from before echo went off.
struct Tty {
    saved: Option<nix::sys::termios::Termios>,
}

impl Terminal for Tty {
    fn echo(&mut self, on: bool) -> std::io::Result<()> {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        use std::os::fd::AsFd;
        let stdin = std::io::stdin();
        if on {
            match self.saved.take() {
                Some(t) => tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &t).map_err(std::io::Error::from),
                None => Ok(()),
            }
        } else {
            let saved = tcgetattr(stdin.as_fd())?;
            let mut t = saved.clone();
            t.local_flags.remove(LocalFlags::ECHO);
            self.saved = Some(saved);
            tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &t).map_err(std::io::Error::from)
        }
    }

    fn show(&mut self, text: &str) {
        use std::io::Write;
        eprint!("{text}");
        let _ = std::io::stderr().flush();
    }

    fn read_line(&mut self, line: &mut String) -> std::io::Result<usize> {
        std::io::BufRead::read_line(&mut std::io::stdin().lock(), line)
    }
}

/// Echo goes off before the prompt is shown, so that an answer typed as soon as the prompt
/// appears is never echoed; it comes back on whatever the read gave.
fn ask_without_echo(t: &mut impl Terminal, prompt: &str) -> CliResult<String> {
    t.echo(false).map_err(|e| fail(format!("cannot turn the terminal's echo off: {e}")))?;
    t.show(prompt);
    let mut line = String::new();
    let r = t.read_line(&mut line);
    let _ = t.echo(true);
    t.show("\n");
    r.map_err(|e| fail(format!("cannot read the terminal: {e}")))?;
    Ok(line)
}

/// A secret (`what`) from the first line of file `f`, `-` for standard input; an empty one is
/// refused.
pub fn secret_from_file(f: &std::path::Path, what: &str) -> CliResult<String> {
    let text = if f == std::path::Path::new("-") {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::stdin().lock(), &mut line)
            .map_err(|e| fail(format!("cannot read {what} from stdin: {e}")))?;
        line
    } else {
        let text = std::fs::read_to_string(f).map_err(|e| fail(format!("{}: {e}", f.display())))?;
        text.lines().next().unwrap_or_default().to_string()
    };
    let v = text.trim_end_matches(['\n', '\r']).to_string();
    if v.is_empty() {
        return Err(usage(format!("{}: {what} is empty", f.display())));
    }
    Ok(v)
}

/// Where a command takes a password from: `--database-passwd-file FILE` (its first line; `-`
/// is standard input), else `--database-passwd` (kept for the Scyld command line; it shows the
/// password to every user of the machine, so the command says so), else the terminal without
/// echo (`hint` says what to give when there is none).
pub fn password_from(
    file: Option<&std::path::Path>,
    given: Option<&str>,
    prompt: &str,
    hint: &str,
) -> CliResult<String> {
    if let Some(f) = file {
        return secret_from_file(f, "the password");
    }
    match given {
        Some("") => Err(usage("--database-passwd is empty")),
        Some(p) => {
            eprintln!(
                "warning: --database-passwd shows the password to every user of this machine (ps, /proc); \
                 prefer --database-passwd-file FILE (- for standard input) or the prompt"
            );
            Ok(p.to_string())
        }
        None => read_password_tty(prompt, hint),
    }
}

/// Asks before a command changes or stops more than one node: on a terminal the question
/// (`Delete 12 nodes n[0-11]?`) must be answered `y`; without a terminal the command needs
/// `--yes`. `yes` skips the question.
pub fn confirm(question: &str, yes: bool) -> CliResult<()> {
    use std::io::{BufRead, IsTerminal};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(usage(format!("{question} There is no terminal to ask on: give --yes to go ahead")));
    }
    eprint!("{question} [y/N] ");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| fail(format!("cannot read the terminal: {e}")))?;
    match line.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(fail("nothing was done")),
    }
}

/// The `-i NAME` given before the command or after it (`scyld-bootctl -i b ls` or
/// `scyld-bootctl ls -i b`); both at once is a usage error.
pub fn selected_once(before: Option<&String>, after: Option<&String>) -> CliResult<Option<String>> {
    match (before, after) {
        (Some(_), Some(_)) => Err(usage("give -i once: before the command or after it, not both")),
        (b, a) => Ok(b.or(a).cloned()),
    }
}

/// Node names as one compact selector (`n[0-2,4-99]`), what `-i` takes.
pub fn node_ranges<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    select::compress(names)
}

/// `1 node n3`, `100 nodes n[0-99]`.
pub fn count_nodes<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.into_iter().collect();
    let s = if names.len() == 1 { "" } else { "s" };
    format!("{} node{s} {}", names.len(), node_ranges(names.iter().copied()))
}

/// How long ago Unix time `t` was, for tables ("-" when unknown).
pub fn ago(t: Option<u64>) -> String {
    let Some(t) = t else { return "-".into() };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let s = now.saturating_sub(t);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A time in milliseconds since the epoch as UTC: `2026-12-02 23:59:01Z`.
pub fn utc(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil_from_days
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `--since`: an age (`90s`, `15m`, `2h`, `7d`), a UTC time (`2026-12-02T08:00:00Z`,
/// `2026-12-02 08:00`, `2026-12-02`), or Unix seconds; as milliseconds since the epoch.
pub fn parse_since(s: &str, now_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "--since {s:?}: give an age (90s, 15m, 2h, 7d), a UTC time (2026-12-02T08:00:00Z or 2026-12-02) or Unix seconds"
        )
    };
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c))
        && let Ok(n) = s[..s.len() - 1].parse::<u64>()
    {
        let mult = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return Ok(now_ms.saturating_sub(n.saturating_mul(mult).saturating_mul(1000)));
    }
    if s.len() >= 9 && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().map(|n| n.saturating_mul(1000)).map_err(|_| bad());
    }
    let t = s.trim_end_matches(['Z', 'z']);
    let (date, time) = t.split_once(['T', 't', ' ']).unwrap_or((t, "00:00:00"));
    let num = |v: Option<&str>, lo: u32, hi: u32| -> Result<u32, String> {
        v.and_then(|v| v.parse::<u32>().ok()).filter(|n| (lo..=hi).contains(n)).ok_or_else(bad)
    };
    let mut dp = date.split('-');
    let y = num(dp.next(), 1970, 9999)?;
    let mo = num(dp.next(), 1, 12)?;
    let d = num(dp.next(), 1, 31)?;
    if dp.next().is_some() {
        return Err(bad());
    }
    let mut tp = time.split(':');
    let h = num(tp.next(), 0, 23)?;
    let mi = num(tp.next().or(Some("0")), 0, 59)?;
    let sec = num(tp.next().or(Some("0")), 0, 60)?;
    if tp.next().is_some() {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
    Ok(u64::try_from(secs).map_err(|_| bad())? * 1000)
}

/// The administrator running the command: the user behind sudo, else the login name.
pub fn who() -> String {
    let name = ["SUDO_USER", "USER", "LOGNAME"].iter().find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()));
    let name = name.unwrap_or_else(|| format!("uid {}", nix::unistd::getuid()));
    name.chars().filter(|c| c.is_ascii_graphic() || *c == ' ').take(64).collect()
}

/// The nodes a selector names. Every exact name must exist and every range must match a node.
pub fn select_nodes<'a>(nodes: &'a [Node], selector: &str) -> CliResult<Vec<&'a Node>> {
    let sel = select::parse(selector).map_err(|e| usage(e.to_string()))?;
    let macs: Vec<Vec<String>> = nodes.iter().map(|n| n.macs.iter().map(|m| m.to_string()).collect()).collect();
    let mut picked = vec![false; nodes.len()];
    for t in &sel.terms {
        let mut any = false;
        for (i, n) in nodes.iter().enumerate() {
            if t.matches(&n.name, &n.uid, &macs[i]) {
                picked[i] = true;
                any = true;
            }
        }
        if !any {
            return Err(fail(format!("no node matches {t}")));
        }
    }
    Ok(nodes.iter().zip(picked).filter(|(_, p)| *p).map(|(n, _)| n).collect())
}

/// Prints rows under a header with columns aligned; the last column is not padded.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| if i == last { c.to_string() } else { format!("{c:<w$}", w = widths[i]) })
            .collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Percent-encodes a query value or path parameter.
pub use clusterware_shared::api::path::escape as query_escape;

/// A byte count for people: `512 B`, `1.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// A reader that reports progress on stderr (when it is a terminal) and hashes what it reads.
pub struct Progress<R> {
    inner: R,
    label: String,
    total: u64,
    done: u64,
    started: std::time::Instant,
    last: std::time::Instant,
    show: bool,
    /// Hashes what is read (uploads compare it with the head's checksum).
    pub hasher: Option<sha2::Sha256>,
}

impl<R> Progress<R> {
    pub fn new(inner: R, label: &str, total: u64) -> Self {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Progress {
            inner,
            label: label.to_string(),
            total,
            done: 0,
            started: now,
            last: now,
            show: std::io::stderr().is_terminal(),
            hasher: None,
        }
    }

    /// Also hashes what is read.
    pub fn hashing(mut self) -> Self {
        self.hasher = Some(sha2::Digest::new());
        self
    }

    fn report(&self, last: bool) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = human_bytes((self.done as f64 / secs) as u64);
        let end = if last { "\n" } else { "" };
        if self.total == 0 {
            // Unknown total (a stream): bytes so far.
            eprint!("\r{}: {} ({rate}/s){end}", self.label, human_bytes(self.done));
        } else {
            let pct = self.done as f64 * 100.0 / self.total as f64;
            eprint!(
                "\r{}: {pct:5.1}% {} of {} ({rate}/s){end}",
                self.label,
                human_bytes(self.done),
                human_bytes(self.total)
            );
        }
    }

    /// `done` bytes so far, of `total` when known (a download's progress hook).
    pub fn update(&mut self, done: u64, total: Option<u64>) {
        self.done = done;
        if let Some(t) = total {
            self.total = t;
        }
        if self.show && self.last.elapsed() >= std::time::Duration::from_millis(200) {
            self.last = std::time::Instant::now();
            self.report(false);
        }
    }

    /// Ends the progress line.
    pub fn finish(&self) {
        if self.show {
            self.report(true);
        }
    }
}

impl<R: std::io::Read> std::io::Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(h) = self.hasher.as_mut() {
            sha2::Digest::update(h, &buf[..n]);
        }
        self.update(self.done + n as u64, None);
        Ok(n)
    }
}

/// Uploads a local file as a boot file (progress on a terminal; the checksum the head computed is
/// compared with the one of the bytes read here).
pub fn upload_file(c: &Client, path: &std::path::Path, name: Option<&str>, kind: &str) -> CliResult<FileRecord> {
    let name = match name {
        Some(n) => n.to_string(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .ok_or_else(|| usage(format!("{} has no file name; give --name", path.display())))?,
    };
    let f = std::fs::File::open(path).map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    let meta = f.metadata().map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(fail(format!("{} is not a regular file", path.display())));
    }
    let mut reader = Progress::new(std::io::BufReader::with_capacity(1 << 20, f), &name, meta.len()).hashing();
    let rec = c.upload_file(&name, kind, meta.len(), None, &mut reader).map_err(|e| match e {
        clusterware_client::Error::Local { source, .. } => fail(format!("cannot read {}: {source}", path.display())),
        e => e.into(),
    })?;
    reader.finish();
    let sent = reader.hasher.take().map(|h| hex::encode(sha2::Digest::finalize(h))).unwrap_or_default();
    if sent != rec.sha256 {
        let _ = c.delete_file(&rec.id, false);
        return Err(fail(format!("{} changed during the upload (checksums differ); nothing was kept", path.display())));
    }
    Ok(rec)
}

/// A file given as a local path (uploaded with `kind`) or as the id of a file already uploaded.
pub fn file_arg(c: &Client, arg: &str, kind: &str) -> CliResult<String> {
    let p = std::path::Path::new(arg);
    if p.exists() {
        return Ok(upload_file(c, p, None, kind)?.id);
    }
    if is_file_id(arg) {
        return Ok(arg.to_string());
    }
    file_by_id_or_name(&c.files()?, arg).map_err(|_| {
        fail(format!(
            "{arg} is neither a local file nor the id or name of an uploaded file (scyld-clusterctl files ls lists them)"
        ))
    })
}

/// The id of the file `arg` names: an id as it is, else the one file of that name.
pub fn file_by_id_or_name(list: &FileList, arg: &str) -> CliResult<String> {
    if is_file_id(arg) {
        return Ok(arg.to_string());
    }
    let hits: Vec<&FileRecord> = list.files.iter().filter(|f| f.name == arg).collect();
    match hits[..] {
        [one] => Ok(one.id.clone()),
        [] => Err(fail(format!(
            "no file has the id or name {:?} (scyld-clusterctl files ls lists them)",
            clusterware_shared::ids::shown(arg)
        ))),
        _ => Err(fail(format!(
            "{} files are named {:?}: give the id of the one you mean ({})",
            hits.len(),
            clusterware_shared::ids::shown(arg),
            hits.iter().map(|f| f.id.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Prints a value as pretty JSON.
pub fn print_json<T: Serialize>(v: &T) {
    outln!("{}", serde_json::to_string_pretty(v).expect("API types always serialise"));
}

/// The test every command has: its clap definition is consistent (unique names, valid
/// defaults), checked at `cargo test` rather than when an administrator runs it.
#[macro_export]
macro_rules! clap_consistency_test {
    ($args:ident) => {
        #[cfg(test)]
        mod clap_consistency {
            #[test]
            fn arguments_are_consistent() {
                <super::$args as clap::CommandFactory>::command().debug_assert();
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_for_the_event_log() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(1_796_255_999_000), "2026-12-02 23:59:59Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00Z");
        let now = 1_796_255_999_000;
        assert_eq!(parse_since("90s", now).unwrap(), now - 90_000);
        assert_eq!(parse_since("2h", now).unwrap(), now - 7_200_000);
        assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400_000);
        assert_eq!(parse_since("2026-12-02T23:59:59Z", now).unwrap(), now);
        assert_eq!(parse_since("2026-12-02 23:59", now).unwrap(), now - 59_000);
        assert_eq!(parse_since("2026-12-02", now).unwrap(), 1_796_169_600_000);
        assert_eq!(parse_since("1796255999", now).unwrap(), now);
        for bad in ["", "yesterday", "5y", "2026-13-01", "2026-12-02T25:00", "-5m", "2026-12-02-01"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    /// A terminal that records what was done to it, in order.
    struct Recorder(Vec<String>);

    impl Terminal for Recorder {
        fn echo(&mut self, on: bool) -> std::io::Result<()> {
            self.0.push(format!("echo {}", if on { "on" } else { "off" }));
            Ok(())
        }
        fn show(&mut self, text: &str) {
            self.0.push(format!("show {text:?}"));
        }
        fn read_line(&mut self, line: &mut String) -> std::io::Result<usize> {
            self.0.push("read".into());
            line.push_str("secret\n");
            Ok(7)
        }
    }

    /// An answer typed the moment the prompt appears is never echoed: echo is off before the
    /// prompt is shown, and on again after the read.
    #[test]
    fn echo_goes_off_before_the_prompt() {
        let mut t = Recorder(Vec::new());
        assert_eq!(ask_without_echo(&mut t, "Password: ").unwrap(), "secret\n");
        assert_eq!(t.0, ["echo off", "show \"Password: \"", "read", "echo on", "show \"\\n\""]);
    }
}
