//! Blobs from an OCI distribution registry.
//!
//! [`RegistrySource`] implements [`BlobSource`]: each `read_range` is one
//! `GET /v2/<repo>/blobs/sha256:<id>` with `Range: bytes=a-b`, answered with exactly the bytes
//! asked for or an error. Around that sit authentication ([`auth`], [`docker_config`]) and the
//! transport with its retry policy ([`client`]). The source never interprets the bytes: the fill
//! engine verifies every group's CRC before anything reaches a target, so a registry or proxy
//! that returns wrong bytes produces an I/O error, never wrong data.
//!
//! Also here, for the commands that pull images: [`RegistrySource::fetch_manifest`] and
//! [`RegistrySource::download_blob`] (a whole blob, streamed to a file, sha256-verified).

pub mod auth;
pub mod client;
pub mod docker_config;
pub mod push;
pub mod settings;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use reqwest::header::{ACCEPT, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::{Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

pub use auth::{Credentials, StaticToken};
pub use client::{RetryPolicy, TransportOptions};
use client::{read_limited, status_failure, transport_failure, with_retries, Failure, Session};

use super::source::{BlobSource, BoxFuture, MAX_RANGE};

/// A 200 answer to a range request (a registry or proxy that ignores `Range`) is accepted only
/// for blobs up to this size; beyond it reading the whole blob for a small range is wasteful
/// enough to be an error.
pub const MAX_WHOLE_BODY_FALLBACK: u64 = 16 << 20;

/// Gap between two wanted group runs that is fetched rather than split into two requests
/// (see `BlobSource::request_overhead`).
pub const REQUEST_OVERHEAD: u64 = 512 << 10;

/// Manifests and indexes larger than this are refused (real ones are a few KiB).
pub const MAX_MANIFEST: usize = 4 << 20;

/// Media types we accept for a manifest request, most specific first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.v2+json, \
application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `https://host[:port]`, `http://host[:port]`, or a bare `host[:port]` (HTTPS).
    pub registry: String,
    /// Repository path, e.g. `library/debian`.
    pub repository: String,
    pub credentials: Credentials,
    /// A ready-made bearer token presented first (see [`StaticToken`]); `credentials` still
    /// serve the token server or a basic challenge once the registry rejects it.
    pub static_token: Option<StaticToken>,
    pub transport: TransportOptions,
    pub retry: RetryPolicy,
    /// Rewrites applied to a blob redirect before it is followed.
    pub blob_redirect: RedirectRewrite,
}

/// nydus's `blob_url_scheme` / `blob_redirected_host`: when a registry redirects a blob request
/// (to object storage, a CDN), the Location's scheme and/or host is replaced before it is
/// followed, for P2P systems that serve those blobs under another scheme or host. Redirects
/// are then followed by us (at most 5, without the registry's Authorization, as reqwest would).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedirectRewrite {
    /// `http` or `https`.
    pub scheme: Option<String>,
    /// `host` or `host:port`.
    pub host: Option<String>,
}

impl RedirectRewrite {
    pub fn is_empty(&self) -> bool {
        self.scheme.is_none() && self.host.is_none()
    }

    /// Checks the values once, so a bad one fails when the source is made, not at a read.
    pub fn check(&self) -> io::Result<()> {
        let mut u = Url::parse("http://registry.invalid/x").expect("URL");
        self.apply(&mut u)
    }

    pub fn apply(&self, u: &mut Url) -> io::Result<()> {
        let bad = |what: &str, v: &str| io::Error::new(io::ErrorKind::InvalidInput, format!("blob redirect {what} {v:?} is not usable"));
        if let Some(s) = &self.scheme {
            if !matches!(s.as_str(), "http" | "https") || u.set_scheme(s).is_err() {
                return Err(bad("scheme", s));
            }
        }
        if let Some(h) = &self.host {
            let (host, port) = match h.rsplit_once(':') {
                Some((host, p)) if !host.contains(':') || host.ends_with(']') => (host, Some(p.parse::<u16>().map_err(|_| bad("host", h))?)),
                _ => (h.as_str(), None),
            };
            u.set_host(Some(host)).map_err(|_| bad("host", h))?;
            if let Some(p) = port {
                u.set_port(Some(p)).map_err(|_| bad("host", h))?;
            }
        }
        Ok(())
    }
}

