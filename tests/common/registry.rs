//! A real registry for tests: Debian's `docker-registry` (Docker Distribution 2.8) started on
//! loopback by the test itself, plus the small servers the registry tests put around it:
//! a token server issuing ES256 JWTs the registry verifies (x5c chain to its rootcertbundle),
//! a forward proxy (CONNECT and absolute-form HTTP) that counts requests, and a fault-injecting
//! front that can answer 5xx, stall, cut bodies, flip bytes, kill connections or redirect.

use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::env;

pub const REGISTRY_BIN: &str = "docker-registry";

/// True if the test may go on (the binary exists); otherwise a loud skip, or a panic under CI.
pub fn require_registry(test: &str) -> bool {
    env::require_tools(test, &[REGISTRY_BIN])
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    child: Child,
    _dir: tempfile::TempDir,
    pub port: u16,
    /// `http://127.0.0.1:PORT` or `https://127.0.0.1:PORT`.
    pub url: String,
    pub log: PathBuf,
}

/// TLS material made by [`make_tls`].
pub struct Tls {
    pub dir: tempfile::TempDir,
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

/// A fresh CA and a server certificate for 127.0.0.1 / localhost signed by it.
pub fn make_tls() -> Tls {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "erofsd test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (ca_pem, cert_pem, key_pem) = (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_pem, ca.pem()).unwrap();
    std::fs::write(&cert_pem, cert.pem()).unwrap();
    std::fs::write(&key_pem, key.serialize_pem()).unwrap();
    Tls { dir, ca_pem, cert_pem, key_pem }
}

/// An htpasswd file with one bcrypt entry.
pub fn write_htpasswd(path: &Path, user: &str, pass: &str) {
    let hash = bcrypt::hash(pass, 5).unwrap();
    std::fs::write(path, format!("{user}:{hash}\n")).unwrap();
}

impl Registry {
    /// Starts a registry; `auth_yaml` is an optional top-level `auth:` block (already indented).
    pub fn start(auth_yaml: &str, tls: Option<&Tls>) -> Registry {
        Self::start_opts(auth_yaml, tls, false)
    }

    /// A plain-HTTP registry without auth that also writes an access log line per request
    /// (combined log format, with the bytes of each answer) for [`Registry::blob_bytes_served`].
    pub fn start_with_access_log() -> Registry {
        Self::start_opts("", None, true)
    }

    fn start_opts(auth_yaml: &str, tls: Option<&Tls>, access_log: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_yaml = tls
            .map(|t| format!("  tls:\n    certificate: {}\n    key: {}\n", t.cert_pem.display(), t.key_pem.display()))
            .unwrap_or_default();
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  secret: erofsd-test-secret\n{tls_yaml}{auth_yaml}",
            !access_log,
            dir.path().join("storage").display()
        );
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let child = Self::spawn(&cfg_path, &log);
        let scheme = if tls.is_some() { "https" } else { "http" };
        let reg = Registry { child, _dir: dir, port, url: format!("{scheme}://127.0.0.1:{port}"), log };
        reg.wait_ready();
        reg
    }

    fn spawn(cfg_path: &Path, log: &Path) -> Child {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(cfg_path)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn docker-registry")
    }

    /// Kills the registry process (SIGKILL); its storage stays for [`Registry::revive`].
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The registry process's pid (to signal it while the registry is shared).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the registry again on the same port with the same storage.
    pub fn revive(&mut self) {
        self.child = Self::spawn(&self._dir.path().join("config.yml"), &self.log);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "registry did not start; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The body bytes of each successful GET of blob `sha256:<hex>` (any repository), in
    /// order, from the access log (needs [`Registry::start_with_access_log`]).
    pub fn blob_gets(&self, hex: &str) -> Vec<u64> {
        let needle = format!("/blobs/sha256:{hex} ");
        let mut out = Vec::new();
        for l in self.log_text().lines() {
            // 127.0.0.1 - - [date] "GET /v2/REPO/blobs/sha256:HEX HTTP/1.1" 206 1234 "" "agent"
            let Some((req, rest)) = l.split_once("\"GET ").and_then(|(_, r)| r.split_once('"')) else { continue };
            if !format!("{req} ").contains(&needle) {
                continue;
            }
            let mut f = rest.split_whitespace();
            let (status, n) = (f.next().unwrap_or(""), f.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0));
            if status.starts_with('2') {
                out.push(n);
            }
        }
        out
    }

    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client for pushing test content (accepts the test CA when given).
pub fn push_client(ca: Option<&Path>) -> reqwest::Client {
    let mut b = reqwest::Client::builder().no_proxy();
    if let Some(ca) = ca {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap());
    }
    b.build().unwrap()
}

