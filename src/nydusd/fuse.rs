//! `nydusd fuse` answered with kernel EROFS: nydus-snapshotter's default `fs_driver = "fusedev"`
//! served through the fanotify front-end, never through FUSE.
//!
//! The snapshotter runs `nydusd fuse --mountpoint M …` and expects an image at `M` (a dedicated
//! daemon, started with `--bootstrap`) or at `M/<id>` after `POST /api/v1/mount?mountpoint=/<id>`
//! (a shared daemon). It never looks at the filesystem type, so a file-backed EROFS mount whose
//! blob devices are sparse cache files marked for fanotify pre-content events is taken as is:
//! the snapshotter keeps its images, config and deployment, and the data path is the kernel's.
//!
//! Invariants:
//! * The process the snapshotter starts is our supervisor ([`crate::daemon::supervisor`]); the
//!   worker serving the mounts is its child. The supervisor holds the fanotify group, the cache
//!   files' write fds, the API listener and every open API connection, so a SIGKILL of either
//!   process never lets a reader through to a hole and never shows the snapshotter a hang-up:
//!   its liveness watch (an idle API connection) stays open, whatever its `recover_policy`.
//! * What a restarted worker needs beyond the front-end's own mount table, each mount's backend,
//!   is in the mount list ([`super::persist::MountRecord`]), written before a mount is answered.
//! * Each daemon has a cache directory of its own under the config's cache work dir
//!   (`<work_dir>/erofsd/<daemon id>`): the front-end's directory lock and state are per daemon.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tracing::{info, warn};

use super::backend::BackendRef;
use super::cli::Fuse;
use super::persist::{self, MountRecord};
use super::state::{State, StateCell};
use crate::core::images::{Image, ImageStore};
use crate::core::prefetch::{ByteSize, PrefetchMode};
use crate::daemon::config::Config;
use crate::daemon::Daemon;
use crate::frontend::fanotify::{self, FanotifyFrontend};
use crate::frontend::MountRequest;

/// The parked API listener's name with the fd holder.
const LISTENER_FD_NAME: &str = "nydusd-api-listener";

/// What a nydusd JSON config (fusedev: `device.backend`, `device.cache`, `fs_prefetch`; or the
/// v2 layout: `backend`, `cache`) tells us.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NydusdConfig {
    pub backend: Option<BackendRef>,
    /// The blob cache's work dir.
    pub work_dir: Option<PathBuf>,
    pub prefetch: PrefetchMode,
    /// `fs_prefetch.bandwidth_limit` (or `bandwidth_rate`), bytes per second; 0 = none.
    pub prefetch_bandwidth: u64,
    /// `fs_prefetch.threads_count`: prefetch requests on the wire at once (1..=64).
    pub prefetch_in_flight: Option<usize>,
}

