//! Crash safety of the fanotify front-end: `erofsd daemon --supervise` keeps the group fd and
//! the cache files' write fds while the worker is SIGKILLed in the middle of a cold read
//! storm. No reader may ever see zeros or wrong bytes; reads resume once the supervisor has
//! restarted the worker (which answers the journaled events of its predecessor).

mod common;
mod fanotify_harness;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::compare::{assert_trees_equal, Options};
use common::{cli, fixtures};
use fanotify_harness::{regular_files, require_fanotify, Daemon, MountDir};

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

#[test]
fn fanotify_sigkill_worker_during_cold_read_storm() {
    let test = "fanotify_sigkill_worker_during_cold_read_storm";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let src = fixtures::fixture("rootfs").join("tree");
    let img = s.path().join("img");
    cli::erofsd_build(&[&src], &img, &[]);
    let mut d = Daemon::start(s.path(), true);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);

    let files: Arc<Vec<PathBuf>> = Arc::new(regular_files(&src));
    let src = Arc::new(src);
    let root = Arc::new(mnt.0.clone());
    let eio = Arc::new(AtomicU64::new(0));
    let done_files = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
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

    // Kill the worker while the storm is cold and events are in flight.
    let before = d.worker_pid();
    let t0 = Instant::now();
    while d.frontend("events") < 200 && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let in_flight = d.metrics()["frontend"]["journal_in_use"].clone();
    let read_at_kill = done_files.load(Ordering::Relaxed);
    // SAFETY: signalling the worker we started (through the supervisor).
    assert_eq!(unsafe { libc::kill(before, libc::SIGKILL) }, 0);
    eprintln!("SIGKILLed worker {before} after {read_at_kill} files read, journal in use {in_flight}");

    // The supervisor restarts it; it re-adopts the mount and answers its predecessor's events.
    let t1 = Instant::now();
    let after = loop {
        let p = d.worker_pid();
        if p != before {
            break p;
        }
        assert!(t1.elapsed() < Duration::from_secs(20), "worker was not restarted");
        std::thread::sleep(Duration::from_millis(20));
    };
    d.wait_api();
    let mut ok = true;
    for r in readers {
        ok &= r.join().is_ok();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(ok, "a reader saw wrong bytes or failed; log:\n{}", d.log_text());
    let m = d.metrics();
    eprintln!("worker {before} -> {after}; readers retried {} EIO(s); metrics after restart: {m}", eio.load(Ordering::Relaxed));
    assert!(read_at_kill < 8 * files.len() as u64, "the kill landed after the storm");
    assert_eq!(done_files.load(Ordering::Relaxed), 8 * files.len() as u64);
    let mounts = d.metrics();
    assert!(mounts["frontend"]["events"].as_u64().unwrap() > 0, "the new worker served the rest of the storm");

    // The whole tree, metadata included, is intact; then a clean stop unmounts.
    assert_trees_equal(&src, &mnt.0, &Options::default());
    d.stop();
    assert!(!erofsd::frontend::fanotify::sysmount::is_erofs_mount(&mnt.0), "clean stop left the mount up");
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
