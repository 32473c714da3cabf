//! Images and boot configurations in the cluster database (`images/<name>`,
//! `bootconfigs/<name>`, and `settings/default_boot_config` for nodes without `_boot_config`).
//!
//! Every reference is checked inside the writing transaction (the files and image named must
//! exist), deleting something still in use is refused unless forced, and deleting removes the
//! underlying files that nothing else references, through the storage deletion list.

pub mod routes;

pub mod transfer;

use crate::core::db::{Compare, Database, DbError, Txn, TxnOp};
use crate::core::error::RecordError;
use crate::core::schema;
use crate::core::schema::{BOOTCONFIGS, DEFAULT_BOOT_CONFIG, IMAGES};
use crate::core::unix_now as now;
use crate::registry;
use crate::storage::{Storage, StorageError};
use clusterware_shared::api::{
    BootConfig, BootConfigDetail, CreateBootConfig, CreateImage, FileRecord, Image, UpdateBootConfig, is_file_id,
    valid_object_name,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::HashSet;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl From<DbError> for BootError {
    fn from(e: DbError) -> BootError {
        BootError::Record(RecordError::Db(e))
    }
}

impl crate::core::http::HasKind for BootError {
    fn kind(&self) -> clusterware_shared::api::ErrorKind {
        match self {
            BootError::Record(e) => e.kind(),
            BootError::Storage(e) => e.kind(),
        }
    }

    fn degraded(&self) -> bool {
        match self {
            BootError::Record(e) => e.degraded(),
            BootError::Storage(e) => e.degraded(),
        }
    }
}

pub type Result<T, E = BootError> = std::result::Result<T, E>;

pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("records serialise")
}

fn decode<T: DeserializeOwned>(key: &str, v: &[u8]) -> Result<T> {
    serde_json::from_slice(v)
        .map_err(|e| BootError::from(RecordError::Corrupt { key: key.to_string(), reason: e.to_string() }))
}

async fn get<T: DeserializeOwned>(db: &Database, key: &str) -> Result<Option<(T, i64)>> {
    match db.get(key).await? {
        Some(kv) => Ok(Some((decode(key, &kv.value)?, kv.mod_revision))),
        None => Ok(None),
    }
}

async fn all<T: DeserializeOwned>(db: &Database, prefix: &str) -> Result<Vec<T>> {
    let (kvs, _) = db.range(prefix).await?;
    kvs.iter().map(|kv| decode(&kv.key, &kv.value)).collect()
}

fn check_name(what: &str, name: &str) -> Result<()> {
    if valid_object_name(name) {
        Ok(())
    } else {
        Err(BootError::from(RecordError::Invalid(format!(
            "{what} name {name:?} is invalid (1-128 letters, digits, '-', '_' or '.', starting with a letter or digit)"
        ))))
    }
}

/// Refuses text with a control character (`ids::check_text`), naming the field.
fn check_text(field: &str, value: &str) -> Result<()> {
    clusterware_shared::ids::check_text(field, value).map_err(|e| BootError::from(RecordError::Invalid(e.to_string())))
}

/// Checks that every id names an existing file; returns the compares that keep it so.
async fn files_exist(db: &Database, ids: &[&str]) -> Result<Vec<Compare>> {
    let mut out = Vec::new();
    for id in ids {
        if !is_file_id(id) || db.get(&schema::file(&id)).await?.is_none() {
            return Err(BootError::from(RecordError::NotFound(format!(
                "no file with id {id} (upload it with scyld-clusterctl files upload)"
            ))));
        }
        out.push(Compare::present(schema::file(&id)));
    }
    Ok(out)
}

pub async fn list_images(db: &Database) -> Result<Vec<Image>> {
    all(db, IMAGES).await
}

pub async fn get_image(db: &Database, name: &str) -> Result<Image> {
    get::<Image>(db, &schema::image(&name))
        .await?
        .map(|(i, _)| i)
        .ok_or_else(|| BootError::from(RecordError::NotFound(format!("no image named {name}"))))
}