impl NydusdConfig {
    pub fn parse(v: &Value) -> Result<NydusdConfig> {
        if !v.is_object() {
            bail!("the nydusd config is not a JSON object");
        }
        let backend = match v.pointer("/device/backend") {
            Some(b) => match b.get("type").and_then(Value::as_str) {
                Some(t) => Some(BackendRef { kind: t.into(), config: b.get("config").cloned().unwrap_or(Value::Null) }),
                None => bail!("device.backend has no type"),
            },
            None => BackendRef::from_entry(v),
        };
        let work_dir = ["/device/cache/config/work_dir", "/cache/file_cache/work_dir", "/cache/fscache/work_dir", "/cache/filecache/work_dir"]
            .iter()
            .find_map(|p| v.pointer(p).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .map(PathBuf::from);
        let fp = v.get("fs_prefetch").or_else(|| v.pointer("/rafs/prefetch"));
        let enabled = fp.and_then(|f| f.get("enable")).and_then(Value::as_bool).unwrap_or(false);
        let all = fp.and_then(|f| f.get("prefetch_all")).and_then(Value::as_bool).unwrap_or(false);
        let prefetch = match (enabled, all) {
            (false, _) => PrefetchMode::None,
            (true, false) => PrefetchMode::Trace,
            (true, true) => PrefetchMode::TraceBlobs,
        };
        let prefetch_bandwidth = fp
            .and_then(|f| f.get("bandwidth_limit").or_else(|| f.get("bandwidth_rate")))
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let prefetch_in_flight =
            fp.and_then(|f| f.get("threads_count")).and_then(Value::as_u64).filter(|n| *n > 0).map(|n| n.min(64) as usize);
        Ok(NydusdConfig { backend, work_dir, prefetch, prefetch_bandwidth, prefetch_in_flight })
    }

    pub fn from_file(path: &Path) -> Result<NydusdConfig> {
        let bytes = std::fs::read(path).with_context(|| format!("reading nydusd config {}", path.display()))?;
        Self::from_json(&bytes).with_context(|| format!("nydusd config {}", path.display()))
    }

    pub fn from_json(bytes: &[u8]) -> Result<NydusdConfig> {
        let v: Value = serde_json::from_slice(bytes).context("not JSON")?;
        Self::parse(&v)
    }

    /// The image at `bootstrap`, its blobs from this config's backend (or `blobs/` beside it).
    pub fn load(&self, images: &ImageStore, bootstrap: &Path) -> Result<Arc<Image>> {
        load_with(images, bootstrap, self.backend.as_ref())
    }
}

fn load_with(images: &ImageStore, bootstrap: &Path, backend: Option<&BackendRef>) -> Result<Arc<Image>> {
    let built = match backend {
        Some(b) => b.build(bootstrap).with_context(|| format!("the {} backend", b.describe()))?,
        None => None,
    };
    match built {
        Some(b) => images.load(bootstrap, b.source),
        None => images.load_dir(bootstrap),
    }
    .with_context(|| format!("loading bootstrap {}", bootstrap.display()))
}

/// This daemon's cache directory: `<work_dir>/erofsd/<id>`. The work dir is the config's; a
/// shared daemon gets no config on its command line, so it takes the snapshotter's layout
/// (`<root>/mnt` beside `<root>/cache`), else a `cache` directory beside its API socket. The id
/// is `--id`, else a hash of the API socket path (both stable across the snapshotter's restarts
/// of the daemon).
pub fn cache_dir(opts: &Fuse, config: Option<&NydusdConfig>) -> PathBuf {
    let work = config.and_then(|c| c.work_dir.clone()).unwrap_or_else(|| {
        match (opts.mountpoint.file_name().and_then(|n| n.to_str()), opts.mountpoint.parent()) {
            (Some("mnt"), Some(root)) if opts.bootstrap.is_none() => root.join("cache"),
            _ => opts.common.apisock.parent().unwrap_or(Path::new("/")).join("cache"),
        }
    });
    let id = match &opts.common.id {
        Some(id) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => id.clone(),
        _ => {
            use sha2::{Digest, Sha256};
            hex::encode(&Sha256::digest(opts.common.apisock.as_os_str().as_encoded_bytes())[..8])
        }
    };
    work.join("erofsd").join(id)
}

pub struct FuseDaemon {
    pub opts: Fuse,
    /// The command line's config (a dedicated daemon's), if any.
    pub nydusd_config: Option<NydusdConfig>,
    pub daemon: Arc<Daemon>,
    /// The daemon's front-end, as itself (its group fd goes to the snapshotter's supervisor).
    fanotify: Arc<FanotifyFrontend>,
    pub state: StateCell,
    records: Mutex<BTreeMap<PathBuf, MountRecord>>,
    /// Serialises mount and umount (each is a read-modify-write of the mount list).
    ops: tokio::sync::Mutex<()>,
    pub exit: tokio::sync::Notify,
}

impl FuseDaemon {
    fn persist(&self) -> Result<()> {
        persist::save(&persist::mounts_path(&self.daemon.config.cache_dir), &self.records())
    }

