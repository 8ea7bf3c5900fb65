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
