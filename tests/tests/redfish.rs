//! Redfish power control against real Redfish services: sushy-emulator BMCs (tests/src/redfish.rs,
//! one process per BMC on 127.209.0.x, certificates from a CA the heads are given with
//! `power.redfish_ca`), through every head of a 3-head cluster. Each action is checked on the
//! emulator itself; a wrong password, an unreachable BMC, a TLS server answering garbage and a
//! certificate no CA vouches for each give their own per-node result; a pinned fingerprint is
//! accepted; one request mixes Redfish and IPMI (an `ipmi_sim` BMC); the password is in no log
//! and on no command line.

use clusterware_shared::pki::Ca;
use clusterware_tests::redfish::{GarbageTls, Htpasswd, RedfishBmc, emulator};
use clusterware_tests::{Backend, Bmc, Cluster, cli_with_stdin, poll_until, power_results, processes_named};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PASS: &str = "Redfish-S3cret-pw";

fn ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 209, 0, i)
}

/// `AB:CD:…` (as openssl prints it) from lowercase hex.
fn with_colons(hex: &str) -> String {
    hex.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).to_uppercase()).collect::<Vec<_>>().join(":")
}

#[test]
fn redfish_power_from_every_head_with_clear_per_node_errors() {
    emulator();
    let keep = tempfile::TempDir::with_prefix("cw-redfish-test-").unwrap();
    let bmc_ca = Ca::create().unwrap();
    let ca_file = keep.path().join("bmc-ca.pem");
    std::fs::write(&ca_file, &bmc_ca.cert_pem).unwrap();
    let cert = |i: u8| bmc_ca.issue("bmc", &[ip(i).to_string()], 2).unwrap();
    let auth = Htpasswd::new("admin", PASS);
    let other_auth = Htpasswd::new("admin", "a-different-pw");
    // n0-n2: good BMCs; n3: one whose password is another; n6: a certificate from a CA the
    // heads do not know (as a BMC's self-signed one). Started together, then waited for.
    let stranger = Ca::create().unwrap();
    let mut bmcs: Vec<RedfishBmc> =
        (1..=3).map(|i| RedfishBmc::spawn(ip(i), &cert(i), &bmc_ca.cert_pem, &auth, 1)).collect();
    bmcs.push(RedfishBmc::spawn(ip(4), &cert(4), &bmc_ca.cert_pem, &other_auth, 1));
    let self_signed = stranger.issue("bmc", &[ip(7).to_string()], 2).unwrap();
    let untrusted = RedfishBmc::spawn(ip(7), &self_signed, &stranger.cert_pem, &auth, 1);
    let garbage = GarbageTls::start(ip(6), &cert(6));
    let ipmi = Bmc::start(&ip(8).to_string(), "admin", PASS);
    let c = Cluster::start(Backend::Etcd, 3, &format!("power.redfish_ca = {}\n", ca_file.display()));
    for b in bmcs.iter().chain([&untrusted]) {
        b.wait_ready(Duration::from_secs(60));
    }
    let h = &c.heads[0];
    h.cli("scyld-nodectl", &["create", "--count", "8", "mac=52:54:00:a9:00:00", "ip=10.209.0.1"]).ok();
    let cfg = h.config.to_string_lossy().to_string();
    let out = cli_with_stdin("scyld-clusterctl", &["--config", &cfg, "secrets", "set", "bmcpw"], &format!("{PASS}\n"));
    assert_eq!(out.code, 0, "{out:?}");
    h.cli("scyld-nodectl", &["-a", "set", "_bmc_user=admin", "_bmc_pass_ref=bmcpw"]).ok();
    let unreachable = format!("{}:{}", ip(5), clusterware_tests::free_port(ip(5)));
    // n0: _bmc_type=redfish; n1: no type (the probe finds Redfish behind a trusted certificate);
    // n2: an https:// address; n3: wrong password; n4: nothing listens; n5: garbage over TLS;
    // n6: an untrusted certificate; n7: IPMI, no type (the probe finds nothing, so IPMI).
    let set = |node: &str, attrs: &[String]| {
        let mut a = vec!["-i", node, "set"];
        a.extend(attrs.iter().map(String::as_str));
        h.cli("scyld-nodectl", &a).ok();
    };
    set("n0", &[format!("_bmc_addr={}", bmcs[0].addr()), "_bmc_type=redfish".into()]);
    set("n1", &[format!("_bmc_addr={}", bmcs[1].addr())]);
    set("n2", &[format!("_bmc_addr=https://{}/", bmcs[2].addr())]);
    set("n3", &[format!("_bmc_addr={}", bmcs[3].addr()), "_bmc_type=redfish".into()]);
    set("n4", &[format!("_bmc_addr={unreachable}"), "_bmc_type=redfish".into()]);
    set("n5", &[format!("_bmc_addr={}", garbage.addr()), "_bmc_type=redfish".into()]);
    set("n6", &[format!("_bmc_addr={}", untrusted.addr()), "_bmc_type=redfish".into()]);
    set("n7", &[format!("_bmc_addr={}", ipmi.addr())]);

    // Status through every head: four answers, four errors of their own, within the deadline;
    // no process shows the password on its command line meanwhile.
    let stop = Arc::new(AtomicBool::new(false));
    let watch = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                seen.extend(processes_named(PASS));
                std::thread::sleep(Duration::from_millis(5));
            }
            seen
        })
    };
    for via in &c.heads {
        let t = Instant::now();
        let out = via.cli("scyld-nodectl", &["-a", "--json", "power", "status", "--wait", "10"]);
        let took = t.elapsed();
        assert_eq!(out.code, 1, "some nodes fail: {out:?}");
        let r = power_results(&serde_json::from_str(&out.stdout).unwrap());
        assert_eq!(r.len(), 8);
        for i in [0, 1, 2, 7] {
            assert_eq!((r[i].1.as_str(), r[i].2.as_str()), ("ok", "off"), "{:?}", r[i]);
        }
        assert_eq!(r[3].1, "failed");
        assert!(r[3].2.contains("refused user \"admin\" with this password (HTTP 401"), "{:?}", r[3]);
        assert_eq!(r[4].1, "failed");
        assert!(r[4].2.starts_with(&format!("cannot reach the BMC at https://{unreachable}")), "{:?}", r[4]);
        assert_eq!(r[5].1, "failed");
        assert!(r[5].2.starts_with("the BMC answered something that is not Redfish"), "{:?}", r[5]);
        assert_eq!(r[6].1, "failed");
        assert!(r[6].2.contains(&format!("(SHA-256 {}) is not trusted", untrusted.fingerprint)), "{:?}", r[6]);
        assert!(r[6].2.contains(&format!("_bmc_tls_fingerprint={}", untrusted.fingerprint)), "{:?}", r[6]);
        assert!(took < Duration::from_secs(12), "power status took {took:?}");
        assert!(!out.stdout.contains(PASS) && !out.stderr.contains(PASS));
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(watch.join().unwrap(), Vec::<u32>::new(), "a process had the password on its command line");
    let plain = h.cli("scyld-nodectl", &["-i", "n[0-2]", "power", "status"]);
    assert_eq!(plain.ok(), "n[0-2]: off\n");

    // On through head2; the emulators' own state changes (the fake driver takes 1 to 11 s).
    let on = c.heads[1].cli("scyld-nodectl", &["-i", "n[0-2]", "power", "on"]);
    assert_eq!(on.code, 0, "{on:?}");
    poll_until("n[0-2] on in the emulators", Duration::from_secs(20), || bmcs[..3].iter().all(|b| b.power() == "On"));
    let st = c.heads[2].cli("scyld-nodectl", &["-i", "n[0-2]", "power", "status"]);
    assert_eq!(st.ok(), "n[0-2]: on\n");
    // Cycle with PXE next through head3: the emulator offers no PowerCycle, so ForceOff, a wait
    // for off, On.
    let cy = c.heads[2].cli("scyld-nodectl", &["-i", "n1", "--json", "power", "cycle", "--pxe", "--wait", "30"]);
    let r = power_results(&cy.json());
    assert!(r[0].2.contains("ForceOff, then On") && r[0].2.contains("next boot from the network"), "{r:?}");
    assert_eq!(bmcs[1].boot_target(), "Pxe");
    poll_until("n1 on again after the cycle", Duration::from_secs(20), || bmcs[1].power() == "On");
    // Graceful off through head1.
    let off = c.heads[0].cli("scyld-nodectl", &["-i", "n2", "--json", "power", "off", "--soft"]);
    assert!(power_results(&off.json())[0].2.contains("GracefulShutdown"), "{off:?}");
    poll_until("n2 off", Duration::from_secs(20), || bmcs[2].power() == "Off");
    // Forced off, reset with disk next, graceful reset, UEFI HTTP boot.
    let off = c.heads[1].cli("scyld-nodectl", &["-i", "n0", "--json", "power", "off"]);
    assert!(power_results(&off.json())[0].2.contains("ForceOff"), "{off:?}");
    poll_until("n0 off", Duration::from_secs(20), || bmcs[0].power() == "Off");
    let reset = c.heads[1].cli("scyld-nodectl", &["-i", "n0", "--json", "power", "reset", "--disk"]);
    let r = power_results(&reset.json());
    assert!(r[0].2.contains("ForceRestart") && r[0].2.contains("next boot from disk"), "{r:?}");
    assert_eq!(bmcs[0].boot_target(), "Hdd");
    poll_until("n0 on after the reset", Duration::from_secs(20), || bmcs[0].power() == "On");
    let reset = c.heads[0].cli("scyld-nodectl", &["-i", "n0", "--json", "power", "reset", "--soft"]);
    assert!(power_results(&reset.json())[0].2.contains("GracefulRestart"), "{reset:?}");
    let http = c.heads[0].cli("scyld-nodectl", &["-i", "n2", "--json", "power", "on", "--uefi-http"]);
    assert!(power_results(&http.json())[0].2.contains("next boot over UEFI HTTP"), "{http:?}");
    poll_until("n2 on", Duration::from_secs(20), || bmcs[2].power() == "On");
    // What IPMI cannot do, said for that node alone in a mixed request.
    let mixed = h.cli("scyld-nodectl", &["-i", "n0,n7", "--json", "power", "reset", "--soft", "--yes"]);
    assert_eq!(mixed.code, 1, "{mixed:?}");
    let r = power_results(&serde_json::from_str(&mixed.stdout).unwrap());
    assert_eq!((r[0].1.as_str(), r[1].1.as_str()), ("ok", "failed"), "{r:?}");
    assert!(r[1].2.contains("not supported over IPMI"), "{r:?}");
    let mixed = h.cli("scyld-nodectl", &["-i", "n2,n7", "--json", "power", "on", "--uefi-http"]);
    let r = power_results(&serde_json::from_str(&mixed.stdout).unwrap());
    assert!(r[0].1 == "ok" && r[1].2.contains("not supported over IPMI"), "{r:?}");

    // Pinning: the untrusted BMC's fingerprint (as openssl prints it) makes it trusted; a wrong
    // pin is refused even where the CA would vouch.
    set("n6", &[format!("_bmc_tls_fingerprint={}", with_colons(&untrusted.fingerprint))]);
    let st = h.cli("scyld-nodectl", &["-i", "n6", "power", "status"]);
    assert_eq!(st.ok(), "n6: off\n");
    set("n0", &[format!("_bmc_tls_fingerprint={}", untrusted.fingerprint)]);
    let st = h.cli("scyld-nodectl", &["-i", "n0", "--json", "power", "status"]);
    let r = power_results(&serde_json::from_str(&st.stdout).unwrap());
    assert!(r[0].1 == "failed" && r[0].2.contains("_bmc_tls_fingerprint pins"), "{r:?}");

    // Bad attribute values refused when set; nothing changed.
    for bad in
        ["_bmc_type=redfsh", "_bmc_tls_fingerprint=12:34", "_bmc_addr=http://127.209.0.1:8000", "_bmc_system=a/b"]
    {
        let out = h.cli("scyld-nodectl", &["-i", "n5", "set", bad]);
        assert_eq!(out.code, 1, "{bad}: {out:?}");
    }
    let out = h.cli("scyld-nodectl", &["-i", "n5", "set", "_bmc_addr=http://127.209.0.1:8000"]);
    assert!(out.stderr.contains("plain http"), "{out:?}");
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n0", "power", "on", "--pxe", "--uefi-http"]).code, 2);
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n0", "power", "cycle", "--soft"]).code, 2);

    // The actions logged where they ran; the password in no head's log and in no emulator's.
    c.heads[1].wait_log("power on logged on head2", |log| {
        log.lines()
            .any(|l| l.contains("power") && l.contains("node=n0") && l.contains("action=on") && l.contains("by="))
    });
    for head in &c.heads {
        let log = std::fs::read_to_string(head.dir.join(format!("log/head_{}.log", head.name))).unwrap();
        assert!(!log.contains(PASS), "the password leaked into {}'s log", head.name);
    }
    for b in &bmcs {
        assert!(!b.log().contains(PASS));
    }
    assert!(processes_named(PASS).is_empty());
}

