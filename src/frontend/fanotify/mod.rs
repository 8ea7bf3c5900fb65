//! The fanotify front-end (Linux 6.14+ pre-content events on file-backed EROFS mounts).
//!
//! Each image is mounted (new mount API, [`sysmount`]) from its bootstrap file, with each blob
//! given as a `device`, `<cache>/blobs/<id>`: a sparse cache file marked `FAN_PRE_ACCESS`.
//! When EROFS reads a range of a cache file, the kernel holds the reader and sends us an event;
//! we fill the range from the blob source (the core's [`Filler`]) and answer ALLOW, or EIO on
//! failure.
//!
//! * [`probe`] — can this machine do it (tries a real group and mark in the cache dir);
//! * [`cache`] — cache files, marks, write fds, (dev, ino) → blob;
//! * [`listener`] — the event thread and the fill tasks;
//! * [`journal`] — events taken but not answered, for a restarted worker;
//! * [`state`] — the mount table a restarted worker re-adopts;
//! * [`sysmount`] — fsopen/fsconfig/fsmount/move_mount (mount(2) without them), umount2(2);
//! * [`metrics`] — counters.
//!
//! Crash safety (docs/fanotify.md): the group fd and the write fds are parked with the holder
//! (the supervisor `erofsd daemon` runs by default); a restarted worker takes them back,
//! answers the journaled events, denies any other orphan, then serves. Shutdown unmounts
//! before the group is released.

pub mod cache;
pub mod failsafe;
pub mod journal;
pub mod listener;
pub mod metrics;
pub mod prefetch;
pub mod probe;
pub mod state;
pub mod sysmount;

use std::collections::BTreeMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fanotify::{Group, FAN_CLASS_PRE_CONTENT, FAN_CLOEXEC, FAN_NONBLOCK, FAN_UNLIMITED_QUEUE};
use tracing::{error, info, warn};

use super::{Frontend, MountInfo, MountRequest, Support};
use crate::core::fill::Filler;
use crate::core::images::{Image, ImageStore};
use crate::core::source::BoxFuture;
use crate::daemon::config::Config;
use crate::daemon::supervisor::fd_store;
use cache::Registry;
use listener::Server;
use metrics::Metrics;
use state::SavedMount;
use sysmount::Unmounted;

/// Name of the group fd parked with the holder.
pub const GROUP_FD_NAME: &str = "fanotify-group";
/// How long shutdown and umount wait for a busy mount before detaching it.
const UMOUNT_PATIENCE: Duration = Duration::from_secs(5);

struct Served {
    info: MountInfo,
    image: Arc<Image>,
}

pub struct FanotifyFrontend {
    server: Arc<Server>,
    mounts: Mutex<BTreeMap<PathBuf, Served>>,
    state_path: PathBuf,
    listener: Mutex<Option<(std::thread::JoinHandle<()>, OwnedFd)>>,
    recovered: Vec<(MountInfo, Arc<Image>)>,
    /// Mounts detached lazily at shutdown whose blobs could not be completed.
    detached: Mutex<Vec<SavedMount>>,
    prefetch: crate::core::prefetch::Prefetchers,
    prefetch_config: crate::core::prefetch::PrefetchConfig,
    cache_dir: PathBuf,
}

/// Whether this kernel and machine can run the front-end, in plain words.
pub fn probe() -> Support {
    probe::probe()
}

fn new_group() -> Result<Group> {
    // Unlimited queue: an overflow would make the kernel allow the dropped access (zeros).
    Group::init(
        FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE,
        libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC,
    )
    .context("creating the fanotify pre-content group")
}

