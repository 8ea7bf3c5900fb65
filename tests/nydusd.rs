//! erofsd invoked as `nydusd` (a symlink), driven the way nydus-snapshotter drives it.
//!
//! The host has no cachefiles on-demand, so these tests run the daemon in its labelled
//! API-ONLY mode (`EROFSD_NYDUSD_API_ONLY=1`: images are loaded and checked, nothing is bound
//! to /dev/cachefiles). The same sequence with the kernel, mount and byte-exact reads is the
//! guest test kernel-tests/guest/tests/erofsd-nydusd-snapshotter.sh.

mod common;

use std::io::Read;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{call, connect, exchange, json, nydusd_link};
use sha2::{Digest, Sha256};

struct Daemon {
    child: Child,
    sock: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(nydusd: &Path, root: &Path, sock: &Path, extra: &[&str]) -> Daemon {
    let mut cmd = Command::new(nydusd);
    cmd.env("EROFSD_NYDUSD_API_ONLY", "1")
        .arg("singleton")
        .arg("--fscache")
        .arg(root.join("cache"))
        .args(extra)
        .arg("--apisock")
        .arg(sock)
        .args(["--log-level", "info"])
        .stderr(Stdio::inherit());
    let child = cmd.spawn().unwrap();
    // The snapshotter's readiness: the socket answers within 10 s (after a crash the stale
    // socket file is still there until the successor replaces it).
    let t = Instant::now();
    while UnixStream::connect(sock).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "api socket {} did not appear", sock.display());
        std::thread::sleep(Duration::from_millis(50));
    }
    Daemon { child, sock: sock.to_path_buf() }
}

