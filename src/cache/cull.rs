//! cachefiles objects: `inuse` / `cull` through `/dev/cachefiles`, and the graveyard.
//!
//! Both commands name a file relative to the *process* cwd (the kernel resolves the name in
//! `current->fs->pwd`), so they run on a short-lived thread that first unshares its fs struct
//! (`unshare(CLONE_FS)`: cwd becomes per-thread) and `fchdir`s into the object's fanout
//! directory, opened below the cache dir without following symlinks. The daemon's own cwd never
//! changes.
//!
//! `cull` makes the kernel rename the object into `cachefiles/graveyard/`; emptying the
//! graveyard is the daemon's job (as cachefilesd does), done by [`reap_graveyard`].

use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use cachefiles::{Command, Device};

use super::{open_dir_below, split_entry_path, CacheEntry, EntryKind, CACHEFILES_DIR};

/// Runs `f` on a thread whose cwd is the directory of `entry` (below `cache_dir`).
fn in_object_dir<T: Send>(cache_dir: &Path, entry: &CacheEntry, f: impl FnOnce(&str) -> Result<T> + Send) -> Result<T> {
    if entry.kind != EntryKind::CachefilesObject {
        bail!("{} is not a cachefiles object", entry.path.display());
    }
    let (parent, name) = split_entry_path(&entry.path)?;
    if !parent.starts_with(Path::new(CACHEFILES_DIR).join("cache")) {
        bail!("{} is not inside the cachefiles cache", entry.path.display());
    }
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            // SAFETY: unshare(CLONE_FS) affects only this thread, which ends right after.
            if unsafe { libc::unshare(libc::CLONE_FS) } < 0 {
                return Err(std::io::Error::last_os_error()).context("unshare(CLONE_FS)");
            }
            let dir = open_dir_below(cache_dir, &parent)?;
            // SAFETY: fchdir to a directory fd we own; this thread's cwd only.
            if unsafe { libc::fchdir(dir.as_raw_fd()) } < 0 {
                return Err(std::io::Error::last_os_error()).context("fchdir");
            }
            f(&name)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("cachefiles cull thread panicked"))?
    })
}

/// `inuse`: true if the kernel has the object open (a mount uses it).
pub fn inuse(device: &Device, cache_dir: &Path, entry: &CacheEntry) -> Result<bool> {
    in_object_dir(cache_dir, entry, |name| device.inuse(name).with_context(|| format!("inuse {name}")))
}

/// `inuse` for many objects from one thread: one `unshare`, one `fchdir` per directory (a gc
/// pass asks about every object). Entries that are not cachefiles objects get an error.
pub fn inuse_all(device: &Device, cache_dir: &Path, entries: &[CacheEntry]) -> Vec<Result<bool>> {
    let root = Path::new(CACHEFILES_DIR).join("cache");
    let run = || -> Result<Vec<Result<bool>>> {
        // SAFETY: unshare(CLONE_FS) affects only this thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_FS) } < 0 {
            return Err(std::io::Error::last_os_error()).context("unshare(CLONE_FS)");
        }
        let mut cwd: Option<std::path::PathBuf> = None;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            out.push((|| -> Result<bool> {
                if e.kind != EntryKind::CachefilesObject {
                    bail!("{} is not a cachefiles object", e.path.display());
                }
                let (parent, name) = split_entry_path(&e.path)?;
                if !parent.starts_with(&root) {
                    bail!("{} is not inside the cachefiles cache", e.path.display());
                }
                if cwd.as_deref() != Some(parent.as_path()) {
                    cwd = None;
                    let dir = open_dir_below(cache_dir, &parent)?;
                    // SAFETY: fchdir to a directory fd we own; this thread's cwd only.
                    if unsafe { libc::fchdir(dir.as_raw_fd()) } < 0 {
                        return Err(std::io::Error::last_os_error()).context("fchdir");
                    }
                    cwd = Some(parent);
                }
                device.inuse(&name).with_context(|| format!("inuse {name}"))
            })());
        }
        Ok(out)
    };
    let r = std::thread::scope(|s| s.spawn(run).join());
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            let msg = format!("{e:#}");
            entries.iter().map(|_| Err(anyhow::anyhow!("{msg}"))).collect()
        }
        Err(_) => entries.iter().map(|_| Err(anyhow::anyhow!("cachefiles inuse thread panicked"))).collect(),
    }
}

/// `cull`: true if culled; false if the kernel says the object is in use (EBUSY) or gone.
pub fn cull(device: &Device, cache_dir: &Path, entry: &CacheEntry) -> Result<bool> {
    in_object_dir(cache_dir, entry, |name| match device.send(&Command::Cull(name.to_owned())) {
        Ok(()) => Ok(true),
        Err(e) if e.errno() == Some(libc::EBUSY) || e.errno() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cull {name}")),
    })
}

/// Removes everything in `cachefiles/graveyard/` (objects the kernel culled or replaced).
/// `remove_dir_all` does not follow symlinks. Returns how many entries went.
pub fn reap_graveyard(cache_dir: &Path) -> Result<usize> {
    let grave = cache_dir.join(CACHEFILES_DIR).join("graveyard");
    match std::fs::symlink_metadata(&grave) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(0),
    }
    let mut n = 0;
    for e in std::fs::read_dir(&grave).with_context(|| format!("listing {}", grave.display()))? {
        let e = e?;
        let p = e.path();
        let r = if e.file_type()?.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
        match r {
            Ok(()) => n += 1,
            Err(err) => tracing::warn!("removing {}: {err}", p.display()),
        }
    }
    Ok(n)
}