impl RegistryConfig {
    pub fn new(registry: impl Into<String>, repository: impl Into<String>) -> RegistryConfig {
        RegistryConfig {
            registry: registry.into(),
            repository: repository.into(),
            credentials: Credentials::Anonymous,
            static_token: None,
            transport: TransportOptions::default(),
            retry: RetryPolicy::default(),
            blob_redirect: RedirectRewrite::default(),
        }
    }

    /// Takes credentials for this registry from a docker `config.json` (no entry: anonymous).
    pub fn with_docker_config(mut self, path: &Path) -> io::Result<RegistryConfig> {
        let base = base_url(&self.registry)?;
        self.credentials = docker_config::load(path, &host_port(&base))?;
        Ok(self)
    }
}

/// `host` or `host:port` as docker config keys spell it.
fn host_port(u: &Url) -> String {
    match (u.host_str(), u.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => String::new(),
    }
}

fn base_url(registry: &str) -> io::Result<Url> {
    let s = if registry.contains("://") { registry.to_string() } else { format!("https://{registry}") };
    let u = Url::parse(&s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("registry {registry:?}: {e}")))?;
    if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("registry {registry:?} is not an http(s) host")));
    }
    let mut u = u;
    u.set_path("/");
    u.set_query(None);
    Ok(u)
}

/// Repository names per the distribution spec: lowercase path components of `[a-z0-9._-]`.
fn valid_repository(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn valid_hex_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A fetched manifest or index.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub media_type: String,
    /// `sha256:<hex>` of `bytes`.
    pub digest: String,
    pub bytes: Vec<u8>,
}

pub struct RegistrySource {
    base: Url,
    session: Session,
    redirect: RedirectRewrite,
    retry: RetryPolicy,
    describe: String,
}

