//! The mount table, persisted under the cache dir (`fanotify/mounts.json`) so a worker
//! restarted under the same group knows which mounts it serves (the kernel kept them).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedMount {
    pub mountpoint: PathBuf,
    pub image: PathBuf,
    pub image_id: String,
    /// Lazily detached with blobs left incomplete: its open files may still read holes, so
    /// the group must stay open (the supervisor's failsafe keeps denying).
    #[serde(default)]
    pub detached: bool,
}

pub fn load(path: &Path) -> Vec<SavedMount> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Writes atomically (temp file + rename): a crash leaves the old table or the new one.
pub fn save(path: &Path, mounts: &[SavedMount]) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(mounts)?).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))?;
    Ok(())
}
