//! What a successor (failover, `--upgrade`, a restarted worker) needs beyond what the kernel
//! front-end keeps: each bootstrap's backend, so a registry-backed image is re-adopted with its
//! registry rather than a `blobs/` directory that does not exist.
//!
//! Two lists, one format: the singleton's bind list (`<fscache dir>/state/nydusd-binds.json`,
//! [`BindRecord`]) and the fuse mode's mount list (`<cache dir>/state/nydusd-mounts.json`,
//! [`MountRecord`]), each replaced atomically on every change. The backends hold credentials
//! (`auth`, `registry_token`), so the files are created mode 0600 and never logged; the
//! failover bytes sent to the snapshotter carry no backend.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::backend::BackendRef;

/// Larger than any real bind list (a record is well under 4 KiB).
const MAX_FILE: u64 = 16 << 20;
const VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BindRecord {
    pub domain_id: String,
    pub id: String,
    pub metadata_path: PathBuf,
    /// sha256 of the bootstrap when bound: a changed bootstrap is not re-adopted.
    pub image_id: String,
    #[serde(default)]
    pub backend: Option<BackendRef>,
}

/// One kernel EROFS mount of the fuse mode (`nydusd fuse`): where, which bootstrap, and from
/// which backend its blobs come.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountRecord {
    pub mountpoint: PathBuf,
    /// The snapshotter's `/<id>` of a shared-daemon mount; `None` for a dedicated daemon's.
    #[serde(default)]
    pub relative: Option<String>,
    pub bootstrap: PathBuf,
    pub image_id: String,
    #[serde(default)]
    pub backend: Option<BackendRef>,
}

#[derive(Serialize, Deserialize)]
struct StateFile<T> {
    version: u32,
    #[serde(alias = "binds")]
    records: Vec<T>,
}

/// The singleton's bind list.
pub fn path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("state").join("nydusd-binds.json")
}

/// The fuse mode's mount list.
pub fn mounts_path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("state").join("nydusd-mounts.json")
}

/// Replaces the file with `records` (temp file created 0600, fsync, rename, fsync the directory).
pub fn save<T: Serialize + Clone>(path: &Path, records: &[T]) -> Result<()> {
    let dir = path.parent().context("state file path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(&StateFile { version: VERSION, records: records.to_vec() })?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    // The umask can only take bits away; make sure nothing else was left on.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(&bytes).and_then(|_| f.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Reads the file; missing is an empty list. A file others can read is still used, and its
/// mode tightened (it holds credentials).
pub fn load<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.len() > MAX_FILE {
        bail!("{} is {} bytes: implausibly large for a state list", path.display(), meta.len());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!("{} was readable by others (it holds registry credentials): mode set to 0600", path.display());
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let state: StateFile<T> = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    if state.version != VERSION {
        bail!("{} has unknown version {}", path.display(), state.version);
    }
    Ok(state.records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_mode_0600_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path());
        assert!(load::<BindRecord>(&p).unwrap().is_empty());
        let rec = BindRecord {
            domain_id: "d".into(),
            id: "f".into(),
            metadata_path: "/x/image.boot".into(),
            image_id: "ab".repeat(32),
            backend: Some(BackendRef {
                kind: "registry".into(),
                config: serde_json::json!({"host": "h", "repo": "a", "registry_token": "secret"}),
            }),
        };
        save(&p, std::slice::from_ref(&rec)).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(load::<BindRecord>(&p).unwrap(), vec![rec.clone()]);
        save::<BindRecord>(&p, &[]).unwrap();
        assert!(load::<BindRecord>(&p).unwrap().is_empty());
        // Widened by someone: still read, tightened.
        save(&p, &[rec]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load::<BindRecord>(&p).unwrap().len(), 1);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, b"{not json").unwrap();
        assert!(format!("{:#}", load::<BindRecord>(&p).unwrap_err()).contains("parsing"));
        std::fs::write(&p, br#"{"version": 9, "binds": []}"#).unwrap();
        assert!(format!("{:#}", load::<BindRecord>(&p).unwrap_err()).contains("version 9"));
        // A list written before the key was generic still reads.
        std::fs::write(&p, br#"{"version": 1, "binds": []}"#).unwrap();
        assert!(load::<BindRecord>(&p).unwrap().is_empty());
        let m = MountRecord { mountpoint: "/m/x".into(), relative: Some("/x".into()), bootstrap: "/b".into(), image_id: "cd".repeat(32), backend: None };
        let mp = mounts_path(d.path());
        save(&mp, std::slice::from_ref(&m)).unwrap();
        assert_eq!(load::<MountRecord>(&mp).unwrap(), vec![m]);
    }
}
