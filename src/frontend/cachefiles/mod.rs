//! The cachefiles front-end: EROFS over fscache, served through /dev/cachefiles on-demand mode.
//!
//! * [`start`] — open the device, `dir`, `tag`, `bind ondemand` (or, after a crash, take the
//!   device back from the fd holder, re-register the saved mounts and write `restore`);
//! * [`registry`] — which image answers which OPEN keys, persisted for a successor;
//! * [`objects`] — open cache objects by object_id;
//! * [`serve`] — OPEN / READ / CLOSE handling;
//! * [`reader`] — the edge-triggered reader thread;
//! * [`sysmount`] — mount(2) / umount2(2);
//! * [`metrics`], [`probe`].
//!
//! Protocol facts: docs/protocols/cachefiles.md; user guide: docs/cachefiles.md.

pub mod bootstrap;
pub mod metrics;
pub mod objects;
pub mod prefetch;
pub mod probe;
pub mod reader;
pub mod registry;
pub mod serve;
pub mod sysmount;
#[cfg(test)]
mod tests;

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use cachefiles::{Command, Device, DEVICE_PATH};
use tracing::{info, warn};

use super::{Frontend, MountInfo, MountRequest};
use crate::core::fill::Filler;
use crate::core::images::{Image, ImageStore};
use crate::core::source::BoxFuture;
use crate::daemon::config::Config;
use crate::daemon::supervisor::fd_store;
use registry::{check_name, Registration, Registry};
use serve::Shared;

pub use probe::probe;

/// Name of the device fd parked with the fd holder (supervisor or systemd).
pub const FD_NAME: &str = "cachefiles";
/// Cache tag written with `tag` (EROFS accepts any cache; the tag names ours in logs).
pub const CACHE_TAG: &str = "erofsd";
/// Backing-filesystem magic numbers cachefiles refuses (no sync_fs / O_TMPFILE / xattrs).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

pub struct CachefilesFrontend {
    shared: Arc<Shared>,
    reader: Mutex<Option<(std::thread::JoinHandle<()>, reader::StopHandle)>>,
    recovered: Vec<(MountInfo, Arc<Image>)>,
    prefetch: crate::core::prefetch::Prefetchers,
    prefetch_config: crate::core::prefetch::PrefetchConfig,
    cache_dir: PathBuf,
}

/// The cache directory cachefiles is bound to, and the state file, under `config.cache_dir`.
pub fn cache_paths(config: &Config) -> (PathBuf, PathBuf) {
    (config.cache_dir.join("cachefiles"), config.cache_dir.join("state").join("cachefiles-mounts.json"))
}

fn check_backing_fs(dir: &Path) -> Result<()> {
    let st = nix::sys::statfs::statfs(dir).with_context(|| format!("statfs {}", dir.display()))?;
    let magic = st.filesystem_type().0 as i64;
    if magic == TMPFS_MAGIC || magic == RAMFS_MAGIC {
        bail!(
            "cache directory {} is on tmpfs/ramfs, which cachefiles refuses (no sync_fs, O_TMPFILE or user xattrs): use a directory on ext4 or xfs",
            dir.display()
        );
    }
    Ok(())
}

/// Starts the front-end: takes the kernel channel and serves it on the current tokio runtime.
pub fn start(config: &Config, filler: Filler) -> Result<Arc<dyn Frontend>> {
    Ok(start_cachefiles(config, filler)?)
}

/// [`start`], keeping the concrete type (the nydusd surface binds images without mounting them).
pub fn start_cachefiles(config: &Config, filler: Filler) -> Result<Arc<CachefilesFrontend>> {
    start_cachefiles_with(config, filler, None)
}

/// How a successor reloads a saved registration's image (default: `ImageStore::load_dir` on
/// its path). The nydusd surface passes one that rebuilds each bind's blob backend.
pub type ImageLoader<'a> = &'a (dyn Fn(&registry::Saved, &ImageStore) -> Result<Arc<Image>> + Sync);

