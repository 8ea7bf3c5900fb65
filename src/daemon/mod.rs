//! The daemon: one fetch core, one kernel front-end, one control socket.
//!
//! [`run`] loads the configuration, starts the chosen front-end, serves the API until SIGTERM
//! or SIGINT, then shuts the front-end down (which unmounts what it mounted) before exiting.

pub mod api;
pub mod client;
pub mod config;
pub mod supervisor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::sync::atomic::Ordering;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tracing::info;

use crate::core::fill::Filler;
use crate::core::images::ImageStore;
use crate::core::writer::Writer;
use crate::frontend::{mount_key, Frontend, MountInfo, MountRequest};
use config::Config;

/// The daemon's shared state, handed to the API and the front-end.
pub struct Daemon {
    pub config: Config,
    pub images: ImageStore,
    pub filler: Filler,
    pub frontend: Arc<dyn Frontend>,
    mounts: Mutex<BTreeMap<PathBuf, (MountInfo, Arc<crate::core::images::Image>)>>,
    /// One cache gc pass at a time (API, periodic, after umount).
    cache_gc: tokio::sync::Mutex<()>,
}

/// The front-end as the cache gc sees it.
struct FrontendEvictor<'a> {
    frontend: &'a dyn Frontend,
    cache_dir: &'a Path,
}

impl crate::cache::gc::Evictor for FrontendEvictor<'_> {
    fn in_use(&self, e: &crate::cache::CacheEntry) -> bool {
        self.frontend.cache_in_use(self.cache_dir, e)
    }
    fn in_use_all(&self, entries: &mut [crate::cache::CacheEntry]) {
        self.frontend.cache_in_use_all(self.cache_dir, entries)
    }
    fn evict(&self, e: &crate::cache::CacheEntry) -> Result<bool> {
        self.frontend.cache_evict(self.cache_dir, e)
    }
}

#[derive(Serialize)]
pub struct DaemonInfo {
    pub version: &'static str,
    pub state: &'static str,
    pub frontend: &'static str,
    pub cache_dir: PathBuf,
    pub mounts: usize,
    /// The process that serves (the supervisor's child, unless run without one).
    pub pid: u32,
    /// Who keeps the kernel channels open across a crash of this process.
    pub holder: &'static str,
    /// The supervisor's pid, when that is the holder (it changes if it is restarted).
    pub holder_pid: Option<u32>,
}

impl Daemon {
    pub fn new(config: Config, filler: Filler, frontend: Arc<dyn Frontend>) -> Arc<Daemon> {
        let mounts = frontend.recovered().into_iter().map(|(info, image)| (info.mountpoint.clone(), (info, image))).collect();
        Arc::new(Daemon {
            config,
            images: ImageStore::new(),
            filler,
            frontend,
            mounts: Mutex::new(mounts),
            cache_gc: tokio::sync::Mutex::new(()),
        })
    }

    pub fn info(&self) -> DaemonInfo {
        let (holder, holder_pid) = {
            let store = supervisor::fd_store().lock().expect("fd store");
            (store.describe(), store.holder_pid())
        };
        DaemonInfo {
            version: env!("CARGO_PKG_VERSION"),
            state: "RUNNING",
            frontend: self.frontend.name(),
            cache_dir: self.config.cache_dir.clone(),
            mounts: self.mounts.lock().expect("mounts").len(),
            pid: std::process::id(),
            holder,
            holder_pid,
        }
    }

    pub fn mounts(&self) -> Vec<MountInfo> {
        self.mounts.lock().expect("mounts").values().map(|(m, _)| m.clone()).collect()
    }

    pub async fn mount(&self, mut req: MountRequest) -> Result<MountInfo> {
        // Before any pull: a bad mountpoint fails at once.
        self.check_mountpoint(&mut req)?;
        if let Some(r) = &req.reference {
            let parsed = crate::oci::Reference::parse(r)?;
            req.image = crate::oci::pull::pull(&parsed, &self.config.registry, &self.config.cache_dir).await?;
        }
        let image = self.images.load_dir(&req.image).with_context(|| format!("loading image {}", req.image.display()))?;
        self.mount_checked(image, req).await
    }

    /// Mounts an image the caller loaded (its blobs from a source of the caller's choosing).
    pub async fn mount_image(&self, image: Arc<crate::core::images::Image>, mut req: MountRequest) -> Result<MountInfo> {
        self.check_mountpoint(&mut req)?;
        self.mount_checked(image, req).await
    }

    /// The mountpoint must be a directory this daemon does not serve yet; it is made the
    /// canonical key mounts are looked up by.
    fn check_mountpoint(&self, req: &mut MountRequest) -> Result<()> {
        if !req.mountpoint.is_dir() {
            bail!("mountpoint {} is not a directory", req.mountpoint.display());
        }
        req.mountpoint = mount_key(&req.mountpoint);
        if self.mounts.lock().expect("mounts").contains_key(&req.mountpoint) {
            bail!("{} is already served by this daemon", req.mountpoint.display());
        }
        Ok(())
    }

