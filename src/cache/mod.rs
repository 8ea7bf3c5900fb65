//! The cache directory: its on-disk layout in one place, the lock, listing and eviction.
//!
//! Layout (version [`LAYOUT_VERSION`]) under the cache dir (default `/var/cache/erofsd`):
//!
//! | path | what | owner | rebuildable |
//! |---|---|---|---|
//! | `layout-version` | this layout's number, written once | erofsd | yes (adopted when missing) |
//! | `erofsd.lock` | `flock`ed by the daemon for its lifetime and by offline `erofsd cache` | erofsd | yes |
//! | `blobs/<sha256>` | fanotify: one sparse cache file per blob, sized to its address space | erofsd | data: refetched |
//! | `fanotify/` | fanotify: mount table + event journal for a restarted worker | erofsd | state |
//! | `cachefiles/` | cachefiles: `cache/I<vol>/@xx/D<key>` objects + `graveyard/` | the kernel | data: refetched |
//! | `state/` | cachefiles: mount registrations for a restarted worker | erofsd | state |
//!
//! Readiness is never stored apart from the data: it is rebuilt from the cache files with
//! `SEEK_DATA`/`SEEK_HOLE` (see `core::readiness`), so wiping any data file (or the whole data
//! directory) under surviving state only means refetching, never serving zeros.
//!
//! **Last use** is the cache file's mtime: fills write the file (the kernel updates mtime), the
//! fanotify front-end touches it when a mount takes or drops the blob, and every gc pass of the
//! daemon touches the entries a mount is using. atime is not used (relatime/noatime, and
//! cachefiles opens its backing files O_NOATIME). No side index exists that could drift.
//!
//! Safety rules the code here keeps: directories are walked without following symlinks (a
//! symlink where a directory or cache file should be is skipped, never followed); eviction opens
//! each directory with `O_NOFOLLOW` below the cache dir and unlinks by name relative to it;
//! nothing here ever deletes state (mount tables, journals) — only blob data files, which are
//! refetched on demand.

pub mod cull;
pub mod gc;
pub mod size;

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The layout this build reads and writes.
pub const LAYOUT_VERSION: u32 = 1;
pub const LAYOUT_FILE: &str = "layout-version";
pub const LOCK_FILE: &str = "erofsd.lock";
/// fanotify sparse blob files.
pub const BLOBS_DIR: &str = "blobs";
/// The directory bound with cachefiles `dir`.
pub const CACHEFILES_DIR: &str = "cachefiles";

/// Checks (or writes) the layout marker. A missing marker is adopted whatever the directory
/// holds (an older erofsd wrote the same layout without a marker); a newer or unreadable one
/// is a refusal: this build must not touch a layout it does not know, and never deletes it.
pub fn check_layout(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating cache directory {}", dir.display()))?;
    let marker = dir.join(LAYOUT_FILE);
    match std::fs::read(&marker) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let v: u32 = text.trim().parse().map_err(|_| {
                anyhow::anyhow!(
                    "cache directory {}: {} holds {:?}, not a layout version; refusing to use it (nothing was changed)",
                    dir.display(),
                    marker.display(),
                    text.trim()
                )
            })?;
            if v > LAYOUT_VERSION {
                bail!(
                    "cache directory {} has layout version {v}, newer than this erofsd understands ({LAYOUT_VERSION}): \
                     refusing to start (nothing was changed); run the newer erofsd, or point --cache-dir elsewhere",
                    dir.display()
                );
            }
            if v < LAYOUT_VERSION {
                // No older layout exists yet; an upgrade step would go here, never a wipe.
                bail!("cache directory {} has unknown old layout version {v}; nothing was changed", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let tmp = dir.join(format!(".{LAYOUT_FILE}.tmp"));
            std::fs::write(&tmp, format!("{LAYOUT_VERSION}\n")).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &marker).with_context(|| format!("writing {}", marker.display()))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", marker.display())),
    }
}

/// An exclusive `flock` on `<cache>/erofsd.lock`, released when dropped (or when the process
/// dies, so a crashed daemon never leaves it stale). The fd is close-on-exec.
pub struct DirLock {
    _file: File,
}

