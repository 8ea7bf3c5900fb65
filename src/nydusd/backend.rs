//! Where a bind's blob bytes come from: the BlobCacheEntry's `backend_type`/`backend_config`.
//!
//! A `blobs/` directory beside the bootstrap wins (images made by `erofsd build`, and the
//! tests); otherwise `registry` (`scheme://host`, `repo`, `auth` = base64 `user:pass`) and
//! `localfs` (`dir`) are honoured; anything else falls back to `blobs/` beside the bootstrap
//! (reads then fail with EIO, and the bind says so in the log).

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use base64::Engine;

use crate::core::registry::{Credentials, RegistryConfig, RegistrySource};
use crate::core::source::{LocalDirSource, SharedSource};

/// The entry's `config` object (`config_v2` has `backend.type` + `backend.<type>`).
pub fn source_for(boot: &Path, config: &serde_json::Value) -> Result<Option<SharedSource>> {
    let beside = boot.parent().unwrap_or(Path::new(".")).join("blobs");
    if beside.is_dir() {
        return Ok(None);
    }
    let (kind, bc) = match config.get("backend_type").and_then(|t| t.as_str()) {
        Some(t) => (t.to_string(), config.get("backend_config").cloned().unwrap_or_default()),
        None => match config.get("backend").and_then(|b| b.get("type")).and_then(|t| t.as_str()) {
            Some(t) => (t.to_string(), config["backend"].get(t).cloned().unwrap_or_default()),
            None => return Ok(None),
        },
    };
    let s = |k: &str| bc.get(k).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
    match kind.as_str() {
        "registry" => {
            let Some(host) = s("host") else { bail!("backend_config.host is missing") };
            let Some(repo) = s("repo") else { bail!("backend_config.repo is missing") };
            let scheme = s("scheme").unwrap_or("https");
            let mut cfg = RegistryConfig::new(format!("{scheme}://{host}"), repo);
            if let Some(auth) = s("auth") {
                let raw = base64::engine::general_purpose::STANDARD.decode(auth).context("backend_config.auth is not base64")?;
                let text = String::from_utf8(raw).context("backend_config.auth is not UTF-8")?;
                let Some((u, p)) = text.split_once(':') else { bail!("backend_config.auth is not user:password") };
                cfg.credentials = Credentials::Basic { username: u.into(), password: p.into() };
            }
            Ok(Some(Arc::new(RegistrySource::new(cfg).context("registry backend")?)))
        }
        "localfs" => match s("dir") {
            Some(dir) => Ok(Some(Arc::new(LocalDirSource::new(Path::new(dir))))),
            None => bail!("localfs backend without backend_config.dir"),
        },
        other => {
            tracing::warn!("backend_type {other:?} is not supported: blobs are read from {}", beside.display());
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_from_the_snapshotter_config() {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("image/image.boot");
        std::fs::create_dir_all(boot.parent().unwrap()).unwrap();
        let reg = serde_json::json!({"backend_type": "registry", "backend_config": {"host": "r.example:5000", "repo": "lib/app", "scheme": "http", "auth": "dXNlcjpwYXNz"}});
        assert!(source_for(&boot, &reg).unwrap().is_some());
        let bad = serde_json::json!({"backend_type": "registry", "backend_config": {"host": "r.example", "repo": "lib/app", "auth": "%%%"}});
        assert!(source_for(&boot, &bad).is_err());
        let nohost = serde_json::json!({"backend_type": "registry", "backend_config": {"repo": "x"}});
        assert!(format!("{:#}", source_for(&boot, &nohost).err().expect("an error")).contains("host"));
        let local = serde_json::json!({"backend": {"type": "localfs", "localfs": {"dir": "/blobs"}}});
        assert!(source_for(&boot, &local).unwrap().is_some());
        assert!(source_for(&boot, &serde_json::json!({"backend_type": "oss"})).unwrap().is_none());
        // blobs/ beside the bootstrap wins.
        std::fs::create_dir_all(boot.parent().unwrap().join("blobs")).unwrap();
        assert!(source_for(&boot, &reg).unwrap().is_none());
    }
}
