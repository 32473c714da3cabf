//! `scyld-bootctl`: boot configurations, and their export and import between clusters.
//!
//! ```text
//! scyld-bootctl ls [-l] [--json]
//! scyld-bootctl create --name xyzBoot --kernel vmlinuz --initramfs initrd.img --image xyzImage --cmdline "console=ttyS0"
//! scyld-bootctl -i xyzBoot ls -l
//! scyld-bootctl -i xyzBoot update --cmdline "console=ttyS0 quiet"
//! scyld-bootctl -i xyzBoot update --secure-boot yes
//! scyld-bootctl -i xyzBoot clone --name xyzBoot2
//! scyld-bootctl -i xyzBoot rm [--force]
//! scyld-bootctl -i xyzBoot export [-o FILE]          # writes xyzBoot.export
//! scyld-bootctl import xyzBoot.export [--image NEW] [--boot-config NEW] [--no-recurse] [--dry-run]
//! scyld-bootctl default [NAME | --clear]
//! ```

use clap::Parser;
use clusterware_cli::args::bootctl::{Args, Cmd, Selected};
use clusterware_cli::{
    CliResult, Client, Progress, fail, file_arg, human_bytes, node_ranges, print_json, run, selected_once, usage,
};
use clusterware_shared::api::{
    BootConfig, CloneRequest, CreateBootConfig, DefaultBootConfig, FileList, ImportOptions, UpdateBootConfig,
};
use clusterware_shared::fsutil::WriterThread;
use clusterware_shared::ids::shown;
use clusterware_shared::outln;
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-bootctl", || {
        if let Cmd::Completion(c) = &args.cmd {
            return c.print::<Args>();
        }
        let c = Client::new(&args.conn)?;
        let selected = |after: &Selected| {
            selected_once(args.sel.ids.as_ref(), after.ids.as_ref())?
                .ok_or_else(|| usage("select the boot config with -i NAME (scyld-bootctl ls lists them)"))
        };
        if args.sel.ids.is_some()
            && matches!(args.cmd, Cmd::Create { .. } | Cmd::Import { .. } | Cmd::Default { .. } | Cmd::Completion(_))
        {
            return Err(usage("this command takes no -i (create and import name the boot config with their options)"));
        }
        let done = |what: &str, cfg: &BootConfig| {
            if args.json { print_json(cfg) } else { outln!("{what} boot config {}", cfg.name) }
        };
        match &args.cmd {
            Cmd::Ls { sel, long } => ls(&args, &c, selected_once(args.sel.ids.as_ref(), sel.ids.as_ref())?, *long),
            Cmd::Create { name, kernel, initramfs, image, cmdline, description, secure_boot } => {
                let req = CreateBootConfig {
                    name: name.clone(),
                    kernel: file_arg(&c, kernel, "kernel")?,
                    initramfs: file_arg(&c, initramfs, "initramfs")?,
                    image: image.clone(),
                    cmdline: cmdline.clone(),
                    description: description.clone(),
                    secure_boot: *secure_boot,
                };
                done("created", &c.create_boot_config(&req)?);
                Ok(())
            }
            Cmd::Update { sel, kernel, initramfs, image, cmdline, description, secure_boot } => {
                let req = UpdateBootConfig {
                    kernel: kernel.as_deref().map(|k| file_arg(&c, k, "kernel")).transpose()?,
                    initramfs: initramfs.as_deref().map(|i| file_arg(&c, i, "initramfs")).transpose()?,
                    image: image.clone(),
                    cmdline: cmdline.clone(),
                    description: description.clone(),
                    secure_boot: *secure_boot,
                };
                if req.kernel.is_none()
                    && req.initramfs.is_none()
                    && req.image.is_none()
                    && req.cmdline.is_none()
                    && req.description.is_none()
                    && req.secure_boot.is_none()
                {
                    return Err(usage(
                        "nothing to update (give --kernel, --initramfs, --image, --cmdline, --description or --secure-boot)",
                    ));
                }
                done("updated", &c.update_boot_config(&selected(sel)?, &req)?);
                Ok(())
            }
            Cmd::Clone { sel, name } => {
                done("created", &c.clone_boot_config(&selected(sel)?, &CloneRequest { name: name.clone() })?);
                Ok(())
            }
            Cmd::Rm { sel, force } => {
                done("deleted", &c.delete_boot_config(&selected(sel)?, *force)?);
                Ok(())
            }
            Cmd::Completion(_) => unreachable!("answered above, without a head"),
            Cmd::Export { sel, output } => export(&args, &c, &selected(sel)?, output.clone()),
            Cmd::Import { file, image, boot_config, no_recurse, dry_run } => {
                import(&args, &c, file, image.as_deref(), boot_config.as_deref(), *no_recurse, *dry_run)
            }
            Cmd::Default { name, clear } => {
                if name.is_some() || *clear {
                    let r = c.set_default_boot_config(&DefaultBootConfig { name: name.clone() })?;
                    if args.json {
                        print_json(&r)
                    } else {
                        match &r.name {
                            Some(n) => outln!("default boot config: {n}"),
                            None => outln!("no default boot config"),
                        }
                    }
                } else {
                    let l = c.boot_configs()?;
                    if args.json {
                        print_json(&DefaultBootConfig { name: l.default })
                    } else {
                        outln!("{}", l.default.unwrap_or_else(|| "(none)".into()));
                    }
                }
                Ok(())
            }
        }
    })
}

