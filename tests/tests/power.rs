//! Power control against real IPMI endpoints: OpenIPMI's `ipmi_sim`, one per node, with its
//! chassis power wired to a state file; commands through every head of a 3-head cluster.

use clusterware_tests::{Bmc, Cluster, cli_with_stdin, poll_until, power_results};
use std::time::{Duration, Instant};

const PASS: &str = "Bmc-S3cret-pw";

#[test]
fn power_from_every_head_with_clear_per_node_errors() {
    let c = Cluster::etcd(3);
    let bmcs: Vec<Bmc> = (1..=3).map(|i| Bmc::start(&format!("127.207.0.{i}"), "admin", PASS)).collect();
    let other = Bmc::start("127.207.0.4", "admin", "a-different-pw");
    // A BMC that answers garbage.
    let garbage = std::net::UdpSocket::bind("127.207.0.8:0").unwrap();
    let garbage_addr = garbage.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((_, from)) = garbage.recv_from(&mut buf) {
            let _ = garbage.send_to(b"\x06\x00\xff\x07 this is not IPMI at all", from);
        }
    });
    let h = &c.heads[0];
    h.cli("scyld-nodectl", &["create", "--count", "8", "mac=52:54:00:a7:00:00", "ip=10.207.0.1"]).ok();
    // The shared password as a cluster secret, read from stdin.
    let cfg = h.config.to_string_lossy().to_string();
    let out = cli_with_stdin("scyld-clusterctl", &["--config", &cfg, "secrets", "set", "bmcpw"], &format!("{PASS}\n"));
    assert_eq!(out.code, 0, "{out:?}");
    for (i, b) in bmcs.iter().enumerate() {
        let n = format!("n{i}");
        h.cli(
            "scyld-nodectl",
            &["-i", &n, "set", &format!("_bmc_addr={}", b.addr()), "_bmc_user=admin", "_bmc_pass_ref=bmcpw"],
        )
        .ok();
    }
    // n3: its own password, which its BMC does not accept.
    h.cli(
        "scyld-nodectl",
        &["-i", "n3", "set", &format!("_bmc_addr={}", other.addr()), "_bmc_user=admin", &format!("_bmc_pass={PASS}")],
    )
    .ok();
    // n4: nothing listens there.
    h.cli("scyld-nodectl", &["-i", "n4", "set", "_bmc_addr=127.207.0.9:9", "_bmc_user=admin", "_bmc_pass_ref=bmcpw"])
        .ok();
    // n5: no BMC attributes. n6: garbage. n7: a password reference to no secret.
    h.cli(
        "scyld-nodectl",
        &["-i", "n6", "set", &format!("_bmc_addr={garbage_addr}"), "_bmc_user=admin", "_bmc_pass_ref=bmcpw"],
    )
    .ok();
    h.cli(
        "scyld-nodectl",
        &[
            "-i",
            "n7",
            "set",
            "--force",
            &format!("_bmc_addr={}", bmcs[0].addr()),
            "_bmc_user=admin",
            "_bmc_pass_ref=nosuch",
        ],
    )
    .ok();

    // status through every head: three answers, five clear errors, none delaying the others
    // beyond the per-node deadline.
    for via in &c.heads {
        let t = Instant::now();
        let out = via.cli("scyld-nodectl", &["-a", "--json", "power", "status", "--wait", "4"]);
        let took = t.elapsed();
        assert_eq!(out.code, 1, "some nodes fail: {out:?}");
        let r = power_results(&serde_json::from_str(&out.stdout).unwrap());
        assert_eq!(r.len(), 8);
        for i in 0..3 {
            assert_eq!((r[i].1.as_str(), r[i].2.as_str()), ("ok", "off"), "{r:?}");
        }
        assert_eq!(r[3].1, "failed");
        assert!(r[3].2.contains("refused the password"), "{r:?}");
        assert!(r[4].1 == "timeout" || r[4].2.contains("no IPMI session"), "{r:?}");
        assert!(r[5].2.contains("no BMC address"), "{r:?}");
        assert!(r[6].1 == "timeout" || r[6].1 == "failed", "{r:?}");
        assert!(r[7].2.contains("names no secret"), "{r:?}");
        assert!(took < Duration::from_secs(12), "power status took {took:?}");
        assert!(!out.stdout.contains(PASS) && !out.stderr.contains(PASS));
    }

    // on through head2, cycle with PXE next through head3, soft off through head1.
    let on = c.heads[1].cli("scyld-nodectl", &["-i", "n[0-2]", "power", "on"]);
    assert_eq!(on.code, 0, "{on:?}");
    assert!(bmcs.iter().all(|b| b.power() == "on"));
    let st = c.heads[2].cli("scyld-nodectl", &["-i", "n[0-2]", "power", "status"]);
    assert_eq!(st.ok(), "n[0-2]: on\n", "one line for the nodes that share a result");
    // Off, cycle and reset of more than one node need --yes without a terminal; nothing is done
    // before.
    let off = c.heads[1].cli("scyld-nodectl", &["-i", "n[0-2]", "power", "off"]);
    assert!(off.code == 2 && off.stderr.contains("Power off 3 nodes n[0-2]?"), "{off:?}");
    assert!(bmcs.iter().all(|b| b.power() == "on"));
    let cy = c.heads[2].cli("scyld-nodectl", &["-i", "n1", "power", "cycle", "--pxe"]);
    assert!(cy.ok().contains("next boot from the network"), "{cy:?}");
    assert_eq!(bmcs[1].boot(), "pxe");
    poll_until("n1 powered on again after the cycle", Duration::from_secs(10), || bmcs[1].power() == "on");
    let off = c.heads[0].cli("scyld-nodectl", &["-i", "n2", "power", "off", "--soft"]);
    assert_eq!(off.code, 0, "{off:?}");
    assert_eq!(bmcs[2].power(), "off");

    // Secrets never shown; the action logged on the head that did it, with who asked.
    let ls = h.cli("scyld-nodectl", &["-i", "n3", "ls", "-l"]);
    assert!(ls.ok().contains("_bmc_pass=(set)") && !ls.stdout.contains(PASS), "{ls:?}");
    let js = h.cli("scyld-nodectl", &["--json", "ls"]);
    assert!(!js.ok().contains(PASS));
    let secrets = h.cli("scyld-clusterctl", &["secrets", "ls"]);
    assert_eq!(secrets.ok(), "bmcpw\n");
    c.heads[1].wait_log("power on logged on head2", |log| {
        log.lines()
            .any(|l| l.contains("power") && l.contains("node=n0") && l.contains("action=on") && l.contains("by="))
    });
    for head in &c.heads {
        let log = std::fs::read_to_string(head.dir.join(format!("log/head_{}.log", head.name))).unwrap();
        assert!(!log.contains(PASS), "the password leaked into {}'s log", head.name);
    }

    // Bad input: malformed attributes refused when set; bad flags refused by the CLI.
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n5", "set", "_bmc_addr=not a host"]).code, 1);
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n5", "set", "_bmc_cipher=99"]).code, 1);
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n0", "power", "status", "--soft"]).code, 2);
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n0", "power", "off", "--pxe"]).code, 2);
    assert_eq!(h.cli("scyld-nodectl", &["-i", "n0", "power", "explode"]).code, 2);
}
