//! Prefetch end to end: `erofsd build --prefetch-list` layouts, and the daemon's access traces,
//! `erofsd trace export`, and background prefetch (`trace`, `blobs`, bandwidth cap, demand
//! first) through the fanotify front-end on the host kernel.
//! The fanotify tests need root and a 6.14+ kernel with EROFS file-backed mounts (the priority
//! test also docker-registry and the `oci` fixture); they skip loudly otherwise (and fail
//! under CI=true).

mod build_common;
mod common;
mod fanotify_harness;

use std::path::Path;
use std::time::{Duration, Instant};

use common::registry::{require_registry, Fault, FaultFront, Registry};
use build_common::noise;
use common::{cli, fixtures};
use erofs::reader::ExtentKind;
use fanotify_harness::{open_without_readahead, require_fanotify, Daemon, MountDir};


/// `n` files `dir/fNN` of `size` noise bytes each, plus small and nested files.
fn make_tree(src: &Path, n: usize, size: usize) {
    std::fs::create_dir_all(src.join("etc/deep")).unwrap();
    for i in 0..n {
        std::fs::write(src.join(format!("f{i:02}")), noise(size, i as u64 + 1)).unwrap();
    }
    std::fs::write(src.join("etc/small.conf"), b"inline=yes\n").unwrap();
    std::fs::write(src.join("etc/deep/lib.so"), noise(5 << 16, 99)).unwrap(); // whole 64 KiB groups
}

/// Blob offset of the first chunk of `path` in the image at `out`.
fn first_offset(img: &build_common::Opened, path: &str) -> u64 {
    let ino = img.img.lookup(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let map = img.img.data_map(&ino).unwrap();
    match map.iter().find_map(|e| match e.kind {
        ExtentKind::Chunk { offset, .. } => Some(offset),
        _ => None,
    }) {
        Some(o) => o,
        None => panic!("{path} has no chunk"),
    }
}

fn assert_roundtrip(out: &Path, src: &Path) {
    let img = build_common::open(out);
    let mut files = 0;
    for rel in fanotify_harness::regular_files(src) {
        let ino = img.img.lookup(rel.to_str().unwrap()).unwrap();
        assert!(img.read_content(&ino) == std::fs::read(src.join(&rel)).unwrap(), "{} differs", rel.display());
        files += 1;
    }
    assert!(files >= 10);
}

#[test]
fn prefetch_list_puts_listed_files_first_and_round_trips() {
    let s = fixtures::scratch("prefetch_list_puts_listed_files_first_and_round_trips");
    let src = s.path().join("src");
    make_tree(&src, 10, 300_000);
    let list = s.path().join("hot.list");
    // Comments, a leading slash or not, a duplicate, a small (inline) file, a missing file.
    std::fs::write(&list, "# startup set\n/f07\nf03\n/etc/deep/lib.so\n/f07\n/etc/small.conf\n/not/there\n").unwrap();
    let plain = s.path().join("plain");
    cli::erofsd_build(&[&src], &plain, &[]);
    let hot = s.path().join("hot");
    let out = cli::erofsd_build(&[&src], &hot, &["--prefetch-list", list.to_str().unwrap()]);
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));

    let img = build_common::open(&hot);
    let (a, b, c) = (first_offset(&img, "f07"), first_offset(&img, "f03"), first_offset(&img, "etc/deep/lib.so"));
    assert_eq!(a, 0, "the first listed file starts the blob");
    assert!(a < b && b < c, "list order: {a} {b} {c}");
    for i in [0, 1, 2, 4, 5, 6, 8, 9] {
        let o = first_offset(&img, &format!("f{i:02}"));
        assert!(o > c, "unlisted f{i:02} at {o} comes after the listed files (last at {c})");
    }
    // Same address-space size and the same bytes as without a list.
    let plain_img = build_common::open(&plain);
    assert_eq!(img.img.blobs().unwrap()[0].uncompressed_size, plain_img.img.blobs().unwrap()[0].uncompressed_size);
    assert_roundtrip(&hot, &src);
    // The image's own trace: the listed files' groups, first listed first.
    let t = erofsd::core::trace::Trace::load(&hot.join("prefetch.trace")).unwrap();
    assert_eq!(t.entries.first().map(|e| e.1), Some(0));
    assert!(!t.entries.is_empty());

    // A tar source is reordered the same way.
    let tar_path = s.path().join("layer.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    b.append_dir_all(".", &src).unwrap();
    b.finish().unwrap();
    drop(b);
    let from_tar = s.path().join("fromtar");
    cli::erofsd_build(&[&tar_path], &from_tar, &["--prefetch-list", list.to_str().unwrap()]);
    let timg = build_common::open(&from_tar);
    assert_eq!(first_offset(&timg, "f07"), 0);
    assert!(first_offset(&timg, "f03") < first_offset(&timg, "f00"));
    assert_roundtrip(&from_tar, &src);

    // Bad lists are clear errors.
    std::fs::write(&list, "/../etc/passwd\n").unwrap();
    let bad = cli::run(cli::erofsd_bin(), ["build".as_ref(), src.as_os_str(), "-o".as_ref(), s.path().join("bad").as_os_str(), "--prefetch-list".as_ref(), list.as_os_str()]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains(".."), "{}", String::from_utf8_lossy(&bad.stderr));
}

