//! "Nothing written outside OUTDIR": a listing of a directory tree (path, type, size, mtime)
//! to take before and after a command and compare.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub type Snapshot = BTreeMap<PathBuf, (u32, u64, i64, i64)>;

/// Every entry under `root` except the subtree `skip` (the output directory itself).
pub fn snapshot(root: &Path, skip: Option<&Path>) -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        if Some(p.as_path()) == skip {
            continue;
        }
        let Ok(md) = std::fs::symlink_metadata(&p) else { continue };
        out.insert(p.clone(), (md.mode(), md.size(), md.mtime(), md.mtime_nsec()));
        if md.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    out
}

/// Human-readable differences between two snapshots (empty = unchanged).
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (p, v) in after {
        match before.get(p) {
            None => d.push(format!("created {}", p.display())),
            Some(b) if b != v && (v.0 & 0o170000 != 0o040000) => d.push(format!("changed {}", p.display())),
            _ => {}
        }
    }
    for p in before.keys() {
        if !after.contains_key(p) {
            d.push(format!("removed {}", p.display()));
        }
    }
    d
}