fn eventfd() -> Result<OwnedFd> {
    // SAFETY: eventfd returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        bail!("eventfd: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Starts the front-end: takes the kernel channel and serves it on the current tokio runtime.
pub fn start(config: &Config, filler: Filler) -> Result<Arc<dyn Frontend>> {
    Ok(FanotifyFrontend::start(config, filler, None)?)
}

/// Reloads the image of a mount a previous worker made, when its blobs do not come from a
/// `blobs/` directory beside its bootstrap (the caller knows where they come from).
pub type Loader<'a> = dyn Fn(&SavedMount, &ImageStore) -> Result<Arc<Image>> + 'a;

impl FanotifyFrontend {
    /// Starts serving; after a restart under the same group, re-adopts the mounts the kernel
    /// kept, loading each image with `loader` (default: `blobs/` beside the bootstrap).
    pub fn start(config: &Config, filler: Filler, loader: Option<&Loader<'_>>) -> Result<Arc<FanotifyFrontend>> {
        let support = probe::probe_in(&config.cache_dir);
        if !support.usable {
            bail!("the fanotify front-end cannot run here: {}", support.details.join("; "));
        }
        let state_dir = config.cache_dir.join("fanotify");
        std::fs::create_dir_all(&state_dir).with_context(|| format!("creating {}", state_dir.display()))?;
        let state_path = state_dir.join("mounts.json");

        let (group, restarted) = {
            let mut store = fd_store().lock().expect("fd store");
            match store.take(GROUP_FD_NAME) {
                Some(fd) => {
                    info!("fanotify: took the group back from the {} (restart)", store.describe());
                    (Group::from(fd), true)
                }
                None => {
                    let g = new_group()?;
                    if let Err(e) = store.store(GROUP_FD_NAME, g.as_fd()) {
                        warn!("parking the fanotify group with the holder: {e}");
                    }
                    if !store.has_holder() {
                        warn!("fanotify: NO FD HOLDER: if this process dies, the group closes, the kernel allows every pending and later read, and unfilled ranges of the mounted images read as ZEROS with no error (run `erofsd daemon` without --unsafe-no-supervisor)");
                    }
                    (g, false)
                }
            }
        };
        let group = Arc::new(group);
        let (journal, left, high_fd) =
            journal::Journal::open(&state_dir.join("journal"), !restarted).context("opening the event journal")?;
        let registry = Arc::new(Registry::new(&config.cache_dir, group.clone())?);
        let server = Arc::new(Server {
            group,
            registry,
            filler,
            journal: Arc::new(journal),
            metrics: Arc::new(Metrics::default()),
            rt: tokio::runtime::Handle::current(),
            own_pid: std::process::id() as i32,
        });

        // A restart re-adopts the mounts the kernel kept, before any event is read.
        let images = ImageStore::new();
        let mut mounts = BTreeMap::new();
        let mut recovered = Vec::new();
        let mut still_detached = Vec::new();
        if restarted {
            for m in state::load(&state_path) {
                if m.detached {
                    still_detached.push(m);
                    continue;
                }
                match adopt(&server, &images, &m, loader) {
                    Ok(served) => {
                        recovered.push((served.info.clone(), served.image.clone()));
                        mounts.insert(m.mountpoint.clone(), served);
                    }
                    Err(e) => error!("fanotify: cannot re-adopt {}: {e:#}", m.mountpoint.display()),
                }
            }
            info!("fanotify: re-adopted {} mount(s)", mounts.len());
        } else {
            // A fresh group: mounts from an earlier group are not ours to serve.
            let _ = state::save(&state_path, &[]);
        }

        let (stop_tx, stop_rx) = (eventfd()?, eventfd()?);
        // One eventfd: the thread polls a dup, shutdown writes the original.
        drop(stop_rx);
        let thread_stop = stop_tx.try_clone()?;
        let s = server.clone();
        let handle = std::thread::Builder::new()
            .name("erofsd-fanotify".into())
            .spawn(move || {
                s.replay(left, high_fd);
                s.run(thread_stop);
            })
            .context("starting the fanotify thread")?;
        let fe = Arc::new(FanotifyFrontend {
            server,
            mounts: Mutex::new(mounts),
            state_path,
            listener: Mutex::new(Some((handle, stop_tx))),
            recovered,
            detached: Mutex::new(still_detached),
            prefetch: Default::default(),
            prefetch_config: config.prefetch.clone(),
            cache_dir: config.cache_dir.clone(),
        });
        fe.save_state();
        Ok(fe)
    }

    fn save_state(&self) {
        let table: Vec<SavedMount> = self
            .mounts
            .lock()
            .expect("mounts")
            .values()
            .map(|s| SavedMount {
                mountpoint: s.info.mountpoint.clone(),
                image: s.info.image.clone(),
                image_id: s.info.image_id.clone(),
                detached: false,
            })
            .chain(self.detached.lock().expect("detached").iter().cloned())
            .collect();
        if let Err(e) = state::save(&self.state_path, &table) {
            error!("saving the mount table: {e:#}");
        }
    }

    fn do_mount(&self, image: Arc<Image>, req: MountRequest) -> Result<MountInfo> {
        let prefetch = req.prefetch_config(&self.prefetch_config);
        let registry = &self.server.registry;
        let mut taken: Vec<String> = Vec::new();
        let result = (|| {
            let mut devices = Vec::new();
            for blob in &image.blobs {
                let cf = registry.acquire(blob, None)?;
                taken.push(blob.id.clone());
                devices.push(cf.path.clone());
            }
            sysmount::mount_file_backed(&image.bootstrap_path, &req.mountpoint, &devices)
        })();
        if let Err(e) = result {
            for id in &taken {
                registry.release(id);
            }
            return Err(e);
        }
        let info = MountInfo {
            mountpoint: req.mountpoint.clone(),
            image: req.image.clone(),
            image_id: image.id.clone(),
            fsid: req.fsid.unwrap_or_else(|| image.id.clone()),
            domain_id: req.domain_id,
            frontend: "fanotify".into(),
        };
        self.mounts.lock().expect("mounts").insert(info.mountpoint.clone(), Served { info: info.clone(), image: image.clone() });
        self.save_state();
        self.prefetch.insert(&info.mountpoint, prefetch::start(&self.server, &self.cache_dir, &image, &info.image, &prefetch));
        Ok(info)
    }

    fn do_umount(&self, mountpoint: &Path) -> Result<()> {
        let served = self.mounts.lock().expect("mounts").get(mountpoint).map(|s| s.image.clone());
        let Some(image) = served else { bail!("{} is not served by the fanotify front-end", mountpoint.display()) };
        // Fails if busy (the caller can retry); the blobs stay marked and served meanwhile.
        match sysmount::umount_retrying(mountpoint, Duration::from_millis(500), false)? {
            Unmounted::Clean | Unmounted::NotMounted | Unmounted::Detached => {}
        }
        self.prefetch.stop(mountpoint);
        self.mounts.lock().expect("mounts").remove(mountpoint);
        for b in &image.blobs {
            self.server.registry.release(&b.id);
        }
        self.save_state();
        Ok(())
    }

    /// Unmounts everything (serving events meanwhile), then stops the event thread. Returns
    /// how many mounts had to be detached lazily (the group must then not be released).
    fn do_shutdown(&self) -> usize {
        self.prefetch.stop_all();
        let points: Vec<PathBuf> = self.mounts.lock().expect("mounts").keys().cloned().collect();
        let mut detached = 0;
        for mp in points {
            let gone = match sysmount::umount_retrying(&mp, UMOUNT_PATIENCE, true) {
                Ok(Unmounted::Detached) => false,
                Ok(_) => true,
                Err(e) => {
                    error!("{e:#}");
                    false
                }
            };
            let image = self.mounts.lock().expect("mounts").remove(&mp).map(|s| s.image);
            if let Some(image) = image {
                // A detached mount's open files still read the cache files, and once the group
                // closes nothing stops them at a hole: complete those blobs first.
                if !gone && !self.complete_blobs(&image) {
                    detached += 1;
                    // Keep its blobs parked and marked; the failsafe must know it exists.
                    self.detached.lock().expect("detached").push(SavedMount {
                        mountpoint: mp.clone(),
                        image: image.bootstrap_path.clone(),
                        image_id: image.id.clone(),
                        detached: true,
                    });
                    continue;
                }
                for b in &image.blobs {
                    self.server.registry.release(&b.id);
                }
            }
        }
        self.save_state();
        if let Some((handle, stop)) = self.listener.lock().expect("listener").take() {
            let one: u64 = 1;
            // SAFETY: 8-byte write to our eventfd.
            unsafe { libc::write(std::os::fd::AsRawFd::as_raw_fd(&stop), &one as *const u64 as *const libc::c_void, 8) };
            let _ = handle.join();
        }
        detached
    }
}

impl FanotifyFrontend {
    /// The fanotify group (for a second holder: nydusd's `sendfd`).
    pub fn group_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.server.group.as_fd()
    }

    /// Fills every group of `image`'s blobs (events keep being served meanwhile). True if all
    /// are complete: the cache files then hold no hole a reader could mistake for data.
    fn complete_blobs(&self, image: &Image) -> bool {
        let mut ok = true;
        for b in &image.blobs {
            let Some(cf) = self.server.registry.get(&b.id) else { continue };
            warn!("completing blob {} for a lazily detached mount", b.id);
            match self.server.rt.block_on(self.server.filler.fill(&cf.target, 0, b.size())) {
                Ok(()) => self.server.registry.unmark(&cf),
                Err(e) => {
                    error!("completing blob {}: {e}", b.id);
                    ok = false;
                }
            }
        }
        ok
    }
}