    async fn mount_checked(&self, image: Arc<crate::core::images::Image>, req: MountRequest) -> Result<MountInfo> {
        let info = self.frontend.mount(image.clone(), req).await?;
        self.mounts.lock().expect("mounts").insert(info.mountpoint.clone(), (info.clone(), image));
        Ok(info)
    }

    pub async fn umount(&self, mountpoint: &Path) -> Result<()> {
        let key = mount_key(mountpoint);
        if !self.mounts.lock().expect("mounts").contains_key(&key) {
            bail!("{} is not served by this daemon", mountpoint.display());
        }
        self.frontend.umount(key.clone()).await?;
        self.mounts.lock().expect("mounts").remove(&key);
        // Its blobs may be unused now: the size limit can take them.
        self.cache_gc_if_limited().await;
        Ok(())
    }

    /// `GET /api/v1/cache`: every cached blob with in-use flags from the front-end.
    pub async fn cache_listing(&self) -> Result<crate::cache::Listing> {
        let _one = self.cache_gc.lock().await;
        let ev = FrontendEvictor { frontend: self.frontend.as_ref(), cache_dir: &self.config.cache_dir };
        let entries = tokio::task::block_in_place(|| crate::cache::gc::listing(&self.config.cache_dir, &ev, false))?;
        Ok(crate::cache::Listing {
            cache_dir: self.config.cache_dir.clone(),
            daemon: true,
            max_size: self.config.cache.max_size,
            disk_bytes: entries.iter().map(|e| e.disk_bytes).sum(),
            entries,
        })
    }

    /// `POST /api/v1/cache/gc`, the periodic size check and the check after an umount.
    pub async fn cache_gc(&self, req: crate::cache::gc::GcRequest) -> Result<crate::cache::gc::GcReport> {
        let Some(max) = req.max_size.or(self.config.cache.max_size) else {
            bail!("no cache size limit is configured: give max_size (0 evicts every blob no mount uses)");
        };
        let _one = self.cache_gc.lock().await;
        let ev = FrontendEvictor { frontend: self.frontend.as_ref(), cache_dir: &self.config.cache_dir };
        tokio::task::block_in_place(|| crate::cache::gc::run(&self.config.cache_dir, &ev, max, req.dry_run))
    }

    /// Runs a gc pass if a size limit is configured (errors are logged, not returned).
    pub async fn cache_gc_if_limited(&self) {
        if self.config.cache.max_size.is_some() {
            if let Err(e) = self.cache_gc(Default::default()).await {
                tracing::warn!("cache gc: {e:#}");
            }
        }
    }

    pub fn metrics(&self) -> serde_json::Value {
        let mounts = self.mounts.lock().expect("mounts");
        let mut blobs = serde_json::Map::new();
        for (_, image) in mounts.values() {
            for b in &image.blobs {
                blobs.insert(
                    b.id.clone(),
                    serde_json::json!({
                        "stored_bytes": b.stats.stored_bytes.load(Ordering::Relaxed),
                        "groups": b.stats.groups.load(Ordering::Relaxed),
                        "requests": b.stats.requests.load(Ordering::Relaxed),
                        "errors": b.stats.errors.load(Ordering::Relaxed),
                        "prefetch_groups": b.stats.prefetch_groups.load(Ordering::Relaxed),
                        "prefetch_bytes": b.stats.prefetch_bytes.load(Ordering::Relaxed),
                        "uncompressed_size": b.size(),
                        "stored_size": b.record.stored_size,
                    }),
                );
            }
        }
        serde_json::json!({ "blobs": blobs, "frontend": self.frontend.metrics() })
    }
}

/// Serves until SIGTERM/SIGINT, then shuts the front-end down.
pub async fn serve(daemon: Arc<Daemon>) -> Result<()> {
    let listener = api::bind(&daemon.config.api_socket)?;
    info!(
        "erofsd {} serving with the {} front-end; api {}; cache {}",
        env!("CARGO_PKG_VERSION"),
        daemon.frontend.name(),
        daemon.config.api_socket.display(),
        daemon.config.cache_dir.display()
    );
    let api = tokio::spawn(api::serve(listener, daemon.clone()));
    // The size limit: checked periodically (fills grow blobs between checks) and after umounts.
    let gc = daemon.config.cache.max_size.map(|max| {
        info!("cache size limit {}", crate::cache::size::format_size(max));
        let d = daemon.clone();
        let every = std::time::Duration::from_secs(d.config.cache.gc_interval_secs.max(1));
        tokio::spawn(async move {
            loop {
                d.cache_gc_if_limited().await;
                tokio::time::sleep(every).await;
            }
        })
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => info!("SIGINT: shutting down"),
    }
    supervisor::fd_store().lock().expect("fd store").stopping();
    api.abort();
    if let Some(gc) = gc {
        gc.abort();
    }
    daemon.frontend.shutdown().await;
    let _ = std::fs::remove_file(&daemon.config.api_socket);
    Ok(())
}

/// A writer and filler with the configured limits.
pub fn make_filler(config: &Config) -> Filler {
    Filler::new(Writer::start(), config.max_concurrent_fetches)
}
