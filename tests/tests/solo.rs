//! A solo head on the embedded store, driven through the admin CLIs: node registry flows,
//! output formats, and bad input (each a clear one-line error, a non-zero exit, nothing written).

use clusterware_tests::{Backend, Cluster, Head, bin, cli};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

fn nodes(h: &Head) -> Value {
    h.cli("scyld-nodectl", &["ls", "--json"]).json()
}

/// Runs a command that must fail with `code` and one line of stderr containing `msg`, and checks
/// that the node list did not change.
fn refused(h: &Head, prog: &str, args: &[&str], code: i32, msg: &str) {
    let before = nodes(h);
    // Commands that name their own configuration run without the head's.
    let out = if args.contains(&"--config") { cli(prog, args) } else { h.cli(prog, args) };
    assert_eq!(out.code, code, "{args:?}: {out:?}");
    assert!(out.stderr.contains(msg), "{args:?}: expected {msg:?} in {out:?}");
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{args:?}: one line expected: {out:?}");
    assert!(out.stdout.is_empty(), "{args:?}: {out:?}");
    assert_eq!(nodes(h), before, "{args:?} changed the nodes");
}

#[test]
fn registry_through_the_cli() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    assert_eq!(nodes(h), json!({"nodes": []}));

    let out = h.cli(
        "scyld-nodectl",
        &["create", "--count", "6", "mac=52:54:00:00:10:fe", "ip=10.60.0.254", "_boot_config=base", "--force"],
    );
    assert_eq!(out.ok(), "created 6 nodes n[0-5] (IPs 10.60.0.254 to 10.60.1.3)\n");
    let v = nodes(h);
    assert_eq!(v["nodes"][5]["macs"], json!(["52:54:00:00:11:03"]), "MAC and IP ranges carry: {v}");

    // IP and index are allocated after what exists; more than one MAC per node.
    let v = h.cli("scyld-nodectl", &["create", "mac=52:54:00:00:20:01", "mac=52:54:00:00:20:02", "--json"]).json();
    assert_eq!(v["nodes"][0]["name"], "n6");
    assert_eq!(v["nodes"][0]["ip"], "10.60.1.4");
    assert_eq!(v["nodes"][0]["macs"], json!(["52:54:00:00:20:01", "52:54:00:00:20:02"]));

    // CSV import (header allowed, blank ip column allocated).
    let csv = c.dir().join("nodes.csv");
    std::fs::write(&csv, "mac,ip,index\n52:54:00:00:30:01,10.61.0.1,20\n52:54:00:00:30:02,,21\n").unwrap();
    let out = h.cli("scyld-nodectl", &["create", "--csv", csv.to_str().unwrap(), "rack=9"]);
    assert_eq!(out.ok(), "created 2 nodes n[20-21] (IPs 10.61.0.1 to 10.61.0.2)\n");
    let out = h.cli("scyld-nodectl", &["-i", "n21", "ls", "-l"]);
    assert!(out.ok().contains("52:54:00:00:30:02") && out.stdout.contains("10.61.0.2"), "{out:?}");

    // Selection: ranges, lists, MACs; set and clear.
    let out = h.cli("scyld-nodectl", &["-i", "n[0-2,5],n21", "set", "_preferred_head=head1", "rack=3"]);
    assert_eq!(out.ok(), "updated 5 nodes n[0-2,5,21]\n");
    let out = h.cli("scyld-nodectl", &["-i", "52:54:00:00:20:02", "ls"]);
    assert_eq!(out.ok(), "n6\n");
    h.cli("scyld-nodectl", &["-i", "n1", "clear", "rack", "_boot_config"]).ok();
    let v = nodes(h);
    let attrs = |i: usize| v["nodes"][i]["attributes"].clone();
    assert_eq!(attrs(0), json!({"_boot_config": "base", "_preferred_head": "head1", "rack": "3"}));
    assert_eq!(attrs(1), json!({"_preferred_head": "head1"}));
    assert_eq!(attrs(3), json!({"_boot_config": "base"}));

    // A single node's IP, MAC and index can change; the old values are free again.
    h.cli("scyld-nodectl", &["-i", "n3", "set", "ip=10.62.0.3", "index=30"]).ok();
    h.cli("scyld-nodectl", &["create", "mac=52:54:00:00:40:01", "ip=10.60.1.1", "index=3"]).ok();
    let out = h.cli("scyld-nodectl", &["ls", "-l"]);
    assert!(out.ok().starts_with("NAME"), "{out:?}");
    assert!(out.stdout.contains("n30") && out.stdout.contains("10.62.0.3"), "{out:?}");

    // More than one node: without a terminal to ask on, only with --yes; nothing changes before.
    let out = h.cli("scyld-nodectl", &["-i", "n[20-21],n30", "rm"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("Delete 3 nodes n[20-21,30]?") && out.stderr.contains("--yes"), "{out:?}");
    assert_eq!(h.cli("scyld-nodectl", &["ls"]).ok().lines().count(), 10);
    let out = h.cli("scyld-nodectl", &["-i", "n[20-21],n30", "rm", "--yes"]);
    assert_eq!(out.ok(), "deleted 3 nodes n[20-21,30]\n");
    let names = h.cli("scyld-nodectl", &["ls"]);
    assert_eq!(names.ok(), "n0\nn1\nn2\nn3\nn4\nn5\nn6\n");

    // heads ls and managedb on a solo head.
    let v = h.cli("scyld-clusterctl", &["heads", "ls", "--json"]).json();
    assert_eq!(
        v["heads"][0]["db_member"],
        json!({"backend": "embedded", "id": null, "state": "solo", "leader": false})
    );
    assert_eq!(v["heads"][0]["alive"], true);
    assert_eq!(h.cli("scyld-clusterctl", &["heads", "ls"]).ok(), "head1\n");
    assert!(h.cli("managedb", &["--heads"]).ok().contains("head1"));

    // -a acts on all nodes.
    h.cli("scyld-nodectl", &["-a", "set", "_status_secs=5"]).ok();
    let v = nodes(h);
    assert!(v["nodes"].as_array().unwrap().iter().all(|n| n["attributes"]["_status_secs"] == "5"));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    h.cli("scyld-nodectl", &["create", "--count", "3", "mac=52:54:00:00:50:01", "ip=10.70.0.1"]).ok();

    let n = "scyld-nodectl";
    refused(
        h,
        n,
        &["create", "mac=52:54:00:00:50:02", "ip=10.70.0.9"],
        1,
        "MAC 52:54:00:00:50:02 is already used by n1",
    );
    refused(h, n, &["create", "mac=52:54:00:00:50:09", "ip=10.70.0.3"], 1, "IP 10.70.0.3 is already used by n2");
    refused(h, n, &["create", "mac=52:54:00:00:50:09", "index=0"], 1, "index 0 (name n0) is already used by n0");
    refused(
        h,
        n,
        &["create", "--count", "3", "mac=52:54:00:00:50:00"],
        1,
        "MAC 52:54:00:00:50:01 is already used by n0",
    );
    refused(h, n, &["create", "mac=52:54:00:00:50"], 2, "malformed MAC address");
    refused(h, n, &["create", "mac=52:54:00:00:50:09", "ip=10.70.0.300"], 2, "malformed IPv4 address");
    refused(h, n, &["create", "ip=10.70.0.9"], 2, "give mac=");
    refused(h, n, &["create", "--count", "2", "mac=ff:ff:ff:ff:ff:ff"], 2, "runs past ff:ff:ff:ff:ff:ff");
    refused(h, n, &["create", "mac=52:54:00:00:50:09", "_status_secs=never"], 2, "bad value for _status_secs");
    refused(h, n, &["create", "mac=52:54:00:00:50:09", "bad key=1"], 2, "invalid attribute name");
    refused(h, n, &["-i", "n9", "set", "a=b"], 1, "no node matches n9");
    refused(h, n, &["-i", "n[5-9]", "rm"], 1, "no node matches n[5-9]");
    refused(h, n, &["-i", "n[1-", "rm"], 2, "bad node selector");
    refused(h, n, &["-i", "n[3-1]", "ls"], 2, "runs backwards");
    refused(h, n, &["set", "a=b"], 2, "select nodes with -i NODES or -a");
    refused(h, n, &["-i", "n0", "set", "ab"], 2, "\"ab\" is not key=value");
    refused(h, n, &["-i", "n[0-1]", "set", "ip=10.70.0.50"], 1, "ip can be set on one node at a time");
    refused(h, n, &["-i", "n0", "set", "ip=10.70.0.2"], 1, "IP 10.70.0.2 is already used by n1");
    refused(h, n, &["-i", "n0", "set", "mac=zz"], 1, "malformed MAC address");
    refused(h, n, &["-i", "n0", "clear", "mac"], 1, "mac cannot be cleared");
    let csv = c.dir().join("bad.csv");
    std::fs::write(&csv, "52:54:00:00:60:01,10.71.0.1\nnot-a-mac\n").unwrap();
    refused(h, n, &["create", "--csv", csv.to_str().unwrap()], 2, "bad.csv:2: malformed MAC address");
    std::fs::write(&csv, "52:54:00:00:60:01,10.71.0.1\n52:54:00:00:50:03,10.71.0.2\n").unwrap();
    refused(h, n, &["create", "--csv", csv.to_str().unwrap()], 1, "MAC 52:54:00:00:50:03 is already used by n2");

    // Credentials: a wrong token is refused (403), none at all is 401; both as {kind, message}.
    let wrong = c.dir().join("wrong-token");
    std::fs::write(&wrong, "0000\n").unwrap();
    let wrong = wrong.to_str().unwrap();
    refused(h, n, &["--token-file", wrong, "-i", "n0", "rm"], 1, "wrong admin credential");
    // --token works, and warns that other users can read it there.
    let out = h.cli(n, &["--token", &c.token, "ls"]);
    assert!(out.code == 0 && out.stderr.contains("--token shows the token to every user"), "{out:?}");
    // A named token from standard input.
    let t =
        h.cli("scyld-clusterctl", &["tokens", "create", "ci", "--json"]).json()["token"].as_str().unwrap().to_string();
    let config = h.config.to_str().unwrap();
    let out = clusterware_tests::cli_with_stdin(n, &["--config", config, "--token-file", "-", "ls"], &format!("{t}\n"));
    assert!(out.code == 0 && out.stderr.is_empty(), "{out:?}");
    let (status, v) = h.api("GET", "/nodes", None, None);
    assert_eq!((status, v["kind"].as_str()), (401, Some("unauthorized")));
    let (status, v) = h.api("POST", "/nodes/delete", Some("nope"), Some(&json!({"nodes": []})));
    assert_eq!((status, v["kind"].as_str()), (403, Some("forbidden")));
    let (status, v) = h.api("POST", "/nodes", Some(&c.token), Some(&json!({"nodes": [{"macs": ["zz"]}]})));
    assert_eq!((status, v["kind"].as_str()), (400, Some("bad_request")), "{v}");
    let (status, v) =
        h.api("POST", "/nodes/update", Some(&c.token), Some(&json!({"nodes": ["nouid"], "set": {"a": "b"}})));
    assert_eq!((status, v["kind"].as_str()), (404, Some("not_found")), "{v}");
    let (status, v) = h.api("GET", "/nope", Some(&c.token), None);
    assert_eq!((status, v["kind"].as_str()), (404, Some("not_found")), "{v}");
    let (status, _) = h.api("GET", "/health", None, None);
    assert_eq!(status, 200);
    assert_eq!(nodes(h)["nodes"].as_array().unwrap().len(), 3);

    // Configuration problems, for the CLI.
    refused(h, n, &["--config", "/nonexistent/base.ini", "ls"], 1, "cannot read /nonexistent/base.ini");
    let bad = c.dir().join("bad.ini");
    std::fs::write(&bad, "database.admin_pass = x\nhead.port = eighty\n").unwrap();
    refused(
        h,
        n,
        &["--config", bad.to_str().unwrap(), "ls"],
        1,
        "bad.ini:2: head.port: \"eighty\" is not a port number",
    );
    std::fs::write(&bad, "head.port = 80\n").unwrap();
    refused(h, n, &["--config", bad.to_str().unwrap(), "ls"], 1, "database.admin_pass is not set");
    refused(
        h,
        n,
        &["--head", "https://127.0.0.1:1", "--token-file", wrong, "ls"],
        1,
        "cannot reach the head at https://127.0.0.1:1",
    );
    // A credential never goes out over plain HTTP.
    let plain = h.boot_url();
    refused(
        h,
        n,
        &["--head", &plain, "--token-file", wrong, "ls"],
        2,
        "the admin credential goes to a head over HTTPS only",
    );
}

