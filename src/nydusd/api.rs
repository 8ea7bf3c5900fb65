//! nydusd's HTTP API as nydus-snapshotter uses it (HTTP/1.1 over the `--apisock` unix socket).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | /api/v1/daemon | 200 `{id, version{…}, state, supervisor, backend_collection}` |
//! | PUT | /api/v2/blobs | 204; body: a `bootstrap` BlobCacheEntry (`config.metadata_path` or `config_v2.metadata_path`) |
//! | DELETE | /api/v2/blobs?domain_id=D[&blob_id=B] | 204; unknown → 500 `blob_cache: cache entry not found…` |
//! | DELETE | /api/v2/blobs?blob_id=B | 204 (culls B's cache objects) |
//! | GET | /api/v1/metrics/blobcache?id=/X | 200 CacheMetrics with `underlying_files` |
//! | GET | /api/v1/metrics | 200 |
//! | PUT | /api/v1/config?id=/X | 204; `registry_auth` renews the credentials of snapshot X's binds |
//! | PUT | /api/v1/daemon/fuse/sendfd, …/fuse/takeover, …/start, …/exit | 204 |
//!
//! Errors are nydusd's shape, `{"code": "UNDEFINED", "message": "…"}`; unknown routes are 404.
//! Connections are kept open however long they idle: the snapshotter holds one open, sending
//! nothing, and reads a hang-up as "the daemon died".

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use tokio::net::UnixListener;
use tracing::info;

use super::state::State;
use super::NydusDaemon;
use crate::daemon::api::{json, serve_http};

type Resp = Response<Full<Bytes>>;

/// Bodies larger than this are refused (a BlobCacheEntry is a few KiB).
const MAX_BODY: usize = 1 << 20;

pub async fn serve(listener: UnixListener, daemon: Arc<NydusDaemon>) {
    // No header-read timeout there: an idle connection is the snapshotter's liveness probe.
    serve_http(listener, daemon, handle).await
}

fn no_content() -> Resp {
    Response::builder().status(StatusCode::NO_CONTENT).body(Full::new(Bytes::new())).expect("204")
}

/// nydusd's error body; logged, since the snapshotter does not always pass it on.
pub fn error(status: StatusCode, message: impl Into<String>) -> Resp {
    let message = message.into();
    tracing::warn!("api: answering {status}: {message}");
    json(status, &serde_json::json!({"code": "UNDEFINED", "message": message}))
}

/// Percent-decoded query pairs (the snapshotter sends `id=%2F<x>`).
pub fn query(req_query: Option<&str>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(req_query.unwrap_or("").as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

async fn body(req: Request<Incoming>) -> Result<Bytes, Resp> {
    let b = http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("reading the request body: {e}")))?
        .to_bytes();
    Ok(b)
}

/// The parts of nydus's BlobCacheEntry we use; other keys are accepted and ignored.
#[derive(Deserialize)]
struct BlobCacheEntry {
    #[serde(rename = "type")]
    blob_type: String,
    id: String,
    #[serde(default)]
    domain_id: Option<String>,
    #[serde(default)]
    config: Option<serde_json::Value>,
    #[serde(default)]
    config_v2: Option<serde_json::Value>,
}

async fn handle(daemon: Arc<NydusDaemon>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = query(req.uri().query());
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/api/v1/daemon") => json(StatusCode::OK, &daemon_info(&daemon)),
        (&Method::PUT, "/api/v2/blobs") => match body(req).await {
            Err(r) => r,
            Ok(b) => put_blobs(&daemon, &b).await,
        },
        (&Method::DELETE, "/api/v2/blobs") => delete_blobs(&daemon, &q).await,
        (&Method::GET, "/api/v2/blobs") => {
            let list: Vec<serde_json::Value> = daemon
                .binds()
                .iter()
                .map(|b| {
                    serde_json::json!({"type": "bootstrap", "id": b.fsid, "domain_id": b.domain_id, "metadata_path": b.metadata_path,
                        "erofsd_blob_source": b.image.blobs.first().map(|x| x.source.describe())})
                })
                .collect();
            json(StatusCode::OK, &serde_json::json!({"blobs": list}))
        }
        (&Method::GET, "/api/v1/metrics/blobcache") => json(StatusCode::OK, &blobcache_metrics(&daemon, param(&q, "id"))),
        (&Method::GET, "/api/v1/metrics") => json(StatusCode::OK, &fs_metrics(&daemon)),
        (&Method::PUT, "/api/v1/config") => match body(req).await {
            Err(r) => r,
            Ok(b) => match serde_json::from_slice::<serde_json::Value>(&b) {
                Ok(v) if v.is_object() => config_update(&daemon, param(&q, "id").unwrap_or(""), &v).await,
                Ok(_) => error(StatusCode::BAD_REQUEST, "config body must be a JSON object"),
                Err(e) => error(StatusCode::BAD_REQUEST, format!("SerdeError({e})")),
            },
        },
        (&Method::PUT, "/api/v1/daemon/fuse/sendfd") => match daemon.sendfd().await {
            Ok(()) => no_content(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("sendfd: {e:#}")),
        },
        (&Method::PUT, "/api/v1/daemon/fuse/takeover") => match daemon.takeover().await {
            Ok(()) => no_content(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("takeover: {e:#}")),
        },
        (&Method::PUT, p @ ("/api/v1/daemon/start" | "/api/v1/daemon/exit")) => start_or_exit(&daemon.state, &daemon.exit, p),
        (m, p) => error(StatusCode::NOT_FOUND, format!("NotFound: no endpoint {m} {p}")),
    };
    Ok(resp)
}

