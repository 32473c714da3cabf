//! Boot storm: N simulated nodes boot at once (`clusterware-node sim --boot`: boot script, kernel,
//! initramfs, CA, enrollment, root image checked and unpacked as it arrives, with the agent's own
//! code) through 3 heads, with and without one head killed in the middle; the peer is nginx
//! serving the same files to the same clients (the same simulator, pointed at nginx: a static
//! boot script, the same kernel, initramfs and image at the same paths, the image over HTTPS).

use crate::{Nginx, Report, cpu_secs, vm_hwm};
use clusterware_tests::{Backend, Cluster, Head, Sim, free_port, pattern, root_image};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

const MAC0: &str = "52:54:00:c5:00:00";
const IP0: &str = "127.221.0.1";

/// One storm's figures.
struct Run {
    /// Until the last node verified its image.
    all: Duration,
    p50: Duration,
    p99: Duration,
    failed: u64,
    busy: u64,
    resumed: u64,
    /// MiB served by each server (kernel, initramfs and image), by name.
    served: BTreeMap<String, u64>,
    /// Peak memory (VmHWM) of each server, KiB.
    peak_kib: BTreeMap<String, u64>,
    /// CPU seconds (user and system) of all the servers together (heads with their etcd
    /// members; nginx with its workers), and of the simulator.
    server_cpu: f64,
    client_cpu: f64,
    bytes: u64,
}

fn percentile(sorted: &[u64], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    Duration::from_millis(sorted[((sorted.len() - 1) as f64 * p).round() as usize])
}