/// Rebuilds one mount a previous worker made (restart under the same group).
fn adopt(server: &Arc<Server>, images: &ImageStore, m: &SavedMount, loader: Option<&Loader<'_>>) -> Result<Served> {
    if !sysmount::is_erofs_mount(&m.mountpoint) {
        bail!("{} is no longer an EROFS mount", m.mountpoint.display());
    }
    let image = match loader {
        Some(load) => load(m, images),
        None => images.load_dir(&m.image),
    }
    .with_context(|| format!("loading {}", m.image.display()))?;
    if image.id != m.image_id {
        bail!("image {} changed since it was mounted", m.image.display());
    }
    for blob in &image.blobs {
        let mut fd = fd_store().lock().expect("fd store").take(&cache::park_name(&blob.id));
        if fd.is_none() && server.registry.get(&blob.id).is_none() {
            // No holder kept its write fd (the group came back through a takeover): open the
            // marked file again. Its writes raise events, which the listener answers at once
            // as this process's own; removing the mark to open a quiet fd would let readers
            // through to unfilled ranges meanwhile.
            info!("blob {}: no parked write fd; reopening the marked cache file", blob.id);
            fd = Some(server.registry.reopen(&blob.id, blob.size())?);
        }
        server.registry.acquire(blob, fd)?;
    }
    let info = MountInfo {
        mountpoint: m.mountpoint.clone(),
        image: m.image.clone(),
        image_id: image.id.clone(),
        fsid: image.id.clone(),
        domain_id: None,
        frontend: "fanotify".into(),
    };
    Ok(Served { info, image })
}