pub async fn create_image(db: &Database, req: CreateImage) -> Result<Image> {
    check_name("image", &req.name)?;
    check_text("the image description", &req.description)?;
    let mut ids = vec![req.rootfs.as_str()];
    ids.extend(req.extra_files.iter().map(String::as_str));
    let mut cmp = files_exist(db, &ids).await?;
    let key = schema::image(&req.name);
    cmp.push(Compare::absent(key.clone()));
    let img = Image {
        name: req.name,
        description: req.description,
        rootfs: req.rootfs,
        extra_files: req.extra_files,
        created: now(),
    };
    let conflict = || format!("image {} already exists (or one of its files was just deleted)", img.name);
    put_new(db, cmp, key, &img, conflict).await?;
    Ok(img)
}

/// Writes `value` under `key` when every compare holds (`key` absent among them); else a
/// conflict with `conflict()`'s message.
async fn put_new<T: Serialize>(
    db: &Database,
    cmp: Vec<Compare>,
    key: String,
    value: &T,
    conflict: impl FnOnce() -> String,
) -> Result<()> {
    if db.txn(Txn::new().when(cmp).and_then([TxnOp::put(key, encode(value))])).await?.succeeded {
        Ok(())
    } else {
        Err(RecordError::Conflict(conflict()).into())
    }
}

pub async fn clone_image(db: &Database, from: &str, to: &str) -> Result<Image> {
    let src = get_image(db, from).await?;
    create_image(
        db,
        CreateImage {
            name: to.to_string(),
            rootfs: src.rootfs,
            extra_files: src.extra_files,
            description: src.description,
        },
    )
    .await
}

pub async fn list_configs(db: &Database) -> Result<(Vec<BootConfig>, Option<String>)> {
    let default = default_config(db).await?;
    Ok((all(db, BOOTCONFIGS).await?, default))
}

/// The cluster's default boot config, when one is set.
pub async fn default_config(db: &Database) -> Result<Option<String>> {
    Ok(db.get(DEFAULT_BOOT_CONFIG).await?.map(|kv| String::from_utf8_lossy(&kv.value).to_string()))
}

pub async fn get_config(db: &Database, name: &str) -> Result<(BootConfig, i64)> {
    get::<BootConfig>(db, &schema::bootconfig(&name))
        .await?
        .ok_or_else(|| BootError::from(RecordError::NotFound(format!("no boot config named {name}"))))
}

async fn config_refs(db: &Database, c: &BootConfig) -> Result<Vec<Compare>> {
    let mut cmp = files_exist(db, &[&c.kernel, &c.initramfs]).await?;
    if let Some(img) = &c.image {
        get_image(db, img).await?;
        cmp.push(Compare::present(schema::image(&img)));
    }
    Ok(cmp)
}

pub async fn create_config(db: &Database, req: CreateBootConfig) -> Result<BootConfig> {
    check_name("boot config", &req.name)?;
    check_text("the boot config description", &req.description)?;
    check_text("the kernel command line", &req.cmdline)?;
    let c = BootConfig {
        name: req.name,
        description: req.description,
        kernel: req.kernel,
        initramfs: req.initramfs,
        image: req.image.filter(|i| !i.is_empty()),
        cmdline: req.cmdline,
        secure_boot: req.secure_boot,
        created: now(),
    };
    let mut cmp = config_refs(db, &c).await?;
    let key = schema::bootconfig(&c.name);
    cmp.push(Compare::absent(key.clone()));
    let conflict = || format!("boot config {} already exists (or what it names was just deleted)", c.name);
    put_new(db, cmp, key, &c, conflict).await?;
    Ok(c)
}

pub async fn clone_config(db: &Database, from: &str, to: &str) -> Result<BootConfig> {
    let (c, _) = get_config(db, from).await?;
    create_config(
        db,
        CreateBootConfig {
            name: to.to_string(),
            kernel: c.kernel,
            initramfs: c.initramfs,
            image: c.image,
            cmdline: c.cmdline,
            description: c.description,
            secure_boot: c.secure_boot,
        },
    )
    .await
}

