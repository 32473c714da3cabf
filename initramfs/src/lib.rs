//! Building a node's initramfs: a newc cpio archive (gzip-compressed) with the static agent as
//! `/init`, the kernel modules the node's network card needs (with their dependencies, in load
//! order, from the kernel's `modules.dep`), `/etc/clusterware/modules` listing them in that
//! order, and the few device nodes the kernel wants before `/init` runs. The same inputs give the
//! same bytes: entries sorted, timestamps, owners and inode numbers fixed, gzip without a name or
//! time.

pub mod args;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The network drivers included when none are named: what QEMU, most servers and clouds use.
pub const DEFAULT_MODULES: [&str; 12] = [
    "virtio_net",
    "virtio_pci",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "tg3",
    "bnxt_en",
    "mlx4_en",
    "mlx5_core",
];

#[derive(Debug)]
pub struct BuildError(pub String);

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(m: impl Into<String>) -> BuildError {
    BuildError(m.into())
}

/// A module's name as the kernel knows it: file stem, `-` as `_`.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: module path (relative to the modules directory) → its dependencies' paths.
pub fn parse_modules_dep(text: &str) -> Result<BTreeMap<String, Vec<String>>, BuildError> {
    let mut m = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (module, deps) = line.split_once(':').ok_or_else(|| err(format!("modules.dep:{}: no ':'", i + 1)))?;
        if module.contains("..") || module.starts_with('/') {
            return Err(err(format!("modules.dep:{}: {module:?} leaves the modules directory", i + 1)));
        }
        m.insert(module.trim().to_string(), deps.split_whitespace().map(str::to_string).collect());
    }
    Ok(m)
}

/// The modules to load, dependencies first, for the wanted names. Wanted names that this kernel
/// does not have are returned separately.
pub fn resolve(
    dep: &BTreeMap<String, Vec<String>>,
    wanted: &[String],
) -> Result<(Vec<String>, Vec<String>), BuildError> {
    let by_name: HashMap<String, &String> = dep.keys().map(|p| (module_name(p), p)).collect();
    let mut order: Vec<String> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut missing = Vec::new();
    fn visit(
        p: &str,
        dep: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), BuildError> {
        if seen.contains(p) {
            return Ok(());
        }
        if stack.iter().any(|s| s == p) {
            return Err(err(format!("modules.dep has a dependency loop through {p}")));
        }
        stack.push(p.to_string());
        let deps =
            dep.get(p).ok_or_else(|| err(format!("modules.dep names {p} as a dependency but has no line for it")))?;
        for d in deps {
            visit(d, dep, seen, stack, order)?;
        }
        stack.pop();
        seen.insert(p.to_string());
        order.push(p.to_string());
        Ok(())
    }
    for w in wanted {
        match by_name.get(&w.replace('-', "_")) {
            Some(p) => visit(p, dep, &mut seen, &mut Vec::new(), &mut order)?,
            None => missing.push(w.clone()),
        }
    }
    Ok((order, missing))
}

pub use clusterware_shared::cpio::Entry;

/// A newc cpio archive of `entries`.
pub fn cpio(entries: &BTreeMap<String, Entry>) -> Vec<u8> {
    clusterware_shared::cpio::write(entries)
}

/// gzip at the best compression, without a file name or time stamp (so the same archive gives the
/// same bytes).
pub fn gzip(data: &[u8]) -> Vec<u8> {
    clusterware_shared::cpio::gzip(data, 9)
}

/// What to build.
pub struct Spec {
    pub agent: PathBuf,
    pub kernel_version: String,
    /// The directory that holds `lib/modules/<version>` (`/` for this machine's kernel).
    pub modules_root: PathBuf,
    pub modules: Vec<String>,
    /// Whether the names in `modules` were given (missing ones are then an error).
    pub explicit: bool,
}

/// What was built.
#[derive(Debug)]
pub struct Built {
    pub image: Vec<u8>,
    /// Modules in load order (paths relative to the modules directory).
    pub modules: Vec<String>,
    /// Default modules this kernel does not have.
    pub skipped: Vec<String>,
}

fn add_dirs(entries: &mut BTreeMap<String, Entry>, path: &str) {
    let mut cur = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(part);
        entries.entry(cur.clone()).or_insert(Entry::Dir(0o755));
    }
}

