//! The fanotify front-end on the host kernel, through the real daemon and `erofsd mount`:
//! byte-exact trees, partial reads fetch only what they touch, concurrent readers, mark
//! removal after a full fill, and no refetch after a daemon restart.
//! Needs root and a 6.14+ kernel with EROFS file-backed mounts; skips loudly otherwise
//! (fails under CI=true).

mod common;
mod fanotify_harness;

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use common::compare::{assert_trees_equal, Options};
use common::data::noise;
use common::{cli, fixtures};
use fanotify_harness::{drop_caches, open_without_readahead, regular_files, require_fanotify, Daemon, MountDir};

fn full_tree(test: &str, fixture: &str, build_args: &[&str], min_files: usize) {
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let src = fixtures::fixture(fixture).join("tree");
    let img = s.path().join("img");
    cli::erofsd_build(&[&src], &img, build_args);
    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);
    let r = assert_trees_equal(&src, &mnt.0, &Options::default());
    assert!(r.regular_files >= min_files, "only {} regular files compared", r.regular_files);
    let m = d.metrics();
    eprintln!("metrics: {m}");
    assert!(d.frontend("events") > 0, "the read went through pre-content events");
    assert_eq!(d.frontend("denied"), 0);
    assert!(d.cache_files_sum("groups_fetched") > 0);
    d.umount(&mnt.0);
}

#[test]
fn fanotify_alltypes_tree_byte_exact() {
    full_tree("fanotify_alltypes_tree_byte_exact", "alltypes", &[], 3900);
}

/// The same tree with lz4 groups: the fill path decodes the other codec.
#[test]
fn fanotify_alltypes_lz4_tree_byte_exact() {
    full_tree("fanotify_alltypes_lz4_tree_byte_exact", "alltypes", &["--compress", "lz4"], 3900);
}

#[test]
fn fanotify_rootfs_tree_byte_exact() {
    full_tree("fanotify_rootfs_tree_byte_exact", "rootfs", &[], 6000);
}


#[test]
fn fanotify_partial_read_fetches_only_touched_groups() {
    let test = "fanotify_partial_read_fetches_only_touched_groups";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let src = s.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let data = noise(16 << 20, 7);
    std::fs::write(src.join("big"), &data).unwrap();
    let img = s.path().join("img");
    // 256 KiB groups: 64 groups in the blob.
    cli::erofsd_build(&[&src], &img, &["--group-size", "256K", "--chunk-size", "1M"]);
    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);

    // No readahead: the page read is the only backing read.
    let f = open_without_readahead(&mnt.0.join("big"));
    let off = 5 * (1 << 20) + 12345;
    let mut buf = vec![0u8; 100];
    f.read_exact_at(&mut buf, off as u64).unwrap();
    assert!(buf == data[off..off + 100], "partial read returned wrong bytes");
    let groups = d.cache_files_sum("groups_fetched");
    let stored = d.cache_files_sum("stored_bytes");
    eprintln!("partial read: {groups} group(s), {stored} stored bytes fetched; metrics {}", d.metrics());
    assert_eq!(groups, 1, "a 100-byte read inside one 256 KiB group fetched {groups} groups");
    assert!(stored <= 256 * 1024 + 4096, "fetched {stored} stored bytes for one group");
    assert!(d.metrics()["frontend"]["cache_files"].as_object().unwrap().values().all(|v| v["marked"] == true));

    // Reading the rest fills everything and removes the mark.
    let mut all = Vec::new();
    std::fs::File::open(mnt.0.join("big")).unwrap().read_to_end(&mut all).unwrap();
    assert!(all == data, "full read differs");
    assert_eq!(d.cache_files_sum("groups_fetched"), 64, "each group fetched exactly once");
    assert_eq!(d.frontend("marks_removed"), 1);
    drop(f);
    d.umount(&mnt.0);
}