/// A BMC that manages several systems: the node names its own with `_bmc_system`.
#[test]
fn a_bmc_with_several_systems_needs_bmc_system() {
    emulator();
    let bmc_ca = Ca::create().unwrap();
    let auth = Htpasswd::new("root", PASS);
    let cert = bmc_ca.issue("chassis", &[ip(21).to_string()], 2).unwrap();
    let bmc = RedfishBmc::spawn(ip(21), &cert, &bmc_ca.cert_pem, &auth, 2);
    let c = Cluster::solo();
    bmc.wait_ready(Duration::from_secs(60));
    let h = &c.heads[0];
    h.cli("scyld-nodectl", &["create", "--count", "2", "mac=52:54:00:a9:01:00", "ip=10.209.1.1"]).ok();
    // No CA on this head: pinned.
    h.cli(
        "scyld-nodectl",
        &[
            "-a",
            "set",
            &format!("_bmc_addr=https://{}", bmc.addr()),
            "_bmc_user=root",
            &format!("_bmc_pass={PASS}"),
            &format!("_bmc_tls_fingerprint={}", bmc.fingerprint),
        ],
    )
    .ok();
    let out = h.cli("scyld-nodectl", &["-a", "--json", "power", "status"]);
    let r = power_results(&serde_json::from_str(&out.stdout).unwrap());
    assert!(r.iter().all(|x| x.1 == "failed" && x.2.contains("manages 2 systems")), "{r:?}");
    assert!(r[0].2.contains("_bmc_system=ID"), "{r:?}");
    let systems = bmc.systems();
    let id = |p: &str| p.rsplit('/').next().unwrap().to_string();
    h.cli("scyld-nodectl", &["-i", "n0", "set", &format!("_bmc_system={}", id(&systems[0]))]).ok();
    h.cli("scyld-nodectl", &["-i", "n1", "set", &format!("_bmc_system={}", id(&systems[1]))]).ok();
    let on = h.cli("scyld-nodectl", &["-i", "n1", "power", "on"]);
    assert_eq!(on.code, 0, "{on:?}");
    let state = |p: &str| bmc.request("GET", p, None, true).unwrap().1["PowerState"].as_str().unwrap().to_string();
    poll_until("the second system on", Duration::from_secs(20), || state(&systems[1]) == "On");
    assert_eq!(state(&systems[0]), "Off", "the first system untouched");
    let st = h.cli("scyld-nodectl", &["-a", "power", "status"]);
    assert_eq!(st.ok(), "n0: off\nn1: on\n");
}