fn ls(args: &Args, c: &Client, selected: Option<String>, long: bool) -> CliResult<()> {
    if let Some(name) = &selected {
        let d = c.boot_config(name)?;
        if args.json {
            print_json(&d);
            return Ok(());
        }
        let b = &d.boot_config;
        outln!("{}{}", b.name, if d.is_default { " (default)" } else { "" });
        if long {
            if !b.description.is_empty() {
                outln!("  description: {}", shown(&b.description));
            }
            outln!("  image: {}", b.image.as_deref().unwrap_or("(none)"));
            outln!("  cmdline: {}", shown(&b.cmdline));
            outln!("  secure boot: {}", if b.secure_boot { "yes" } else { "no" });
            let mut ids = vec![("kernel", &b.kernel), ("initramfs", &b.initramfs)];
            if let Some(img) = &d.image {
                ids.push(("rootfs", &img.rootfs));
                ids.extend(img.extra_files.iter().map(|f| ("extra", f)));
            }
            for (what, id) in ids {
                match d.files.iter().find(|f| &f.id == id) {
                    Some(f) => outln!(
                        "  {what}: {} id {} size {} ({}) sha256 {}",
                        shown(&f.name),
                        f.id,
                        f.size,
                        human_bytes(f.size),
                        f.sha256
                    ),
                    None => outln!("  {what}: {id} (missing record)"),
                }
            }
            let nodes = match d.nodes.len() {
                0 => "(none)".to_string(),
                n => format!("{n} ({})", node_ranges(d.nodes.iter().map(String::as_str))),
            };
            outln!("  nodes: {nodes}");
        }
        return Ok(());
    }
    let list = c.boot_configs()?;
    if args.json {
        print_json(&list);
        return Ok(());
    }
    let files = if long { c.files()? } else { FileList::default() };
    let fname = |id: &str| {
        files.files.iter().find(|f| f.id == id).map_or(id.to_string(), |f| format!("{} ({id})", shown(&f.name)))
    };
    for b in &list.boot_configs {
        let default = if list.default.as_deref() == Some(b.name.as_str()) { " (default)" } else { "" };
        outln!("{}{default}", b.name);
        if long {
            outln!("  image: {}", b.image.as_deref().unwrap_or("(none)"));
            outln!("  kernel: {}", fname(&b.kernel));
            outln!("  initramfs: {}", fname(&b.initramfs));
            outln!("  cmdline: {}", shown(&b.cmdline));
            outln!("  secure boot: {}", if b.secure_boot { "yes" } else { "no" });
        }
    }
    Ok(())
}