impl RegistrySource {
    pub fn new(cfg: RegistryConfig) -> io::Result<RegistrySource> {
        let base = base_url(&cfg.registry)?;
        if !valid_repository(&cfg.repository) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid repository name {:?}", cfg.repository)));
        }
        cfg.blob_redirect.check()?;
        let mut cfg = cfg;
        cfg.transport.manual_redirects = !cfg.blob_redirect.is_empty();
        let http = client::build_http(&cfg.transport)?;
        let fallback = cfg.transport.proxy.is_some() && cfg.transport.proxy_fallback;
        let describe = format!(
            "registry {}{}{}{}",
            base.as_str(),
            cfg.repository,
            cfg.transport.proxy.as_deref().map(|p| format!(" via proxy {p}")).unwrap_or_default(),
            if fallback { " (direct fallback)" } else { "" }
        );
        let mut session = Session::new(http, cfg.repository.clone(), cfg.credentials);
        if fallback {
            let direct = TransportOptions { proxy: None, ..cfg.transport.clone() };
            session.set_direct_fallback(client::build_http(&direct)?);
        }
        if let Some(t) = cfg.static_token {
            session.set_static_token(t);
        }
        Ok(RegistrySource {
            session,
            redirect: cfg.blob_redirect,
            base,
            retry: cfg.retry,
            describe,
        })
    }

    /// A source that may also push (`push.rs`): bearer tokens are asked for with
    /// `repository:<repo>:pull,push`.
    pub fn new_for_push(cfg: RegistryConfig) -> io::Result<RegistrySource> {
        let mut s = RegistrySource::new(cfg)?;
        s.session.set_push();
        Ok(s)
    }

    /// Replaces the credentials of a source in use (credential renewal).
    pub fn set_credentials(&self, credentials: Credentials) {
        self.session.set_credentials(credentials);
    }

    /// Bearer tokens fetched so far.
    pub fn tokens_fetched(&self) -> u64 {
        self.session.tokens_fetched.load(Ordering::Relaxed)
    }

    fn url(&self, tail: &str) -> Url {
        self.base.join(&format!("v2/{}/{tail}", self.session.repository)).expect("valid registry URL")
    }

    async fn range_once(&self, url: &Url, offset: u64, len: u64) -> Result<Vec<u8>, Failure> {
        let end = offset + len - 1;
        let what = format!("GET {url} bytes {offset}-{end}");
        let range = |c: &reqwest::Client, u: Url| c.get(u).header(RANGE, format!("bytes={offset}-{end}"));
        let resp = self.session.send(&what, |c| range(c, url.clone())).await?;
        let resp = self.follow_rewritten(resp, url.clone(), &what, &range).await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT => {
                let cr = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                match parse_content_range(cr) {
                    Some((a, b)) if a == offset && b == end => {}
                    _ => {
                        return Err(Failure::fatal(
                            io::ErrorKind::InvalidData,
                            format!("{what}: answer has Content-Range {cr:?}, not bytes {offset}-{end}"),
                        ))
                    }
                }
                read_exact_body(resp, len as usize, &what).await
            }
            StatusCode::OK => {
                // The whole blob: acceptable only when small; then cut out our range.
                let total = resp.content_length();
                match total {
                    Some(t) if t <= MAX_WHOLE_BODY_FALLBACK && t >= offset + len => {
                        let body = read_exact_body(resp, t as usize, &what).await?;
                        Ok(body[offset as usize..(offset + len) as usize].to_vec())
                    }
                    Some(t) if t < offset + len => Err(Failure::fatal(
                        io::ErrorKind::UnexpectedEof,
                        format!("{what}: the blob has only {t} bytes"),
                    )),
                    _ => Err(Failure::fatal(
                        io::ErrorKind::InvalidData,
                        format!("{what}: the registry ignored the Range header and sent the whole blob ({total:?} bytes)"),
                    )),
                }
            }
            StatusCode::UNAUTHORIZED => Err(Failure::fatal(
                io::ErrorKind::PermissionDenied,
                format!("{what}: still unauthorized after authenticating"),
            )),
            _ => Err(status_failure(&what, resp).await),
        }
    }

    /// With a [`RedirectRewrite`], follows a redirect answer ourselves: Location resolved
    /// against the request URL, rewritten, requested again (no Authorization), at most 5 hops.
    /// Any other answer, or no rewrite configured, is returned as it is.
    async fn follow_rewritten<B>(&self, mut resp: Response, mut at: Url, what: &str, build: &B) -> Result<Response, Failure>
    where
        B: Fn(&reqwest::Client, Url) -> reqwest::RequestBuilder,
    {
        if self.redirect.is_empty() {
            return Ok(resp);
        }
        for _ in 0..5 {
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let loc = resp.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or("");
            let mut next = at.join(loc).map_err(|e| {
                Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: redirect to {loc:?} is not a URL: {e}"))
            })?;
            self.redirect.apply(&mut next).map_err(Failure::Final)?;
            tracing::debug!("{what}: redirected to {next} (rewritten)");
            resp = build(&self.session.http, next.clone()).send().await.map_err(|e| transport_failure(what, e))?;
            at = next;
        }
        if resp.status().is_redirection() {
            return Err(Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: more than 5 redirects")));
        }
        Ok(resp)
    }

    /// Fetches a manifest or index by tag or `sha256:` digest. Verifies the digest when the
    /// reference is one, or when the registry states one (`Docker-Content-Digest`).
    pub async fn fetch_manifest(&self, reference: &str) -> io::Result<Manifest> {
        if reference.is_empty() || reference.contains('/') || reference.len() > 200 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid manifest reference {reference:?}")));
        }
        let url = self.url(&format!("manifests/{reference}"));
        let what = format!("GET {url}");
        with_retries(&self.retry, &what, || async {
            let resp = self.session.send(&what, |c| c.get(url.clone()).header(ACCEPT, MANIFEST_ACCEPT)).await?;
            if resp.status() != StatusCode::OK {
                return Err(status_failure(&what, resp).await);
            }
            let media_type = resp
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
                .unwrap_or_default();
            let stated = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
            let bytes = read_limited(resp, MAX_MANIFEST, &what).await?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            let expected = if reference.starts_with("sha256:") { Some(reference.to_string()) } else { stated.filter(|s| s.starts_with("sha256:")) };
            if let Some(exp) = expected {
                if exp != digest {
                    return Err(Failure::retry(io::ErrorKind::InvalidData, format!("{what}: manifest digest is {digest}, expected {exp}")));
                }
            }
            // Older registries send a generic Content-Type; fall back to the body's mediaType.
            let media_type = if media_type.is_empty() || media_type == "application/json" {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("mediaType").and_then(|m| m.as_str()).map(str::to_string))
                    .unwrap_or(media_type)
            } else {
                media_type
            };
            Ok(Manifest { media_type, digest, bytes })
        })
        .await
    }

    /// Streams blob `sha256:<id>` into `dest` (created or truncated), verifying its sha256;
    /// returns its size. With `size` (a descriptor's), a body longer than that is cut off and
    /// refused as soon as it passes it, so a hostile registry cannot fill the disk. A wrong
    /// digest or a cut body is retried from the start; on final failure `dest` is removed.
    pub async fn download_blob(&self, id: &str, size: Option<u64>, dest: &Path) -> io::Result<u64> {
        if !valid_hex_id(id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid blob id {id:?}")));
        }
        let url = self.url(&format!("blobs/sha256:{id}"));
        let what = format!("GET {url}");
        let dest: PathBuf = dest.to_path_buf();
        let r = with_retries(&self.retry, &what, || async {
            let resp = self.session.send(&what, |c| c.get(url.clone())).await?;
            let resp = self.follow_rewritten(resp, url.clone(), &what, &|c: &reqwest::Client, u: Url| c.get(u)).await?;
            if resp.status() != StatusCode::OK {
                return Err(status_failure(&what, resp).await);
            }
            stream_verified(resp, id, size, &dest, &what).await
        })
        .await;
        if r.is_err() {
            let _ = std::fs::remove_file(&dest);
        }
        r
    }
}

