//! Crash safety of the fanotify front-end: the supervisor `erofsd daemon` runs by default keeps
//! the group fd and the cache files' write fds while the worker is SIGKILLed in the middle of a
//! cold read storm. No reader may ever see zeros or wrong bytes; reads resume once the
//! supervisor has restarted the worker (which answers the journaled events of its predecessor).
//! The daemon is started both by the harness and exactly as the README, `scripts/demo.sh` and
//! the systemd unit start it.

mod common;
mod fanotify_harness;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::compare::{assert_trees_equal, Options};
use common::{cli, fixtures};
use fanotify_harness::{children_of, drop_caches, open_without_readahead, pid_alive, regular_files, require_fanotify, Daemon, MountDir};

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

/// The rootfs fixture built and mounted through a supervised `erofsd daemon`. Fields drop in
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

// ---------------------------------------------------------------------------------------------
// The daemon as users start it: no supervision flag anywhere. Supervision is the default, so a
// SIGKILL of the process that serves, during cold random reads, costs readers a wait, never
// zeros.

/// Size of the random file: 512 groups of 256 KiB, far more than the reads before the kill touch.
const RANDOM_FILE: usize = 128 << 20;
const READERS: usize = 6;
const READS_EACH: usize = 500;
/// The serving process is killed once this many reads have completed (of READERS × READS_EACH).
const KILL_AFTER: u64 = 300;

/// A scratch dir with `src/big.bin` (seeded noise) and its image `img`.
fn random_image(s: &Path) -> (Arc<Vec<u8>>, PathBuf) {
    let src = s.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = common::data::noise(RANDOM_FILE, 18);
    std::fs::write(src.join("big.bin"), &data).unwrap();
    let img = s.join("img");
    cli::erofsd_build(&[&src], &img, &[]);
    (Arc::new(data), img)
}

