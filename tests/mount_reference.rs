//! `erofsd mount <reference>` end to end on the host kernel (fanotify front-end): an OCI image
//! made by umoci from a debootstrap rootfs (the `oci` fixture) is converted by `erofsd convert`
//! and pushed to a real `docker-registry` on loopback, then mounted by reference. The tree
//! must equal `umoci unpack` of the source; a partial read fetches a small part of the image;
//! a restarted daemon reuses the pulled bootstrap and the cached data. Registry faults (wrong
//! bytes, killed transfers, 5xx, the registry gone) give the reader EIO, never wrong bytes,
//! and the daemon keeps serving other images.
//! Needs root, fanotify pre-content (6.14+), docker-registry, umoci; skips loudly otherwise
//! (fails under CI=true).

mod common;
mod fanotify_harness;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::compare::{assert_trees_equal, Mtime, Options};
use common::registry::{require_registry, Fault, FaultFront, Registry};
use common::{cli, fixtures};
use fanotify_harness::{drop_caches, regular_files, require_fanotify, Daemon, MountDir};

fn oci_fixture() -> PathBuf {
    fixtures::fixture("oci")
}

/// umoci writes ustar headers: whole-second mtimes.
fn oci_opts() -> Options {
    Options { mtime: Mtime::Seconds, root_meta: false, ..Options::default() }
}

fn convert(source: &str, target: &str) {
    cli::run_ok(cli::erofsd_bin(), ["convert", "-q", source, target]);
}

/// Sum of a per-blob core counter (`GET /api/v1/metrics` → blobs).
fn blobs_sum(d: &Daemon, key: &str) -> u64 {
    let m = d.metrics();
    m["blobs"].as_object().map(|o| o.values().map(|v| v[key].as_u64().unwrap_or(0)).sum()).unwrap_or(0)
}

/// Regular files of `root` with their sizes, largest first.
fn by_size(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut v: Vec<(PathBuf, u64)> = regular_files(root)
        .into_iter()
        .map(|r| {
            let len = std::fs::metadata(root.join(&r)).unwrap().len();
            (r, len)
        })
        .collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v
}

#[test]
fn converted_image_mounted_by_reference_equals_the_unpacked_layers() {
    let test = "converted_image_mounted_by_reference_equals_the_unpacked_layers";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) || !require_registry(test) {
        return;
    }
    let reg = Registry::start("", None);
    let layout = oci_fixture().join("layout");
    let reference = format!("http://{}/erofsd/rootfs:l3", reg.host_port());
    convert(&format!("oci:{}:l3", layout.display()), &reference);
    let expected = oci_fixture().join("final/rootfs");

    let mut d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(Path::new(&reference), &mnt.0);

    // A small read touches a small part of the image.
    let stored_total = blobs_sum(&d, "stored_size");
    // (small files are inline in the bootstrap: take one with data in a blob)
    let (one, len) = by_size(&expected).into_iter().find(|(_, len)| (64 << 10..1 << 20).contains(len)).unwrap();
    let got = std::fs::read(mnt.0.join(&one)).unwrap();
    assert!(got == std::fs::read(expected.join(&one)).unwrap(), "{}", one.display());
    eprintln!("read {} ({len} bytes)", one.display());
    let fetched = blobs_sum(&d, "stored_bytes");
    eprintln!("first small read fetched {fetched} of {stored_total} stored bytes");
    assert!(fetched > 0 && fetched * 20 < stored_total, "a small read fetched {fetched} of {stored_total}");

    let r = assert_trees_equal(&expected, &mnt.0, &oci_opts());
    assert!(r.regular_files > 1000, "only {} files compared", r.regular_files);
    let after_full = blobs_sum(&d, "stored_bytes");
    assert!(after_full <= stored_total + stored_total / 20, "fetched {after_full} > stored size {stored_total}");
    let pulled: Vec<_> = std::fs::read_dir(d.cache.join("images")).unwrap().filter_map(|e| e.ok()).collect();
    assert_eq!(pulled.len(), 1, "one pulled image directory");
    let pulled_dir = pulled[0].path();
    assert!(pulled_dir.join("image.boot").is_file() && pulled_dir.join("source.json").is_file());
    let boot_mtime = std::fs::metadata(pulled_dir.join("image.boot")).unwrap().modified().unwrap();

    // A restarted daemon mounts the same reference from what it pulled and cached: the
    // bootstrap is not downloaded again and no blob byte is fetched again.
    d.restart();
    d.mount(Path::new(&reference), &mnt.0);
    drop_caches();
    assert_trees_equal(&expected, &mnt.0, &oci_opts());
    assert_eq!(blobs_sum(&d, "stored_bytes"), 0, "nothing refetched after a restart\n{}\n{}", d.log_text(), serde_json::to_string(&d.metrics()).unwrap());
    assert_eq!(std::fs::metadata(pulled_dir.join("image.boot")).unwrap().modified().unwrap(), boot_mtime, "bootstrap reused");
    d.umount(&mnt.0);

    // The same image converted into an OCI layout mounts as `oci:DIR:tag`.
    let layout2 = s.path().join("layout2");
    convert(&format!("oci:{}:l3", layout.display()), &format!("oci:{}:conv", layout2.display()));
    let mnt2 = MountDir::new(s.path(), "mnt2");
    d.mount(Path::new(&format!("oci:{}:conv", layout2.display())), &mnt2.0);
    assert_trees_equal(&expected, &mnt2.0, &oci_opts());
    d.umount(&mnt2.0);

    // A reference that is not there is a clear error, and the daemon goes on.
    let out = cli::run(
        cli::erofsd_bin(),
        ["mount".as_ref(), format!("http://{}/erofsd/nothing:here", reg.host_port()).as_ref(), mnt.0.as_os_str(), "--api-socket".as_ref(), d.socket.as_os_str()],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("nothing") && (err.contains("not found") || err.contains("404") || err.contains("NotFound")), "{err}");
    let out = cli::run(cli::erofsd_bin(), ["mount".as_ref(), "no such dir".as_ref(), mnt.0.as_os_str(), "--api-socket".as_ref(), d.socket.as_os_str()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("neither an image directory nor a reference"));
}