/// Monolithic upload (POST then PUT ?digest=); returns the sha256 hex.
pub async fn push_blob(client: &reqwest::Client, base: &str, repo: &str, data: &[u8], auth: Option<&str>) -> String {
    let hex = hex::encode(Sha256::digest(data));
    let mut rb = client.post(format!("{base}/v2/{repo}/blobs/uploads/"));
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202, "start upload: {:?}", resp.text().await);
    let loc = resp.headers()["location"].to_str().unwrap().to_string();
    let loc = if loc.starts_with("http") { loc } else { format!("{base}{loc}") };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let mut rb = client
        .put(format!("{loc}{sep}digest=sha256:{hex}"))
        .header("Content-Type", "application/octet-stream")
        .body(data.to_vec());
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201, "finish upload: {:?}", resp.text().await);
    hex
}

pub async fn push_manifest(client: &reqwest::Client, base: &str, repo: &str, tag: &str, media_type: &str, body: &[u8], auth: Option<&str>) {
    let mut rb = client
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("Content-Type", media_type)
        .body(body.to_vec());
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    let resp = rb.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201, "push manifest: {:?}", resp.text().await);
}

/// Deterministic test bytes: `n` bytes, compressible text in even 64 KiB stretches, noise in odd.
pub fn test_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|i| {
            if (i / 65536) % 2 == 0 {
                b"registry test data "[i % 19]
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }
        })
        .collect()
}

// ---------------------------------------------------------------- small HTTP plumbing

/// Reads one request or response head (up to the blank line). Returns (head, bytes read past it).
async fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..p + 4]).to_string();
            return Some((head, buf[p + 4..].to_vec()));
        }
        if buf.len() > 64 << 10 {
            return None;
        }
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// The head with every `Connection` header replaced by `Connection: close`.
fn with_close(head: &str) -> String {
    let mut out = String::new();
    for l in head.trim_end_matches("\r\n\r\n").split("\r\n") {
        if l.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("connection")) {
            continue;
        }
        out.push_str(l);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

// ---------------------------------------------------------------- forward proxy

/// A forward proxy: CONNECT tunnels and absolute-form HTTP requests. Counts what it relays.
pub struct ForwardProxy {
    pub addr: SocketAddr,
    pub connects: Arc<AtomicU64>,
    pub http_requests: Arc<AtomicU64>,
}

impl ForwardProxy {
    pub async fn start() -> ForwardProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(AtomicU64::new(0));
        let http_requests = Arc::new(AtomicU64::new(0));
        let (c, h) = (connects.clone(), http_requests.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (c, h) = (c.clone(), h.clone());
                tokio::spawn(async move {
                    let Some((head, rest)) = read_head(&mut client).await else { return };
                    let mut parts = head.split_whitespace();
                    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("").to_string());
                    if method == "CONNECT" {
                        c.fetch_add(1, Ordering::Relaxed);
                        let Ok(mut up) = TcpStream::connect(&target).await else { return };
                        let _ = client.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n").await;
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                        return;
                    }
                    // Absolute form: http://host:port/path -> origin form to host:port.
                    h.fetch_add(1, Ordering::Relaxed);
                    let Some(after) = target.strip_prefix("http://") else { return };
                    let (hostport, path) = match after.find('/') {
                        Some(i) => (&after[..i], &after[i..]),
                        None => (after, "/"),
                    };
                    let Ok(mut up) = TcpStream::connect(hostport).await else { return };
                    let first_line_end = head.find("\r\n").unwrap();
                    let new_head = format!("{method} {path} HTTP/1.1{}", &head[first_line_end..]);
                    let _ = up.write_all(with_close(&new_head).as_bytes()).await;
                    let _ = up.write_all(&rest).await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                });
            }
        });
        ForwardProxy { addr, connects, http_requests }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---------------------------------------------------------------- fault-injecting front

#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status with an empty body, without asking the registry.
    Status(u16),
    /// 429 with `Retry-After: 0`.
    TooManyRequests,
    /// Wait this long before answering (then answer normally).
    Delay(Duration),
    /// Send the head and half the body, then close cleanly.
    Truncate,
    /// Send the head and a quarter of the body, then reset the connection.
    Kill,
    /// Flip one byte in the middle of the body.
    Corrupt,
    /// Answer 307 to this base URL plus the request path.
    Redirect(String),
    /// Drop the request's `Range` header, so the registry answers 200 with the whole blob.
    IgnoreRange,
}

