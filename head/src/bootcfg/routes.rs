//! The boot configuration API: images, boot configs, the default boot config, file deletion (refused while an image or config uses the file), export and import.

use crate::bootcfg::{
    self, BootError,
    transfer::{self, ImportOptions},
};
use crate::core::db::Database;
use crate::core::error::RecordError;
use crate::core::http::{ApiResult, Routes, flag, json, parse, query_pairs};
use crate::core::or_none;
use crate::storage::Storage;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use axum::routing::{delete, get, post, put};
use clusterware_shared::api::path;
use clusterware_shared::api::{
    BootConfigList, CloneRequest, CreateBootConfig, CreateImage, DefaultBootConfig, ImageList, UpdateBootConfig,
};
use std::net::SocketAddr;
use std::sync::Arc;

/// What the handlers need.
pub struct Api {
    pub db: Database,
    pub storage: Arc<Storage>,
    pub events: crate::core::events::EventLog,
}

/// The routes (paths under `/api/v1`).
pub fn routes(api: Arc<Api>) -> Routes {
    Routes {
        admin: Router::new()
            .route(path::FILE, delete(delete_file))
            .route(path::IMAGES, get(list_images).post(create_image))
            .route(path::IMAGE, get(get_image).delete(delete_image))
            .route(path::IMAGE_CLONE, post(clone_image))
            .route(path::BOOT_CONFIGS, get(list_configs).post(create_config))
            .route(path::BOOT_CONFIG, get(get_config).delete(delete_config))
            .route(path::BOOT_CONFIG_UPDATE, post(update_config))
            .route(path::BOOT_CONFIG_CLONE, post(clone_config))
            .route(path::BOOT_CONFIG_EXPORT, get(export_config))
            .route(path::DEFAULT_BOOT_CONFIG, put(set_default))
            .route(path::IMPORT, put(import_config).layer(axum::extract::DefaultBodyLimit::disable()))
            .with_state(api.clone()),
        open: Router::new(),
    }
}

async fn delete_file(State(st): State<Arc<Api>>, Path(id): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Response> {
    let users = bootcfg::users_of_file(&st.db, &id).await?;
    if !users.is_empty() && !flag(&q, "force")? {
        return Err(BootError::from(RecordError::Conflict(format!(
            "file {id} is used by {}; delete or change those first, or delete with --force",
            users.join(", ")
        )))
        .into());
    }
    Ok(json(StatusCode::OK, &st.storage.delete(&id).await?))
}

async fn list_images(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &ImageList { images: bootcfg::list_images(&st.db).await? }))
}

async fn get_image(State(st): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::get_image(&st.db, &name).await?))
}

async fn create_image(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    let img = bootcfg::create_image(&st.db, parse::<CreateImage>(&body)?).await?;
    tracing::info!(image = %img.name, rootfs = %img.rootfs, "image created");
    Ok(json(StatusCode::CREATED, &img))
}

async fn clone_image(State(st): State<Arc<Api>>, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let req: CloneRequest = parse(&body)?;
    Ok(json(StatusCode::CREATED, &bootcfg::clone_image(&st.db, &name, &req.name).await?))
}

async fn delete_image(
    State(st): State<Arc<Api>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::delete_image(&st.db, &st.storage, &name, flag(&q, "force")?).await?))
}

async fn list_configs(State(st): State<Arc<Api>>) -> ApiResult<Response> {
    let (boot_configs, default) = bootcfg::list_configs(&st.db).await?;
    Ok(json(StatusCode::OK, &BootConfigList { boot_configs, default }))
}

async fn get_config(State(st): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::detail(&st.db, &name).await?))
}

async fn create_config(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    let c = bootcfg::create_config(&st.db, parse::<CreateBootConfig>(&body)?).await?;
    tracing::info!(boot_config = %c.name, image = %or_none(c.image.as_deref()), "boot config created");
    Ok(json(StatusCode::CREATED, &c))
}

async fn update_config(State(st): State<Arc<Api>>, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::update_config(&st.db, &name, parse::<UpdateBootConfig>(&body)?).await?))
}

async fn clone_config(State(st): State<Arc<Api>>, Path(name): Path<String>, body: Bytes) -> ApiResult<Response> {
    let req: CloneRequest = parse(&body)?;
    Ok(json(StatusCode::CREATED, &bootcfg::clone_config(&st.db, &name, &req.name).await?))
}

async fn delete_config(
    State(st): State<Arc<Api>>,
    Path(name): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Response> {
    Ok(json(StatusCode::OK, &bootcfg::delete_config(&st.db, &st.storage, &name, flag(&q, "force")?).await?))
}

async fn set_default(State(st): State<Arc<Api>>, body: Bytes) -> ApiResult<Response> {
    let req: DefaultBootConfig = parse(&body)?;
    bootcfg::set_default(&st.db, req.name.as_deref()).await?;
    Ok(json(StatusCode::OK, &req))
}

async fn export_config(State(st): State<Arc<Api>>, Path(name): Path<String>) -> ApiResult<Response> {
    let stream = transfer::export(&st.db, &st.storage, &name).await?;
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}.export\""))
        .body(axum::body::Body::from_stream(stream))
        .expect("valid response"))
}

async fn import_config(
    State(st): State<Arc<Api>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(q): RawQuery,
    body: axum::body::Body,
) -> ApiResult<Response> {
    let pairs = query_pairs(q.as_deref())?;
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let o = ImportOptions {
        image: get("image"),
        boot_config: get("boot_config"),
        no_recurse: flag(&q, "no_recurse")?,
        dry_run: flag(&q, "dry_run")?,
    };
    let report = transfer::import(&st.db, &st.storage, body.into_data_stream(), o).await?;
    tracing::info!(%peer, boot_config = %report.boot_config, image = %or_none(report.image.as_deref()), dry_run = report.dry_run, "import");
    let what = format!(
        "{}boot config {} (exported as {}){}, {} files",
        if report.dry_run { "dry run: would import " } else { "imported " },
        report.boot_config,
        report.boot_config_was,
        report.image.as_deref().map_or_else(String::new, |i| format!(" with image {i}")),
        report.files.len()
    );
    if !report.dry_run {
        st.events.record(clusterware_shared::api::EventKind::Import, &report.boot_config, what.clone());
    }
    Ok(crate::core::http::described(
        json(if report.dry_run { StatusCode::OK } else { StatusCode::CREATED }, &report),
        what,
    ))
}
