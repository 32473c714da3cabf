//! A boot storm: 200 simulated nodes boot at once through 3 heads (`clusterware-node sim
//! --boot`: boot script, kernel, initramfs, CA, enrollment, root image checked and unpacked as
//! it arrives, with the agent's own code), the heads admitting few image transfers at once and
//! sending them slowly, so that nodes are refused and wait, and one head is killed while it is
//! sending images. Every node must verify its image and come up.

use clusterware_tests::{Backend, Cluster, Head, Sim, poll_until, root_image};
use serde_json::Value;
use std::time::Duration;

const N: u64 = 200;

fn up_count(h: &Head) -> usize {
    let out = h.cli("scyld-nodectl", &["status", "--json"]);
    if out.code != 0 {
        return 0;
    }
    out.json()["nodes"].as_array().map_or(0, |a| a.iter().filter(|n| n["state"] == "up").count())
}

#[test]
fn storm_of_200_through_3_heads_one_killed_every_node_verifies_its_image() {
    // 8 images at once per head, 3 MiB/s per head (an image takes longer than the second a node
    // waits in line): 200 nodes cannot all be served at once, some are refused, and the killed
    // head is in the middle of transfers.
    let mut c = Cluster::start(Backend::Etcd, 3, "local_files.max_transfers = 8\nlocal_files.max_rate = 3\n");
    let token = c.token.clone();
    let dir = c.dir().to_path_buf();
    // 64 files of 16 KiB: about 1 MiB.
    let image = root_image(64, 16);
    for (name, data) in
        [("vmlinuz", vec![1u8; 64 << 10]), ("initrd.img", vec![2u8; 96 << 10]), ("root.img", image.clone())]
    {
        std::fs::write(dir.join(name), data).unwrap();
    }
    let (mac0, ip0) = ("52:54:00:b2:00:00", "127.220.0.1");
    let files = ["vmlinuz", "initrd.img", "root.img"].map(|f| dir.join(f));
    c.storm_config([&files[0], &files[1], &files[2]], N, mac0, ip0, &["_status_secs=2"]);

    let heads: Vec<&Head> = c.heads.iter().collect();
    let mut sim = Sim::storm(&heads, N as u32, ip0, mac0, &["--threads", "2"]);
    let killed = c.heads[1].url();
    // Past its 8 slots a head keeps nodes waiting in line for the next free one.
    poll_until("nodes waiting in line for a slot", Duration::from_secs(60), || {
        c.heads.iter().any(|h| h.api("GET", "/storage", Some(&token), None).1["transfers_waiting"].as_u64() > Some(0))
    });
    // Kill the second head while it is sending images: once some nodes have theirs.
    poll_until("a quarter of the nodes verified their image", Duration::from_secs(120), || {
        sim.summary()["booted"].as_u64().unwrap_or(0) >= N / 4
    });
    let active = c.heads[1].api("GET", "/storage", Some(&token), None).1["transfers_active"].as_u64();
    c.heads[1].kill9();

    poll_until("every node verified its image (or failed)", Duration::from_secs(300), || {
        let s = sim.summary();
        s["booted"].as_u64().unwrap_or(0) + s["boot_failed"].as_u64().unwrap_or(0) >= N
    });
    assert!(sim.is_running(), "{}", sim.log());
    let s = sim.summary();
    let nodes = s["node"].as_array().unwrap();
    let failed: Vec<&Value> = nodes.iter().filter(|n| !n["boot"]["error"].is_null()).collect();
    assert!(failed.is_empty(), "boots failed: {failed:?}");
    assert_eq!(s["booted"], N, "{s}");
    let (mut busy, mut resumed, mut from_killed) = (0, 0, 0);
    for n in nodes {
        let b = &n["boot"];
        let served: u64 = b["image"]["served"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
        assert_eq!(served, image.len() as u64, "every byte of the image once: {n}");
        assert!(b["entries"].as_u64() > Some(64), "{n}");
        busy += b["image"]["busy"].as_u64().unwrap();
        resumed += b["image"]["resumed"].as_u64().unwrap();
        from_killed += u64::from(b["image"]["served"].get(&killed).is_some());
    }
    eprintln!("storm: {busy} busy answers, {resumed} transfers resumed, {from_killed} nodes served by the killed head");
    assert!(busy > 0, "admission control refused nobody: {s}");
    assert!(from_killed > 0, "the killed head served no image");
    assert!(
        resumed > 0 || active == Some(0),
        "the killed head had {active:?} transfers going, and no node resumed an image elsewhere"
    );
    // The heads that are left count their refusals; every node comes up on them.
    let refused: u64 = [&c.heads[0], &c.heads[2]]
        .iter()
        .map(|h| h.api("GET", "/storage", Some(&token), None).1["transfers_refused"].as_u64().unwrap())
        .sum();
    assert!(refused > 0);
    poll_until("every node up", Duration::from_secs(60), || up_count(&c.heads[0]) == N as usize);
    drop(sim);
}
