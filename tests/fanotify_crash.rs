//! Crash safety of the fanotify front-end: `erofsd daemon --supervise` keeps the group fd and
//! the cache files' write fds while the worker is SIGKILLed in the middle of a cold read
//! storm. No reader may ever see zeros or wrong bytes; reads resume once the supervisor has
//! restarted the worker (which answers the journaled events of its predecessor).

mod common;
mod fanotify_harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::compare::{assert_trees_equal, Options};
use common::{cli, fixtures};
use fanotify_harness::{children_of, pid_alive, regular_files, require_fanotify, Daemon, MountDir};

/// Reads `path` fully; EIO (a denied event) is retried, anything else fails.
fn read_retrying(path: &std::path::Path, eio: &AtomicU64) -> Vec<u8> {
    let t0 = Instant::now();
    loop {
        match std::fs::read(path) {
            Ok(b) => return b,
            Err(e) if e.raw_os_error() == Some(libc::EIO) && t0.elapsed() < Duration::from_secs(60) => {
                eio.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("{}: {e}", path.display()),
        }
    }
}

/// Eight readers over the whole tree of `src` mounted at `mnt`, each comparing every byte with
/// the source (EIO is retried, zeros or wrong bytes fail). `crash` runs once the daemon has seen
/// 200 events, while the storm is cold; the storm must then complete.
fn cold_read_storm(d: &Daemon, src: &Path, mnt: &Path, crash: impl FnOnce()) {
    let files: Arc<Vec<PathBuf>> = Arc::new(regular_files(src));
    let src = Arc::new(src.to_path_buf());
    let root = Arc::new(mnt.to_path_buf());
    let eio = Arc::new(AtomicU64::new(0));
    let done_files = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for t in 0..8usize {
        let (files, src, root, eio, done_files) = (files.clone(), src.clone(), root.clone(), eio.clone(), done_files.clone());
        readers.push(std::thread::spawn(move || {
            let n = files.len();
            for i in 0..n {
                let f = &files[(i * 7 + t * n / 8) % n];
                let got = read_retrying(&root.join(f), &eio);
                let want = std::fs::read(src.join(f)).unwrap();
                if got != want {
                    let zeros = got.iter().zip(&want).filter(|(a, b)| **a == 0 && **b != 0).count();
                    panic!("reader {t}: {} differs from the source ({zeros} bytes read as zero)", f.display());
                }
                done_files.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let t0 = Instant::now();
    while d.frontend("events") < 200 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let in_flight = d.metrics()["frontend"]["journal_in_use"].clone();
    let read_at_crash = done_files.load(Ordering::Relaxed);
    crash();
    eprintln!("crash after {read_at_crash} files read, journal in use {in_flight}");
    let mut ok = true;
    for r in readers {
        ok &= r.join().is_ok();
    }
    assert!(ok, "a reader saw wrong bytes or failed; log:\n{}", d.log_text());
    eprintln!("readers retried {} EIO(s); metrics after the crash: {}", eio.load(Ordering::Relaxed), d.metrics());
    assert!(read_at_crash < 8 * files.len() as u64, "the crash landed after the storm");
    assert_eq!(done_files.load(Ordering::Relaxed), 8 * files.len() as u64);
    assert!(d.frontend("events") > 0, "the new worker served the rest of the storm");
}

/// SIGKILLs `worker` and waits for `supervisor` to start its successor.
fn kill_worker_and_wait_restart(d: &Daemon, supervisor: i32, worker: i32) -> i32 {
    // SAFETY: signalling the worker we started (through the supervisor).
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    let t0 = Instant::now();
    let after = loop {
        if let Some(p) = children_of(supervisor).into_iter().find(|&p| p != worker && pid_alive(p)) {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "worker was not restarted; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    d.wait_api();
    eprintln!("worker {worker} SIGKILLed; supervisor {supervisor} restarted it as {after}");
    after
}

/// The rootfs fixture built and mounted through `erofsd daemon --supervise`. Fields drop in
/// order: the mount is detached first, then the daemon stopped, then the scratch dir removed.
struct SupervisedRootfs {
    mnt: MountDir,
    d: Daemon,
    src: PathBuf,
    _scratch: tempfile::TempDir,
}

impl SupervisedRootfs {
    /// `None` (skipped loudly; a failure under CI) without fanotify pre-content support.
    fn start(test: &str) -> Option<SupervisedRootfs> {
        let s = fixtures::scratch(test);
        if !require_fanotify(test, s.path()) {
            return None;
        }
        let src = fixtures::fixture("rootfs").join("tree");
        let img = s.path().join("img");
        cli::erofsd_build(&[&src], &img, &[]);
        let d = Daemon::start(s.path(), true);
        let mnt = MountDir::new(s.path(), "mnt");
        d.mount(&img, &mnt.0);
        Some(SupervisedRootfs { mnt, d, src, _scratch: s })
    }

    /// The whole tree, metadata included, is intact; then a clean stop unmounts.
    fn verify_and_stop(mut self) {
        assert_trees_equal(&self.src, &self.mnt.0, &Options::default());
        self.d.stop();
        assert!(!erofsd::frontend::fanotify::sysmount::is_erofs_mount(&self.mnt.0), "clean stop left the mount up");
    }
}

#[test]
fn fanotify_sigkill_worker_during_cold_read_storm() {
    let Some(r) = SupervisedRootfs::start("fanotify_sigkill_worker_during_cold_read_storm") else {
        return;
    };
    // The supervisor restarts the worker; it re-adopts the mount and answers its predecessor's
    // events.
    let supervisor = r.d.child.as_ref().unwrap().id() as i32;
    let worker = r.d.worker_pid();
    cold_read_storm(&r.d, &r.src, &r.mnt.0, || {
        kill_worker_and_wait_restart(&r.d, supervisor, worker);
    });
    r.verify_and_stop();
}

/// The supervisor itself is SIGKILLed: the worker starts a new one that adopts it and holds
/// the group again, so a later SIGKILL of the worker during a cold storm is as safe as before.
/// A SIGTERM to the new supervisor then stops everything cleanly.
#[test]
fn fanotify_sigkill_supervisor_then_worker() {
    let Some(mut r) = SupervisedRootfs::start("fanotify_sigkill_supervisor_then_worker") else {
        return;
    };
    let d = &mut r.d;
    let first = d.child.as_ref().unwrap().id() as i32;
    let worker = d.worker_pid();
    assert_eq!(d.info()["holder_pid"], first, "the worker names its supervisor");
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    d.child.take().unwrap().wait().unwrap();

    let t0 = Instant::now();
    let guard = loop {
        match d.info()["holder_pid"].as_i64() {
            Some(p) if p as i32 != first => break p as i32,
            _ => {}
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "no new supervisor; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    };
    d.adopted_supervisor = Some(guard);
    assert!(pid_alive(guard), "the new supervisor {guard} is not running");
    assert_eq!(d.info()["holder"], "erofsd supervisor");
    eprintln!("supervisor {first} SIGKILLed; worker {worker} started supervisor {guard}");

    cold_read_storm(&r.d, &r.src, &r.mnt.0, || {
        kill_worker_and_wait_restart(&r.d, guard, worker);
    });
    r.verify_and_stop();
}

/// The worker dies for good (six SIGKILLs within the supervisor's restart window) while a
/// reader waits on an unread event: the supervisor's failsafe answers it EIO (never zeros),
/// unmounts, and only then lets the group go.
#[test]
fn fanotify_worker_beyond_restart_limit_fails_closed() {
    let test = "fanotify_worker_beyond_restart_limit_fails_closed";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let src = s.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 1).collect();
    std::fs::write(src.join("f"), &data).unwrap();
    let img = s.path().join("img");
    cli::erofsd_build(&[&src], &img, &[]);
    let mut d = Daemon::start_with(s.path(), true, "auto");
    assert_eq!(d.info()["frontend"], "fanotify", "--frontend auto picks fanotify on this kernel");
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);

    // Five crashes: each time the supervisor restarts the worker.
    let mut pid = d.worker_pid();
    for _ in 0..5 {
        // SAFETY: signalling the worker we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let t0 = Instant::now();
        pid = loop {
            let p = d.worker_pid();
            if p != pid {
                break p;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "worker was not restarted");
            std::thread::sleep(Duration::from_millis(10));
        };
        d.wait_api();
    }
    // Freeze the last worker, start a cold read (its event stays queued), then kill it.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let path = mnt.0.join("f");
    let reader = std::thread::spawn(move || std::fs::read(path));
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    // The frozen worker never answered: the failsafe denies, so the read fails with EIO.
    match reader.join().unwrap() {
        Ok(got) => panic!("read completed ({} bytes, {}) although nobody could fill it", got.len(), if got == data { "correct" } else { "WRONG" }),
        Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EIO), "reader failed with {e}, expected EIO"),
    }
    // The supervisor gives up: it unmounted before releasing the group, and exits non-zero.
    let mut sup = d.child.take().unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = sup.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = sup.kill();
            let _ = sup.wait();
            panic!("the supervisor did not finish its failsafe; log:\n{}", d.log_text());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!st.success(), "the supervisor should report the give-up");
    assert!(!erofsd::frontend::fanotify::sysmount::is_erofs_mount(&mnt.0), "failsafe left the mount up");
    eprintln!("supervisor exited with {st}; log tail:\n{}", d.log_text());
}
