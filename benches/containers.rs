//! Container start through a shaped registry: `scripts/bench-containers.sh` runs this with
//! `cargo bench --bench containers` and it PRINTS A TABLE (it asserts nothing).
//!
//! For each image, each row starts a fresh stack from the container test kit
//! (tests/common/containers.rs: its own registry, containerd, nydus-snapshotter with erofsd as
//! `nydusd`, nerdctl), pushes that row's form of the image unshaped, then shapes the registry's
//! traffic on loopback (tc htb, RATE, on the registry's source port, as scripts/bench-registry.sh
//! does) and puts toxiproxy in front of it (RTT_MS of added round trip: half each way). Every
//! client (nerdctl, containerd, the snapshotters, erofsd) then reaches the registry through
//! toxiproxy. Page cache dropped, one `nerdctl run --rm --net none IMAGE CMD`, timed from the
//! spawn of nerdctl to the container's first line of output.
//!
//! Rows: (a) containerd's overlayfs snapshotter, full pull; (b) stargz-snapshotter
//! (containerd-stargz-grpc, FUSE, lazy) on the eStargz form made by `ctr-remote image convert
//! --estargz --oci`; (c) nydus-snapshotter (fusedev driver, shared daemon) with erofsd, which
//! mounts kernel EROFS through fanotify, image made by `erofsd convert`; (d) the same with the
//! access trace (c) recorded copied into the daemon's cache dir and `fs_prefetch.enable` (erofsd's
//! `trace` prefetch); (e) nydusd itself in fusedev mode (FUSE), on a RAFS v6 image of the same
//! rootfs made by `nydus-image create` (one zstd blob, nydus's default 1 MiB chunks, pushed the
//! way nydusify pushes); (f) erofsd on that same RAFS v6 image: (e) and (f) compare the two
//! daemons on one image. (e) and (f) need the peer build (`scripts/container-deps.sh
//! --with-nydusd`: nydusd and nydus-image from nydus-rs on crates.io, or NYDUSD_REF and
//! NYDUS_IMAGE naming builds of them).
//!
//! Env: BENCH_IMAGES (rootfs,pystack), BENCH_ROWS (a,b,c,d,e,f), RATE (100mbit), RTT_MS (20),
//! NYDUSD_REF, NYDUS_IMAGE, BENCH_KEEP_LOGS (a directory: each row's stack logs are copied there).

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::containers::{go_bin, pids_where, Options, Stack};
use common::{cli, fixtures};

const SMALL_CMD: &str = "import json; print(json.dumps({'erofsd': [1, 2, 3]}, sort_keys=True))";
const SMALL_OUT: &str = "{\"erofsd\": [1, 2, 3]}";
const BIG_CMD: &str = "import torch, sklearn.ensemble, pandas, scipy.stats, matplotlib.pyplot, sympy, statsmodels.api, skimage.filters, astropy.units, django.db.models; print('ready')";

struct Image {
    name: &'static str,
    layout: PathBuf,
    tag: &'static str,
    cmd: Vec<String>,
    first_line: &'static str,
    /// Compressed bytes of the OCI image's layers (what a full pull moves).
    oci_bytes: u64,
    /// `erofsd convert` output (an OCI layout), made once per image.
    erofsd_layout: PathBuf,
    /// The RAFS v6 form for rows (e) and (f): `image.boot` and the blob (or why there is none).
    rafs: Result<PathBuf, String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Row {
    Overlay,
    Stargz,
    Erofsd,
    ErofsdTrace,
    Nydusd,
    ErofsdRafs,
}

impl Row {
    fn all() -> [Row; 6] {
        [Row::Overlay, Row::Stargz, Row::Erofsd, Row::ErofsdTrace, Row::Nydusd, Row::ErofsdRafs]
    }
    fn key(self) -> &'static str {
        match self {
            Row::Overlay => "a",
            Row::Stargz => "b",
            Row::Erofsd => "c",
            Row::ErofsdTrace => "d",
            Row::Nydusd => "e",
            Row::ErofsdRafs => "f",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Row::Overlay => "(a) overlayfs, full pull",
            Row::Stargz => "(b) stargz-snapshotter, eStargz (FUSE)",
            Row::Erofsd => "(c) nydus-snapshotter + erofsd (fanotify EROFS)",
            Row::ErofsdTrace => "(d) (c) + recorded trace prefetched",
            Row::Nydusd => "(e) nydus-snapshotter + nydusd (FUSE), RAFS v6",
            Row::ErofsdRafs => "(f) nydus-snapshotter + erofsd, (e)'s RAFS v6 image",
        }
    }
}

