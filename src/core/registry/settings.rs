//! The daemon's `[registry]` settings: how to reach any registry an image reference names.
//!
//! One section covers every registry: credentials come per host from a docker `config.json`,
//! the rest (CAs, proxy, timeouts, retries) is shared. Turned into a [`RegistryConfig`] per
//! (registry, repository) when an image is pulled or a pulled image is loaded again.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{docker_config, RegistryConfig, RetryPolicy, TransportOptions};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrySettings {
    /// Docker `config.json` with credentials per registry. Unset: `$DOCKER_CONFIG/config.json`
    /// or `~/.docker/config.json` when it exists; no file means anonymous access.
    pub docker_config: Option<PathBuf>,
    /// PEM files trusted in addition to the system roots.
    pub ca_files: Vec<PathBuf>,
    /// Accept any certificate (logged). Only when asked for.
    pub insecure_skip_verify: bool,
    /// HTTP(S) forward proxy for every registry request (e.g. a Dragonfly peer daemon).
    pub proxy: Option<String>,
    pub connect_timeout_secs: u64,
    pub read_timeout_secs: u64,
    pub retry_attempts: u32,
}

impl Default for RegistrySettings {
    fn default() -> RegistrySettings {
        let t = TransportOptions::default();
        RegistrySettings {
            docker_config: None,
            ca_files: Vec::new(),
            insecure_skip_verify: false,
            proxy: None,
            connect_timeout_secs: t.connect_timeout.as_secs(),
            read_timeout_secs: t.read_timeout.as_secs(),
            retry_attempts: RetryPolicy::default().attempts,
        }
    }
}

impl RegistrySettings {
    /// The source configuration for `repository` on `registry` (`http(s)://host[:port]`).
    pub fn config_for(&self, registry: &str, repository: &str) -> io::Result<RegistryConfig> {
        let mut cfg = RegistryConfig::new(registry, repository);
        cfg.transport.extra_ca_files = self.ca_files.clone();
        cfg.transport.insecure_skip_verify = self.insecure_skip_verify;
        cfg.transport.proxy = self.proxy.clone();
        cfg.transport.connect_timeout = Duration::from_secs(self.connect_timeout_secs.max(1));
        cfg.transport.read_timeout = Duration::from_secs(self.read_timeout_secs.max(1));
        cfg.retry.attempts = self.retry_attempts.max(1);
        let config_file = match &self.docker_config {
            Some(p) => Some(p.clone()),
            None => docker_config::default_path().filter(|p| p.exists()),
        };
        match config_file {
            Some(path) => cfg.with_docker_config(&path),
            None => Ok(cfg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_become_a_source_config_with_credentials_per_host() {
        let dir = tempfile::tempdir().unwrap();
        let cfg_path = dir.path().join("config.json");
        // "u:p" in base64, for one host only.
        std::fs::write(&cfg_path, r#"{"auths":{"reg.example:5000":{"auth":"dTpw"}}}"#).unwrap();
        let s = RegistrySettings {
            docker_config: Some(cfg_path.clone()),
            ca_files: vec!["/x/ca.pem".into()],
            proxy: Some("http://127.0.0.1:3128".into()),
            retry_attempts: 0,
            ..Default::default()
        };
        let c = s.config_for("https://reg.example:5000", "a/b").unwrap();
        assert!(matches!(c.credentials, super::super::Credentials::Basic { .. }));
        assert_eq!(c.transport.extra_ca_files, vec![PathBuf::from("/x/ca.pem")]);
        assert_eq!(c.transport.proxy.as_deref(), Some("http://127.0.0.1:3128"));
        assert_eq!(c.retry.attempts, 1, "at least one try");
        let other = s.config_for("https://other.example", "a/b").unwrap();
        assert!(matches!(other.credentials, super::super::Credentials::Anonymous));
        let missing = RegistrySettings { docker_config: Some(dir.path().join("none.json")), ..Default::default() };
        assert!(matches!(missing.config_for("https://reg.example:5000", "a").unwrap().credentials, super::super::Credentials::Anonymous));
    }
}
