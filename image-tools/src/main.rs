//! `scyld-modimg`: node root images.
//!
//! ```text
//! scyld-modimg build --from DIR|ROOT.tar[.gz] [--agent PATH] -o IMAGE
//! scyld-modimg register IMAGE --name NAME [--description TEXT]
//! ```
//!
//! An image is a gzip'd newc archive of the root file system, the format the agent unpacks into
//! RAM when a node boots. `build` bakes the agent in (`/usr/sbin/clusterware-node`) with its
//! service: a systemd unit (enabled) when the root has systemd, else a respawn line in busybox
//! init's `/etc/inittab`. The same inputs give the same bytes.

use clap::Parser;
use clusterware_cli::{CliResult, Client, ConnOpts, fail, human_bytes, print_json, run, upload_file, usage};
use clusterware_image_tools::args::{Args, Cmd};
use clusterware_shared::api::CreateImage;
use clusterware_shared::cpio::Entry;
use clusterware_shared::outln;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::ExitCode;

const SYSTEMD_UNIT: &str = include_str!("../../agent/systemd/clusterware-node.service");
const RESPAWN: &str = "::respawn:/usr/sbin/clusterware-node run";

fn add_dirs(e: &mut BTreeMap<String, Entry>, path: &str) {
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(part);
        e.entry(cur.clone()).or_insert(Entry::Dir(0o755));
    }
}

fn safe(path: &str) -> Result<String, String> {
    let p = path.trim_start_matches("./").trim_start_matches('/').trim_end_matches('/').to_string();
    if p.split('/').any(|c| c == "..") {
        return Err(format!("{path:?} leaves the root"));
    }
    Ok(p)
}

fn from_dir(root: &Path) -> Result<BTreeMap<String, Entry>, String> {
    let mut e = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let rd = std::fs::read_dir(&dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        for ent in rd {
            let ent = ent.map_err(|err| format!("{}: {err}", dir.display()))?;
            let p = ent.path();
            let rel =
                p.strip_prefix(root).map_err(|_| "path outside the root".to_string())?.to_string_lossy().to_string();
            let meta = std::fs::symlink_metadata(&p).map_err(|err| format!("{}: {err}", p.display()))?;
            let mode = meta.permissions().mode() & 0o7777;
            let ft = meta.file_type();
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).map_err(|err| format!("{}: {err}", p.display()))?;
                e.insert(rel, Entry::Symlink(t.to_string_lossy().to_string()));
            } else if ft.is_dir() {
                e.insert(rel, Entry::Dir(mode));
                stack.push(p);
            } else if ft.is_file() {
                let data = std::fs::read(&p).map_err(|err| format!("{}: {err}", p.display()))?;
                e.insert(rel, Entry::File { data, mode });
            }
            // Sockets, fifos and device files are not carried: the node's devtmpfs has devices.
        }
    }
    Ok(e)
}

fn from_tar(path: &Path) -> Result<BTreeMap<String, Entry>, String> {
    let f = std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
    let mut head = [0u8; 2];
    let gz = {
        let mut f2 = std::fs::File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
        f2.read_exact(&mut head).is_ok() && head == [0x1f, 0x8b]
    };
    let reader: Box<dyn Read> = if gz { Box::new(flate2::read::GzDecoder::new(f)) } else { Box::new(f) };
    let mut a = tar::Archive::new(reader);
    let mut e = BTreeMap::new();
    for ent in a.entries().map_err(|err| format!("{}: {err}", path.display()))? {
        let mut ent = ent.map_err(|err| format!("{}: {err}", path.display()))?;
        let name = ent.path().map_err(|err| err.to_string())?.to_string_lossy().to_string();
        let rel = safe(&name)?;
        if rel.is_empty() {
            continue;
        }
        let mode = ent.header().mode().unwrap_or(0o644) & 0o7777;
        match ent.header().entry_type() {
            tar::EntryType::Directory => {
                e.insert(rel, Entry::Dir(mode));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::new();
                ent.read_to_end(&mut data).map_err(|err| format!("{name}: {err}"))?;
                e.insert(rel, Entry::File { data, mode });
            }
            tar::EntryType::Symlink => {
                let t = ent.link_name().map_err(|err| err.to_string())?.unwrap_or_default();
                e.insert(rel, Entry::Symlink(t.to_string_lossy().to_string()));
            }
            tar::EntryType::Link => {
                let t = ent.link_name().map_err(|err| err.to_string())?.unwrap_or_default();
                let target = safe(&t.to_string_lossy())?;
                if let Some(Entry::File { data, mode }) = e.get(&target).cloned() {
                    e.insert(rel, Entry::File { data, mode });
                }
            }
            _ => {}
        }
    }
    Ok(e)
}

