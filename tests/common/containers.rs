//! The real container stack, started by a test for itself: Debian's `docker-registry` on
//! loopback, `containerd` with its own root, state and socket, nydus-snapshotter's
//! `containerd-nydus-grpc` with its own root and config whose `nydusd` is a link to the erofsd
//! binary under test, and `nerdctl` pointed at that containerd. Nothing system-wide is used or
//! touched: every path lives under one temporary root, and dropping the [`Stack`] kills every
//! process started under it, unmounts whatever is left mounted there and removes it.
//!
//! Also: images pushed into the registry the way nydusify pushes them (nydus data blob layers,
//! the bootstrap layer last), `erofsd convert` output, and plain OCI images made by `umoci` and
//! pushed by `skopeo`. The parts are installed by `scripts/container-deps.sh`, versions pinned
//! in `scripts/versions.env`.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::registry::{push_blob, push_client, push_manifest, FaultFront, Registry};
use super::{cli, env, fixtures};

pub const NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// containerd's namespace for everything the tests create.
pub const NAMESPACE: &str = "erofsd-test";

/// `scripts/versions.env`: KEY=VALUE lines.
pub fn versions() -> HashMap<String, String> {
    let p = env::repo_root().join("scripts/versions.env");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A Go program built by `scripts/container-deps.sh` (`GO_PREFIX/bin/NAME`).
pub fn go_bin(name: &str) -> PathBuf {
    PathBuf::from(&versions()["GO_PREFIX"]).join("bin").join(name)
}

/// Root, overlayfs, and every part of the stack; otherwise a loud skip (a failure under CI).
pub fn require_stack(test: &str) -> bool {
    env::require(env::is_root(), test, "root (containerd, mounts)")
        && env::require(env::kernel_has_fs("overlay"), test, "a kernel with overlayfs")
        && env::require_tools(test, &["containerd", "ctr", "containerd-shim-runc-v2", "runc", super::registry::REGISTRY_BIN, "skopeo", "umoci"])
        && ["containerd-nydus-grpc", "nerdctl"].iter().all(|b| {
            env::require(go_bin(b).is_file(), test, &format!("{} (scripts/container-deps.sh builds it)", go_bin(b).display()))
        })
}

/// How the snapshotter runs its daemons.
#[derive(Clone, Debug)]
pub struct Options {
    /// `dedicated` (one daemon per image) or `shared` (one daemon, an API mount per image).
    pub daemon_mode: &'static str,
    /// `none`, `restart` or `failover`.
    pub recover_policy: &'static str,
    /// `fs_prefetch.enable` in the nydusd config (off: the bytes fetched are what the container read).
    pub prefetch: bool,
    /// Put a [`FaultFront`] before the registry: image references (and so the daemons'
    /// backend) name the front, and [`Stack::front`] injects faults.
    pub front: bool,
    /// Top-level keys that replace the template's in the nydusd JSON config (e.g. `fs_prefetch`).
    pub nydusd_config: Option<serde_json::Value>,
    /// TOML appended to containerd's config (e.g. another proxy snapshotter).
    pub containerd_toml: String,
    /// The `nydusd` the snapshotter runs; default: the erofsd binary under test.
    pub nydusd_bin: Option<PathBuf>,
}

impl Options {
    pub fn dedicated() -> Options {
        Options {
            daemon_mode: "dedicated",
            recover_policy: "none",
            prefetch: false,
            front: false,
            nydusd_config: None,
            containerd_toml: String::new(),
            nydusd_bin: None,
        }
    }
    pub fn shared() -> Options {
        Options { daemon_mode: "shared", ..Options::dedicated() }
    }
    pub fn recover(mut self, policy: &'static str) -> Options {
        self.recover_policy = policy;
        self
    }
    pub fn with_front(mut self) -> Options {
        self.front = true;
        self
    }
}

/// One running stack. See the module doc.
pub struct Stack {
    pub test: String,
    pub opts: Options,
    /// Everything lives under here (short: unix socket paths must stay under 108 bytes and the
    /// snapshotter refuses a root over 70).
    pub root: PathBuf,
    pub registry: Registry,
    /// The fault-injecting front (with the runtime it runs on), when `Options::front`.
    front: Option<(tokio::runtime::Runtime, FaultFront)>,
    containerd: Option<Child>,
    snapshotter: Option<Child>,
    _root: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts registry, snapshotter and containerd; `None` (after a loud skip) if this machine
    /// lacks a part.
    pub fn start(test: &str, opts: Options) -> Option<Stack> {
        if !require_stack(test) {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("ectr-").tempdir().expect("temp root");
        let root = dir.path().to_path_buf();
        for d in ["bin", "containerd", "nydus", "nerdctl", "certs.d", "images"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // The snapshotter runs `nydusd`: a link named so, to the erofsd binary under test.
        match &opts.nydusd_bin {
            Some(other) => symlink(other, root.join("bin/nydusd")).unwrap(),
            None => {
                super::http::nydusd_link(&root.join("bin"));
            }
        }
        let registry = Registry::start_with_access_log();
        let front = opts.front.then(|| {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            let upstream = ([127, 0, 0, 1], registry.port).into();
            let f = rt.block_on(FaultFront::start(upstream));
            (rt, f)
        });
        let mut s = Stack { test: test.into(), opts, root, registry, front, containerd: None, snapshotter: None, _root: Some(dir) };
        s.write_configs();
        s.start_snapshotter();
        s.start_containerd();
        Some(s)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The snapshotter's root (`root` in its config).
    pub fn snapshotter_root(&self) -> PathBuf {
        self.path("nydus")
    }

    fn write_configs(&self) {
        let r = &self.root;
        // nydusd's fusedev config template; the snapshotter fills in host, repo, auth and the
        // cache work_dir per image (see nydus-snapshotter's misc/snapshotter/nydusd-config.fusedev.json).
        let mut nydusd = serde_json::json!({
            "device": {
                "backend": {"type": "registry", "config": {"scheme": "http", "timeout": 30, "connect_timeout": 5, "retry_limit": 2}},
                "cache": {"type": "blobcache"}
            },
            "mode": "direct",
            "digest_validate": false,
            "iostats_files": false,
            "enable_xattr": true,
            "amplify_io": 1048576,
            "fs_prefetch": {"enable": self.opts.prefetch, "threads_count": 2, "merging_size": 1048576, "prefetch_all": self.opts.prefetch}
        });
        if let Some(serde_json::Value::Object(patch)) = &self.opts.nydusd_config {
            for (k, v) in patch {
                nydusd[k] = v.clone();
            }
        }
        std::fs::write(r.join("nydusd.json"), serde_json::to_vec_pretty(&nydusd).unwrap()).unwrap();
        let snapshotter = format!(
            r#"version = 1
root = "{root}/nydus"
address = "{root}/nydus.sock"
daemon_mode = "{mode}"
cleanup_on_close = false

[system]
enable = false
address = "{root}/nydus-system.sock"

[daemon]
nydusd_config = "{root}/nydusd.json"
nydusd_path = "{root}/bin/nydusd"
nydusimage_path = "{root}/bin/nydus-image"
fs_driver = "fusedev"
recover_policy = "{policy}"
threads_number = 2
log_rotation_size = 100
failover_policy = "resend"

[cgroup]
enable = false

[log]
log_to_stdout = false
level = "debug"
log_rotation_compress = false

[metrics]
address = ""

[snapshot]
enable_nydus_overlayfs = false
sync_remove = false

[cache_manager]
disable = false
gc_period = "24h"
"#,
            root = r.display(),
            mode = self.opts.daemon_mode,
            policy = self.opts.recover_policy,
        );
        std::fs::write(r.join("nydus.toml"), snapshotter).unwrap();
        // containerd 1.6: own root, state, sockets and opt dir; CRI off (no CNI, no streaming
        // server); the snapshotter as a proxy plugin named `nydus`.
        let containerd = format!(
            r#"version = 2
root = "{root}/containerd/root"
state = "{root}/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{root}/containerd.sock"

[ttrpc]
  address = "{root}/containerd.sock.ttrpc"

[debug]
  level = "info"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{root}/containerd/opt"

[proxy_plugins.nydus]
  type = "snapshot"
  address = "{root}/nydus.sock"
{extra}"#,
            root = r.display(),
            extra = self.opts.containerd_toml,
        );
        std::fs::write(r.join("containerd/config.toml"), containerd).unwrap();
    }

    fn spawn_logged(&self, prog: &Path, args: &[&str], log: &str) -> Child {
        let logf = std::fs::OpenOptions::new().create(true).append(true).open(self.path(log)).unwrap();
        Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", prog.display()))
    }

    /// Starts `containerd-nydus-grpc` (again, after [`Stack::kill_snapshotter`]) and waits for its socket.
    pub fn start_snapshotter(&mut self) {
        let _ = std::fs::remove_file(self.path("nydus.sock"));
        let cfg = self.path("nydus.toml");
        let child = self.spawn_logged(&go_bin("containerd-nydus-grpc"), &["--config", cfg.to_str().unwrap()], "snapshotter.out");
        self.snapshotter = Some(child);
        let sock = self.path("nydus.sock");
        self.wait_socket(&sock, "containerd-nydus-grpc", || self.snapshotter_log());
        if self.containerd.is_some() {
            // containerd's connection to a restarted snapshotter comes back lazily: the first
            // calls can fail with "connection closed" (entrypoint.sh retries `ctr snapshots`
            // the same way before it goes on).
            let addr = self.path("containerd.sock");
            let args = ["--address", addr.to_str().unwrap(), "--namespace", NAMESPACE, "snapshots", "--snapshotter", "nydus", "ls"];
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cli::run("ctr", args).status.success() {
                assert!(Instant::now() < deadline, "containerd cannot reach the restarted snapshotter\n{}", self.diagnostics());
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    fn start_containerd(&mut self) {
        let cfg = self.path("containerd/config.toml");
        let child = self.spawn_logged(Path::new("containerd"), &["--config", cfg.to_str().unwrap()], "containerd.log");
        self.containerd = Some(child);
        let sock = self.path("containerd.sock");
        self.wait_socket(&sock, "containerd", || std::fs::read_to_string(self.path("containerd.log")).unwrap_or_default());
    }

    fn wait_socket(&self, sock: &Path, what: &str, log: impl Fn() -> String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            assert!(Instant::now() < deadline, "{what} did not open {} in 30 s; log:\n{}", sock.display(), tail_str(&log()));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILLs the snapshotter (its daemons live on, as in a crash).
    pub fn kill_snapshotter(&mut self) {
        if let Some(mut c) = self.snapshotter.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// containerd's pid.
    pub fn containerd_pid(&self) -> Option<u32> {
        self.containerd.as_ref().map(|c| c.id())
    }

    /// The snapshotter's pid.
    pub fn snapshotter_pid(&self) -> Option<u32> {
        self.snapshotter.as_ref().map(|c| c.id())
    }

    // ------------------------------------------------------------ nerdctl

    /// `nerdctl` against this stack's containerd (own namespace, data root, hosts dir), with
    /// `--snapshotter nydus` and the local registry as insecure; returns the output whatever
    /// the exit status.
    pub fn nerdctl(&self, args: &[&str]) -> Output {
        let mut cmd = self.nerdctl_command(args);
        cmd.stdin(Stdio::null());
        let desc = format!("{cmd:?}");
        let t0 = Instant::now();
        let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
        eprintln!("ran {desc}: {} in {:.2?}", out.status, t0.elapsed());
        out
    }

    /// The `nerdctl` command of [`Stack::nerdctl`], not started (a later `--snapshotter` in
    /// `args` overrides `nydus`).
    pub fn nerdctl_command(&self, args: &[&str]) -> Command {
        let addr = self.path("containerd.sock");
        let data = self.path("nerdctl");
        let hosts = self.path("certs.d");
        let mut all: Vec<&str> = vec![
            "--address",
            addr.to_str().unwrap(),
            "--namespace",
            NAMESPACE,
            "--data-root",
            data.to_str().unwrap(),
            "--hosts-dir",
            hosts.to_str().unwrap(),
            "--cgroup-manager",
            "cgroupfs",
            "--snapshotter",
            "nydus",
            "--insecure-registry",
        ];
        all.extend_from_slice(args);
        let mut cmd = Command::new(go_bin("nerdctl"));
        cmd.args(all);
        cmd
    }

    /// `nerdctl ARGS` with a time limit: past it, the processes stuck in the kernel are
    /// described (their /proc stacks) and the test fails.
    pub fn nerdctl_timeout(&self, args: &[&str], limit: Duration) -> Output {
        let addr = self.path("containerd.sock");
        let (data, hosts) = (self.path("nerdctl"), self.path("certs.d"));
        let mut cmd = Command::new(go_bin("nerdctl"));
        cmd.args(["--address", addr.to_str().unwrap(), "--namespace", NAMESPACE, "--data-root", data.to_str().unwrap()])
            .args(["--hosts-dir", hosts.to_str().unwrap(), "--cgroup-manager", "cgroupfs", "--snapshotter", "nydus", "--insecure-registry"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn nerdctl");
        let deadline = Instant::now() + limit;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let stuck = stuck_processes();
                let _ = child.kill();
                let _ = child.wait();
                panic!("nerdctl {args:?} did not finish in {limit:?}; processes in uninterruptible sleep:\n{stuck}\n{}", self.diagnostics());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.wait_with_output().unwrap()
    }

    /// `nerdctl ARGS`, which must succeed; returns its stdout.
    pub fn nerdctl_ok(&self, args: &[&str]) -> String {
        let out = self.nerdctl(args);
        assert!(
            out.status.success(),
            "nerdctl {args:?} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}\n{}",
            out.status,
            cli::tail(&out.stdout),
            cli::tail(&out.stderr),
            self.diagnostics()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `nerdctl run --rm --net none IMAGE CMD...`, which must succeed; returns its stdout.
    pub fn run(&self, image: &str, cmd: &[&str]) -> String {
        let mut args = vec!["run", "--rm", "--net", "none", image];
        args.extend_from_slice(cmd);
        self.nerdctl_ok(&args)
    }

    // ------------------------------------------------------------ what a test looks at

    /// `/proc/self/mountinfo` lines whose mount point is under the root.
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(&self.root)
    }

    /// Filesystem types of the mounts under the root (`erofs`, `overlay`, `fuse`, ...).
    pub fn mount_types(&self) -> Vec<String> {
        self.mounts().iter().filter_map(|l| mountinfo_fstype(l)).collect()
    }

    /// The lower directories of running container `id`'s rootfs overlay, topmost first, each
    /// with the filesystem type of the mount it lies on (`erofs` for a daemon's mount).
    pub fn container_lowers(&self, id: &str) -> Vec<(PathBuf, String)> {
        let all: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().map(str::to_string).collect();
        let rootfs = self.path(&format!("containerd/state/io.containerd.runtime.v2.task/{NAMESPACE}/{id}/rootfs"));
        let Some(line) = all.iter().rev().find(|l| mountinfo_point(l).as_deref() == Some(rootfs.as_path())) else {
            panic!("no rootfs mount for container {id} at {}\n{}", rootfs.display(), self.diagnostics());
        };
        let opts = line.split_once(" - ").and_then(|(_, a)| a.split(' ').nth(2)).unwrap_or("");
        let lower = opts.split(',').find_map(|o| o.strip_prefix("lowerdir=")).unwrap_or_else(|| panic!("no lowerdir in {line}"));
        lower
            .split(':')
            .map(|d| {
                let d = PathBuf::from(d);
                // The mount it lies on: the last-mounted of those with the longest matching point.
                let fstype = all
                    .iter()
                    .filter_map(|l| Some((mountinfo_point(l)?, mountinfo_fstype(l)?)))
                    .filter(|(p, _)| d.starts_with(p))
                    .fold((0, String::new()), |best, (p, t)| {
                        let n = p.components().count();
                        if n >= best.0 { (n, t) } else { best }
                    })
                    .1;
                (d, fstype)
            })
            .collect()
    }

    /// The snapshotter's log file plus its stdout/stderr (where nydusd's own stdout/stderr go).
    pub fn snapshotter_log(&self) -> String {
        let a = std::fs::read_to_string(self.snapshotter_root().join("logs/nydus-snapshotter.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.path("snapshotter.out")).unwrap_or_default();
        format!("{a}\n--- snapshotter stdout/stderr ---\n{b}")
    }

    /// The `--log-file` of every daemon the snapshotter started (`<root>/logs/<daemon id>/nydusd.log`).
    pub fn erofsd_logs(&self) -> Vec<(PathBuf, String)> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.snapshotter_root().join("logs")) {
            for e in rd.flatten() {
                let p = e.path().join("nydusd.log");
                if let Ok(t) = std::fs::read_to_string(&p) {
                    out.push((p, t));
                }
            }
        }
        out.sort();
        out
    }

    /// The api sockets of the snapshotter's daemons (`<root>/socket/<daemon id>/api.sock`).
    pub fn apisocks(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.snapshotter_root().join("socket"))
            .map(|rd| rd.flatten().map(|e| e.path().join("api.sock")).filter(|p| p.exists()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Pids of every process running this stack's `nydusd` (a daemon is two: erofsd's
    /// supervisor, which the snapshotter started, and its worker child).
    pub fn nydusd_pids(&self) -> Vec<i32> {
        let bin = self.path("bin/nydusd");
        pids_where(|argv| argv.first().is_some_and(|a| Path::new(a) == bin))
    }

    /// One pid per daemon: the `nydusd` processes whose parent is not a `nydusd` process.
    pub fn daemon_pids(&self) -> Vec<i32> {
        let all = self.nydusd_pids();
        all.iter().copied().filter(|p| !parent_pid(*p).is_some_and(|pp| all.contains(&pp))).collect()
    }

    /// `killall -9 nydusd`: one SIGKILL to each process running this stack's `nydusd`, in pid
    /// order; waits until those processes are gone and returns their pids.
    pub fn killall_nydusd(&self) -> Vec<i32> {
        let pids = self.nydusd_pids();
        for p in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGKILL);
        }
        self.wait_for("the killed nydusd processes to be gone", Duration::from_secs(10), || {
            // A killed process left unreaped is a zombie, whose cmdline is empty: not listed.
            let now = self.nydusd_pids();
            pids.iter().all(|p| !now.contains(p))
        });
        pids
    }

    /// Mount points under the root that carry more than one mount (one stacked on another).
    pub fn stacked_mounts(&self) -> Vec<PathBuf> {
        let mut points: Vec<PathBuf> = self.mounts().iter().filter_map(|l| mountinfo_point(l)).collect();
        points.sort();
        let mut out: Vec<PathBuf> = points.windows(2).filter(|w| w[0] == w[1]).map(|w| w[0].clone()).collect();
        out.dedup();
        out
    }

    /// `GET path` on a daemon's api socket, as JSON.
    pub fn daemon_api(sock: &Path, path: &str) -> serde_json::Value {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(erofsd::daemon::client::call_json::<serde_json::Value>(sock, hyper::Method::GET, path, None::<&()>))
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e:#}", sock.display()))
    }

    /// Everything worth reading when a step failed: mounts, processes, logs (tails).
    pub fn diagnostics(&self) -> String {
        let mut s = format!("--- mounts under {} ---\n{}\n", self.root.display(), self.mounts().join("\n"));
        s += &format!("--- nydusd pids: {:?}\n", self.nydusd_pids());
        s += &format!("--- snapshotter log ---\n{}\n", tail_str(&self.snapshotter_log()));
        for (p, t) in self.erofsd_logs() {
            s += &format!("--- {} ---\n{}\n", p.display(), tail_str(&t));
        }
        s += &format!("--- containerd log ---\n{}\n", tail_str(&std::fs::read_to_string(self.path("containerd.log")).unwrap_or_default()));
        s
    }

    /// Waits until `cond` holds (up to `limit`), else panics with `what` and the diagnostics.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + limit;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", self.diagnostics());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `image` with no container and no image left: `nerdctl rmi`, and the snapshotter's
    /// daemons for it gone.
    pub fn remove_images(&self, images: &[&str]) {
        let mut args = vec!["rmi", "--force"];
        args.extend_from_slice(images);
        self.nerdctl_ok(&args);
    }

    // ------------------------------------------------------------ images

    /// `127.0.0.1:PORT/REPO:TAG`: the front's port when there is one.
    pub fn image_ref(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.registry_host())
    }

    /// `127.0.0.1:PORT` of the registry as clients see it (the front, when there is one).
    pub fn registry_host(&self) -> String {
        match &self.front {
            Some((_, f)) => f.addr.to_string(),
            None => self.registry.host_port(),
        }
    }

    /// The fault-injecting front (`Options::with_front`).
    pub fn front(&self) -> &FaultFront {
        &self.front.as_ref().expect("the stack was started without Options::with_front").1
    }

    /// Deletes blob `sha256:<hex>` from repository `repo` (the registry has deletes enabled).
    pub fn delete_blob(&self, repo: &str, hex: &str) {
        let url = format!("{}/v2/{repo}/blobs/sha256:{hex}", self.registry.url);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let status = rt.block_on(async { push_client(None).delete(&url).send().await.unwrap().status() });
        assert_eq!(status.as_u16(), 202, "DELETE {url}");
    }

    /// Pushes the nydus fixture `name` (tests/fixtures/nydus/NAME: image.boot + blobs/<id>)
    /// as nydusify pushes a RAFS v6 image; returns its reference. See [`push_nydus_image`].
    pub fn push_nydus_fixture(&self, name: &str, repo: &str) -> String {
        let dir = fixtures::nydus().join(name);
        let boot = std::fs::read(dir.join("image.boot")).unwrap();
        let mut blobs: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("blobs"))
            .unwrap()
            .flatten()
            .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
            .collect();
        blobs.sort();
        let layers = if name == "targz-ref" {
            // zran (nydusify --oci-ref): the manifest's blob layer is the nydus blob holding the
            // zran index, annotated with the original layer it refers to; the data the
            // bootstrap's device names is the original gzip layer itself, pushed to the same
            // repository (it is the source image's layer). The fixture's gzip layer is
            // tree.tar.gz, blob id = its sha256.
            let original = std::fs::read(fixtures::nydus().join("tree.tar.gz")).unwrap();
            let orig_hex = hex::encode(Sha256::digest(&original));
            let (meta, rest): (Vec<_>, Vec<_>) = blobs.into_iter().partition(|(id, _)| *id != orig_hex);
            assert_eq!(rest.len(), 1, "targz-ref: the original layer {orig_hex} is one of the fixture's blobs");
            let mut out = vec![BlobLayer { data: original, reference: None, in_manifest: false }];
            for (_, data) in meta {
                out.push(BlobLayer { data, reference: Some(format!("sha256:{orig_hex}")), in_manifest: true });
            }
            out
        } else {
            blobs.into_iter().map(|(_, data)| BlobLayer { data, reference: None, in_manifest: true }).collect()
        };
        push_nydus_image(&self.registry, repo, "nydus", &boot, &layers);
        self.image_ref(repo, "nydus")
    }

    /// A plain OCI image of the nydus fixtures' source tree (the same files the nydus images
    /// hold): `umoci` makes a layout with tree.tar as its one layer, `skopeo copy` pushes it.
    pub fn push_plain_oci(&self, repo: &str) -> String {
        let work = self.path("images/plain");
        std::fs::create_dir_all(&work).unwrap();
        let tar = work.join("tree.tar");
        let gz = std::fs::File::open(fixtures::nydus().join("tree.tar.gz")).unwrap();
        std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut std::fs::File::create(&tar).unwrap()).unwrap();
        let layout = work.join("layout");
        let image = format!("{}:plain", layout.display());
        cli::run_ok("umoci", ["init", "--layout", layout.to_str().unwrap()]);
        cli::run_ok("umoci", ["new", "--image", &image]);
        cli::run_ok("umoci", ["raw", "add-layer", "--image", &image, tar.to_str().unwrap()]);
        // Pushed to the registry itself (the front relays no request bodies).
        let dest = format!("docker://{}/{repo}:plain", self.registry.host_port());
        cli::run_ok("skopeo", ["copy", "--dest-tls-verify=false", &format!("oci:{image}"), &dest]);
        self.image_ref(repo, "plain")
    }

    /// `erofsd convert` of the OCI fixture's `base` tag (the debootstrap rootfs, one layer)
    /// pushed straight into the registry; returns its reference.
    pub fn push_converted_rootfs(&self, repo: &str) -> String {
        let oci = fixtures::fixture("oci");
        let src = format!("oci:{}:base", oci.join("layout").display());
        let dst = format!("http://{}/{repo}:erofsd", self.registry.host_port());
        let work = self.path("images");
        cli::run_ok(cli::erofsd_bin(), ["convert", "--quiet", "--work-dir", work.to_str().unwrap(), &src, &dst]);
        self.image_ref(repo, "erofsd")
    }

    /// Bytes of blob `sha256:<hex>` the registry served, and in how many GETs.
    pub fn blob_bytes_served(&self, hex: &str) -> (u64, u64) {
        let gets = self.registry.blob_gets(hex);
        (gets.iter().sum(), gets.len() as u64)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // Containers first (a running one keeps its shim and mounts), while containerd is up.
        if self.containerd.is_some() {
            let out = self.nerdctl(&["ps", "-aq"]);
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f"];
                args.extend(ids.iter().map(String::as_str));
                let _ = self.nerdctl(&args);
            }
        }
        if let Some(mut c) = self.containerd.take() {
            stop(&mut c);
        }
        if let Some(mut c) = self.snapshotter.take() {
            stop(&mut c);
        }
        // Whatever is left that runs from or under the root: daemons, shims, containers.
        let root = self.root.to_string_lossy().into_owned();
        for _ in 0..3 {
            let pids = pids_where(|argv| argv.iter().any(|a| a.contains(&root)));
            if pids.is_empty() {
                break;
            }
            for p in pids {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        // Deepest mount first; lazily, so a busy one cannot keep the root alive.
        let mut points: Vec<PathBuf> = self.mounts().iter().filter_map(|l| mountinfo_point(l)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
        if std::env::var_os("EROFSD_KEEP_STACK").is_some() {
            // For a developer reading the logs after a failure; mounts and processes are gone.
            if let Some(d) = self._root.take() {
                eprintln!("EROFSD_KEEP_STACK: kept {}", d.keep().display());
            }
        }
        if let Some(d) = self._root.take() {
            let path = d.path().to_path_buf();
            if let Err(e) = d.close() {
                eprintln!("removing {}: {e}", path.display());
            }
        }
    }
}

/// SIGTERM, up to 10 s to exit, then SIGKILL.
fn stop(c: &mut Child) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Pids (other than ours) whose argv satisfies `f`.
pub fn pids_where(f: impl Fn(&[String]) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if pid == me {
            continue;
        }
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else { continue };
        let argv: Vec<String> = raw.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        if !argv.is_empty() && f(&argv) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// Every process in uninterruptible sleep (state D): pid, command line and kernel stack.
pub fn stuck_processes() -> String {
    let mut out = String::new();
    // Every pid, not pids_where: a process stuck in execve has an empty cmdline.
    let pids = std::fs::read_dir("/proc").into_iter().flatten().flatten().filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok());
    for p in pids {
        let status = std::fs::read_to_string(format!("/proc/{p}/status")).unwrap_or_default();
        if status.lines().any(|l| l.starts_with("State:") && l.contains("D (")) {
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            let stack = std::fs::read_to_string(format!("/proc/{p}/stack")).unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
            out += &format!("pid {p} ({}): {}\n{stack}\n", comm.trim(), String::from_utf8_lossy(&cmdline).replace('\0', " "));
        }
    }
    out
}

/// The parent pid of `pid` (from /proc/PID/stat).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// mountinfo lines whose mount point is `root` or below.
pub fn mounts_under(root: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| mountinfo_point(l).is_some_and(|p| p.starts_with(root)))
        .map(str::to_string)
        .collect()
}

/// The mount point of a mountinfo line (field 5, octal escapes undone).
pub fn mountinfo_point(line: &str) -> Option<PathBuf> {
    erofsd::frontend::fanotify::sysmount::mountinfo_line(line).map(|(p, _)| p)
}

/// The filesystem type of a mountinfo line (first field after the ` - ` separator).
pub fn mountinfo_fstype(line: &str) -> Option<String> {
    erofsd::frontend::fanotify::sysmount::mountinfo_line(line).map(|(_, t)| t)
}

fn tail_str(s: &str) -> String {
    cli::tail(s.as_bytes())
}

/// One data blob of a nydus image.
pub struct BlobLayer {
    pub data: Vec<u8>,
    /// `containerd.io/snapshot/nydus-ref`: the original OCI layer a zran blob indexes.
    pub reference: Option<String>,
    /// false: pushed to the repository but not a manifest layer (a zran image's original layer).
    pub in_manifest: bool,
}

/// The bootstrap layer nydusify pushes: a gzip'd tar holding `image/image.boot`; returns the
/// compressed bytes and the sha256 of the uncompressed tar (its diff_id).
pub fn bootstrap_layer(boot: &[u8]) -> (Vec<u8>, String) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o755);
    h.set_size(0);
    tar.append_data(&mut h, "image", std::io::empty()).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(boot.len() as u64);
    tar.append_data(&mut h, "image/image.boot", boot).unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// OCI architecture name of this machine.
pub fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Pushes a RAFS v6 image as nydusify does (nydus-snapshotter's pkg/converter `convertManifest`
/// and `MergeLayers`): an OCI manifest whose layers are the data blobs (media type
/// `application/vnd.oci.image.layer.nydus.blob.v1`, annotation `containerd.io/snapshot/nydus-blob`,
/// and `nydus-ref` for zran), then last the bootstrap layer (tar+gzip with `image/image.boot`,
/// annotations `nydus-bootstrap` and `nydus-fs-version: "6"`); the config's diff_ids are each
/// blob's own digest and the bootstrap tar's digest, with a "Nydus Bootstrap Layer" history entry.
pub fn push_nydus_image(reg: &Registry, repo: &str, tag: &str, boot: &[u8], blobs: &[BlobLayer]) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = push_client(None);
    let url = reg.url.clone();
    rt.block_on(async {
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for b in blobs {
            let hex = push_blob(&client, &url, repo, &b.data, None).await;
            if !b.in_manifest {
                continue;
            }
            let mut ann = serde_json::json!({"containerd.io/snapshot/nydus-blob": "true"});
            if let Some(r) = &b.reference {
                ann["containerd.io/snapshot/nydus-ref"] = r.clone().into();
            }
            layers.push(serde_json::json!({"mediaType": NYDUS_BLOB, "digest": format!("sha256:{hex}"), "size": b.data.len(), "annotations": ann}));
            diff_ids.push(format!("sha256:{hex}"));
        }
        let (gz, diff_id) = bootstrap_layer(boot);
        let hex = push_blob(&client, &url, repo, &gz, None).await;
        layers.push(serde_json::json!({
            "mediaType": OCI_LAYER_GZIP, "digest": format!("sha256:{hex}"), "size": gz.len(),
            "annotations": {
                "containerd.io/snapshot/nydus-bootstrap": "true",
                "containerd.io/snapshot/nydus-fs-version": "6",
            }
        }));
        diff_ids.push(diff_id);
        let config = serde_json::json!({
            "architecture": oci_arch(), "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "Nydus Converter", "comment": "Nydus Bootstrap Layer"}],
        });
        let config = serde_json::to_vec(&config).unwrap();
        let chex = push_blob(&client, &url, repo, &config, None).await;
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": format!("sha256:{chex}"), "size": config.len()},
            "layers": layers,
        });
        push_manifest(&client, &url, repo, tag, OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap(), None).await;
    });
}

/// `tree.sha256` of the nydus fixtures: path (without the leading `./`) -> sha256 hex.
pub fn nydus_tree_sums() -> HashMap<String, String> {
    std::fs::read_to_string(fixtures::nydus().join("tree.sha256"))
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, p)| (p.trim_start_matches("./").to_string(), h.to_string()))
        .collect()
}
