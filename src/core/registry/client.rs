//! The HTTP side of the registry source: building the client (TLS roots, proxy, timeouts),
//! sending a request with authentication (and one re-authentication on 401), classifying
//! failures, and retrying with exponential backoff.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tracing::{debug, warn};
use url::Url;

use super::auth::{parse_challenges, Challenge, CachedToken, Credentials, StaticToken, TokenResponse};

/// How the client reaches the registry.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// PEM files with CAs trusted in addition to the system roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// Accept any server certificate. Only when asked for, never as a fallback.
    pub insecure_skip_verify: bool,
    /// An HTTP(S) forward proxy for every request (e.g. a Dragonfly peer daemon). `None` means a
    /// direct connection: proxy environment variables are deliberately ignored, so a daemon's
    /// behaviour depends only on its configuration.
    pub proxy: Option<String>,
    /// With a proxy: a request the proxy fails (connection trouble or a 5xx) is sent once more
    /// directly to the registry (nydus's `proxy.fallback`). Never for push sessions.
    pub proxy_fallback: bool,
    /// Redirects are handed back to the caller instead of followed (for `RedirectRewrite`).
    pub manual_redirects: bool,
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of an answer (headers or body).
    pub read_timeout: Duration,
    /// Longest time for one whole request, answer included: bounds a server that trickles bytes
    /// just fast enough to dodge `read_timeout`. Whole-blob downloads need it to be generous.
    pub request_timeout: Duration,
}

impl Default for TransportOptions {
    fn default() -> Self {
        TransportOptions {
            extra_ca_files: Vec::new(),
            insecure_skip_verify: false,
            proxy: None,
            proxy_fallback: false,
            manual_redirects: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(600),
        }
    }
}

/// Bounded retries: at most `attempts` tries in total and no new try after `deadline`.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            deadline: Duration::from_secs(120),
        }
    }
}

/// The outcome of one failed try.
#[derive(Debug)]
pub enum Failure {
    /// Worth another try (connection trouble, timeouts, 5xx, 429, a body cut short);
    /// optionally with the server's `Retry-After`.
    Retry(io::Error, Option<Duration>),
    /// Retrying cannot help (404, 403, a protocol violation, rejected credentials).
    Final(io::Error),
}

impl Failure {
    pub fn retry(kind: io::ErrorKind, msg: impl Into<String>) -> Failure {
        Failure::Retry(io::Error::new(kind, msg.into()), None)
    }
    pub fn fatal(kind: io::ErrorKind, msg: impl Into<String>) -> Failure {
        Failure::Final(io::Error::new(kind, msg.into()))
    }
}

/// Classifies a reqwest error. Everything at the transport level is transient.
pub fn transport_failure(what: &str, e: reqwest::Error) -> Failure {
    let kind = if e.is_timeout() {
        io::ErrorKind::TimedOut
    } else if e.is_connect() {
        io::ErrorKind::ConnectionRefused
    } else if e.is_body() || e.is_decode() {
        io::ErrorKind::UnexpectedEof
    } else {
        io::ErrorKind::Other
    };
    // reqwest's Display hides the cause ("error sending request"); keep the chain.
    let mut msg = format!("{what}: {e}");
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    Failure::Retry(io::Error::new(kind, msg), None)
}

/// Classifies an unexpected status; reads a little of the body for the registry's error text.
pub async fn status_failure(what: &str, resp: Response) -> Failure {
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let detail = error_text(resp).await;
    let msg = format!("{what}: registry answered {status}{detail}");
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::REQUEST_TIMEOUT {
        return Failure::Retry(io::Error::other(msg), retry_after);
    }
    let kind = match status {
        StatusCode::NOT_FOUND => io::ErrorKind::NotFound,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => io::ErrorKind::PermissionDenied,
        StatusCode::RANGE_NOT_SATISFIABLE => io::ErrorKind::UnexpectedEof,
        _ => io::ErrorKind::Other,
    };
    Failure::Final(io::Error::new(kind, msg))
}

/// Up to 512 bytes of an error body, as ": <text>", or nothing.
async fn error_text(mut resp: Response) -> String {
    let mut body = Vec::new();
    while body.len() < 512 {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    body.truncate(512);
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.replace(['\n', '\r'], " "))
    }
}

