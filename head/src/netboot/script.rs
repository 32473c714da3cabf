//! The iPXE boot script a node gets from the head it network-boots from: its boot config's
//! kernel and initramfs from this head, the kernel command line with what the agent needs
//! (parent, head list, root image and its checksum), or, when the node cannot boot yet, a script
//! that says why and asks again in a minute.

use crate::bootcfg::{self, BootError};
use crate::core::db::Database;
use crate::core::error::RecordError;
use crate::core::schema::HeadRecord;
use crate::core::view::ClusterView;
use clusterware_shared::api::{BootConfig, FileRecord, Node, path};
use clusterware_shared::ids::MacAddr;

/// What a node's script is.
#[derive(Debug, PartialEq, Eq)]
pub enum Script {
    /// The node boots: the script's text.
    Boot(String),
    /// The node cannot boot yet, and why.
    Retry(String),
}

/// What a node boots with, once its boot config and image are found.
#[derive(Debug)]
pub struct Plan {
    pub cfg: BootConfig,
    /// The image's root file system, when the config has an image.
    pub rootfs: Option<FileRecord>,
    /// The heads the node may use (`cw.heads`).
    pub heads: Vec<String>,
}

/// What `node` (which asked with `mac`) boots: its `_boot_config`, else the cluster's default,
/// and the config's image; `Err` from the inner result says why it cannot boot yet.
pub async fn plan(
    db: &Database,
    view: &ClusterView,
    node: &Node,
    mac: &MacAddr,
) -> Result<Result<Plan, String>, BootError> {
    let name = match node.attributes.get("_boot_config") {
        Some(n) => n.clone(),
        None => match bootcfg::default_config(db).await? {
            Some(d) => d,
            None => {
                return Ok(Err(format!(
                    "{} has no _boot_config and the cluster has no default boot config",
                    node.name
                )));
            }
        },
    };
    let cfg = match bootcfg::get_config(db, &name).await {
        Ok((c, _)) => c,
        Err(BootError::Record(RecordError::NotFound(_))) => {
            return Ok(Err(format!("{}'s boot config {name:?} does not exist", node.name)));
        }
        Err(e) => return Err(e),
    };
    let mut rootfs = None;
    if let Some(img) = &cfg.image {
        match bootcfg::get_image(db, img).await {
            Ok(image) => rootfs = bootcfg::file_record(db, &image.rootfs).await?,
            Err(BootError::Record(RecordError::NotFound(_))) => {
                return Ok(Err(format!("boot config {name:?} names image {img:?}, which does not exist")));
            }
            Err(e) => return Err(e),
        }
    }
    let heads: Vec<String> = view.heads_for(mac).into_iter().map(|h| h.url).collect();
    Ok(Ok(Plan { cfg, rootfs, heads }))
}

/// The script for `node` (which asked with `mac`): its `_boot_config`, else the cluster's
/// default, and the config's image.
/// `enroll`: the one-time token the node trades for its certificate (`cw.enroll=`).
pub async fn for_node(
    db: &Database,
    view: &ClusterView,
    node: &Node,
    mac: &MacAddr,
    enroll: Option<&str>,
) -> Result<Script, BootError> {
    Ok(match plan(db, view, node, mac).await? {
        Ok(p) => Script::Boot(boot(&view.me, node, mac, &p.cfg, p.rootfs.as_ref(), &p.heads, enroll)),
        Err(why) => Script::Retry(why),
    })
}

/// The kernel command line: the config's, then what the agent needs (image, parent, heads, MAC,
/// enrollment token). Split on white space: a command line never carries a line break.
pub fn kernel_args(
    head: &HeadRecord,
    mac: &MacAddr,
    cfg: &BootConfig,
    rootfs: Option<&FileRecord>,
    heads: &[String],
    enroll: Option<&str>,
) -> Vec<String> {
    let mut args: Vec<String> = cfg.cmdline.split_whitespace().map(str::to_string).collect();
    if let Some(rec) = rootfs {
        args.push(format!("cw.image={}", rec.id));
        args.push(format!("cw.image_size={}", rec.size));
        args.push(format!("cw.image_sha256={}", rec.sha256));
    }
    args.push(format!("cw.parent={}", head.api_url));
    args.push(format!("cw.heads={}", heads.join(",")));
    args.push(format!("cw.mac={mac}"));
    if let Some(t) = enroll {
        args.push(format!("cw.enroll={t}"));
    }
    args
}

/// The script that boots `node` with `cfg` from `head`.
pub fn boot(
    head: &HeadRecord,
    node: &Node,
    mac: &MacAddr,
    cfg: &BootConfig,
    rootfs: Option<&FileRecord>,
    heads: &[String],
    enroll: Option<&str>,
) -> String {
    let base = head.boot_base();
    let args = kernel_args(head, mac, cfg, rootfs, heads, enroll);
    let kernel = format!("{base}{}", path::full(&path::file_content(&cfg.kernel, false)));
    let initrd = format!("{base}{}", path::full(&path::file_content(&cfg.initramfs, false)));
    // The cluster CA, for the agent to check heads with, joins the initramfs as a second archive.
    let ca = format!("{base}{}", path::full(path::BOOT_CA));
    format!(
        "#!ipxe\necho ClusterWare: booting {node} ({mac}) with boot config {name} from {head}\n:retry\nkernel {kernel} initrd=initramfs initrd=ca.cpio {args} || goto failed\ninitrd --name initramfs {initrd} || goto failed\ninitrd --name ca.cpio {ca} || goto failed\nboot || goto failed\n:failed\necho ClusterWare: boot failed; trying again in 10 s\nsleep 10\ngoto retry\n",
        node = node.name,
        name = cfg.name,
        head = head.name,
        args = args.join(" "),
    )
}

