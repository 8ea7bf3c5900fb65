//! RegistrySource against a real registry (Debian's docker-registry, Distribution 2.8) on
//! loopback: plain HTTP, TLS with a test CA, htpasswd basic auth, bearer tokens from a token
//! server whose JWTs the registry verifies, a forward proxy, and faults injected by a front.
//! Each test starts its own registry; without the binary a test skips loudly (fails under CI).

mod common;

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use common::registry::*;
use erofs::blob::{BlobRecord, Compression};
use erofsd::core::blob::Blob;
use erofsd::core::fill::{Filler, Target};
use erofsd::core::registry::{Credentials, RegistryConfig, RegistrySource, RetryPolicy};
use erofsd::core::source::BlobSource;
use erofsd::core::writer::Writer;
use sha2::{Digest, Sha256};

const REPO: &str = "erofsd/test";

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        deadline: Duration::from_secs(30),
    }
}

fn source(cfg: RegistryConfig) -> RegistrySource {
    RegistrySource::new(cfg).expect("registry source")
}

/// Reads a handful of ranges (start, middle, a run crossing 64 KiB, the very end) and compares.
async fn check_ranges(src: &RegistrySource, id: &str, data: &[u8]) {
    let n = data.len() as u64;
    for (off, len) in [(0u64, 1u64), (100, 4096), (65_000, 70_000.min(n - 65_000)), (n - 17, 17), (0, n)] {
        let got = src.read_range(id, off, len).await.unwrap_or_else(|e| panic!("range {off}+{len}: {e}"));
        assert!(got == data[off as usize..(off + len) as usize], "range {off}+{len} differs");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_ranges_manifest_and_whole_blob() {
    if !require_registry("plain_http_ranges_manifest_and_whole_blob") {
        return;
    }
    let reg = Registry::start("", None);
    let client = push_client(None);
    let data = test_bytes(300_000, 7);
    let id = push_blob(&client, &reg.url, REPO, &data, None).await;
    let mut cfg = RegistryConfig::new(&reg.url, REPO);
    cfg.retry = fast_retry(2);
    let src = source(cfg);
    check_ranges(&src, &id, &data).await;
    assert_eq!(src.tokens_fetched(), 0);

    // Past the end, and an unknown blob: final errors, not retries.
    let e = src.read_range(&id, data.len() as u64 - 1, 2).await.unwrap_err();
    assert!(matches!(e.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData), "{e}");
    let e = src.read_range(&"0".repeat(64), 0, 1).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("404") && !e.to_string().contains("gave up"), "{e}");

    // An OCI manifest by tag and by digest; the whole blob streamed and verified.
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_id = push_blob(&client, &reg.url, REPO, config, None).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{config_id}"), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{id}"), "size": data.len()}],
    })
    .to_string();
    push_manifest(&client, &reg.url, REPO, "v1", "application/vnd.oci.image.manifest.v1+json", manifest.as_bytes(), None).await;
    let m = src.fetch_manifest("v1").await.unwrap();
    assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m.bytes, manifest.as_bytes());
    assert_eq!(m.digest, format!("sha256:{}", hex::encode(Sha256::digest(manifest.as_bytes()))));
    let by_digest = src.fetch_manifest(&m.digest).await.unwrap();
    assert_eq!(by_digest.bytes, m.bytes);
    assert_eq!(src.fetch_manifest("nope").await.unwrap_err().kind(), io::ErrorKind::NotFound);

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("blob");
    assert_eq!(src.download_blob(&id, Some(data.len() as u64), &dest).await.unwrap(), data.len() as u64);
    assert!(std::fs::read(&dest).unwrap() == data);
    // A descriptor size smaller than the body: refused as soon as the body passes it, no file.
    let e = src.download_blob(&id, Some(data.len() as u64 - 1), &dest).await.unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_needs_the_extra_ca_or_insecure() {
    if !require_registry("tls_needs_the_extra_ca_or_insecure") {
        return;
    }
    let tls = make_tls();
    let reg = Registry::start("", Some(&tls));
    let data = test_bytes(150_000, 11);
    let id = push_blob(&push_client(Some(&tls.ca_pem)), &reg.url, REPO, &data, None).await;

    let mut with_ca = RegistryConfig::new(reg.host_port(), REPO); // bare host:port means https
    with_ca.transport.extra_ca_files = vec![tls.ca_pem.clone()];
    check_ranges(&source(with_ca), &id, &data).await;

    let mut without = RegistryConfig::new(reg.host_port(), REPO);
    without.retry = fast_retry(2);
    let e = source(without).read_range(&id, 0, 10).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("certificate") || e.contains("UnknownIssuer"), "{e}");

    let mut insecure = RegistryConfig::new(reg.host_port(), REPO);
    insecure.transport.insecure_skip_verify = true;
    check_ranges(&source(insecure), &id, &data).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_basic_auth_from_options_and_docker_config() {
    if !require_registry("htpasswd_basic_auth_from_options_and_docker_config") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "s3cret");
    let reg = Registry::start(
        &format!("auth:\n  htpasswd:\n    realm: erofsd-test\n    path: {}\n", htpasswd.display()),
        None,
    );
    let basic = Credentials::basic("alice", "s3cret").basic_header().unwrap();
    let data = test_bytes(200_000, 3);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, Some(&basic)).await;

    let mut cfg = RegistryConfig::new(&reg.url, REPO);
    cfg.credentials = Credentials::basic("alice", "s3cret");
    check_ranges(&source(cfg), &id, &data).await;

    let docker_cfg = dir.path().join("config.json");
    write_docker_config(&docker_cfg, &reg.host_port(), "alice", "s3cret");
    let cfg = RegistryConfig::new(&reg.url, REPO).with_docker_config(&docker_cfg).unwrap();
    check_ranges(&source(cfg), &id, &data).await;

    let e = source(RegistryConfig::new(&reg.url, REPO)).read_range(&id, 0, 1).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("none are configured"), "{e}");

    let mut wrong = RegistryConfig::new(&reg.url, REPO);
    wrong.credentials = Credentials::basic("alice", "wrong");
    let e = source(wrong).read_range(&id, 0, 1).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("rejected") && !e.to_string().contains("wrong"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_are_fetched_cached_and_refreshed() {
    if !require_registry("bearer_tokens_are_fetched_cached_and_refreshed") {
        return;
    }
    let ts = TokenServer::start(TokenPolicy { exp_offset: 600, expires_in: 600, require_basic: None }).await;
    let reg = Registry::start(&ts.auth_yaml(), None);
    let data = test_bytes(200_000, 5);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, Some(&ts.bearer_for(REPO))).await;

    // Anonymous client: 401 challenge -> token -> success; the token is then reused.
    let src = source(RegistryConfig::new(&reg.url, REPO));
    check_ranges(&src, &id, &data).await;
    assert_eq!(src.tokens_fetched(), 1, "one token serves every request while fresh");
    let issued = ts.issued();

    // Many concurrent first requests (as the fill engine makes them): one token, single flight.
    let shared = Arc::new(source(RegistryConfig::new(&reg.url, REPO)));
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let (s, id) = (shared.clone(), id.clone());
        tasks.push(tokio::spawn(async move { s.read_range(&id, i * 1000, 1000).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        assert!(t.await.unwrap().unwrap() == data[i * 1000..(i + 1) * 1000]);
    }
    assert_eq!(shared.tokens_fetched(), 1, "concurrent 401s share one token fetch");

    // The registry rejects a token whose exp (plus its 60 s leeway) has passed while we still
    // trust it: the 401 triggers exactly one refresh, and the request succeeds.
    ts.policy.lock().unwrap().exp_offset = -120;
    let src2 = source(RegistryConfig::new(&reg.url, REPO));
    let e = src2.read_range(&id, 0, 10).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "an always-rejected token is a final error: {e}");
    assert_eq!(src2.tokens_fetched(), 2, "one fetch on the challenge, one refresh on the 401, no more");
    ts.policy.lock().unwrap().exp_offset = 600;
    assert_eq!(src2.read_range(&id, 5, 10).await.unwrap(), &data[5..15]);
    assert_eq!(src2.tokens_fetched(), 3);

    // A short expires_in: the cached token is replaced before use once it has expired.
    ts.policy.lock().unwrap().expires_in = 1;
    let src3 = source(RegistryConfig::new(&reg.url, REPO));
    assert_eq!(src3.read_range(&id, 0, 10).await.unwrap(), &data[..10]);
    assert_eq!(src3.tokens_fetched(), 1);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(src3.read_range(&id, 10, 10).await.unwrap(), &data[10..20]);
    assert_eq!(src3.tokens_fetched(), 2, "expired token refreshed before the request");
    assert!(ts.issued() >= issued + 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_server_with_basic_credentials() {
    if !require_registry("bearer_token_server_with_basic_credentials") {
        return;
    }
    let ts = TokenServer::start(TokenPolicy {
        exp_offset: 600,
        expires_in: 600,
        require_basic: Some(("bob".into(), "hunter2".into())),
    })
    .await;
    let reg = Registry::start(&ts.auth_yaml(), None);
    let data = test_bytes(100_000, 9);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, Some(&ts.bearer_for(REPO))).await;

    let mut cfg = RegistryConfig::new(&reg.url, REPO);
    cfg.credentials = Credentials::basic("bob", "hunter2");
    let src = source(cfg);
    check_ranges(&src, &id, &data).await;
    assert_eq!(src.tokens_fetched(), 1);

    let mut cfg = RegistryConfig::new(&reg.url, REPO);
    cfg.credentials = Credentials::basic("bob", "nope");
    let e = source(cfg).read_range(&id, 0, 1).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    assert!(e.to_string().contains("token server refused"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_through_the_forward_proxy() {
    if !require_registry("requests_go_through_the_forward_proxy") {
        return;
    }
    let proxy = ForwardProxy::start().await;
    // Plain HTTP: absolute-form requests to the proxy.
    let reg = Registry::start("", None);
    let data = test_bytes(120_000, 13);
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, None).await;
    let mut cfg = RegistryConfig::new(&reg.url, REPO);
    cfg.transport.proxy = Some(proxy.url());
    let src = source(cfg);
    check_ranges(&src, &id, &data).await;
    assert!(src.describe().contains("via proxy"));
    assert!(proxy.http_requests.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // TLS: a CONNECT tunnel, with the CA checked end to end through it.
    let tls = make_tls();
    let treg = Registry::start("", Some(&tls));
    let tid = push_blob(&push_client(Some(&tls.ca_pem)), &treg.url, REPO, &data, None).await;
    let mut cfg = RegistryConfig::new(&treg.url, REPO);
    cfg.transport.proxy = Some(proxy.url());
    cfg.transport.extra_ca_files = vec![tls.ca_pem.clone()];
    check_ranges(&source(cfg), &tid, &data).await;
    assert!(proxy.connects.load(std::sync::atomic::Ordering::Relaxed) >= 1);

    // A dead proxy fails the request: nothing bypasses it.
    let mut cfg = RegistryConfig::new(&reg.url, REPO);
    cfg.transport.proxy = Some("http://127.0.0.1:1".into());
    cfg.retry = fast_retry(2);
    let e = source(cfg).read_range(&id, 0, 1).await.unwrap_err();
    assert!(e.to_string().contains("gave up after 2 attempts"), "{e}");
}

/// Builds a zstd blob (text groups compress, noise groups are stored raw) and its record.
fn encode_blob(data: &[u8], gs_log2: u8) -> (Vec<u8>, BlobRecord) {
    erofs::blob::encode_blob(data, Compression::Zstd, gs_log2).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_retried_bounded_and_never_become_wrong_data() {
    if !require_registry("faults_are_retried_bounded_and_never_become_wrong_data") {
        return;
    }
    let reg = Registry::start("", None);
    let data = test_bytes(8 * 65536, 21); // 8 groups of 64 KiB: even ones compress, odd ones raw
    let (stored, rec) = encode_blob(&data, 16);
    assert!(rec.groups[1].stored_word() & (1 << 31) != 0, "noise group is stored raw");
    let id = push_blob(&push_client(None), &reg.url, REPO, &stored, None).await;
    assert_eq!(id, rec.id_hex());
    let front = FaultFront::start(format!("127.0.0.1:{}", reg.port).parse().unwrap()).await;
    let mut cfg = RegistryConfig::new(front.url(), REPO);
    cfg.retry = fast_retry(3);
    cfg.transport.read_timeout = Duration::from_secs(1);
    let src = source(cfg);
    let want = &stored[1000..9000];

    // One fault of each transient kind, then a clean answer: retried, right bytes.
    for fault in [Fault::Status(503), Fault::TooManyRequests, Fault::Truncate, Fault::Kill, Fault::Delay(Duration::from_secs(3))] {
        let before = front.count();
        front.push(fault.clone());
        let got = src
            .read_range(&id, 1000, 8000)
            .await
            .unwrap_or_else(|e| panic!("{fault:?}: {e} (front saw {} requests, plan {:?})", front.count() - before, front.plan.lock().unwrap()));
        assert!(got == want, "{fault:?}: wrong bytes");
        assert_eq!(front.count() - before, 2, "{fault:?}: one failed try, one good");
    }

    // Persistent faults: exactly `attempts` tries, then a clear error.
    for (fault, expect) in [
        (Fault::Status(502), "502"),
        (Fault::Truncate, "after 4000 of 8000 bytes"),
        (Fault::Delay(Duration::from_secs(3)), "timed out"),
    ] {
        let before = front.count();
        front.set_always(Some(fault.clone()));
        let e = src.read_range(&id, 1000, 8000).await.unwrap_err().to_string();
        front.set_always(None);
        assert_eq!(front.count() - before, 3, "{fault:?}: bounded retries ({e})");
        assert!(e.contains("gave up after 3 attempts") && e.to_lowercase().contains(expect), "{fault:?}: {e}");
    }

    // The whole-request timeout bounds an answer even when reads never idle long enough.
    let mut slow = RegistryConfig::new(front.url(), REPO);
    slow.retry = fast_retry(2);
    slow.transport.read_timeout = Duration::from_secs(30);
    slow.transport.request_timeout = Duration::from_millis(700);
    let before = front.count();
    front.set_always(Some(Fault::Delay(Duration::from_secs(2))));
    let e = source(slow).read_range(&id, 1000, 8000).await.unwrap_err();
    front.set_always(None);
    assert_eq!((front.count() - before, e.kind()), (2, io::ErrorKind::TimedOut), "{e}");

    // A front that drops Range: the whole (small) blob comes back with 200 and is sliced.
    let before = front.count();
    front.push(Fault::IgnoreRange);
    assert!(src.read_range(&id, 1000, 8000).await.unwrap() == want);
    assert_eq!(front.count() - before, 1);

    // A final status is not retried.
    let before = front.count();
    front.push(Fault::Status(403));
    let e = src.read_range(&id, 0, 10).await.unwrap_err();
    assert_eq!((front.count() - before, e.kind()), (1, io::ErrorKind::PermissionDenied), "{e}");

    // Through the fill engine: wrong bytes end as a CRC error and nothing reaches the target.
    let blob = Blob::new(rec.clone(), Arc::new(src)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.path().join("target")).unwrap();
    file.set_len(blob.size()).unwrap();
    let target = Target::new(blob.clone(), OwnedFd::from(file.try_clone().unwrap()));
    let filler = Filler::new(Writer::start(), 4);

    front.set_always(Some(Fault::Corrupt));
    // Group 1 alone is one raw group: the flipped byte lands in it.
    let e = filler.fill(&target, 65536, 4096).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("crc"), "a wrong byte in a raw group is a CRC error: {e}");
    // A zstd group: decoding or the CRC fails, either way an error.
    assert!(filler.fill(&target, 0, 4096).await.is_err());
    let mut back = vec![1u8; 2 * 65536];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back.iter().all(|&b| b == 0), "no byte of a corrupt answer was written");
    assert!(!target.is_ready(0, 2 * 65536));

    // Transient faults under the fill engine still end in exact data.
    front.set_always(None);
    front.push(Fault::Kill);
    front.push(Fault::Status(500));
    filler.fill(&target, 0, data.len() as u64).await.unwrap();
    let mut back = vec![0u8; data.len()];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == data, "target holds the address space");
    assert!(target.readiness().is_complete());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_followed_without_the_authorization_header() {
    if !require_registry("redirects_are_followed_without_the_authorization_header") {
        return;
    }
    // The registry proper wants basic auth; its "object storage" is a second registry holding
    // the same blob, behind a recording front on a different host name (localhost).
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "s3cret");
    let reg = Registry::start(&format!("auth:\n  htpasswd:\n    realm: r\n    path: {}\n", htpasswd.display()), None);
    let store = Registry::start("", None);
    let data = test_bytes(100_000, 17);
    let basic = Credentials::basic("alice", "s3cret").basic_header().unwrap();
    let id = push_blob(&push_client(None), &reg.url, REPO, &data, Some(&basic)).await;
    push_blob(&push_client(None), &store.url, REPO, &data, None).await;

    let front = FaultFront::start(format!("127.0.0.1:{}", reg.port).parse().unwrap()).await;
    let storage = FaultFront::start(format!("127.0.0.1:{}", store.port).parse().unwrap()).await;
    let mut cfg = RegistryConfig::new(front.url(), REPO);
    cfg.credentials = Credentials::basic("alice", "s3cret");
    let src = source(cfg);
    // Learn the scheme first (401 then basic), then redirect the next blob GET.
    assert_eq!(src.read_range(&id, 0, 10).await.unwrap(), &data[..10]);
    front.push(Fault::Redirect(format!("http://localhost:{}", storage.addr.port())));
    assert_eq!(src.read_range(&id, 500, 5000).await.unwrap(), &data[500..5500]);
    assert_eq!(storage.count(), 1);
    assert_eq!(storage.auth_seen.lock().unwrap()[0], None, "Authorization must not leave the registry's host");
    assert!(front.auth_seen.lock().unwrap().last().unwrap().as_deref().is_some_and(|a| a.starts_with("Basic ")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_pushed_by_skopeo_oci_and_docker_v2s2() {
    let test = "manifests_pushed_by_skopeo_oci_and_docker_v2s2";
    if !require_registry(test) || !common::env::require_tools(test, &["umoci", "skopeo"]) {
        return;
    }
    let reg = Registry::start("", None);
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(args[0]).args(&args[1..]).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let l = layout.to_str().unwrap();
    run(&["umoci", "init", "--layout", l]);
    run(&["umoci", "new", "--image", &format!("{l}:t")]);
    let src = source(RegistryConfig::new(&reg.url, REPO));
    for (tag, format, media) in [
        ("oci", "oci", "application/vnd.oci.image.manifest.v1+json"),
        ("v2s2", "v2s2", "application/vnd.docker.distribution.manifest.v2+json"),
    ] {
        run(&[
            "skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--format", format,
            &format!("oci:{l}:t"), &format!("docker://{}/{REPO}:{tag}", reg.host_port()),
        ]);
        let m = src.fetch_manifest(tag).await.unwrap();
        assert_eq!(m.media_type, media);
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).unwrap();
        let config = v["config"]["digest"].as_str().unwrap().strip_prefix("sha256:").unwrap().to_string();
        let dest = dir.path().join(format!("config-{tag}"));
        let n = src.download_blob(&config, None, &dest).await.unwrap();
        assert_eq!(n, v["config"]["size"].as_u64().unwrap());
        assert_eq!(hex::encode(Sha256::digest(std::fs::read(&dest).unwrap())), config);
        assert_eq!(src.fetch_manifest(&m.digest).await.unwrap().bytes, m.bytes);
    }
    // A digest that does not exist: a final NotFound, and no file is left behind.
    let dest = dir.path().join("missing");
    assert_eq!(src.download_blob(&"1".repeat(64), None, &dest).await.unwrap_err().kind(), io::ErrorKind::NotFound);
    assert!(!dest.exists());
}