impl DirLock {
    /// Takes the lock without waiting; `Ok(None)` if someone holds it.
    pub fn try_take(dir: &Path) -> Result<Option<DirLock>> {
        let path = dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(DirLock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(e).with_context(|| format!("locking {}", path.display()))
    }

    /// Takes the lock, waiting up to `patience` (an offline `erofsd cache gc` holds it briefly).
    pub fn take(dir: &Path, patience: Duration) -> Result<DirLock> {
        let t0 = Instant::now();
        loop {
            if let Some(l) = Self::try_take(dir)? {
                return Ok(l);
            }
            if t0.elapsed() >= patience {
                bail!(
                    "cache directory {} is locked ({}): another erofsd daemon or `erofsd cache` is using it",
                    dir.display(),
                    dir.join(LOCK_FILE).display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Checks the layout and takes the lock: what a daemon does before touching the cache dir.
pub fn open_for_daemon(dir: &Path) -> Result<DirLock> {
    check_layout(dir)?;
    DirLock::take(dir, Duration::from_secs(10))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// `blobs/<id>`: a fanotify sparse cache file, written by erofsd.
    FanotifyBlob,
    /// `cachefiles/cache/I<vol>/@xx/<name>`: a cachefiles object, owned by the kernel.
    CachefilesObject,
}

/// One cached blob (or cachefiles object) as found on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CacheEntry {
    pub kind: EntryKind,
    /// The blob id (fanotify), or the object's cache-file name (cachefiles: `D<cookie key>`).
    pub name: String,
    /// cachefiles: the volume directory (`I<volume key>`).
    #[serde(default)]
    pub volume: Option<String>,
    /// Relative to the cache dir.
    pub path: PathBuf,
    /// Apparent size: the blob's address space.
    pub size: u64,
    /// Space used on disk (st_blocks × 512): what the size limit counts.
    pub disk_bytes: u64,
    /// Bytes in allocated (filled) ranges, from SEEK_DATA/SEEK_HOLE.
    pub ready_bytes: u64,
    /// Last use, seconds since the epoch (the file's mtime).
    pub last_use: i64,
    /// Used by a mount right now (never evicted while true).
    pub in_use: bool,
}

impl CacheEntry {
    /// The blob id this entry holds, if it names one (cachefiles `D<64 hex>` cookies do).
    pub fn blob_id(&self) -> Option<&str> {
        let id = match self.kind {
            EntryKind::FanotifyBlob => self.name.as_str(),
            EntryKind::CachefilesObject => self.name.strip_prefix('D')?,
        };
        is_blob_id(id).then_some(id)
    }
}

pub fn is_blob_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What `GET /api/v1/cache` and `erofsd cache ls` report.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Listing {
    pub cache_dir: PathBuf,
    /// Whether a running daemon answered (in-use flags are then exact).
    pub daemon: bool,
    pub max_size: Option<u64>,
    pub disk_bytes: u64,
    pub entries: Vec<CacheEntry>,
}

/// Every cache entry under `dir`, `in_use` false (the caller knows who uses what).
pub fn list(dir: &Path) -> Result<Vec<CacheEntry>> {
    let mut out = Vec::new();
    let blobs = dir.join(BLOBS_DIR);
    if is_real_dir(&blobs) {
        for e in read_dir_sorted(&blobs)? {
            let name = e.0;
            if !is_blob_id(&name) {
                continue; // not ours (temp files, probes): never listed, never evicted
            }
            if let Some(entry) = stat_entry(dir, EntryKind::FanotifyBlob, &name, None, &Path::new(BLOBS_DIR).join(&name))? {
                out.push(entry);
            }
        }
    }
    let cache = dir.join(CACHEFILES_DIR).join("cache");
    if is_real_dir(&cache) {
        for (vol, vt) in read_dir_sorted(&cache)? {
            if !vt.is_dir() || !vol.starts_with('I') {
                continue;
            }
            for (fan, ft) in read_dir_sorted(&cache.join(&vol))? {
                if !ft.is_dir() || !fan.starts_with('@') {
                    continue;
                }
                for (obj, ot) in read_dir_sorted(&cache.join(&vol).join(&fan))? {
                    if !ot.is_file() || !matches!(obj.as_bytes().first(), Some(b'D' | b'S' | b'T' | b'E')) {
                        continue;
                    }
                    let rel = Path::new(CACHEFILES_DIR).join("cache").join(&vol).join(&fan).join(&obj);
                    if let Some(entry) = stat_entry(dir, EntryKind::CachefilesObject, &obj, Some(vol.clone()), &rel)? {
                        out.push(entry);
                    }
                }
            }
        }
    }
    Ok(out)
}

fn is_real_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

/// (name, type) of each entry, not following symlinks; names that are not UTF-8 are skipped.
fn read_dir_sorted(p: &Path) -> Result<Vec<(String, std::fs::FileType)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(p).with_context(|| format!("listing {}", p.display()))? {
        let e = e?;
        let Ok(name) = e.file_name().into_string() else { continue };
        v.push((name, e.file_type()?));
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

fn stat_entry(dir: &Path, kind: EntryKind, name: &str, volume: Option<String>, rel: &Path) -> Result<Option<CacheEntry>> {
    let path = dir.join(rel);
    // O_NOFOLLOW: a symlink in place of a cache file is not ours to read. O_NOATIME may be
    // refused for files we do not own; root owns them all, but fall back anyway.
    let open = |extra: i32| {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK | extra).open(&path)
    };
    let file = match open(libc::O_NOATIME).or_else(|_| open(0)) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None), // evicted meanwhile
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let md = file.metadata()?;
    if !md.is_file() {
        return Ok(None);
    }
    let ready_bytes = data_bytes(&file, md.len()).with_context(|| format!("scanning {}", path.display()))?;
    Ok(Some(CacheEntry {
        kind,
        name: name.to_string(),
        volume,
        path: rel.to_path_buf(),
        size: md.len(),
        disk_bytes: md.blocks() * 512,
        ready_bytes,
        last_use: md.mtime(),
        in_use: false,
    }))
}

/// Bytes inside allocated ranges of `file` (below `size`).
pub fn data_bytes(file: &File, size: u64) -> io::Result<u64> {
    let fd = file.as_raw_fd();
    let seek = |pos: u64, whence: i32| -> io::Result<Option<u64>> {
        // SAFETY: lseek on a valid fd.
        let r = unsafe { libc::lseek(fd, pos as libc::off_t, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::ENXIO) { Ok(None) } else { Err(e) };
        }
        Ok(Some(r as u64))
    };
    let (mut pos, mut total) = (0u64, 0u64);
    while pos < size {
        let Some(data) = seek(pos, libc::SEEK_DATA)? else { break };
        if data >= size {
            break;
        }
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
        total += hole - data;
        pos = hole.max(data + 1);
    }
    Ok(total)
}

/// Which entries to evict so the disk usage drops to `max_size`: least recently used first,
/// never one in use. Returns indices into `entries`, in eviction order.
pub fn plan_eviction(entries: &[CacheEntry], max_size: u64) -> Vec<usize> {
    let mut total: u64 = entries.iter().map(|e| e.disk_bytes).sum();
    let mut order: Vec<usize> = (0..entries.len()).filter(|&i| !entries[i].in_use).collect();
    order.sort_by(|&a, &b| entries[a].last_use.cmp(&entries[b].last_use).then(entries[a].path.cmp(&entries[b].path)));
    let mut out = Vec::new();
    for i in order {
        if total <= max_size {
            break;
        }
        total -= entries[i].disk_bytes.min(total);
        out.push(i);
    }
    out
}

/// Opens the directory `rel` below `root`, every component with `O_NOFOLLOW`: a symlink
/// anywhere below the cache dir fails with ELOOP/ENOTDIR instead of leading outside it.
pub fn open_dir_below(root: &Path, rel: &Path) -> Result<OwnedFd> {
    let c = CString::new(root.as_os_str().as_bytes())?;
    // SAFETY: open(2) with a valid C string.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("opening {}", root.display()));
    }
    // SAFETY: a fresh fd we own.
    let mut cur = unsafe { OwnedFd::from_raw_fd(fd) };
    for comp in rel.components() {
        let Component::Normal(name) = comp else { bail!("{}: not a plain relative path", rel.display()) };
        let c = CString::new(name.as_bytes())?;
        // SAFETY: openat(2) relative to a directory fd we own.
        let fd = unsafe {
            libc::openat(cur.as_raw_fd(), c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("opening {} below {}", rel.display(), root.display()));
        }
        // SAFETY: as above.
        cur = unsafe { OwnedFd::from_raw_fd(fd) };
    }
    Ok(cur)
}

/// Splits an entry's relative path into its directory and file name, refusing anything that
/// is not a plain path below the cache dir.
pub fn split_entry_path(rel: &Path) -> Result<(PathBuf, String)> {
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!("{}: not a plain relative path", rel.display());
    }
    let name = rel.file_name().and_then(|n| n.to_str()).context("entry path without a file name")?.to_string();
    Ok((rel.parent().unwrap_or(Path::new("")).to_path_buf(), name))
}

/// Unlinks a regular file `rel` below `root` (no symlink followed, nothing but a regular
/// file removed). `Ok(false)` if it was already gone.
pub fn unlink_below(root: &Path, rel: &Path) -> Result<bool> {
    let (parent, name) = split_entry_path(rel)?;
    let dir = open_dir_below(root, &parent)?;
    let c = CString::new(name.as_bytes())?;
    // SAFETY: fstatat on a directory fd we own, not following symlinks.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatat(dir.as_raw_fd(), c.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(e).with_context(|| format!("stat {}", rel.display()));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        bail!("{} is not a regular file; not removing it", rel.display());
    }
    // SAFETY: unlinkat relative to the same directory fd.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("removing {}", rel.display()));
    }
    Ok(true)
}