    /// `M/<id>` for the snapshotter's `/<id>`; refuses anything that would leave `M`.
    fn shared_mountpoint(&self, relative: &str) -> Result<PathBuf> {
        let id = relative.trim_start_matches('/');
        if id.is_empty() || id.contains('/') || id == "." || id == ".." {
            bail!("mountpoint {relative:?} is not /<id>");
        }
        Ok(self.opts.mountpoint.join(id))
    }

    /// Mounts `bootstrap` at `mountpoint` (kernel EROFS through fanotify) and records it.
    async fn mount(&self, mountpoint: PathBuf, relative: Option<String>, bootstrap: &Path, config: &NydusdConfig) -> Result<()> {
        let _op = self.ops.lock().await;
        let image = config.load(&self.daemon.images, bootstrap)?;
        // A missing or short blob fails the mount, naming it (the snapshotter then fails the
        // container's start), rather than the container's first read.
        image.check_sources().await.with_context(|| format!("image {}", bootstrap.display()))?;
        let created = !mountpoint.exists();
        std::fs::create_dir_all(&mountpoint).with_context(|| format!("creating mountpoint {}", mountpoint.display()))?;
        let key = crate::frontend::mount_key(&mountpoint);
        if self.records.lock().expect("records").contains_key(&key) {
            bail!("{} is already served by this daemon", key.display());
        }
        detach_stale(&key)?;
        // Recorded before the kernel mount: a worker killed in between leaves a record without
        // a mount (dropped at restart), never a mount its successor cannot load the blobs of.
        let rec = MountRecord { mountpoint: key.clone(), relative, bootstrap: bootstrap.into(), image_id: image.id.clone(), backend: config.backend.clone() };
        self.records.lock().expect("records").insert(key.clone(), rec);
        let req = MountRequest {
            image: bootstrap.to_path_buf(),
            reference: None,
            mountpoint: mountpoint.clone(),
            fsid: None,
            domain_id: None,
            prefetch: Some(config.prefetch),
            prefetch_bandwidth: Some(config.prefetch_bandwidth),
            prefetch_in_flight: config.prefetch_in_flight,
        };
        let mounted = match self.persist().context("saving the mount list") {
            Ok(()) => self.daemon.mount_image(image.clone(), req).await,
            Err(e) => Err(e),
        };
        if let Err(e) = mounted {
            self.records.lock().expect("records").remove(&key);
            if let Err(e) = self.persist() {
                warn!("saving the mount list: {e:#}");
            }
            if created {
                let _ = std::fs::remove_dir(&mountpoint);
            }
            return Err(e);
        }
        info!(
            "mounted {} at {} (kernel EROFS, fanotify; {} blob(s) from {})",
            bootstrap.display(),
            key.display(),
            image.blobs.len(),
            image.blobs.first().map(|b| b.source.describe()).unwrap_or_else(|| "nowhere (no blobs)".into())
        );
        Ok(())
    }

    /// `POST /api/v1/mount?mountpoint=/<id>` with `{"fs_type": "rafs", "source": B, "config": C}`.
    pub async fn shared_mount(&self, relative: &str, fs_type: &str, source: &Path, config: &str) -> Result<()> {
        if fs_type != "rafs" {
            bail!("fs_type {fs_type:?} is not supported (only \"rafs\")");
        }
        let mp = self.shared_mountpoint(relative)?;
        let config = if config.trim().is_empty() {
            self.nydusd_config.clone().unwrap_or_default()
        } else {
            NydusdConfig::from_json(config.as_bytes()).context("the mount's config")?
        };
        if let Some(w) = &config.work_dir {
            if !self.daemon.config.cache_dir.starts_with(w) {
                info!("mount {relative}: cache work_dir {} noted; this daemon caches in {}", w.display(), self.daemon.config.cache_dir.display());
            }
        }
        self.mount(mp, Some(format!("/{}", relative.trim_start_matches('/'))), source, &config).await
    }