async fn stream_verified(mut resp: Response, id: &str, size: Option<u64>, dest: &Path, what: &str) -> Result<u64, Failure> {
    let io_fail = |e: io::Error| Failure::Final(io::Error::new(e.kind(), format!("writing {}: {e}", dest.display())));
    let announced = resp.content_length();
    let mut f = tokio::fs::File::create(dest).await.map_err(io_fail)?;
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(c) = resp.chunk().await.map_err(|e| transport_failure(what, e))? {
        hasher.update(&c);
        n += c.len() as u64;
        if let Some(limit) = size.filter(|&l| n > l) {
            return Err(Failure::Final(io::Error::new(io::ErrorKind::InvalidData, format!("{what}: body is longer than the {limit} bytes the descriptor names"))));
        }
        f.write_all(&c).await.map_err(io_fail)?;
    }
    if let Some(cl) = announced {
        if cl != n {
            return Err(Failure::retry(io::ErrorKind::UnexpectedEof, format!("{what}: body has {n} of {cl} bytes")));
        }
    }
    let got = hex::encode(hasher.finalize());
    if got != id {
        return Err(Failure::retry(io::ErrorKind::InvalidData, format!("{what}: content has sha256 {got}")));
    }
    f.sync_all().await.map_err(io_fail)?;
    Ok(n)
}

