//! `clusterware-head`: the head daemon (run by systemd as `clusterware.service`).
//! Exit codes: 0 after a clean shutdown, 1 when it cannot start or fails, 2 on usage errors.

use clap::Parser;
use clusterware_head::args::Args;
use clusterware_head::daemon;
use clusterware_shared::config::{self, Config};
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc rather than glibc's allocator: a head under load (thousands of status pushes a second,
/// hundreds of transfers) spent a fifth of its CPU in glibc's malloc and free (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    std::sync::LazyLock::force(&clusterware_head::core::http::STARTED_MS);
    let args = Args::parse();
    let path = config::resolve_path(args.config.as_deref());
    let loaded = match Config::load(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        eprintln!("clusterware-head: warning: {w}");
    }
    let cfg = loaded.config;
    let name = match daemon::head_name(&cfg) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
    };
    if args.check_config {
        if let Err(e) = cfg.require_admin_pass() {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
        clusterware_shared::outln!("head.name = {name}");
        clusterware_shared::outln!("database.type = {}", cfg.database_type.as_str());
        clusterware_shared::outln!("head.port = {}", cfg.head_port);
        clusterware_shared::outln!("logging.dir = {}", cfg.log_dir.display());
        // The warnings went to stderr above, each on its line.
        match loaded.warnings.len() {
            0 => clusterware_shared::outln!("configuration {} is valid", cfg.path.display()),
            1 => clusterware_shared::outln!("configuration {} is valid, with 1 warning (above)", cfg.path.display()),
            n => clusterware_shared::outln!("configuration {} is valid, with {n} warnings (above)", cfg.path.display()),
        }
        return ExitCode::SUCCESS;
    }
    if args.hand_over {
        return hand_over(&cfg, &name, args.within, args.json);
    }
    let _guard = match daemon::init_logging(&cfg, &name) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterware-head: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(daemon::run(cfg, name)) {
        Ok(daemon::Exit::Stopped) => ExitCode::SUCCESS,
        Ok(daemon::Exit::Restart) => {
            // Start again in the same process (same pid for systemd and for whoever started
            // it), reading the configuration afresh. Every descriptor is close-on-exec.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            drop(_guard);
            // The installed program (a newer one after an upgrade), else the running one.
            let exe = std::env::current_exe()
                .ok()
                .map(|p| PathBuf::from(p.to_string_lossy().trim_end_matches(" (deleted)")))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
            let mut cmd = std::process::Command::new(&exe);
            cmd.args(std::env::args_os().skip(1));
            let err = std::os::unix::process::CommandExt::exec(&mut cmd);
            eprintln!("clusterware-head: error: cannot restart {}: {err}", exe.display());
            ExitCode::from(1)
        }
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("clusterware-head: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--hand-over`: the nodes of the head running with `cfg` handed to the other heads.
fn hand_over(cfg: &Config, name: &str, within: u64, json: bool) -> ExitCode {
    use clusterware_head::rebalance::hand_over::of_running_head;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clusterware-head: error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let h = match rt.block_on(of_running_head(cfg, name, std::time::Duration::from_secs(within))) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("clusterware-head: error: {e}");
            return ExitCode::from(1);
        }
    };
    if json {
        clusterware_shared::outln!("{}", serde_json::to_string_pretty(&h).expect("serialises"));
    } else if let Some(note) = &h.note {
        clusterware_shared::outln!("{name}: nothing handed over: {note}");
    } else {
        let to: Vec<String> = h.to.iter().map(|(head, n)| format!("{head} ({n})")).collect();
        clusterware_shared::outln!(
            "{name}: {} of its {} nodes report to other heads now: {} ({:.1} s); rebalancing gives it nodes again once it \
             restarted",
            h.moved,
            h.nodes,
            to.join(", "),
            h.seconds
        );
    }
    if h.not_moved() > 0 {
        eprintln!(
            "clusterware-head: warning: {} nodes did not move within {within} s; they fail over when {name} stops",
            h.not_moved()
        );
    }
    ExitCode::SUCCESS
}
