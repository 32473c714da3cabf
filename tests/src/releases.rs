//! The last release (`RELEASES`), built beside the current tree for the upgrade tests: its
//! source exported with `git archive` from its commit (the repository is not touched) and built
//! once per machine into `target/releases/VERSION-COMMIT/` (its own target directory, the debug
//! profile: the head, the admin commands and the agent). A lock file keeps two test processes
//! from building it at once; a finished build is marked and reused.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A release built beside the tree.
pub struct Release {
    pub version: String,
    pub commit: String,
    dir: PathBuf,
    profile: &'static str,
}

impl Release {
    /// One of its programs (`clusterware-head`, `clusterware-node`, `scyld-nodectl`, …).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("target").join(self.profile).join(name)
    }
}

fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("the source tree")
}

/// The last line of `RELEASES`: (version, commit).
pub fn last_listed() -> (String, String) {
    let text = std::fs::read_to_string(top().join("RELEASES")).expect("RELEASES at the top of the tree");
    let line = text
        .lines()
        .map(str::trim)
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .expect("RELEASES lists no release");
    let mut words = line.split_whitespace();
    let (Some(v), Some(c)) = (words.next(), words.next()) else {
        panic!("RELEASES: {line:?} is not VERSION COMMIT DATE")
    };
    (v.to_string(), c.to_string())
}

fn run(what: &str, cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last release, built with the debug profile (the first call on a machine takes a few
/// minutes).
pub fn last() -> Release {
    built("debug")
}

/// The last release built with the release profile (for the benchmarks).
pub fn last_optimised() -> Release {
    built("release")
}

fn built(profile: &'static str) -> Release {
    let (version, commit) = last_listed();
    let dir = top().join("target/releases").join(format!("{version}-{}", &commit[..12.min(commit.len())]));
    std::fs::create_dir_all(&dir).expect("target/releases");
    let lock = std::fs::File::create(dir.join(".lock")).expect("lock file");
    let _held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| e).expect("flock");
    let r = Release { version: version.clone(), commit: commit.clone(), dir: dir.clone(), profile };
    let done = dir.join(format!(".built-{profile}"));
    if done.is_file() {
        return r;
    }
    let src = dir.join("src");
    if !dir.join(".source").is_file() {
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(&src).expect("source dir");
        let archive = dir.join("src.tar");
        run(
            &format!("git archive {commit} (release {version})"),
            Command::new("git").arg("-C").arg(top()).args(["archive", "--format=tar", "-o"]).arg(&archive).arg(&commit),
        );
        run("tar -x", Command::new("tar").arg("-xf").arg(&archive).arg("-C").arg(&src));
        let _ = std::fs::remove_file(&archive);
        std::fs::write(dir.join(".source"), b"").expect("mark");
    }
    eprintln!("building release {version} ({commit}, {profile}) in {}", dir.display());
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&src)
        .args(["build", "--locked", "-p", "clusterware-head", "-p", "clusterware-cli", "-p", "clusterware-node"])
        .arg("--target-dir")
        .arg(dir.join("target"));
    if profile == "release" {
        cargo.arg("--release");
    }
    run(&format!("cargo build of release {version}"), &mut cargo);
    for p in ["clusterware-head", "clusterware-node", "scyld-nodectl"] {
        assert!(r.bin(p).is_file(), "release {version}: {} was not built", r.bin(p).display());
    }
    std::fs::write(&done, b"").expect("mark");
    r
}

