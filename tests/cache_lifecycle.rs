//! The cache lifecycle on the host kernel through the real daemon (fanotify front-end):
//! readiness survives restarts and remounts and is rebuilt from the cache files (a truncated,
//! short or wiped file is refetched, never served as zeros); `erofsd cache ls|gc`; the
//! daemon's size limit; the layout-version guard.
//! Needs root and a 6.14+ kernel with EROFS file-backed mounts and fanotify pre-content for
//! the mount tests; skips loudly otherwise (fails under CI=true).

mod common;
mod fanotify_harness;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::data::noise;
use common::{cli, fixtures};
use fanotify_harness::{drop_caches, require_fanotify, Daemon, MountDir};

const MIB: usize = 1 << 20;


struct Img {
    dir: PathBuf,
    data: Vec<u8>,
    blob: String,
}

/// One image with one incompressible file `f` of `len` bytes: one blob of 256 KiB groups.
fn image(base: &Path, name: &str, len: usize, seed: u64) -> Img {
    let src = base.join(format!("{name}-src"));
    std::fs::create_dir_all(&src).unwrap();
    let data = noise(len, seed);
    std::fs::write(src.join("f"), &data).unwrap();
    let dir = base.join(format!("{name}-img"));
    cli::erofsd_build(&[&src], &dir, &["--group-size", "256K", "--chunk-size", "1M"]);
    let blobs: Vec<String> =
        std::fs::read_dir(dir.join("blobs")).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(blobs.len(), 1, "one blob per image: {blobs:?}");
    Img { dir, data, blob: blobs[0].clone() }
}

fn read_f(mnt: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    std::fs::File::open(mnt.join("f")).unwrap().read_to_end(&mut v).unwrap();
    v
}

fn cache_file(d: &Daemon, id: &str) -> PathBuf {
    d.cache.join("blobs").join(id)
}

/// A per-cache-file counter of one blob (while a mount holds it).
fn blob_metric(d: &Daemon, id: &str, key: &str) -> u64 {
    d.metrics()["frontend"]["cache_files"][id][key].as_u64().unwrap_or_else(|| panic!("no {key} for blob {id}: {}", d.metrics()))
}

fn erofsd(args: &[&str]) -> Output {
    cli::run(cli::erofsd_bin(), args)
}

fn cache_cmd(d: &Daemon, args: &[&str]) -> serde_json::Value {
    let mut a: Vec<&str> = vec!["cache"];
    a.extend_from_slice(args);
    let sock = d.socket.to_str().unwrap().to_string();
    let cache = d.cache.to_str().unwrap().to_string();
    a.extend_from_slice(&["--json", "--api-socket", &sock, "--cache-dir", &cache]);
    let out = erofsd(&a);
    assert!(out.status.success(), "erofsd {a:?} failed: {}\nlog:\n{}", cli::tail(&out.stderr), d.log_text());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{a:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn entry<'a>(listing: &'a serde_json::Value, id: &str) -> Option<&'a serde_json::Value> {
    listing["entries"].as_array().unwrap().iter().find(|e| e["name"] == id)
}

