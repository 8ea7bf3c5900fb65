//! erofsd invoked as `nydusd fuse`, driven the way nydus-snapshotter drives it with its default
//! `fs_driver = "fusedev"`: a dedicated daemon (`--bootstrap`) and a shared one
//! (`POST /api/v1/mount?mountpoint=/<id>`). The mount is kernel EROFS through the fanotify
//! front-end, never FUSE; reads are byte-exact against the nydus fixtures' source tree; a
//! SIGKILLed worker, at seeded random moments during cold reads, is invisible to readers and to
//! the snapshotter's liveness watch. With real containerd, nydus-snapshotter and runc:
//! tests/containers.rs. Needs root and a 6.14+ kernel; skips loudly otherwise (fails under CI).

mod common;
mod fanotify_harness;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::data::Rng;
use common::http::{call, json, nydusd_link};
use fanotify_harness::{children_of, drop_caches, open_without_readahead, pid_alive, require_fanotify, wait_gone};
use sha2::{Digest, Sha256};

/// A nydusd (erofsd) the test started: the supervisor the snapshotter would see.
struct Nydusd {
    child: Child,
    sock: PathBuf,
    log: PathBuf,
}

impl Drop for Nydusd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nydusd {
    /// `nydusd fuse --mountpoint M --apisock S --log-file L` + `extra`, then waits for RUNNING.
    fn start(dir: &Path, mountpoint: &Path, extra: &[&str]) -> Nydusd {
        let nydusd = dir.join("nydusd");
        if !nydusd.exists() {
            nydusd_link(dir);
        }
        let sock = short_socket_dir().join("api.sock");
        let log = dir.join("nydusd.log");
        let child = Command::new(&nydusd)
            .arg("fuse")
            .arg("--mountpoint")
            .arg(mountpoint)
            .args(extra)
            .arg("--apisock")
            .arg(&sock)
            .args(["--log-level", "info", "--log-file"])
            .arg(&log)
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let d = Nydusd { child, sock, log };
        d.wait_running();
        d
    }