/// `PUT /api/v1/daemon/start` (READY → RUNNING) and `PUT /api/v1/daemon/exit`, in both modes.
fn start_or_exit(state: &super::state::StateCell, exit: &tokio::sync::Notify, path: &str) -> Resp {
    if path.ends_with("/exit") {
        state.set(State::Stopped);
        exit.notify_one();
        return no_content();
    }
    match state.transition(&[State::Ready, State::Running], State::Running) {
        Ok(()) => no_content(),
        Err(s) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("start: daemon is {} (takeover first)", s.name())),
    }
}

/// `PUT /api/v1/config?id=/X`: `registry_auth` renews the credentials of X's binds (nydusd's
/// dynamic config); other keys are accepted and logged.
async fn config_update(daemon: &NydusDaemon, id: &str, v: &serde_json::Value) -> Resp {
    let others: Vec<&String> = v.as_object().into_iter().flat_map(|o| o.keys()).filter(|k| *k != "registry_auth").collect();
    if !others.is_empty() {
        info!("config update for {id:?}: keys {others:?} accepted (not used)");
    }
    match v.get("registry_auth") {
        None => no_content(),
        Some(serde_json::Value::String(auth)) => match daemon.renew_auth(id, auth).await {
            Ok(0) => {
                info!("config update for {id:?}: registry_auth renewed for no registry-backed bind");
                no_content()
            }
            Ok(n) => {
                info!("config update for {id:?}: registry_auth renewed for {n} bind(s)");
                no_content()
            }
            Err(e) => error(StatusCode::BAD_REQUEST, format!("registry_auth: {e:#}")),
        },
        Some(_) => error(StatusCode::BAD_REQUEST, "registry_auth must be a string"),
    }
}

fn daemon_info(daemon: &NydusDaemon) -> serde_json::Value {
    serde_json::json!({
        "id": daemon.opts.common.id.clone().unwrap_or_default(),
        "version": super::version_info(),
        "state": daemon.state.get().name(),
        "supervisor": daemon.opts.common.supervisor,
        "backend_collection": {},
        "erofsd_mode": if daemon.api_only { "api-only" } else { "cachefiles" },
    })
}