/// A reverse proxy in front of a registry that applies a queue of faults, one per request
/// (requests with an empty queue pass through, or get `always` if set).
pub struct FaultFront {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicU64>,
    pub plan: Arc<Mutex<VecDeque<Fault>>>,
    pub always: Arc<Mutex<Option<Fault>>>,
    /// The Authorization header of every request, in order (None when absent).
    pub auth_seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl FaultFront {
    pub async fn start(upstream: SocketAddr) -> FaultFront {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let front = FaultFront {
            addr,
            requests: Arc::new(AtomicU64::new(0)),
            plan: Arc::new(Mutex::new(VecDeque::new())),
            always: Arc::new(Mutex::new(None)),
            auth_seen: Arc::new(Mutex::new(Vec::new())),
        };
        let (requests, plan, always, auth_seen) =
            (front.requests.clone(), front.plan.clone(), front.always.clone(), front.auth_seen.clone());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (requests, plan, always, auth_seen) = (requests.clone(), plan.clone(), always.clone(), auth_seen.clone());
                tokio::spawn(async move {
                    let Some((head, _)) = read_head(&mut client).await else { return };
                    requests.fetch_add(1, Ordering::Relaxed);
                    auth_seen.lock().unwrap().push(header_value(&head, "authorization"));
                    let fault = plan.lock().unwrap().pop_front().or_else(|| always.lock().unwrap().clone());
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    match &fault {
                        Some(Fault::Status(code)) => {
                            let _ = client
                                .write_all(format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                                .await;
                            return;
                        }
                        Some(Fault::TooManyRequests) => {
                            let _ = client
                                .write_all(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                                .await;
                            return;
                        }
                        Some(Fault::Redirect(base)) => {
                            let _ = client
                                .write_all(format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {base}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes())
                                .await;
                            return;
                        }
                        Some(Fault::Delay(d)) => tokio::time::sleep(*d).await,
                        _ => {}
                    }
                    let head = if matches!(fault, Some(Fault::IgnoreRange)) {
                        head.split("\r\n")
                            .filter(|l| !l.split_once(':').is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("range")))
                            .collect::<Vec<_>>()
                            .join("\r\n")
                    } else {
                        head
                    };
                    let Ok(mut up) = TcpStream::connect(upstream).await else { return };
                    if up.write_all(with_close(&head).as_bytes()).await.is_err() {
                        return;
                    }
                    let mut answer = Vec::new();
                    let _ = up.read_to_end(&mut answer).await;
                    let Some(p) = answer.windows(4).position(|w| w == b"\r\n\r\n") else { return };
                    let head_out = with_close(&String::from_utf8_lossy(&answer[..p + 4]));
                    let mut body = answer[p + 4..].to_vec();
                    match fault {
                        Some(Fault::Truncate) => body.truncate(body.len() / 2),
                        Some(Fault::Kill) => body.truncate(body.len() / 4),
                        Some(Fault::Corrupt) if !body.is_empty() => {
                            let mid = body.len() / 2;
                            body[mid] ^= 0x5a;
                        }
                        _ => {}
                    }
                    let _ = client.write_all(head_out.as_bytes()).await;
                    let _ = client.write_all(&body).await;
                    if matches!(fault, Some(Fault::Kill)) {
                        // SO_LINGER 0: close sends a reset, as a killed peer would.
                        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                        let _ = nix::sys::socket::setsockopt(&client, nix::sys::socket::sockopt::Linger, &linger);
                        drop(client);
                    } else {
                        let _ = client.shutdown().await;
                    }
                });
            }
        });
        front
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn push(&self, f: Fault) {
        self.plan.lock().unwrap().push_back(f);
    }

    pub fn set_always(&self, f: Option<Fault>) {
        *self.always.lock().unwrap() = f;
    }

    pub fn count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }
}

// ---------------------------------------------------------------- token server

/// What the token server does with the next requests.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    /// `exp` claim = now + this many seconds (negative: already expired, beyond the registry's
    /// 60 s leeway if below -60).
    pub exp_offset: i64,
    /// `expires_in` told to the client.
    pub expires_in: u64,
    /// If set, a request must carry these basic credentials.
    pub require_basic: Option<(String, String)>,
}

/// A distribution token server: `GET /token?service=&scope=` -> an ES256 JWT whose `x5c`
/// header carries a self-signed certificate that the registry trusts (its rootcertbundle).
pub struct TokenServer {
    pub addr: SocketAddr,
    pub issued: Arc<AtomicU64>,
    pub policy: Arc<Mutex<TokenPolicy>>,
    pub cert_pem: PathBuf,
    signer: Arc<Signer>,
    _dir: tempfile::TempDir,
}

pub const TOKEN_SERVICE: &str = "erofsd-test-registry";
pub const TOKEN_ISSUER: &str = "erofsd-test-issuer";