/// Builds the initramfs (uncompressed cpio when `compress` is false).
pub fn build(spec: &Spec, compress: bool) -> Result<Built, BuildError> {
    let v = &spec.kernel_version;
    if v.is_empty() || v.contains('/') || v.starts_with('.') {
        return Err(err(format!("{v:?} is not a kernel version")));
    }
    let agent =
        std::fs::read(&spec.agent).map_err(|e| err(format!("cannot read the agent {}: {e}", spec.agent.display())))?;
    if agent.get(..4) != Some(b"\x7fELF") {
        return Err(err(format!("{} is not an ELF program", spec.agent.display())));
    }
    let modules = spec.modules_root.join("lib/modules");
    let mod_dir = modules.join(v);
    if !mod_dir.is_dir() {
        let mut present: Vec<String> = std::fs::read_dir(&modules)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        present.sort();
        let what = match present.len() {
            0 => format!("{} holds no kernel's modules (is --modules-root right?)", modules.display()),
            _ => format!("the kernels there: {} (give one with --kernel-version)", present.join(", ")),
        };
        return Err(err(format!("no modules of kernel {v} in {}; {what}", modules.display())));
    }
    let dep_path = mod_dir.join("modules.dep");
    let dep_text = std::fs::read_to_string(&dep_path).map_err(|e| {
        err(format!(
            "cannot read {}: {e} (for an unpacked kernel package run `depmod -b ROOT {v}` first)",
            dep_path.display()
        ))
    })?;
    let dep = parse_modules_dep(&dep_text)?;
    let (order, missing) = resolve(&dep, &spec.modules)?;
    if spec.explicit && !missing.is_empty() {
        return Err(err(format!("kernel {v} has no module {}", missing.join(", "))));
    }
    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for d in ["dev", "proc", "sys", "run", "tmp", "root", "etc/clusterware", "newroot"] {
        add_dirs(&mut entries, d);
    }
    entries.insert("dev/console".into(), Entry::Char(5, 1));
    entries.insert("dev/null".into(), Entry::Char(1, 3));
    entries.insert("init".into(), Entry::File { data: agent, mode: 0o755 });
    let base = format!("lib/modules/{v}");
    for m in &order {
        let src = mod_dir.join(m);
        let data = std::fs::read(&src).map_err(|e| err(format!("cannot read module {}: {e}", src.display())))?;
        let path = format!("{base}/{m}");
        if let Some((dir, _)) = path.rsplit_once('/') {
            add_dirs(&mut entries, dir);
        }
        entries.insert(path, Entry::File { data, mode: 0o644 });
    }
    let list: String = order.iter().map(|m| format!("/{base}/{m}\n")).collect();
    entries.insert("etc/clusterware/modules".into(), Entry::File { data: list.into_bytes(), mode: 0o644 });
    entries.insert(
        "etc/clusterware/node.conf".into(),
        Entry::File {
            data: b"# written by scyld-mkinitramfs: the agent runs as /init\nphase = booting\n".to_vec(),
            mode: 0o644,
        },
    );
    let raw = cpio(&entries);
    Ok(Built { image: if compress { gzip(&raw) } else { raw }, modules: order, skipped: missing })
}

/// Reads a newc archive back: (path, mode, data). For tests and `--list`.
pub fn read_cpio(b: &[u8]) -> Result<Vec<(String, u32, Vec<u8>)>, BuildError> {
    clusterware_shared::cpio::read(b).map(|v| v.into_iter().map(|r| (r.path, r.mode, r.data)).collect()).map_err(err)
}