#[derive(Default, Clone)]
struct Measure {
    first: f64,
    total: f64,
    wire_bytes: u64,
    rss: u64,
    cpu: f64,
    note: String,
}

type Outcome = Result<Measure, String>;

fn main() {
    // `cargo test --benches` runs bench targets without `--bench`: nothing to do then.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("benches/containers.rs: a benchmark; run scripts/bench-containers.sh");
        return;
    }
    let rate = std::env::var("RATE").unwrap_or_else(|_| "100mbit".into());
    let rtt_ms: u64 = std::env::var("RTT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let rate_bps = parse_rate(&rate);
    let images_wanted = std::env::var("BENCH_IMAGES").unwrap_or_else(|_| "rootfs,pystack".into());
    let rows_wanted = std::env::var("BENCH_ROWS").unwrap_or_else(|_| "a,b,c,d,e,f".into());
    let rows: Vec<Row> = Row::all().into_iter().filter(|r| rows_wanted.split(',').any(|k| k.trim() == r.key())).collect();
    assert!(common::env::is_root(), "bench-containers: needs root (containerd, tc, mounts)");
    assert!(common::containers::require_stack("bench-containers"), "bench-containers: the container stack is missing (scripts/container-deps.sh)");

    let work = tempfile::Builder::new().prefix("ebc-").tempdir_in("/var/tmp").expect("work dir");
    let mut images = Vec::new();
    for name in images_wanted.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let rafs = rows.iter().any(|r| matches!(r, Row::Nydusd | Row::ErofsdRafs));
        images.push(prepare_image(name, work.path(), rafs));
    }

    let mut link = None;
    let mut results: Vec<ImageResults> = Vec::new();
    for img in &images {
        let mut rows_out = Vec::new();
        let mut trace: Option<PathBuf> = None;
        for &row in &rows {
            eprintln!("\n=== bench-containers: {} {} ===", img.name, row.label());
            let out = run_row(row, img, work.path(), &rate, rtt_ms, &mut trace, &mut link);
            match &out {
                Ok(m) => eprintln!("=== {} {}: first output {:.2} s, exit {:.2} s, {} B, rss {} B, cpu {:.2} s {}", img.name, row.key(), m.first, m.total, m.wire_bytes, m.rss, m.cpu, m.note),
                Err(e) => eprintln!("=== {} {}: {e}", img.name, row.key()),
            }
            rows_out.push((row, out));
        }
        results.push((img.name.to_string(), img.oci_bytes, rows_out));
    }
    print_tables(&results, &rate, rate_bps, rtt_ms, link, &images);
}

// ---------------------------------------------------------------- images

fn prepare_image(name: &str, work: &Path, rafs: bool) -> Image {
    let (layout, tag, code, first_line) = match name {
        "rootfs" => (fixtures::fixture("oci").join("layout"), "base", SMALL_CMD, SMALL_OUT),
        "pystack" => (fixtures::fixture("pystack").join("layout"), "app", BIG_CMD, "ready"),
        other => panic!("unknown image {other} (rootfs, pystack)"),
    };
    let oci_bytes = layout_layer_bytes(&layout, tag);
    let erofsd_layout = work.join(format!("{name}-erofsd"));
    eprintln!("bench-containers: erofsd convert {name} ({} MB of OCI layers)", oci_bytes / 1_000_000);
    let t0 = Instant::now();
    let wd = work.join("convert-work");
    std::fs::create_dir_all(&wd).unwrap();
    cli::run_ok(
        cli::erofsd_bin(),
        [
            "convert",
            "--quiet",
            "--work-dir",
            wd.to_str().unwrap(),
            &format!("oci:{}:{tag}", layout.display()),
            &format!("oci:{}:erofsd", erofsd_layout.display()),
        ],
    );
    eprintln!("bench-containers: converted {name} in {:.1} s", t0.elapsed().as_secs_f64());
    let cmd = vec!["/usr/bin/python3".to_string(), "-c".to_string(), code.to_string()];
    let rafs = if rafs { make_rafs(name, &layout, tag, work) } else { Err("not asked for".into()) };
    Image { name: if name == "rootfs" { "rootfs" } else { "pystack" }, layout, tag, cmd, first_line, oci_bytes, erofsd_layout, rafs }
}