fn export(args: &Args, c: &Client, name: &str, output: Option<PathBuf>) -> CliResult<()> {
    let out = output.unwrap_or_else(|| PathBuf::from(format!("{name}.export")));
    let tmp = PathBuf::from(format!("{}.part", out.display()));
    let cannot = |e: std::io::Error| fail(format!("cannot write {}: {e}", tmp.display()));
    let f = std::fs::File::create(&tmp).map_err(cannot)?;
    let mut progress = Progress::new((), name, 0);
    // Written (and fsynced) by a thread of its own while this one receives.
    let mut w = WriterThread::new(f).map_err(cannot)?;
    let r = c
        .export_boot_config(name, &mut w, &mut |done, total| progress.update(done, total))
        .map_err(|e| match e {
            clusterware_client::Error::Local { source, .. } => cannot(source),
            e => e.into(),
        })
        .and_then(|n| {
            progress.finish();
            w.finish().map_err(cannot)?;
            std::fs::rename(&tmp, &out).map_err(|e| fail(format!("cannot write {}: {e}", out.display())))?;
            Ok(n)
        });
    match r {
        Ok(n) => {
            if args.json {
                print_json(&serde_json::json!({"boot_config": name, "file": out, "bytes": n}));
            } else {
                outln!("exported {name} to {} ({})", out.display(), human_bytes(n));
            }
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn import(
    args: &Args,
    c: &Client,
    file: &PathBuf,
    image: Option<&str>,
    boot_config: Option<&str>,
    no_recurse: bool,
    dry_run: bool,
) -> CliResult<()> {
    if no_recurse && image.is_some() {
        return Err(usage("--image and --no-recurse exclude each other"));
    }
    let f = std::fs::File::open(file).map_err(|e| {
        if e.kind() != std::io::ErrorKind::NotFound {
            return fail(format!("cannot read {}: {e}", file.display()));
        }
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut present: Vec<String> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| n.ends_with(".export"))
            .collect();
        present.sort();
        let hint = match present.len() {
            0 => {
                format!("there is no NAME.export file in {}; `scyld-bootctl -i NAME export` writes one", dir.display())
            }
            n if n <= 10 => format!("export files in {}: {}", dir.display(), present.join(", ")),
            n => format!("{n} export files in {}, e.g. {}", dir.display(), present[..10].join(", ")),
        };
        fail(format!("{}: no such file ({hint})", file.display()))
    })?;
    let len = f.metadata().map_err(|e| fail(format!("cannot read {}: {e}", file.display())))?.len();
    let o = ImportOptions {
        image: image.map(str::to_string),
        boot_config: boot_config.map(str::to_string),
        no_recurse,
        dry_run,
    };
    let label = file.file_name().map_or("import".into(), |n| n.to_string_lossy().to_string());
    let mut reader = Progress::new(std::io::BufReader::with_capacity(1 << 20, f), &label, len);
    let report = c.import(&o, len, &mut reader).map_err(|e| match e {
        clusterware_client::Error::Local { source, .. } => fail(format!("cannot read {}: {source}", file.display())),
        e => e.into(),
    })?;
    reader.finish();
    if args.json {
        print_json(&report);
        return Ok(());
    }
    let verb = if report.dry_run { "would import" } else { "imported" };
    let renamed =
        |now: &str, was: &str| if now == was { now.to_string() } else { format!("{now} (renamed from {was})") };
    outln!("{verb} boot config {}", renamed(&report.boot_config, &report.boot_config_was));
    match (&report.image, &report.image_was) {
        (Some(i), Some(w)) => outln!("{verb} image {}", renamed(i, w)),
        (None, Some(w)) => outln!("image {w} not imported (--no-recurse)"),
        _ => {}
    }
    for f in &report.files {
        let what = match (f.action.as_str(), report.dry_run) {
            ("reused", _) => "reuse existing",
            (_, true) => "add",
            _ => "added",
        };
        outln!("  {what} {} {} ({}, {}) as {}", f.kind, shown(&f.name), human_bytes(f.size), &f.sha256[..16], f.id);
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);
