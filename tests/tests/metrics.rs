//! Prometheus metrics on every head: a real Prometheus (Debian's `prometheus`) scraping three
//! heads over HTTPS with a named token while simulated agents push status and a boot file is
//! fetched whole and by range; every family a head exports reaches Prometheus from every head,
//! and every metric that `monitoring/alerts.yml` and the Grafana dashboard use is one of them.
//! The endpoint refuses requests without the credential, with a wrong one, and over plain
//! HTTP; with `metrics.enabled = no` it answers 404. The alert rules pass `promtool check
//! rules` and their unit tests (`promtool test rules`).

use clusterware_tests::{Backend, Cluster, Head, PASS, Sim, poll_until, split_response, sys};
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The workspace's `monitoring/` folder.
fn monitoring() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").join("monitoring")
}

/// One GET over HTTPS to a head: [`Head::https_get`].
fn https_get(h: &Head, path: &str, auth: Option<&str>, extra: &str) -> (u16, String, Vec<u8>) {
    h.https_get(path, auth, extra)
}

/// One plain-HTTP GET: (status, head, body).
fn http_get(addr: (std::net::Ipv4Addr, u16), path: &str, auth: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    split_response(&buf)
}

/// The metric names in an OpenMetrics/Prometheus text exposition.
fn names_in(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every `clusterware_…` metric name in a file (alert rules, dashboard).
fn names_used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("clusterware_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        // Not part of a longer word (`job="clusterware"` has no underscore after it).
        if start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_') {
            out.insert(text[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Percent-encoding of a query parameter.
fn encoded(s: &str) -> String {
    s.bytes()
        .map(|c| match c {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (c as char).to_string(),
            _ => format!("%{c:02X}"),
        })
        .collect()
}

/// A Prometheus server in a process group of its own, killed (the whole group) on drop.
struct Prometheus {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(targets: &[String], ca: &Path, token: &str) -> Prometheus {
        let dir = tempfile::TempDir::with_prefix("cw-prom-").expect("temp dir");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).unwrap();
        let list: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        let cfg = format!(
            "global:\n  scrape_interval: 2s\n  scrape_timeout: 2s\n  evaluation_interval: 1s\nrule_files:\n  - {alerts}\n\
             scrape_configs:\n  - job_name: clusterware\n    scheme: https\n    metrics_path: /metrics\n    \
             authorization:\n      type: Bearer\n      credentials_file: {token}\n    tls_config:\n      ca_file: {ca}\n    \
             static_configs:\n      - targets: [{list}]\n",
            alerts = monitoring().join("alerts.yml").display(),
            token = token_file.display(),
            ca = ca.display(),
            list = list.join(", "),
        );
        let cfg_file = dir.path().join("prometheus.yml");
        std::fs::write(&cfg_file, cfg).unwrap();
        let check = Command::new("promtool").arg("check").arg("config").arg(&cfg_file).output().expect("promtool");
        assert!(check.status.success(), "promtool check config: {}", String::from_utf8_lossy(&check.stdout));
        let port = clusterware_tests::free_port("127.0.0.1".parse().unwrap());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", cfg_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        sys::die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("prometheus (Debian package prometheus)");
        Prometheus { child: Some(child), port, dir }
    }

    /// The `data` of a GET on Prometheus's HTTP API (Null while it is not ready).
    fn api(&self, path: &str) -> Value {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else { return Value::Null };
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        // HTTP/1.0: the answer is not chunked.
        let _ = write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        if !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Value::Null;
        }
        let (status, _, body) = split_response(&buf);
        if status != 200 {
            return Value::Null;
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        v["data"].clone()
    }

    /// An instant query: the `data.result` array (empty while Prometheus is not ready).
    fn query(&self, q: &str) -> Vec<Value> {
        self.api(&format!("/api/v1/query?query={}", encoded(q)))["result"].as_array().cloned().unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Kills the process group and proves that no process of it is left.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = c.id();
            sys::killpg(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = c.wait();
            let marker = self.dir.path().join("prometheus.yml").display().to_string();
            poll_until("the prometheus process group to be gone", Duration::from_secs(10), || {
                !clusterware_tests::proc_alive(pid) && clusterware_tests::processes_named(&marker).is_empty()
            });
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn prometheus_scrapes_every_family_from_three_heads() {
    let c = Cluster::start(Backend::Etcd, 3, "");
    let h1 = &c.heads[0];

    // A named token for Prometheus, accepted by every head.
    let out = h1.cli("scyld-clusterctl", &["tokens", "create", "prometheus", "--json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let token = out.json()["token"].as_str().expect("token").to_string();
    for h in &c.heads {
        poll_until("the token is accepted", Duration::from_secs(10), || {
            https_get(h, "/metrics", Some(&token), "").0 == 200
        });
    }

    // The endpoint's refusals: no credential, a wrong one, plain HTTP.
    let (s, _, body) = https_get(h1, "/metrics", None, "");
    assert_eq!(s, 401, "{}", String::from_utf8_lossy(&body));
    let (s, _, _) = https_get(h1, "/metrics", Some(&format!("cwt_{}", "0".repeat(64))), "");
    assert_eq!(s, 403);
    let (s, _, body) = http_get((h1.ip, h1.port), "/metrics", Some(&token));
    let body = String::from_utf8_lossy(&body).to_string();
    assert!(s == 404 && body.contains("HTTPS") && !body.contains("clusterware_"), "{s} {body}");

    // Activity: simulated agents pushing status (and holding long polls) on every head.
    let (ip0, mac0) = ("127.215.0.1", "52:54:00:c5:00:00");
    h1.cli(
        "scyld-nodectl",
        &["create", "--count", "6", &format!("mac={mac0}"), &format!("ip={ip0}"), "_status_secs=1"],
    )
    .ok();
    let urls: Vec<String> = c.heads.iter().map(Head::url).collect();
    let _sim = Sim::start(&urls, Some(h1), 6, ip0, mac0, &["--status-secs", "1", "--ramp-secs", "1"]);
    // A boot file uploaded on head1, fetched whole and by range from each head.
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let file = c.dir().join("root.img");
    std::fs::write(&file, &data).unwrap();
    let rec = h1.cli("scyld-clusterctl", &["files", "upload", file.to_str().unwrap(), "--kind", "rootfs", "--json"]);
    let id = rec.json()["id"].as_str().expect("file id").to_string();
    let admin = clusterware_shared::auth::admin_token(PASS);
    for h in &c.heads {
        let (s, _, body) = https_get(h, &format!("/api/v1/files/{id}/content"), Some(&admin), "");
        assert!(s == 200 && body == data, "{s}");
        let (s, _, body) =
            https_get(h, &format!("/api/v1/files/{id}/content"), Some(&admin), "Range: bytes=100-199\r\n");
        assert!(s == 206 && body == data[100..200], "{s}");
    }

    // What head1 exports itself, once the activity shows in it.
    let mut text = String::new();
    poll_until("head1's metrics to show the activity", Duration::from_secs(60), || {
        let (s, _, body) = https_get(h1, "/metrics", Some(&token), "");
        text = String::from_utf8_lossy(&body).to_string();
        s == 200
            && text.contains(r#"clusterware_status_pushes_total{outcome="ok"}"#)
            && text.contains(r#"clusterware_file_requests_total{kind="range"} 1"#)
            && text.contains(r#"clusterware_nodes{state="up",parent="head1"} 6"#)
    });
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains(r#"clusterware_head_info{name="head1",version=""#), "{text}");
    let exported = names_in(&text);
    assert!(exported.iter().all(|n| n.starts_with("clusterware_")), "{exported:?}");
    // Every family the registry declares has series (labels from fixed sets are there from the
    // start, scrape-time gauges are set by the scrape).
    let declared: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    assert!(declared.len() >= 20, "{declared:?}");
    for fam in &declared {
        assert!(exported.iter().any(|n| n.starts_with(fam.as_str())), "family {fam} has no series:\n{text}");
    }
    // Unbounded labels never appear: no MAC, no raw file id in a route.
    assert!(!text.contains(mac0) && !text.contains(&id), "{text}");
    assert!(text.contains(r#"route="/api/v1/files/{id}/content""#), "{text}");

    // The alert rules and the dashboard use only what the heads export.
    let alerts = std::fs::read_to_string(monitoring().join("alerts.yml")).unwrap();
    let dashboard = std::fs::read_to_string(monitoring().join("grafana-dashboard.json")).unwrap();
    serde_json::from_str::<Value>(&dashboard).expect("the dashboard is JSON");
    for (what, used) in [("alerts.yml", names_used(&alerts)), ("grafana-dashboard.json", names_used(&dashboard))] {
        assert!(!used.is_empty(), "{what} uses no clusterware metric");
        for n in used {
            assert!(exported.contains(&n), "{what} uses {n}, which the heads do not export ({exported:?})");
        }
    }

    // A real Prometheus scraping the three heads over HTTPS with the token.
    let targets: Vec<String> = c.heads.iter().map(|h| format!("{}:{}", h.ip, h.tls_port)).collect();
    let mut prom = Prometheus::start(&targets, &h1.ca_file(), &token);
    poll_until("Prometheus to see all three heads up", Duration::from_secs(90), || {
        let up = prom.query("up{job=\"clusterware\"} == 1");
        up.len() == 3
    });
    for name in &exported {
        let q = format!("count by (instance) ({{__name__=\"{name}\"}})");
        let mut got = Vec::new();
        poll_until(&format!("{name} from every head"), Duration::from_secs(30), || {
            got = prom.query(&q);
            got.len() == 3
        });
        let instances: BTreeSet<&str> = got.iter().filter_map(|r| r["metric"]["instance"].as_str()).collect();
        assert_eq!(instances, targets.iter().map(String::as_str).collect(), "{name}: {got:?}");
    }
    // Prometheus has every metric name the heads export (its own list of names).
    let names = prom.api("/api/v1/label/__name__/values");
    let names: BTreeSet<&str> = names.as_array().expect("names").iter().filter_map(Value::as_str).collect();
    for n in &exported {
        assert!(names.contains(n.as_str()), "{n} missing from Prometheus's names");
    }
    // The six alert rules loaded and evaluate against the heads' series without error.
    let mut rules = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        rules = prom.api("/api/v1/rules")["groups"][0]["rules"].as_array().cloned().unwrap_or_default();
        if rules.len() == 6 && rules.iter().all(|r| r["health"] == "ok") {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rules.len() == 6 && rules.iter().all(|r| r["health"] == "ok"), "rules: {rules:?}");
    let firing: Vec<&Value> = rules.iter().filter(|r| r["state"] == "firing").collect();
    assert!(firing.is_empty(), "alerts firing on a healthy cluster: {firing:?}\n{}", prom.log());
    prom.stop();

    // Two heads of three gone: the survivor still answers a scrape, and says it has no quorum.
    let mut c = c;
    c.heads[1].kill9();
    c.heads[2].kill9();
    let h1 = &c.heads[0];
    poll_until("head1 to report the lost quorum", Duration::from_secs(60), || {
        let started = std::time::Instant::now();
        let (s, _, body) = https_get(h1, "/metrics", Some(&token), "");
        assert!(started.elapsed() < Duration::from_secs(15), "a scrape without quorum took {:?}", started.elapsed());
        s == 200 && String::from_utf8_lossy(&body).contains("\nclusterware_database_quorum_ok 0\n")
    });
}

/// DHCP in a network namespace: a DISCOVER from a registered MAC is counted as offered, one
/// from an unknown MAC as ignored, by a head on a segment of the test's own.
#[test]
fn dhcp_exchanges_are_counted() {
    use clusterware_tests::dhcp::{discover, offers};
    use clusterware_tests::netns::{Segment, run_in};
    let mut seg = Segment::new();
    let mut c = Cluster::configure_on(&mut seg, 1, "");
    c.start_all();
    let capture = seg.member("cap", Some(seg.addr(200)));
    let h = &c.heads[0];
    let mac = "52:54:00:c6:00:01";
    h.cli("scyld-nodectl", &["create", &format!("mac={mac}"), &format!("ip={}", seg.addr(101))]).ok();
    let bcast: std::net::SocketAddr = "255.255.255.255:67".parse().unwrap();
    let local: std::net::SocketAddr = "0.0.0.0:68".parse().unwrap();
    let admin = clusterware_shared::auth::admin_token(PASS);
    let scrape = || {
        run_in(h.netns.as_deref(), || {
            String::from_utf8_lossy(&https_get(h, "/metrics", Some(&admin), "").2).to_string()
        })
    };
    let count = |text: &str, labels: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("clusterware_dhcp_messages_total{{{labels}}} ")))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (offered, ignored) = (r#"type="discover",outcome="offered""#, r#"type="discover",outcome="ignored_unknown""#);
    // A discover sent the moment the node is created can come before the node table has it,
    // and be ignored as unknown: the unknown MAC's is counted from after the offer.
    poll_until("an offer", Duration::from_secs(20), || {
        !offers(&capture, local, bcast, discover(mac, None, false), Duration::from_millis(500)).is_empty()
    });
    let before = count(&scrape(), ignored);
    let unknown =
        offers(&capture, local, bcast, discover("52:54:00:c6:00:99", None, false), Duration::from_millis(500));
    assert!(unknown.is_empty(), "{unknown:?}");
    let mut text = String::new();
    poll_until("the DHCP counters", Duration::from_secs(10), || {
        text = scrape();
        count(&text, offered) >= 1 && count(&text, ignored) == before + 1
    });
    assert!(!text.contains("52:54:00:c6:00"), "no MAC in a label: {text}");
}

#[test]
fn with_metrics_off_the_endpoint_answers_404() {
    let c = Cluster::start(Backend::Embedded, 1, "metrics.enabled = no\n");
    let h = &c.heads[0];
    let admin = clusterware_shared::auth::admin_token(PASS);
    let (s, _, body) = https_get(h, "/metrics", Some(&admin), "");
    let body = String::from_utf8_lossy(&body).to_string();
    assert_eq!(s, 404, "{body}");
    assert!(body.contains("metrics.enabled = yes") && !body.contains("clusterware_"), "{body}");
    // Still behind the credential.
    assert_eq!(https_get(h, "/metrics", None, "").0, 401);
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let dir = monitoring();
    let check =
        Command::new("promtool").arg("check").arg("rules").arg(dir.join("alerts.yml")).output().expect("promtool");
    let text = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success() && text.contains("SUCCESS: 6 rules found"), "{text}");
    let test = Command::new("promtool")
        .current_dir(&dir)
        .arg("test")
        .arg("rules")
        .arg("alerts-test.yml")
        .output()
        .expect("promtool");
    let text = String::from_utf8_lossy(&test.stdout).to_string() + &String::from_utf8_lossy(&test.stderr);
    assert!(test.status.success() && text.contains("SUCCESS"), "{text}");
    // Every alert of the rules has a unit test that fires it.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts-test.yml")).unwrap();
    for name in rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")) {
        assert!(
            tests.contains(&format!("alertname: {name}\n        exp_alerts:\n          - exp_labels")),
            "{name} never fires in alerts-test.yml"
        );
    }
}
