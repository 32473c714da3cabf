//! Images and boot configs, and `scyld-bootctl export`/`import` between two separate clusters
//! (one solo head, one of three heads), with a corpus of corrupt archives that must all be
//! refused without writing anything.

use clusterware_tests::{Cluster, Head};
use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

fn data(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| ((i * 7 + i / 251) as u8) ^ seed).collect()
}

/// A boot config xyzBoot with image xyzImage on `h`; returns the local paths of its files.
fn make_config(c: &Cluster, h: &Head) -> [PathBuf; 3] {
    let files = [("vmlinuz", 200_000, 1u8), ("initrd.img", 300_000, 2), ("root.img", 2_000_000, 3)];
    let paths = files.map(|(name, len, seed)| {
        let p = c.dir().join(name);
        std::fs::write(&p, data(len, seed)).unwrap();
        p
    });
    h.cli("scyld-imgctl", &["create", "--name", "xyzImage", "--file", paths[2].to_str().unwrap()]).ok();
    let out = h.cli(
        "scyld-bootctl",
        &[
            "create",
            "--name",
            "xyzBoot",
            "--kernel",
            paths[0].to_str().unwrap(),
            "--initramfs",
            paths[1].to_str().unwrap(),
            "--image",
            "xyzImage",
            "--cmdline",
            "console=ttyS0 quiet",
        ],
    );
    assert_eq!(out.ok(), "created boot config xyzBoot\n");
    paths
}

/// Everything an import could have changed on a cluster: configs, images, files, and the
/// entries of every head's storage directory (but the verification cache, which every audit
/// rewrites atomically through a short-lived temporary file).
fn state(c: &Cluster) -> (String, String, String, Vec<Vec<String>>) {
    let h = &c.heads[0];
    let dirs = c
        .heads
        .iter()
        .map(|h| {
            let mut v: Vec<String> = walk(&h.dir.join("storage"))
                .into_iter()
                .filter(|n| !n.contains(".verified-") && !n.contains("-write-"))
                .collect();
            v.sort();
            v
        })
        .collect();
    (
        h.cli("scyld-bootctl", &["ls", "--json"]).ok().to_string(),
        h.cli("scyld-imgctl", &["ls", "--json"]).ok().to_string(),
        // The file records; which heads hold copies is the heads' own progress, not a change.
        h.cli("scyld-clusterctl", &["files", "ls", "--json"]).json()["files"].to_string(),
        dirs,
    )
}

fn walk(d: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).into_iter().flatten().flatten() {
        let p = e.path();
        out.push(p.display().to_string());
        if p.is_dir() {
            out.extend(walk(&p));
        }
    }
    out
}

