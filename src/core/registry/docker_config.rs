//! Credentials from a docker `config.json` (also podman/skopeo `auth.json`, same shape):
//! `{"auths": {"<registry>": {"auth": "<base64 user:pass>"}}}`, or `username`/`password`.
//!
//! Credential helpers (`credsStore`, `credHelpers`) and `identitytoken` (OAuth2 refresh
//! tokens) are not supported: an entry that only has those yields no credentials, and we say so.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::auth::Credentials;

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Where docker looks: `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

/// Normalises an `auths` key: drops a scheme and any path (`https://host:5000/v1/` -> `host:5000`).
fn key_host(key: &str) -> &str {
    let k = key.split_once("://").map(|(_, rest)| rest).unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Credentials for `registry` (`host[:port]`) from the config file at `path`.
/// A missing file is `Ok(Anonymous)`; an unreadable or malformed one is an error.
pub fn load(path: &Path, registry: &str) -> io::Result<Credentials> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Credentials::Anonymous),
        Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
    };
    parse(&text, registry).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))
}

/// Parses config text and picks the entry for `registry`.
pub fn parse(text: &[u8], registry: &str) -> Result<Credentials, String> {
    let cfg: ConfigFile = serde_json::from_slice(text).map_err(|e| format!("not a docker config: {e}"))?;
    // docker.io's credentials live under the legacy index URL.
    let wanted: Vec<&str> = if matches!(registry, "docker.io" | "registry-1.docker.io" | "index.docker.io") {
        vec!["index.docker.io", "docker.io", "registry-1.docker.io"]
    } else {
        vec![registry]
    };
    // Exact key first, then any key that normalises to the host.
    let entry = wanted
        .iter()
        .find_map(|w| cfg.auths.get(*w))
        .or_else(|| cfg.auths.iter().find(|(k, _)| wanted.contains(&key_host(k))).map(|(_, v)| v));
    let Some(entry) = entry else { return Ok(Credentials::Anonymous) };
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auths.{registry}.auth is not base64: {e}"))?;
        let s = String::from_utf8(raw).map_err(|_| format!("auths.{registry}.auth is not UTF-8"))?;
        let (u, p) = s.split_once(':').ok_or_else(|| format!("auths.{registry}.auth is not user:password"))?;
        return Ok(Credentials::basic(u, p));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Credentials::basic(u.clone(), p.clone()));
    }
    if entry.identitytoken.is_some() {
        tracing::warn!("docker config entry for {registry} has only an identitytoken, which erofsd does not support");
    }
    Ok(Credentials::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_entries_by_host_in_any_key_form() {
        let cfg = br#"{"auths": {
            "https://reg.example:5000/v1/": {"auth": "dXNlcjpwYTpzcw=="},
            "other.example": {"username": "a", "password": "b"},
            "https://index.docker.io/v1/": {"auth": "ZDpo"}
        }}"#;
        assert_eq!(parse(cfg, "reg.example:5000").unwrap(), Credentials::basic("user", "pa:ss"));
        assert_eq!(parse(cfg, "other.example").unwrap(), Credentials::basic("a", "b"));
        assert_eq!(parse(cfg, "docker.io").unwrap(), Credentials::basic("d", "h"));
        assert_eq!(parse(cfg, "nowhere.example").unwrap(), Credentials::Anonymous);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        assert!(parse(b"not json", "x").unwrap_err().contains("not a docker config"));
        assert!(parse(br#"{"auths":{"x":{"auth":"%%%"}}}"#, "x").unwrap_err().contains("base64"));
        assert!(parse(br#"{"auths":{"x":{"auth":"bm9jb2xvbg=="}}}"#, "x").unwrap_err().contains("user:password"));
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(&dir.path().join("missing.json"), "x").unwrap(), Credentials::Anonymous);
    }
}
