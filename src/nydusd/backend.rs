//! Where a bind's blob bytes come from: the BlobCacheEntry's `backend_type`/`backend_config`
//! (or `config_v2`'s `backend.type` + `backend.<type>`).
//!
//! A `blobs/` directory beside the bootstrap wins (images made by `erofsd build`, and the
//! tests); otherwise `registry` and `localfs` are honoured; anything else falls back to `blobs/`
//! beside the bootstrap (reads then fail with EIO, and the bind says so in the log).
//!
//! The registry backend is nydus's `RegistryConfig` (nydus `api/src/config.rs`) as
//! nydus-snapshotter fills it (`config/daemonconfig/daemonconfig.go`). Every field our registry
//! client can honour is mapped onto [`RegistryConfig`]; a field it cannot honour is named in one
//! warning per bind and otherwise ignored (never a failed bind); a field of the wrong type or an
//! unusable value is a clear error. [`BackendRef`] is the part of the entry a successor needs
//! to rebuild the source after a failover (persisted by `persist.rs`).
//!
//! Credentials are only what the entry carries, as in nydusd: an empty `auth` means anonymous
//! (the snapshotter already consulted docker config, kubelet and CRI credentials before it sent
//! the entry; nydusd reads no docker config in this mode, and neither do we).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::core::registry::{Credentials, RedirectRewrite, RegistryConfig, RegistrySource, StaticToken};
use crate::core::source::{LocalDirSource, SharedSource};

/// Longest timeout accepted from a config (nydusd takes any u32; a day is already absurd).
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// A bind's backend as the entry gave it: the type and its config object, verbatim.
/// It holds credentials: it is persisted only in a 0600 file and never logged.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendRef {
    #[serde(rename = "type")]
    pub kind: String,
    pub config: Value,
}

impl std::fmt::Debug for BackendRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BackendRef({})", self.kind)
    }
}

impl BackendRef {
    /// The backend named by an entry's `config` (v1: `backend_type` + `backend_config`) or
    /// `config_v2` (`backend.type` + `backend.<type>`); `None` when it names none.
    pub fn from_entry(config: &Value) -> Option<BackendRef> {
        if let Some(t) = config.get("backend_type").and_then(|t| t.as_str()) {
            return Some(BackendRef { kind: t.into(), config: config.get("backend_config").cloned().unwrap_or(Value::Null) });
        }
        let b = config.get("backend")?;
        let t = b.get("type")?.as_str()?;
        Some(BackendRef { kind: t.into(), config: b.get(t).cloned().unwrap_or(Value::Null) })
    }

    /// The blob source for a bootstrap at `boot`: `None` means `blobs/` beside it.
    pub fn source(&self, boot: &Path) -> Result<Option<SharedSource>> {
        Ok(self.build(boot)?.map(|b| b.source))
    }

    /// [`BackendRef::source`], keeping a handle on a registry source (credential renewal).
    pub fn build(&self, boot: &Path) -> Result<Option<Built>> {
        let beside = beside(boot);
        if beside.is_dir() {
            return Ok(None);
        }
        match self.kind.as_str() {
            "registry" => {
                let (cfg, warnings) = registry_config(&self.config)?;
                for w in &warnings {
                    tracing::warn!("registry backend for {}: {w}", boot.display());
                }
                let reg = Arc::new(RegistrySource::new(cfg).context("registry backend")?);
                Ok(Some(Built { source: reg.clone(), registry: Some(reg) }))
            }
            "localfs" => {
                let (dir, warnings) = localfs_dir(&self.config)?;
                for w in &warnings {
                    tracing::warn!("localfs backend for {}: {w}", boot.display());
                }
                Ok(Some(Built { source: Arc::new(LocalDirSource::new(&dir)), registry: None }))
            }
            other => {
                tracing::warn!("backend_type {other:?} is not supported: blobs are read from {}", beside.display());
                Ok(None)
            }
        }
    }

