//! Daemon settings: defaults, overridden by a TOML file, overridden by command-line flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::frontend::FrontendKind;

pub const DEFAULT_CACHE_DIR: &str = "/var/cache/erofsd";
pub const DEFAULT_API_SOCKET: &str = "/run/erofsd/api.sock";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub frontend: FrontendKind,
    /// Everything the daemon writes lives under here (cache objects, sparse blob files, state).
    pub cache_dir: PathBuf,
    pub api_socket: PathBuf,
    /// Concurrent source requests across all blobs.
    pub max_concurrent_fetches: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            frontend: FrontendKind::Auto,
            cache_dir: DEFAULT_CACHE_DIR.into(),
            api_socket: DEFAULT_API_SOCKET.into(),
            max_concurrent_fetches: 64,
        }
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_sets_fields_and_rejects_unknown_ones() {
        let c: Config = toml::from_str("frontend = \"fanotify\"\ncache_dir = \"/x\"\n").unwrap();
        assert_eq!(c.frontend, FrontendKind::Fanotify);
        assert_eq!(c.cache_dir, PathBuf::from("/x"));
        assert_eq!(c.api_socket, PathBuf::from(DEFAULT_API_SOCKET));
        assert!(toml::from_str::<Config>("cach_dir = \"/x\"").is_err());
    }
}