/// Runs the simulator until every node booted or failed; `during` is called every 100 ms with
/// the summary. Reads the figures; `names` maps the URLs the nodes saw to server names.
fn storm(sim: &mut Sim, nodes: u64, names: &BTreeMap<String, String>, mut during: impl FnMut(&Value)) -> Run {
    let deadline = Instant::now() + Duration::from_secs(1800);
    let s = loop {
        let s = sim.summary();
        during(&s);
        if s["booted"].as_u64().unwrap_or(0) + s["boot_failed"].as_u64().unwrap_or(0) >= nodes {
            break s;
        }
        assert!(sim.is_running(), "the simulator stopped: {}", sim.log());
        assert!(Instant::now() < deadline, "the storm did not end in 30 minutes: {s}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut times = Vec::new();
    let mut run = Run {
        all: Duration::ZERO,
        p50: Duration::ZERO,
        p99: Duration::ZERO,
        failed: s["boot_failed"].as_u64().unwrap_or(0),
        busy: 0,
        resumed: 0,
        served: BTreeMap::new(),
        peak_kib: BTreeMap::new(),
        server_cpu: 0.0,
        client_cpu: sim.pid().map_or(0.0, |p| cpu_secs(p, false)),
        bytes: 0,
    };
    let name = |url: &str| names.get(url).cloned().unwrap_or_else(|| url.to_string());
    for n in s["node"].as_array().into_iter().flatten() {
        let b = &n["boot"];
        if !b["error"].is_null() {
            continue;
        }
        times.push(b["image_ms"].as_u64().unwrap_or(0));
        run.busy += b["image"]["busy"].as_u64().unwrap_or(0);
        run.resumed += b["image"]["resumed"].as_u64().unwrap_or(0);
        let fw = b["firmware_bytes"].as_u64().unwrap_or(0);
        *run.served.entry(name(b["script_from"].as_str().unwrap_or(""))).or_default() += fw;
        run.bytes += fw;
        for (url, v) in b["image"]["served"].as_object().into_iter().flatten() {
            let v = v.as_u64().unwrap_or(0);
            *run.served.entry(name(url)).or_default() += v;
            run.bytes += v;
        }
    }
    times.sort_unstable();
    run.all = Duration::from_millis(times.last().copied().unwrap_or(0));
    run.p50 = percentile(&times, 0.5);
    run.p99 = percentile(&times, 0.99);
    run
}

/// 3 heads, `nodes` registered, the boot config as the cluster default; with `kill`, the second
/// head is killed that long after the storm began (half of a storm without a kill: in the middle
/// of its transfers).
fn ours(dir: &Path, nodes: u64, kill: Option<Duration>) -> Run {
    let mut c = Cluster::start_as_installed(Backend::Etcd, 3, "");
    let files = ["vmlinuz", "initrd.img", "root.img"].map(|f| dir.join(f));
    c.storm_config([&files[0], &files[1], &files[2]], nodes, MAC0, IP0, &[]);
    let mut names = BTreeMap::new();
    for h in &c.heads {
        names.insert(h.url(), h.name.clone());
        names.insert(h.boot_url(), h.name.clone());
    }
    let heads: Vec<&Head> = c.heads.iter().collect();
    let mut sim = Sim::storm(&heads, nodes as u32, IP0, MAC0, &["--threads", "2"]);
    let pids: Vec<(String, u32)> = c.heads.iter().filter_map(|h| Some((h.name.clone(), h.pid()?))).collect();
    let mut peak = BTreeMap::new();
    let mut killed = false;
    let mut cpu_before_kill = 0.0;
    let began = Instant::now();
    let mut run = storm(&mut sim, nodes, &names, |_| {
        if kill.is_some_and(|k| began.elapsed() >= k) && !killed {
            let (name, pid) = &pids[1];
            peak.insert(name.clone(), vm_hwm(*pid));
            cpu_before_kill = cpu_secs(*pid, true);
            c.heads[1].kill9();
            killed = true;
        }
    });
    for (name, pid) in &pids {
        if !peak.contains_key(name) {
            peak.insert(name.clone(), vm_hwm(*pid));
        }
    }
    run.peak_kib = peak;
    // A killed head is gone from /proc: its share was read just before the kill.
    run.server_cpu = cpu_before_kill + pids.iter().map(|(_, p)| cpu_secs(*p, true)).sum::<f64>();
    drop(sim);
    run
}

/// nginx with the same files at the same paths, and a static boot script naming them.
fn nginx(dir: &Path, nodes: u64, ids: (&str, &str, &str), image: (u64, &str), ca_dir: &Path) -> Run {
    let www = dir.join("www");
    let (port, tls_port) = (free_port(Ipv4Addr::LOCALHOST), free_port(Ipv4Addr::LOCALHOST));
    let api = www.join("api/v1");
    for (id, file) in [(ids.0, "vmlinuz"), (ids.1, "initrd.img"), (ids.2, "root.img")] {
        let d = api.join("files").join(id);
        std::fs::create_dir_all(&d).expect("www");
        std::fs::hard_link(dir.join(file), d.join("content"))
            .or_else(|_| std::fs::copy(dir.join(file), d.join("content")).map(|_| ()))
            .expect("file");
    }
    let base = format!("http://127.0.0.1:{port}");
    let tls = format!("https://127.0.0.1:{tls_port}");
    let content = |id: &str| format!("{base}/api/v1/files/{id}/content");
    std::fs::create_dir_all(api.join("boot")).expect("www");
    std::fs::write(
        api.join("boot/script"),
        format!(
            "#!ipxe\nkernel {} initrd=initramfs initrd=ca.cpio cw.image={} cw.image_size={} cw.image_sha256={} cw.parent={tls} cw.heads={tls} cw.mac={MAC0} || goto failed\ninitrd --name initramfs {} || goto failed\ninitrd --name ca.cpio {base}/api/v1/boot/ca.cpio || goto failed\nboot\n",
            content(ids.0),
            ids.2,
            image.0,
            image.1,
            content(ids.1)
        ),
    )
    .expect("script");
    let ca = std::fs::read_to_string(ca_dir.join("ca.pem")).expect("ca.pem");
    let mut e = BTreeMap::new();
    e.insert(
        clusterware_shared::agent::CA_FILE.trim_start_matches('/').to_string(),
        clusterware_shared::cpio::Entry::File { data: ca.into_bytes(), mode: 0o644 },
    );
    std::fs::write(api.join("boot/ca.cpio"), clusterware_shared::cpio::gzip(&clusterware_shared::cpio::write(&e), 6))
        .expect("ca.cpio");
    let ngx_dir = dir.join("nginx");
    std::fs::create_dir_all(&ngx_dir).expect("nginx dir");
    let n = Nginx::start_sized(
        &ngx_dir,
        &www,
        port,
        (tls_port, &ca_dir.join("head.pem"), &ca_dir.join("head.key")),
        0,
        4096,
    );
    let names: BTreeMap<String, String> =
        [(base.clone(), "nginx".to_string()), (tls.clone(), "nginx".to_string())].into();
    let mut sim = Sim::storm_urls(&[base], nodes as u32, IP0, MAC0, &["--threads", "2"]);
    let mut run = storm(&mut sim, nodes, &names, |_| {});
    run.peak_kib.insert("nginx".into(), n.peak_kib());
    run.server_cpu = n.pid().map_or(0.0, |p| cpu_secs(p, true));
    drop(sim);
    drop(n);
    run
}

pub fn bench_storm(r: &mut Report, nodes: u64, mib: u64) {
    eprintln!("cw-bench: boot storm ({nodes} nodes, {mib} MiB image)…");
    let dir = tempfile::TempDir::with_prefix("cw-bench-storm-").expect("temp dir");
    let d = dir.path();
    std::fs::write(d.join("vmlinuz"), pattern(8 << 20, 1)).expect("kernel");
    std::fs::write(d.join("initrd.img"), pattern(8 << 20, 2)).expect("initramfs");
    let image = root_image(mib * 4, 256);
    std::fs::write(d.join("root.img"), &image).expect("image");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&image))
    };
    let plain = ours(d, nodes, None);
    let killed = ours(d, nodes, Some(plain.all / 2));
    // nginx gets the ids the heads gave the files (any names would do), and a head's certificate.
    let c = Cluster::start(Backend::Embedded, 1, "");
    let id_of = |f: &str| {
        let out = c.heads[0].cli(
            "scyld-clusterctl",
            &["files", "upload", &d.join(f).display().to_string(), "--kind", "other", "--name", f, "--json"],
        );
        out.json()["id"].as_str().expect("id").to_string()
    };
    let (k, i, img) = (id_of("vmlinuz"), id_of("initrd.img"), id_of("root.img"));
    let tls_dir = d.join("tls");
    std::fs::create_dir_all(&tls_dir).expect("tls");
    let head_tls = c.heads[0].ca_file().parent().expect("tls dir").to_path_buf();
    for f in ["ca.pem", "head.pem", "head.key"] {
        std::fs::copy(head_tls.join(f), tls_dir.join(f)).expect("tls file");
    }
    drop(c);
    let peer = nginx(d, nodes, (&k, &i, &img), (image.len() as u64, &sha), &tls_dir);

    let per_node = (16 << 20) + image.len() as u64;
    let mibs = |run: &Run| run.bytes as f64 / run.all.as_secs_f64().max(1e-9) / (1 << 20) as f64;
    let spread = |run: &Run| run.served.iter().map(|(n, b)| format!("{n} {}", b >> 20)).collect::<Vec<_>>().join(", ");
    let peaks = |run: &Run| run.peak_kib.iter().map(|(n, k)| format!("{n} {}", k >> 10)).collect::<Vec<_>>().join(", ");
    let row = |what: &str, run: &Run| {
        vec![
            what.to_string(),
            format!("{:.1} s", run.all.as_secs_f64()),
            format!("{:.1} s / {:.1} s", run.p50.as_secs_f64(), run.p99.as_secs_f64()),
            format!("{} of {nodes}", run.failed),
            format!("{} / {}", run.busy, run.resumed),
            spread(run),
            peaks(run),
            format!("{:.0} s / {:.0} s", run.server_cpu, run.client_cpu),
            format!("{:.0} MiB/s", mibs(run)),
            format!("{:.2}", mibs(run) / mibs(&peer)),
        ]
    };
    r.section(
        "Boot storm: many nodes at once through 3 heads",
        &format!("make bench (cw-bench --only storm: clusterware-node sim --boot, {nodes} nodes)"),
        &format!(
            "{nodes} simulated nodes start booting in the same instant (`clusterware-node sim --boot`, the agent's own code, \
             each node from its own loopback address): the boot script from a head's plain-HTTP port (node i asks head i mod 3, \
             as DHCP answers would spread them), an 8 MiB kernel and an 8 MiB initramfs from that head, the CA archive, \
             enrollment with the script's token, then a {} MiB root image (gzip'd newc that does not compress) over HTTPS \
             from the parent or the other heads, hashed and unpacked while it arrives (the simulator reads the archive to its \
             end without writing it), {per_node} bytes per node in all. Heads: 3 on an etcd cluster, default settings \
             (`local_files.max_transfers` = 128 images at once per head; past it a node is answered 503 with `Retry-After` and \
             goes to another head or waits with jittered backoff). Killed: the second head gets `kill -9` half-way through the \
             storm (at half the time the storm without a kill took); its nodes finish elsewhere from the byte where their transfer stopped. Peer: nginx \
             (Debian `nginx-light`, `worker_processes auto`, sendfile) serving the same files at the same paths to the same \
             simulator with a static boot script (no enrollment; the image over HTTPS with a head's certificate). The heads, \
             nginx and the simulator share this machine's cores. Time: from the simulator's start until the last node's \
             image was verified; p50/p99 per node of the same; busy/resumed: 503 answers the nodes got and transfers resumed on \
             another head; MiB served and peak memory (VmHWM, MiB) per server; CPU seconds (user and system) of all the servers \
             (heads with their etcd members, nginx with its workers) and of the simulator. Ratio: aggregate throughput against nginx's \
             (target at least 0.9; failed boots: target 0).",
            image.len() >> 20
        ),
    );
    r.table(
        &[
            "run",
            "all images verified",
            "p50 / p99 per node",
            "failed boots",
            "busy / resumed",
            "MiB served",
            "peak MiB",
            "CPU servers / simulator",
            "throughput",
            "ratio",
        ],
        vec![row("3 heads", &plain), row("3 heads, one killed", &killed), row("nginx", &peer)],
    );
}
