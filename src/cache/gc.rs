//! Garbage collection: bring the cache under a size limit by evicting least-recently-used
//! entries that no mount uses. The same pass runs inside the daemon (the front-end says what
//! is in use and evicts safely against concurrent mounts) and offline (`erofsd cache gc` with
//! no daemon: in-use is derived from the saved mount tables and the mounts the kernel has).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{cull, list, plan_eviction, touch_below, unlink_below, CacheEntry, EntryKind};

/// Who knows what is in use and how to evict it.
pub trait Evictor {
    fn in_use(&self, entry: &CacheEntry) -> bool;
    /// Sets `in_use` of every entry (one batch: cachefiles asks the kernel from one thread).
    fn in_use_all(&self, entries: &mut [CacheEntry]) {
        for e in entries {
            e.in_use = self.in_use(e);
        }
    }
    /// Evicts `entry` if nothing uses it; `Ok(false)` if it is (now) in use.
    fn evict(&self, entry: &CacheEntry) -> Result<bool>;
}

/// Body of `POST /api/v1/cache/gc`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct GcRequest {
    /// Bytes on disk to get under; defaults to the daemon's `[cache] max_size`.
    #[serde(default)]
    pub max_size: Option<u64>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GcReport {
    pub max_size: u64,
    pub dry_run: bool,
    pub disk_bytes_before: u64,
    pub disk_bytes_after: u64,
    /// Entries evicted (or, with `dry_run`, that would be), LRU first.
    pub evicted: Vec<CacheEntry>,
    /// Entries kept because a mount uses them.
    pub in_use: usize,
    /// Entries removed from cachefiles' graveyard.
    pub graveyard_reaped: usize,
    pub errors: Vec<String>,
}

/// Lists the cache with in-use flags; with `touch`, in-use entries get their last-use set to now.
pub fn listing(dir: &Path, ev: &dyn Evictor, touch: bool) -> Result<Vec<CacheEntry>> {
    let mut entries = list(dir)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    ev.in_use_all(&mut entries);
    for e in &mut entries {
        if e.in_use && touch && touch_below(dir, &e.path).is_ok() {
            e.last_use = now;
        }
    }
    Ok(entries)
}

/// One gc pass.
pub fn run(dir: &Path, ev: &dyn Evictor, max_size: u64, dry_run: bool) -> Result<GcReport> {
    let mut errors = Vec::new();
    let mut reaped = if dry_run { 0 } else { cull::reap_graveyard(dir).unwrap_or_else(|e| {
        errors.push(format!("graveyard: {e:#}"));
        0
    }) };
    let entries = listing(dir, ev, !dry_run)?;
    let before: u64 = entries.iter().map(|e| e.disk_bytes).sum();
    let mut evicted = Vec::new();
    let mut freed = 0u64;
    for i in plan_eviction(&entries, max_size) {
        let e = &entries[i];
        if dry_run {
            freed += e.disk_bytes;
            evicted.push(e.clone());
            continue;
        }
        match ev.evict(e) {
            Ok(true) => {
                info!("cache gc: evicted {} ({} on disk, last use {})", e.path.display(), super::size::format_size(e.disk_bytes), e.last_use);
                freed += e.disk_bytes;
                evicted.push(e.clone());
            }
            Ok(false) => info!("cache gc: {} is in use now; kept", e.path.display()),
            Err(err) => {
                warn!("cache gc: evicting {}: {err:#}", e.path.display());
                errors.push(format!("{}: {err:#}", e.path.display()));
            }
        }
    }
    if !dry_run && evicted.iter().any(|e| e.kind == EntryKind::CachefilesObject) {
        reaped += cull::reap_graveyard(dir).unwrap_or(0);
    }
    let in_use = entries.iter().filter(|e| e.in_use).count();
    let after = before.saturating_sub(freed);
    if after > max_size && !dry_run {
        warn!(
            "cache gc: {} on disk is still above the limit {}: the rest is in use by mounts",
            super::size::format_size(after),
            super::size::format_size(max_size)
        );
    }
    Ok(GcReport {
        max_size,
        dry_run,
        disk_bytes_before: before,
        disk_bytes_after: after,
        evicted,
        in_use,
        graveyard_reaped: reaped,
        errors,
    })
}

/// In-use knowledge without a daemon: the saved mount tables of both front-ends, kept only
/// where the kernel still has the mount. If any such image cannot be read, every blob counts
/// as in use (nothing is evicted on a guess).
pub struct Offline {
    dir: PathBuf,
    blobs: HashSet<String>,
    everything: bool,
    fscache_mounted: bool,
}

impl Offline {
    pub fn new(dir: &Path) -> Offline {
        let mut saved: Vec<(PathBuf, PathBuf)> = crate::frontend::fanotify::state::load(&dir.join("fanotify").join("mounts.json"))
            .into_iter()
            .map(|m| (m.mountpoint, m.image))
            .collect();
        let cf_state = dir.join("state").join("cachefiles-mounts.json");
        let mut everything = false;
        match crate::frontend::cachefiles::registry::Registry::load_saved(&cf_state) {
            Ok(v) => saved.extend(v.into_iter().map(|s| (s.mountpoint, s.image))),
            Err(e) => {
                warn!("{e:#}: treating every blob as in use");
                everything = true;
            }
        }
        let images = crate::core::images::ImageStore::new();
        let mut blobs = HashSet::new();
        for (mp, image) in saved {
            if !crate::frontend::fanotify::sysmount::is_erofs_mount(&mp) {
                continue; // the kernel no longer has it: nothing reads through it
            }
            match images.load_dir(&image) {
                Ok(img) => blobs.extend(img.blobs.iter().map(|b| b.id.clone())),
                Err(e) => {
                    warn!("{} is still mounted but its image {} cannot be read ({e:#}): treating every blob as in use", mp.display(), image.display());
                    everything = true;
                }
            }
        }
        Offline { dir: dir.to_path_buf(), blobs, everything, fscache_mounted: fscache_mounted() }
    }
}

/// Whether any EROFS-over-fscache mount exists (its cachefiles objects may be open).
fn fscache_mounted() -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines().any(|l| {
        let Some((_, tail)) = l.split_once(" - ") else { return false };
        let mut f = tail.split_whitespace();
        f.next() == Some("erofs") && f.nth(1).is_some_and(|opts| opts.split(',').any(|o| o.starts_with("fsid=")))
    })
}

impl Evictor for Offline {
    fn in_use(&self, e: &CacheEntry) -> bool {
        match e.kind {
            EntryKind::FanotifyBlob => self.everything || self.blobs.contains(&e.name),
            // Without the daemon there is no device to ask `inuse`: any fscache mount may hold it.
            EntryKind::CachefilesObject => self.everything || self.fscache_mounted,
        }
    }

    fn evict(&self, e: &CacheEntry) -> Result<bool> {
        if self.in_use(e) {
            return Ok(false);
        }
        // No mount reads it and no daemon serves this directory (we hold its lock): a plain
        // unlink. For a cachefiles object the kernel simply creates a fresh one on next use.
        unlink_below(&self.dir, &e.path)
    }
}