/// A peer program from `scripts/container-deps.sh --with-nydusd` (PEER_PREFIX/bin), or `env`.
fn peer_bin(env: &str, name: &str) -> Option<PathBuf> {
    match std::env::var_os(env) {
        Some(p) => Some(PathBuf::from(p)),
        None => Some(PathBuf::from(&common::containers::versions()["PEER_PREFIX"]).join("bin").join(name)),
    }
    .filter(|p| p.is_file())
}

/// The image's rootfs as a RAFS v6 image: `umoci unpack`, then `nydus-image create` (zstd, its
/// default chunk size) into `work/NAME-rafs` (`image.boot`, `blobs/<id>`).
fn make_rafs(name: &str, layout: &Path, tag: &str, work: &Path) -> Result<PathBuf, String> {
    let tool = peer_bin("NYDUS_IMAGE", "nydus-image").ok_or("not present (scripts/container-deps.sh --with-nydusd builds nydus-image)")?;
    let t0 = Instant::now();
    let bundle = work.join(format!("{name}-bundle"));
    let out = work.join(format!("{name}-rafs"));
    std::fs::create_dir_all(out.join("blobs")).unwrap();
    cli::run_ok("umoci", ["unpack", "--image", &format!("{}:{tag}", layout.display()), bundle.to_str().unwrap()]);
    let st = Command::new(&tool)
        .args(["create", "--type", "dir-rafs", "--fs-version", "6", "--compressor", "zstd", "--log-level", "warn", "--blob-dir"])
        .arg(out.join("blobs"))
        .arg("--bootstrap")
        .arg(out.join("image.boot"))
        .arg(bundle.join("rootfs"))
        .status()
        .map_err(|e| format!("{}: {e}", tool.display()))?;
    let _ = std::fs::remove_dir_all(&bundle);
    if !st.success() {
        return Err(format!("nydus-image create failed: {st}"));
    }
    eprintln!("bench-containers: nydus-image create {name} (RAFS v6) in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(out)
}

/// Pushes the RAFS v6 image at `dir` nydusify's way (blob layers, then the bootstrap layer).
fn push_rafs(s: &Stack, dir: &Path, repo: &str) -> Result<(), String> {
    let boot = std::fs::read(dir.join("image.boot")).map_err(|e| e.to_string())?;
    let mut layers = Vec::new();
    for e in std::fs::read_dir(dir.join("blobs")).map_err(|e| e.to_string())?.flatten() {
        let data = std::fs::read(e.path()).map_err(|e| e.to_string())?;
        layers.push(common::containers::BlobLayer { data, reference: None, in_manifest: true });
    }
    common::containers::push_nydus_image(&s.registry, repo, "rafs", &boot, &layers);
    Ok(())
}

/// Sum of the layer sizes of `tag` in an OCI layout.
fn layout_layer_bytes(layout: &Path, tag: &str) -> u64 {
    let manifest = layout_manifest(layout, tag);
    manifest["layers"].as_array().unwrap().iter().map(|l| l["size"].as_u64().unwrap()).sum()
}

fn layout_manifest(layout: &Path, tag: &str) -> serde_json::Value {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let desc = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(tag))
        .unwrap_or_else(|| panic!("no tag {tag} in {}", layout.display()));
    let hex = desc["digest"].as_str().unwrap().trim_start_matches("sha256:");
    serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap()).unwrap()
}

fn skopeo_push(src: &str, dst: &str) -> Result<(), String> {
    let out = cli::run("skopeo", ["copy", "-q", "--dest-tls-verify=false", src, dst]);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("skopeo copy {src} {dst}: {}", cli::tail(&out.stderr)))
    }
}

// ---------------------------------------------------------------- rows

fn stargz_bin() -> PathBuf {
    go_bin("containerd-stargz-grpc")
}