    /// What the source is, for logs and `GET /api/v2/blobs` (no credentials).
    pub fn describe(&self) -> String {
        let s = |k: &str| self.config.get(k).and_then(|v| v.as_str()).unwrap_or("");
        match self.kind.as_str() {
            "registry" => format!("registry {}://{}/{}", if s("scheme").is_empty() { "https" } else { s("scheme") }, s("host"), s("repo")),
            "localfs" => format!("localfs {}", s("dir")),
            other => other.to_string(),
        }
    }
}

/// A built source; `registry` is the same source when it is a registry.
pub struct Built {
    pub source: SharedSource,
    pub registry: Option<Arc<RegistrySource>>,
}

/// A renewed `registry_auth` (base64 `user:password`, as `auth`): the credentials.
pub fn parse_auth(auth: &str) -> Result<Credentials> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|e| anyhow::anyhow!("backend_config.auth is not base64 ({e})"))?;
    let text = String::from_utf8(raw).map_err(|_| anyhow::anyhow!("backend_config.auth is not UTF-8 once decoded"))?;
    let Some((u, p)) = text.split_once(':') else { bail!("backend_config.auth does not decode to user:password") };
    Ok(Credentials::basic(u, p))
}

fn beside(boot: &Path) -> PathBuf {
    boot.parent().unwrap_or(Path::new(".")).join("blobs")
}

/// The entry's `config` object: `Ok(None)` means `blobs/` beside the bootstrap.
pub fn source_for(boot: &Path, config: &Value) -> Result<Option<SharedSource>> {
    match BackendRef::from_entry(config) {
        Some(b) => b.source(boot),
        None => Ok(None),
    }
}

/// Typed access to one config object, with errors that name the field.
struct Fields<'a> {
    prefix: &'a str,
    obj: Option<&'a Map<String, Value>>,
}

impl<'a> Fields<'a> {
    fn new(prefix: &'a str, v: &'a Value) -> Result<Fields<'a>> {
        match v {
            Value::Null => Ok(Fields { prefix, obj: None }),
            Value::Object(m) => Ok(Fields { prefix, obj: Some(m) }),
            other => bail!("{prefix} must be a JSON object, not {}", kind_of(other)),
        }
    }

    fn get(&self, k: &str) -> Option<&'a Value> {
        self.obj.and_then(|m| m.get(k)).filter(|v| !v.is_null())
    }

    /// A string field; empty counts as absent (the snapshotter's `omitempty` zero value).
    fn str(&self, k: &str) -> Result<Option<&'a str>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str()).filter(|s| !s.trim().is_empty())),
            Some(other) => bail!("{}.{k} must be a string, not {}", self.prefix, kind_of(other)),
        }
    }

    fn bool(&self, k: &str) -> Result<Option<bool>> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => bail!("{}.{k} must be true or false, not {}", self.prefix, kind_of(other)),
        }
    }

    /// A whole number in `0..=max`.
    fn uint(&self, k: &str, max: u64) -> Result<Option<u64>> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(n) if n <= max => Ok(Some(n)),
                _ => bail!("{}.{k} must be a whole number from 0 to {max}, not {v}", self.prefix),
            },
        }
    }

    fn strings(&self, k: &str) -> Result<Vec<&'a str>> {
        match self.get(k) {
            None => Ok(Vec::new()),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().ok_or_else(|| anyhow::anyhow!("{}.{k} must be a list of strings, not holding {}", self.prefix, kind_of(v))))
                .collect(),
            Some(other) => bail!("{}.{k} must be a list of strings, not {}", self.prefix, kind_of(other)),
        }
    }

    /// Keys not in `known` whose value is not a zero value: what a warning must name.
    fn unknown(&self, known: &[&str]) -> Vec<String> {
        let Some(m) = self.obj else { return Vec::new() };
        m.iter().filter(|(k, v)| !known.contains(&k.as_str()) && !is_zero(v)).map(|(k, _)| format!("{}.{k}", self.prefix)).collect()
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The zero values Go's JSON encoder writes for unset fields without `omitempty`.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(is_zero),
    }
}