async fn put_blobs(daemon: &NydusDaemon, b: &[u8]) -> Resp {
    let entry: BlobCacheEntry = match serde_json::from_slice(b) {
        Ok(e) => e,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("SerdeError({e})")),
    };
    if entry.blob_type != "bootstrap" {
        return error(
            StatusCode::BAD_REQUEST,
            format!("blob_cache: entry type {:?} is not supported (only \"bootstrap\")", entry.blob_type),
        );
    }
    let config = entry.config.or(entry.config_v2).unwrap_or_default();
    let Some(meta) = config.get("metadata_path").and_then(|m| m.as_str()).filter(|m| !m.is_empty()).map(std::path::PathBuf::from)
    else {
        return error(StatusCode::BAD_REQUEST, "blob_cache: bootstrap entry without config.metadata_path");
    };
    let domain = entry.domain_id.filter(|d| !d.is_empty()).unwrap_or_else(|| entry.id.clone());
    match daemon.bind(&entry.id, &domain, &meta, &config).await {
        Ok(()) => no_content(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn delete_blobs(daemon: &NydusDaemon, q: &[(String, String)]) -> Resp {
    match (param(q, "domain_id"), param(q, "blob_id")) {
        (Some(d), b) => match daemon.unbind(d, b).await {
            Ok(_) => no_content(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
        },
        (None, Some(b)) => match daemon.cull(b).await {
            Ok(n) => {
                info!("cull {b}: {n} cache object(s) removed");
                no_content()
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("cull {b}: {e:#}")),
        },
        (None, None) => error(StatusCode::BAD_REQUEST, "DELETE /api/v2/blobs needs domain_id or blob_id"),
    }
}

/// CacheMetrics for the binds whose fsid is `id` (`/` prefix stripped), or all binds.
///
/// `underlying_files` names `<fscache dir>/<blob id>` for each blob: the snapshotter's GC only
/// uses the base names (which blob ids are in use); cachefiles' own object paths are hashed.
fn blobcache_metrics(daemon: &NydusDaemon, id: Option<&str>) -> serde_json::Value {
    let id = id.map(|i| i.trim_start_matches('/'));
    let binds: Vec<_> = daemon.binds().into_iter().filter(|b| id.is_none_or(|i| b.fsid == i)).collect();
    let binds = if binds.is_empty() { daemon.binds() } else { binds };
    let mut files = std::collections::BTreeSet::new();
    let mut total = 0u64;
    let mut requests = 0u64;
    for b in &binds {
        for blob in &b.image.blobs {
            files.insert(daemon.config.cache_dir.join(&blob.id).display().to_string());
            total += blob.size();
            requests += blob.stats.requests.load(std::sync::atomic::Ordering::Relaxed);
        }
    }
    serde_json::json!({
        "id": id.unwrap_or(""),
        "underlying_files": files,
        "store_path": daemon.config.cache_dir,
        "partial_hits": 0,
        "whole_hits": 0,
        "total": requests,
        "entries_count": files.len(),
        "prefetch_data_amount": 0,
        "prefetch_requests_count": 0,
        "prefetch_workers": 0,
        "prefetch_unmerged_chunks": 0,
        "prefetch_cumulative_time_millis": 0,
        "prefetch_begin_time_secs": 0,
        "prefetch_begin_time_millis": 0,
        "prefetch_end_time_secs": 0,
        "prefetch_end_time_millis": 0,
        "buffered_backend_size": 0,
        "data_all_ready": false,
        "erofsd_blob_bytes": total,
    })
}

fn fs_metrics(daemon: &NydusDaemon) -> serde_json::Value {
    let fe = daemon.frontend().map(|f| crate::frontend::Frontend::metrics(f.as_ref()));
    serde_json::json!({
        "files_account_enabled": false,
        "access_pattern_enabled": false,
        "measure_latency": false,
        "id": daemon.opts.common.id.clone().unwrap_or_default(),
        "data_read": 0,
        "erofsd_binds": daemon.binds().len(),
        "erofsd_frontend": fe,
    })
}

/// `POST /api/v1/mount`'s body (nydus's `MountRequest`).
#[derive(Deserialize)]
struct FuseMountBody {
    fs_type: String,
    source: std::path::PathBuf,
    #[serde(default)]
    config: String,
}

/// The fuse mode's API (`nydusd fuse`, served by kernel EROFS through fanotify):
///
/// | method | path | answer |
/// |---|---|---|
/// | GET | /api/v1/daemon | 200 `{id, version{…}, state, supervisor, backend_collection, erofsd_mode: "fanotify"}` |
/// | POST | /api/v1/mount?mountpoint=/ID | 204; body `{"fs_type":"rafs","source":BOOTSTRAP,"config":JSON}`: mounts at M/ID |
/// | DELETE | /api/v1/mount?mountpoint=/ID | 204; unmounts M/ID |
/// | GET | /api/v1/metrics[?id=/ID] | 200 FsMetrics, plus `erofsd` (per-blob fetch counters) |
/// | GET | /api/v1/metrics/inflight | 204 (kernel EROFS reads are not requests we hold) |
/// | GET | /api/v1/metrics/blobcache | 200 CacheMetrics |
/// | PUT | /api/v1/config | 204 (accepted, logged) |
/// | PUT | /api/v1/daemon/fuse/sendfd | 204: the fanotify group and the mount list to `--supervisor` |
/// | PUT | /api/v1/daemon/fuse/takeover | 204 in INIT (a failover successor, which took the group at start), else 500 |
/// | PUT | /api/v1/daemon/start, /api/v1/daemon/exit | 204 |
pub async fn handle_fuse(daemon: Arc<super::fuse::FuseDaemon>, req: Request<Incoming>) -> Result<Resp, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let q = query(req.uri().query());
    let resp = match (&method, path.as_str()) {
        (&Method::GET, "/api/v1/daemon") => json(
            StatusCode::OK,
            &serde_json::json!({
                "id": daemon.opts.common.id.clone().unwrap_or_default(),
                "version": super::version_info(),
                "state": daemon.state.get().name(),
                "supervisor": daemon.opts.common.supervisor,
                "backend_collection": {},
                "erofsd_mode": "fanotify",
                "erofsd_cache_dir": daemon.daemon.config.cache_dir,
                "erofsd_pid": std::process::id(),
            }),
        ),
        (&Method::POST, "/api/v1/mount") => {
            let Some(mp) = param(&q, "mountpoint").map(String::from) else {
                return Ok(error(StatusCode::BAD_REQUEST, "POST /api/v1/mount needs ?mountpoint=/<id>"));
            };
            match body(req).await {
                Err(r) => r,
                Ok(b) => match serde_json::from_slice::<FuseMountBody>(&b) {
                    Err(e) => error(StatusCode::BAD_REQUEST, format!("SerdeError({e})")),
                    Ok(m) => match daemon.shared_mount(&mp, &m.fs_type, &m.source, &m.config).await {
                        Ok(()) => no_content(),
                        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("mount {mp}: {e:#}")),
                    },
                },
            }
        }
        (&Method::DELETE, "/api/v1/mount") => match param(&q, "mountpoint") {
            None => error(StatusCode::BAD_REQUEST, "DELETE /api/v1/mount needs ?mountpoint=/<id>"),
            Some(mp) => match daemon.shared_umount(mp).await {
                Ok(()) => no_content(),
                Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("umount {mp}: {e:#}")),
            },
        },
        (&Method::GET, "/api/v1/metrics") => {
            let d = &daemon.daemon;
            let m = d.metrics();
            let fetched: u64 = m["blobs"].as_object().into_iter().flat_map(|o| o.values()).filter_map(|b| b["stored_bytes"].as_u64()).sum();
            json(
                StatusCode::OK,
                &serde_json::json!({
                    "id": param(&q, "id").unwrap_or(""),
                    "files_account_enabled": false,
                    "access_pattern_enabled": false,
                    "measure_latency": false,
                    "data_read": 0,
                    "erofsd_fetched_bytes": fetched,
                    "erofsd_mounts": d.mounts().len(),
                    "erofsd": m,
                }),
            )
        }
        (&Method::GET, "/api/v1/metrics/inflight") => no_content(),
        (&Method::GET, "/api/v1/metrics/blobcache") => {
            let d = &daemon.daemon;
            let files: Vec<String> = d.metrics()["blobs"].as_object().into_iter().flat_map(|o| o.keys()).cloned().collect();
            json(
                StatusCode::OK,
                &serde_json::json!({"id": param(&q, "id").unwrap_or(""), "underlying_files": files, "store_path": d.config.cache_dir,
                    "entries_count": files.len(), "total": 0, "partial_hits": 0, "whole_hits": 0, "data_all_ready": false}),
            )
        }
        (&Method::PUT, "/api/v1/config") => {
            info!("config update for {:?} accepted (not used in fuse mode)", param(&q, "id"));
            no_content()
        }
        (&Method::PUT, "/api/v1/daemon/fuse/sendfd") => match daemon.sendfd().await {
            Ok(()) => no_content(),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, format!("sendfd: {e:#}")),
        },
        // The group came back from the supervisor socket at start (fuse::take_over_group);
        // takeover only moves the state on, as nydusd's does.
        (&Method::PUT, "/api/v1/daemon/fuse/takeover") => match daemon.state.transition(&[State::Init], State::Ready) {
            Ok(()) => no_content(),
            Err(s) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("takeover: daemon is {}: nothing to take over (erofsd's supervisor restarts a killed worker in place; hot upgrade is not supported in fuse mode)", s.name()),
            ),
        },
        (&Method::PUT, p @ ("/api/v1/daemon/start" | "/api/v1/daemon/exit")) => start_or_exit(&daemon.state, &daemon.exit, p),
        (m, p) => error(StatusCode::NOT_FOUND, format!("NotFound: no endpoint {m} {p}")),
    };
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let q = query(Some("id=%2Fabc&domain_id=d%2D1&blob_id="));
        assert_eq!(param(&q, "id"), Some("/abc"));
        assert_eq!(param(&q, "domain_id"), Some("d-1"));
        assert_eq!(param(&q, "blob_id"), None);
    }
}