    /// `DELETE /api/v1/mount?mountpoint=/<id>`.
    pub async fn shared_umount(&self, relative: &str) -> Result<()> {
        let _op = self.ops.lock().await;
        let mp = crate::frontend::mount_key(&self.shared_mountpoint(relative)?);
        if !self.records.lock().expect("records").contains_key(&mp) {
            bail!("{relative} is not mounted by this daemon");
        }
        self.daemon.umount(&mp).await?;
        self.records.lock().expect("records").remove(&mp);
        if let Err(e) = self.persist() {
            warn!("saving the mount list after umount: {e:#}");
        }
        let _ = std::fs::remove_dir(&mp);
        info!("unmounted {}", mp.display());
        Ok(())
    }

    pub fn records(&self) -> Vec<MountRecord> {
        self.records.lock().expect("records").values().cloned().collect()
    }

    /// State bytes for `sendfd` (no backend: it may hold credentials).
    fn failover_state(&self) -> Vec<u8> {
        let mounts: Vec<Value> = self
            .records()
            .iter()
            .map(|r| serde_json::json!({"mountpoint": r.mountpoint, "relative": r.relative, "bootstrap": r.bootstrap, "image_id": r.image_id}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"erofsd_failover": 1, "driver": "fanotify", "mounts": mounts})).unwrap_or_default()
    }

    /// `PUT /api/v1/daemon/fuse/sendfd`: the fanotify group and the mount list to the
    /// snapshotter's supervisor. Our own supervisor holds the group too; this second holder
    /// keeps it open (readers wait, never see zeros) even if both of our processes die.
    pub async fn sendfd(&self) -> Result<()> {
        let Some(sup) = self.opts.common.supervisor.clone() else { bail!("no --supervisor socket was given") };
        let state = self.failover_state();
        let fe = self.fanotify.clone();
        let mounts = self.records.lock().expect("records").len();
        tokio::task::spawn_blocking(move || super::failover::send(&sup, &state, fe.group_fd())).await??;
        info!("sendfd: the fanotify group and {mounts} mount record(s) to the supervisor");
        Ok(())
    }
}

/// Detaches whatever is mounted at `mountpoint` that this daemon does not serve: a mount left
/// by a daemon that died with its whole process tree (the snapshotter clears only the mount
/// *root* of a dead shared daemon). Mounting over it would hide it and leak it. Processes still
/// using it keep it (a lazy detach); it only leaves the mount table.
fn detach_stale(mountpoint: &Path) -> Result<()> {
    for _ in 0..64 {
        let Some(fstype) = fanotify::sysmount::mount_type(mountpoint) else { return Ok(()) };
        warn!("{}: detaching a stale {fstype} mount this daemon does not serve (left by a daemon that died)", mountpoint.display());
        nix::mount::umount2(mountpoint, nix::mount::MntFlags::MNT_DETACH).with_context(|| format!("detaching the stale mount at {}", mountpoint.display()))?;
    }
    bail!("{}: still a mount point after 64 detaches", mountpoint.display())
}