/// Registry fields we map, and fields we know but cannot honour (with why).
const REGISTRY_HONOURED: &[&str] = &[
    "scheme",
    "host",
    "repo",
    "auth",
    "registry_token",
    "skip_verify",
    "ca_cert_files",
    "timeout",
    "connect_timeout",
    "retry_limit",
    "proxy",
    "blob_url_scheme",
    "blob_redirected_host",
];
const REGISTRY_NOT_HONOURED: &[(&str, &str)] = &[("mirrors", "no registry mirrors: blobs come from `host` (or through `proxy.url`)")];

/// Maps nydus's registry backend config onto our client's [`RegistryConfig`]; returns it and
/// one warning per field that was set but is not honoured.
pub fn registry_config(bc: &Value) -> Result<(RegistryConfig, Vec<String>)> {
    let f = Fields::new("backend_config", bc)?;
    let mut warnings = Vec::new();
    let Some(host) = f.str("host")? else { bail!("backend_config.host is missing") };
    let host = host.trim();
    if host.contains("://") || host.chars().any(|c| c.is_whitespace() || "/?#@".contains(c)) {
        bail!("backend_config.host {host:?} must be a host[:port] (the scheme goes in backend_config.scheme)");
    }
    let Some(repo) = f.str("repo")? else { bail!("backend_config.repo is missing") };
    let scheme = match f.str("scheme")?.map(|s| s.trim().to_ascii_lowercase()) {
        None => "https".to_string(),
        Some(s) if s == "http" || s == "https" => s,
        Some(s) => bail!("backend_config.scheme {s:?} must be \"http\" or \"https\""),
    };
    let mut cfg = RegistryConfig::new(format!("{scheme}://{host}"), repo.trim());

    if let Some(auth) = f.str("auth")? {
        cfg.credentials = parse_auth(auth)?;
    }
    if let Some(t) = f.str("registry_token")? {
        cfg.static_token = Some(StaticToken::new(t).map_err(|e| anyhow::anyhow!("backend_config.registry_token: {e}"))?);
    }
    if let Some(v) = f.bool("skip_verify")? {
        cfg.transport.insecure_skip_verify = v;
    }
    cfg.transport.extra_ca_files = f.strings("ca_cert_files")?.into_iter().filter(|s| !s.is_empty()).map(PathBuf::from).collect();
    // nydusd's `timeout` bounds a whole request; ours are a whole-request bound and a
    // between-bytes bound, both capped by it. 0 is the snapshotter's "unset".
    if let Some(t) = f.uint("timeout", MAX_TIMEOUT_SECS)?.filter(|&t| t > 0) {
        let t = Duration::from_secs(t);
        cfg.transport.request_timeout = t;
        cfg.transport.read_timeout = cfg.transport.read_timeout.min(t);
    }
    if let Some(t) = f.uint("connect_timeout", MAX_TIMEOUT_SECS)?.filter(|&t| t > 0) {
        cfg.transport.connect_timeout = Duration::from_secs(t);
    }
    // nydusd's retry_limit counts retries after the first try.
    if let Some(n) = f.uint("retry_limit", u8::MAX as u64)? {
        cfg.retry.attempts = n as u32 + 1;
    }

    let redirect = RedirectRewrite {
        scheme: f.str("blob_url_scheme")?.map(|s| s.trim().to_ascii_lowercase()),
        host: f.str("blob_redirected_host")?.map(|s| s.trim().to_string()),
    };
    if let Some(s) = redirect.scheme.as_deref().filter(|s| !matches!(*s, "http" | "https")) {
        bail!("backend_config.blob_url_scheme {s:?} must be \"http\" or \"https\"");
    }
    if redirect.check().is_err() {
        bail!("backend_config.blob_redirected_host {:?} must be a host or host:port", redirect.host.as_deref().unwrap_or(""));
    }
    cfg.blob_redirect = redirect;

    let proxy_v = f.get("proxy").cloned().unwrap_or(Value::Null);
    let proxy = Fields::new("backend_config.proxy", &proxy_v)?;
    if let Some(url) = proxy.str("url")? {
        let u = url::Url::parse(url.trim()).map_err(|e| anyhow::anyhow!("backend_config.proxy.url {url:?} is not a URL ({e})"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
            bail!("backend_config.proxy.url {url:?} must be an http(s)://host[:port] URL");
        }
        cfg.transport.proxy = Some(url.trim().to_string());
        // nydusd's default is to fall back; its fallback follows a health check, ours is per
        // request (a request the proxy fails is sent once more directly).
        cfg.transport.proxy_fallback = proxy.bool("fallback")?.unwrap_or(true);
        if proxy.str("ping_url")?.is_some() {
            let _ = proxy.uint("check_interval", u64::MAX)?;
            warnings.push(format!(
                "backend_config.proxy.ping_url (and check_interval) is not honoured: the proxy is not health-checked{}",
                if cfg.transport.proxy_fallback { "; each request it fails is sent once more directly" } else { "" }
            ));
        }
        if proxy.bool("use_http")?.unwrap_or(false) {
            warnings.push("backend_config.proxy.use_http is not honoured: requests keep the registry's scheme".into());
        }
    } else {
        // Type errors still count; without a url the rest is moot.
        proxy.bool("fallback")?;
        proxy.str("ping_url")?;
        proxy.bool("use_http")?;
    }
    warnings.extend(
        proxy
            .unknown(&["url", "fallback", "ping_url", "check_interval", "use_http", "check_pause_elapsed"])
            .into_iter()
            .map(|k| format!("{k} is not a proxy option erofsd knows; ignored")),
    );

    for (k, why) in REGISTRY_NOT_HONOURED {
        if f.get(k).is_some_and(|v| !is_zero(v)) {
            warnings.push(format!("backend_config.{k} is not honoured: {why}"));
        }
    }
    let known: Vec<&str> = REGISTRY_HONOURED.iter().copied().chain(REGISTRY_NOT_HONOURED.iter().map(|(k, _)| *k)).collect();
    warnings.extend(f.unknown(&known).into_iter().map(|k| format!("{k} is not a registry option erofsd knows; ignored")));
    Ok((cfg, warnings))
}

/// The localfs backend: `dir` (nydusd's `blob_file` and `alt_dirs` are not honoured).
pub fn localfs_dir(bc: &Value) -> Result<(PathBuf, Vec<String>)> {
    let f = Fields::new("backend_config", bc)?;
    let Some(dir) = f.str("dir")? else { bail!("localfs backend without backend_config.dir") };
    let warnings = f.unknown(&["dir"]).into_iter().map(|k| format!("{k} is not honoured (only backend_config.dir is)")).collect();
    Ok((PathBuf::from(dir), warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(bc: Value) -> Result<(RegistryConfig, Vec<String>)> {
        registry_config(&bc)
    }

    fn err(bc: Value) -> String {
        format!("{:#}", reg(bc).expect_err("an error"))
    }

    #[test]
    fn backends_from_the_snapshotter_config() {
        let d = tempfile::tempdir().unwrap();
        let boot = d.path().join("image/image.boot");
        std::fs::create_dir_all(boot.parent().unwrap()).unwrap();
        let regc = json!({"backend_type": "registry", "backend_config": {"host": "r.example:5000", "repo": "lib/app", "scheme": "http", "auth": "dXNlcjpwYXNz"}});
        assert!(source_for(&boot, &regc).unwrap().is_some());
        let bad = json!({"backend_type": "registry", "backend_config": {"host": "r.example", "repo": "lib/app", "auth": "%%%"}});
        assert!(source_for(&boot, &bad).is_err());
        let nohost = json!({"backend_type": "registry", "backend_config": {"repo": "x"}});
        assert!(format!("{:#}", source_for(&boot, &nohost).err().expect("an error")).contains("host"));
        let local = json!({"backend": {"type": "localfs", "localfs": {"dir": "/blobs"}}});
        assert!(source_for(&boot, &local).unwrap().is_some());
        assert_eq!(BackendRef::from_entry(&local).unwrap().describe(), "localfs /blobs");
        assert!(source_for(&boot, &json!({"backend_type": "oss"})).unwrap().is_none());
        assert!(source_for(&boot, &json!({"metadata_path": "/x"})).unwrap().is_none());
        // blobs/ beside the bootstrap wins.
        std::fs::create_dir_all(boot.parent().unwrap().join("blobs")).unwrap();
        assert!(source_for(&boot, &regc).unwrap().is_none());
    }

    /// Everything the snapshotter may send, mapped field by field.
    #[test]
    fn every_honoured_field_lands_in_the_client_config() {
        let (c, w) = reg(json!({
            "host": "r.example:5000", "repo": "lib/app", "scheme": "HTTP", "auth": "YWxpY2U6czNjOnJldA==",
            "registry_token": "tok", "skip_verify": true, "ca_cert_files": ["/etc/ca.pem"],
            "timeout": 7, "connect_timeout": 3, "retry_limit": 2,
            "proxy": {"url": "http://127.0.0.1:65001", "fallback": false},
            "blob_url_scheme": "http", "blob_redirected_host": "p2p.example:65001",
            "readahead": false, "readahead_sec": 0, "mirrors": [],
        }))
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.registry, "http://r.example:5000");
        assert_eq!(c.repository, "lib/app");
        assert_eq!(c.credentials, Credentials::basic("alice", "s3c:ret"));
        assert_eq!(c.static_token, Some(StaticToken("tok".into())));
        assert!(c.transport.insecure_skip_verify);
        assert_eq!(c.transport.extra_ca_files, vec![PathBuf::from("/etc/ca.pem")]);
        assert_eq!(c.transport.request_timeout, Duration::from_secs(7));
        assert_eq!(c.transport.read_timeout, Duration::from_secs(7));
        assert_eq!(c.transport.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.retry.attempts, 3);
        assert_eq!(c.transport.proxy.as_deref(), Some("http://127.0.0.1:65001"));
        assert!(!c.transport.proxy_fallback);
        assert_eq!(c.blob_redirect, RedirectRewrite { scheme: Some("http".into()), host: Some("p2p.example:65001".into()) });
        assert!(!format!("{c:?}").contains("tok\""), "token in Debug: {c:?}");

        // Defaults: https, anonymous, our own timeouts and retries, no proxy.
        let (c, w) = reg(json!({"host": "r.example", "repo": "a", "timeout": 0, "proxy": {"fallback": true}})).unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.registry, "https://r.example");
        assert_eq!(c.credentials, Credentials::Anonymous);
        assert!(c.static_token.is_none() && c.transport.proxy.is_none());
        let d = RegistryConfig::new("x", "y");
        assert_eq!((c.transport.request_timeout, c.retry.attempts), (d.transport.request_timeout, d.retry.attempts));
        // An explicit retry_limit 0: one try, as nydusd.
        assert_eq!(reg(json!({"host": "h", "repo": "a", "retry_limit": 0})).unwrap().0.retry.attempts, 1);
    }

    #[test]
    fn fields_not_honoured_are_each_named_once() {
        let (_, w) = reg(json!({
            "host": "h", "repo": "a",
            "mirrors": [{"host": "http://m:65001", "headers": {"X-Dragonfly-Registry": "https://h"}}],
            "proxy": {"url": "http://p:65001", "fallback": true, "ping_url": "http://p:40901/server/ping", "check_interval": 5, "use_http": true, "weird": 1},
            "shiny_new_option": "x",
        }))
        .unwrap();
        for k in ["mirrors", "proxy.ping_url", "proxy.use_http", "proxy.weird", "shiny_new_option"] {
            assert_eq!(w.iter().filter(|m| m.contains(&format!("backend_config.{k} "))).count(), 1, "{k}: {w:?}");
        }
        assert_eq!(w.len(), 5, "{w:?}");
        // proxy.fallback is honoured, nydusd's default (true) when absent.
        let (c, _) = reg(json!({"host": "h", "repo": "a", "proxy": {"url": "http://p:1"}})).unwrap();
        assert!(c.transport.proxy_fallback);
        // Without a proxy url its extras are moot: no warning.
        assert!(reg(json!({"host": "h", "repo": "a", "proxy": {"fallback": true, "check_interval": 5}})).unwrap().1.is_empty());
    }

    #[test]
    fn malformed_values_are_clear_errors() {
        let cases = [
            (json!({"host": "h", "repo": "a", "auth": "%%%"}), "backend_config.auth is not base64"),
            (json!({"host": "h", "repo": "a", "auth": "bm9jb2xvbg=="}), "user:password"),
            (json!({"host": "h", "repo": "a", "auth": "/w=="}), "UTF-8"),
            (json!({"host": "h", "repo": "a", "auth": 5}), "backend_config.auth must be a string"),
            (json!({"host": "h", "repo": "a", "registry_token": "a b"}), "backend_config.registry_token"),
            (json!({"host": "h", "repo": "a", "skip_verify": "yes"}), "backend_config.skip_verify must be true or false"),
            (json!({"host": "h", "repo": "a", "timeout": -1}), "backend_config.timeout must be a whole number"),
            (json!({"host": "h", "repo": "a", "timeout": 1.5}), "backend_config.timeout must be a whole number"),
            (json!({"host": "h", "repo": "a", "connect_timeout": "5"}), "backend_config.connect_timeout"),
            (json!({"host": "h", "repo": "a", "retry_limit": 256}), "backend_config.retry_limit must be a whole number from 0 to 255"),
            (json!({"host": "h", "repo": "a", "ca_cert_files": "/ca.pem"}), "backend_config.ca_cert_files must be a list"),
            (json!({"host": "h", "repo": "a", "ca_cert_files": [1]}), "backend_config.ca_cert_files must be a list"),
            (json!({"host": "h", "repo": "a", "proxy": "http://p"}), "backend_config.proxy must be a JSON object"),
            (json!({"host": "h", "repo": "a", "proxy": {"url": "not a url"}}), "backend_config.proxy.url"),
            (json!({"host": "h", "repo": "a", "proxy": {"url": "socks5://p:1"}}), "backend_config.proxy.url"),
            (json!({"host": "h", "repo": "a", "proxy": {"fallback": "no"}}), "backend_config.proxy.fallback"),
            (json!({"host": "h", "repo": "a", "scheme": "ftp"}), "backend_config.scheme"),
            (json!({"host": "h", "repo": "a", "blob_url_scheme": "ftp"}), "backend_config.blob_url_scheme"),
            (json!({"host": "h", "repo": "a", "blob_redirected_host": "a b"}), "backend_config.blob_redirected_host"),
            (json!({"host": "h", "repo": "a", "blob_redirected_host": "h:99999"}), "backend_config.blob_redirected_host"),
            (json!({"host": "https://h", "repo": "a"}), "host[:port]"),
            (json!({"host": "h/x", "repo": "a"}), "host[:port]"),
            (json!({"host": "h"}), "backend_config.repo is missing"),
            (json!({"repo": "a"}), "backend_config.host is missing"),
            (json!([1, 2]), "backend_config must be a JSON object"),
        ];
        for (bc, want) in cases {
            let e = err(bc.clone());
            assert!(e.contains(want), "{bc}: {e:?} lacks {want:?}");
        }
        // A bad repository name fails when the source is made, naming it.
        let d = tempfile::tempdir().unwrap();
        let b = BackendRef { kind: "registry".into(), config: json!({"host": "h", "repo": "../etc"}) };
        assert!(format!("{:#}", b.source(&d.path().join("image.boot")).err().expect("an error")).contains("../etc"));
        let b = BackendRef { kind: "localfs".into(), config: json!({"dir": 3}) };
        assert!(format!("{:#}", b.source(&d.path().join("image.boot")).err().expect("an error")).contains("backend_config.dir must be a string"));
    }

    #[test]
    fn backend_refs_round_trip_and_hide_secrets() {
        let e = json!({"backend_type": "registry", "backend_config": {"host": "h", "repo": "a", "auth": "dTpw", "registry_token": "t0k"}});
        let b = BackendRef::from_entry(&e).unwrap();
        let back: BackendRef = serde_json::from_slice(&serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        assert_eq!(b.describe(), "registry https://h/a");
        assert!(!format!("{b:?}").contains("t0k") && !b.describe().contains("dTpw"));
        let v2 = json!({"backend": {"type": "registry", "registry": {"host": "h", "repo": "a"}}});
        assert_eq!(BackendRef::from_entry(&v2).unwrap().config["repo"], "a");
    }
}