#[test]
fn fanotify_concurrent_readers_mark_removal_and_restart_keeps_data() {
    let test = "fanotify_concurrent_readers_mark_removal_and_restart_keeps_data";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let src = fixtures::fixture("alltypes").join("tree");
    let img = s.path().join("img");
    cli::erofsd_build(&[&src], &img, &[]);
    let files = Arc::new(regular_files(&src));
    // Every other one of the small files with blob data (`regular/rand-*`, `regular/text-*`,
    // 3 KB to 128 KB): read-ahead follows forward streams, and from local blobs grows with them,
    // so reading the large files too would fill the whole (24 MB) blob before the restart, and
    // the restarted daemon would have nothing partial to serve.
    let small = |f: &&std::path::PathBuf| f.starts_with("regular") && f.file_name().is_some_and(|n| n.to_string_lossy().starts_with("rand-") || n.to_string_lossy().starts_with("text-"));
    let half: Vec<_> = files.iter().filter(small).step_by(2).cloned().collect();
    assert!(half.len() >= 10, "the alltypes fixture has its small data files");

    // Phase 1: read those files, then restart the daemon.
    let mut d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);
    for f in &half {
        assert!(std::fs::read(src.join(f)).unwrap() == std::fs::read(mnt.0.join(f)).unwrap(), "{}", f.display());
    }
    let fetched1 = d.cache_files_sum("groups_fetched");
    assert!(fetched1 > 0);
    d.restart(); // SIGTERM unmounts; the new daemon finds the filled groups in the cache file
    assert!(!fanotify_harness_is_mounted(&mnt.0), "shutdown unmounted");
    drop_caches();
    d.mount(&img, &mnt.0);
    let m = d.metrics();
    assert!(m["frontend"]["cache_files"].as_object().unwrap().values().all(|v| v["marked"] == true), "phase 1 left the blob partly filled: {m}");
    for f in &half {
        assert!(std::fs::read(src.join(f)).unwrap() == std::fs::read(mnt.0.join(f)).unwrap(), "{}", f.display());
    }
    assert_eq!(d.cache_files_sum("groups_fetched"), 0, "files read before the restart were fetched again");
    assert!(d.frontend("fast_allowed") > 0, "warm groups answered on the fast path");

    // Phase 2: 16 concurrent readers over the whole tree, every byte compared.
    let root = Arc::new(mnt.0.clone());
    let src = Arc::new(src);
    let mut threads = Vec::new();
    for t in 0..16usize {
        let (files, root, src) = (files.clone(), root.clone(), src.clone());
        threads.push(std::thread::spawn(move || {
            let n = files.len();
            for i in 0..n {
                let f = &files[(i + t * n / 16) % n];
                let got = std::fs::read(root.join(f)).unwrap_or_else(|e| panic!("reader {t}: {}: {e}", f.display()));
                assert!(got == std::fs::read(src.join(f)).unwrap(), "reader {t}: {} differs", f.display());
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let m = d.metrics();
    eprintln!("after 16 readers: {m}");
    assert_eq!(d.frontend("denied"), 0);
    assert!(m["frontend"]["cache_files"].as_object().unwrap().values().all(|v| v["marked"] == false), "mark removed after a full fill");
    assert!(d.frontend("marks_removed") >= 1);

    // With the mark gone, cold reads raise no events at all.
    let events = d.frontend("events");
    drop_caches();
    let r = assert_trees_equal(&src, &mnt.0, &Options::default());
    assert!(r.regular_files >= 3900);
    assert_eq!(d.frontend("events"), events, "reads after a full fill still raised events");

    // A restart with a complete blob: no mark, no events, no fetches.
    d.restart();
    drop_caches();
    d.mount(&img, &mnt.0);
    assert_trees_equal(&src, &mnt.0, &Options::default());
    assert_eq!(d.cache_files_sum("groups_fetched"), 0);
    assert_eq!(d.frontend("events"), 0);
    d.umount(&mnt.0);
    let _ = Path::new("");
}

fn fanotify_harness_is_mounted(p: &Path) -> bool {
    erofsd::frontend::fanotify::sysmount::is_erofs_mount(p)
}

/// `n` layer directories under `dir` and their merge (the layers copied in order with `cp -a`
/// into one tree): each layer has a file of its own past the inline size (so each layer has a
/// blob), overrides `common.txt`, and every 8th replaces `over/every8.bin`.
fn make_layers(dir: &Path, n: usize) -> (Vec<std::path::PathBuf>, std::path::PathBuf) {
    let merged = dir.join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    let mut layers = Vec::new();
    for i in 0..n {
        let l = dir.join(format!("layers/l{i:03}"));
        std::fs::create_dir_all(l.join("own")).unwrap();
        std::fs::create_dir_all(l.join("over")).unwrap();
        std::fs::write(l.join(format!("own/layer-{i:03}.bin")), noise(3000 + i * 37, 1000 + i as u64)).unwrap();
        std::fs::write(l.join("common.txt"), format!("layer {i}\n")).unwrap();
        if i % 8 == 0 {
            std::fs::write(l.join("over/every8.bin"), noise(5000 + i, 5000 + i as u64)).unwrap();
        }
        let mut src = l.clone().into_os_string();
        src.push("/.");
        cli::run_ok("cp", ["-a".as_ref(), src.as_os_str(), merged.as_os_str()]);
        layers.push(l);
    }
    (layers, merged)
}

/// An image of `n` layers built with `--merge` (one blob each) through the fanotify door: the
/// mount has `n` blob devices (passed one `fsconfig` call each, past mount(2)'s one-page option
/// limit), and every file equals the merged layers byte for byte. `daemon_dir` holds the cache.
fn many_layers(test: &str, n: usize, daemon_dir: impl Fn(&Path) -> std::path::PathBuf) {
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let (layers, merged) = make_layers(s.path(), n);
    let img = s.path().join("img");
    let srcs: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    cli::erofsd_build(&srcs, &img, &["--merge"]);
    let blobs = std::fs::read_dir(img.join("blobs")).unwrap().count();
    assert_eq!(blobs, n, "the {n}-layer image should have one blob per layer");
    let dd = daemon_dir(s.path());
    std::fs::create_dir_all(&dd).unwrap();
    let d = Daemon::start(&dd, false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);
    let m = d.metrics();
    let files = m["frontend"]["cache_files"].as_object().map(|o| o.len()).unwrap_or(0);
    assert_eq!(files, n, "the mount should use {n} blob cache files: {m}");
    let options: usize = d.cache.join("blobs").to_string_lossy().len() + 1 + 64 + "device=,".len();
    assert!(options * n > 4095, "the device list ({} bytes) should exceed the old one-page limit", options * n);
    let r = assert_trees_equal(&merged, &mnt.0, &Options::default());
    assert!(r.regular_files > n, "only {} regular files compared", r.regular_files);
    assert_eq!(std::fs::read_to_string(mnt.0.join("common.txt")).unwrap(), format!("layer {}\n", n - 1));
    assert!(d.frontend("events") > 0, "the reads went through pre-content events");
    assert_eq!(d.frontend("denied"), 0);
    let m = d.metrics();
    let untouched: Vec<&String> = m["frontend"]["cache_files"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| v["groups_fetched"].as_u64().unwrap_or(0) == 0)
        .map(|(k, _)| k)
        .collect();
    assert!(untouched.is_empty(), "blobs never read through the mount: {untouched:?}");
    d.umount(&mnt.0);
}

/// The size in the report: 60 layers, refused by mount(2)'s 4095-byte option limit before. The
/// cache dir is over 255 bytes deep, so every path goes to `fsconfig` as `/proc/self/fd/N`.
#[test]
fn fanotify_60_layers_long_cache_path() {
    many_layers("fanotify_60_layers_long_cache_path", 60, |base| {
        let p = base.join("c".repeat(100)).join("d".repeat(100)).join("e".repeat(60));
        assert!(p.join("cache/blobs").as_os_str().len() > 255);
        p
    });
}

#[test]
fn fanotify_128_layers_byte_exact() {
    many_layers("fanotify_128_layers_byte_exact", 128, |base| base.join("daemon"));
}