/// Reads exactly `len` body bytes. A shorter body (a cut connection) is worth a retry; a longer
/// one is a protocol violation.
async fn read_exact_body(mut resp: Response, len: usize, what: &str) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::with_capacity(len);
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if buf.len() + c.len() > len {
                    return Err(Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: body longer than {len} bytes")));
                }
                buf.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => {
                let Failure::Retry(err, _) = transport_failure(what, e) else { unreachable!() };
                return Err(Failure::Retry(
                    io::Error::new(err.kind(), format!("{err} (after {} of {len} bytes)", buf.len())),
                    None,
                ));
            }
        }
    }
    if buf.len() != len {
        return Err(Failure::retry(io::ErrorKind::UnexpectedEof, format!("{what}: body cut short at {} of {len} bytes", buf.len())));
    }
    Ok(buf)
}

/// `bytes a-b/total` (total may be `*`) -> (a, b).
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, _total) = rest.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    let (a, b) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    (a <= b).then_some((a, b))
}

impl BlobSource for RegistrySource {
    fn read_range(&self, id: &str, offset: u64, len: u64) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let id = id.to_string();
        Box::pin(async move {
            // Ids come from bootstraps, which may be hostile: only a 64-hex name goes in a URL.
            if !valid_hex_id(&id) {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid blob id {id:?}")));
            }
            if len > MAX_RANGE {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("range of {len} bytes is too large")));
            }
            if len == 0 {
                return Ok(Vec::new());
            }
            if offset.checked_add(len).is_none() {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "range end overflows"));
            }
            let url = self.url(&format!("blobs/sha256:{id}"));
            with_retries(&self.retry, "blob range", || self.range_once(&url, offset, len)).await
        })
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    /// A request costs a round trip (tens of ms to a remote registry, more through a proxy);
    /// 512 KiB is what 100 Mbit/s moves in about 40 ms, so smaller gaps are cheaper fetched.
    fn request_overhead(&self) -> u64 {
        REQUEST_OVERHEAD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_repositories_and_ranges() {
        assert_eq!(base_url("reg.example:5000").unwrap().as_str(), "https://reg.example:5000/");
        assert_eq!(base_url("http://127.0.0.1:80/x?y").unwrap().as_str(), "http://127.0.0.1/");
        assert!(base_url("ftp://x").is_err());
        assert_eq!(host_port(&base_url("http://127.0.0.1:5000").unwrap()), "127.0.0.1:5000");
        assert!(valid_repository("library/debian") && valid_repository("a.b/c-d_e"));
        for bad in ["", "A", "a//b", "../x", "a/../b", "/a", "a/", ".a", "a b", "a?b"] {
            assert!(!valid_repository(bad), "{bad}");
        }
        assert!(RegistrySource::new(RegistryConfig::new("127.0.0.1:1", "../etc")).is_err());
        assert_eq!(parse_content_range("bytes 100-4195/99999"), Some((100, 4195)));
        assert_eq!(parse_content_range("bytes 0-0/*"), Some((0, 0)));
        assert_eq!(parse_content_range("bytes 5-4/9"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }

    #[tokio::test]
    async fn hostile_ids_and_sizes_never_reach_the_network() {
        let src = RegistrySource::new(RegistryConfig::new("http://127.0.0.1:9", "a/b")).unwrap();
        assert!(src.read_range("../../x", 0, 1).await.is_err());
        assert!(src.read_range(&"AB".repeat(32), 0, 1).await.is_err());
        let e = src.read_range(&"ab".repeat(32), 0, MAX_RANGE + 1).await.unwrap_err();
        assert!(e.to_string().contains("too large"));
        assert_eq!(src.read_range(&"ab".repeat(32), 0, 0).await.unwrap(), Vec::<u8>::new());
        assert!(src.read_range(&"ab".repeat(32), u64::MAX, 2).await.is_err());
        assert!(src.fetch_manifest("a/b").await.is_err());
    }
}