/// The worker: starts the fanotify front-end (re-adopting the mounts a killed predecessor left),
/// mounts the dedicated image, serves the nydusd API until SIGTERM or `exit`.
pub fn run(opts: Fuse) -> Result<()> {
    for f in &opts.common.ignored {
        warn!("nydusd flag ignored: {f}");
    }
    if opts.common.upgrade {
        bail!("--upgrade (hot upgrade by takeover) is not supported in fuse mode yet: the running daemon keeps serving; restart it instead (docs/nydus.md)");
    }
    let nydusd_config = match &opts.config {
        Some(p) => Some(NydusdConfig::from_file(p)?),
        None => None,
    };
    let cache_dir = cache_dir(&opts, nydusd_config.as_ref());
    let mut config = Config {
        frontend: crate::frontend::FrontendKind::Fanotify,
        cache_dir: cache_dir.clone(),
        api_socket: opts.common.apisock.clone(),
        ..Config::default()
    };
    // One trace per image for every daemon of this work dir: a dedicated daemon's own cache
    // directory goes with it, and the next container of the image gets a new daemon.
    config.prefetch.trace_dir = cache_dir.parent().map(|p| p.join("traces"));
    if let Some(c) = &nydusd_config {
        config.prefetch.mode = c.prefetch;
        config.prefetch.bandwidth = ByteSize(c.prefetch_bandwidth);
        if let Some(n) = c.prefetch_in_flight {
            config.prefetch.max_in_flight = n;
        }
    }
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("creating {}", cache_dir.display()))?;
    let _cache_lock = crate::cache::open_for_daemon(&cache_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("nydusd").build()?;
    rt.block_on(async move {
        // First: a socket we cannot bind is a failed start, before anything is parked.
        let (listener, adopted) = api_listener(&opts.common.apisock)?;
        let filler = crate::daemon::make_filler(&config);
        let saved: Vec<MountRecord> = persist::load(&persist::mounts_path(&cache_dir)).unwrap_or_else(|e| {
            warn!("{e:#}; mounts left by a previous worker are re-adopted without their backends");
            Vec::new()
        });
        let loader = |m: &fanotify::state::SavedMount, images: &ImageStore| -> Result<Arc<Image>> {
            let rec = saved.iter().find(|r| r.mountpoint == m.mountpoint);
            load_with(images, &m.image, rec.and_then(|r| r.backend.as_ref()))
        };
        let successor = take_over_group(&opts, &saved);
        let fanotify = FanotifyFrontend::start(&config, filler.clone(), Some(&loader))?;
        let daemon = Daemon::new(config, filler, fanotify.clone());
        // The mount list keeps only what the front-end re-adopted (a fresh group: nothing).
        let live: BTreeMap<PathBuf, MountRecord> = daemon
            .mounts()
            .into_iter()
            .filter_map(|m| saved.iter().find(|r| r.mountpoint == m.mountpoint).map(|r| (m.mountpoint.clone(), r.clone())))
            .collect();
        if !live.is_empty() {
            info!("re-adopted {} mount(s) of a previous worker", live.len());
        }
        let fd = Arc::new(FuseDaemon {
            opts,
            nydusd_config,
            daemon,
            fanotify,
            state: StateCell::default(),
            records: Mutex::new(live),
            ops: tokio::sync::Mutex::new(()),
            exit: tokio::sync::Notify::new(),
        });
        fd.persist()?;
        if let (Some(boot), Some(c)) = (fd.opts.bootstrap.clone(), fd.nydusd_config.clone()) {
            let mp = crate::frontend::mount_key(&fd.opts.mountpoint);
            if fd.records.lock().expect("records").contains_key(&mp) {
                info!("{} is still served (re-adopted)", mp.display());
            } else {
                fd.mount(fd.opts.mountpoint.clone(), None, &boot, &c).await?;
            }
        } else {
            std::fs::create_dir_all(&fd.opts.mountpoint).with_context(|| format!("creating {}", fd.opts.mountpoint.display()))?;
        }
        // A failover successor says INIT until the snapshotter's takeover and start, as nydusd
        // does; it serves the re-adopted mounts from here on either way.
        fd.state.set(if successor { State::Init } else { State::Running });
        // Parked only now: a worker that failed before this point failed to start (the
        // supervisor does not restart it in a loop over a bad socket path).
        if let Err(e) = crate::daemon::supervisor::fd_store().lock().expect("fd store").store(LISTENER_FD_NAME, std::os::fd::AsFd::as_fd(&listener)) {
            warn!("parking the api listener: {e}");
        }
        info!(
            "nydusd (erofsd {}) fuse mode served by kernel EROFS through fanotify; {} on {}; cache {}",
            env!("CARGO_PKG_VERSION"),
            fd.state.get().name(),
            fd.opts.common.apisock.display(),
            fd.daemon.config.cache_dir.display()
        );
        let api = tokio::spawn(crate::daemon::api::serve_http_with(listener, adopted, true, fd.clone(), super::api::handle_fuse));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: unmounting and exiting"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: unmounting and exiting"),
            _ = fd.exit.notified() => info!("exit requested over the API"),
        }
        crate::daemon::supervisor::fd_store().lock().expect("fd store").stopping();
        api.abort();
        // nydusd unmounts on SIGTERM: the snapshotter stops a daemon when its image goes.
        fd.daemon.frontend.shutdown().await;
        let left: Vec<MountRecord> = fd.records().into_iter().filter(|r| fanotify::sysmount::is_erofs_mount(&r.mountpoint)).collect();
        let _ = persist::save(&persist::mounts_path(&fd.daemon.config.cache_dir), &left);
        for r in fd.records() {
            if r.relative.is_some() {
                let _ = std::fs::remove_dir(&r.mountpoint);
            }
        }
        let _ = std::fs::remove_file(&fd.opts.common.apisock);
        // A dedicated daemon is stopped when its image goes: its cache directory goes with it
        // (the snapshotter's cache GC only knows its own file names), unless a mount had to be
        // left detached and its readers may still need the cache files.
        if fd.opts.bootstrap.is_some() && left.is_empty() {
            let dir = &fd.daemon.config.cache_dir;
            match std::fs::remove_dir_all(dir) {
                Ok(()) => info!("removed this daemon's cache {}", dir.display()),
                Err(e) => warn!("removing this daemon's cache {}: {e}", dir.display()),
            }
        }
        Ok(())
    })
}