/// An image made by `erofsd build` from a small tree: (image dir, blob ids).
fn build_image(dir: &Path) -> (PathBuf, Vec<String>) {
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("hello.txt"), b"hello from nydusd\n").unwrap();
    std::fs::write(src.join("sub/big.bin"), (0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
    let out = dir.join("image");
    let o = Command::new(env!("CARGO_BIN_EXE_erofsd")).arg("build").arg(&src).arg("-o").arg(&out).output().unwrap();
    assert!(o.status.success(), "build: {}", String::from_utf8_lossy(&o.stderr));
    let blobs: Vec<String> = std::fs::read_dir(out.join("blobs")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert!(!blobs.is_empty());
    (out, blobs)
}

fn fscache_id(snapshot_id: &str) -> String {
    hex::encode(Sha256::digest(format!("nydus-snapshot-{snapshot_id}")))
}

/// The body the snapshotter sends (config/daemonconfig/fscache.go), registry backend and all.
fn bind_body(fsid: &str, domain: &str, work_dir: &Path, boot: &Path) -> String {
    let backend = serde_json::json!({"host": "registry.example", "repo": "library/app", "scheme": "https", "skip_verify": false,
                                     "timeout": 5, "connect_timeout": 5, "retry_limit": 2, "proxy": {"fallback": false}});
    bind_body_with(fsid, domain, work_dir, boot, backend)
}

fn bind_body_with(fsid: &str, domain: &str, work_dir: &Path, boot: &Path, backend_config: serde_json::Value) -> String {
    serde_json::json!({
        "type": "bootstrap",
        "id": fsid,
        "domain_id": domain,
        "config": {
            "id": fsid,
            "backend_type": "registry",
            "backend_config": backend_config,
            "cache_type": "fscache",
            "cache_config": {"work_dir": work_dir},
            "prefetch_config": {"enable": false, "threads_count": 4, "merging_size": 0, "bandwidth_rate": 0, "prefetch_all": false},
            "metadata_path": boot,
        }
    })
    .to_string()
}

fn git_commit_line(nydusd: &Path) -> String {
    let o = Command::new(nydusd).arg("--version").output().unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    for key in ["Version:", "Git Commit:", "Build Time:", "Profile:", "Rustc:"] {
        assert!(out.lines().any(|l| l.starts_with(key)), "--version lacks {key}: {out}");
    }
    // The snapshotter's regexp: `Git Commit:\s*(.+)`.
    let line = out.lines().find(|l| l.starts_with("Git Commit:")).unwrap();
    let v = line["Git Commit:".len()..].trim().to_string();
    assert!(!v.is_empty());
    v
}

#[test]
fn version_matches_the_api_and_state_is_running() {
    let t = tempfile::tempdir().unwrap();
    let nydusd = nydusd_link(t.path());
    let commit = git_commit_line(&nydusd);
    let d = start(&nydusd, t.path(), &t.path().join("socket/d1/api.sock"), &["--id", "d35vajrt64uh53eit6q0"]);
    let (code, body) = call(&d.sock, "GET", "/api/v1/daemon", None);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["state"], "RUNNING");
    assert_eq!(v["id"], "d35vajrt64uh53eit6q0");
    assert_eq!(v["version"]["git_commit"], commit.as_str());
    assert_eq!(v["erofsd_mode"], "api-only");
    for k in ["package_ver", "build_time", "profile", "rustc"] {
        assert!(v["version"][k].is_string(), "version.{k} missing: {body}");
    }
}

#[test]
fn snapshotter_call_sequence_api_only() {
    let t = tempfile::tempdir().unwrap();
    let nydusd = nydusd_link(t.path());
    let (image, blobs) = build_image(t.path());
    let d = start(&nydusd, t.path(), &t.path().join("api.sock"), &[]);
    // The liveness connection: opened, never written to, held throughout.
    let watch = UnixStream::connect(&d.sock).unwrap();

    let snap = "42";
    let fsid = fscache_id(snap);
    let work = t.path().join(format!("snapshots/{snap}/fs"));
    std::fs::create_dir_all(&work).unwrap();
    let mut c = connect(&d.sock);
    let (code, body) = exchange(&mut c, "GET", "/api/v1/daemon", None);
    assert_eq!((code, json(&body)["state"].as_str()), (200, Some("RUNNING")));
    // bind: bootstrap in its own domain (the snapshotter's default: domain = fscacheID).
    let (code, body) = exchange(&mut c, "PUT", "/api/v2/blobs", Some(&bind_body(&fsid, &fsid, &work, &image.join("image.boot"))));
    assert_eq!(code, 204, "{body}");
    assert!(body.is_empty());
    // The same bind again (a retry) is harmless.
    let (code, body) = exchange(&mut c, "PUT", "/api/v2/blobs", Some(&bind_body(&fsid, &fsid, &work, &image.join("image.boot"))));
    assert_eq!(code, 204, "{body}");
    // metrics after mount: percent-encoded id, non-empty underlying_files named by blob id.
    let (code, body) = exchange(&mut c, "GET", &format!("/api/v1/metrics/blobcache?id=%2F{fsid}"), None);
    assert_eq!(code, 200, "{body}");
    let m = json(&body);
    assert_eq!(m["id"], fsid.as_str());
    let files: Vec<String> = m["underlying_files"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    assert!(!files.is_empty(), "{body}");
    for b in &blobs {
        assert!(files.iter().any(|f| Path::new(f).file_name().unwrap().to_str().unwrap().starts_with(b.as_str())), "{b} not in {files:?}");
    }
    for k in ["store_path", "partial_hits", "whole_hits", "total", "entries_count", "prefetch_data_amount", "data_all_ready"] {
        assert!(!m[k].is_null(), "CacheMetrics.{k} missing: {body}");
    }
    // credential renewal
    let (code, body) = exchange(&mut c, "PUT", &format!("/api/v1/config?id=%2F{snap}"), Some(r#"{"registry_auth":"dXNlcjpwYXNz"}"#));
    assert_eq!(code, 204, "{body}");
    let (code, body) = exchange(&mut c, "PUT", "/api/v1/config?id=%2Fx", Some("[not json"));
    assert_eq!(code, 400, "{body}");
    assert_eq!(json(&body)["code"], "UNDEFINED");
    // unmount step 1 (domain == fscacheID: domain only), step 3 (cull the bootstrap object).
    let (code, body) = exchange(&mut c, "DELETE", &format!("/api/v2/blobs?domain_id={fsid}"), None);
    assert_eq!(code, 204, "{body}");
    let (code, body) = exchange(&mut c, "DELETE", &format!("/api/v2/blobs?blob_id={fsid}"), None);
    assert_eq!(code, 204, "{body}");
    // A second unbind: not 2xx, and the text the snapshotter tolerates.
    let (code, body) = exchange(&mut c, "DELETE", &format!("/api/v2/blobs?domain_id={fsid}"), None);
    assert!(!(200..300).contains(&code), "{code} {body}");
    let e = json(&body);
    assert_eq!(e["code"], "UNDEFINED");
    assert!(e["message"].as_str().unwrap().contains("blob_cache: cache entry not found"), "{body}");
    // Shared domain: two snapshots in domain "shared", percent-encoded values, unbound one by one.
    let (f1, f2) = (fscache_id("1"), fscache_id("2"));
    for f in [&f1, &f2] {
        let (code, body) = exchange(&mut c, "PUT", "/api/v2/blobs", Some(&bind_body(f, "shared", &work, &image.join("image.boot"))));
        assert_eq!(code, 204, "{body}");
    }
    let (code, body) = exchange(&mut c, "DELETE", &format!("/api/v2/blobs?domain_id=%73hared&blob_id={f1}"), None);
    assert_eq!(code, 204, "{body}");
    let (code, body) = exchange(&mut c, "DELETE", &format!("/api/v2/blobs?domain_id=shared&blob_id={f1}"), None);
    assert!(json(&body)["message"].as_str().unwrap().contains("blob_cache: cache entry not found"), "{code} {body}");
    let (code, body) = exchange(&mut c, "GET", &format!("/api/v1/metrics/blobcache?id=%2F{f2}"), None);
    assert_eq!((code, json(&body)["id"].as_str()), (200, Some(f2.as_str())), "{body}");
    // cache GC of a layer blob
    let (code, body) = exchange(&mut c, "DELETE", &format!("/api/v2/blobs?blob_id={}", blobs[0]), None);
    assert_eq!(code, 204, "{body}");
    // Bad requests: clear errors in nydusd's shape.
    let (code, body) = exchange(&mut c, "PUT", "/api/v2/blobs", Some(r#"{"type":"datablob","id":"x","config":{}}"#));
    assert_eq!(code, 400, "{body}");
    let (code, body) = exchange(&mut c, "PUT", "/api/v2/blobs", Some(&bind_body("bad,id", "d", &work, &image.join("image.boot"))));
    assert!(code >= 400, "{body}");
    let (code, body) =
        exchange(&mut c, "PUT", "/api/v2/blobs", Some(&bind_body("nob", "d", &work, &t.path().join("missing/image.boot"))));
    assert!(code >= 400 && json(&body)["message"].as_str().unwrap().contains("missing"), "{body}");
    let (code, body) = exchange(&mut c, "DELETE", "/api/v2/blobs", None);
    assert_eq!(code, 400, "{body}");
    // Unknown routes: 404 with a JSON error body.
    for (m, p) in [("GET", "/api/v1/nope"), ("POST", "/api/v1/daemon"), ("GET", "/")] {
        let (code, body) = exchange(&mut c, m, p, None);
        assert_eq!(code, 404, "{m} {p}: {body}");
        assert_eq!(json(&body)["code"], "UNDEFINED");
    }
    // The liveness connection is still open: no hang-up to read.
    watch.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    match (&watch).read(&mut b) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("liveness connection closed or written to: {other:?}"),
    }
    // SIGTERM: the daemon exits and the hang-up is visible on the held connection.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    watch.set_nonblocking(false).unwrap();
    watch.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!((&watch).read(&mut b).unwrap(), 0, "hang-up expected after the daemon exits");
}

/// hyper's default header-read timeout is 30 s; the snapshotter's idle watch connection must
/// outlive it, and a kept-alive connection must still answer after idling as long.
#[test]
fn idle_connections_stay_open_past_30s() {
    let t = tempfile::tempdir().unwrap();
    let nydusd = nydusd_link(t.path());
    let d = start(&nydusd, t.path(), &t.path().join("api.sock"), &[]);
    let watch = UnixStream::connect(&d.sock).unwrap();
    let mut kept = connect(&d.sock);
    assert_eq!(exchange(&mut kept, "GET", "/api/v1/daemon", None).0, 200);
    std::thread::sleep(Duration::from_secs(35));
    watch.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    match (&watch).read(&mut b) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("idle connection was closed: {other:?}"),
    }
    assert_eq!(exchange(&mut kept, "GET", "/api/v1/daemon", None).0, 200);
}

/// A stand-in for the snapshotter's supervisor socket: keeps what `sendfd` sends and hands it
/// to whoever connects next (`takeover`).
fn supervisor_once(sock: &Path) -> std::thread::JoinHandle<(Vec<u8>, bool)> {
    let listener = UnixListener::bind(sock).unwrap();
    std::thread::spawn(move || {
        use std::io::{IoSlice, IoSliceMut};
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
        let (conn, _) = listener.accept().unwrap();
        let mut data = Vec::new();
        let mut fd: Option<OwnedFd> = None;
        loop {
            let mut buf = vec![0u8; 65536];
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 64]);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
            for c in msg.cmsgs().unwrap() {
                if let ControlMessageOwned::ScmRights(f) = c {
                    fd = fd.or(Some(unsafe { OwnedFd::from_raw_fd(f[0]) }));
                }
            }
            let n = msg.bytes;
            if n == 0 {
                break;
            }
            data.extend_from_slice(&buf[..n]);
        }
        let got_fd = fd.is_some();
        let fd = fd.expect("sendfd attached no fd");
        let (conn2, _) = listener.accept().unwrap();
        let fds = [fd.as_raw_fd()];
        sendmsg::<()>(conn2.as_raw_fd(), &[IoSlice::new(&data)], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None).unwrap();
        (data, got_fd)
    })
}

#[test]
fn failover_sequence_api_only() {
    let t = tempfile::tempdir().unwrap();
    let nydusd = nydusd_link(t.path());
    let (image, _) = build_image(t.path());
    let sup = t.path().join("supervisor/d1.sock");
    std::fs::create_dir_all(sup.parent().unwrap()).unwrap();
    let holder = supervisor_once(&sup);
    let sock = t.path().join("socket/d1/api.sock");
    let sup_s = sup.to_str().unwrap();
    let mut d = start(&nydusd, t.path(), &sock, &["--id", "d1", "--supervisor", sup_s]);
    let fsid = fscache_id("7");
    let (code, body) = call(&sock, "PUT", "/api/v2/blobs", Some(&bind_body(&fsid, &fsid, t.path(), &image.join("image.boot"))));
    assert_eq!(code, 204, "{body}");
    let (code, body) = call(&sock, "PUT", "/api/v1/daemon/fuse/sendfd", None);
    assert_eq!(code, 204, "{body}");
    // start/takeover are refused to a RUNNING daemon that has nothing to take over.
    let (code, body) = call(&sock, "PUT", "/api/v1/daemon/fuse/takeover", None);
    assert!(code >= 400 && body.contains("RUNNING"), "{code} {body}");
    // Crash.
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    // The successor (same argv + --upgrade here: api-only has no device to find busy).
    let d2 = start(&nydusd, t.path(), &sock, &["--id", "d1", "--supervisor", sup_s, "--upgrade"]);
    let (code, body) = call(&sock, "GET", "/api/v1/daemon", None);
    assert_eq!((code, json(&body)["state"].as_str()), (200, Some("INIT")), "{body}");
    let (code, body) = call(&sock, "PUT", "/api/v1/daemon/start", None);
    assert!(code >= 400, "start before takeover must fail: {body}");
    let (code, body) = call(&sock, "PUT", "/api/v1/daemon/fuse/takeover", None);
    assert_eq!(code, 204, "{body}");
    let (state, got_fd) = holder.join().unwrap();
    assert!(got_fd);
    assert!(String::from_utf8_lossy(&state).contains(&fsid));
    assert_eq!(json(&call(&sock, "GET", "/api/v1/daemon", None).1)["state"], "READY");
    let (code, body) = call(&sock, "PUT", "/api/v1/daemon/start", None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(json(&call(&sock, "GET", "/api/v1/daemon", None).1)["state"], "RUNNING");
    // The bind came through the takeover: unbinding it succeeds.
    let (code, body) = call(&sock, "DELETE", &format!("/api/v2/blobs?domain_id={fsid}"), None);
    assert_eq!(code, 204, "{body}");
    // exit (hot upgrade's old daemon): 204, then the process ends.
    let mut d2 = d2;
    let (code, _) = call(&sock, "PUT", "/api/v1/daemon/exit", None);
    assert_eq!(code, 204);
    let t0 = Instant::now();
    loop {
        if let Some(st) = d2.child.try_wait().unwrap() {
            assert!(st.success());
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "daemon did not exit");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn command_line_errors_are_clear() {
    let t = tempfile::tempdir().unwrap();
    let nydusd = nydusd_link(t.path());
    let o = Command::new(&nydusd).args(["singleton", "--apisock", "/tmp/x.sock"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--fscache"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(&nydusd).args(["fuse", "--mountpoint", "/mnt"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--apisock"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = Command::new(&nydusd).args(["virtiofs", "--apisock", "/tmp/x.sock"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("singleton"), "{}", String::from_utf8_lossy(&o.stderr));
    // Without API-ONLY on a host lacking cachefiles on-demand: a clear failure, no socket.
    if !Path::new("/dev/cachefiles").exists() {
        let sock = t.path().join("api.sock");
        let o = Command::new(&nydusd)
            .env_remove("EROFSD_NYDUSD_API_ONLY")
            .args(["singleton", "--fscache"])
            .arg(t.path().join("cache"))
            .arg("--apisock")
            .arg(&sock)
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("/dev/cachefiles"), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(!sock.exists());
    }
}

/// The snapshotter's layout: the bootstrap alone in `<root>/snapshots/<id>/fs/image/`, blobs
/// behind the entry's registry backend (not contacted at bind: ranges are fetched on READ).
#[test]
fn bootstrap_without_local_blobs_binds_through_its_backend() {
    let t = tempfile::tempdir().unwrap();
    let nydusd = nydusd_link(t.path());
    let (image, blobs) = build_image(t.path());
    let fs = t.path().join("snapshots/9/fs/image");
    std::fs::create_dir_all(&fs).unwrap();
    std::fs::copy(image.join("image.boot"), fs.join("image.boot")).unwrap();
    let d = start(&nydusd, t.path(), &t.path().join("api.sock"), &[]);
    let f = fscache_id("9");
    let (code, body) = call(&d.sock, "PUT", "/api/v2/blobs", Some(&bind_body(&f, &f, &fs, &fs.join("image.boot"))));
    assert_eq!(code, 204, "{body}");
    let (_, body) = call(&d.sock, "GET", &format!("/api/v1/metrics/blobcache?id=%2F{f}"), None);
    for b in &blobs {
        assert!(body.contains(b.as_str()), "{b} not in {body}");
    }
    let mut no_host: serde_json::Value = json(&bind_body("other", "other", &fs, &fs.join("image.boot")));
    no_host["config"]["backend_config"].as_object_mut().unwrap().remove("host");
    let (code, body) = call(&d.sock, "PUT", "/api/v2/blobs", Some(&no_host.to_string()));
    assert_eq!(code, 500, "{body}");
    assert!(json(&body)["message"].as_str().unwrap().contains("backend_config.host"), "{body}");
}

/// A nydus RAFS v6 image (shared fixture `dir-zstd`, built by nydus-image) in the snapshotter's
/// layout: the bootstrap alone, its blob in a real registry behind htpasswd. The bind reads the
/// blob meta through the entry's registry backend (so the bind itself proves bytes arrive with
/// the entry's credentials); after a crash and takeover the successor re-adopts the bind through
/// the saved backend (a RAFS bootstrap cannot load without its blob meta), the saved list is
/// mode 0600 and the failover bytes carry no credentials. Without the saved list the bind is
/// not re-adopted: the control that shows the list is what carries the backend.
#[test]
fn registry_backed_rafs_bind_survives_takeover() {
    use base64::Engine;
    use common::registry as reg;
    use std::os::unix::fs::PermissionsExt;
    let test = "registry_backed_rafs_bind_survives_takeover";
    if !reg::require_registry(test) {
        return;
    }
    let fx = common::fixtures::nydus().join("dir-zstd");
    let t = tempfile::tempdir().unwrap();
    // Two users: the bind's credentials are renewed from alice's to bob's on the way.
    let htpasswd = t.path().join("htpasswd");
    reg::write_htpasswd(&t.path().join("alice"), "alice", "s3cret");
    reg::write_htpasswd(&t.path().join("bob"), "bob", "hunter2");
    let both = std::fs::read_to_string(t.path().join("alice")).unwrap() + &std::fs::read_to_string(t.path().join("bob")).unwrap();
    std::fs::write(&htpasswd, both).unwrap();
    let bob = base64::engine::general_purpose::STANDARD.encode("bob:hunter2");
    let registry = reg::Registry::start(&format!("auth:\n  htpasswd:\n    realm: erofsd-test\n    path: {}\n", htpasswd.display()), None);
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    let repo = "nydus/dir-zstd";
    let rt = tokio::runtime::Runtime::new().unwrap();
    for b in std::fs::read_dir(fx.join("blobs")).unwrap() {
        let b = b.unwrap();
        let data = std::fs::read(b.path()).unwrap();
        let id = rt.block_on(reg::push_blob(&reg::push_client(None), &registry.url, repo, &data, Some(&format!("Basic {auth}"))));
        assert_eq!(id, b.file_name().to_str().unwrap());
    }
    let image = t.path().join("snapshots/5/fs/image");
    std::fs::create_dir_all(&image).unwrap();
    std::fs::copy(fx.join("image.boot"), image.join("image.boot")).unwrap();
    let backend = serde_json::json!({"host": registry.host_port(), "repo": repo, "scheme": "http", "auth": auth,
                                     "timeout": 10, "connect_timeout": 5, "retry_limit": 1, "proxy": {"fallback": false}});

    let nydusd = nydusd_link(t.path());
    let sup = t.path().join("supervisor/d1.sock");
    std::fs::create_dir_all(sup.parent().unwrap()).unwrap();
    let sock = t.path().join("socket/d1/api.sock");
    let sup_s = sup.to_str().unwrap().to_string();
    let argv = ["--id", "d1", "--supervisor", sup_s.as_str()];
    let saved = t.path().join("cache/state/nydusd-binds.json");
    let fsid = fscache_id("5");
    let bind = bind_body_with(&fsid, &fsid, &image, &image.join("image.boot"), backend.clone());
    let source_of = |sock: &Path| -> Option<String> {
        let (code, body) = call(sock, "GET", "/api/v2/blobs", None);
        assert_eq!(code, 200, "{body}");
        json(&body)["blobs"].as_array().unwrap().iter().find(|b| b["id"] == fsid.as_str()).map(|b| b["erofsd_blob_source"].as_str().unwrap_or("").to_string())
    };

    // Wrong credentials: the bind fails (the blob meta cannot be read), naming the cause.
    let mut wrong = backend.clone();
    wrong["auth"] = base64::engine::general_purpose::STANDARD.encode("alice:nope").into();
    let mut holder = Some(supervisor_once(&sup));
    let mut d = start(&nydusd, t.path(), &sock, &argv);
    let (code, body) = call(&sock, "PUT", "/api/v2/blobs", Some(&bind_body_with(&fsid, &fsid, &image, &image.join("image.boot"), wrong)));
    assert!(code >= 400 && body.contains("rejected"), "{code} {body}");

    for round in ["with the saved list", "without it"] {
        if round == "with the saved list" {
            let (code, body) = call(&sock, "PUT", "/api/v2/blobs", Some(&bind));
            assert_eq!(code, 204, "{body}");
            assert!(std::fs::read_to_string(&saved).unwrap().contains(&auth));
            // Credential renewal (the snapshotter's `PUT /api/v1/config?id=/<snapshot id>`):
            // saved for the successor, which then re-adopts the bind with bob's credentials.
            let (code, body) = call(&sock, "PUT", "/api/v1/config?id=%2F5", Some(&format!(r#"{{"registry_auth":"{bob}"}}"#)));
            assert_eq!(code, 204, "{body}");
            let (code, body) = call(&sock, "PUT", "/api/v1/config?id=%2F5", Some(r#"{"registry_auth":"%%%"}"#));
            assert_eq!(code, 400, "{body}");
            assert!(body.contains("base64"), "{body}");
            let text = std::fs::read_to_string(&saved).unwrap();
            assert!(text.contains(&bob) && !text.contains(&auth), "renewed credentials not saved");
        }
        let src = source_of(&sock).expect("bound");
        assert!(src.contains(&format!("registry http://{}/{repo}", registry.host_port())), "{src}");
        let mode = std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} holds credentials", saved.display());
        let (code, body) = call(&sock, "PUT", "/api/v1/daemon/fuse/sendfd", None);
        assert_eq!(code, 204, "{body}");
        // Crash; the successor waits in INIT for takeover.
        d.child.kill().unwrap();
        d.child.wait().unwrap();
        if round == "without it" {
            std::fs::remove_file(&saved).unwrap();
        }
        let d2 = start(&nydusd, t.path(), &sock, &[&argv[..], &["--upgrade"]].concat());
        let (code, body) = call(&sock, "PUT", "/api/v1/daemon/fuse/takeover", None);
        assert_eq!(code, 204, "{body}");
        let (state, got_fd) = holder.take().unwrap().join().unwrap();
        assert!(got_fd);
        let state = String::from_utf8(state).unwrap();
        assert!(state.contains(&fsid) && !state.contains(&auth) && !state.contains(&bob), "failover bytes: {state}");
        let (code, body) = call(&sock, "PUT", "/api/v1/daemon/start", None);
        assert_eq!(code, 204, "{body}");
        d = d2;
        if round == "with the saved list" {
            // Re-adopted through the registry (with the saved credentials), and saved again.
            let src = source_of(&sock).expect("the bind was not re-adopted after takeover");
            assert!(src.contains(&format!("registry http://{}/{repo}", registry.host_port())), "{src}");
            assert!(std::fs::read_to_string(&saved).unwrap().contains(&fsid));
            std::fs::remove_file(&sup).unwrap();
            holder = Some(supervisor_once(&sup));
        } else {
            // No saved backend: the successor looks for blobs/ beside the bootstrap, which the
            // snapshotter's layout lacks, so the bind is not re-adopted.
            assert_eq!(source_of(&sock), None);
            assert!(!std::fs::read_to_string(&saved).unwrap().contains(&fsid));
        }
    }
    drop(d);
}
