//! Head membership with real etcd members: `scyld-install` and `--join` growing a cluster
//! 1 → 2 → 3 → 5, `leave` and `eject`, heads that left or were ejected refusing every command,
//! the two-head rules and `recover`, automatic failover (once, until reset; never for two
//! failures at once), and the bad inputs of a join.

use clusterware_tests::{Cluster, Head, LEASE_TTL, Out, address_block, cli, free_port, poll_until};
use serde_json::{Value, json};
use std::net::{Ipv4Addr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Heads installed with `scyld-install` under one temp dir, on 127.A.B.11, .12, …
struct Installed {
    dir: TempDir,
    block: (u8, u8),
    heads: Vec<Head>,
}

/// What `scyld-install` needs for head `i` (1-based).
struct Spot {
    name: String,
    ip: Ipv4Addr,
    port: u16,
    prefix: PathBuf,
    args: Vec<String>,
}

impl Installed {
    fn new() -> Installed {
        Installed { dir: TempDir::with_prefix("cw-install-").unwrap(), block: address_block(), heads: Vec::new() }
    }

    fn spot(&self, i: usize) -> Spot {
        let ip = Ipv4Addr::new(127, self.block.0, self.block.1, 10 + i as u8);
        let name = format!("head{i}");
        let prefix = self.dir.path().join(&name);
        let port = free_port(ip);
        let args = vec![
            "--prefix".into(),
            prefix.display().to_string(),
            "--name".into(),
            name.clone(),
            "--ip".into(),
            ip.to_string(),
            "--port".into(),
            port.to_string(),
            "--peer-port".into(),
            free_port(ip).to_string(),
            "--no-systemd".into(),
            "--set".into(),
            format!("head.bind={ip}"),
            "--set".into(),
            format!("head.lease_ttl={LEASE_TTL}"),
            "--set".into(),
            "local_files.audit_interval=2".into(),
        ];
        Spot { name, ip, port, prefix, args }
    }

    fn install(&self, s: &Spot, extra: &[&str]) -> Out {
        let mut a: Vec<&str> = s.args.iter().map(String::as_str).collect();
        a.extend_from_slice(extra);
        cli("scyld-install", &a)
    }

    /// A file holding `pass` (for `--database-passwd-file`).
    fn pass_file(&self, pass: &str) -> String {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = self.dir.path().join(format!("dbpass-{n}"));
        std::fs::write(&f, format!("{pass}\n")).unwrap();
        f.display().to_string()
    }

    /// Takes charge of the head `scyld-install` started.
    fn adopt(&mut self, s: &Spot) -> usize {
        let h = Head::adopt(&s.name, s.ip, s.port, s.prefix.join("conf/base.ini"), s.prefix.clone());
        self.heads.push(h);
        self.heads.len() - 1
    }

    fn target(&self, h: usize) -> String {
        format!("{}:{}", self.heads[h].ip, self.heads[h].port)
    }

    fn password(&self) -> String {
        let text = std::fs::read_to_string(&self.heads[0].config).unwrap();
        text.lines().find_map(|l| l.strip_prefix("database.admin_pass = ")).unwrap().to_string()
    }
}

fn heads(h: &Head) -> Vec<(String, bool, String)> {
    let v = h.cli("managedb", &["--heads", "--json"]).json();
    v["heads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                x["alive"].as_bool().unwrap(),
                x["db_member"]["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn names(h: &Head) -> Vec<String> {
    heads(h).into_iter().map(|x| x.0).collect()
}

fn voting(h: &Head) -> usize {
    heads(h).iter().filter(|x| x.2 == "voting").count()
}

fn health(h: &Head) -> Value {
    h.api("GET", "/health", None, None).1
}

#[test]
fn install_join_grow_to_five_then_leave_eject_and_rejoin() {
    let mut c = Installed::new();
    // A fresh solo head: generated password in a 0600 base.ini, embedded database, started.
    let s1 = c.spot(1);
    let out = c.install(&s1, &[]);
    assert!(out.ok().contains("installed head head1"), "{out:?}");
    let conf = s1.prefix.join("conf/base.ini");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&conf).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600);
    let h1 = c.adopt(&s1);
    assert_eq!(health(&c.heads[h1])["database"], "embedded");
    // Installing again over it is refused.
    let again = c.install(&s1, &[]);
    assert!(again.code != 0 && again.stderr.contains("installed here already"), "{again:?}");
    c.heads[h1].cli("scyld-nodectl", &["create", "--count", "3", "mac=52:54:00:e0:00:01", "ip=10.60.0.1"]).ok();
    let pass = c.password();

    // Bad input changes nothing: a wrong password, an unreachable head.
    let s2 = c.spot(2);
    let target = c.target(h1);
    // (--database-passwd, kept for the Scyld command line, warns that others can read it.)
    let wrong = c.install(&s2, &["--join", &target, "--database-passwd", "not-the-password"]);
    assert_eq!(wrong.code, 1, "{wrong:?}");
    assert!(wrong.stderr.contains("could not prove that it knows this database password"), "{wrong:?}");
    assert!(wrong.stderr.contains("shows the password to every user"), "{wrong:?}");
    let passf = c.pass_file(&pass);
    assert!(!s2.prefix.exists(), "a refused join wrote nothing");
    let nowhere = format!("{}:{}", Ipv4Addr::new(127, c.block.0, c.block.1, 99), free_port(Ipv4Addr::LOCALHOST));
    let unreachable = c.install(&s2, &["--join", &nowhere, "--database-passwd-file", &passf]);
    assert!(unreachable.code == 1 && unreachable.stderr.contains("cannot reach the head"), "{unreachable:?}");
    // Without a password and without a terminal: a clear refusal.
    let no_tty = c.install(&s2, &["--join", &target]);
    assert!(no_tty.code == 1 && no_tty.stderr.contains("no terminal"), "{no_tty:?}");
    assert_eq!(health(&c.heads[h1])["database"], "embedded", "the cluster is unchanged");

    // 1 → 2: the solo head is converted into a one-member etcd cluster (its data kept), then
    // joined; the new head takes everything from the database.
    // The password from standard input.
    let mut args: Vec<&str> = s2.args.iter().map(String::as_str).collect();
    args.extend_from_slice(&["--join", &target, "--database-passwd-file", "-"]);
    let out = clusterware_tests::cli_with_stdin("scyld-install", &args, &format!("{pass}\n"));
    assert!(out.ok().contains("converted to etcd first"), "{out:?}");
    let h2 = c.adopt(&s2);
    assert_eq!(health(&c.heads[h1])["database"], "etcd");
    assert_eq!(c.heads[h2].cli("scyld-nodectl", &["ls"]).ok().lines().count(), 3);
    assert_eq!(voting(&c.heads[h1]), 2);

    // 2 → 3 → 5, each joining through a different head.
    for i in 3..=5 {
        let s = c.spot(i);
        let via = c.target(i - 2);
        let t0 = Instant::now();
        if i == 4 {
            // With --update: of the cluster's release already, it joins without one.
            let out = c.install(&s, &["--join", &via, "--database-passwd-file", &passf, "--update"]);
            assert!(out.ok().contains("(4 members now)"), "{out:?}");
            assert!(out.stderr.contains("has the release of the head at") && out.stderr.contains("no update needed"));
        } else {
            let out = c.install(&s, &["--join", &via, "--database-passwd-file", &passf, "--json"]);
            let j: Value = serde_json::from_str(out.ok()).unwrap();
            assert_eq!(j["members"], i, "{j}");
        }
        c.adopt(&s);
        eprintln!("head{i} joined in {:?}", t0.elapsed());
    }
    for h in &c.heads {
        poll_until("every head sees five voting members", Duration::from_secs(20), || voting(h) == 5);
    }
    // The checks the spec asks for: head names must resolve on every head.
    let listed = c.heads[0].cli("managedb", &["--heads"]);
    let resolves = ("head3", 0).to_socket_addrs().is_ok_and(|mut a| a.next().is_some());
    assert_eq!(listed.ok().matches("connected").count(), 5);
    assert_eq!(listed.stderr.contains("head3 (") && listed.stderr.contains("do not resolve"), !resolves, "{listed:?}");
    // In one line, whatever the number of heads.
    assert!(listed.stderr.matches("resolve").count() <= 1, "{listed:?}");
    assert_eq!(c.heads[4].cli("scyld-nodectl", &["ls"]).ok().lines().count(), 3);

    // leave (head5): it restarts detached and every command there says why.
    let out = c.heads[4].cli("managedb", &["leave"]);
    assert!(out.ok().contains("head5 left the cluster"), "{out:?}");
    assert_eq!(health(&c.heads[4])["state"], "left");
    let refused = c.heads[4].cli("scyld-nodectl", &["ls"]);
    assert!(refused.code == 1 && refused.stderr.contains("left its cluster"), "{refused:?}");
    assert!(refused.stderr.contains("managedb join"), "{refused:?}");
    poll_until("head5 gone from the list", Duration::from_secs(30), || !names(&c.heads[0]).contains(&"head5".into()));

    // eject (head4, shut down) from head1; ejecting the head one is on is refused.
    let own = c.heads[0].cli("managedb", &["eject", &c.heads[0].ip.to_string()]);
    assert!(own.code == 1 && own.stderr.contains("managedb leave"), "{own:?}");
    c.heads[3].kill9();
    poll_until("head4 down", Duration::from_secs(30), || heads(&c.heads[0]).iter().any(|x| x.0 == "head4" && !x.1));
    // An update now would take a second head out of service: refused, nothing changed; with
    // --force it goes on (to the package file, which does not exist here).
    let p1 = s1.prefix.display().to_string();
    let started = health(&c.heads[0])["started_ms"].clone();
    let up = cli("scyld-install", &["--prefix", &p1, "--update", "--deb", "/nonexistent/clusterware.deb"]);
    assert!(up.code == 1 && up.stderr.contains("head4 (") && up.stderr.contains("is down"), "{up:?}");
    assert!(up.stderr.contains("give --force") && up.stderr.contains("nothing was changed"), "{up:?}");
    let forced = cli("scyld-install", &["--prefix", &p1, "-u", "--force", "--deb", "/nonexistent/clusterware.deb"]);
    assert!(forced.code == 1 && forced.stderr.contains("updating although head4"), "{forced:?}");
    assert!(forced.stderr.contains("--deb /nonexistent/clusterware.deb: No such file"), "{forced:?}");
    assert_eq!(health(&c.heads[0])["started_ms"], started, "head1 was not restarted");
    let nowhere = c.dir.path().join("nothing-here");
    let out = cli("scyld-install", &["--prefix", nowhere.to_str().unwrap(), "-u"]);
    assert!(out.code == 1 && out.stderr.contains("not installed under"), "{out:?}");
    let out = c.heads[0].cli("managedb", &["eject", &c.heads[3].ip.to_string()]);
    assert!(out.ok().contains("ejected head4"), "{out:?}");
    assert_eq!(names(&c.heads[0]), ["head1", "head2", "head3"]);
    // The ejected head, started again, finds out and refuses every command.
    c.heads[3].start();
    poll_until("head4 detached", Duration::from_secs(60), || {
        c.heads[3].try_health().is_some_and(|v| v["state"] == "ejected")
    });
    let refused = c.heads[3].cli("scyld-clusterctl", &["heads", "ls"]);
    assert!(refused.code == 1 && refused.stderr.contains("ejected from its cluster"), "{refused:?}");
    assert!(c.heads[3].config.exists());

    // Both come back with `managedb join` (the departed head keeps the cluster's password).
    for i in [3, 4] {
        let via = c.target(1);
        let out = c.heads[i].cli("managedb", &["join", &via]);
        assert!(out.ok().contains("joined the cluster of head2"), "{out:?}");
        assert_eq!(c.heads[i].cli("scyld-nodectl", &["ls"]).ok().lines().count(), 3);
    }
    poll_until("five voting members again", Duration::from_secs(20), || voting(&c.heads[0]) == 5);
    // A head that is a member already is told so.
    let dup = c.heads[4].cli("managedb", &["join", &c.target(0)]);
    assert!(dup.code == 1 && dup.stderr.contains("already a member"), "{dup:?}");

    // A running head is not ejected without --force (it should leave); with it, it notices by
    // itself (its member stops) and detaches.
    let out = c.heads[0].cli("managedb", &["eject", "head5"]);
    assert!(out.code == 1 && out.stderr.contains("alive and serving") && out.stderr.contains("--force"), "{out:?}");
    assert_eq!(voting(&c.heads[1]), 5);
    let out = c.heads[0].cli("managedb", &["eject", "--force", "head5"]);
    assert!(out.ok().contains("ejected head5"), "{out:?}");
    poll_until("the running head5 detached", Duration::from_secs(60), || {
        c.heads[4].try_health().is_some_and(|v| v["state"] == "ejected")
    });
    assert_eq!(voting(&c.heads[1]), 4);
}

#[test]
fn two_heads_refuse_leave_and_eject_and_recover_into_two_solo_heads() {
    let mut c = Installed::new();
    let s1 = c.spot(1);
    c.install(&s1, &["--database", "etcd"]).ok();
    c.adopt(&s1);
    let pass = c.password();
    let passf = c.pass_file(&pass);
    let s2 = c.spot(2);
    c.install(&s2, &["--join", &c.target(0), "--database-passwd-file", &passf]).ok();
    c.adopt(&s2);
    c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:e1:00:01", "ip=10.61.0.1"]).ok();

    // A join whose head cannot start its member is undone: no learner is left behind.
    let s9 = c.spot(9);
    let broken = c.install(
        &s9,
        &["--join", &c.target(0), "--database-passwd-file", &passf, "--set", "database.etcd_binary=/nonexistent/etcd"],
    );
    assert!(broken.code == 1 && broken.stderr.contains("the join was undone"), "{broken:?}");
    assert!(!s9.prefix.join("conf/base.ini").exists());
    let (_, info) = c.heads[0].api("GET", "/cluster", Some(&clusterware_shared::auth::admin_token(&pass)), None);
    assert_eq!(info["members"].as_array().map(Vec::len), Some(2), "{info}");

    // Another cluster (a solo head with its own password): head2 cannot join it while it is in
    // this one.
    let s3 = c.spot(3);
    c.install(&s3, &[]).ok();
    let other = c.adopt(&s3);
    let other_pass = {
        let text = std::fs::read_to_string(&c.heads[other].config).unwrap();
        text.lines().find_map(|l| l.strip_prefix("database.admin_pass = ")).unwrap().to_string()
    };
    let other_passf = c.pass_file(&other_pass);
    let out = c.heads[1].cli("managedb", &["join", &c.target(other), "--database-passwd-file", &other_passf]);
    assert!(out.code == 1 && out.stderr.contains("another cluster"), "{out:?}");
    assert_eq!(health(&c.heads[other])["database"], "embedded", "the other cluster is unchanged");

    // A head of a multi-head cluster is not wiped by a reinstall.
    let out = c.install(&s2, &["--clear-all"]);
    assert!(out.code == 1 && out.stderr.contains("managedb leave"), "{out:?}");
    assert!(s2.prefix.join("conf/base.ini").exists());

    // Two heads: leave and eject are refused with the spec's explanation.
    let out = c.heads[1].cli("managedb", &["leave"]);
    assert!(out.code == 1 && out.stderr.contains("managedb recover"), "{out:?}");
    let out = c.heads[0].cli("managedb", &["eject", "head2"]);
    assert!(out.code == 1 && out.stderr.contains("quorum"), "{out:?}");
    assert_eq!(voting(&c.heads[0]), 2);

    // recover on both: two solo heads, each with the data, each on its own.
    for i in [0, 1] {
        let out = c.heads[i].cli("managedb", &["recover"]);
        assert!(out.ok().contains("one-member cluster"), "{out:?}");
        assert!(out.stderr.contains("compete for the same booting nodes"), "{out:?}");
    }
    for i in [0, 1] {
        let h = &c.heads[i];
        poll_until("a one-head list", Duration::from_secs(30), || heads(h).len() == 1);
        assert_eq!(names(h), [h.name.clone()]);
        assert_eq!(h.cli("scyld-nodectl", &["ls"]).ok().trim(), "n0");
        let mac = format!("52:54:00:e1:01:0{i}");
        h.cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip=10.61.1.{i}")]).ok();
    }
    // Severed: what one creates the other does not see.
    assert_eq!(c.heads[0].cli("scyld-nodectl", &["ls"]).ok().lines().count(), 2);
    assert_eq!(c.heads[1].cli("scyld-nodectl", &["ls"]).ok().lines().count(), 2);
    let v = c.heads[0].cli("scyld-nodectl", &["ls", "--json"]).json();
    assert!(!v.to_string().contains("52:54:00:e1:01:01"), "{v}");
    // A head told to join itself is refused before anything changes (no save of its data).
    let conf_dir = c.heads[1].config.parent().unwrap().to_path_buf();
    let saved = || {
        std::fs::read_dir(&conf_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("before-join-"))
            .count()
    };
    let own = c.heads[1].cli("managedb", &["join", &c.target(1)]);
    assert!(own.code == 1 && own.stderr.contains("is this head (head2) itself"), "{own:?}");
    assert_eq!(saved(), 0, "a refused join saved the head's data");
    // And one can join the other again; its own data is saved, not lost.
    let out = c.heads[1].cli("managedb", &["join", &c.target(0)]);
    assert!(out.ok().contains("joined the cluster of head1"), "{out:?}");
    assert!(out.stderr.contains("before-join-"), "{out:?}");
    let list = heads(&c.heads[0]);
    assert_eq!(list.iter().filter(|x| x.2 == "voting").count(), 2, "{list:?} {out:?}");
}

/// Waits until `name` is shown as not alive by head `via`.
fn wait_down(c: &Cluster, via: usize, name: &str) {
    poll_until(&format!("{name} down"), Duration::from_secs(30), || {
        heads(&c.heads[via]).iter().any(|x| x.0 == name && !x.1)
    });
}

fn failover(c: &Cluster, via: usize) -> Value {
    c.heads[via].cli("managedb", &["failover", "status", "--json"]).json()
}

#[test]
fn automatic_failover_ejects_once_until_reset() {
    let mut c = Cluster::etcd(4);
    assert_eq!(failover(&c, 0)["enabled"], false, "off by default");
    let bad = c.heads[0].cli("managedb", &["failover", "enable", "--timeout", "1"]);
    assert!(bad.code == 1 && bad.stderr.contains("5 to 86400"), "{bad:?}");
    c.heads[0].cli("managedb", &["failover", "enable", "--timeout", "5"]).ok();

    // One head dies: ejected once, after the timeout; failover disarms.
    c.heads[3].kill9();
    let killed = Instant::now();
    poll_until("head4 ejected", Duration::from_secs(60), || !names(&c.heads[0]).contains(&"head4".into()));
    assert!(killed.elapsed() >= Duration::from_secs(5), "not before the timeout: {:?}", killed.elapsed());
    let f = failover(&c, 1);
    assert_eq!((f["armed"].as_bool(), f["last"]["head"].as_str()), (Some(false), Some("head4")), "{f}");
    assert_eq!(voting(&c.heads[0]), 3);
    // The metrics say so: one ejection among the heads' counters, failover enabled but disarmed.
    let ejected = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(r#"clusterware_failover_events_total{event="ejected"} "#))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let scrapes: Vec<String> = c.heads[..3].iter().map(|h| h.metrics(Some(&c.token)).1).collect();
    assert_eq!(scrapes.iter().map(|t| ejected(t)).sum::<u64>(), 1, "{scrapes:?}");
    assert!(
        scrapes[0].contains("\nclusterware_failover_enabled 1\n")
            && scrapes[0].contains("\nclusterware_failover_armed 0\n"),
        "{}",
        scrapes[0]
    );

    // A second failure is not ejected while disarmed …
    c.heads[2].kill9();
    wait_down(&c, 0, "head3");
    std::thread::sleep(Duration::from_secs(5 + 3));
    assert!(names(&c.heads[0]).contains(&"head3".into()), "no cascade");
    // … until an administrator resets failover.
    c.heads[1].cli("managedb", &["failover", "reset"]).ok();
    poll_until("head3 ejected after reset", Duration::from_secs(30), || !names(&c.heads[0]).contains(&"head3".into()));
    assert_eq!(names(&c.heads[0]), ["head1", "head2"]);
    let f = failover(&c, 0);
    assert_eq!((f["armed"].as_bool(), f["last"]["head"].as_str()), (Some(false), Some("head3")), "{f}");
    // The cluster kept serving throughout.
    c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:e2:00:01", "ip=10.62.0.1"]).ok();
}

#[test]
fn two_simultaneous_failures_eject_nothing_and_a_dead_learner_costs_no_quorum() {
    let mut c = Cluster::etcd(5);
    // A joining head whose member never answers: a learner, which does not count for quorum.
    let ghost_ip = Ipv4Addr::new(127, 0, 0, 1);
    let ghost = json!({"name": "ghost", "peer_url": format!("https://{ghost_ip}:{}", free_port(ghost_ip))});
    let (status, v) = c.heads[0].api("POST", "/cluster/members", Some(&c.token), Some(&ghost));
    assert_eq!(status, 200, "{v}");
    // Bad requests are refused and add nothing.
    for bad in [json!({"name": "x y", "peer_url": "http://127.0.0.1:1"}), json!({"name": "ok", "peer_url": "ftp://a"})]
    {
        let (status, _) = c.heads[0].api("POST", "/cluster/members", Some(&c.token), Some(&bad));
        assert_eq!(status, 400);
    }
    let (_, info) = c.heads[0].api("GET", "/cluster", Some(&c.token), None);
    assert_eq!(info["members"].as_array().unwrap().len(), 6, "{info}");

    c.heads[0].cli("managedb", &["failover", "enable", "--timeout", "5"]).ok();
    c.heads[3].kill9();
    c.heads[4].kill9();
    wait_down(&c, 0, "head4");
    wait_down(&c, 0, "head5");
    std::thread::sleep(Duration::from_secs(5 + 3));
    assert_eq!(names(&c.heads[0]), ["head1", "head2", "head3", "head4", "head5"], "nothing ejected");
    let f = failover(&c, 0);
    assert_eq!((f["armed"].as_bool(), f["last"].is_null()), (Some(true), true), "{f}");
    // Three of five voting members: quorum, the learner notwithstanding.
    c.heads[1].cli("scyld-nodectl", &["create", "mac=52:54:00:e3:00:01", "ip=10.63.0.1"]).ok();
    // The dead learner goes by its address.
    let out = c.heads[2].cli("managedb", &["eject", "127.0.0.1"]);
    assert!(out.ok().contains("ejected"), "{out:?}");

    // Time spent down together does not count toward one head's timeout: head5 comes back, head4
    // a moment later, and head4 is not ejected while it starts (it had been down for longer than
    // the timeout, but never alone).
    c.heads[0].cli("managedb", &["failover", "enable", "--timeout", "10"]).ok();
    std::thread::sleep(Duration::from_secs(4));
    c.heads[4].start();
    c.heads[4].wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    c.heads[3].start();
    c.heads[3].wait_ready(Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(names(&c.heads[0]), ["head1", "head2", "head3", "head4", "head5"], "head4 ejected as it came back");
    let f = failover(&c, 0);
    assert!(f["last"].is_null(), "{f}");
}

/// A fresh installation that is refused, or whose head cannot start, leaves nothing behind: no
/// configuration, directory or process.
#[test]
fn a_refused_or_failed_install_leaves_nothing_behind() {
    let c = Installed::new();
    let s = c.spot(1);
    let bad = c.install(&s, &["--set", "rebalance.interval=0"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("rebalance.interval"), "{bad:?}");
    assert!(!s.prefix.exists(), "a refused install created nothing");

    let out = c.install(&s, &["--database", "etcd", "--set", "database.etcd_binary=/nonexistent/etcd"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("the head exited at start"), "{out:?}");
    assert!(out.stderr.contains("removed what it had created"), "{out:?}");
    assert!(!s.prefix.exists(), "{} is still there: {out:?}", s.prefix.display());
    let left = clusterware_tests::processes_named(&s.prefix.display().to_string());
    assert!(left.is_empty(), "processes of the failed install still run: {left:?}");
}

#[test]
fn install_from_a_cluster_configuration_and_reinstall_with_clear_all() {
    let mut c = Installed::new();
    let s1 = c.spot(1);
    let conf = c.dir.path().join("cluster.conf");
    std::fs::write(
        &conf,
        "# two racks\niprange 10.64.0.10-10.64.0.20/24\ndomain cluster.test\nnode 52:54:00:e4:00:01\nnode 52:54:00:e4:00:02 52:54:00:e4:01:02\n",
    )
    .unwrap();
    let out = c.install(&s1, &["--config", conf.to_str().unwrap(), "--json"]);
    let v: Value = serde_json::from_str(out.ok()).unwrap();
    assert_eq!(v["nodes"], 2, "{v}");
    let h = c.adopt(&s1);
    let ini = std::fs::read_to_string(&c.heads[h].config).unwrap();
    assert!(ini.contains("dhcp.first_ip = 10.64.0.10") && ini.contains("dhcp.netmask = 255.255.255.0"), "{ini}");
    assert!(ini.contains("dhcp.domain = cluster.test"), "{ini}");
    let long = c.heads[h].cli("scyld-nodectl", &["ls", "-l"]);
    assert!(long.ok().contains("10.64.0.10") && long.stdout.contains("10.64.0.11"), "{long:?}");
    assert!(long.stdout.contains("52:54:00:e4:01:02"), "{long:?}");
    let old_pass = c.password();

    // A malformed configuration is refused before anything changes.
    let bad = c.dir.path().join("bad.conf");
    std::fs::write(&bad, "node 52:54:00:e4:00:09\n").unwrap();
    let out = c.install(&s1, &["--clear-all", "--config", bad.to_str().unwrap()]);
    assert!(out.code != 0 && out.stderr.contains("need an iprange"), "{out:?}");
    assert_eq!(c.heads[h].cli("scyld-nodectl", &["ls"]).ok().lines().count(), 2, "the head is untouched");

    // --clear-all: the old head stops, its state goes, a new one starts from the configuration.
    std::fs::write(&conf, "iprange 10.65.0.1/16\nnode 52:54:00:e5:00:01\n").unwrap();
    let out = c.install(&s1, &["--clear-all", "--config", conf.to_str().unwrap()]);
    assert!(out.ok().contains("1 nodes"), "{out:?}");
    assert!(out.stderr.contains("removed the previous installation"), "{out:?}");
    c.heads.clear();
    let h = c.adopt(&s1);
    assert_ne!(c.password(), old_pass, "a new password");
    let long = c.heads[h].cli("scyld-nodectl", &["ls", "-l"]);
    assert!(long.ok().contains("52:54:00:e5:00:01") && !long.stdout.contains("52:54:00:e4"), "{long:?}");
}

#[test]
fn a_head_left_alone_without_quorum_is_recovered_while_it_waits() {
    // Two heads; one dies for good and the other restarts: it waits for a quorum that cannot
    // come, answering `starting`, and `managedb recover` brings it back on its own.
    let mut c = Cluster::etcd(2);
    c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:e6:00:01", "ip=10.66.0.1"]).ok();
    c.heads[1].kill9();
    c.heads[0].stop();
    c.heads[0].start();
    poll_until("head1 waiting for its database", Duration::from_secs(30), || {
        c.heads[0].try_health().is_some_and(|v| v["state"] == "starting")
    });
    let waiting = c.heads[0].cli("scyld-nodectl", &["ls"]);
    assert!(waiting.code == 1 && waiting.stderr.contains("starting"), "{waiting:?}");
    // It is still a member of its cluster: joining another is refused until it is recovered.
    let other = Cluster::solo();
    let target = format!("{}:{}", other.heads[0].ip, other.heads[0].port);
    let refused = c.heads[0].cli("managedb", &["join", &target]);
    assert!(refused.code == 1 && refused.stderr.contains("Recover it first"), "{refused:?}");
    assert_eq!(health(&other.heads[0])["database"], "embedded", "the other head is unchanged");
    let out = c.heads[0].cli("managedb", &["recover"]);
    assert!(out.ok().contains("one-member cluster"), "{out:?}");
    assert_eq!(health(&c.heads[0])["state"], "serving");
    assert_eq!(names(&c.heads[0]), ["head1"]);
    assert_eq!(c.heads[0].cli("scyld-nodectl", &["ls"]).ok().trim(), "n0");
    c.heads[0].cli("scyld-nodectl", &["create", "mac=52:54:00:e6:00:02"]).ok();
}