fn get_bytes(h: &Head, id: &str) -> Vec<u8> {
    let url = format!(
        "{}{}",
        h.url(),
        clusterware_shared::api::path::full(&clusterware_shared::api::path::file_content(id, false))
    );
    let (ca, auth) = (h.ca_file(), h.auth_header_file());
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f", "--cacert", ca.to_str().unwrap(), "-H", &format!("@{}", auth.display()), &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{url}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

#[test]
fn export_and_import_between_clusters() {
    let src = Cluster::solo();
    let dst = Cluster::etcd(3);
    let s = &src.heads[0];
    let paths = make_config(&src, s);
    // Secure Boot travels with the config.
    s.cli("scyld-bootctl", &["-i", "xyzBoot", "update", "--secure-boot", "yes"]).ok();

    // The spec's first step: the source shows the config's image name.
    let out = s.cli("scyld-bootctl", &["-i", "xyzBoot", "ls", "-l"]);
    let text = out.ok();
    assert!(text.contains("secure boot: yes"), "{text}");
    assert!(text.contains("image: xyzImage") && text.contains("cmdline: console=ttyS0 quiet"), "{text}");
    assert!(text.contains("rootfs: root.img") && text.contains("size 2000000"), "{text}");

    let export = src.dir().join("xyzBoot.export");
    let out = s.cli("scyld-bootctl", &["-i", "xyzBoot", "export", "-o", export.to_str().unwrap()]);
    assert!(out.ok().starts_with("exported xyzBoot to"), "{out:?}");
    // A plain tar: the manifest first, then the three files.
    let mut ar = tar::Archive::new(std::fs::File::open(&export).unwrap());
    let names: Vec<String> = ar.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
    assert_eq!(names.len(), 4);
    assert_eq!(names[0], "manifest.json");
    assert!(names[1..].iter().all(|n| n.starts_with("files/")));

    let d = &dst.heads[0];
    let before = state(&dst);
    let out = d.cli("scyld-bootctl", &["import", export.to_str().unwrap(), "--dry-run"]);
    let text = out.ok();
    assert!(
        text.contains("would import boot config xyzBoot") && text.contains("would import image xyzImage"),
        "{text}"
    );
    assert_eq!(text.matches("  add ").count(), 3, "{text}");
    assert_eq!(state(&dst), before, "a dry run writes nothing");

    let out = d.cli("scyld-bootctl", &["import", export.to_str().unwrap()]);
    assert!(out.ok().contains("imported boot config xyzBoot"), "{out:?}");
    let detail: Value = dst.heads[2].cli("scyld-bootctl", &["-i", "xyzBoot", "ls", "--json"]).json();
    assert_eq!(detail["boot_config"]["image"], "xyzImage");
    assert_eq!(detail["boot_config"]["cmdline"], "console=ttyS0 quiet");
    assert_eq!(detail["boot_config"]["secure_boot"], true);
    // Every head serves the imported files (heads 2 and 3 through peer downloads).
    let ids: Vec<String> =
        detail["files"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 3);
    for h in &dst.heads {
        for (id, p) in ids.iter().zip(&paths) {
            assert_eq!(get_bytes(h, id), std::fs::read(p).unwrap());
        }
    }
    // The spec's check for duplicates on the target.
    let listing = d.cli("scyld-bootctl", &["ls", "-l"]);
    let hits = listing.ok().lines().filter(|l| l.contains("xyzBoot") || l.contains("xyzImage")).count();
    assert_eq!(hits, 2, "{listing:?}");

    // Conflicts: refused before anything is written, naming the option that resolves them.
    let before = state(&dst);
    // Every conflict at once, each with what resolves it, in a dry run as in an import; and an
    // export file that is not there names those that are.
    for dry in [true, false] {
        let mut args = vec!["import", export.to_str().unwrap()];
        if dry {
            args.push("--dry-run");
        }
        let out = d.cli("scyld-bootctl", &args);
        assert_eq!(out.code, 1);
        assert!(
            out.stderr.contains("boot config xyzBoot already exists (import with --boot-config NEW_NAME)")
                && out.stderr.contains("image xyzImage already exists (import with --image NEW_NAME, or --no-recurse"),
            "{out:?}"
        );
    }
    let missing = export.with_file_name("nosuch.export");
    let out = d.cli("scyld-bootctl", &["import", missing.to_str().unwrap()]);
    assert!(
        out.code == 1 && out.stderr.contains("export files in") && out.stderr.contains("xyzBoot.export"),
        "{out:?}"
    );
    let out = d.cli("scyld-bootctl", &["import", export.to_str().unwrap(), "--boot-config", "b2"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("image xyzImage already exists") && out.stderr.contains("--image NEW_NAME"), "{out:?}");
    assert_eq!(state(&dst), before);

    // Renamed import: every file reused, not stored twice.
    let out = d.cli("scyld-bootctl", &["import", export.to_str().unwrap(), "--boot-config", "b2", "--image", "img2"]);
    let text = out.ok();
    assert!(text.contains("b2 (renamed from xyzBoot)") && text.contains("img2 (renamed from xyzImage)"), "{text}");
    assert_eq!(text.matches("reuse existing").count(), 3, "{text}");
    let files: Value = d.cli("scyld-clusterctl", &["files", "ls", "--json"]).json();
    assert_eq!(files["files"].as_array().unwrap().len(), 3);

    // Without its image.
    let out = d.cli("scyld-bootctl", &["import", export.to_str().unwrap(), "--boot-config", "b3", "--no-recurse"]);
    assert!(out.ok().contains("image xyzImage not imported"), "{out:?}");
    let b3: Value = d.cli("scyld-bootctl", &["-i", "b3", "ls", "--json"]).json();
    assert_eq!(b3["boot_config"]["image"], Value::Null);
    let out = d.cli("scyld-bootctl", &["import", export.to_str().unwrap(), "--no-recurse", "--image", "x"]);
    assert_eq!(out.code, 2, "{out:?}");

    // In use: refused unless forced; deleting removes files nothing else references.
    d.cli("scyld-nodectl", &["create", "mac=52:54:00:ee:00:01", "ip=10.90.0.1", "_boot_config=xyzBoot"]).ok();
    let out = d.cli("scyld-bootctl", &["-i", "xyzBoot", "rm"]);
    assert!(out.code == 1 && out.stderr.contains("nodes n0 use it"), "{out:?}");
    let out = d.cli("scyld-imgctl", &["-i", "xyzImage", "rm"]);
    assert!(out.code == 1 && out.stderr.contains("used by boot config xyzBoot"), "{out:?}");
    let out = d.cli("scyld-clusterctl", &["files", "rm", &ids[0]]);
    assert!(
        out.code == 1 && out.stderr.contains("is used by") && out.stderr.contains("boot config xyzBoot"),
        "{out:?}"
    );
    d.cli("scyld-bootctl", &["default", "b3"]).ok();
    assert_eq!(d.cli("scyld-bootctl", &["default"]).ok(), "b3\n");
    let out = d.cli("scyld-bootctl", &["-i", "b3", "rm"]);
    assert!(out.code == 1 && out.stderr.contains("cluster default"), "{out:?}");
    for cfg in ["b3", "b2", "xyzBoot"] {
        d.cli("scyld-bootctl", &["-i", cfg, "rm", "--force"]).ok();
    }
    assert_eq!(d.cli("scyld-bootctl", &["default"]).ok(), "(none)\n");
    let files: Value = d.cli("scyld-clusterctl", &["files", "ls", "--json"]).json();
    assert_eq!(
        files["files"].as_array().unwrap().len(),
        1,
        "kernel and initramfs went with the last config using them"
    );
    d.cli("scyld-imgctl", &["-i", "img2", "rm"]).ok();
    d.cli("scyld-imgctl", &["-i", "xyzImage", "rm"]).ok();
    assert_eq!(d.cli("scyld-clusterctl", &["files", "ls"]).ok(), "");

    // Image and config management on the source: clone, update, bad references.
    s.cli("scyld-imgctl", &["-i", "xyzImage", "clone", "--name", "copy"]).ok();
    assert_eq!(s.cli("scyld-imgctl", &["ls"]).ok(), "copy\nxyzImage\n");
    s.cli("scyld-bootctl", &["-i", "xyzBoot", "clone", "--name", "b9"]).ok();
    s.cli("scyld-bootctl", &["-i", "b9", "update", "--image", "copy", "--cmdline", "x=1"]).ok();
    let b9: Value = s.cli("scyld-bootctl", &["-i", "b9", "ls", "--json"]).json();
    assert_eq!(
        (b9["boot_config"]["image"].as_str(), b9["boot_config"]["cmdline"].as_str()),
        (Some("copy"), Some("x=1"))
    );
    assert_eq!(b9["boot_config"]["secure_boot"], true, "a clone keeps Secure Boot");
    s.cli("scyld-bootctl", &["-i", "b9", "update", "--secure-boot", "no"]).ok();
    let b9: Value = s.cli("scyld-bootctl", &["-i", "b9", "ls", "--json"]).json();
    assert_eq!(b9["boot_config"]["secure_boot"], false);
    let out = s.cli("scyld-bootctl", &["-i", "b9", "update", "--image", "nope"]);
    assert!(out.code == 1 && out.stderr.contains("no image named nope"), "{out:?}");
    let out = s.cli("scyld-bootctl", &["create", "--name", "bad name", "--kernel", "x", "--initramfs", "y"]);
    assert_eq!(out.code, 1, "{out:?}");
    let out = s.cli(
        "scyld-bootctl",
        &["create", "--name", "b10", "--kernel", &"0".repeat(32), "--initramfs", &"0".repeat(32)],
    );
    assert!(out.code == 1 && out.stderr.contains("no file with id"), "{out:?}");
}

/// Reads an archive into (path, entry type, data) triples.
fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut ar = tar::Archive::new(bytes);
    ar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut d = Vec::new();
            e.read_to_end(&mut d).unwrap();
            (e.path().unwrap().display().to_string(), d)
        })
        .collect()
}