fn run_row(row: Row, img: &Image, work: &Path, rate: &str, rtt_ms: u64, trace: &mut Option<PathBuf>, link: &mut Option<f64>) -> Outcome {
    let mut stargz: Option<Stargz> = None;
    let mut opts = Options::shared();
    match row {
        Row::Overlay | Row::Erofsd => {}
        Row::Stargz => {
            if !stargz_bin().is_file() {
                return Err(format!("not available: {} missing (scripts/container-deps.sh builds it)", stargz_bin().display()));
            }
            let sz = Stargz::start(&work.join(format!("stargz-{}", img.name)))?;
            opts.containerd_toml = format!("\n[proxy_plugins.stargz]\n  type = \"snapshot\"\n  address = \"{}\"\n", sz.sock.display());
            stargz = Some(sz);
        }
        Row::ErofsdTrace => {
            if trace.is_none() {
                return Err("no trace: row (c) did not record one".into());
            }
            // threads_count as in the snapshotter's reference fusedev config.
            opts.nydusd_config = Some(serde_json::json!({
                "fs_prefetch": {"enable": true, "threads_count": 8, "merging_size": 1048576, "prefetch_all": false}
            }));
        }
        Row::Nydusd => {
            img.rafs.as_ref().map_err(|e| format!("no RAFS v6 image: {e}"))?;
            let nydusd = peer_bin("NYDUSD_REF", "nydusd").ok_or("not present (scripts/container-deps.sh --with-nydusd builds nydusd, or set NYDUSD_REF)")?;
            // nydusd raises RLIMIT_NOFILE to 1,000,000 unless told `--rlimit-nofile 0`, and
            // fails to start where the hard limit is lower and cannot be raised (containers);
            // the snapshotter passes no such flag. argv[0] stays the snapshotter's.
            let wrapper = work.join("nydusd-peer");
            std::fs::write(&wrapper, format!("#!/bin/bash\nexec -a \"$0\" '{}' \"$@\" --rlimit-nofile 0\n", nydusd.display())).unwrap();
            std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            opts.nydusd_bin = Some(wrapper);
        }
        Row::ErofsdRafs => {
            img.rafs.as_ref().map_err(|e| format!("no RAFS v6 image: {e}"))?;
        }
    }
    let test = format!("bench-{}-{}", img.name, row.key());
    let s = Stack::start(&test, opts).ok_or("stack did not start")?;
    let direct = s.registry.host_port();
    let repo = format!("bench/{}", img.name);

    // The row's form of the image, pushed unshaped.
    let t0 = Instant::now();
    let tag = match row {
        Row::Overlay => {
            skopeo_push(&format!("oci:{}:{}", img.layout.display(), img.tag), &format!("docker://{direct}/{repo}:oci"))?;
            "oci"
        }
        Row::Stargz => {
            skopeo_push(&format!("oci:{}:{}", img.layout.display(), img.tag), &format!("docker://{direct}/{repo}:oci"))?;
            make_estargz(&s, &format!("{direct}/{repo}:oci"), &format!("{direct}/{repo}:esgz"))?;
            "esgz"
        }
        Row::Nydusd | Row::ErofsdRafs => {
            push_rafs(&s, img.rafs.as_ref().unwrap(), &repo)?;
            "rafs"
        }
        _ => {
            skopeo_push(&format!("oci:{}:erofsd", img.erofsd_layout.display()), &format!("docker://{direct}/{repo}:erofsd"))?;
            "erofsd"
        }
    };
    eprintln!("bench-containers: pushed {repo}:{tag} in {:.1} s", t0.elapsed().as_secs_f64());
    if row == Row::ErofsdTrace {
        // The trace (c) recorded, where every fuse-mode daemon of the snapshotter's cache work
        // dir looks for an image's trace when it mounts it: `<root>/cache/erofsd/traces`.
        let t = trace.as_ref().unwrap();
        let dst = s.snapshotter_root().join("cache/erofsd/traces").join(t.file_name().unwrap());
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(t, &dst).map_err(|e| format!("copying the trace to {}: {e}", dst.display()))?;
    }

    let shaper = Shaper::start(s.registry.port, rate, rtt_ms, &work.join(format!("toxi-{}-{}", img.name, row.key())))?;
    if link.is_none() {
        *link = Some(measure_link(&s, &shaper));
    }
    let image_ref = format!("127.0.0.1:{}/{repo}:{tag}", shaper.front_port);
    let (snapshotter, daemons) = match row {
        Row::Overlay => ("overlayfs", Daemons::Pid(s.containerd_pid().unwrap() as i32)),
        Row::Stargz => ("stargz", Daemons::Pid(stargz.as_ref().unwrap().child.id() as i32)),
        _ => ("nydus", Daemons::Argv0(s.path("bin/nydusd"))),
    };
    let result = timed_run(&s, &shaper, snapshotter, &image_ref, &img.cmd, img.first_line, &daemons);
    drop(shaper);
    let mut result = result?;

    match row {
        Row::Erofsd => {
            // Removing the image unmounts it: the daemon saves the access trace.
            let _ = s.nerdctl(&["rmi", "--force", &image_ref]);
            let found = wait_for_file(&s.snapshotter_root().join("cache"), ".trace", Duration::from_secs(40));
            match found {
                Some(p) => {
                    let rel = p.strip_prefix(s.snapshotter_root()).unwrap();
                    let keep = work.join("trace").join(rel);
                    std::fs::create_dir_all(keep.parent().unwrap()).unwrap();
                    std::fs::copy(&p, &keep).unwrap();
                    if let Some(logs) = std::env::var_os("BENCH_KEEP_LOGS") {
                        // Beside the row's logs (keep_logs): what the start read, for offline study.
                        let d = PathBuf::from(logs).join(format!("bench-{}-c", img.name));
                        let _ = std::fs::create_dir_all(&d);
                        let _ = std::fs::copy(&p, d.join("access.trace"));
                    }
                    *trace = Some(keep);
                }
                None => result.note += " no trace saved after rmi;",
            }
        }
        Row::ErofsdTrace => {
            // erofsd's own summary line: "prefetch (Trace) of image …: N groups in …".
            let logs: String = s.erofsd_logs().into_iter().map(|(_, t)| t).collect();
            match logs.lines().find(|l| l.contains("prefetch (") && l.contains(" groups in ")) {
                Some(l) => {
                    let groups = l.split(": ").last().unwrap_or("").split(" groups").next().unwrap_or("?");
                    result.note += &format!(" {groups} groups prefetched;");
                }
                None => result.note += " no prefetch summary in the erofsd log;",
            }
        }
        _ => {}
    }
    keep_logs(&s, &test, stargz.as_ref());
    drop(s);
    drop(stargz);
    Ok(result)
}

