//! Sparse cache files, one per blob: `<cache>/blobs/<id>`, sized to the blob's address space.
//!
//! Each is the `device=` file of every mount that uses the blob, and the [`Target`] the core
//! fills. Rules the registry keeps:
//! * the write fd is opened while the file carries **no** mark, so writes through it never
//!   raise pre-content events (a write through an fd opened after the mark would wait on the
//!   very thread that has to answer it);
//! * the mark is added before any mount opens the file (the notify mode is fixed at open);
//! * a fully filled blob loses its mark: reads then run at native speed;
//! * the write fd is parked with the holder (supervisor / systemd) under `fanblob-<id>`, so a
//!   restarted worker gets the same non-notifying fd back.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{bail, Context, Result};
use fanotify::Group;
use tracing::{info, warn};

use crate::core::blob::Blob;
use crate::core::fill::{Target, WritePath};
use crate::daemon::supervisor::fd_store;

pub struct CacheFile {
    pub path: PathBuf,
    pub target: Arc<Target>,
    pub dev: u64,
    pub ino: u64,
    /// Whether the FAN_PRE_ACCESS mark is on (false once the blob is complete).
    marked: AtomicBool,
    users: Mutex<usize>,
}

impl CacheFile {
    pub fn is_marked(&self) -> bool {
        self.marked.load(Ordering::Acquire)
    }

    pub fn id_bytes(&self) -> [u8; 32] {
        self.target.blob.record.id
    }
}

/// Name under which a blob's write fd is parked with the holder.
pub fn park_name(id: &str) -> String {
    format!("fanblob-{id}")
}

pub struct Registry {
    dir: PathBuf,
    group: Arc<Group>,
    by_id: Mutex<HashMap<String, Arc<CacheFile>>>,
    /// (st_dev, st_ino) → file: how an event fd is mapped to its blob.
    by_inode: RwLock<HashMap<(u64, u64), Arc<CacheFile>>>,
}