pub fn build_http(opts: &TransportOptions) -> io::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("erofsd/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        .read_timeout(opts.read_timeout)
        .timeout(opts.request_timeout)
        .pool_idle_timeout(Duration::from_secs(60))
        // Redirects (a registry sending blobs to object storage) are followed; reqwest drops
        // the Authorization header when the redirect leaves the registry's host and port.
        .redirect(if opts.manual_redirects { reqwest::redirect::Policy::none() } else { reqwest::redirect::Policy::limited(5) });
    for path in &opts.extra_ca_files {
        let pem = std::fs::read(path).map_err(|e| io::Error::new(e.kind(), format!("CA file {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("CA file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("CA file {} holds no certificate", path.display())));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if opts.insecure_skip_verify {
        warn!("registry TLS certificate verification is disabled (insecure)");
        b = b.danger_accept_invalid_certs(true);
    }
    b = match &opts.proxy {
        Some(p) => b.proxy(
            reqwest::Proxy::all(p.as_str())
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("proxy {p:?}: {e}")))?,
        ),
        None => b.no_proxy(),
    };
    b.build().map_err(|e| io::Error::other(format!("building the HTTP client: {e}")))
}

/// Runs `attempt` until it succeeds, fails finally, or the policy is used up.
pub async fn with_retries<T, F, Fut>(policy: &RetryPolicy, what: &str, mut attempt: F) -> io::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let start = Instant::now();
    let mut backoff = policy.initial_backoff;
    let attempts = policy.attempts.max(1);
    for n in 1..=attempts {
        match attempt().await {
            Ok(v) => return Ok(v),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Retry(e, retry_after)) => {
                let wait = retry_after.unwrap_or(backoff).min(policy.max_backoff);
                if n == attempts || start.elapsed() + wait >= policy.deadline {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("{e} (gave up after {n} attempt{} in {:.1?})", if n == 1 { "" } else { "s" }, start.elapsed()),
                    ));
                }
                debug!("{what}: attempt {n} failed ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
    }
    unreachable!("the loop returns on its last attempt")
}

#[derive(Default)]
struct AuthState {
    /// The registry's bearer challenge, once seen.
    bearer: Option<Challenge>,
    /// The registry asked for basic credentials.
    basic: bool,
    token: Option<CachedToken>,
}

/// What one request carried, so a 401 can tell whether someone already refreshed.
struct Presented {
    header: Option<String>,
    token_generation: Option<u64>,
    basic: bool,
}

/// One registry repository: the client plus its authentication state.
pub struct Session {
    pub http: reqwest::Client,
    /// The proxy-less client a failed proxied request falls back to (`proxy_fallback`).
    direct: Option<reqwest::Client>,
    /// Requests that fell back (the first and every power of two are logged as warnings).
    pub fallbacks: AtomicU64,
    pub repository: String,
    /// Replaceable while in use (a renewed credential: `set_credentials`).
    credentials: RwLock<Credentials>,
    state: Mutex<AuthState>,
    /// Single flight for token fetches.
    refresh: tokio::sync::Mutex<()>,
    generation: AtomicU64,
    /// Tokens fetched (for tests and metrics).
    pub tokens_fetched: AtomicU64,
    /// Ask token servers for `pull,push` on our repository whatever a challenge's scope says
    /// (a push session; see `RegistrySource::new_for_push`).
    push: bool,
}

impl Session {
    pub fn new(http: reqwest::Client, repository: String, credentials: Credentials) -> Session {
        Session {
            http,
            direct: None,
            fallbacks: AtomicU64::new(0),
            repository,
            credentials: RwLock::new(credentials),
            state: Mutex::new(AuthState::default()),
            refresh: tokio::sync::Mutex::new(()),
            generation: AtomicU64::new(0),
            tokens_fetched: AtomicU64::new(0),
            push: false,
        }
    }