/// eStargz form of `src` (in the registry) as `dst`: ctr-remote pull, convert, push, in a
/// containerd namespace of its own (the measured run uses the kit's).
fn make_estargz(s: &Stack, src: &str, dst: &str) -> Result<(), String> {
    let sock = s.path("containerd.sock");
    let a = sock.to_str().unwrap();
    let steps: [Vec<&str>; 3] = [
        vec!["images", "pull", "--plain-http", src],
        vec!["images", "convert", "--estargz", "--oci", src, dst],
        vec!["images", "push", "--plain-http", dst],
    ];
    for st in steps {
        let mut args = vec!["--address", a, "--namespace", "bench-prep"];
        args.extend(st.iter().copied());
        let out = cli::run("ctr-remote", &args);
        if !out.status.success() {
            return Err(format!("ctr-remote {st:?}: {}", cli::tail(&out.stderr)));
        }
    }
    Ok(())
}

fn keep_logs(s: &Stack, test: &str, stargz: Option<&Stargz>) {
    let Some(dir) = std::env::var_os("BENCH_KEEP_LOGS").map(PathBuf::from) else { return };
    let d = dir.join(test);
    let _ = std::fs::create_dir_all(&d);
    let _ = std::fs::write(d.join("snapshotter.log"), s.snapshotter_log());
    let _ = std::fs::copy(s.path("containerd.log"), d.join("containerd.log"));
    let _ = std::fs::write(d.join("registry.log"), s.registry.log_text());
    for (i, (_, t)) in s.erofsd_logs().into_iter().enumerate() {
        let _ = std::fs::write(d.join(format!("nydusd-{i}.log")), t);
    }
    if let Some(sz) = stargz {
        let _ = std::fs::copy(&sz.log, d.join("stargz.log"));
    }
}