/// Failover after the whole daemon died (supervisor and worker at once, `recover_policy =
/// "failover"`): nothing of ours holds the fanotify group any more, but the snapshotter does
/// (`sendfd` gave it a copy), and its supervisor socket hands it to the daemon it starts next,
/// before it sends `takeover`. When the kernel still has mounts this daemon recorded and no
/// holder of ours gave the group back, fetch it from `--supervisor` (retrying for
/// [`TAKEOVER_WAIT`]) and give it to the front-end as a restart's group: the mounts are
/// re-adopted and their readers, waiting on the group since the crash, are answered. Returns
/// whether the group came that way.
fn take_over_group(opts: &Fuse, saved: &[MountRecord]) -> bool {
    let Some(sock) = &opts.common.supervisor else { return false };
    if crate::daemon::supervisor::fd_store().lock().expect("fd store").holds(fanotify::GROUP_FD_NAME) {
        return false; // our own holder gave it back: a worker restart
    }
    let live: Vec<&MountRecord> = saved.iter().filter(|r| fanotify::sysmount::is_erofs_mount(&r.mountpoint)).collect();
    if live.is_empty() {
        return false;
    }
    let deadline = std::time::Instant::now() + TAKEOVER_WAIT;
    let (_, group) = loop {
        match super::failover::receive(sock) {
            Ok(got) => break got,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::debug!("takeover: {e:#}; retrying");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => {
                warn!("takeover: {} mount(s) of a dead daemon remain, but the supervisor gave no group back: {e:#}; starting with a new group", live.len());
                return false;
            }
        }
    };
    let link = std::fs::read_link(format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&group))).unwrap_or_default();
    if link.as_os_str() != "anon_inode:[fanotify]" {
        warn!("takeover: the supervisor's fd is {}, not a fanotify group; starting with a new group", link.display());
        return false;
    }
    let mut store = crate::daemon::supervisor::fd_store().lock().expect("fd store");
    if let Err(e) = store.store(fanotify::GROUP_FD_NAME, std::os::fd::AsFd::as_fd(&group)) {
        warn!("parking the taken-over fanotify group: {e}");
    }
    store.inherit(fanotify::GROUP_FD_NAME, group);
    info!("takeover: the fanotify group of a dead daemon, from the supervisor {}, for {} live mount(s)", sock.display(), live.len());
    true
}

/// How long a failover successor tries the snapshotter's supervisor socket (the snapshotter
/// listens there for 10 s from just before it starts us).
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(8);

