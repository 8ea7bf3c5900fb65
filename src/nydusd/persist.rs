//! The bind list a successor (failover or `--upgrade`) needs beyond what the cachefiles
//! front-end keeps: each bind's backend, so a registry-backed bind is re-adopted with its
//! registry rather than a `blobs/` directory that does not exist.
//!
//! `<fscache dir>/state/nydusd-binds.json`, replaced atomically on every bind and unbind. The
//! backends hold credentials (`auth`, `registry_token`), so the file is created mode 0600 and
//! is never logged; the failover bytes sent to the snapshotter carry no backend.

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

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    binds: Vec<BindRecord>,
}

pub fn path(cache_dir: &Path) -> PathBuf {
    cache_dir.join("state").join("nydusd-binds.json")
}

/// Replaces the file with `binds` (temp file created 0600, fsync, rename, fsync the directory).
pub fn save(path: &Path, binds: &[BindRecord]) -> Result<()> {
    let dir = path.parent().context("state file path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let bytes = serde_json::to_vec_pretty(&StateFile { version: VERSION, binds: binds.to_vec() })?;
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
pub fn load(path: &Path) -> Result<Vec<BindRecord>> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if meta.len() > MAX_FILE {
        bail!("{} is {} bytes: implausibly large for a bind list", path.display(), meta.len());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!("{} was readable by others (it holds registry credentials): mode set to 0600", path.display());
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let state: StateFile = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    if state.version != VERSION {
        bail!("{} has unknown version {}", path.display(), state.version);
    }
    Ok(state.binds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_mode_0600_and_bad_files() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path());
        assert!(load(&p).unwrap().is_empty());
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
        assert_eq!(load(&p).unwrap(), vec![rec.clone()]);
        save(&p, &[]).unwrap();
        assert!(load(&p).unwrap().is_empty());
        // Widened by someone: still read, tightened.
        save(&p, &[rec]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load(&p).unwrap().len(), 1);
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::write(&p, b"{not json").unwrap();
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("parsing"));
        std::fs::write(&p, br#"{"version": 9, "binds": []}"#).unwrap();
        assert!(format!("{:#}", load(&p).unwrap_err()).contains("version 9"));
    }
}