/// The image's entries with the agent and its service added.
pub fn bake(mut e: BTreeMap<String, Entry>, agent: Vec<u8>) -> Result<(BTreeMap<String, Entry>, &'static str), String> {
    add_dirs(&mut e, "usr/sbin");
    add_dirs(&mut e, "etc/clusterware");
    e.insert("usr/sbin/clusterware-node".into(), Entry::File { data: agent, mode: 0o755 });
    let systemd = ["lib/systemd/systemd", "usr/lib/systemd/systemd"].iter().any(|p| e.contains_key(*p));
    if systemd {
        add_dirs(&mut e, "etc/systemd/system/multi-user.target.wants");
        e.insert(
            "etc/systemd/system/clusterware-node.service".into(),
            Entry::File { data: SYSTEMD_UNIT.as_bytes().to_vec(), mode: 0o644 },
        );
        e.insert(
            "etc/systemd/system/multi-user.target.wants/clusterware-node.service".into(),
            Entry::Symlink("/etc/systemd/system/clusterware-node.service".into()),
        );
        return Ok((e, "systemd unit"));
    }
    if !e.contains_key("sbin/init") {
        return Err("the root has neither systemd nor /sbin/init: it cannot boot".into());
    }
    let mut inittab = match e.get("etc/inittab") {
        Some(Entry::File { data, .. }) => String::from_utf8_lossy(data).to_string(),
        _ => "# written by scyld-modimg\n::sysinit:/bin/sh -c 'mkdir -p /dev/pts; mount -t devpts devpts /dev/pts 2>/dev/null; hostname -F /etc/hostname 2>/dev/null; true'\n::ctrlaltdel:/sbin/reboot\n".into(),
    };
    if !inittab.lines().any(|l| l.trim() == RESPAWN) {
        if !inittab.ends_with('\n') && !inittab.is_empty() {
            inittab.push('\n');
        }
        inittab.push_str(RESPAWN);
        inittab.push('\n');
    }
    add_dirs(&mut e, "etc");
    e.insert("etc/inittab".into(), Entry::File { data: inittab.into_bytes(), mode: 0o644 });
    Ok((e, "init respawn line"))
}

fn build(from: &Path, agent: Option<&Path>, output: &Path) -> CliResult<()> {
    let agent = clusterware_shared::sys::agent_path(agent).map_err(usage)?;
    let agent = agent.as_path();
    let agent_bytes =
        std::fs::read(agent).map_err(|e| fail(format!("cannot read the agent {}: {e}", agent.display())))?;
    if agent_bytes.get(..4) != Some(b"\x7fELF") {
        return Err(usage(format!("{} is not an ELF program", agent.display())));
    }
    let entries = if from.is_dir() { from_dir(from) } else { from_tar(from) }.map_err(fail)?;
    let (entries, how) = bake(entries, agent_bytes).map_err(fail)?;
    let image = clusterware_shared::cpio::gzip(&clusterware_shared::cpio::write(&entries), 6);
    clusterware_shared::fsutil::write_atomic(output, None, &image, Some(0o644))
        .map_err(|e| fail(format!("cannot write {}: {e}", output.display())))?;
    outln!(
        "{}: {} entries, {} bytes; agent at /usr/sbin/clusterware-node, started by a {how}",
        output.display(),
        entries.len(),
        image.len()
    );
    Ok(())
}

fn register(args: &Args, conn: &ConnOpts, image: &Path, name: &str, description: &str) -> CliResult<()> {
    let c = Client::new(conn)?;
    let rec = upload_file(&c, image, None, "rootfs")?;
    let img = c.create_image(&CreateImage {
        name: name.to_string(),
        rootfs: rec.id.clone(),
        extra_files: Vec::new(),
        description: description.to_string(),
    })?;
    if args.json {
        print_json(&img);
    } else {
        outln!("image {} registered (root file system {}, {})", img.name, rec.id, human_bytes(rec.size));
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-modimg", || match &args.cmd {
        Cmd::Build { from, agent, output } => build(from, agent.as_deref(), output),
        Cmd::Register { conn, image, name, description } => register(&args, conn, image, name, description),
        Cmd::Completion(c) => c.print::<Args>(),
    })
}

clusterware_cli::clap_consistency_test!(Args);
