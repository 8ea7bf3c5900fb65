//! The blob source a nydusd bind builds from nydus-snapshotter's registry backend config
//! (`erofsd::nydusd::backend`), reading real bytes from a real registry (Debian's
//! docker-registry on loopback): a `registry_token`, `auth` against htpasswd, `skip_verify` and
//! `ca_cert_files` against TLS, `proxy.url` through a forward proxy, and the fields we do not
//! honour named in warnings. The daemon-level bind and its survival across a takeover are in
//! tests/nydusd.rs (`registry_backed_rafs_bind_survives_takeover`). Without docker-registry a
//! test skips loudly (fails under CI).

mod common;

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;

use base64::Engine;
use common::registry::*;
use erofsd::core::source::SharedSource;
use erofsd::nydusd::backend::{parse_auth, registry_config, source_for, BackendRef};
use serde_json::{json, Value};

const REPO: &str = "nydus/app";

/// The snapshotter's entry `config` for a registry backend.
fn entry(bc: Value) -> Value {
    json!({"id": "f", "backend_type": "registry", "backend_config": bc, "cache_type": "fscache", "metadata_path": "/nonexistent/image/image.boot"})
}

/// Builds the bind's source the way the daemon does (no `blobs/` beside the bootstrap).
fn bind_source(bc: Value) -> anyhow::Result<SharedSource> {
    let d = tempfile::tempdir().unwrap();
    let boot = d.path().join("image/image.boot");
    Ok(source_for(&boot, &entry(bc))?.expect("a registry source"))
}

async fn check(src: &SharedSource, id: &str, data: &[u8]) {
    let n = data.len() as u64;
    for (off, len) in [(0u64, 1u64), (4096, 65_536), (n - 100, 100), (0, n)] {
        let got = src.read_range(id, off, len).await.unwrap_or_else(|e| panic!("{}: range {off}+{len}: {e}", src.describe()));
        assert!(got == data[off as usize..(off + len) as usize], "range {off}+{len} differs");
    }
}