/// [`start_cachefiles`] with the image loader used for recovered registrations.
pub fn start_cachefiles_with(config: &Config, filler: Filler, loader: Option<ImageLoader<'_>>) -> Result<Arc<CachefilesFrontend>> {
    let (dir, state_path) = cache_paths(config);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating cache directory {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    check_backing_fs(&dir)?;

    let (device, inherited) = {
        let mut store = fd_store().lock().expect("fd store");
        match store.take(FD_NAME) {
            Some(fd) => {
                info!("cachefiles: took /dev/cachefiles back from the {}", store.describe());
                (Device::from(fd), true)
            }
            None => {
                let dev = Device::open().map_err(|e| {
                    // EBUSY: say who holds it (a stray daemon, cachefilesd), as `erofsd doctor` does.
                    let holders = if e.errno() == Some(libc::EBUSY) { probe::holders_of(Path::new(DEVICE_PATH)) } else { Vec::new() };
                    if holders.is_empty() {
                        anyhow::anyhow!("{e}")
                    } else {
                        anyhow::anyhow!("{e}; it is open in {}", probe::describe_holders(&holders))
                    }
                })?;
                dev.send(&Command::dir(&dir)).context("cachefiles `dir`")?;
                dev.send(&Command::Tag(CACHE_TAG.into())).context("cachefiles `tag`")?;
                dev.send(&Command::BindOndemand).context("cachefiles `bind ondemand`")?;
                if store.has_holder() {
                    if let Err(e) = store.store(FD_NAME, dev.as_fd()) {
                        warn!("cachefiles: parking the device fd with the {}: {e}; a crash will fail all mounts", store.describe());
                    }
                } else {
                    warn!("cachefiles: no fd holder (`erofsd daemon` runs a supervisor unless --unsafe-no-supervisor; nydusd relies on the snapshotter's --supervisor): if this process dies, its mounts fail until remounted");
                }
                (dev, false)
            }
        }
    };

    let registry = Registry::new(state_path.clone());
    let mut recovered = Vec::new();
    let saved = Registry::load_saved(&state_path).unwrap_or_else(|e| {
        warn!("cachefiles: ignoring unreadable state: {e:#}");
        Vec::new()
    });
    if inherited {
        // Our predecessor died; its mounts live on. Re-register them, then let the kernel
        // re-send what was pending (`restore`): it re-OPENs every object whose fd died.
        let images = ImageStore::new();
        for s in saved {
            let loaded = match loader {
                Some(load) => load(&s, &images),
                None => images.load_dir(&s.image),
            };
            let image = match loaded {
                Ok(i) => i,
                Err(e) => {
                    warn!("cachefiles: cannot reload image {} for {}: {e:#}", s.image.display(), s.mountpoint.display());
                    continue;
                }
            };
            if image.id != s.image_id {
                warn!("cachefiles: image {} changed since it was mounted at {}; not serving it", s.image.display(), s.mountpoint.display());
                continue;
            }
            let info = MountInfo {
                mountpoint: s.mountpoint.clone(),
                image: s.image.clone(),
                image_id: image.id.clone(),
                fsid: s.fsid.clone(),
                domain_id: s.domain_id.clone(),
                frontend: "cachefiles".into(),
            };
            match Registration::new(s.fsid, s.domain_id, image.clone(), s.image, s.mountpoint).and_then(|r| registry.add(r)) {
                Ok(_) => recovered.push((info, image)),
                Err(e) => warn!("cachefiles: state entry skipped: {e:#}"),
            }
        }
        info!("cachefiles: recovered {} mount(s)", recovered.len());
    } else if !saved.is_empty() {
        warn!(
            "cachefiles: {} mount(s) of a previous daemon are lost (the device was closed): unmount them: {}",
            saved.len(),
            saved.iter().map(|s| s.mountpoint.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    registry.persist()?;

    let shared = Arc::new(Shared {
        device,
        registry,
        objects: Default::default(),
        filler,
        metrics: Default::default(),
        rt: tokio::runtime::Handle::current(),
    });
    if inherited {
        match shared.device.send(&Command::Restore) {
            Ok(()) => info!("cachefiles: restore written; pending requests are re-sent"),
            Err(e) => warn!("cachefiles: {e}: reads of the previous daemon's mounts will fail with EIO"),
        }
    }
    let (handle, stop) = reader::spawn(shared.clone()).context("starting the cachefiles reader")?;
    info!("cachefiles: bound on-demand cache at {}", dir.display());
    Ok(Arc::new(CachefilesFrontend {
        shared,
        reader: Mutex::new(Some((handle, stop))),
        recovered,
        prefetch: Default::default(),
        prefetch_config: config.prefetch.clone(),
        cache_dir: config.cache_dir.clone(),
    }))
}

impl CachefilesFrontend {
    /// Registers `image` under `fsid` (and `domain_id`) *without* mounting it: for callers that
    /// mount by themselves (nydus-snapshotter). `key` stands in for the mountpoint in the
    /// registry and its state file; [`CachefilesFrontend::unbind`] takes the same key.
    pub fn bind(&self, key: PathBuf, fsid: &str, domain_id: Option<&str>, image: Arc<Image>, image_path: PathBuf) -> Result<()> {
        check_name("fsid", fsid)?;
        if let Some(d) = domain_id {
            check_name("domain_id", d)?;
        }
        let reg = self.shared.registry.add(Registration::new(fsid.into(), domain_id.map(Into::into), image, image_path, key)?)?;
        if let Err(e) = self.shared.registry.persist() {
            self.shared.registry.remove(&reg.mountpoint);
            return Err(e);
        }
        Ok(())
    }

    /// Drops a [`CachefilesFrontend::bind`] registration; objects already open stay served.
    pub fn unbind(&self, key: &Path) -> Result<bool> {
        let found = self.shared.registry.remove(key).is_some();
        self.shared.registry.persist()?;
        Ok(found)
    }

    /// The /dev/cachefiles fd (handed to a failover supervisor).
    pub fn device_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.shared.device.as_fd()
    }

    async fn do_mount(&self, image: Arc<Image>, req: MountRequest) -> Result<MountInfo> {
        let fsid = req.fsid.clone().unwrap_or_else(|| image.id.clone());
        check_name("fsid", &fsid)?;
        if let Some(d) = &req.domain_id {
            check_name("domain_id", d)?;
        }
        // A blob that cannot be read is a clear error now rather than EIO at some later read.
        for b in &image.blobs {
            if let Err(e) = b.source.read_range(&b.id, 0, 0).await {
                bail!("blob {} is not available from {}: {e}", b.id, b.source.describe());
            }
        }
        let reg = self.shared.registry.add(Registration::new(
            fsid.clone(),
            req.domain_id.clone(),
            image.clone(),
            req.image.clone(),
            req.mountpoint.clone(),
        )?)?;
        if let Err(e) = self.shared.registry.persist() {
            self.shared.registry.remove(&reg.mountpoint);
            return Err(e);
        }
        let opts = match &req.domain_id {
            Some(d) => format!("fsid={fsid},domain_id={d}"),
            None => format!("fsid={fsid}"),
        };
        let mp = req.mountpoint.clone();
        let o = opts.clone();
        let r = tokio::task::spawn_blocking(move || sysmount::mount_fscache(&mp, &o)).await?;
        if let Err(e) = r {
            self.shared.registry.remove(&req.mountpoint);
            let _ = self.shared.registry.persist();
            return Err(e);
        }
        let pf = req.prefetch_config(&self.prefetch_config);
        self.prefetch.insert(&req.mountpoint, prefetch::start(&self.shared, &self.cache_dir, &image, &req.image, &pf));
        Ok(MountInfo {
            mountpoint: req.mountpoint,
            image: req.image,
            image_id: image.id.clone(),
            fsid,
            domain_id: req.domain_id,
            frontend: "cachefiles".into(),
        })
    }

    async fn do_umount(&self, mountpoint: PathBuf) -> Result<()> {
        if self.shared.registry.get(&mountpoint).is_none() {
            bail!("{} is not served by the cachefiles front-end", mountpoint.display());
        }
        let mp = mountpoint.clone();
        tokio::task::spawn_blocking(move || sysmount::umount(&mp, false)).await??;
        self.prefetch.stop(&mountpoint);
        // umount(2) returned, so the kernel has sent (and we read) the bootstrap's CLOSE.
        self.shared.registry.remove(&mountpoint);
        self.shared.registry.persist()?;
        Ok(())
    }

    async fn do_shutdown(&self) {
        self.prefetch.stop_all();
        for reg in self.shared.registry.all() {
            let mp = reg.mountpoint.clone();
            match tokio::task::spawn_blocking(move || sysmount::umount(&mp, true)).await {
                Ok(Ok(())) => info!("unmounted {}", reg.mountpoint.display()),
                Ok(Err(e)) => warn!("{e:#}"),
                Err(e) => warn!("umount task: {e}"),
            }
            self.shared.registry.remove(&reg.mountpoint);
        }
        if let Err(e) = self.shared.registry.persist() {
            warn!("cachefiles: {e:#}");
        }
        // Nothing is mounted any more: the holder may let the device go with us.
        if let Err(e) = fd_store().lock().expect("fd store").remove(FD_NAME) {
            warn!("cachefiles: releasing the parked device fd: {e}");
        }
        let reader = self.reader.lock().expect("reader").take();
        if let Some((handle, stop)) = reader {
            stop.stop();
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        self.shared.objects.clear();
    }
}

impl Frontend for CachefilesFrontend {
    fn name(&self) -> &'static str {
        "cachefiles"
    }

    fn mount(&self, image: Arc<Image>, req: MountRequest) -> BoxFuture<'_, Result<MountInfo>> {
        Box::pin(self.do_mount(image, req))
    }

    fn umount(&self, mountpoint: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.do_umount(mountpoint))
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.do_shutdown())
    }

    fn metrics(&self) -> serde_json::Value {
        let mut j = self.shared.metrics.to_json();
        j["objects"] = self.shared.objects.len().into();
        j["mounts"] = self.shared.registry.all().len().into();
        j["prefetch"] = self.prefetch.json();
        j
    }

    fn recovered(&self) -> Vec<(MountInfo, Arc<Image>)> {
        self.recovered.clone()
    }

    /// Asks the kernel (`inuse`): an object is in use while any mount has it open.
    fn cache_in_use(&self, cache_dir: &Path, entry: &crate::cache::CacheEntry) -> bool {
        match entry.kind {
            crate::cache::EntryKind::CachefilesObject => crate::cache::cull::inuse(&self.shared.device, cache_dir, entry)
                .unwrap_or_else(|e| {
                    warn!("cachefiles: {e:#}; treating {} as in use", entry.path.display());
                    true
                }),
            // fanotify blob files of an earlier daemon: nothing of ours reads them.
            crate::cache::EntryKind::FanotifyBlob => false,
        }
    }

    /// One thread asks about every object (cwd set once per fanout directory).
    fn cache_in_use_all(&self, cache_dir: &Path, entries: &mut [crate::cache::CacheEntry]) {
        let objects: Vec<usize> =
            (0..entries.len()).filter(|&i| entries[i].kind == crate::cache::EntryKind::CachefilesObject).collect();
        let batch: Vec<crate::cache::CacheEntry> = objects.iter().map(|&i| entries[i].clone()).collect();
        let answers = crate::cache::cull::inuse_all(&self.shared.device, cache_dir, &batch);
        for (&i, r) in objects.iter().zip(answers) {
            entries[i].in_use = r.unwrap_or_else(|e| {
                warn!("cachefiles: {e:#}; treating {} as in use", entries[i].path.display());
                true
            });
        }
        for e in entries.iter_mut().filter(|e| e.kind != crate::cache::EntryKind::CachefilesObject) {
            e.in_use = self.cache_in_use(cache_dir, e);
        }
    }

    /// `cull` (the kernel refuses with EBUSY if the object is in use, atomically).
    fn cache_evict(&self, cache_dir: &Path, entry: &crate::cache::CacheEntry) -> Result<bool> {
        match entry.kind {
            crate::cache::EntryKind::CachefilesObject => crate::cache::cull::cull(&self.shared.device, cache_dir, entry),
            crate::cache::EntryKind::FanotifyBlob => crate::cache::unlink_below(cache_dir, &entry.path),
        }
    }
}
