//! The daemon's control API: HTTP/1.1 with JSON bodies over a unix socket (root only, 0600).
//!
//! | method | path | body | answer |
//! |---|---|---|---|
//! | GET | /api/v1/daemon | – | state, version, front-end |
//! | GET | /api/v1/mounts | – | the mounts served |
//! | POST | /api/v1/mounts | [`MountRequest`] | [`MountInfo`] |
//! | DELETE | /api/v1/mounts | `{"mountpoint": …}` | 204 |
//! | GET | /api/v1/metrics | – | per-blob fetch counters and front-end counters |
//! | GET | /api/v1/cache | – | [`crate::cache::Listing`]: cached blobs, disk/ready bytes, last use, in use |
//! | POST | /api/v1/cache/gc | [`crate::cache::gc::GcRequest`] | [`crate::cache::gc::GcReport`] |
//!
//! Errors are `{"code": …, "message": …}` with a 4xx/5xx status.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tracing::{info, warn};

use super::Daemon;
use crate::frontend::MountRequest;

#[derive(Serialize, Deserialize)]
pub struct UmountRequest {
    pub mountpoint: PathBuf,
}

#[derive(Serialize, Deserialize, Debug)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// Longest socket path `sun_path` takes (108 bytes with its NUL).
const SUN_PATH_MAX: usize = 107;

/// `path` itself, or for a longer one `/proc/self/fd/N/<name>` through an `O_PATH` descriptor
/// of its directory, kept open as long as the returned file lives.
fn reachable(path: &Path) -> Result<(PathBuf, Option<std::fs::File>)> {
    if path.as_os_str().len() <= SUN_PATH_MAX {
        return Ok((path.to_path_buf(), None));
    }
    use std::os::unix::fs::OpenOptionsExt;
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else { anyhow::bail!("socket path {} has no directory", path.display()) };
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)
        .with_context(|| format!("opening {}", dir.display()))?;
    let short = PathBuf::from(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&d))).join(name);
    if short.as_os_str().len() > SUN_PATH_MAX {
        anyhow::bail!("socket name {:?} is too long for a unix socket", name);
    }
    Ok((short, Some(d)))
}

/// Binds the socket (replacing a stale one), restricted to its owner. A path longer than a
/// unix socket address takes is bound through its directory's descriptor.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let (addr, _dir) = reachable(path)?;
    if path.exists() {
        // A live daemon answers; a stale socket from a crash does not and is replaced.
        if std::os::unix::net::UnixStream::connect(&addr).is_ok() {
            anyhow::bail!("another daemon is already serving {}", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(&addr).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    serve_http(listener, daemon, handle).await
}

/// Serves HTTP/1.1 on every connection `listener` accepts, each request answered by
/// `handle(state, request)`; shared by this API and the nydusd-compatible one. Connections are
/// kept alive and an idle one is never timed out: a client may hold one open as a liveness watch
/// (nydus-snapshotter does).
pub async fn serve_http<S, F>(listener: UnixListener, state: Arc<S>, handle: fn(Arc<S>, Request<Incoming>) -> F)
where
    S: Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    serve_http_with(listener, Vec::new(), false, state, handle).await
}

/// Connections a previous worker accepted, parked with the supervisor under this prefix.
pub const PARKED_CONN_PREFIX: &str = "api-conn-";

/// [`serve_http`], also serving `adopted` connections (a previous worker's), and with `park`,
/// parking a duplicate of every connection with the fd holder (`fd_store`) while it is open:
/// a client holding one open as a liveness watch then sees no hang-up when this process is
/// killed and restarted under its supervisor, and its next request is answered by the successor.
pub async fn serve_http_with<S, F>(
    listener: UnixListener,
    adopted: Vec<(String, std::os::fd::OwnedFd)>,
    park: bool,
    state: Arc<S>,
    handle: fn(Arc<S>, Request<Incoming>) -> F,
) where
    S: Send + Sync + 'static,
    F: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let serve_one = move |stream: tokio::net::UnixStream, name: Option<String>| {
        let state = state.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .header_read_timeout(None)
                .serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                warn!("api connection: {e}");
            }
            if let Some(n) = name {
                let _ = crate::daemon::supervisor::fd_store().lock().expect("fd store").remove(&n);
            }
        });
    };
    for (name, fd) in adopted {
        let std_stream = std::os::unix::net::UnixStream::from(fd);
        match std_stream.set_nonblocking(true).and_then(|_| tokio::net::UnixStream::from_std(std_stream)) {
            Ok(s) => serve_one(s, Some(name)),
            Err(e) => warn!("adopting api connection {name}: {e}"),
        }
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!("api accept: {e}");
                continue;
            }
        };
        let name = park.then(|| format!("{PARKED_CONN_PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))).and_then(|n| {
            let mut store = crate::daemon::supervisor::fd_store().lock().expect("fd store");
            match store.store(&n, std::os::fd::AsFd::as_fd(&stream)) {
                Ok(()) => Some(n),
                Err(e) => {
                    warn!("parking api connection: {e}");
                    None
                }
            }
        });
        serve_one(stream, name);
    }
}

/// A JSON answer.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .expect("response")
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Full<Bytes>> {
    json(status, &ApiError { code: code.into(), message: message.into() })
}

async fn body_json<T: for<'de> Deserialize<'de>>(req: Request<Incoming>) -> Result<T, Response<Full<Bytes>>> {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| error(StatusCode::BAD_REQUEST, "bad_body", e.to_string()))?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_json", e.to_string()))
}

async fn handle(daemon: Arc<Daemon>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let resp = match (method, path.as_str()) {
        (Method::GET, "/api/v1/daemon") => json(StatusCode::OK, &daemon.info()),
        (Method::GET, "/api/v1/mounts") => json(StatusCode::OK, &daemon.mounts()),
        (Method::GET, "/api/v1/metrics") => json(StatusCode::OK, &daemon.metrics()),
        (Method::GET, "/api/v1/cache") => match daemon.cache_listing().await {
            Ok(l) => json(StatusCode::OK, &l),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "cache_list_failed", format!("{e:#}")),
        },
        (Method::POST, "/api/v1/cache/gc") => match body_json::<crate::cache::gc::GcRequest>(req).await {
            Err(r) => r,
            Ok(g) => match daemon.cache_gc(g).await {
                Ok(report) => json(StatusCode::OK, &report),
                Err(e) => error(StatusCode::BAD_REQUEST, "cache_gc_failed", format!("{e:#}")),
            },
        },
        (Method::POST, "/api/v1/mounts") => match body_json::<MountRequest>(req).await {
            Err(r) => r,
            Ok(m) => match daemon.mount(m).await {
                Ok(info) => {
                    info!("mounted {} at {}", info.image.display(), info.mountpoint.display());
                    json(StatusCode::OK, &info)
                }
                Err(e) => error(StatusCode::BAD_REQUEST, "mount_failed", format!("{e:#}")),
            },
        },
        (Method::DELETE, "/api/v1/mounts") => match body_json::<UmountRequest>(req).await {
            Err(r) => r,
            Ok(u) => match daemon.umount(&u.mountpoint).await {
                Ok(()) => Response::builder().status(StatusCode::NO_CONTENT).body(Full::new(Bytes::new())).expect("204"),
                Err(e) => error(StatusCode::BAD_REQUEST, "umount_failed", format!("{e:#}")),
            },
        },
        (_, p) => error(StatusCode::NOT_FOUND, "not_found", format!("no such endpoint {p}")),
    };
    Ok(resp)
}
