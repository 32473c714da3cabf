//! What administrators see on a solo head: node attributes naming a boot config, head or secret
//! are checked when set and reported in node status while they name nothing; storage figures
//! current after every change; an identical upload reusing its record; `Content-Disposition` on
//! file contents; `--check-config` reporting every warning; logs without Rust debug forms.

use clusterware_client::{BlockingClient, Config as ClientConfig};
use clusterware_tests::{Backend, Cluster, Head, bin, poll_until};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

/// A client of the head's API with the harness's admin credential.
fn admin(c: &Cluster) -> BlockingClient {
    let h = &c.heads[0];
    BlockingClient::new(ClientConfig::new(&h.url()).ca_pem(&h.ca()).token(&c.token).timeout_secs(30)).expect("client")
}

/// Uploads `data` as `name` of `kind` through the typed client; returns the record.
fn upload(c: &Cluster, name: &str, kind: &str, data: &[u8]) -> Value {
    let rec = admin(c).upload_file(name, kind, data.len() as u64, None, &mut &data[..]).expect("upload");
    serde_json::to_value(rec).unwrap()
}

fn nodes(c: &Cluster) -> Value {
    let (status, v) = c.heads[0].api("GET", "/nodes", Some(&c.token), None);
    assert_eq!(status, 200, "{v}");
    v
}

fn status_of(c: &Cluster) -> Value {
    let (status, v) = c.heads[0].api("POST", "/nodes/status", Some(&c.token), Some(&json!({})));
    assert_eq!(status, 200, "{v}");
    v
}