fn host_of(url: &str) -> &str {
    url.split_once("://").unwrap().1
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_token_is_presented_and_a_refused_one_falls_back_to_the_challenge() {
    if !require_registry("registry_token_is_presented_and_a_refused_one_falls_back_to_the_challenge") {
        return;
    }
    let ts = TokenServer::start(TokenPolicy { exp_offset: 600, expires_in: 600, require_basic: None }).await;
    let reg = Registry::start(&ts.auth_yaml(), None);
    let data = test_bytes(250_000, 21);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, Some(&ts.bearer_for(REPO))).await;
    let before = ts.issued();

    // The snapshotter's keychain gave a token: it is used as is, nothing asked of the token server.
    let token = ts.bearer_for(REPO).strip_prefix("Bearer ").unwrap().to_string();
    let src = bind_source(json!({"host": host_of(&reg.url), "repo": REPO, "scheme": "http", "registry_token": token})).unwrap();
    check(&src, &id, &data).await;
    assert_eq!(ts.issued(), before, "the configured token served every request");

    // A token the registry refuses: the challenge flow takes over (anonymous pull here) once.
    let src = bind_source(json!({"host": host_of(&reg.url), "repo": REPO, "scheme": "http", "registry_token": "not.a.jwt"})).unwrap();
    check(&src, &id, &data).await;
    assert_eq!(ts.issued(), before + 1, "one token fetched after the refusal, then reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_the_bind_and_no_docker_config_fallback() {
    if !require_registry("basic_auth_from_the_bind_and_no_docker_config_fallback") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "s3cret");
    let reg = Registry::start(&format!("auth:\n  htpasswd:\n    realm: erofsd-test\n    path: {}\n", htpasswd.display()), None);
    let basic = format!("Basic {}", b64("alice:s3cret"));
    let data = test_bytes(180_000, 22);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, Some(&basic)).await;
    let bc = |auth: &str| json!({"host": host_of(&reg.url), "repo": REPO, "scheme": "http", "auth": auth, "retry_limit": 0});

    check(&bind_source(bc(&b64("alice:s3cret"))).unwrap(), &id, &data).await;
    let e = bind_source(bc(&b64("alice:wrong"))).unwrap().read_range(&id, 0, 1).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(!e.to_string().contains("wrong"), "password in an error: {e}");

    // A renewed credential (`PUT /api/v1/config` registry_auth) reaches the source in use.
    let d = tempfile::tempdir().unwrap();
    let built = BackendRef { kind: "registry".into(), config: bc(&b64("alice:wrong")) }
        .build(&d.path().join("image.boot"))
        .unwrap()
        .expect("a source");
    assert!(built.source.read_range(&id, 0, 1).await.is_err());
    built.registry.as_ref().expect("a registry source").set_credentials(parse_auth(&b64("alice:s3cret")).unwrap());
    check(&built.source, &id, &data).await;

    // An empty `auth` is anonymous, as in nydusd, even with docker config credentials around
    // (the snapshotter consults docker config itself before it sends the entry).
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    write_docker_config(&docker.join("config.json"), &reg.host_port(), "alice", "s3cret");
    std::env::set_var("DOCKER_CONFIG", &docker);
    let e = bind_source(bc("")).unwrap().read_range(&id, 0, 1).await.unwrap_err();
    std::env::remove_var("DOCKER_CONFIG");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("none are configured"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_verify_and_ca_cert_files_against_tls() {
    if !require_registry("skip_verify_and_ca_cert_files_against_tls") {
        return;
    }
    let tls = make_tls();
    let reg = Registry::start("", Some(&tls));
    let data = test_bytes(120_000, 23);
    let id = push_blob(&push_client(Some(&tls.ca_pem)), &reg.url, REPO, &data, None).await;
    let base = json!({"host": reg.host_port(), "repo": REPO, "scheme": "https", "retry_limit": 0, "timeout": 10, "connect_timeout": 5});

    let e = bind_source(base.clone()).unwrap().read_range(&id, 0, 10).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"), "{e}");

    let mut insecure = base.clone();
    insecure["skip_verify"] = json!(true);
    check(&bind_source(insecure).unwrap(), &id, &data).await;

    let mut with_ca = base.clone();
    with_ca["ca_cert_files"] = json!([tls.ca_pem]);
    check(&bind_source(with_ca).unwrap(), &id, &data).await;

    // A CA file that is not there fails the bind, naming it.
    let mut missing = base;
    missing["ca_cert_files"] = json!(["/nonexistent/ca.pem"]);
    let e = format!("{:#}", bind_source(missing).err().expect("an error"));
    assert!(e.contains("/nonexistent/ca.pem"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_url_carries_every_request_and_its_extras_are_warned_about() {
    if !require_registry("proxy_url_carries_every_request_and_its_extras_are_warned_about") {
        return;
    }
    let reg = Registry::start("", None);
    let data = test_bytes(150_000, 24);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, None).await;
    let proxy = ForwardProxy::start().await;
    let bc = json!({"host": host_of(&reg.url), "repo": REPO, "scheme": "http", "proxy": {"url": proxy.url(), "fallback": false}});
    let (_, warnings) = registry_config(&bc).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let src = bind_source(bc).unwrap();
    assert!(src.describe().contains("via proxy"), "{}", src.describe());
    check(&src, &id, &data).await;
    assert!(proxy.http_requests.load(Ordering::Relaxed) >= 1, "requests went around the proxy");

    // A dead proxy: with fallback (nydusd's default) each request goes directly to the
    // registry instead; the health check it comes with in nydusd is named in a warning.
    let dead = json!({"host": host_of(&reg.url), "repo": REPO, "scheme": "http", "retry_limit": 0,
                      "proxy": {"url": "http://127.0.0.1:1", "fallback": true, "ping_url": "http://127.0.0.1:1/ping", "check_interval": 5}});
    let (_, warnings) = registry_config(&dead).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("proxy.ping_url"), "{warnings:?}");
    let src = bind_source(dead.clone()).unwrap();
    assert!(src.describe().contains("direct fallback"), "{}", src.describe());
    check(&src, &id, &data).await;
    // Without fallback nothing bypasses the proxy.
    let mut strict = dead;
    strict["proxy"]["fallback"] = json!(false);
    assert!(bind_source(strict).unwrap().read_range(&id, 0, 10).await.is_err());

    // A proxy answering 5xx (a fault front standing in for a failing dfdaemon) falls back too.
    let front = FaultFront::start(([127, 0, 0, 1], 1).into()).await;
    front.set_always(Some(Fault::Status(502)));
    let bad = json!({"host": host_of(&reg.url), "repo": REPO, "scheme": "http", "retry_limit": 0, "proxy": {"url": front.url(), "fallback": true}});
    check(&bind_source(bad).unwrap(), &id, &data).await;
    assert!(front.count() >= 1, "the proxy was asked first");
}

/// A `localfs` backend: `dir` is honoured (blobs named by id there).
#[tokio::test]
async fn localfs_dir_serves_bytes() {
    let d = tempfile::tempdir().unwrap();
    let data = test_bytes(70_000, 25);
    let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    std::fs::write(d.path().join(&id), &data).unwrap();
    let cfg = json!({"backend": {"type": "localfs", "localfs": {"dir": d.path()}}});
    let src = source_for(Path::new("/nonexistent/image.boot"), &cfg).unwrap().expect("a source");
    check(&src, &id, &data).await;
}

/// `blob_url_scheme` / `blob_redirected_host`: the registry (a front standing in for one that
/// sends blobs elsewhere) redirects every blob request to `https://blob.invalid:PORT/…`, which
/// cannot be reached; rewritten to `http://127.0.0.1:PORT` (the real registry) the bytes arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirects_are_rewritten_to_the_configured_scheme_and_host() {
    if !require_registry("blob_redirects_are_rewritten_to_the_configured_scheme_and_host") {
        return;
    }
    let reg = Registry::start("", None);
    let data = test_bytes(140_000, 26);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, None).await;
    let front = FaultFront::start(([127, 0, 0, 1], reg.port).into()).await;
    front.set_always(Some(Fault::Redirect(format!("https://blob.invalid:{}", reg.port))));
    let bc = |extra: Value| {
        let mut v = json!({"host": host_of(&front.url()), "repo": REPO, "scheme": "http", "retry_limit": 0});
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        v
    };
    let (_, warnings) = registry_config(&bc(json!({"blob_url_scheme": "http", "blob_redirected_host": "127.0.0.1"}))).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let src = bind_source(bc(json!({"blob_url_scheme": "http", "blob_redirected_host": "127.0.0.1"}))).unwrap();
    check(&src, &id, &data).await;
    assert!(front.count() >= 4, "every read was redirected by the front");
    // host:port form too.
    let src = bind_source(bc(json!({"blob_url_scheme": "http", "blob_redirected_host": format!("127.0.0.1:{}", reg.port)}))).unwrap();
    assert_eq!(src.read_range(&id, 10, 10).await.unwrap(), &data[10..20]);
    // The redirect as sent cannot be followed; half the rewrite is not enough either.
    for extra in [json!({}), json!({"blob_redirected_host": "127.0.0.1"}), json!({"blob_url_scheme": "http"})] {
        let e = bind_source(bc(extra.clone())).unwrap().read_range(&id, 0, 10).await;
        assert!(e.is_err(), "{extra}: the redirect was followed without its rewrite");
    }
}
