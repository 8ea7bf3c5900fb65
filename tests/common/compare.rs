//! Tree comparator: walks two directory trees side by side and reports every difference in
//! what a filesystem image must preserve.
//!
//! Per entry: file type; permission bits incl. setuid/setgid/sticky; uid/gid; mtime (seconds
//! and nanoseconds, or seconds only, see [`Mtime`]); regular file content (byte compare);
//! symlink target; device numbers; nlink of non-directories; every xattr (all namespaces,
//! read with llistxattr/lgetxattr without following symlinks; as root `trusted.*` is listed).
//! Across entries: hard-link identity, i.e. the partition of non-directory paths into
//! same-inode groups must be the same in both trees.
//! Not compared: atime/ctime, directory sizes and nlink (filesystem-specific), inode numbers.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, OsString};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtime {
    /// Seconds and nanoseconds.
    Exact,
    /// Seconds only (e.g. one side came through a ustar header that truncates).
    Seconds,
    /// Less than one second apart (one side went through a tool that rounds to whole
    /// seconds, as umoci does when it writes ustar headers).
    WithinSecond,
    Ignore,
}

#[derive(Clone, Debug)]
pub struct Options {
    pub mtime: Mtime,
    /// Compare directories' mtimes too (overlay and tar extraction may not keep them).
    pub dir_mtime: bool,
    /// Compare the root directory's own metadata (mode/owner/mtime/xattrs).
    pub root_meta: bool,
    pub xattrs: bool,
    /// Xattr names to leave out on both sides (e.g. `trusted.overlay.opaque`).
    pub ignore_xattrs: Vec<String>,
    pub nlink: bool,
    pub hardlinks: bool,
    /// Relative paths whose whole subtree is skipped on both sides.
    pub exclude: Vec<PathBuf>,
    /// How many differences to keep for the report (all are counted).
    pub max_diffs: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            mtime: Mtime::Exact,
            dir_mtime: true,
            root_meta: true,
            xattrs: true,
            ignore_xattrs: Vec::new(),
            nlink: true,
            hardlinks: true,
            exclude: Vec::new(),
            max_diffs: 40,
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub entries: usize,
    pub regular_files: usize,
    pub bytes: u64,
    pub xattrs: usize,
    pub hardlink_groups: usize,
    pub total_diffs: usize,
    pub diffs: Vec<String>,
}

impl Report {
    fn diff(&mut self, max: usize, msg: String) {
        self.total_diffs += 1;
        if self.diffs.len() < max {
            self.diffs.push(msg);
        }
    }

    pub fn summary(&self) -> String {
        format!(
            "{} entries, {} regular files, {} bytes, {} xattrs, {} hard-link groups compared; {} differences",
            self.entries, self.regular_files, self.bytes, self.xattrs, self.hardlink_groups, self.total_diffs
        )
    }
}

struct Walk<'a> {
    a: &'a Path,
    b: &'a Path,
    o: &'a Options,
    r: Report,
    /// (dev, ino) -> first relative path seen with that inode, per side.
    links_a: HashMap<(u64, u64), PathBuf>,
    links_b: HashMap<(u64, u64), PathBuf>,
    /// relative path -> group representative, per side (non-directories only).
    group_a: BTreeMap<PathBuf, PathBuf>,
    group_b: BTreeMap<PathBuf, PathBuf>,
}

/// Compares tree `b` against reference tree `a`.
pub fn compare_trees(a: &Path, b: &Path, o: &Options) -> Report {
    let mut w = Walk {
        a,
        b,
        o,
        r: Report::default(),
        links_a: HashMap::new(),
        links_b: HashMap::new(),
        group_a: BTreeMap::new(),
        group_b: BTreeMap::new(),
    };
    w.entry(Path::new(""));
    if o.hardlinks {
        w.check_hardlinks();
    }
    w.r
}