struct Signer {
    key: p256::ecdsa::SigningKey,
    cert_der: Vec<u8>,
}

impl Signer {
    fn mint(&self, repo_actions: &[(String, Vec<String>)], exp_offset: i64) -> String {
        use p256::ecdsa::signature::Signer as _;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let header = serde_json::json!({
            "typ": "JWT", "alg": "ES256",
            "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.cert_der)],
        });
        let access: Vec<_> = repo_actions
            .iter()
            .map(|(name, actions)| serde_json::json!({"type": "repository", "name": name, "actions": actions}))
            .collect();
        let claims = serde_json::json!({
            "iss": TOKEN_ISSUER, "sub": "erofsd-test", "aud": TOKEN_SERVICE,
            "exp": now + exp_offset, "nbf": now - 300 + exp_offset.min(0), "iat": now,
            "jti": format!("{now}-{}", rand_u64()), "access": access,
        });
        let signing_input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
        let sig: p256::ecdsa::Signature = self.key.sign(signing_input.as_bytes());
        format!("{signing_input}.{}", b64(&sig.to_bytes()))
    }
}

fn rand_u64() -> u64 {
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed) ^ (SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as u64)
}

/// `repository:NAME:a,b` scopes (space separated) -> (NAME, actions).
fn parse_scopes(scope: &str) -> Vec<(String, Vec<String>)> {
    scope
        .split(' ')
        .filter_map(|s| {
            let rest = s.strip_prefix("repository:")?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some((name.to_string(), actions.split(',').map(str::to_string).collect()))
        })
        .collect()
}

impl TokenServer {
    pub async fn start(policy: TokenPolicy) -> TokenServer {
        use rcgen::{CertificateParams, KeyPair};
        use p256::pkcs8::DecodePrivateKey;
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "erofsd test token signer");
        let cert = params.self_signed(&key).unwrap();
        let cert_pem = dir.path().join("token-signer.pem");
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        let signer = Arc::new(Signer {
            key: p256::ecdsa::SigningKey::from_pkcs8_der(&key.serialize_der()).unwrap(),
            cert_der: cert.der().to_vec(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let issued = Arc::new(AtomicU64::new(0));
        let policy = Arc::new(Mutex::new(policy));
        let (s, i, p) = (signer.clone(), issued.clone(), policy.clone());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (s, i, p) = (s.clone(), i.clone(), p.clone());
                tokio::spawn(async move {
                    // One request per connection (we answer with Connection: close).
                    let Some((head, _)) = read_head(&mut conn).await else { return };
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let url = url::Url::parse(&format!("http://x{target}")).unwrap();
                    let scope: String = url.query_pairs().filter(|(k, _)| k == "scope").map(|(_, v)| v.to_string()).collect::<Vec<_>>().join(" ");
                    let service = url.query_pairs().find(|(k, _)| k == "service").map(|(_, v)| v.to_string());
                    let policy = p.lock().unwrap().clone();
                    let authorized = match &policy.require_basic {
                        None => true,
                        Some((u, pw)) => {
                            let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{pw}")));
                            header_value(&head, "authorization").as_deref() == Some(want.as_str())
                        }
                    };
                    let answer = if !authorized || service.as_deref() != Some(TOKEN_SERVICE) {
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 27\r\nConnection: close\r\n\r\n{\"details\":\"bad user/pass\"}".to_string()
                    } else {
                        let token = s.mint(&parse_scopes(&scope), policy.exp_offset);
                        i.fetch_add(1, Ordering::Relaxed);
                        let body = serde_json::json!({"token": token, "access_token": token, "expires_in": policy.expires_in}).to_string();
                        format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                    };
                    let _ = conn.write_all(answer.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        TokenServer { addr, issued, policy, cert_pem, signer, _dir: dir }
    }

    /// The registry `auth:` block that trusts this server.
    pub fn auth_yaml(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://{}/token\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
            self.addr,
            self.cert_pem.display()
        )
    }

    /// A push+pull token for `repo`, minted directly (for setting up content).
    pub fn bearer_for(&self, repo: &str) -> String {
        format!("Bearer {}", self.signer.mint(&[(repo.to_string(), vec!["pull".into(), "push".into()])], 600))
    }

    pub fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }
}

/// Writes a docker config.json with a basic `auth` entry for `registry`.
pub fn write_docker_config(path: &Path, registry: &str, user: &str, pass: &str) {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let mut f = std::fs::File::create(path).unwrap();
    write!(f, "{}", serde_json::json!({"auths": {registry: {"auth": auth}}})).unwrap();
}