pub async fn update_config(db: &Database, name: &str, u: UpdateBootConfig) -> Result<BootConfig> {
    check_text("the kernel command line", u.cmdline.as_deref().unwrap_or_default())?;
    check_text("the boot config description", u.description.as_deref().unwrap_or_default())?;
    let (mut c, rev) = get_config(db, name).await?;
    if let Some(k) = u.kernel {
        c.kernel = k;
    }
    if let Some(i) = u.initramfs {
        c.initramfs = i;
    }
    if let Some(img) = u.image {
        c.image = Some(img).filter(|i| !i.is_empty());
    }
    if let Some(cl) = u.cmdline {
        c.cmdline = cl;
    }
    if let Some(d) = u.description {
        c.description = d;
    }
    if let Some(sb) = u.secure_boot {
        c.secure_boot = sb;
    }
    let mut cmp = config_refs(db, &c).await?;
    let key = schema::bootconfig(&name);
    cmp.push(Compare::unchanged(key.clone(), rev));
    if !db.txn(Txn::new().when(cmp).and_then([TxnOp::put(key, encode(&c))])).await?.succeeded {
        return Err(BootError::from(RecordError::Conflict(format!("boot config {name} changed meanwhile; try again"))));
    }
    Ok(c)
}

pub async fn set_default(db: &Database, name: Option<&str>) -> Result<()> {
    match name {
        Some(n) => {
            let key = schema::bootconfig(&n);
            let r = db
                .txn(Txn::new().when([Compare::present(key)]).and_then([TxnOp::put(DEFAULT_BOOT_CONFIG, n.as_bytes())]))
                .await?;
            if !r.succeeded {
                return Err(BootError::from(RecordError::NotFound(format!("no boot config named {n}"))));
            }
        }
        None => {
            db.delete(DEFAULT_BOOT_CONFIG).await?;
        }
    }
    Ok(())
}

/// Every file id an image or boot config references.
async fn referenced_files(db: &Database) -> Result<HashSet<String>> {
    let mut used = HashSet::new();
    for i in list_images(db).await? {
        used.insert(i.rootfs);
        used.extend(i.extra_files);
    }
    for c in list_configs(db).await?.0 {
        used.insert(c.kernel);
        used.insert(c.initramfs);
    }
    Ok(used)
}

/// The images and boot configs that reference a file, as `image NAME` / `boot config NAME`.
pub async fn users_of_file(db: &Database, id: &str) -> Result<Vec<String>> {
    let mut users = Vec::new();
    for i in list_images(db).await? {
        if i.rootfs == id || i.extra_files.iter().any(|f| f == id) {
            users.push(format!("image {}", i.name));
        }
    }
    for c in list_configs(db).await?.0 {
        if c.kernel == id || c.initramfs == id {
            users.push(format!("boot config {}", c.name));
        }
    }
    Ok(users)
}