/// Sets the mtime of `rel` below `root` to now (last use), without following a symlink.
pub fn touch_below(root: &Path, rel: &Path) -> Result<()> {
    let (parent, name) = split_entry_path(rel)?;
    let dir = open_dir_below(root, &parent)?;
    let c = CString::new(name.as_bytes())?;
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    ];
    // SAFETY: utimensat relative to a directory fd we own.
    if unsafe { libc::utimensat(dir.as_raw_fd(), c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) } < 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("touching {}", rel.display()));
    }
    Ok(())
}

/// Sets the mtime of an open file to now.
pub fn touch_fd(fd: std::os::fd::BorrowedFd<'_>) {
    let times = [
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT },
        libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_NOW },
    ];
    // SAFETY: futimens on a valid fd; failure only costs LRU precision.
    unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn entry(name: &str, disk: u64, last: i64, in_use: bool) -> CacheEntry {
        CacheEntry {
            kind: EntryKind::FanotifyBlob,
            name: name.into(),
            volume: None,
            path: Path::new("blobs").join(name),
            size: disk,
            disk_bytes: disk,
            ready_bytes: disk,
            last_use: last,
            in_use,
        }
    }

    #[test]
    fn eviction_is_lru_and_skips_in_use() {
        let es = vec![entry("a", 100, 5, false), entry("b", 100, 1, true), entry("c", 100, 3, false), entry("d", 100, 9, false)];
        // 400 on disk, limit 250: drop the two oldest unused (c at 3, a at 5); b is older but in use.
        let plan: Vec<&str> = plan_eviction(&es, 250).into_iter().map(|i| es[i].name.as_str()).collect();
        assert_eq!(plan, ["c", "a"]);
        assert!(plan_eviction(&es, 400).is_empty());
        // Limit 0: everything unused goes, the in-use one stays.
        assert_eq!(plan_eviction(&es, 0).len(), 3);
    }

    #[test]
    fn layout_marker_written_adopted_and_newer_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("c");
        std::fs::create_dir_all(dir.join("blobs")).unwrap();
        std::fs::write(dir.join("blobs").join("a".repeat(64)), b"data").unwrap();
        check_layout(&dir).unwrap(); // adopted: marker written, data kept
        assert_eq!(std::fs::read_to_string(dir.join(LAYOUT_FILE)).unwrap(), "1\n");
        assert!(dir.join("blobs").join("a".repeat(64)).exists());
        check_layout(&dir).unwrap();
        std::fs::write(dir.join(LAYOUT_FILE), "2\n").unwrap();
        let e = check_layout(&dir).unwrap_err().to_string();
        assert!(e.contains("newer"), "{e}");
        std::fs::write(dir.join(LAYOUT_FILE), "garbage").unwrap();
        assert!(check_layout(&dir).is_err());
        assert!(dir.join("blobs").join("a".repeat(64)).exists(), "a refusal deletes nothing");
    }

    #[test]
    fn lock_is_exclusive() {
        let d = tempfile::tempdir().unwrap();
        let l = DirLock::try_take(d.path()).unwrap().expect("free");
        assert!(DirLock::try_take(d.path()).unwrap().is_none());
        assert!(DirLock::take(d.path(), Duration::from_millis(100)).is_err());
        drop(l);
        assert!(DirLock::try_take(d.path()).unwrap().is_some());
    }

    #[test]
    fn list_counts_ready_bytes_and_ignores_foreign_files_and_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let blobs = d.path().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        let id = "b".repeat(64);
        let f = std::fs::File::create(blobs.join(&id)).unwrap();
        f.set_len(1 << 20).unwrap();
        f.write_all_at(&[7u8; 65536], 256 << 10).unwrap();
        std::fs::write(blobs.join("probe.tmp"), b"x").unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, vec![1u8; 4096]).unwrap();
        std::os::unix::fs::symlink(&outside, blobs.join("c".repeat(64))).unwrap();
        let es = list(d.path()).unwrap();
        assert_eq!(es.len(), 1, "{es:?}");
        assert_eq!(es[0].name, id);
        assert_eq!(es[0].size, 1 << 20);
        assert_eq!(es[0].ready_bytes, 65536);
        assert!(es[0].disk_bytes >= 65536 && es[0].disk_bytes < (1 << 20));
        // Eviction refuses a symlinked directory and a non-regular file, and removes the file.
        assert!(unlink_below(d.path(), Path::new("blobs/../outside")).is_err());
        std::os::unix::fs::symlink(&blobs, d.path().join("link")).unwrap();
        assert!(unlink_below(d.path(), &Path::new("link").join(&id)).is_err());
        assert!(unlink_below(d.path(), &Path::new("blobs").join("c".repeat(64))).is_err());
        assert!(outside.exists());
        assert!(unlink_below(d.path(), &Path::new("blobs").join(&id)).unwrap());
        assert!(!unlink_below(d.path(), &Path::new("blobs").join(&id)).unwrap());
    }
}