/// Reads `path` whole; Err(errno) if the read fails.
fn read_all(path: &Path) -> Result<Vec<u8>, i32> {
    std::fs::read(path).map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn registry_faults_give_eio_never_wrong_bytes_and_other_images_keep_serving() {
    let test = "registry_faults_give_eio_never_wrong_bytes_and_other_images_keep_serving";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) || !require_registry(test) {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let reg = Registry::start("", None);
    let layout = oci_fixture().join("layout");
    convert(&format!("oci:{}:l3", layout.display()), &format!("http://{}/erofsd/rootfs:l3", reg.host_port()));
    let upstream: std::net::SocketAddr = reg.host_port().parse().unwrap();
    let front = rt.block_on(FaultFront::start(upstream));
    let expected = oci_fixture().join("final/rootfs");

    // Another image, served from a local directory, must keep working throughout.
    let local_src = s.path().join("local-src");
    std::fs::create_dir_all(&local_src).unwrap();
    let local_data: Vec<u8> = (0..3u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(local_src.join("data"), &local_data).unwrap();
    let local_img = s.path().join("local-img");
    cli::erofsd_build(&[&local_src], &local_img, &[]);

    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    let local_mnt = MountDir::new(s.path(), "local");
    d.mount(Path::new(&format!("{}/erofsd/rootfs:l3", front.url())), &mnt.0);
    d.mount(&local_img, &local_mnt.0);

    // The largest files, far apart in the blobs: each phase reads ones nothing has touched.
    let files = by_size(&expected);
    let mut next = files.iter().filter(|(_, len)| *len >= 256 << 10).map(|(p, _)| p.clone());
    let mut local_reads = 0;
    let faults: [(&str, Option<Fault>); 4] = [
        ("wrong bytes", Some(Fault::Corrupt)),
        ("transfer killed mid-body", Some(Fault::Kill)),
        ("503 answers", Some(Fault::Status(503))),
        ("truncated bodies", Some(Fault::Truncate)),
    ];
    for (what, fault) in faults {
        front.set_always(fault);
        let before = front.count();
        let f = next.next().expect("enough large files");
        let t0 = Instant::now();
        let got = read_all(&mnt.0.join(&f));
        let took = t0.elapsed();
        eprintln!("{what}: {} -> {:?} in {took:?} after {} requests", f.display(), got.as_ref().map(|b| b.len()), front.count() - before);
        assert_eq!(got, Err(libc::EIO), "{what}: reading {} must fail with EIO", f.display());
        assert!(took < Duration::from_secs(60), "{what}: the error took {took:?} (retries must be bounded)");
        let tries = front.count() - before;
        assert!((1..=64).contains(&tries), "{what}: {tries} requests");
        // The local image is unaffected.
        assert!(std::fs::read(local_mnt.0.join("data")).unwrap() == local_data, "{what}: local image");
        local_reads += 1;
    }
    assert_eq!(local_reads, 4);

    // The registry process killed: EIO, and the daemon says why.
    let f_gone = next.next().unwrap();
    let mut reg = reg;
    reg.kill();
    front.set_always(None);
    assert_eq!(read_all(&mnt.0.join(&f_gone)), Err(libc::EIO), "registry gone");
    assert!(std::fs::read(local_mnt.0.join("data")).unwrap() == local_data, "local image with the registry gone");
    let log = d.log_text();
    assert!(log.contains("gave up after"), "the daemon log names the failure:\n{log}");

    // Nothing wrong was cached: with the registry back, every file (the faulted ones
    // included) reads back exactly.
    reg.revive();
    drop_caches();
    let r = assert_trees_equal(&expected, &mnt.0, &oci_opts());
    assert!(r.regular_files > 1000);
    d.umount(&mnt.0);
    d.umount(&local_mnt.0);
}