/// Mounts `img` through `d` (started by `d`'s own command line, whatever it is), runs
/// READERS threads of cold random 4 KiB reads (readahead off), SIGKILLs the serving process
/// (the worker, as the API names it) once KILL_AFTER reads completed, and checks every byte:
/// 0 wrong, every read done, reads completed after the kill, and the whole file intact at the
/// end. Then a clean stop unmounts.
fn random_reads_survive_worker_kill(mut d: Daemon, data: Arc<Vec<u8>>, img: &Path, mnt: MountDir) {
    use std::os::unix::fs::FileExt;
    let info = d.info();
    let supervisor = d.child.as_ref().unwrap().id() as i32;
    let worker = info["pid"].as_i64().expect("GET /api/v1/daemon names the serving pid") as i32;
    assert_eq!(info["frontend"], "fanotify", "this kernel serves through fanotify: {info}");
    assert_eq!(info["holder"], "erofsd supervisor", "supervision is the default: {info}");
    assert_ne!(worker, supervisor, "the serving process is the supervisor's child, not the process we started");
    assert_eq!(children_of(supervisor), vec![worker]);
    d.mount(img, &mnt.0);
    drop_caches();

    let done = Arc::new(AtomicU64::new(0));
    let (wrong, zeroed, eio) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut readers = Vec::new();
    for t in 0..READERS {
        let (data, done, wrong, zeroed, eio) = (data.clone(), done.clone(), wrong.clone(), zeroed.clone(), eio.clone());
        let path = mnt.0.join("big.bin");
        readers.push(std::thread::spawn(move || {
            let f = open_without_readahead(&path);
            let mut x = (t as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut buf = vec![0u8; 4096];
            for _ in 0..READS_EACH {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % (RANDOM_FILE as u64 / 4096)) * 4096;
                let t0 = Instant::now();
                loop {
                    match f.read_exact_at(&mut buf, off) {
                        Ok(()) => break,
                        // A denied orphan of the dead worker: retried, never wrong bytes.
                        Err(e) if e.raw_os_error() == Some(libc::EIO) && t0.elapsed() < Duration::from_secs(60) => {
                            eio.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("reader {t}: read at {off}: {e}"),
                    }
                }
                let want = &data[off as usize..off as usize + 4096];
                if buf != want {
                    wrong.fetch_add(1, Ordering::Relaxed);
                    if buf.iter().all(|&b| b == 0) {
                        zeroed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }

    let t0 = Instant::now();
    while done.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(t0.elapsed() < Duration::from_secs(60), "the reads did not start; log:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(1));
    }
    let in_flight = d.metrics()["frontend"]["journal_in_use"].clone();
    let at_kill = done.load(Ordering::Relaxed);
    let new_worker = kill_worker_and_wait_restart(&d, supervisor, worker);
    let at_restart = done.load(Ordering::Relaxed);
    assert_eq!(d.info()["pid"].as_i64(), Some(new_worker as i64), "the API is served by the restarted worker");
    for r in readers {
        r.join().expect("a reader failed");
    }
    let total = (READERS * READS_EACH) as u64;
    eprintln!(
        "{total} cold random 4 KiB reads by {READERS} readers; SIGKILL of worker {worker} after {at_kill} (journal in use {in_flight}); \
         wrong {}, of which all-zero {}; EIO retried {}; completed once the new worker served {}; events seen by the new worker {}",
        wrong.load(Ordering::Relaxed),
        zeroed.load(Ordering::Relaxed),
        eio.load(Ordering::Relaxed),
        total - at_restart,
        d.frontend("events"),
    );
    assert_eq!(wrong.load(Ordering::Relaxed), 0, "reads returned wrong bytes ({} all zero); log:\n{}", zeroed.load(Ordering::Relaxed), d.log_text());
    assert_eq!(done.load(Ordering::Relaxed), total);
    assert!(at_kill < total / 2, "the kill landed late ({at_kill} of {total} done)");
    assert!(at_restart < total, "no read was left for the restarted worker");
    assert!(d.frontend("events") > 0, "the restarted worker served none of the reads");

    // The mount still works: the whole file, cold parts included.
    assert!(std::fs::read(mnt.0.join("big.bin")).unwrap() == *data, "big.bin differs from the source at the end");
    d.stop();
    assert!(!erofsd::frontend::fanotify::sysmount::is_erofs_mount(&mnt.0), "clean stop left the mount up");
    assert!(!pid_alive(new_worker), "the worker outlived its supervisor's clean stop");
}

/// The words of `line` from the first after `daemon` to the first that redirects or ends it.
fn daemon_args(line: &str) -> Vec<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "daemon").unwrap_or_else(|| panic!("no `daemon` in {line:?}"));
    words[at + 1..]
        .iter()
        .take_while(|w| !w.starts_with("2>") && !w.starts_with('>') && **w != "&" && !w.starts_with('#'))
        .map(|w| w.trim_matches('"').to_string())
        .collect()
}

/// How a test starts the daemon: program, arguments, cache dir, API socket, and whether the
/// environment is cleared (as systemd starts a unit).
struct StartedAs {
    program: PathBuf,
    args: Vec<std::ffi::OsString>,
    cache: PathBuf,
    socket: PathBuf,
    clean_env: bool,
}

/// The daemon started as `start` makes it from the scratch dir serves a random image, its
/// worker is SIGKILLed during cold random reads, and no read sees a wrong byte
/// ([`random_reads_survive_worker_kill`]).
fn survives_worker_kill_as_started(test: &str, scratch: &str, start: impl FnOnce(&Path) -> StartedAs) {
    let s = fixtures::scratch(scratch);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let StartedAs { program, args, cache, socket, clean_env } = start(s.path());
    let (data, img) = random_image(s.path());
    let d = Daemon::start_command(s.path(), program, args, cache, socket, clean_env);
    random_reads_survive_worker_kill(d, data, &img, MountDir::new(s.path(), "mnt"));
}

/// `erofsd daemon` as the README starts it: `--frontend auto` and nothing else, plus the cache
/// dir and API socket a test needs.
#[test]
fn fanotify_readme_daemon_sigkill_during_random_reads() {
    survives_worker_kill_as_started("fanotify_readme_daemon_sigkill_during_random_reads", "fan-readme", |dir| {
        let readme = std::fs::read_to_string(common::env::repo_root().join("README.md")).unwrap();
        let line = readme.lines().find(|l| l.contains("erofsd daemon") && l.trim_start().starts_with("sudo ")).expect("README starts the daemon");
        eprintln!("README: {line:?}");
        let mut args: Vec<std::ffi::OsString> = vec!["daemon".into()];
        args.extend(daemon_args(line).into_iter().map(Into::into));
        let (cache, socket) = (dir.join("cache"), dir.join("api.sock"));
        args.extend(["--cache-dir".into(), cache.clone().into_os_string(), "--api-socket".into(), socket.clone().into_os_string()]);
        StartedAs { program: cli::erofsd_bin(), args, cache, socket, clean_env: false }
    });
}

/// `scripts/demo.sh`'s daemon command line, its `$WORK` a scratch dir.
#[test]
fn fanotify_demo_daemon_sigkill_during_random_reads() {
    survives_worker_kill_as_started("fanotify_demo_daemon_sigkill_during_random_reads", "fan-demo", |dir| {
        let demo = std::fs::read_to_string(common::env::repo_root().join("scripts/demo.sh")).unwrap();
        let line = demo.lines().find(|l| l.trim_start().starts_with("\"$BIN\" daemon")).expect("demo.sh starts the daemon");
        eprintln!("demo.sh: {line:?}");
        let work = dir.to_str().unwrap();
        let mut args: Vec<std::ffi::OsString> = vec!["daemon".into()];
        args.extend(daemon_args(line).into_iter().map(|a| a.replace("$WORK", work).into()));
        StartedAs { program: cli::erofsd_bin(), args, cache: dir.join("cache"), socket: dir.join("api.sock"), clean_env: false }
    });
}

/// The systemd unit's `ExecStart=`, as `scripts/install.sh` installs it (into a staging root,
/// with the shipped config.toml, which gains only the cache dir and API socket), run directly
/// with a cleared environment as systemd would start it (no systemd involved).
#[test]
fn fanotify_systemd_unit_daemon_sigkill_during_random_reads() {
    survives_worker_kill_as_started("fanotify_systemd_unit_daemon_sigkill_during_random_reads", "fan-unit", |dir| {
        let root = dir.join("root");
        cli::run_ok(
            common::env::repo_root().join("scripts/install.sh"),
            ["install".as_ref(), "--bin".as_ref(), cli::erofsd_bin().as_os_str(), "--destdir".as_ref(), root.as_os_str()],
        );
        let unit = std::fs::read_to_string(root.join("etc/systemd/system/erofsd.service")).unwrap();
        let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("the unit has ExecStart=");
        eprintln!("unit: ExecStart={exec}");
        // Absolute paths are the installed ones: under the staging root.
        let mut words = exec.split_whitespace().map(|w| match w.strip_prefix('/') { Some(rel) => root.join(rel).into_os_string(), None => w.into() });
        let program = PathBuf::from(words.next().unwrap());
        let args: Vec<std::ffi::OsString> = words.collect();
        let (cache, socket) = (dir.join("cache"), dir.join("api.sock"));
        let conf = root.join("etc/erofsd/config.toml");
        let shipped = std::fs::read_to_string(&conf).unwrap();
        std::fs::write(&conf, format!("cache_dir = {:?}\napi_socket = {:?}\n{shipped}", cache, socket)).unwrap();
        StartedAs { program, args, cache, socket, clean_env: true }
    });
}

/// `--unsafe-no-supervisor` still runs one process and says loudly what it gives up;
/// `--supervise` (old command lines) is accepted and changes nothing.
#[test]
fn fanotify_unsafe_no_supervisor_warns_and_supervise_is_accepted() {
    let test = "fanotify_unsafe_no_supervisor_warns_and_supervise_is_accepted";
    let s = fixtures::scratch("fan-optout");
    if !require_fanotify(test, s.path()) {
        return;
    }
    let mut d = Daemon::start(s.path(), false);
    let info = d.info();
    assert_eq!(info["pid"].as_i64(), Some(d.child.as_ref().unwrap().id() as i64), "one process: {info}");
    assert_eq!(info["holder"], "none");
    let log = std::fs::read_to_string(d.dir.join("daemon.log")).unwrap();
    for want in ["--unsafe-no-supervisor: NO SUPERVISOR", "read as ZEROS", "fanotify: NO FD HOLDER"] {
        assert!(log.contains(want), "the log lacks {want:?}:\n{log}");
    }
    d.stop();

    d.supervise = true;
    d.extra_args = vec!["--supervise".into()];
    d.start_again();
    let info = d.info();
    assert_eq!(info["holder"], "erofsd supervisor", "{info}");
    assert_ne!(info["pid"].as_i64(), Some(d.child.as_ref().unwrap().id() as i64));
    d.stop();
}
