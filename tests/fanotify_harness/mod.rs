//! Shared by the tests/fanotify_*.rs binaries: a real `erofsd daemon --frontend fanotify`
//! process, its API, and what a test needs from the machine.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common::{cli, env};

/// Root, EROFS file-backed mounts and fanotify pre-content in `dir`'s filesystem.
pub fn require_fanotify(test: &str, dir: &Path) -> bool {
    if !env::require_erofs_mount(test) {
        return false;
    }
    let s = erofsd::frontend::fanotify::probe::probe_in(dir);
    env::require(s.usable, test, &format!("fanotify pre-content support ({})", s.details.join("; ")))
}

pub struct Daemon {
    /// The process we started: the supervisor, unless `supervise` is false.
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub cache: PathBuf,
    pub socket: PathBuf,
    /// true: the default command line (a supervisor runs the worker as its child); false:
    /// `--unsafe-no-supervisor`, one process that serves (killing `child` kills the worker).
    pub supervise: bool,
    pub frontend: &'static str,
    /// More `erofsd daemon` flags (e.g. `--cache-max-size`).
    pub extra_args: Vec<String>,
    /// A whole command line instead of the one built from the fields above: program, arguments,
    /// and whether the environment is cleared first (as systemd starts a unit).
    pub command: Option<(PathBuf, Vec<std::ffi::OsString>, bool)>,
    /// A supervisor that is not our child: the worker started it after ours was killed.
    pub adopted_supervisor: Option<i32>,
    log: PathBuf,
}

impl Daemon {
    /// Starts a daemon with its cache under `dir`; waits until the API answers. `supervise`:
    /// see the field.
    pub fn start(dir: &Path, supervise: bool) -> Daemon {
        Self::start_with(dir, supervise, "fanotify")
    }

    /// As [`Daemon::start`] with `--frontend <frontend>`.
    pub fn start_with(dir: &Path, supervise: bool, frontend: &'static str) -> Daemon {
        let mut d = Daemon {
            frontend,
            child: None,
            dir: dir.to_path_buf(),
            cache: dir.join("cache"),
            // sun_path is 108 bytes: keep the socket short, not under the scratch dir.
            socket: short_socket_path(),
            supervise,
            extra_args: Vec::new(),
            command: None,
            adopted_supervisor: None,
            log: dir.join("daemon.log"),
        };
        d.spawn();
        d
    }

    /// Runs `program args…` exactly (a command line taken from the README, a script or a unit),
    /// which must serve its API on `socket` and keep its cache in `cache`.
    pub fn start_command(dir: &Path, program: PathBuf, args: Vec<std::ffi::OsString>, cache: PathBuf, socket: PathBuf, clean_env: bool) -> Daemon {
        let mut d = Self::start_with_no_spawn(dir);
        d.supervise = true;
        d.cache = cache;
        d.socket = socket;
        d.command = Some((program, args, clean_env));
        d.spawn();
        d
    }

    /// As [`Daemon::start`] (fanotify, no supervisor) with more daemon flags.
    pub fn start_with_args(dir: &Path, extra: &[&str]) -> Daemon {
        let mut d = Self::start_with_no_spawn(dir);
        d.extra_args = extra.iter().map(|s| s.to_string()).collect();
        d.spawn();
        d
    }

    fn start_with_no_spawn(dir: &Path) -> Daemon {
        Daemon {
            frontend: "fanotify",
            child: None,
            dir: dir.to_path_buf(),
            cache: dir.join("cache"),
            socket: short_socket_path(),
            supervise: false,
            extra_args: Vec::new(),
            command: None,
            adopted_supervisor: None,
            log: dir.join("daemon.log"),
        }
    }

