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
    /// `[prefetch]`: background prefetch and access traces (core::prefetch).
    pub prefetch: crate::core::prefetch::PrefetchConfig,
    /// `[cache]`: size limit and eviction.
    pub cache: CacheConfig,
    /// `[registry]`: how images mounted by reference reach their registries.
    pub registry: crate::core::registry::settings::RegistrySettings,
}

/// `[cache]` settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Bytes on disk the cache may use (`"20GiB"` or a number); least recently used blobs no
    /// mount uses are evicted above it. None: no limit.
    #[serde(deserialize_with = "crate::cache::size::deserialize_opt", serialize_with = "crate::cache::size::serialize_opt")]
    pub max_size: Option<u64>,
    /// Seconds between size checks (a check is cheap: one stat and one SEEK_DATA walk per blob).
    pub gc_interval_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> CacheConfig {
        CacheConfig { max_size: None, gc_interval_secs: 10 }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            frontend: FrontendKind::Auto,
            cache_dir: DEFAULT_CACHE_DIR.into(),
            api_socket: DEFAULT_API_SOCKET.into(),
            max_concurrent_fetches: 64,
            prefetch: Default::default(),
            cache: CacheConfig::default(),
            registry: Default::default(),
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
        assert_eq!(c.cache.max_size, None);
        let c: Config = toml::from_str("[cache]\nmax_size = \"20GiB\"\n").unwrap();
        assert_eq!(c.cache.max_size, Some(20 << 30));
        let c: Config = toml::from_str("[cache]\nmax_size = 4096\ngc_interval_secs = 2\n").unwrap();
        assert_eq!((c.cache.max_size, c.cache.gc_interval_secs), (Some(4096), 2));
        assert!(toml::from_str::<Config>("[cache]\nmax_size = \"lots\"\n").is_err());
        assert!(toml::from_str::<Config>("[cache]\nmax_sise = 1\n").is_err());
    }
}