#[test]
fn bulk_create_of_thousands() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let v = h
        .cli("scyld-nodectl", &["create", "--count", "5000", "mac=02:00:00:00:00:00", "ip=10.80.0.1", "--json"])
        .json();
    assert_eq!(v["nodes"].as_array().unwrap().len(), 5000);
    assert_eq!(v["nodes"][4999]["name"], "n4999");
    assert_eq!(v["nodes"][4999]["ip"], "10.80.19.136");
    let out = h.cli("scyld-nodectl", &["-i", "n[100-199]", "ls"]);
    assert_eq!(out.ok().lines().count(), 100);
    let out = h.cli("scyld-nodectl", &["-a", "set", "_boot_config=x", "--force"]);
    assert_eq!(out.ok(), "updated 5000 nodes n[0-4999]\n");
    h.cli("scyld-nodectl", &["-a", "rm", "-y"]).ok();
    assert_eq!(nodes(h), json!({"nodes": []}));
}

fn head_fails_to_start(c: &mut Cluster, msg: &str) {
    let h = &mut c.heads[0];
    let out = Command::new(bin("clusterware-head")).arg("--config").arg(&h.config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(msg), "expected {msg:?} in {stderr}");
}

#[test]
fn head_start_up_errors_are_clear() {
    let mut c = Cluster::configure(Backend::Embedded, 1, "head.lease_ttl = 1\n");
    let text = std::fs::read_to_string(&c.heads[0].config).unwrap();
    let line = text.lines().position(|l| l == "head.lease_ttl = 1").unwrap() + 1;
    head_fails_to_start(&mut c, &format!("base.ini:{line}: head.lease_ttl: \"1\" is not a whole number from 2 to 300"));

    let mut c = Cluster::configure(Backend::Embedded, 1, "");
    let cfg =
        std::fs::read_to_string(&c.heads[0].config).unwrap().replace("database.admin_pass", "# database.admin_pass");
    std::fs::write(&c.heads[0].config, cfg).unwrap();
    head_fails_to_start(&mut c, "database.admin_pass is not set");

    // An external etcd that never answers: a clear error after the configured wait.
    let mut c = Cluster::configure(
        Backend::Embedded,
        1,
        "database.type = etcd\ndatabase.endpoints = http://127.0.0.1:1\ndatabase.ready_timeout = 2\n",
    );
    head_fails_to_start(&mut c, "the cluster database did not become ready within 2 s");

    // etcd missing: named, with the package to install.
    let mut c = Cluster::configure(Backend::Etcd, 1, "database.etcd_binary = /nonexistent/etcd\n");
    head_fails_to_start(&mut c, "install Debian's etcd-server package");

    // A second head on the same embedded file is refused, the first keeps running.
    let mut c = Cluster::solo();
    let h = &mut c.heads[0];
    let out =
        Command::new(bin("clusterware-head")).arg("--config").arg(&h.config).env("RUST_LOG", "off").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot listen") || stderr.contains("already open"), "{stderr}");
    assert!(h.is_running());
    h.wait_ready(Duration::from_secs(5));

    // Unknown keys only warn; SIGTERM stops the head cleanly.
    let mut c = Cluster::start(Backend::Embedded, 1, "some.future_key = 1\n");
    let h = &mut c.heads[0];
    assert_eq!(h.stop(), Some(0));
    let log = std::fs::read_to_string(h.dir.join("stderr.log")).unwrap();
    assert!(log.contains("unknown key `some.future_key` ignored"), "{log}");
    let file_log = std::fs::read_to_string(h.dir.join("log/head_head1.log")).unwrap();
    assert!(file_log.contains("head started") && file_log.contains("head stopped"), "{file_log}");
}