/// Compares and panics with the first differences if there are any. Returns the report so a
/// test can also assert that something was actually compared.
pub fn assert_trees_equal(a: &Path, b: &Path, o: &Options) -> Report {
    let r = compare_trees(a, b, o);
    eprintln!("compare {} vs {}: {}", a.display(), b.display(), r.summary());
    if r.total_diffs > 0 {
        panic!(
            "trees differ: {} (reference) vs {}\n{}\nfirst {} of {} differences:\n  {}",
            a.display(),
            b.display(),
            r.summary(),
            r.diffs.len(),
            r.total_diffs,
            r.diffs.join("\n  ")
        );
    }
    assert!(r.entries > 1, "nothing compared under {}", a.display());
    r
}

fn kind(md: &Metadata) -> &'static str {
    let t = md.file_type();
    if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else if t.is_symlink() {
        "symlink"
    } else if t.is_char_device() {
        "char device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

fn show(rel: &Path) -> String {
    if rel.as_os_str().is_empty() {
        "/".into()
    } else {
        format!("/{}", rel.to_string_lossy().escape_debug())
    }
}

impl Walk<'_> {
    fn d(&mut self, msg: String) {
        let max = self.o.max_diffs;
        self.r.diff(max, msg);
    }

    fn entry(&mut self, rel: &Path) {
        if self.o.exclude.iter().any(|e| rel == e) {
            return;
        }
        let (pa, pb) = (self.a.join(rel), self.b.join(rel));
        let ma = match std::fs::symlink_metadata(&pa) {
            Ok(m) => m,
            Err(e) => return self.d(format!("{}: cannot stat reference: {e}", show(rel))),
        };
        let mb = match std::fs::symlink_metadata(&pb) {
            Ok(m) => m,
            Err(e) => return self.d(format!("{}: cannot stat: {e}", show(rel))),
        };
        self.r.entries += 1;
        if kind(&ma) != kind(&mb) {
            return self.d(format!("{}: type {} vs {}", show(rel), kind(&ma), kind(&mb)));
        }
        let is_root = rel.as_os_str().is_empty();
        if !is_root || self.o.root_meta {
            self.meta(rel, &pa, &pb, &ma, &mb);
        }
        let t = ma.file_type();
        if t.is_dir() {
            self.dir(rel, &pa, &pb);
            return;
        }
        if self.o.hardlinks {
            let rep_a = self.links_a.entry((ma.dev(), ma.ino())).or_insert_with(|| rel.to_path_buf()).clone();
            let rep_b = self.links_b.entry((mb.dev(), mb.ino())).or_insert_with(|| rel.to_path_buf()).clone();
            self.group_a.insert(rel.to_path_buf(), rep_a);
            self.group_b.insert(rel.to_path_buf(), rep_b);
        }
        if t.is_file() {
            self.content(rel, &pa, &pb, &ma, &mb);
        } else if t.is_symlink() {
            let (la, lb) = (std::fs::read_link(&pa), std::fs::read_link(&pb));
            match (la, lb) {
                (Ok(la), Ok(lb)) if la == lb => {}
                (la, lb) => self.d(format!("{}: symlink target {:?} vs {:?}", show(rel), la, lb)),
            }
        } else if t.is_char_device() || t.is_block_device() {
            let (ra, rb) = (ma.rdev(), mb.rdev());
            if ra != rb {
                self.d(format!(
                    "{}: device {}:{} vs {}:{}",
                    show(rel),
                    libc::major(ra),
                    libc::minor(ra),
                    libc::major(rb),
                    libc::minor(rb)
                ));
            }
        }
    }

    fn meta(&mut self, rel: &Path, pa: &Path, pb: &Path, ma: &Metadata, mb: &Metadata) {
        if ma.mode() & 0o7777 != mb.mode() & 0o7777 {
            self.d(format!("{}: mode {:04o} vs {:04o}", show(rel), ma.mode() & 0o7777, mb.mode() & 0o7777));
        }
        if (ma.uid(), ma.gid()) != (mb.uid(), mb.gid()) {
            self.d(format!("{}: owner {}:{} vs {}:{}", show(rel), ma.uid(), ma.gid(), mb.uid(), mb.gid()));
        }
        let check_mtime = self.o.dir_mtime || !ma.is_dir();
        let mt = match self.o.mtime {
            Mtime::Exact if check_mtime => (ma.mtime(), ma.mtime_nsec()) != (mb.mtime(), mb.mtime_nsec()),
            Mtime::Seconds if check_mtime => ma.mtime() != mb.mtime(),
            Mtime::WithinSecond if check_mtime => {
                let ns = |m: &Metadata| m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
                (ns(ma) - ns(mb)).abs() >= 1_000_000_000
            }
            _ => false,
        };
        if mt {
            self.d(format!(
                "{}: mtime {}.{:09} vs {}.{:09}",
                show(rel),
                ma.mtime(),
                ma.mtime_nsec(),
                mb.mtime(),
                mb.mtime_nsec()
            ));
        }
        if self.o.nlink && !ma.is_dir() && ma.nlink() != mb.nlink() {
            self.d(format!("{}: nlink {} vs {}", show(rel), ma.nlink(), mb.nlink()));
        }
        if self.o.xattrs {
            let (xa, xb) = (self.xattrs(pa), self.xattrs(pb));
            match (xa, xb) {
                (Ok(xa), Ok(xb)) => {
                    self.r.xattrs += xa.len();
                    for (k, v) in &xa {
                        match xb.get(k) {
                            None => self.d(format!("{}: xattr {} missing", show(rel), k.to_string_lossy())),
                            Some(w) if w != v => self.d(format!(
                                "{}: xattr {} = {:?} vs {:?}",
                                show(rel),
                                k.to_string_lossy(),
                                String::from_utf8_lossy(v),
                                String::from_utf8_lossy(w)
                            )),
                            _ => {}
                        }
                    }
                    for k in xb.keys().filter(|k| !xa.contains_key(*k)) {
                        self.d(format!("{}: extra xattr {}", show(rel), k.to_string_lossy()));
                    }
                }
                (Err(e), _) | (_, Err(e)) => self.d(format!("{}: listing xattrs: {e}", show(rel))),
            }
        }
    }

    fn xattrs(&self, p: &Path) -> std::io::Result<BTreeMap<OsString, Vec<u8>>> {
        let mut out = BTreeMap::new();
        for name in list_xattrs(p)? {
            let n = name.to_string_lossy();
            if self.o.ignore_xattrs.iter().any(|i| *i == n) {
                continue;
            }
            out.insert(name.clone(), get_xattr(p, &name)?);
        }
        Ok(out)
    }

    fn content(&mut self, rel: &Path, pa: &Path, pb: &Path, ma: &Metadata, mb: &Metadata) {
        self.r.regular_files += 1;
        if ma.len() != mb.len() {
            return self.d(format!("{}: size {} vs {}", show(rel), ma.len(), mb.len()));
        }
        let (fa, fb) = (File::open(pa), File::open(pb));
        let (mut fa, mut fb) = match (fa, fb) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) => return self.d(format!("{}: open reference: {e}", show(rel))),
            (_, Err(e)) => return self.d(format!("{}: open: {e}", show(rel))),
        };
        let mut ba = vec![0u8; 1 << 20];
        let mut bb = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let na = match read_full(&mut fa, &mut ba) {
                Ok(n) => n,
                Err(e) => return self.d(format!("{}: read reference at {off}: {e}", show(rel))),
            };
            let nb = match read_full(&mut fb, &mut bb[..na.max(1)]) {
                Ok(n) => n,
                Err(e) => return self.d(format!("{}: read error at offset {off}: {e}", show(rel))),
            };
            if na != nb || ba[..na] != bb[..nb] {
                let first = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y).unwrap_or(na.min(nb));
                return self.d(format!("{}: content differs at byte {}", show(rel), off + first as u64));
            }
            if na == 0 {
                break;
            }
            off += na as u64;
            self.r.bytes += na as u64;
        }
    }

    fn dir(&mut self, rel: &Path, pa: &Path, pb: &Path) {
        let names = |p: &Path| -> std::io::Result<Vec<OsString>> {
            let mut v = std::fs::read_dir(p)?.map(|e| e.map(|e| e.file_name())).collect::<Result<Vec<_>, _>>()?;
            v.sort();
            Ok(v)
        };
        let (na, nb) = match (names(pa), names(pb)) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(e), _) => return self.d(format!("{}: list reference: {e}", show(rel))),
            (_, Err(e)) => return self.d(format!("{}: list: {e}", show(rel))),
        };
        let (mut i, mut j) = (0, 0);
        while i < na.len() || j < nb.len() {
            let c = match (na.get(i), nb.get(j)) {
                (Some(x), Some(y)) => x.cmp(y),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match c {
                std::cmp::Ordering::Less => {
                    let r = rel.join(&na[i]);
                    if !self.o.exclude.contains(&r) {
                        self.d(format!("{}: missing", show(&r)));
                    }
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let r = rel.join(&nb[j]);
                    if !self.o.exclude.contains(&r) {
                        self.d(format!("{}: unexpected extra entry", show(&r)));
                    }
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    self.entry(&rel.join(&na[i]));
                    i += 1;
                    j += 1;
                }
            }
        }
    }

    /// Same-inode groups must match: for every path, its group representative (first path
    /// seen with its inode) must map to the same group on the other side.
    fn check_hardlinks(&mut self) {
        let mut groups_a: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
        for (p, rep) in &self.group_a {
            groups_a.entry(rep).or_default().push(p);
        }
        let mut groups_b: BTreeMap<&PathBuf, Vec<&PathBuf>> = BTreeMap::new();
        for (p, rep) in &self.group_b {
            groups_b.entry(rep).or_default().push(p);
        }
        let mut diffs = Vec::new();
        for (rep, members) in &groups_a {
            if members.len() > 1 {
                self.r.hardlink_groups += 1;
            }
            let rep_b = self.group_b.get(*rep);
            let other: Vec<&PathBuf> = rep_b.and_then(|r| groups_b.get(r)).cloned().unwrap_or_default();
            // Only paths present on both sides count; missing ones were reported already.
            let want: Vec<&PathBuf> = members.iter().copied().filter(|p| self.group_b.contains_key(*p)).collect();
            let got: Vec<&PathBuf> = other.iter().copied().filter(|p| self.group_a.contains_key(*p)).collect();
            if !want.is_empty() && want != got {
                diffs.push(format!(
                    "hard links: {} share an inode in the reference, but the same inode holds {}",
                    want.iter().map(|p| show(p)).collect::<Vec<_>>().join(" "),
                    got.iter().map(|p| show(p)).collect::<Vec<_>>().join(" ")
                ));
            }
        }
        for d in diffs {
            self.d(d);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// All xattr names of `p` (not following a symlink).
pub fn list_xattrs(p: &Path) -> std::io::Result<Vec<OsString>> {
    let c = cpath(p);
    loop {
        let n = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        let m = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew in between
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf.split(|&b| b == 0).filter(|s| !s.is_empty()).map(|s| OsString::from_vec(s.to_vec())).collect());
    }
}

/// The value of xattr `name` of `p` (not following a symlink).
pub fn get_xattr(p: &Path, name: &OsString) -> std::io::Result<Vec<u8>> {
    let c = cpath(p);
    let n = CString::new(name.as_bytes()).expect("xattr name without NUL");
    loop {
        let len = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
        if len < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; len as usize];
        let m = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if m < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}