impl Registry {
    pub fn new(cache_dir: &Path, group: Arc<Group>) -> Result<Registry> {
        let dir = cache_dir.join("blobs");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Registry { dir, group, by_id: Mutex::new(HashMap::new()), by_inode: RwLock::new(HashMap::new()) })
    }

    pub fn lookup(&self, dev: u64, ino: u64) -> Option<Arc<CacheFile>> {
        self.by_inode.read().expect("registry").get(&(dev, ino)).cloned()
    }

    pub fn all(&self) -> Vec<Arc<CacheFile>> {
        self.by_id.lock().expect("registry").values().cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Arc<CacheFile>> {
        self.by_id.lock().expect("registry").get(id).cloned()
    }

    /// Takes one more user of `blob`'s cache file, creating, sizing and marking it if needed.
    /// `inherited` is a write fd a previous worker parked (restart), used instead of opening.
    pub fn acquire(&self, blob: &Arc<Blob>, inherited: Option<OwnedFd>) -> Result<Arc<CacheFile>> {
        let mut by_id = self.by_id.lock().expect("registry");
        if let Some(cf) = by_id.get(&blob.id) {
            *cf.users.lock().expect("users") += 1;
            crate::cache::touch_fd(cf.target.fd().as_fd()); // last use (cache LRU)
            return Ok(cf.clone());
        }
        let path = self.dir.join(&blob.id);
        let restarted = inherited.is_some();
        let fd = match inherited {
            Some(fd) => fd,
            None => self.open_unmarked(&path, blob.size())?,
        };
        let md = std::fs::File::from(fd.try_clone()?).metadata()?;
        if !md.is_file() || md.len() != blob.size() {
            bail!("cache file {} is not a {}-byte regular file", path.display(), blob.size());
        }
        crate::cache::touch_fd(fd.as_fd()); // last use (cache LRU)
        // A sparse file written through the page cache: pwrite where the group was decoded.
        let target = Target::with_write_path(blob.clone(), fd, WritePath::OnFillThread);
        let ready = target.scan_ready().with_context(|| format!("scanning {}", path.display()))?;
        let complete = target.readiness().is_complete();
        // Mark before any mount opens the file (a restarted worker re-adds an existing mark: harmless).
        if !complete {
            self.group
                .add_pre_access(fanotify::Target::Fd(target.fd().as_fd()))
                .with_context(|| format!("marking {}", path.display()))?;
        } else if restarted {
            let _ = self.group.remove_pre_access(fanotify::Target::Fd(target.fd().as_fd()));
        }
        if let Err(e) = fd_store().lock().expect("fd store").store(&park_name(&blob.id), target.fd().as_fd()) {
            warn!("parking the write fd of {} with the holder: {e}", blob.id);
        }
        info!(
            "cache file {}: {ready}/{} groups present{}",
            path.display(),
            target.readiness().groups(),
            if complete { ", complete (no mark)" } else { ", marked FAN_PRE_ACCESS" }
        );
        let cf = Arc::new(CacheFile {
            path,
            dev: md.dev(),
            ino: md.ino(),
            target,
            marked: AtomicBool::new(!complete),
            users: Mutex::new(1),
        });
        self.by_inode.write().expect("registry").insert((cf.dev, cf.ino), cf.clone());
        by_id.insert(blob.id.clone(), cf.clone());
        Ok(cf)
    }

    /// Opens blob `id`'s existing cache file for writing, mark and all: a write fd opened while
    /// the file is marked raises an event for each write, which the listener allows as its
    /// own ([`super::listener::Server`]). For a takeover, where no holder kept the quiet fd.
    pub fn reopen(&self, id: &str, size: u64) -> Result<OwnedFd> {
        let path = self.dir.join(id);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("reopening cache file {}", path.display()))?;
        let md = f.metadata()?;
        if !md.is_file() || md.len() != size {
            bail!("cache file {} is not a {size}-byte regular file", path.display());
        }
        Ok(f.into())
    }

    /// Opens (creating if needed) the cache file for writing while it carries no mark.
    fn open_unmarked(&self, path: &Path, size: u64) -> Result<OwnedFd> {
        // A mark left by this group (a worker that died between marking and parking) would make
        // the new write fd notifying: drop it first. ENOENT (no mark) is the normal case.
        if path.exists() {
            let _ = self.group.remove_pre_access(fanotify::Target::Path(path));
        }
        // The data directory may have been wiped under a running daemon: recreate it.
        std::fs::create_dir_all(&self.dir).with_context(|| format!("creating {}", self.dir.display()))?;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
            .with_context(|| format!("opening cache file {}", path.display()))?;
        let md = f.metadata()?;
        if !md.is_file() {
            bail!("cache file {} is not a regular file", path.display());
        }
        if md.len() != size {
            // Wrong size: not this blob's address space (or a torn create). Start empty.
            if md.len() != 0 {
                warn!("cache file {} has {} bytes, expected {size}: discarding it", path.display(), md.len());
            }
            f.set_len(0)?;
            f.set_len(size)?;
        }
        Ok(f.into())
    }

    /// Drops one user; the last one unmarks the file and forgets it.
    pub fn release(&self, id: &str) {
        let mut by_id = self.by_id.lock().expect("registry");
        let Some(cf) = by_id.get(id).cloned() else { return };
        let mut users = cf.users.lock().expect("users");
        *users = users.saturating_sub(1);
        if *users > 0 {
            return;
        }
        drop(users);
        crate::cache::touch_fd(cf.target.fd().as_fd()); // last use (cache LRU)
        by_id.remove(id);
        self.by_inode.write().expect("registry").remove(&(cf.dev, cf.ino));
        self.unmark(&cf);
        if let Err(e) = fd_store().lock().expect("fd store").remove(&park_name(id)) {
            warn!("releasing the parked fd of {id}: {e}");
        }
    }

    /// Deletes the cache file of a blob no mount uses (`erofsd cache gc`, the size limit).
    /// Holding the table lock makes it atomic with [`Registry::acquire`]: a mount either took
    /// the blob first (kept, `Ok(false)`) or finds no file and starts an empty one.
    pub fn evict_unused(&self, cache_dir: &Path, id: &str) -> Result<bool> {
        let by_id = self.by_id.lock().expect("registry");
        if by_id.contains_key(id) || !crate::cache::is_blob_id(id) {
            return Ok(false);
        }
        let removed = crate::cache::unlink_below(cache_dir, &Path::new(crate::cache::BLOBS_DIR).join(id))?;
        drop(by_id);
        Ok(removed)
    }

    /// Removes the mark (blob complete, or no longer used). Idempotent.
    pub fn unmark(&self, cf: &CacheFile) {
        if cf.marked.swap(false, Ordering::AcqRel) {
            match self.group.remove_pre_access(fanotify::Target::Fd(cf.target.fd().as_fd())) {
                Ok(()) => info!("{}: mark removed", cf.path.display()),
                Err(e) => warn!("{}: {e}", cf.path.display()),
            }
        }
    }

    /// Removes the mark if the blob is now complete; returns true if it did.
    pub fn unmark_if_complete(&self, cf: &CacheFile) -> bool {
        if cf.is_marked() && cf.target.readiness().is_complete() {
            self.unmark(cf);
            return true;
        }
        false
    }

    pub fn group_fd(&self) -> i32 {
        self.group.as_raw_fd()
    }
}