/// The nodes' status as `h` shows it: (name, state, parent).
pub fn fleet(h: &crate::Head) -> Vec<(String, String, String)> {
    let out = h.cli("scyld-nodectl", &["status", "--json"]);
    if out.code != 0 {
        return Vec::new();
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    out.json()["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| (s(&n["name"]), s(&n["state"]), s(&n["parent"])))
        .collect()
}

/// The fleet counted by (state, parent), for messages.
fn census(f: &[(String, String, String)]) -> std::collections::BTreeMap<(String, String), usize> {
    let mut m = std::collections::BTreeMap::new();
    for n in f {
        *m.entry((n.1.clone(), n.2.clone())).or_insert(0) += 1;
    }
    m
}

/// Polls the fleet as `h` shows it (every half second: each look lists every node) until `ok`
/// holds, keeping the most nodes seen `down`; panics with the last census after `within`.
fn until_fleet(
    h: &crate::Head,
    what: &str,
    within: Duration,
    down: &mut usize,
    ok: impl Fn(&[(String, String, String)]) -> bool,
) {
    let deadline = Instant::now() + within;
    loop {
        let f = fleet(h);
        *down = (*down).max(f.iter().filter(|n| n.1 == "down").count());
        if ok(&f) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}; {} shows (state, parent): count {:?}",
            h.name,
            census(&f)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// (failed pushes, failovers) a simulator counted so far.
pub fn push_failures(sim: &crate::Sim) -> (u64, u64) {
    let s = sim.summary();
    let failovers = s["node"].as_array().map_or(0, |v| v.iter().map(|n| n["failovers"].as_u64().unwrap_or(0)).sum());
    (s["pushes_failed"].as_u64().unwrap_or(0), failovers)
}

/// One head's turn in a rolling upgrade or restart.
#[derive(Debug, Clone)]
pub struct Step {
    pub head: String,
    /// From its stop (or restart signal) until it served again.
    pub out_of_service: Duration,
    /// Of which its database took (its log's `cluster database ready after_ms`).
    pub database: Option<Duration>,
    /// Pushes that failed and failovers in the fleet during the turn (until the head had its
    /// share of nodes again).
    pub failed_pushes: u64,
    pub failovers: u64,
    /// The most nodes any look showed down during the turn.
    pub down: usize,
    /// Nodes handed to the other heads before the stop (`clusterware-head --hand-over`), in an
    /// upgrade from the last release.
    pub handed: Option<u64>,
}

/// A cluster of the last release upgraded to this tree, one head at a time, under a fleet of
/// that release's agents; then each head restarted in place (SIGHUP, what the next update
/// does). The cluster and the fleet are kept for more checks.
pub struct Rolling {
    pub old: Release,
    pub cluster: crate::Cluster,
    pub sim: crate::Sim,
    pub nodes: usize,
    pub upgrade: Vec<Step>,
    pub restart: Vec<Step>,
}

/// The time the head's database took at its last start, from its log.
fn database_ready(h: &crate::Head) -> Option<Duration> {
    let log = std::fs::read_to_string(h.dir.join(format!("log/head_{}.log", h.name))).ok()?;
    let line = log.lines().rev().find(|l| l.contains("cluster database ready"))?;
    let ms = line.split("after_ms=").nth(1)?.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// Runs the rolling upgrade of [`Rolling`] with `nodes` simulated nodes (reporting every 5 s)
/// and 3 heads; `release` is the last release, built.
pub fn rolling_upgrade(release: Release, nodes: usize) -> Rolling {
    use crate::{Backend, Cluster, Head, Sim};
    let mut c = Cluster::configure(Backend::Etcd, 3, "rebalance.interval = 2\nrebalance.holdoff = 5\n");
    for h in &mut c.heads {
        h.program = Some(release.bin("clusterware-head"));
    }
    c.start_all();
    let (mac0, ip0) = ("52:54:00:a8:00:00", "127.208.0.1");
    let count = nodes.to_string();
    let create = ["create", "--count", &count, &format!("mac={mac0}"), &format!("ip={ip0}"), "_status_secs=5"];
    c.heads[0].cli("scyld-nodectl", &create).ok();
    let urls: Vec<String> = c.heads.iter().map(Head::url).collect();
    let sim = Sim::start_program(
        &release.bin("clusterware-node"),
        &urls,
        Some(&c.heads[0]),
        nodes as u32,
        (ip0, mac0),
        // Spread over 20 s: each node enrolls first, and a node whose enrollment is not
        // answered within a minute gives up (under a loaded CI, 1,000 at once are not).
        &["--status-secs", "5", "--ramp-secs", "20"],
    );
    // Every node up, and `name` parenting a share of them.
    let settled = |f: &[(String, String, String)], name: &str| {
        f.len() == nodes && f.iter().all(|n| n.1 == "up") && f.iter().filter(|n| n.2 == name).count() >= nodes / 6
    };
    until_fleet(&c.heads[1], "the fleet up on the last release", Duration::from_secs(300), &mut 0, |f| {
        settled(f, "head1")
    });
    // One turn of head i: `act` stops it (and starts it again); the turn ends when it serves and
    // has its share of nodes back.
    // With `hand_over`, `clusterware-head --hand-over` first (not counted as out of service: the
    // head serves meanwhile).
    let turn = |c: &mut Cluster, i: usize, hand_over: bool, act: &dyn Fn(&mut Head)| -> Step {
        let other = (i + 1) % 3;
        let name = c.heads[i].name.clone();
        let before = push_failures(&sim);
        let handed = hand_over.then(|| {
            let out = c.heads[i].cli("clusterware-head", &["--hand-over", "--json"]);
            eprintln!("hand-over of {name}: {}", out.ok());
            out.json()["moved"].as_u64().unwrap_or(0)
        });
        let started = c.heads[i].try_health().map(|v| v["started_ms"].clone());
        let mut down = 0;
        let t0 = Instant::now();
        act(&mut c.heads[i]);
        let out_of_service = loop {
            let f = fleet(&c.heads[other]);
            down = down.max(f.iter().filter(|n| n.1 == "down").count());
            if c.heads[i]
                .try_health()
                .is_some_and(|v| v["state"] == "serving" && Some(v["started_ms"].clone()) != started)
            {
                break t0.elapsed();
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "{name} did not serve again:\n{}",
                c.heads[i].stderr_tail()
            );
            std::thread::sleep(Duration::from_millis(300));
        };
        until_fleet(
            &c.heads[other],
            &format!("{name} given its share again"),
            Duration::from_secs(120),
            &mut down,
            |f| settled(f, &name),
        );
        let after = push_failures(&sim);
        Step {
            head: name,
            out_of_service,
            database: database_ready(&c.heads[i]),
            failed_pushes: after.0 - before.0,
            failovers: after.1 - before.1,
            down,
            handed,
        }
    };
    let mut upgrade = Vec::new();
    for i in 0..3 {
        // What the package's postinst does before it restarts a head on the new binaries: the
        // new program hands the running head's nodes over (a head of the last release does not
        // when it stops). The head serves meanwhile: not counted as out of service.
        upgrade.push(turn(&mut c, i, true, &|h: &mut Head| {
            h.stop();
            h.program = None;
            h.start();
        }));
    }
    let mut restart = Vec::new();
    for i in 0..3 {
        restart.push(turn(&mut c, i, false, &|h: &mut Head| {
            crate::sys::kill(h.pid().expect("running"), nix::sys::signal::Signal::SIGHUP);
        }));
    }
    Rolling { old: release, cluster: c, sim, nodes, upgrade, restart }
}