/// One raw HTTP exchange (over TLS to the HTTPS port when `tls`): (status, head, body).
fn raw(h: &Head, tls: bool, request: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    let port = if tls { h.tls_port } else { h.port };
    let tcp = TcpStream::connect((h.ip, port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    if tls {
        let mut s = clusterware_tests::tls_stream(tcp, h);
        s.write_all(request.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let _ = s.read_to_end(&mut buf);
    } else {
        let mut s = tcp;
        s.write_all(request.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        let _ = s.read_to_end(&mut buf);
    }
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("response head");
    let head = String::from_utf8(buf[..split].to_vec()).expect("an ASCII response head");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, buf[split + 4..].to_vec())
}

/// The value of a response header (names compared without case).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `_boot_config`, `_preferred_head` and `_bmc_pass_ref` naming nothing: refused as a whole with
/// what is wrong and a near name, nothing changed; accepted with `force` and then reported in
/// the node's status (the `_preferred_head` problem on a solo head too); accepted without force
/// when they name something.
#[test]
fn references_are_checked_when_set_and_reported_in_status() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let t = Some(c.token.as_str());
    let kernel = upload(&c, "vmlinuz", "kernel", b"kernel bytes");
    let initrd = upload(&c, "initrd.img", "initramfs", b"initramfs bytes");
    let (s, v) = h.api(
        "POST",
        "/bootconfigs",
        t,
        Some(&json!({"name": "xyzBoot", "kernel": kernel["id"], "initramfs": initrd["id"]})),
    );
    assert_eq!(s, 201, "{v}");
    let (s, v) = h.api("PUT", "/secrets/ipmi", t, Some(&json!({"value": "s3cret"})));
    assert!(s == 200 || s == 201, "{s} {v}");
    h.cli("scyld-nodectl", &["create", "mac=52:54:00:00:10:01", "ip=10.60.0.1", "rack=1"]).ok();
    let uid = nodes(&c)["nodes"][0]["uid"].as_str().unwrap().to_string();

    // Refused through the API: a client error naming the attribute, the fix and a near name.
    let before = nodes(&c);
    let set = |attrs: Value, force: bool| {
        h.api("POST", "/nodes/update", t, Some(&json!({"nodes": [uid], "set": attrs, "force": force})))
    };
    for (attrs, msg) in [
        (
            json!({"_boot_config": "xyzBot", "rack": "2"}),
            "_boot_config=xyzBot names no boot config (scyld-bootctl ls lists them; did you mean xyzBoot?); give \
             --force to set it anyway",
        ),
        (
            json!({"_boot_config": "noSuchBoot"}),
            "_boot_config=noSuchBoot names no boot config (scyld-bootctl ls lists them); give --force to set it anyway",
        ),
        (
            json!({"_preferred_head": "head9"}),
            "_preferred_head=head9 names no head of the cluster (scyld-clusterctl heads ls lists them; did you mean \
             head1?); give --force to set it anyway",
        ),
        (
            json!({"_bmc_pass_ref": "ipmj"}),
            "_bmc_pass_ref=ipmj names no secret (scyld-clusterctl secrets ls lists them; did you mean ipmi?); give \
             --force to set it anyway",
        ),
        (
            json!({"_bmc_pass_ref": "nosuch", "_preferred_head": "head9"}),
            "_bmc_pass_ref=nosuch names no secret (scyld-clusterctl secrets ls lists them); _preferred_head=head9 \
             names no head of the cluster (scyld-clusterctl heads ls lists them; did you mean head1?); give --force \
             to set them anyway",
        ),
    ] {
        let (s, v) = set(attrs.clone(), false);
        assert_eq!(s, 400, "{attrs}: {v}");
        assert_eq!(v["kind"], "bad_request", "{attrs}: {v}");
        assert_eq!(v["message"], msg, "{attrs}");
        assert_eq!(nodes(&c), before, "{attrs} changed the nodes");
    }
    // A creation too, whichever node of the request names nothing.
    let (s, v) = h.api(
        "POST",
        "/nodes",
        t,
        Some(&json!({"nodes": [
            {"macs": ["52:54:00:00:10:02"], "ip": "10.60.0.2"},
            {"macs": ["52:54:00:00:10:03"], "attributes": {"_boot_config": "xyzboot"}},
        ]})),
    );
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("did you mean xyzBoot?"), "{v}");
    assert_eq!(nodes(&c), before, "a refused creation created nothing");
    // Through the CLI: one line saying the same, exit 1, nothing changed.
    let out = h.cli("scyld-nodectl", &["-i", "n0", "set", "_preferred_head=head9"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("_preferred_head=head9 names no head of the cluster"), "{out:?}");
    assert_eq!(nodes(&c), before);

    // Names that exist go through; status has nothing to say.
    let (s, v) = set(json!({"_boot_config": "xyzBoot", "_preferred_head": "head1", "_bmc_pass_ref": "ipmi"}), false);
    assert_eq!(s, 200, "{v}");
    let st = status_of(&c);
    assert_eq!(st["nodes"][0]["problems"], json!([]), "{st}");

    // Forced: set as given, and each reported in the node's status.
    let (s, v) = set(json!({"_boot_config": "xyzBot", "_preferred_head": "head9", "_bmc_pass_ref": "nosuch"}), true);
    assert_eq!(s, 200, "{v}");
    let attrs = &nodes(&c)["nodes"][0]["attributes"];
    assert_eq!(
        *attrs,
        json!({"_boot_config": "xyzBot", "_preferred_head": "head9", "_bmc_pass_ref": "nosuch", "rack": "1"})
    );
    let problems = status_of(&c)["nodes"][0]["problems"].clone();
    assert_eq!(
        problems,
        json!([
            "_preferred_head=head9 names no head; the node has no preference",
            "_boot_config=xyzBot names no boot config (did you mean xyzBoot?): the node boots nothing until it does \
             (the cluster has no default boot config either)",
            "_bmc_pass_ref=nosuch names no secret: power control of the node fails until it does (scyld-clusterctl \
             secrets set nosuch)",
        ]),
    );
    // What clearing it would give follows the cluster default.
    let (s, v) = h.api("PUT", "/default-boot-config", t, Some(&json!({"name": "xyzBoot"})));
    assert!((200..300).contains(&s), "{s} {v}");
    let problems = status_of(&c)["nodes"][0]["problems"].clone();
    assert!(
        problems[1].as_str().unwrap().ends_with("(cleared, it would boot the cluster default xyzBoot)"),
        "{problems}"
    );
    // `ls -l` and `status` show them too (on stderr).
    let ls = h.cli("scyld-nodectl", &["ls", "-l"]);
    ls.ok();
    assert!(ls.stderr.contains("n0: _preferred_head=head9 names no head"), "{ls:?}");
    assert!(ls.stderr.contains("n0: _boot_config=xyzBot names no boot config"), "{ls:?}");
    let st = h.cli("scyld-nodectl", &["status"]);
    st.ok();
    assert!(st.stderr.contains("n0: _preferred_head=head9 names no head"), "{st:?}");
    assert!(st.stderr.contains("n0: _bmc_pass_ref=nosuch names no secret"), "{st:?}");

    // The head's log says what changed without Rust syntax.
    let log = h.wait_log("the attribute change logged", |l| l.contains("forced=true"));
    let line = log.lines().rfind(|l| l.contains("node attributes changed")).unwrap();
    assert!(line.contains("set=_bmc_pass_ref,_boot_config,_preferred_head clear=(none)"), "{line}");
    assert!(log.contains("boot config created boot_config=xyzBoot image=(none)"), "{log}");
    for rust in ["Some(", "None", "=[\"", "=\""] {
        assert!(!log.contains(rust), "{rust} in the log:\n{log}");
    }
}

/// `heads ls -l`'s FILES and BYTES follow uploads and deletions within moments, with the
/// default audit interval (the audit at start is the only one during the test).
#[test]
fn storage_figures_follow_every_change() {
    let c = Cluster::start(Backend::Embedded, 1, "local_files.audit_interval = 300\n");
    let h = &c.heads[0];
    let t = Some(c.token.as_str());
    let summary = || {
        let (s, v) = h.api("GET", "/heads", t, None);
        assert_eq!(s, 200, "{v}");
        v["heads"][0]["storage"].clone()
    };
    poll_until("the audit at start", Duration::from_secs(10), || summary()["audited"].as_u64().unwrap_or(0) > 0);
    let audits = |c: &Cluster| c.heads[0].api("GET", "/storage", t, None).1["audits"].as_u64().unwrap();
    assert_eq!(audits(&c), 1);

    let sizes = [1000usize, 20_000, 300_000];
    let ids: Vec<String> = sizes
        .iter()
        .enumerate()
        .map(|(i, n)| upload(&c, &format!("f{i}"), "other", &vec![i as u8; *n])["id"].as_str().unwrap().to_string())
        .collect();
    let total: u64 = sizes.iter().sum::<usize>() as u64;
    let mut last = Value::Null;
    poll_until("3 files in the storage summary", Duration::from_secs(5), || {
        last = summary();
        last["files"] == 3 && last["bytes"] == total
    });
    assert_eq!(last["missing"], 0, "{last}");
    let out = h.cli("scyld-clusterctl", &["heads", "ls", "-l"]);
    assert!(out.ok().lines().nth(1).unwrap().split_whitespace().any(|w| w == "3"), "{out:?}");

    let (s, v) = h.api("DELETE", &format!("/files/{}", ids[2]), t, None);
    assert_eq!(s, 200, "{v}");
    poll_until("the deletion in the storage summary", Duration::from_secs(5), || {
        last = summary();
        last["files"] == 2 && last["bytes"] == 21_000
    });
    assert_eq!(audits(&c), 1, "no audit ran: the figures came from the changes themselves");
}

/// The same bytes uploaded again under the same name and kind are the file recorded before:
/// same id, one record, one copy; another name is another file.
#[test]
fn an_identical_upload_reuses_the_record() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let data = b"the same bytes twice".to_vec();
    let first = upload(&c, "same.img", "rootfs", &data);
    let second = upload(&c, "same.img", "rootfs", &data);
    assert_eq!(first, second, "the second upload answers with the first record");
    // Over raw HTTP: 200 (nothing created), not 201.
    let auth = clusterware_shared::auth::admin_token(clusterware_tests::PASS);
    let (status, head, body) = raw(
        h,
        true,
        &format!(
            "PUT /api/v1/files?name=same.img&kind=rootfs&size={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Authorization: Bearer {auth}\r\nContent-Length: {}\r\n\r\n",
            data.len(),
            data.len()
        ),
        &data,
    );
    assert_eq!(status, 200, "{head}");
    let third: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(third["id"], first["id"]);
    // Another name, or other bytes, is another file.
    let renamed = upload(&c, "other.img", "rootfs", &data);
    assert_ne!(renamed["id"], first["id"]);
    let changed = upload(&c, "same.img", "rootfs", b"other bytes");
    assert_ne!(changed["id"], first["id"]);
    let (_, list) = h.api("GET", "/files", Some(&c.token), None);
    let ids: Vec<&str> = list["files"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "{list}");
    // No copy left behind for the dropped uploads.
    let copies = std::fs::read_dir(h.dir.join("storage"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_str().is_some_and(clusterware_shared::api::is_file_id))
        .count();
    assert_eq!(copies, 3);
}

/// `Content-Disposition` on a file's content, over HTTPS and plain HTTP, GET and HEAD: an
/// ASCII-only safe name in `filename`, the original percent-encoded in `filename*`.
#[test]
fn content_disposition_is_well_formed() {
    let c = Cluster::solo();
    let h = &c.heads[0];
    let name = "we\"ird näme;.img";
    let rec = upload(&c, name, "kernel", b"a kernel");
    let id = rec["id"].as_str().unwrap();
    let want = "attachment; filename=\"we_ird_n_me_.img\"; filename*=UTF-8''we%22ird%20n%C3%A4me%3B.img";
    for (tls, method) in [(true, "GET"), (false, "GET"), (false, "HEAD")] {
        let (status, head, body) = raw(
            h,
            tls,
            &format!("{method} /api/v1/files/{id}/content HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            b"",
        );
        assert_eq!(status, 200, "{head}");
        assert_eq!(header(&head, "content-disposition"), Some(want), "{head}");
        if method == "GET" {
            assert_eq!(body, b"a kernel");
        }
    }
    let plain = upload(&c, "vmlinuz-6.1.0", "kernel", b"another kernel");
    let (_, head, _) = raw(
        h,
        false,
        &format!(
            "GET /api/v1/files/{}/content HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            plain["id"].as_str().unwrap()
        ),
        b"",
    );
    assert_eq!(header(&head, "content-disposition"), Some("attachment; filename=\"vmlinuz-6.1.0\""), "{head}");
}

/// `--check-config` prints every warning of the load (a readable file holding the password, a
/// misspelled key with the key it probably is) and says how many; a bad value is an error.
#[test]
fn check_config_reports_every_warning() {
    let dir = tempfile::TempDir::new().unwrap();
    let path = dir.path().join("base.ini");
    std::fs::write(
        &path,
        format!(
            "database.admin_pass = pw\nhead.name = t1\nhead.prot = 8080\nlogging.dir = {}/log\n",
            dir.path().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let run =
        || Command::new(bin("clusterware-head")).arg("--config").arg(&path).arg("--check-config").output().unwrap();
    let out = run();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let p = path.display();
    assert_eq!(
        stderr.lines().collect::<Vec<_>>(),
        [
            format!("clusterware-head: warning: {p}:3: unknown key `head.prot` ignored; did you mean `head.port`?"),
            format!(
                "clusterware-head: warning: {p}: mode 0644 lets other users read the database password it holds; run \
                 chmod 600 {p}"
            ),
        ],
    );
    assert_eq!(stdout.lines().last(), Some(format!("configuration {p} is valid, with 2 warnings (above)").as_str()));

    // Fixed: no warning.
    std::fs::write(
        &path,
        format!("database.admin_pass = pw\nhead.name = t1\nlogging.dir = {}/log\n", dir.path().display()),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().last(),
        Some(format!("configuration {p} is valid").as_str())
    );

    // A bad value: exit 1 with the error.
    std::fs::write(&path, "database.admin_pass = pw\nhead.name = t1\nhead.port = 99999\n").unwrap();
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        format!("clusterware-head: error: {p}:3: head.port: \"99999\" is not a port number (1-65535)")
    );
}

/// The administrator's commands as typed: a closed pipe ends a listing quietly with exit 0 (no
/// panic), references checked by the CLI too (`--force` sets them anyway), a file removed by its
/// name, sizes in KiB/MiB unless `--bytes`, and a head that is down named with its service and log.
#[test]
fn the_commands_as_an_administrator_types_them() {
    let mut c = Cluster::solo();
    let h = &c.heads[0];
    // More than a pipe holds (64 KiB) in each listing below, so that the writer meets the closed pipe.
    h.cli("scyld-nodectl", &["create", "--count", "3000", "mac=52:54:00:77:00:00", "ip=10.77.0.1"]).ok();

    // `… | head -1`: the reader goes away after one line.
    for args in [&["ls", "-l"][..], &["status"], &["-a", "ls", "--json"]] {
        let mut child = Command::new(bin("scyld-nodectl"))
            .args(["--config", h.config.to_str().unwrap()])
            .args(args)
            .env_remove("CLUSTERWARE_HEAD")
            .env_remove("CLUSTERWARE_TOKEN")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0u8; 16];
        child.stdout.take().unwrap().read_exact(&mut first).unwrap();
        // The pipe closed here, with most of the listing still to write.
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }

    // A typo is refused by the CLI with the suggestion; --force sets it anyway.
    h.cli(
        "scyld-clusterctl",
        &["files", "upload", h.config.to_str().unwrap(), "--name", "vmlinuz", "--kind", "kernel"],
    )
    .ok();
    let ls = h.cli("scyld-clusterctl", &["files", "ls", "-l"]);
    let size = std::fs::metadata(&h.config).unwrap().len();
    assert!(ls.ok().contains(&format!("{size} B")) || ls.stdout.contains("KiB"), "human sizes: {ls:?}");
    let bytes = h.cli("scyld-clusterctl", &["files", "ls", "-l", "--bytes"]);
    assert!(bytes.ok().contains(&format!(" {size} ")), "{bytes:?}");
    let out = h.cli("scyld-nodectl", &["-i", "n1", "set", "_preferred_head=hed1"]);
    assert!(out.code == 1 && out.stderr.contains("did you mean head1?") && out.stderr.contains("--force"), "{out:?}");
    assert_eq!(nodes(&c)["nodes"][1]["attributes"], json!({}));
    h.cli("scyld-nodectl", &["-i", "n1", "set", "--force", "_preferred_head=hed1"]).ok();
    let st = h.cli("scyld-nodectl", &["-i", "n1", "status"]);
    assert!(st.ok().contains("n1") && st.stderr.contains("_preferred_head=hed1 names no head"), "{st:?}");

    // Files by name where the name is unique.
    let out = h.cli("scyld-clusterctl", &["files", "rm", "nosuch"]);
    assert!(out.code == 1 && out.stderr.contains("no file has the id or name"), "{out:?}");
    let out = h.cli("scyld-clusterctl", &["files", "rm", "vmlinuz"]);
    assert!(out.ok().starts_with("deleted "), "{out:?}");
    assert_eq!(h.cli("scyld-clusterctl", &["files", "ls"]).ok(), "");

    // The head is down: the error names its service and its log.
    let h = &mut c.heads[0];
    h.stop();
    let out = h.cli("scyld-nodectl", &["ls"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("cannot reach the head")
            && out.stderr.contains("systemctl status clusterware")
            && out.stderr.contains("head_head1.log"),
        "{out:?}"
    );
}