    fn wait_running(&self) {
        let t = Instant::now();
        loop {
            if UnixStream::connect(&self.sock).is_ok() {
                let (code, body) = call(&self.sock, "GET", "/api/v1/daemon", None);
                if code == 200 && json(&body)["state"] == "RUNNING" {
                    return;
                }
            }
            assert!(t.elapsed() < Duration::from_secs(20), "nydusd did not reach RUNNING; log:\n{}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The worker serving now (the supervisor's one child).
    fn worker(&self) -> i32 {
        let t = Instant::now();
        loop {
            let kids = children_of(self.child.id() as i32);
            if kids.len() == 1 {
                return kids[0];
            }
            assert!(t.elapsed() < Duration::from_secs(10), "supervisor has children {kids:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn fetched(&self) -> u64 {
        let (code, body) = call(&self.sock, "GET", "/api/v1/metrics", None);
        assert_eq!(code, 200, "{body}");
        json(&body)["erofsd_fetched_bytes"].as_u64().expect("erofsd_fetched_bytes")
    }
}

/// A directory for an API socket whose path fits a unix socket address (scratch paths do not).
fn short_socket_dir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = PathBuf::from(format!("/run/erofsd-nydusd-test/{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A snapshot the way the snapshotter lays it out: `<dir>/snapshots/<n>/fs/image/image.boot`
/// with no `blobs/` beside it, so the blobs come from the config's backend.
fn snapshot_bootstrap(dir: &Path, n: u32, fixture: &str) -> PathBuf {
    let boot = dir.join(format!("snapshots/{n}/fs/image/image.boot"));
    std::fs::create_dir_all(boot.parent().unwrap()).unwrap();
    std::fs::copy(common::fixtures::nydus().join(fixture).join("image.boot"), &boot).unwrap();
    boot
}

/// The snapshotter's fusedev config (misc/snapshotter/nydusd-config.fusedev.json) filled the
/// way it fills it, with a localfs backend on the fixture's blobs and prefetch off (so that the
/// bytes fetched are what readers asked for).
fn config_json(dir: &Path, fixture: &str) -> String {
    serde_json::json!({
        "device": {
            "backend": {"type": "localfs", "config": {"dir": common::fixtures::nydus().join(fixture).join("blobs")}},
            "cache": {"type": "blobcache", "config": {"work_dir": dir.join("cache")}}
        },
        "mode": "direct",
        "digest_validate": false,
        "iostats_files": false,
        "enable_xattr": true,
        "amplify_io": 1048576,
        "fs_prefetch": {"enable": false, "threads_count": 8, "merging_size": 1048576, "prefetch_all": true}
    })
    .to_string()
}

fn write_config(dir: &Path, fixture: &str) -> PathBuf {
    let p = dir.join(format!("config-{fixture}.json"));
    std::fs::write(&p, config_json(dir, fixture)).unwrap();
    p
}

/// The filesystem type of the mount at `mp`, from /proc/self/mountinfo.
fn fstype(mp: &Path) -> Option<String> {
    erofsd::frontend::fanotify::sysmount::mount_type(mp)
}

/// Every file of the fixtures' tree.sha256, read under `root` and hashed: the mismatches.
fn check_tree(root: &Path) -> Vec<String> {
    let list = std::fs::read_to_string(common::fixtures::nydus().join("tree.sha256")).unwrap();
    let mut bad = Vec::new();
    for line in list.lines() {
        let (sum, rel) = line.split_once("  ").unwrap();
        let p = root.join(rel.trim_start_matches("./"));
        match std::fs::read(&p) {
            Ok(b) if hex::encode(Sha256::digest(&b)) == sum => {}
            Ok(_) => bad.push(format!("{rel}: wrong bytes")),
            Err(e) => bad.push(format!("{rel}: {e}")),
        }
    }
    assert!(list.lines().count() > 20, "tree.sha256 lists too few files");
    bad
}

/// The fixture's data blob: the largest file in its `blobs/`.
fn blob_id(fixture: &str) -> String {
    let mut blobs: Vec<(u64, String)> = std::fs::read_dir(common::fixtures::nydus().join(fixture).join("blobs"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.metadata().unwrap().len(), e.file_name().into_string().unwrap()))
        .collect();
    blobs.sort();
    blobs.pop().unwrap().1
}

fn stored_size(fixture: &str) -> u64 {
    std::fs::read_dir(common::fixtures::nydus().join(fixture).join("blobs")).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

#[test]
fn dedicated_daemon_mounts_kernel_erofs_and_reads_exact() {
    for fixture in ["dir-zstd", "targz-ref"] {
        let test = &format!("dedicated_daemon_mounts_kernel_erofs_and_reads_exact[{fixture}]");
        let s = common::fixtures::scratch(test);
        if !require_fanotify(test, s.path()) {
            return;
        }
        let boot = snapshot_bootstrap(s.path(), 1, fixture);
        let cfg = write_config(s.path(), fixture);
        let mp = s.path().join("mnt/d1");
        let d = Nydusd::start(
            s.path(),
            &mp,
            &["--config", cfg.to_str().unwrap(), "--bootstrap", boot.to_str().unwrap(), "--thread-num", "4", "--failover-policy", "resend"],
        );
        assert_eq!(fstype(&mp).as_deref(), Some("erofs"), "{fixture}: the mount at {} is not kernel EROFS", mp.display());
        assert!(!std::fs::read_to_string("/proc/self/mountinfo").unwrap().contains("fuse.nydus"), "a FUSE mount appeared");
        // A small read fetches a fraction of the image: one chunk (1 MiB in these images).
        drop_caches();
        let f = open_without_readahead(&mp.join("data/random_2_5m"));
        let mut page = [0u8; 4096];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut page, 1 << 20).unwrap();
        let (fetched, total) = (d.fetched(), stored_size(fixture));
        assert!(fetched > 0 && fetched <= (3 << 20) / 2 && fetched * 2 < total, "{fixture}: a 4 KiB read fetched {fetched} of {total} stored bytes");
        let bad = check_tree(&mp);
        assert!(bad.is_empty(), "{fixture}: {bad:?}");
        // The endpoints the snapshotter polls in this mode.
        let (code, _) = call(&d.sock, "GET", "/api/v1/metrics/inflight", None);
        assert_eq!(code, 204);
        let (code, body) = call(&d.sock, "GET", "/api/v1/daemon", None);
        assert_eq!(code, 200);
        assert_eq!(json(&body)["erofsd_mode"], "fanotify");
        // SIGTERM (how the snapshotter stops a daemon whose image goes): unmounted, socket gone.
        let sock = d.sock.clone();
        let cache = json(&call(&d.sock, "GET", "/api/v1/daemon", None).1)["erofsd_cache_dir"].as_str().unwrap().to_string();
        assert!(Path::new(&cache).starts_with(s.path().join("cache")), "{cache} is not under the config's work_dir");
        drop(d);
        assert_eq!(fstype(&mp), None, "{fixture}: still mounted after SIGTERM");
        assert!(!sock.exists(), "api socket left behind");
        assert!(!Path::new(&cache).exists(), "a dedicated daemon's cache {cache} outlived it");
    }
}

#[test]
fn shared_daemon_mounts_and_unmounts_per_snapshot() {
    let test = "shared_daemon_mounts_and_unmounts_per_snapshot";
    let s = common::fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let root = s.path().join("mnt");
    let d = Nydusd::start(s.path(), &root, &[]);
    let mount_body = |boot: &Path, fixture: &str| {
        serde_json::json!({"fs_type": "rafs", "source": boot, "config": config_json(s.path(), fixture)}).to_string()
    };
    let (a, b) = (snapshot_bootstrap(s.path(), 10, "dir-zstd"), snapshot_bootstrap(s.path(), 11, "targz-ref"));
    let empty = s.path().join("empty-backend");
    std::fs::create_dir_all(&empty).unwrap();
    let missing_blobs = |boot: &Path| {
        let mut c: serde_json::Value = serde_json::from_str(&config_json(s.path(), "dir-zstd")).unwrap();
        c["device"]["backend"]["config"]["dir"] = empty.to_str().unwrap().into();
        serde_json::json!({"fs_type": "rafs", "source": boot, "config": c.to_string()}).to_string()
    };
    for (id, boot, fixture) in [("10", &a, "dir-zstd"), ("11", &b, "targz-ref")] {
        let (code, body) = call(&d.sock, "POST", &format!("/api/v1/mount?mountpoint=%2F{id}"), Some(&mount_body(boot, fixture)));
        assert_eq!(code, 204, "{body}");
        assert_eq!(fstype(&root.join(id)).as_deref(), Some("erofs"));
    }
    for id in ["10", "11"] {
        let bad = check_tree(&root.join(id));
        assert!(bad.is_empty(), "/{id}: {bad:?}");
    }
    // What must be refused, with the reason.
    for (q, body, want) in [
        ("%2F..%2Fx", mount_body(&a, "dir-zstd"), "not /<id>"),
        ("%2Fa%2Fb", mount_body(&a, "dir-zstd"), "not /<id>"),
        ("%2F12", serde_json::json!({"fs_type": "blob", "source": a, "config": ""}).to_string(), "fs_type"),
        ("%2F10", mount_body(&a, "dir-zstd"), "already served"),
        ("%2F13", mount_body(&s.path().join("nonexistent.boot"), "dir-zstd"), "nonexistent.boot"),
        // Blobs missing from the backend: refused at mount, naming the blob. (Images whose blobs
        // this daemon has not loaded yet: a blob already loaded is reused whatever the backend.)
        ("%2F14", missing_blobs(&snapshot_bootstrap(s.path(), 14, "dir-lz4_block")), &blob_id("dir-lz4_block")),
        ("%2F15", missing_blobs(&snapshot_bootstrap(s.path(), 15, "targz-rafs")), &blob_id("targz-rafs")),
    ] {
        let (code, resp) = call(&d.sock, "POST", &format!("/api/v1/mount?mountpoint={q}"), Some(&body));
        assert!(code >= 400 && resp.contains(want), "{q}: {code} {resp}");
    }
    for id in ["12", "13", "14", "15"] {
        assert!(!root.join(id).exists(), "/{id} was left behind by a refused mount");
    }
    let (code, resp) = call(&d.sock, "POST", "/api/v1/mount", Some(&mount_body(&a, "dir-zstd")));
    assert_eq!(code, 400, "{resp}");
    // Unmount one; the other stays.
    let (code, body) = call(&d.sock, "DELETE", "/api/v1/mount?mountpoint=%2F10", None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(fstype(&root.join("10")), None);
    assert!(!root.join("10").exists(), "the snapshot's mountpoint directory was left behind");
    let (code, body) = call(&d.sock, "DELETE", "/api/v1/mount?mountpoint=%2F10", None);
    assert!(code >= 400 && body.contains("not mounted"), "{code} {body}");
    assert_eq!(fstype(&root.join("11")).as_deref(), Some("erofs"));
    drop(d);
    assert_eq!(fstype(&root.join("11")), None, "SIGTERM left /11 mounted");
}

/// The snapshotter's liveness watch: an idle connection to the API socket; a hang-up or an
/// error on it reads as "the daemon died". True while it stays quiet and open.
fn watch_is_quiet(watch: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut p = libc::pollfd { fd: watch.as_raw_fd(), events: libc::POLLIN | libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, no timeout.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
    n == 0
}

#[test]
fn killed_worker_is_invisible_to_readers_and_the_snapshotter() {
    let test = "killed_worker_is_invisible_to_readers_and_the_snapshotter";
    let s = common::fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let seed = common::shapes::seed_from_env();
    let mut rng = Rng::new(seed);
    let root = s.path().join("mnt");
    let d = Nydusd::start(s.path(), &root, &[]);
    let watch = UnixStream::connect(&d.sock).unwrap();
    let boot = snapshot_bootstrap(s.path(), 20, "dir-zstd");
    let body = serde_json::json!({"fs_type": "rafs", "source": boot, "config": config_json(s.path(), "dir-zstd")}).to_string();
    let (code, resp) = call(&d.sock, "POST", "/api/v1/mount?mountpoint=%2F20", Some(&body));
    assert_eq!(code, 204, "{resp}");
    let mp = root.join("20");
    let cache = json(&call(&d.sock, "GET", "/api/v1/daemon", None).1)["erofsd_cache_dir"].as_str().unwrap().to_string();
    // Remount with empty cache files, so that every read goes to the daemon.
    let cold = |d: &Nydusd| {
        let (code, resp) = call(&d.sock, "DELETE", "/api/v1/mount?mountpoint=%2F20", None);
        assert_eq!(code, 204, "{resp}");
        for e in std::fs::read_dir(Path::new(&cache).join("blobs")).into_iter().flatten().flatten() {
            let _ = std::fs::remove_file(e.path());
        }
        let (code, resp) = call(&d.sock, "POST", "/api/v1/mount?mountpoint=%2F20", Some(&body));
        assert_eq!(code, 204, "{resp}");
        drop_caches();
    };
    // One cold pass without a kill: how long the kills have to land in.
    drop_caches();
    let t = Instant::now();
    assert!(check_tree(&mp).is_empty());
    let pass = t.elapsed();
    let mut during = 0;
    for round in 0..4 {
        cold(&d);
        let worker = d.worker();
        let delay = Duration::from_micros(rng.below((pass.as_micros() as u64 * 4 / 5).max(1)));
        let reader = {
            let mp = mp.clone();
            std::thread::spawn(move || check_tree(&mp))
        };
        std::thread::sleep(delay);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), nix::sys::signal::SIGKILL).unwrap();
        during += usize::from(!reader.is_finished());
        assert!(wait_gone(worker, Duration::from_secs(5)), "worker {worker} survived SIGKILL");
        let bad = reader.join().unwrap();
        assert!(bad.is_empty(), "round {round} (seed {seed}, kill after {delay:?}): {bad:?}");
        d.wait_running();
        let next = d.worker();
        assert!(next != worker && pid_alive(next), "no new worker");
        assert!(watch_is_quiet(&watch), "round {round}: the liveness watch saw the worker die");
        assert_eq!(fstype(&mp).as_deref(), Some("erofs"), "round {round}: the mount was lost");
        assert!(d.log_text().contains("re-adopted"), "the successor did not say it re-adopted the mount");
    }
    eprintln!("{during} of 4 kills landed while the reader was reading (cold pass {pass:?})");
    assert!(during > 0, "no kill landed during the reads (cold pass {pass:?}, seed {seed})");
    // The successor knows the mount and its backend: it unmounts it and mounts it again.
    let (code, resp) = call(&d.sock, "DELETE", "/api/v1/mount?mountpoint=%2F20", None);
    assert_eq!(code, 204, "{resp}");
    let (code, resp) = call(&d.sock, "POST", "/api/v1/mount?mountpoint=%2F20", Some(&body));
    assert_eq!(code, 204, "{resp}");
    drop_caches();
    assert!(check_tree(&mp).is_empty());
    drop(d);
    // A clean stop is a hang-up, as it should be.
    let t = Instant::now();
    while watch_is_quiet(&watch) {
        assert!(t.elapsed() < Duration::from_secs(5), "the liveness watch stayed open after the daemon stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn command_line_and_config_errors_are_clear() {
    let s = tempfile::tempdir().unwrap();
    let nydusd = nydusd_link(s.path());
    let run = |args: &[&str]| {
        let o = Command::new(&nydusd).args(args).output().unwrap();
        (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (ok, err) = run(&["fuse", "--apisock", "/x/api.sock"]);
    assert!(!ok && err.contains("--mountpoint"), "{err}");
    let (ok, err) = run(&["fuse", "--mountpoint", "/x", "--apisock", "/x/a.sock", "--bootstrap", "/b"]);
    assert!(!ok && err.contains("--config"), "{err}");
    std::fs::write(s.path().join("bad.json"), "{not json").unwrap();
    let cfg = s.path().join("bad.json");
    let sock = s.path().join("a.sock");
    let (ok, err) = run(&["fuse", "--mountpoint", s.path().join("m").to_str().unwrap(), "--apisock", sock.to_str().unwrap(), "--config", cfg.to_str().unwrap(), "--bootstrap", "/b"]);
    assert!(!ok && err.contains("bad.json"), "{err}");
    let (ok, err) = run(&["blockdev", "--apisock", "/x"]);
    assert!(!ok && err.contains("fusedev"), "{err}");
}

/// How many mounts are stacked at `mp`.
fn mounts_at(mp: &Path) -> usize {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines().filter_map(erofsd::frontend::fanotify::sysmount::mountinfo_line).filter(|(p, _)| p == mp).count()
}

#[test]
fn a_successor_replaces_what_a_dead_process_tree_left_mounted() {
    let test = "a_successor_replaces_what_a_dead_process_tree_left_mounted";
    let s = common::fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let root = s.path().join("mnt");
    let boot = snapshot_bootstrap(s.path(), 30, "dir-zstd");
    let body = serde_json::json!({"fs_type": "rafs", "source": boot, "config": config_json(s.path(), "dir-zstd")}).to_string();
    let mut d = Nydusd::start(s.path(), &root, &[]);
    let (code, resp) = call(&d.sock, "POST", "/api/v1/mount?mountpoint=%2F30", Some(&body));
    assert_eq!(code, 204, "{resp}");
    // Both processes killed, the supervisor first (what `killall -9 nydusd` does): the worker
    // may start a new supervisor before its own SIGKILL lands; that one must not start a
    // daemon of its own (it would compete with the one the snapshotter starts next).
    let (sup, worker) = (d.child.id() as i32, d.worker());
    for pid in [sup, worker] {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL).unwrap();
    }
    let _ = d.child.wait();
    assert!(wait_gone(worker, Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(500));
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(d.sock.to_str().unwrap()))
        .collect();
    assert!(left.is_empty(), "processes of the killed daemon still run: {left:?}");
    assert_eq!(mounts_at(&root.join("30")), 1, "the dead daemon's mount");
    // The successor, as the snapshotter starts it; the same mount request again.
    drop(d);
    let d = Nydusd::start(s.path(), &root, &[]);
    let (code, resp) = call(&d.sock, "POST", "/api/v1/mount?mountpoint=%2F30", Some(&body));
    assert_eq!(code, 204, "{resp}");
    assert_eq!(mounts_at(&root.join("30")), 1, "a mount stacked on the dead daemon's");
    assert!(d.log_text().contains("stale erofs mount"), "the detach was not logged");
    drop_caches();
    assert!(check_tree(&root.join("30")).is_empty());
    drop(d);
    assert_eq!(mounts_at(&root.join("30")), 0);
}