impl Frontend for FanotifyFrontend {
    fn name(&self) -> &'static str {
        "fanotify"
    }

    fn mount(&self, image: Arc<Image>, req: MountRequest) -> BoxFuture<'_, Result<MountInfo>> {
        Box::pin(async move { tokio::task::block_in_place(|| self.do_mount(image, req)) })
    }

    fn umount(&self, mountpoint: PathBuf) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { tokio::task::block_in_place(|| self.do_umount(&mountpoint)) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let detached = tokio::task::block_in_place(|| self.do_shutdown());
            if detached == 0 {
                // Every mount is gone: the holder may let the group go; it closes with us.
                if let Err(e) = fd_store().lock().expect("fd store").remove(GROUP_FD_NAME) {
                    warn!("releasing the parked group: {e}");
                }
            } else {
                error!("{detached} mount(s) had to be detached lazily; the fanotify group stays parked with the holder so their readers are not let through to unfilled ranges");
            }
        })
    }

    fn metrics(&self) -> serde_json::Value {
        let mut v = self.server.metrics.json();
        let files: serde_json::Map<String, serde_json::Value> = self
            .server
            .registry
            .all()
            .into_iter()
            .map(|cf| {
                let st = &cf.target.blob.stats;
                use std::sync::atomic::Ordering::Relaxed;
                (
                    cf.target.blob.id.clone(),
                    serde_json::json!({
                        "marked": cf.is_marked(),
                        "groups_ready": cf.target.readiness().ready_count(),
                        "groups": cf.target.readiness().groups(),
                        "stored_bytes": st.stored_bytes.load(Relaxed),
                        "groups_fetched": st.groups.load(Relaxed),
                        "requests": st.requests.load(Relaxed),
                    }),
                )
            })
            .collect();
        v["cache_files"] = serde_json::Value::Object(files);
        v["journal_in_use"] = self.server.journal.in_use().into();
        v["prefetch"] = self.prefetch.json();
        v
    }

    fn recovered(&self) -> Vec<(MountInfo, Arc<Image>)> {
        self.recovered.clone()
    }

    fn cache_in_use(&self, _cache_dir: &Path, entry: &crate::cache::CacheEntry) -> bool {
        match entry.kind {
            crate::cache::EntryKind::FanotifyBlob => self.server.registry.get(&entry.name).is_some(),
            // Objects of an earlier cachefiles daemon: not ours to judge.
            crate::cache::EntryKind::CachefilesObject => true,
        }
    }

    fn cache_evict(&self, cache_dir: &Path, entry: &crate::cache::CacheEntry) -> Result<bool> {
        match entry.kind {
            crate::cache::EntryKind::FanotifyBlob => self.server.registry.evict_unused(cache_dir, &entry.name),
            crate::cache::EntryKind::CachefilesObject => Ok(false),
        }
    }
}