/// `Path` helper for callers that print the modules directory.
pub fn modules_dir(root: &Path, version: &str) -> PathBuf {
    root.join("lib/modules").join(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/net/virtio_net.ko: kernel/net/core/failover.ko kernel/drivers/net/net_failover.ko\nkernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\nkernel/net/core/failover.ko:\nkernel/drivers/net/ethernet/intel/e1000/e1000.ko:\n";

    #[test]
    fn dependencies_come_first() {
        let d = parse_modules_dep(DEP).unwrap();
        let (order, missing) = resolve(&d, &["virtio-net".into(), "e1000".into(), "nosuch".into()]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/net/ethernet/intel/e1000/e1000.ko"
            ]
        );
        assert_eq!(missing, ["nosuch"]);
        assert!(parse_modules_dep("../../etc/passwd: x\n").is_err());
        let loop_dep = parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n").unwrap();
        assert!(resolve(&loop_dep, &["a".into()]).is_err());
        let dangling = parse_modules_dep("a.ko: b.ko\n").unwrap();
        assert!(resolve(&dangling, &["a".into()]).is_err());
    }

    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let m = d.path().join("lib/modules/6.1.0-test");
        for f in [
            "kernel/drivers/net/virtio_net.ko",
            "kernel/drivers/net/net_failover.ko",
            "kernel/net/core/failover.ko",
            "kernel/drivers/net/ethernet/intel/e1000/e1000.ko",
        ] {
            std::fs::create_dir_all(m.join(f).parent().unwrap()).unwrap();
            std::fs::write(m.join(f), format!("module {f}")).unwrap();
        }
        std::fs::write(m.join("modules.dep"), DEP).unwrap();
        std::fs::write(d.path().join("agent"), b"\x7fELF agent").unwrap();
        d
    }

    #[test]
    fn builds_the_same_bytes_from_the_same_inputs() {
        let d = tree();
        let spec = Spec {
            agent: d.path().join("agent"),
            kernel_version: "6.1.0-test".into(),
            modules_root: d.path().to_path_buf(),
            modules: vec!["virtio_net".into()],
            explicit: true,
        };
        let a = build(&spec, true).unwrap();
        let b = build(&spec, true).unwrap();
        assert_eq!(a.image, b.image);
        let raw = build(&spec, false).unwrap().image;
        let files = read_cpio(&raw).unwrap();
        let names: Vec<&str> = files.iter().map(|f| f.0.as_str()).collect();
        assert!(names.contains(&"init") && names.contains(&"dev/console"));
        let init = files.iter().find(|f| f.0 == "init").unwrap();
        assert_eq!((init.1 & 0o777, init.2.as_slice()), (0o755, &b"\x7fELF agent"[..]));
        let list = files.iter().find(|f| f.0 == "etc/clusterware/modules").unwrap();
        assert_eq!(
            String::from_utf8(list.2.clone()).unwrap(),
            "/lib/modules/6.1.0-test/kernel/net/core/failover.ko\n/lib/modules/6.1.0-test/kernel/drivers/net/net_failover.ko\n/lib/modules/6.1.0-test/kernel/drivers/net/virtio_net.ko\n"
        );
        // Every directory precedes what it holds.
        for (i, (n, _, _)) in files.iter().enumerate() {
            if let Some((dir, _)) = n.rsplit_once('/') {
                assert!(files[..i].iter().any(|f| f.0 == dir), "{dir} before {n}");
            }
        }
        // A module this kernel lacks is an error when named, skipped by default.
        let bad = Spec { modules: vec!["nosuch".into()], ..spec };
        assert!(build(&bad, true).unwrap_err().0.contains("no module nosuch"));
        let defaults = Spec { explicit: false, modules: vec!["nosuch".into(), "e1000".into()], ..bad };
        let built = build(&defaults, true).unwrap();
        assert_eq!((built.modules.len(), built.skipped.as_slice()), (1, &["nosuch".to_string()][..]));
    }

    #[test]
    fn bad_inputs() {
        let d = tree();
        let mut spec = Spec {
            agent: d.path().join("missing"),
            kernel_version: "6.1.0-test".into(),
            modules_root: d.path().to_path_buf(),
            modules: vec![],
            explicit: false,
        };
        assert!(build(&spec, true).is_err());
        std::fs::write(d.path().join("script"), b"#!/bin/sh\n").unwrap();
        spec.agent = d.path().join("script");
        assert!(build(&spec, true).unwrap_err().0.contains("not an ELF"));
        spec.agent = d.path().join("agent");
        spec.kernel_version = "../x".into();
        assert!(build(&spec, true).is_err());
        // A version that is not there: the error lists the versions that are.
        spec.kernel_version = "6.1.0-other".into();
        let e = build(&spec, true).unwrap_err().0;
        assert!(e.contains("no modules of kernel 6.1.0-other") && e.contains("the kernels there: 6.1.0-test"), "{e}");
        // One that is there without modules.dep: depmod.
        std::fs::create_dir_all(d.path().join("lib/modules/6.1.0-bare")).unwrap();
        spec.kernel_version = "6.1.0-bare".into();
        assert!(build(&spec, true).unwrap_err().0.contains("depmod -b ROOT 6.1.0-bare"));
        assert!(read_cpio(b"garbage").is_err());
    }
}