fn wait_for_file(dir: &Path, suffix: &str, limit: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(p) = find_file(dir, suffix) {
            return Some(p);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn find_file(dir: &Path, suffix: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let ft = e.file_type().ok()?;
        if ft.is_dir() {
            if let Some(f) = find_file(&p, suffix) {
                return Some(f);
            }
        } else if p.to_string_lossy().ends_with(suffix) {
            return Some(p);
        }
    }
    None
}

// ---------------------------------------------------------------- stargz-snapshotter

struct Stargz {
    child: Child,
    root: PathBuf,
    sock: PathBuf,
    log: PathBuf,
}

impl Stargz {
    fn start(dir: &Path) -> Result<Stargz, String> {
        std::fs::create_dir_all(dir).unwrap();
        let root = dir.join("root");
        let sock = dir.join("stargz.sock");
        let log = dir.join("stargz.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(stargz_bin())
            .args(["--address", sock.to_str().unwrap(), "--root", root.to_str().unwrap(), "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("spawn containerd-stargz-grpc: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            if Instant::now() > deadline {
                return Err(format!("containerd-stargz-grpc did not open its socket: {}", std::fs::read_to_string(&log).unwrap_or_default()));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Stargz { child, root, sock, log })
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut points: Vec<PathBuf> =
            common::containers::mounts_under(&self.root).iter().filter_map(|l| common::containers::mountinfo_point(l)).collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in points {
            let _ = nix::mount::umount2(&p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

impl Drop for Stargz {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---------------------------------------------------------------- shaping

/// tc htb on lo for the registry's source port, and toxiproxy in front of the registry.
struct Shaper {
    toxi: Child,
    front_port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tc(args: &[&str]) -> Result<(), String> {
    let out = cli::run("tc", args);
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("tc {args:?}: {}", cli::tail(&out.stderr)))
    }
}

impl Shaper {
    fn start(reg_port: u16, rate: &str, rtt_ms: u64, dir: &Path) -> Result<Shaper, String> {
        let _ = Command::new("tc").args(["qdisc", "del", "dev", "lo", "root"]).stderr(Stdio::null()).status();
        tc(&["qdisc", "add", "dev", "lo", "root", "handle", "1:", "htb", "default", "99"])?;
        tc(&["class", "add", "dev", "lo", "parent", "1:", "classid", "1:1", "htb", "rate", rate, "ceil", rate])?;
        let port = reg_port.to_string();
        tc(&["filter", "add", "dev", "lo", "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip", "sport", &port, "0xffff", "flowid", "1:1"])?;
        std::fs::create_dir_all(dir).unwrap();
        let api = free_port();
        let front = free_port();
        let cfg = dir.join("proxies.json");
        let proxies = serde_json::json!([{"name": "registry", "listen": format!("127.0.0.1:{front}"), "upstream": format!("127.0.0.1:{reg_port}"), "enabled": true}]);
        std::fs::write(&cfg, serde_json::to_vec(&proxies).unwrap()).unwrap();
        let logf = std::fs::File::create(dir.join("toxiproxy.log")).unwrap();
        let toxi = Command::new(go_bin("toxiproxy-server"))
            .args(["-host", "127.0.0.1", "-port", &api.to_string(), "-config", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("spawn toxiproxy-server: {e}"))?;
        let sh = Shaper { toxi, front_port: front };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", front)).is_err() || std::net::TcpStream::connect(("127.0.0.1", api)).is_err() {
            if Instant::now() > deadline {
                return Err("toxiproxy did not listen".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let half = (rtt_ms / 2).to_string();
        let host = format!("http://127.0.0.1:{api}");
        for (name, dirflag) in [("lat_down", "--downstream"), ("lat_up", "--upstream")] {
            let out = cli::run(
                go_bin("toxiproxy-cli"),
                ["-h", &host, "toxic", "add", "-t", "latency", "-n", name, "-a", &format!("latency={half}"), dirflag, "registry"],
            );
            if !out.status.success() {
                return Err(format!("toxiproxy-cli toxic add {name}: {}{}", cli::tail(&out.stdout), cli::tail(&out.stderr)));
            }
        }
        Ok(sh)
    }

    /// Bytes sent through the shaped class so far (registry to its clients, headers included).
    fn class_bytes(&self) -> u64 {
        let out = Command::new("tc").args(["-s", "class", "show", "dev", "lo", "classid", "1:1"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        // " Sent 12345 bytes 67 pkt ..."
        text.split_whitespace().skip_while(|w| *w != "Sent").nth(1).and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        let _ = Command::new("tc").args(["qdisc", "del", "dev", "lo", "root"]).stderr(Stdio::null()).status();
        let _ = self.toxi.kill();
        let _ = self.toxi.wait();
    }
}

/// What the shaping gives: a 16 MB blob fetched through toxiproxy, in Mbit/s.
fn measure_link(s: &Stack, sh: &Shaper) -> f64 {
    let data = common::registry::test_bytes(16_000_000, 7);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = common::registry::push_client(None);
    let url = s.registry.url.clone();
    let hex = rt.block_on(common::registry::push_blob(&client, &url, "bench/link", &data, None));
    let t0 = Instant::now();
    let out = cli::run("curl", ["-sf", "-o", "/dev/null", &format!("http://127.0.0.1:{}/v2/bench/link/blobs/sha256:{hex}", sh.front_port)]);
    let secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        return 0.0;
    }
    data.len() as f64 * 8.0 / secs / 1e6
}

// ---------------------------------------------------------------- one timed run

enum Daemons {
    Pid(i32),
    /// Every process whose argv[0] is this path (erofsd as `nydusd`: supervisor and worker).
    Argv0(PathBuf),
}

impl Daemons {
    fn pids(&self) -> Vec<i32> {
        match self {
            Daemons::Pid(p) => vec![*p],
            Daemons::Argv0(bin) => pids_where(|argv| argv.first().is_some_and(|a| Path::new(a) == bin)),
        }
    }
}

/// utime + stime ticks of a process.
fn cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After "pid (comm)": state=0, ppid=1, ... utime=11, stime=12.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// A `/proc/PID/status` field in kB, as bytes.
fn status_bytes(pid: i32, field: &str) -> Option<u64> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let l = st.lines().find(|l| l.starts_with(field))?;
    Some(l.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// VmHWM (peak resident set) of a process, bytes.
fn peak_rss(pid: i32) -> Option<u64> {
    status_bytes(pid, "VmHWM:")
}

#[derive(Default)]
struct Samples {
    /// pid -> (ticks when first seen or at start, last ticks, peak rss)
    procs: HashMap<i32, (u64, u64, u64)>,
    /// pid -> (RssAnon, RssFile) when its RSS was largest.
    split: HashMap<i32, (u64, u64, u64)>,
}

impl Samples {
    fn sample(&mut self, d: &Daemons, base: &HashMap<i32, u64>) {
        for p in d.pids() {
            let (Some(t), rss) = (cpu_ticks(p), peak_rss(p).unwrap_or(0)) else { continue };
            let e = self.procs.entry(p).or_insert((*base.get(&p).unwrap_or(&0), t, 0));
            e.1 = t;
            e.2 = e.2.max(rss);
            let now = status_bytes(p, "VmRSS:").unwrap_or(0);
            let sp = self.split.entry(p).or_insert((0, 0, 0));
            if now >= sp.0 {
                *sp = (now, status_bytes(p, "RssAnon:").unwrap_or(0), status_bytes(p, "RssFile:").unwrap_or(0));
            }
        }
    }
    fn cpu_secs(&self) -> f64 {
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        self.procs.values().map(|(b, l, _)| l.saturating_sub(*b)).sum::<u64>() as f64 / hz
    }
    fn rss(&self) -> u64 {
        self.procs.values().map(|v| v.2).sum()
    }
    /// Each process's peak RSS in MiB, largest first (when there is more than one).
    fn rss_split(&self) -> String {
        let mib = |b: u64| b as f64 / 1048576.0;
        let mut v: Vec<(u64, u64, u64)> =
            self.procs.iter().map(|(p, v)| (v.2, self.split.get(p).map_or(0, |s| s.1), self.split.get(p).map_or(0, |s| s.2))).collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        let parts: Vec<String> = v.iter().map(|(h, a, f)| format!("{:.1} (anon {:.1}, file {:.1})", mib(*h), mib(*a), mib(*f))).collect();
        format!(" peak RSS per process, MiB: {};", parts.join(" + "))
    }
}

fn drop_caches() {
    nix::unistd::sync();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn timed_run(s: &Stack, sh: &Shaper, snapshotter: &str, image_ref: &str, cmd: &[String], first_line: &str, d: &Daemons) -> Outcome {
    drop_caches();
    let base: HashMap<i32, u64> = d.pids().into_iter().filter_map(|p| Some((p, cpu_ticks(p)?))).collect();
    let bytes0 = sh.class_bytes();
    let mut args: Vec<&str> = vec!["--snapshotter", snapshotter, "run", "--rm", "--net", "none", image_ref];
    args.extend(cmd.iter().map(String::as_str));
    let errlog = s.path("nerdctl-run.err");
    let mut c = s.nerdctl_command(&args);
    c.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(std::fs::File::create(&errlog).unwrap());

    let samples = Arc::new(Mutex::new(Samples::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, base) = (samples.clone(), stop.clone(), base.clone());
        let d = match d {
            Daemons::Pid(p) => Daemons::Pid(*p),
            Daemons::Argv0(b) => Daemons::Argv0(b.clone()),
        };
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                samples.lock().unwrap().sample(&d, &base);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let t0 = Instant::now();
    let mut child = c.spawn().map_err(|e| format!("spawn nerdctl: {e}"))?;
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let n = out.read_line(&mut line).unwrap_or(0);
    let first = t0.elapsed().as_secs_f64();
    let mut rest = String::new();
    let _ = out.read_to_string(&mut rest);
    let status = child.wait().unwrap();
    let total = t0.elapsed().as_secs_f64();
    let wire_bytes = sh.class_bytes().saturating_sub(bytes0);
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let mut smp = samples.lock().unwrap();
    smp.sample(d, &base);
    let err = std::fs::read_to_string(&errlog).unwrap_or_default();
    if !status.success() || n == 0 || line.trim_end() != first_line {
        return Err(format!(
            "failed: {status}, first line {:?} (want {first_line:?})\n--- nerdctl stderr ---\n{}\n{}",
            line.trim_end(),
            cli::tail(err.as_bytes()),
            s.diagnostics()
        ));
    }
    Ok(Measure { first, total, wire_bytes, rss: smp.rss(), cpu: smp.cpu_secs(), note: smp.rss_split() })
}

// ---------------------------------------------------------------- the table

fn parse_rate(r: &str) -> f64 {
    let r = r.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = r.strip_suffix("gbit") {
        (n, 1e9)
    } else if let Some(n) = r.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = r.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        (r.trim_end_matches("bit"), 1.0)
    };
    num.parse::<f64>().unwrap_or(0.0) * mult
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// One image's name, OCI layer bytes and row outcomes.
type ImageResults = (String, u64, Vec<(Row, Outcome)>);

fn print_tables(results: &[ImageResults], rate: &str, rate_bps: f64, rtt_ms: u64, link: Option<f64>, images: &[Image]) {
    println!();
    println!(
        "erofsd container benchmark: registry on loopback shaped to {rate} (tc htb; measured {:.1} Mbit/s through the proxy) + {rtt_ms} ms round trip (toxiproxy); one cold run per row",
        link.unwrap_or(0.0)
    );
    for (name, oci_bytes, rows) in results {
        let img = images.iter().find(|i| i.name == name).unwrap();
        let limit = *oci_bytes as f64 * 8.0 / rate_bps;
        println!();
        println!(
            "image `{name}`: {} of OCI layers (physical limit at {rate}: {limit:.2} s); command: python3 -c \"{}\"",
            mb(*oci_bytes),
            img.cmd[2]
        );
        println!();
        println!("| row | first output | sooner than (a) | / physical limit | container exit | fetched (wire) | daemon peak RSS | daemon CPU | notes |");
        println!("|---|---|---|---|---|---|---|---|---|");
        let base = rows.iter().find(|(r, _)| *r == Row::Overlay).and_then(|(_, o)| o.as_ref().ok()).map(|m| m.first);
        for (row, o) in rows {
            match o {
                Ok(m) => {
                    let sooner = base.map(|b| format!("{:.1}x", b / m.first)).unwrap_or_else(|| "-".into());
                    println!(
                        "| {} | {:.2} s | {sooner} | {:.2} | {:.2} s | {} ({:.1} %) | {:.1} MiB | {:.2} s | {} |",
                        row.label(),
                        m.first,
                        m.first / limit,
                        m.total,
                        mb(m.wire_bytes),
                        100.0 * m.wire_bytes as f64 / *oci_bytes as f64,
                        m.rss as f64 / 1048576.0,
                        m.cpu,
                        m.note.trim()
                    );
                }
                Err(e) => {
                    let first = e.lines().next().unwrap_or("");
                    println!("| {} | {first} | | | | | | | |", row.label());
                }
            }
        }
    }
    println!();
    println!("daemon: containerd for (a) (nerdctl fetches, containerd unpacks), containerd-stargz-grpc for (b), every `nydusd` process (erofsd: supervisor + worker) for (c)-(e); peak RSS = sum of VmHWM, CPU = user+system during the run");
    println!("fetched = bytes the registry sent through the shaped class until the container exited (TCP/IP headers included); / physical limit = first output / (OCI layer bytes / rate)");
}