/// A script that says why the node cannot boot yet and asks again in a minute; the reason is
/// stripped of control characters and of `$` (iPXE would expand settings in it).
pub fn retry(base: &str, mac: &MacAddr, why: &str) -> String {
    let why: String = why.chars().filter(|c| !c.is_control() && *c != '$').collect();
    let again = path::full(&path::boot_script(&mac.to_string()));
    format!(
        "#!ipxe\necho ClusterWare: {mac} cannot boot yet: {why}\necho Asking again in 60 s\nsleep 60\nchain {base}{again}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;
    use crate::core::schema;
    use clusterware_shared::api::CreateImage;

    const MAC: &str = "52:54:00:00:00:01";

    fn node(attrs: &[(&str, &str)]) -> Node {
        Node {
            uid: "u".into(),
            index: 0,
            name: "n0".into(),
            macs: vec![MAC.parse().unwrap()],
            ip: "10.0.0.5".parse().unwrap(),
            attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            created: 0,
        }
    }

    async fn file(db: &Database, n: u8) -> FileRecord {
        let rec = FileRecord {
            id: format!("{n:032x}"),
            name: format!("f{n}"),
            size: 100 + n as u64,
            sha256: format!("{n:064x}"),
            kind: "other".into(),
            created: 0,
        };
        db.put(&schema::file(&rec.id), serde_json::to_vec(&rec).unwrap()).await.unwrap();
        rec
    }

    #[tokio::test]
    async fn a_node_boots_its_config_or_is_told_why_not() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let h1 = HeadRecord::for_test("h1", 1);
        let view = ClusterView::fixed(h1.clone(), vec![h1.clone(), HeadRecord::for_test("h2", 2)], &["h1", "h2"]);
        let mac: MacAddr = MAC.parse().unwrap();

        let why = |s: Script| match s {
            Script::Retry(w) => w,
            Script::Boot(b) => panic!("booted: {b}"),
        };
        let s = for_node(&db, &view, &node(&[]), &mac, Some("cwe_t")).await.unwrap();
        assert!(why(s).contains("no _boot_config and the cluster has no default"));
        let s = for_node(&db, &view, &node(&[("_boot_config", "c9")]), &mac, None).await.unwrap();
        assert!(why(s).contains("boot config \"c9\" does not exist"));

        let (k, i, r) = (file(&db, 1).await, file(&db, 2).await, file(&db, 3).await);
        let img =
            CreateImage { name: "img".into(), rootfs: r.id.clone(), extra_files: vec![], description: String::new() };
        bootcfg::create_image(&db, img).await.unwrap();
        // Written directly: create_config refuses control characters; a record stored before
        // that check (or loaded by managedb) must still give one kernel line.
        let cfg = BootConfig {
            name: "c1".into(),
            description: String::new(),
            kernel: k.id.clone(),
            initramfs: i.id.clone(),
            image: Some("img".into()),
            cmdline: "console=ttyS0\nquiet".into(),
            secure_boot: false,
            created: 0,
        };
        db.put(&schema::bootconfig("c1"), serde_json::to_vec(&cfg).unwrap()).await.unwrap();
        bootcfg::set_default(&db, Some("c1")).await.unwrap();
        let Script::Boot(text) = for_node(&db, &view, &node(&[]), &mac, Some("cwe_t")).await.unwrap() else {
            panic!("no boot")
        };
        let kernel = text.lines().find(|l| l.starts_with("kernel ")).unwrap();
        assert!(
            kernel.starts_with(&format!("kernel http://10.0.0.1:80/api/v1/files/{}/content initrd=initramfs", k.id))
        );
        for arg in [
            "console=ttyS0 quiet".to_string(),
            format!("cw.image={} cw.image_size={} cw.image_sha256={}", r.id, r.size, r.sha256),
            "cw.parent=http://10.0.0.1:80".into(),
            "cw.heads=http://10.0.0.1:80,http://10.0.0.2:80".into(),
            format!("cw.mac={MAC} cw.enroll=cwe_t"),
        ] {
            assert!(kernel.contains(&arg), "{arg:?} missing from {kernel}");
        }
        assert!(text.contains(&format!("initrd --name initramfs http://10.0.0.1:80/api/v1/files/{}/content", i.id)));
        assert_eq!(text.lines().filter(|l| l.starts_with("kernel ")).count(), 1, "the command line stays on one line");
    }

    #[test]
    fn a_reason_cannot_inject_into_the_script() {
        let mac: MacAddr = MAC.parse().unwrap();
        let t = retry("http://10.0.0.1:80", &mac, "bad\nshell\r${root}");
        assert_eq!(t.lines().count(), 5, "{t}");
        assert!(t.contains("cannot boot yet: badshell{root}"));
        assert!(t.ends_with(&format!("chain http://10.0.0.1:80/api/v1/boot/script?mac={MAC}\n")));
    }
}