    /// Presents `token` on every request until the registry rejects it (generation 0: any
    /// token fetched later replaces it). Configured tokens carry no lifetime; the registry's
    /// 401 is what ends one.
    pub fn set_static_token(&mut self, token: StaticToken) {
        let forever = Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600);
        self.state.get_mut().expect("auth state").token = Some(CachedToken { token: token.0, valid_until: forever, generation: 0 });
    }

    /// Makes this a push session: tokens are requested with `repository:<repo>:pull,push`.
    /// Uploads never fall back around a proxy.
    pub fn set_push(&mut self) {
        self.push = true;
        self.direct = None;
    }

    fn credentials(&self) -> Credentials {
        self.credentials.read().expect("credentials").clone()
    }

    /// Replaces the credentials (a renewal): the cached token, got with the old ones, is
    /// dropped, so the next request authenticates afresh.
    pub fn set_credentials(&self, credentials: Credentials) {
        *self.credentials.write().expect("credentials") = credentials;
        self.state.lock().expect("auth state").token = None;
    }

    /// Requests the proxy fails are sent once more through `direct` (a client without proxy).
    pub fn set_direct_fallback(&mut self, direct: reqwest::Client) {
        if !self.push {
            self.direct = Some(direct);
        }
    }

    /// Sends one request (with `auth` as its Authorization) through the configured client;
    /// with a direct fallback, a transport failure or 5xx through the proxy is sent once more
    /// directly.
    async fn dispatch<F>(&self, what: &str, build: &F, auth: Option<&str>) -> Result<Response, Failure>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        let request = |c: &reqwest::Client| match auth {
            Some(h) => build(c).header(AUTHORIZATION, h),
            None => build(c),
        };
        let first = request(&self.http).send().await;
        let Some(direct) = &self.direct else { return first.map_err(|e| transport_failure(what, e)) };
        let why = match first {
            Ok(r) if !r.status().is_server_error() => return Ok(r),
            Ok(r) => format!("the proxy answered {}", r.status()),
            Err(e) => match transport_failure(what, e) {
                Failure::Retry(e, _) | Failure::Final(e) => e.to_string(),
            },
        };
        let n = self.fallbacks.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            warn!("{what}: {why}; sent directly to the registry instead (proxy fallback, {n} so far)");
        } else {
            debug!("{what}: {why}; sent directly (proxy fallback)");
        }
        request(direct).send().await.map_err(|e| transport_failure(what, e))
    }

    /// Sends a request built by `build`, authenticated; on a 401 re-authenticates once and
    /// resends. Any other answer (including a second 401) is returned to the caller.
    pub async fn send<F>(&self, what: &str, build: F) -> Result<Response, Failure>
    where
        F: Fn(&reqwest::Client) -> RequestBuilder,
    {
        // One re-authentication after an anonymous probe (the first challenge) and one after a
        // rejected credential (an expired token): a third 401 goes back to the caller.
        let (mut probed, mut refreshed) = (false, false);
        loop {
            let presented = self.present().await?;
            let resp = self.dispatch(what, &build, presented.header.as_deref()).await?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let used = if presented.header.is_some() { &mut refreshed } else { &mut probed };
            if *used {
                return Ok(resp);
            }
            *used = true;
            self.on_unauthorized(what, resp.headers(), &presented).await?;
        }
    }

    /// The Authorization header for the next request: a fresh cached token; a new token if the
    /// cached one expired; basic credentials if the registry wants them; else nothing.
    async fn present(&self) -> Result<Presented, Failure> {
        let (bearer, basic, token) = {
            let st = self.state.lock().expect("auth state");
            (st.bearer.clone(), st.basic, st.token.clone())
        };
        if let Some(t) = token.filter(|t| t.is_fresh()) {
            return Ok(Presented { header: Some(format!("Bearer {}", t.token)), token_generation: Some(t.generation), basic: false });
        }
        if let Some(ch) = bearer {
            // Known bearer registry, expired or missing token: refresh before sending.
            let t = self.refresh_token(&ch, None).await?;
            return Ok(Presented { header: Some(format!("Bearer {}", t.token)), token_generation: Some(t.generation), basic: false });
        }
        if basic {
            return Ok(Presented { header: self.credentials().basic_header(), token_generation: None, basic: true });
        }
        Ok(Presented { header: None, token_generation: None, basic: false })
    }

    async fn on_unauthorized(&self, what: &str, headers: &HeaderMap, presented: &Presented) -> Result<(), Failure> {
        let challenges: Vec<Challenge> = headers
            .get_all(WWW_AUTHENTICATE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        if let Some(g) = presented.token_generation {
            // The token we sent was refused: stop presenting it (unless another request has
            // already replaced it), so a basic challenge or a fresh token can take over.
            let mut st = self.state.lock().expect("auth state");
            if st.token.as_ref().is_some_and(|t| t.generation == g) {
                st.token = None;
                if g == 0 {
                    warn!("{what}: the registry refused the configured bearer token; authenticating through its challenge");
                }
            }
        }
        if let Some(ch) = challenges.iter().find(|c| c.scheme == "bearer") {
            self.state.lock().expect("auth state").bearer = Some(ch.clone());
            self.refresh_token(ch, presented.token_generation).await?;
            return Ok(());
        }
        if challenges.iter().any(|c| c.scheme == "basic") {
            if presented.basic {
                return Err(Failure::fatal(
                    io::ErrorKind::PermissionDenied,
                    format!("{what}: the registry rejected the basic credentials ({:?})", self.credentials()),
                ));
            }
            if self.credentials().basic_header().is_none() {
                return Err(Failure::fatal(
                    io::ErrorKind::PermissionDenied,
                    format!("{what}: the registry requires credentials (basic auth) and none are configured"),
                ));
            }
            self.state.lock().expect("auth state").basic = true;
            return Ok(());
        }
        Err(Failure::fatal(
            io::ErrorKind::PermissionDenied,
            format!("{what}: 401 Unauthorized without a usable WWW-Authenticate challenge"),
        ))
    }

    /// Gets a new token unless another request already replaced the one `stale` names.
    async fn refresh_token(&self, ch: &Challenge, stale: Option<u64>) -> Result<CachedToken, Failure> {
        let _guard = self.refresh.lock().await;
        if let Some(t) = self.state.lock().expect("auth state").token.clone() {
            let replaced = match stale {
                Some(g) => t.generation > g,
                None => true,
            };
            if replaced && t.is_fresh() {
                return Ok(t);
            }
        }
        let t = self.fetch_token(ch).await?;
        self.state.lock().expect("auth state").token = Some(t.clone());
        Ok(t)
    }

    async fn fetch_token(&self, ch: &Challenge) -> Result<CachedToken, Failure> {
        let realm = ch.param("realm").ok_or_else(|| {
            Failure::fatal(io::ErrorKind::PermissionDenied, "bearer challenge without a realm")
        })?;
        let mut url = Url::parse(realm).map_err(|e| {
            Failure::fatal(io::ErrorKind::InvalidData, format!("bearer challenge realm {realm:?} is not a URL: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Failure::fatal(io::ErrorKind::InvalidData, format!("bearer realm {realm:?} is not http(s)")));
        }
        let default_scope = format!("repository:{}:{}", self.repository, if self.push { "pull,push" } else { "pull" });
        // A push session asks for push from the start: the first challenge (of a HEAD) names
        // only pull, and a pull token would cost a second round trip at the first upload.
        let scope = if self.push { default_scope.as_str() } else { ch.param("scope").unwrap_or(&default_scope) };
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = ch.param("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let what = format!("token from {}", url.origin().ascii_serialization());
        let basic = self.credentials().basic_header();
        let resp = self.dispatch(&what, &|c: &reqwest::Client| c.get(url.clone()), basic.as_deref()).await?;
        if !resp.status().is_success() {
            return Err(match status_failure(&what, resp).await {
                Failure::Final(e) if e.kind() == io::ErrorKind::PermissionDenied => Failure::Final(io::Error::new(
                    e.kind(),
                    format!("{e} (the token server refused {:?})", self.credentials()),
                )),
                other => other,
            });
        }
        let body = read_limited(resp, 64 << 10, &what).await?;
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: not a token answer: {e}")))?;
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let token = parsed
            .into_token(generation)
            .ok_or_else(|| Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: answer holds no token")))?;
        self.tokens_fetched.fetch_add(1, Ordering::Relaxed);
        debug!("{what}: got {token:?}");
        Ok(token)
    }
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
pub async fn read_limited(mut resp: Response, limit: usize, what: &str) -> Result<Vec<u8>, Failure> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: answer larger than {limit} bytes")));
    }
    let mut body = Vec::new();
    while let Some(c) = resp.chunk().await.map_err(|e| transport_failure(what, e))? {
        if body.len() + c.len() > limit {
            return Err(Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: answer larger than {limit} bytes")));
        }
        body.extend_from_slice(&c);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            deadline: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn retries_are_bounded_and_final_errors_stop_at_once() {
        let n = AtomicU32::new(0);
        let e = with_retries(&fast(), "t", || async {
            n.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Failure::retry(io::ErrorKind::TimedOut, "slow"))
        })
        .await
        .unwrap_err();
        assert_eq!(n.load(Ordering::Relaxed), 3);
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("gave up after 3 attempts"), "{e}");

        let n = AtomicU32::new(0);
        let e = with_retries(&fast(), "t", || async {
            n.fetch_add(1, Ordering::Relaxed);
            Err::<(), _>(Failure::fatal(io::ErrorKind::NotFound, "gone"))
        })
        .await
        .unwrap_err();
        assert_eq!((n.load(Ordering::Relaxed), e.kind()), (1, io::ErrorKind::NotFound));

        let n = AtomicU32::new(0);
        let v = with_retries(&fast(), "t", || async {
            if n.fetch_add(1, Ordering::Relaxed) < 2 {
                Err(Failure::retry(io::ErrorKind::UnexpectedEof, "cut"))
            } else {
                Ok(7)
            }
        })
        .await
        .unwrap();
        assert_eq!(v, 7);
    }

    #[test]
    fn bad_transport_options_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "no certificate here").unwrap();
        let opts = TransportOptions { extra_ca_files: vec![ca], ..Default::default() };
        let e = build_http(&opts).unwrap_err().to_string();
        assert!(e.contains("holds no certificate") || e.contains("CA file"), "{e}");
        let opts = TransportOptions { extra_ca_files: vec![dir.path().join("none.pem")], ..Default::default() };
        assert!(build_http(&opts).unwrap_err().to_string().contains("none.pem"));
        let opts = TransportOptions { proxy: Some("::not a url".into()), ..Default::default() };
        assert!(build_http(&opts).unwrap_err().to_string().contains("proxy"));
    }
}
