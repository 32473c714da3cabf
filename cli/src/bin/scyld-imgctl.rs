//! `scyld-imgctl`: node root images.
//!
//! ```text
//! scyld-imgctl ls [-l] [--json]
//! scyld-imgctl create --name xyzImage --file root.img
//! scyld-imgctl -i xyzImage clone --name xyzImage2
//! scyld-imgctl -i xyzImage rm [--force]
//! ```

use clap::Parser;
use clusterware_cli::args::imgctl::{Args, Cmd, Selected};
use clusterware_cli::{CliResult, Client, file_arg, human_bytes, print_json, run, selected_once, usage};
use clusterware_shared::api::{CloneRequest, CreateImage, FileList};
use clusterware_shared::ids::shown;
use clusterware_shared::outln;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = Args::parse();
    run("scyld-imgctl", || {
        if let Cmd::Completion(c) = &args.cmd {
            return c.print::<Args>();
        }
        let c = Client::new(&args.conn)?;
        let selected = |after: &Selected| {
            selected_once(args.sel.ids.as_ref(), after.ids.as_ref())?
                .ok_or_else(|| usage("select the image with -i NAME (scyld-imgctl ls lists them)"))
        };
        match &args.cmd {
            Cmd::Create { .. } | Cmd::Completion(_) if args.sel.ids.is_some() => {
                Err(usage("create takes no -i (it names the new image with --name)"))
            }
            Cmd::Ls { sel, long } => ls(&args, &c, selected_once(args.sel.ids.as_ref(), sel.ids.as_ref())?, *long),
            Cmd::Create { name, file, extra, description } => {
                let rootfs = file_arg(&c, file, "rootfs")?;
                let extra_files = extra.iter().map(|e| file_arg(&c, e, "other")).collect::<CliResult<Vec<_>>>()?;
                let img = c.create_image(&CreateImage {
                    name: name.clone(),
                    rootfs,
                    extra_files,
                    description: description.clone(),
                })?;
                if args.json {
                    print_json(&img)
                } else {
                    outln!("created image {}", img.name)
                }
                Ok(())
            }
            Cmd::Clone { sel, name } => {
                let img = c.clone_image(&selected(sel)?, &CloneRequest { name: name.clone() })?;
                if args.json {
                    print_json(&img)
                } else {
                    outln!("created image {}", img.name)
                }
                Ok(())
            }
            Cmd::Completion(_) => unreachable!("answered above, without a head"),
            Cmd::Rm { sel, force } => {
                let img = c.delete_image(&selected(sel)?, *force)?;
                if args.json {
                    print_json(&img)
                } else {
                    outln!("deleted image {}", img.name)
                }
                Ok(())
            }
        }
    })
}

fn ls(args: &Args, c: &Client, name: Option<String>, long: bool) -> CliResult<()> {
    let mut list = c.images()?;
    if let Some(name) = &name {
        list.images.retain(|i| &i.name == name);
        if list.images.is_empty() {
            return Err(clusterware_cli::fail(format!("no image named {name}")));
        }
    }
    if args.json {
        print_json(&list);
        return Ok(());
    }
    let files = if long { c.files()? } else { FileList::default() };
    for i in &list.images {
        outln!("{}", i.name);
        if long {
            if !i.description.is_empty() {
                outln!("  description: {}", shown(&i.description));
            }
            for (what, id) in std::iter::once(("rootfs", &i.rootfs)).chain(i.extra_files.iter().map(|f| ("extra", f))) {
                match files.files.iter().find(|f| &f.id == id) {
                    Some(f) => {
                        outln!("  {what}: {} id {} {} sha256 {}", shown(&f.name), f.id, human_bytes(f.size), f.sha256)
                    }
                    None => outln!("  {what}: {id} (missing record)"),
                }
            }
        }
    }
    Ok(())
}

clusterware_cli::clap_consistency_test!(Args);