fn evicted_names(report: &serde_json::Value) -> Vec<String> {
    report["evicted"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn cache_readiness_survives_restart_and_remount_and_damaged_files_are_refetched() {
    let test = "cache_readiness_survives_restart_and_remount_and_damaged_files_are_refetched";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let img = image(s.path(), "a", 8 * MIB, 1);
    let mut d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");

    // Cold: every group fetched once.
    d.mount(&img.dir, &mnt.0);
    assert!(read_f(&mnt.0) == img.data, "cold read differs");
    let groups = blob_metric(&d, &img.blob, "groups");
    assert_eq!(groups, 32, "8 MiB in 256 KiB groups");
    assert_eq!(blob_metric(&d, &img.blob, "groups_fetched"), groups);
    let stored = blob_metric(&d, &img.blob, "stored_bytes");
    eprintln!("cold: {groups} groups, {stored} stored bytes fetched");
    d.umount(&mnt.0);

    // Remount under the same daemon: nothing fetched, nothing filled.
    let filled = d.frontend("filled_allowed");
    drop_caches();
    d.mount(&img.dir, &mnt.0);
    assert!(read_f(&mnt.0) == img.data, "warm read after remount differs");
    assert_eq!(d.frontend("filled_allowed"), filled, "a remount refilled ranges");
    let after_remount = blob_metric(&d, &img.blob, "groups_fetched");
    assert!(after_remount == 0 || after_remount == groups, "remount fetched again: {after_remount}");
    d.umount(&mnt.0);

    // Daemon restart: readiness rebuilt from the sparse file, no fetch.
    d.stop();
    d.start_again();
    drop_caches();
    d.mount(&img.dir, &mnt.0);
    assert!(read_f(&mnt.0) == img.data, "read after restart differs");
    assert_eq!(blob_metric(&d, &img.blob, "groups_fetched"), 0, "restart refetched");
    assert_eq!(blob_metric(&d, &img.blob, "stored_bytes"), 0);
    d.umount(&mnt.0);

    let file = cache_file(&d, &img.blob);
    let size = std::fs::metadata(&file).unwrap().len();

    // Truncated, then extended back to the right size: the lost half is holes again, and
    // exactly those groups are fetched (the kept half is trusted because it is allocated).
    d.stop();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(size / 2).unwrap();
    f.set_len(size).unwrap();
    drop(f);
    d.start_again();
    drop_caches();
    d.mount(&img.dir, &mnt.0);
    assert!(read_f(&mnt.0) == img.data, "read after truncate+extend differs (zeros served?)");
    assert_eq!(blob_metric(&d, &img.blob, "groups_fetched"), groups / 2, "only the truncated half is refetched");
    d.umount(&mnt.0);

    // Short file (size no longer the blob's): discarded, everything refetched.
    d.stop();
    std::fs::OpenOptions::new().write(true).open(&file).unwrap().set_len(size / 3).unwrap();
    d.start_again();
    drop_caches();
    d.mount(&img.dir, &mnt.0);
    assert!(read_f(&mnt.0) == img.data, "read after a short cache file differs");
    assert_eq!(blob_metric(&d, &img.blob, "groups_fetched"), groups);
    d.umount(&mnt.0);

    // Wiped file, then the whole data directory wiped under surviving state: refetched.
    for wipe_dir in [false, true] {
        d.stop();
        if wipe_dir {
            std::fs::remove_dir_all(d.cache.join("blobs")).unwrap();
            assert!(d.cache.join("fanotify").exists(), "state survives");
        } else {
            std::fs::remove_file(&file).unwrap();
        }
        d.start_again();
        drop_caches();
        d.mount(&img.dir, &mnt.0);
        assert!(read_f(&mnt.0) == img.data, "read after wiping (dir: {wipe_dir}) differs");
        assert_eq!(blob_metric(&d, &img.blob, "groups_fetched"), groups, "wiped (dir: {wipe_dir}): all refetched");
        d.umount(&mnt.0);
    }

    // The daemon's own data directory wiped while it runs, with the blob mounted: the mount
    // keeps reading its (unlinked) file; a later mount starts a fresh file and refetches.
    drop_caches();
    d.mount(&img.dir, &mnt.0);
    std::fs::remove_dir_all(d.cache.join("blobs")).unwrap();
    drop_caches();
    assert!(read_f(&mnt.0) == img.data, "read after wiping blobs/ under a live mount differs");
    d.umount(&mnt.0);
    d.mount(&img.dir, &mnt.0);
    assert!(read_f(&mnt.0) == img.data);
    assert!(file.exists(), "a fresh cache file was created");
    d.umount(&mnt.0);
    assert_eq!(d.frontend("denied"), 0);
}

#[test]
fn cache_ls_and_gc_evict_lru_unused_blobs_and_evicted_data_is_refetched() {
    let test = "cache_ls_and_gc_evict_lru_unused_blobs_and_evicted_data_is_refetched";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let imgs: Vec<Img> = ["a", "b", "c"].iter().enumerate().map(|(i, n)| image(s.path(), n, 4 * MIB, 10 + i as u64)).collect();
    let mut d = Daemon::start(s.path(), false);
    let mnts: Vec<MountDir> = ["ma", "mb", "mc"].iter().map(|n| MountDir::new(s.path(), n)).collect();

    // Use a, then b (both unmounted after), then c (kept mounted): LRU order a < b < c.
    for i in 0..3 {
        d.mount(&imgs[i].dir, &mnts[i].0);
        assert!(read_f(&mnts[i].0) == imgs[i].data);
        if i < 2 {
            d.umount(&mnts[i].0);
        }
        std::thread::sleep(Duration::from_millis(1100)); // last use has 1 s resolution
    }

    let ls = cache_cmd(&d, &["ls"]);
    eprintln!("cache ls: {ls}");
    assert_eq!(ls["daemon"], true);
    assert_eq!(ls["entries"].as_array().unwrap().len(), 3);
    let mut total = 0;
    for (i, img) in imgs.iter().enumerate() {
        let e = entry(&ls, &img.blob).unwrap_or_else(|| panic!("blob {i} not listed"));
        assert_eq!(e["kind"], "fanotify-blob");
        assert_eq!(e["ready_bytes"].as_u64().unwrap(), e["size"].as_u64().unwrap(), "blob {i} fully filled");
        assert!(e["size"].as_u64().unwrap() >= 4 * MIB as u64);
        assert!(e["disk_bytes"].as_u64().unwrap() >= 4 * MIB as u64);
        assert_eq!(e["in_use"], i == 2, "blob {i} in use");
        total += e["disk_bytes"].as_u64().unwrap();
    }
    assert_eq!(ls["disk_bytes"].as_u64().unwrap(), total);
    let disk = |i: usize| entry(&ls, &imgs[i].blob).unwrap()["disk_bytes"].as_u64().unwrap();
    assert!(entry(&ls, &imgs[0].blob).unwrap()["last_use"].as_i64() < entry(&ls, &imgs[1].blob).unwrap()["last_use"].as_i64());

    // The human listing names every blob.
    let sock = d.socket.to_str().unwrap().to_string();
    let out = erofsd(&["cache", "ls", "--api-socket", &sock]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && imgs.iter().all(|i| text.contains(&i.blob)), "{text}");

    // Dry run: reports a (the oldest) only, deletes nothing.
    let limit = (disk(1) + disk(2)).to_string();
    let r = cache_cmd(&d, &["gc", "--max-size", &limit, "--dry-run"]);
    assert_eq!(evicted_names(&r), vec![imgs[0].blob.clone()]);
    assert!(imgs.iter().all(|i| cache_file(&d, &i.blob).exists()), "dry run deleted");

    // For real: a goes, b and c stay.
    let r = cache_cmd(&d, &["gc", "--max-size", &limit]);
    eprintln!("gc: {r}");
    assert_eq!(evicted_names(&r), vec![imgs[0].blob.clone()]);
    assert!(!cache_file(&d, &imgs[0].blob).exists());
    assert!(cache_file(&d, &imgs[1].blob).exists() && cache_file(&d, &imgs[2].blob).exists());

    // Limit 0: every unused blob (b) goes; c is mounted and stays, still byte-exact.
    let r = cache_cmd(&d, &["gc", "--max-size", "0"]);
    assert_eq!(evicted_names(&r), vec![imgs[1].blob.clone()]);
    assert_eq!(r["in_use"], 1);
    assert!(cache_file(&d, &imgs[2].blob).exists(), "an in-use blob was evicted");
    drop_caches();
    assert!(read_f(&mnts[2].0) == imgs[2].data, "mounted blob changed by gc");

    // An evicted blob mounted again is refetched, byte-exact.
    d.mount(&imgs[0].dir, &mnts[0].0);
    drop_caches();
    assert!(read_f(&mnts[0].0) == imgs[0].data, "evicted blob read back wrong");
    assert_eq!(blob_metric(&d, &imgs[0].blob, "groups_fetched"), blob_metric(&d, &imgs[0].blob, "groups"));
    d.umount(&mnts[0].0);
    d.umount(&mnts[2].0);

    // Without a daemon: the lock, then the directory directly.
    let cache = d.cache.to_str().unwrap().to_string();
    let out = erofsd(&["cache", "ls", "--api-socket", "/nonexistent.sock", "--cache-dir", &cache]);
    assert!(!out.status.success(), "offline ls while the daemon holds the lock");
    assert!(String::from_utf8_lossy(&out.stderr).contains("locked"), "{}", cli::tail(&out.stderr));
    d.stop();
    let out = erofsd(&["cache", "ls", "--json", "--api-socket", "/nonexistent.sock", "--cache-dir", &cache]);
    assert!(out.status.success(), "{}", cli::tail(&out.stderr));
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls["daemon"], false);
    assert_eq!(ls["entries"].as_array().unwrap().len(), 2, "{ls}");
    assert!(ls["entries"].as_array().unwrap().iter().all(|e| e["in_use"] == false));
    let out = erofsd(&["cache", "gc", "--json", "--max-size", "0", "--api-socket", "/nonexistent.sock", "--cache-dir", &cache]);
    assert!(out.status.success(), "{}", cli::tail(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(evicted_names(&r).len(), 2);
    assert!(imgs.iter().all(|i| !cache_file(&d, &i.blob).exists()));
    assert!(d.cache.join("fanotify").join("mounts.json").exists(), "state is never evicted");
}

#[test]
fn cache_size_limit_evicts_unused_blobs_under_pressure_and_mounts_stay_exact() {
    let test = "cache_size_limit_evicts_unused_blobs_under_pressure_and_mounts_stay_exact";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let imgs: Vec<Img> = (0..5).map(|i| image(s.path(), &format!("i{i}"), 4 * MIB, 100 + i as u64)).collect();
    let cfg = s.path().join("erofsd.toml");
    std::fs::write(&cfg, "[cache]\ngc_interval_secs = 1\n").unwrap();
    // 10 MiB: two 4 MiB blobs fit, a third does not.
    let d = Daemon::start_with_args(s.path(), &["--config", cfg.to_str().unwrap(), "--cache-max-size", "10MiB"]);
    let limit = 10 * MIB as u64;
    let mnts: Vec<MountDir> = (0..5).map(|i| MountDir::new(s.path(), &format!("m{i}"))).collect();
    let disk = || -> u64 {
        let ls = cache_cmd(&d, &["ls"]);
        assert_eq!(ls["max_size"].as_u64(), Some(limit));
        ls["disk_bytes"].as_u64().unwrap()
    };

    // Image 0 stays mounted throughout: the oldest blob, yet never evicted.
    d.mount(&imgs[0].dir, &mnts[0].0);
    assert!(read_f(&mnts[0].0) == imgs[0].data);
    std::thread::sleep(Duration::from_millis(1100));

    // 1..4 used one after the other and unmounted: each umount brings the cache back under.
    for i in 1..5 {
        d.mount(&imgs[i].dir, &mnts[i].0);
        assert!(read_f(&mnts[i].0) == imgs[i].data, "image {i}");
        d.umount(&mnts[i].0);
        let used = disk();
        eprintln!("after image {i}: {used} bytes on disk (limit {limit})");
        assert!(used <= limit, "after umount of {i}: {used} > {limit}");
        assert!(cache_file(&d, &imgs[0].blob).exists(), "the mounted blob was evicted");
        assert!(cache_file(&d, &imgs[i].blob).exists(), "the most recently used blob was evicted");
        std::thread::sleep(Duration::from_millis(1100));
    }
    // Only the most recent unused one fits next to the mounted one.
    assert!(!cache_file(&d, &imgs[1].blob).exists() && !cache_file(&d, &imgs[2].blob).exists());

    // Pressure from fills while mounted: 0, 3 and 4 mounted (12 MiB > 10 MiB, all in use):
    // nothing can go, and every mount stays byte-exact.
    d.mount(&imgs[3].dir, &mnts[3].0);
    d.mount(&imgs[4].dir, &mnts[4].0);
    for i in [0, 3, 4] {
        assert!(read_f(&mnts[i].0) == imgs[i].data, "image {i} under pressure");
    }
    std::thread::sleep(Duration::from_millis(2500)); // periodic passes run
    drop_caches();
    for i in [0, 3, 4] {
        assert!(cache_file(&d, &imgs[i].blob).exists(), "in-use blob {i} evicted");
        assert!(read_f(&mnts[i].0) == imgs[i].data, "image {i} after periodic gc");
    }
    // Unmounting one brings the cache back under the limit at once.
    d.umount(&mnts[3].0);
    assert!(disk() <= limit);
    assert!(!cache_file(&d, &imgs[3].blob).exists());
    // 4 unmounted: 8 MiB fit, it stays cached.
    d.umount(&mnts[4].0);
    assert!(cache_file(&d, &imgs[4].blob).exists());
    // Fills alone push past the limit (1 was evicted; mounting and reading it adds 4 MiB,
    // no umount follows): the periodic pass evicts the unused 4, and 1 reads back exact.
    d.mount(&imgs[1].dir, &mnts[1].0);
    assert!(read_f(&mnts[1].0) == imgs[1].data);
    let t0 = std::time::Instant::now();
    while disk() > limit {
        assert!(t0.elapsed() < Duration::from_secs(10), "the size limit was not enforced after fills: {}", disk());
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("periodic pass brought the cache under the limit in {:?}", t0.elapsed());
    assert!(!cache_file(&d, &imgs[4].blob).exists(), "the unused blob was not the one evicted");
    drop_caches();
    for i in [0, 1] {
        assert!(read_f(&mnts[i].0) == imgs[i].data, "image {i} after the periodic pass");
        d.umount(&mnts[i].0);
    }
    assert_eq!(d.frontend("denied"), 0);
}

#[test]
fn cache_layout_newer_version_is_refused_and_nothing_is_deleted() {
    let test = "cache_layout_newer_version_is_refused_and_nothing_is_deleted";
    let s = fixtures::scratch(test);
    let cache = s.path().join("cache");
    std::fs::create_dir_all(cache.join("blobs")).unwrap();
    std::fs::create_dir_all(cache.join("fanotify")).unwrap();
    let blob = cache.join("blobs").join("ab".repeat(32));
    std::fs::write(&blob, vec![5u8; 8192]).unwrap();
    std::fs::write(cache.join("fanotify").join("mounts.json"), b"[]").unwrap();
    std::fs::write(cache.join("layout-version"), "99\n").unwrap();
    let before = snapshot(&cache);

    let sock = s.path().join("api.sock");
    let out = erofsd(&[
        "daemon",
        "--frontend",
        "fanotify",
        "--cache-dir",
        cache.to_str().unwrap(),
        "--api-socket",
        sock.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "daemon started on a newer layout");
    assert!(err.contains("layout version 99") && err.contains("newer"), "unclear refusal: {err}");
    for args in [&["ls"][..], &["gc", "--max-size", "0"][..]] {
        let mut a = vec!["cache"];
        a.extend_from_slice(args);
        a.extend_from_slice(&["--api-socket", "/nonexistent.sock", "--cache-dir", cache.to_str().unwrap()]);
        let out = erofsd(&a);
        assert!(!out.status.success(), "cache {args:?} ran on a newer layout");
        assert!(String::from_utf8_lossy(&out.stderr).contains("newer"), "{}", cli::tail(&out.stderr));
    }
    assert_eq!(snapshot(&cache), before, "something changed in a refused cache dir");

    // No marker but data (an older erofsd): adopted, marker written, data kept.
    std::fs::remove_file(cache.join("layout-version")).unwrap();
    let out = erofsd(&["cache", "ls", "--json", "--api-socket", "/nonexistent.sock", "--cache-dir", cache.to_str().unwrap()]);
    assert!(out.status.success(), "{}", cli::tail(&out.stderr));
    assert_eq!(std::fs::read_to_string(cache.join("layout-version")).unwrap(), "1\n");
    assert!(blob.exists());
    let ls: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ls["entries"][0]["ready_bytes"], 8192);
}

/// (relative path, size, content) of every regular file under `root`.
fn snapshot(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = fanotify_harness::regular_files(root)
        .into_iter()
        .map(|p| {
            let b = std::fs::read(root.join(&p)).unwrap();
            (p, b)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn cache_offline_gc_keeps_the_blobs_of_mounts_a_killed_daemon_left() {
    let test = "cache_offline_gc_keeps_the_blobs_of_mounts_a_killed_daemon_left";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let a = image(s.path(), "a", 2 * MIB, 21);
    let b = image(s.path(), "b", 2 * MIB, 22);
    let mut d = Daemon::start(s.path(), false);
    let (ma, mb) = (MountDir::new(s.path(), "ma"), MountDir::new(s.path(), "mb"));
    d.mount(&a.dir, &ma.0);
    d.mount(&b.dir, &mb.0);
    assert!(read_f(&ma.0) == a.data && read_f(&mb.0) == b.data);
    d.umount(&mb.0);
    // SIGKILL without a holder: the kernel keeps mount a (its blob file open), mounts.json names it.
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(erofsd::frontend::fanotify::sysmount::is_erofs_mount(&ma.0));

    let cache = d.cache.to_str().unwrap().to_string();
    let out = erofsd(&["cache", "gc", "--json", "--max-size", "0", "--api-socket", "/nonexistent.sock", "--cache-dir", &cache]);
    assert!(out.status.success(), "{}", cli::tail(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("offline gc: {r}");
    assert_eq!(evicted_names(&r), vec![b.blob.clone()], "only the unmounted blob goes");
    assert_eq!(r["in_use"], 1);
    assert!(cache_file(&d, &a.blob).exists(), "the blob of a live mount was evicted offline");
    drop_caches();
    assert!(read_f(&ma.0) == a.data, "the surviving mount reads differently");
    nix::mount::umount2(&ma.0, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

#[test]
fn cache_second_daemon_on_the_same_cache_dir_is_refused() {
    let test = "cache_second_daemon_on_the_same_cache_dir_is_refused";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let d = Daemon::start(s.path(), false);
    let sock = s.path().join("second.sock");
    let t0 = std::time::Instant::now();
    let out = erofsd(&[
        "daemon",
        "--frontend",
        "fanotify",
        "--cache-dir",
        d.cache.to_str().unwrap(),
        "--api-socket",
        sock.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second daemon started on a cache dir in use");
    assert!(err.contains("is locked"), "unclear refusal: {err}");
    eprintln!("second daemon refused after {:?}", t0.elapsed());
    assert!(!sock.exists());
    assert_eq!(d.info()["state"], "RUNNING", "the first daemon is unaffected");
}