/// Builds an archive; `name` is written into the header as raw bytes (so `..` and absolute
/// paths can be made), `kind` is the entry type.
fn build(items: &[(&str, tar::EntryType, &[u8], Option<u64>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, body, declared) in items {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(declared.unwrap_or(body.len() as u64));
        if *kind == tar::EntryType::Symlink || *kind == tar::EntryType::Link {
            h.set_link_name("/etc/passwd").unwrap();
        }
        h.set_cksum();
        b.append(&h, *body).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn corrupt_archives_are_refused_and_write_nothing() {
    let src = Cluster::solo();
    make_config(&src, &src.heads[0]);
    let export = src.dir().join("good.export");
    src.heads[0].cli("scyld-bootctl", &["-i", "xyzBoot", "export", "-o", export.to_str().unwrap()]).ok();
    let good = std::fs::read(&export).unwrap();
    let parts = entries(&good);
    let manifest: Value = serde_json::from_slice(&parts[0].1).unwrap();
    let reg = tar::EntryType::Regular;
    let with_manifest = |m: &Value, rest: &[(String, Vec<u8>)]| -> Vec<u8> {
        let m = serde_json::to_vec(m).unwrap();
        let mut items: Vec<(&str, tar::EntryType, &[u8], Option<u64>)> = vec![("manifest.json", reg, &m, None)];
        items.extend(rest.iter().map(|(n, d)| (n.as_str(), reg, d.as_slice(), None)));
        build(&items)
    };
    let files = &parts[1..];
    let rootfs = data(2_000_000, 3);
    let needle = &rootfs[1000..1032];
    let rootfs_pos = good.windows(needle.len()).position(|w| w == needle).unwrap();

    let mut corpus: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    corpus.push(("truncated", good[..good.len() / 2].to_vec(), "truncated"));
    let mut flipped = good.clone();
    flipped[rootfs_pos] ^= 0x40;
    corpus.push(("flipped byte", flipped, "does not match the manifest's SHA-256"));
    let mut m = manifest.clone();
    m["files"][0]["size"] = Value::from(m["files"][0]["size"].as_u64().unwrap() + 1);
    corpus.push(("manifest lies about a size", with_manifest(&m, files), "in the manifest"));
    let mut m = manifest.clone();
    m["files"][1]["sha256"] = Value::from("ab".repeat(32));
    corpus.push(("manifest lies about a checksum", with_manifest(&m, files), "does not match the manifest's SHA-256"));
    let m0 = serde_json::to_vec(&manifest).unwrap();
    let f0 = (files[0].0.as_str(), reg, files[0].1.as_slice(), None);
    for (what, name, kind, msg) in [
        ("dot-dot entry", "files/../../../etc/passwd", reg, "unexpected entry"),
        ("absolute path", "/etc/cron.d/evil", reg, "unexpected entry"),
        ("symlink", "files/0123456789abcdef0123456789abcdef", tar::EntryType::Symlink, "not a regular file"),
        ("hardlink", "files/0123456789abcdef0123456789abcdef", tar::EntryType::Link, "not a regular file"),
        ("device", "files/0123456789abcdef0123456789abcdef", tar::EntryType::Char, "not a regular file"),
    ] {
        corpus.push((what, build(&[("manifest.json", reg, &m0, None), f0, (name, kind, b"", None)]), msg));
    }
    corpus.push(("duplicate names", build(&[("manifest.json", reg, &m0, None), f0, f0]), "appears twice"));
    corpus.push((
        "manifest names a file not in the archive",
        with_manifest(&manifest, &files[..2]),
        "which is not in the archive",
    ));
    let mut m = manifest.clone();
    for f in m["files"].as_array_mut().unwrap() {
        f["size"] = Value::from(1u64 << 50);
    }
    corpus.push((
        "huge declared size",
        build(&[
            ("manifest.json", reg, &serde_json::to_vec(&m).unwrap(), None),
            (files[0].0.as_str(), reg, b"", Some(1 << 50)),
        ]),
        "are available",
    ));
    let mut m = manifest.clone();
    m["version"] = Value::from(2);
    m["new_field"] = Value::from("from the future");
    corpus.push(("future version", with_manifest(&m, files), "export format version 2"));
    corpus.push(("not a tar archive", data(10_000, 9), "archive refused"));
    corpus.push((
        "manifest not first",
        build(&[f0, ("manifest.json", reg, &m0, None)]),
        "the first entry must be manifest.json",
    ));
    corpus.push(("empty file", Vec::new(), "empty"));

    let dst = Cluster::solo();
    let d = &dst.heads[0];
    // Something already there, so that "nothing written" also means "nothing changed".
    make_config(&dst, d);
    let before = state(&dst);
    for (what, bytes, msg) in &corpus {
        let p = dst.dir().join("bad.export");
        std::fs::write(&p, bytes).unwrap();
        let out = d.cli("scyld-bootctl", &["import", p.to_str().unwrap(), "--boot-config", "new", "--image", "newimg"]);
        assert_eq!(out.code, 1, "{what}: {out:?}");
        assert!(out.stderr.contains(msg), "{what}: expected {msg:?} in {}", out.stderr);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{what}: {out:?}");
        assert_eq!(state(&dst), before, "{what} changed something");
    }
    // The good archive still imports after all that.
    let out =
        d.cli("scyld-bootctl", &["import", export.to_str().unwrap(), "--boot-config", "new", "--image", "newimg"]);
    assert!(out.ok().contains("imported boot config new"), "{out:?}");
}

#[test]
fn managedb_save_and_load_between_backends() {
    let src = Cluster::solo();
    let s = &src.heads[0];
    make_config(&src, s);
    s.cli(
        "scyld-nodectl",
        &["create", "--count", "50", "mac=52:54:00:ff:00:00", "ip=10.95.0.1", "_boot_config=xyzBoot"],
    )
    .ok();
    s.cli("scyld-bootctl", &["default", "xyzBoot"]).ok();
    let file = src.dir().join("cluster.json");
    let out = s.cli("managedb", &["save", file.to_str().unwrap()]);
    assert!(out.ok().starts_with("saved "), "{out:?}");
    let saved: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert!(saved["keys"].as_object().unwrap().len() > 150);
    assert_eq!(saved["schema"], 1, "a dump says its records' schema");
    assert!(saved["keys"].as_object().unwrap().keys().all(|k| !k.starts_with("heads/") && !k.starts_with("alive/")));

    // Into a fresh 3-head etcd cluster: identical data.
    let dst = Cluster::etcd(3);
    let d = &dst.heads[1];
    let before = state(&dst);
    let bad = dst.dir().join("bad.json");
    let text = std::fs::read_to_string(&file).unwrap();
    for (what, body, msg) in [
        ("truncated", text[..text.len() / 2].to_string(), "malformed or truncated"),
        ("not JSON", "hello".to_string(), "malformed or truncated"),
        ("future version", text.replacen("\"version\": 1", "\"version\": 2", 1), "newer ClusterWare"),
        ("newer schema", text.replacen("\"schema\": 1", "\"schema\": 99", 1), "database schema 99, newer"),
        ("foreign key", text.replacen("\"keys\": {", "\"keys\": {\"heads/evil\": \"x\",", 1), "unexpected key"),
        ("broken record", text.replacen("\"nodes/", "\"nodes/0", 1), "does not match its record"),
    ] {
        std::fs::write(&bad, body).unwrap();
        let out = d.cli("managedb", &["load", bad.to_str().unwrap()]);
        assert_eq!(out.code, 1, "{what}: {out:?}");
        assert!(out.stderr.contains(msg), "{what}: expected {msg:?}: {out:?}");
        assert_eq!(state(&dst), before, "{what} changed the cluster");
    }
    let out = d.cli("managedb", &["load", file.to_str().unwrap()]);
    assert!(out.ok().starts_with("loaded "), "{out:?}");
    for (a, b) in [(s, &dst.heads[0]), (s, &dst.heads[2])] {
        for args in [
            &["scyld-nodectl", "ls", "--json"][..],
            &["scyld-bootctl", "ls", "--json"],
            &["scyld-imgctl", "ls", "--json"],
            &["scyld-clusterctl", "files", "ls", "--json"],
        ] {
            // Where the copies are is each cluster's own business: the records must be identical.
            let records = |h: &clusterware_tests::Head| {
                let mut v = h.cli(args[0], &args[1..]).json();
                if let Some(o) = v.as_object_mut() {
                    o.remove("copies");
                    o.remove("min_copies");
                }
                v
            };
            assert_eq!(records(a), records(b), "{args:?}");
        }
    }
    let again = dst.dir().join("again.json");
    dst.heads[2].cli("managedb", &["save", again.to_str().unwrap()]).ok();
    let again: Value = serde_json::from_slice(&std::fs::read(&again).unwrap()).unwrap();
    assert_eq!(again["keys"], saved["keys"], "identical data");
    // A cluster with data refuses a load.
    let out = d.cli("managedb", &["load", file.to_str().unwrap()]);
    assert!(out.code == 1 && out.stderr.contains("needs an empty cluster"), "{out:?}");
    let out = d.cli("managedb", &[]);
    assert_eq!(out.code, 2, "{out:?}");
}