    /// Starts the daemon process again (after [`Daemon::stop`]).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut cmd;
        if let Some((program, args, clean_env)) = &self.command {
            cmd = Command::new(program);
            cmd.args(args);
            if *clean_env {
                cmd.env_clear().env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
            }
        } else {
            cmd = Command::new(cli::erofsd_bin());
            cmd.args(["daemon", "--frontend", self.frontend, "--cache-dir"]).arg(&self.cache).arg("--api-socket").arg(&self.socket);
            if !self.supervise {
                cmd.arg("--unsafe-no-supervisor");
            }
            cmd.args(&self.extra_args);
        }
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.child = Some(cmd.spawn().expect("start erofsd daemon"));
        self.wait_api();
    }

    pub fn wait_api(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("daemon API did not come up; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        cli::tail(&std::fs::read(&self.log).unwrap_or_default())
    }

    pub fn mount(&self, image: &Path, mountpoint: &Path) {
        let out = cli::run(
            cli::erofsd_bin(),
            ["mount".as_ref(), image.as_os_str(), mountpoint.as_os_str(), "--api-socket".as_ref(), self.socket.as_os_str()],
        );
        assert!(out.status.success(), "erofsd mount failed: {}\nlog:\n{}", cli::tail(&out.stderr), self.log_text());
    }

    pub fn umount(&self, mountpoint: &Path) {
        let out = cli::run(
            cli::erofsd_bin(),
            ["umount".as_ref(), mountpoint.as_os_str(), "--api-socket".as_ref(), self.socket.as_os_str()],
        );
        assert!(out.status.success(), "erofsd umount failed: {}\nlog:\n{}", cli::tail(&out.stderr), self.log_text());
    }

    /// `GET /api/v1/metrics`.
    pub fn metrics(&self) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(erofsd::daemon::client::call_json::<serde_json::Value>(
            &self.socket,
            hyper::Method::GET,
            "/api/v1/metrics",
            None::<&()>,
        ))
        .unwrap_or_else(|e| panic!("metrics: {e:#}\nlog:\n{}", self.log_text()))
    }

    /// `GET /api/v1/daemon`.
    pub fn info(&self) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(erofsd::daemon::client::call_json::<serde_json::Value>(
            &self.socket,
            hyper::Method::GET,
            "/api/v1/daemon",
            None::<&()>,
        ))
        .unwrap_or_else(|e| panic!("daemon info: {e:#}\nlog:\n{}", self.log_text()))
    }

    /// Sum of a front-end counter over the cache files (`frontend.cache_files` in the metrics:
    /// groups_fetched, groups_ready, …), one per blob.
    pub fn cache_files_sum(&self, key: &str) -> u64 {
        let m = self.metrics();
        m["frontend"]["cache_files"].as_object().map(|o| o.values().map(|v| v[key].as_u64().unwrap_or(0)).sum()).unwrap_or(0)
    }

    /// Sum of a per-blob fill counter (`blobs` in the metrics: groups, requests, errors, …)
    /// over all blobs; panics if the daemon does not report it.
    pub fn blobs_sum(&self, key: &str) -> u64 {
        let m = self.metrics();
        let blobs = m["blobs"].as_object().unwrap_or_else(|| panic!("no blobs in the metrics: {m}"));
        blobs.values().map(|b| b[key].as_u64().unwrap_or_else(|| panic!("no blob metric {key}: {m}"))).sum()
    }

    pub fn frontend(&self, key: &str) -> u64 {
        self.metrics()["frontend"][key].as_u64().unwrap_or_else(|| panic!("no frontend metric {key}"))
    }

    /// SIGTERM and wait: the daemon unmounts what it serves, then exits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let st = c.wait().unwrap();
            assert!(st.success(), "daemon exited with {st}; log:\n{}", self.log_text());
        }
        if let Some(pid) = self.adopted_supervisor.take() {
            // SAFETY: signalling the supervisor our worker started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            assert!(wait_gone(pid, Duration::from_secs(30)), "supervisor {pid} did not stop; log:\n{}", self.log_text());
        }
    }

    /// Restarts the daemon process (SIGTERM, then start again with the same cache).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The worker process (the supervisor's child).
    pub fn worker_pid(&self) -> i32 {
        let sup = self.child.as_ref().expect("running").id();
        let t0 = Instant::now();
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{sup}/task/{sup}/children")).unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next() {
                return p.parse().unwrap();
            }
            assert!(t0.elapsed() < Duration::from_secs(10), "supervisor {sup} has no worker");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.adopted_supervisor.take() {
            // SAFETY: as in stop().
            unsafe { libc::kill(pid, libc::SIGTERM) };
            if !wait_gone(pid, Duration::from_secs(20)) {
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Whether `pid` is a live process (not gone, not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Waits up to `limit` for `pid` to exit (it need not be our child).
pub fn wait_gone(pid: i32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while pid_alive(pid) {
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Children of `pid`, over all its threads.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(kids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

/// A mount point that is unmounted (lazily if need be) when dropped, in case a test fails
/// with the daemon's mount still up.
pub struct MountDir(pub PathBuf);

impl MountDir {
    pub fn new(base: &Path, name: &str) -> MountDir {
        let p = base.join(name);
        std::fs::create_dir_all(&p).unwrap();
        MountDir(p)
    }
}

impl Drop for MountDir {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn short_socket_path() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from("/run/erofsd-fantest");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{}.sock", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
}

/// Opens `path` for reading with the kernel's readahead off (`POSIX_FADV_RANDOM`), so each
/// read asks the backing file for its own pages only.
pub fn open_without_readahead(path: &Path) -> std::fs::File {
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: advice on our own open fd.
    let rc = unsafe { libc::posix_fadvise(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(rc, 0, "posix_fadvise(RANDOM) on {}", path.display());
    f
}

pub fn drop_caches() {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("drop caches");
}

/// Every regular file under `root`, relative, sorted.
pub fn regular_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let r = rel.join(e.file_name());
            if t.is_dir() {
                stack.push(r);
            } else if t.is_file() {
                out.push(r);
            }
        }
    }
    out.sort();
    out
}