/// The API listener: the one a killed predecessor parked (with the connections it had open),
/// else a new one (parked once the worker is RUNNING).
fn api_listener(path: &Path) -> Result<(tokio::net::UnixListener, Vec<(String, std::os::fd::OwnedFd)>)> {
    let mut store = crate::daemon::supervisor::fd_store().lock().expect("fd store");
    let adopted = store.take_prefixed(crate::daemon::api::PARKED_CONN_PREFIX);
    if let Some(fd) = store.take(LISTENER_FD_NAME) {
        let l = std::os::unix::net::UnixListener::from(fd);
        l.set_nonblocking(true)?;
        if path.exists() {
            info!("api: the listener and {} open connection(s) handed back by the supervisor", adopted.len());
            return Ok((tokio::net::UnixListener::from_std(l)?, adopted));
        }
        warn!("api: {} is gone: binding a new socket", path.display());
    }
    drop(store);
    Ok((crate::daemon::api::bind(path)?, adopted))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nydusd_configs_map_onto_backend_cache_dir_and_prefetch() {
        // The snapshotter's fusedev reference config, filled the way it fills it.
        let c = NydusdConfig::from_json(
            br#"{"device":{"backend":{"type":"registry","config":{"host":"127.0.0.1:5000","repo":"a/b","scheme":"http","timeout":5}},
                 "cache":{"type":"blobcache","config":{"work_dir":"/r/cache"}}},
                 "mode":"direct","digest_validate":false,"enable_xattr":true,
                 "fs_prefetch":{"enable":true,"threads_count":8,"merging_size":1048576,"prefetch_all":true}}"#,
        )
        .unwrap();
        let b = c.backend.clone().unwrap();
        assert_eq!((b.kind.as_str(), b.config["repo"].as_str()), ("registry", Some("a/b")));
        assert_eq!(c.work_dir, Some(PathBuf::from("/r/cache")));
        assert_eq!(c.prefetch, PrefetchMode::TraceBlobs);
        assert_eq!(c.prefetch_in_flight, Some(8));
        let c = NydusdConfig::from_json(br#"{"device":{"backend":{"type":"localfs","config":{"dir":"/b"}}},"fs_prefetch":{"enable":false}}"#).unwrap();
        assert_eq!(c.backend.unwrap().kind, "localfs");
        assert_eq!((c.work_dir, c.prefetch), (None, PrefetchMode::None));
        // v2 layout.
        let c = NydusdConfig::from_json(br#"{"version":2,"backend":{"type":"localfs","localfs":{"dir":"/b"}},"cache":{"type":"filecache","filecache":{"work_dir":"/w"}}}"#).unwrap();
        assert_eq!(c.backend.unwrap().config["dir"].as_str(), Some("/b"));
        assert_eq!(c.work_dir, Some(PathBuf::from("/w")));
        assert!(NydusdConfig::from_json(b"[]").is_err());
        assert!(NydusdConfig::from_json(br#"{"device":{"backend":{}}}"#).is_err());
    }

    #[test]
    fn each_daemon_caches_in_a_directory_of_its_own() {
        let opts = |mp: &str, boot: bool, id: Option<&str>, sock: &str| Fuse {
            mountpoint: mp.into(),
            bootstrap: boot.then(|| PathBuf::from("/s/image.boot")),
            common: super::super::cli::Common { apisock: sock.into(), id: id.map(String::from), ..Default::default() },
            ..Fuse::default()
        };
        let cfg = NydusdConfig { work_dir: Some("/r/cache".into()), ..Default::default() };
        assert_eq!(cache_dir(&opts("/r/mnt/d1", true, Some("d1"), "/r/socket/d1/api.sock"), Some(&cfg)), PathBuf::from("/r/cache/erofsd/d1"));
        // Shared, no config: the snapshotter's layout.
        let shared = cache_dir(&opts("/r/mnt", false, None, "/r/socket/s/api.sock"), None);
        assert!(shared.starts_with("/r/cache/erofsd/"), "{}", shared.display());
        assert_eq!(shared, cache_dir(&opts("/r/mnt", false, None, "/r/socket/s/api.sock"), None), "stable across restarts");
        assert_ne!(shared, cache_dir(&opts("/r/mnt", false, None, "/r/socket/t/api.sock"), None));
        // Elsewhere: beside the API socket; an id that is not a plain name is hashed.
        assert!(cache_dir(&opts("/x/m", false, Some("../x"), "/y/api.sock"), None).starts_with("/y/cache/erofsd/"));
    }
}