/// Deletes the files among `ids` that nothing references any more.
async fn drop_unreferenced(db: &Database, storage: &Arc<Storage>, ids: Vec<String>) -> Result<Vec<String>> {
    let used = referenced_files(db).await?;
    let mut gone = Vec::new();
    for id in ids {
        if used.contains(&id) || gone.contains(&id) {
            continue;
        }
        match storage.delete(&id).await {
            Ok(_) | Err(StorageError::NotFound(_)) => gone.push(id),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(gone)
}

pub async fn delete_image(db: &Database, storage: &Arc<Storage>, name: &str, force: bool) -> Result<Image> {
    let key = schema::image(&name);
    let (img, rev) = get::<Image>(db, &key)
        .await?
        .ok_or_else(|| BootError::from(RecordError::NotFound(format!("no image named {name}"))))?;
    let users: Vec<String> =
        list_configs(db).await?.0.into_iter().filter(|c| c.image.as_deref() == Some(name)).map(|c| c.name).collect();
    if !users.is_empty() && !force {
        return Err(BootError::from(RecordError::Conflict(format!(
            "image {name} is used by boot config {}; change those first, or delete with --force",
            users.join(", ")
        ))));
    }
    if !db.txn(Txn::new().when([Compare::unchanged(key.clone(), rev)]).and_then([TxnOp::delete(key)])).await?.succeeded
    {
        return Err(BootError::from(RecordError::Conflict(format!("image {name} changed meanwhile; try again"))));
    }
    let mut ids = vec![img.rootfs.clone()];
    ids.extend(img.extra_files.clone());
    let gone = drop_unreferenced(db, storage, ids).await?;
    tracing::info!(image = %name, files_deleted = %crate::core::listed(&gone), forced = force, "image deleted");
    Ok(img)
}

pub async fn delete_config(db: &Database, storage: &Arc<Storage>, name: &str, force: bool) -> Result<BootConfig> {
    let (c, rev) = get_config(db, name).await?;
    let nodes = nodes_using(db, name).await?;
    let (_, default) = list_configs(db).await?;
    let is_default = default.as_deref() == Some(name);
    if (!nodes.is_empty() || is_default) && !force {
        let mut why = Vec::new();
        if !nodes.is_empty() {
            why.push(format!("nodes {} use it", nodes.join(",")));
        }
        if is_default {
            why.push("it is the cluster default".to_string());
        }
        return Err(BootError::from(RecordError::Conflict(format!(
            "boot config {name} is in use ({}); delete with --force to do it anyway",
            why.join("; ")
        ))));
    }
    let key = schema::bootconfig(&name);
    let mut ops = vec![TxnOp::delete(key.clone())];
    if is_default {
        ops.push(TxnOp::delete(DEFAULT_BOOT_CONFIG));
    }
    if !db.txn(Txn::new().when([Compare::unchanged(key, rev)]).and_then(ops)).await?.succeeded {
        return Err(BootError::from(RecordError::Conflict(format!("boot config {name} changed meanwhile; try again"))));
    }
    let gone = drop_unreferenced(db, storage, vec![c.kernel.clone(), c.initramfs.clone()]).await?;
    tracing::info!(boot_config = %name, files_deleted = %crate::core::listed(&gone), forced = force, "boot config deleted");
    Ok(c)
}

async fn nodes_using(db: &Database, name: &str) -> Result<Vec<String>> {
    Ok(registry::list(db)
        .await?
        .into_iter()
        .filter(|n| n.attributes.get("_boot_config").map(String::as_str) == Some(name))
        .map(|n| n.name)
        .collect())
}

/// A file's record, if it exists.
pub async fn file_record(db: &Database, id: &str) -> Result<Option<FileRecord>> {
    if !is_file_id(id) {
        return Ok(None);
    }
    Ok(get::<FileRecord>(db, &schema::file(&id)).await?.map(|(f, _)| f))
}

pub async fn detail(db: &Database, name: &str) -> Result<BootConfigDetail> {
    let (c, _) = get_config(db, name).await?;
    let image = match &c.image {
        Some(i) => Some(get_image(db, i).await?),
        None => None,
    };
    let mut ids = vec![c.kernel.clone(), c.initramfs.clone()];
    if let Some(i) = &image {
        ids.push(i.rootfs.clone());
        ids.extend(i.extra_files.clone());
    }
    let mut files = Vec::new();
    let mut seen = HashSet::new();
    for id in ids {
        if seen.insert(id.clone()) {
            if let Some(f) = file_record(db, &id).await? {
                files.push(f);
            }
        }
    }
    let (_, default) = list_configs(db).await?;
    Ok(BootConfigDetail {
        is_default: default.as_deref() == Some(name),
        nodes: nodes_using(db, name).await?,
        boot_config: c,
        image,
        files,
    })
}

/// Starts images and boot configs: their routes (they keep no task).
pub fn start(ctx: &crate::core::Ctx, storage: &Arc<Storage>) {
    ctx.serve(routes::routes(Arc::new(routes::Api {
        db: ctx.db.clone(),
        storage: storage.clone(),
        events: ctx.events.clone(),
    })));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::db::embedded::Embedded;
    use crate::core::http::HasKind;
    use clusterware_shared::api::{ErrorKind, FileRecord};

    async fn file(db: &Database, n: u8, kind: &str) -> String {
        let id = format!("{n:032x}");
        let rec = FileRecord {
            id: id.clone(),
            name: format!("f{n}"),
            size: 1,
            sha256: "0".repeat(64),
            kind: kind.into(),
            created: 0,
        };
        db.put(&schema::file(&id), encode(&rec)).await.unwrap();
        id
    }

    fn config(name: &str, kernel: &str, initramfs: &str, image: Option<&str>) -> CreateBootConfig {
        CreateBootConfig {
            name: name.into(),
            kernel: kernel.into(),
            initramfs: initramfs.into(),
            image: image.map(Into::into),
            cmdline: "console=ttyS0".into(),
            description: String::new(),
            secure_boot: false,
        }
    }

    #[tokio::test]
    async fn configs_are_checked_against_what_exists() {
        let db = Database::Embedded(Embedded::open_in_memory().unwrap());
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(dir.path(), "h1", db.clone(), "t").unwrap();
        let (k, i, r) = (file(&db, 1, "kernel").await, file(&db, 2, "initramfs").await, file(&db, 3, "rootfs").await);

        let e = create_config(&db, config("bad name!", &k, &i, None)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::BadRequest, "{e}");
        let e = create_config(&db, config("c1", &k, &format!("{:032x}", 9), None)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        let e = create_config(&db, config("c1", &k, &i, Some("img"))).await.unwrap_err();
        assert!(
            matches!(e, BootError::Record(RecordError::NotFound(ref m)) if m.contains("no image named img")),
            "{e}"
        );
        assert!(list_configs(&db).await.unwrap().0.is_empty(), "refused requests write nothing");

        create_image(
            &db,
            CreateImage { name: "img".into(), rootfs: r.clone(), extra_files: vec![], description: String::new() },
        )
        .await
        .unwrap();
        create_config(&db, config("c1", &k, &i, Some("img"))).await.unwrap();
        let e = create_config(&db, config("c1", &k, &i, None)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");

        assert_eq!(set_default(&db, Some("nope")).await.unwrap_err().kind(), ErrorKind::NotFound);
        set_default(&db, Some("c1")).await.unwrap();
        assert_eq!(list_configs(&db).await.unwrap().1.as_deref(), Some("c1"));

        // Control characters in free text are refused, the field named, nothing changed.
        let mut bad = config("c2", &k, &i, None);
        bad.cmdline = "quiet\n#!ipxe".into();
        let e = create_config(&db, bad).await.unwrap_err();
        assert!(e.to_string().contains("the kernel command line contains the control character U+000A"), "{e}");
        let mut bad = config("c2", &k, &i, None);
        bad.description = "\u{1b}[31mred".into();
        let e = create_config(&db, bad).await.unwrap_err();
        assert!(e.to_string().contains("the boot config description contains the control character U+001B"), "{e}");
        assert_eq!(e.kind(), ErrorKind::BadRequest);
        let e = create_image(
            &db,
            CreateImage { name: "img2".into(), rootfs: r.clone(), extra_files: vec![], description: "a\tb".into() },
        )
        .await
        .unwrap_err();
        assert!(e.to_string().contains("the image description contains the control character U+0009"), "{e}");
        for u in [
            UpdateBootConfig { cmdline: Some("a\rb".into()), ..Default::default() },
            UpdateBootConfig { description: Some("x\u{9b}".into()), ..Default::default() },
            UpdateBootConfig { cmdline: Some("ok".into()), description: Some("x\u{7f}".into()), ..Default::default() },
        ] {
            let e = update_config(&db, "c1", u.clone()).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadRequest, "{u:?}: {e}");
        }
        let (c1, _) = get_config(&db, "c1").await.unwrap();
        assert_eq!(
            (c1.cmdline.as_str(), c1.description.as_str()),
            ("console=ttyS0", ""),
            "a refused update changed c1"
        );
        assert!(get_config(&db, "c2").await.is_err() && get_image(&db, "img2").await.is_err());
        let u = UpdateBootConfig { cmdline: Some("console=ttyS0 quiet".into()), ..Default::default() };
        assert_eq!(update_config(&db, "c1", u).await.unwrap().cmdline, "console=ttyS0 quiet");

        // Used things are kept unless forced.
        let e = delete_image(&db, &storage, "img", false).await.unwrap_err();
        assert!(
            matches!(e, BootError::Record(RecordError::Conflict(ref m)) if m.contains("used by boot config c1")),
            "{e}"
        );
        let e = delete_config(&db, &storage, "c1", false).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
        delete_config(&db, &storage, "c1", true).await.unwrap();
        delete_image(&db, &storage, "img", false).await.unwrap();
        // The files no image or config references any more went with them.
        for id in [&k, &i, &r] {
            assert!(db.get(&schema::file(id)).await.unwrap().is_none(), "{id} is still referenced");
        }
    }
}