fn mount_with(d: &Daemon, image: &Path, mnt: &Path, extra: &[&str]) {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["mount".as_ref(), image.as_os_str(), mnt.as_os_str(), "--api-socket".as_ref(), d.socket.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let out = cli::run(cli::erofsd_bin(), args);
    assert!(out.status.success(), "erofsd mount failed: {}\nlog:\n{}", cli::tail(&out.stderr), d.log_text());
}

/// Waits until the mount's prefetch says it is done; returns how long that took.
fn wait_prefetch_done(d: &Daemon, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let m = d.metrics();
        let p = &m["frontend"]["prefetch"];
        if p.as_object().is_some_and(|o| !o.is_empty() && o.values().all(|v| v["done"] == true)) {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "prefetch not done after {limit:?}: {p}\nlog:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn fanotify_trace_recorded_exported_rebuilt_and_prefetched() {
    let test = "fanotify_trace_recorded_exported_rebuilt_and_prefetched";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    // 12 files of 512 KiB = 8 groups of 64 KiB each, every file starting on a group boundary.
    let src = s.path().join("src");
    make_tree(&src, 12, 512 << 10);
    let img_a = s.path().join("a");
    let geometry = ["--group-size", "64K", "--chunk-size", "64K"];
    cli::erofsd_build(&[&src], &img_a, &geometry);

    // Run 1: read three files; the daemon records the groups it fills on demand.
    let run1 = s.path().join("run1");
    std::fs::create_dir_all(&run1).unwrap();
    let mut d = Daemon::start(&run1, false);
    let mnt = MountDir::new(s.path(), "mnt1");
    d.mount(&img_a, &mnt.0);
    let hot = ["f10", "f03", "f07"];
    for f in hot {
        assert!(std::fs::read(mnt.0.join(f)).unwrap() == std::fs::read(src.join(f)).unwrap());
    }
    d.umount(&mnt.0);
    d.stop();
    let id_a = erofsd::core::images::ImageStore::new().load_dir(&img_a).unwrap().id.clone();
    let trace_a = d.cache.join("state/trace").join(format!("{id_a}.trace"));
    let t = erofsd::core::trace::Trace::load(&trace_a).unwrap_or_else(|e| panic!("{e:#}\nlog:\n{}", d.log_text()));
    eprintln!("run 1 trace: {} groups", t.entries.len());
    assert!(t.entries.len() >= 3);

    // Export: the files of the traced groups, first access first.
    let list = s.path().join("hot.list");
    let out = cli::run_ok(
        cli::erofsd_bin(),
        ["trace".as_ref(), "export".as_ref(), img_a.as_os_str(), "--cache-dir".as_ref(), d.cache.as_os_str(), "-o".as_ref(), list.as_os_str()],
    );
    let text = std::fs::read_to_string(&list).unwrap();
    eprintln!("exported list:\n{text}{}", String::from_utf8_lossy(&out.stderr));
    let files: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let want: Vec<String> = hot.iter().map(|h| format!("/{h}")).collect();
    assert_eq!(files, want, "exactly the files read, in read order (files are group-aligned here)");

    // Rebuild with the list; the trace file itself is accepted as a list too.
    let img_b = s.path().join("b");
    let mut args = geometry.to_vec();
    args.extend(["--prefetch-list", list.to_str().unwrap()]);
    cli::erofsd_build(&[&src], &img_b, &args);
    let img_c = s.path().join("c");
    let mut args = geometry.to_vec();
    args.extend(["--prefetch-list", trace_a.to_str().unwrap()]);
    cli::erofsd_build(&[&src], &img_c, &args);
    let (ob, oc) = (build_common::open(&img_b), build_common::open(&img_c));
    for h in hot {
        assert_eq!(first_offset(&ob, h), first_offset(&oc, h), "{h}: list and trace give the same layout");
        assert!(first_offset(&ob, h) < (files.len() as u64) * (512 << 10), "{h} is in the front of the blob");
    }
    let b_trace = erofsd::core::trace::Trace::load(&img_b.join("prefetch.trace")).unwrap();
    let want_groups = b_trace.entries.len() as u64;
    assert_eq!(want_groups, files.len() as u64 * 8, "8 groups per listed file");

    // Run 2, cold cache, trace mode: exactly the listed files' groups come in before any read.
    let run2 = s.path().join("run2");
    std::fs::create_dir_all(&run2).unwrap();
    let d2 = Daemon::start(&run2, false);
    let mnt2 = MountDir::new(s.path(), "mnt2");
    mount_with(&d2, &img_b, &mnt2.0, &["--prefetch", "trace"]);
    let took = wait_prefetch_done(&d2, Duration::from_secs(60));
    let (pg, pb) = (d2.blobs_sum("prefetch_groups"), d2.blobs_sum("prefetch_bytes"));
    eprintln!("trace prefetch: {pg} groups, {pb} stored bytes in {took:.2?}");
    assert_eq!(pg, want_groups, "prefetched exactly the trace's groups");
    assert_eq!(d2.blobs_sum("groups"), want_groups, "and nothing else");
    let filled_before = d2.frontend("filled_allowed");
    for h in hot {
        assert!(std::fs::read(mnt2.0.join(h)).unwrap() == std::fs::read(src.join(h)).unwrap());
    }
    let filled = d2.frontend("filled_allowed") - filled_before;
    eprintln!(
        "reads after prefetch: {filled} events waited for a fill; groups fetched in all {} (read-ahead past the startup set included)",
        d2.blobs_sum("groups")
    );
    assert_eq!(filled, 0, "no read of the startup set waited for a fetch");
    assert_eq!(d2.frontend("denied"), 0);
    d2.umount(&mnt2.0);
}

#[test]
fn fanotify_blobs_mode_fills_the_whole_blob_and_drops_the_mark() {
    let test = "fanotify_blobs_mode_fills_the_whole_blob_and_drops_the_mark";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let src = s.path().join("src");
    make_tree(&src, 8, 1 << 20);
    let img = s.path().join("img");
    cli::erofsd_build(&[&src], &img, &[]);
    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    mount_with(&d, &img, &mnt.0, &["--prefetch", "blobs"]);
    let took = wait_prefetch_done(&d, Duration::from_secs(60));
    let m = d.metrics();
    eprintln!("blobs prefetch in {took:.2?}: {}", m["frontend"]["cache_files"]);
    let cf = m["frontend"]["cache_files"].as_object().unwrap().values().next().unwrap().clone();
    assert_eq!(cf["groups_ready"], cf["groups"], "every group is in the cache file");
    assert_eq!(cf["marked"], false, "a complete blob loses its mark");
    assert!(d.frontend("marks_removed") >= 1);
    assert_eq!(d.blobs_sum("prefetch_groups"), cf["groups"].as_u64().unwrap());
    let events = d.frontend("events");
    for f in fanotify_harness::regular_files(&src) {
        assert!(std::fs::read(mnt.0.join(&f)).unwrap() == std::fs::read(src.join(&f)).unwrap());
    }
    assert_eq!(d.frontend("events"), events, "no pre-content event after the mark is gone");
    d.umount(&mnt.0);
}

#[test]
fn fanotify_prefetch_bandwidth_cap_is_a_floor_on_time() {
    let test = "fanotify_prefetch_bandwidth_cap_is_a_floor_on_time";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let src = s.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("big"), noise(32 << 20, 5)).unwrap();
    let img = s.path().join("img");
    cli::erofsd_build(&[&src], &img, &[]);
    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    let t0 = Instant::now();
    mount_with(&d, &img, &mnt.0, &["--prefetch", "blobs", "--prefetch-bandwidth", "8M"]);
    wait_prefetch_done(&d, Duration::from_secs(60));
    let took = t0.elapsed();
    let bytes = d.blobs_sum("prefetch_bytes");
    eprintln!("{bytes} stored bytes prefetched at a cap of 8 MiB/s in {took:.2?}");
    assert!(bytes >= 32 << 20, "the whole (incompressible) blob was prefetched: {bytes}");
    // One 1 MiB piece may go at once; the other 31 MiB take >= 31/8 s = 3.875 s.
    assert!(took >= Duration::from_millis(3500), "the cap was not applied: {took:?}");
    d.umount(&mnt.0);
}

/// Priority end to end: images served from a registry behind a proxy that delays every request
/// by 300 ms, a whole-blob prefetch running, and a reader touching a far file the prefetch has
/// not reached: its read takes about one request, not a wait behind the prefetch.
#[test]
fn fanotify_on_demand_read_goes_ahead_of_a_slow_prefetch() {
    let test = "fanotify_on_demand_read_goes_ahead_of_a_slow_prefetch";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) || !require_registry(test) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let reg = Registry::start("", None);
    let layout = fixtures::fixture("oci").join("layout");
    cli::run_ok(
        cli::erofsd_bin(),
        ["convert", "-q", &format!("oci:{}:l3", layout.display()), &format!("http://{}/erofsd/rootfs:l3", reg.host_port())],
    );
    let front = rt.block_on(FaultFront::start(reg.host_port().parse().unwrap()));
    let delay = Duration::from_millis(300);
    front.set_always(Some(Fault::Delay(delay)));
    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    mount_with(&d, Path::new(&format!("{}/erofsd/rootfs:l3", front.url())), &mnt.0, &["--prefetch", "blobs"]);
    // Let the prefetch get going (it is one 1 MiB request at a time, each >= 300 ms).
    let t0 = Instant::now();
    while d.blobs_sum("prefetch_groups") == 0 {
        assert!(t0.elapsed() < Duration::from_secs(30), "prefetch did not start\nlog:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The last large file in walk order (far from the front of the blobs), never read.
    let expected = fixtures::fixture("oci").join("final/rootfs");
    let far = fanotify_harness::regular_files(&expected)
        .into_iter()
        .rev()
        .find(|f| std::fs::metadata(expected.join(f)).unwrap().len() > 1 << 20)
        .expect("a file over 1 MiB");
    let before = (d.blobs_sum("requests"), d.blobs_sum("prefetch_groups"));
    // No kernel read-ahead, so the read is one small range.
    let f = open_without_readahead(&mnt.0.join(&far));
    let mut buf = vec![0u8; 4096];
    let t1 = Instant::now();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, 0).unwrap();
    let took = t1.elapsed();
    let after = (d.blobs_sum("requests"), d.blobs_sum("prefetch_groups"));
    eprintln!(
        "on-demand read of {} during a prefetch: {took:.2?} (request delay {delay:?}); requests {} -> {}, prefetched groups {} -> {}",
        far.display(),
        before.0,
        after.0,
        before.1,
        after.1
    );
    assert!(buf[..] == std::fs::read(expected.join(&far)).unwrap()[..4096], "exact bytes");
    assert!(took >= delay, "the read took {took:?}: its range was already cached, so this run proves nothing");
    assert!(took < 2 * delay, "the read took {took:?}: it waited behind the prefetch");
    drop(f);
    d.umount(&mnt.0);
}
