//! The front-end's message handling against a stand-in device: a SOCK_SEQPACKET pair carries
//! kernel-shaped messages in and the daemon's commands out; "anon fds" are plain temp files.
//! (The real kernel is exercised by kernel-tests/guest/tests/erofsd-*.sh in QEMU.)

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachefiles::wire::build;
use cachefiles::Device;

use super::registry::{Registration, Registry};
use super::serve::Shared;
use super::*;
use crate::core::fill::Filler;
use crate::core::images::ImageStore;
use crate::core::writer::Writer;

pub(super) fn seqpacket() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds is a 2-int array.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    unsafe {
        let fl = libc::fcntl(a.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(a.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    (a, b)
}

pub(super) fn send(peer: &OwnedFd, bytes: &[u8]) {
    let n = unsafe { libc::write(peer.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n as usize, bytes.len());
}

/// The next command the daemon wrote (blocking, with a deadline).
pub(super) fn command(peer: &OwnedFd) -> String {
    let mut f = unsafe { std::fs::File::from_raw_fd(libc::dup(peer.as_raw_fd())) };
    let mut buf = [0u8; 256];
    let n = f.read(&mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// A file standing in for an anon fd: its raw number is handed over like the kernel does.
pub(super) fn anon_file(dir: &std::path::Path, name: &str) -> (std::fs::File, u32) {
    let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.join(name)).unwrap();
    let raw = f.try_clone().unwrap().into_raw_fd();
    // The kernel installs anon fds without FD_CLOEXEC; the device layer sets it.
    unsafe { libc::fcntl(raw, libc::F_SETFD, 0) };
    (f, raw as u32)
}

pub(super) fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A stand-in for one registered image: a 600,000-byte file built into `dir/img` (64K chunks
/// and groups), the front-end's shared state over a seqpacket "device", and the image
/// registered as fsid `img1`. Returns (image dir, image, shared state, peer end).
pub(super) fn standin(dir: &std::path::Path) -> (std::path::PathBuf, Arc<crate::core::images::Image>, Arc<Shared>, OwnedFd) {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let data: Vec<u8> = (0..600_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(tree.join("data.bin"), &data).unwrap();
    let out = dir.join("img");
    let opts = crate::build::BuildOptions { chunk_size_log2: 16, group_size_log2: 16, ..Default::default() };
    crate::build::build(&[crate::build::Source::from_arg(&tree)], &out, &opts).unwrap();
    let (image, shared, peer) = serving(dir, &out);
    (out, image, shared, peer)
}

/// The image at `img` loaded and registered as fsid `img1`, with the front-end's shared state
/// over a seqpacket "device". Returns (image, shared state, peer end).
pub(super) fn serving(dir: &std::path::Path, img: &std::path::Path) -> (Arc<crate::core::images::Image>, Arc<Shared>, OwnedFd) {
    let image = ImageStore::new().load_dir(img).unwrap();
    let (ours, peer) = seqpacket();
    let shared = Arc::new(Shared {
        device: Device::from(ours),
        registry: Registry::new(dir.join("state.json")),
        objects: Default::default(),
        filler: Filler::new(Writer::pwrite_only(), 4),
        metrics: Default::default(),
        rt: tokio::runtime::Handle::current(),
    });
    shared
        .registry
        .add(Registration::new("img1".into(), None, image.clone(), img.to_path_buf(), "/mnt/x".into()).unwrap())
        .unwrap();
    (image, shared, peer)
}

/// An image with interior holes (the previous builder's fixture): the bootstrap object is the
/// redirected copy, its size includes the zero extent, and a READ there writes zeros.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interior_holes_are_served_through_a_zero_extent() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/interior-holes");
    let (image, shared, peer) = serving(dir.path(), &fixture);
    let original = image.read_bootstrap().unwrap();
    let want = erofs::holes::redirect_interior_holes(&original).unwrap().expect("the fixture has interior holes");
    assert_ne!(want.bootstrap, original);
    let (handle, stop) = reader::spawn(shared.clone()).unwrap();
    let (boot_file, boot_fd) = anon_file(dir.path(), "boot");
    send(&peer, &build::open(1, 10, b"erofs,img1", b"img1", boot_fd));
    assert_eq!(command(&peer), format!("copen 1,{}", want.size));
    let len = want.bootstrap.len() as u64;
    wait_for("bootstrap prefill", || boot_file.metadata().unwrap().len() >= len);
    let mut back = vec![0u8; want.bootstrap.len()];
    boot_file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == want.bootstrap, "the redirected bootstrap is written, not the original");
    // The zero extent is served on demand, as zeros.
    let zero_at = want.zero_blkaddr as u64 * 4096;
    std::fs::OpenOptions::new().write(true).open(dir.path().join("boot")).unwrap().write_all_at(&[0xAA; 4096], zero_at).unwrap();
    send(&peer, &build::read(2, 10, zero_at, 65536));
    wait_for("READ completion", || shared.metrics.complete_errors.load(Ordering::Relaxed) == 1);
    assert_eq!(shared.metrics.reads_failed.load(Ordering::Relaxed), 0);
    let mut zeros = vec![1u8; 65536];
    boot_file.read_exact_at(&mut zeros, zero_at).unwrap();
    assert!(zeros.iter().all(|&b| b == 0), "the zero extent reads as zeros");
    stop.stop();
    handle.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_read_close_through_a_standin_device() {
    let dir = tempfile::tempdir().unwrap();
    let (out, image, shared, peer) = standin(dir.path());
    let blob = image.blobs[0].clone();
    let (handle, stop) = reader::spawn(shared.clone()).unwrap();

    // Bootstrap OPEN: copen with the bootstrap size, then the whole bootstrap is written.
    let (boot_file, boot_fd) = anon_file(dir.path(), "boot");
    send(&peer, &build::open(1, 10, b"erofs,img1", b"img1", boot_fd));
    let bootstrap = image.read_bootstrap().unwrap();
    assert_eq!(command(&peer), format!("copen 1,{}", bootstrap.len()));
    wait_for("bootstrap prefill", || boot_file.metadata().unwrap().len() >= bootstrap.len() as u64);
    let mut back = vec![0u8; bootstrap.len()];
    boot_file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == bootstrap, "bootstrap written whole");

    // Blob OPEN, then a READ: the group holding the range lands in the file.
    let (blob_file, blob_fd) = anon_file(dir.path(), "blob");
    send(&peer, &build::open(2, 11, b"erofs,img1", blob.id.as_bytes(), blob_fd));
    assert_eq!(command(&peer), format!("copen 2,{}", blob.size()));
    send(&peer, &build::read(3, 11, 65536, 4096));
    // The READ_COMPLETE ioctl fails on a plain file (ENOTTY): counted, not fatal.
    wait_for("READ completion", || shared.metrics.complete_errors.load(Ordering::Relaxed) == 1);
    assert_eq!(shared.metrics.reads_failed.load(Ordering::Relaxed), 0);
    let want = blob.fetch_groups(1, 1).await.unwrap();
    let mut got = vec![0u8; want[0].len()];
    blob_file.read_exact_at(&mut got, 65536).unwrap();
    assert!(got[..] == want[0][..], "group 1 written at its offset");

    // Unknown cookie: rejected with -ENOENT.
    let (_f, other_fd) = anon_file(dir.path(), "other");
    let identity = |fd: i32| -> Option<(u64, u64)> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        (unsafe { libc::fstat(fd, &mut st) } == 0).then_some((st.st_dev, st.st_ino))
    };
    let other_id = identity(other_fd as i32);
    send(&peer, &build::open(4, 12, b"erofs,img1", b"nosuchblob", other_fd));
    assert_eq!(command(&peer), "copen 4,-2");
    assert_eq!(shared.metrics.opens_rejected.load(Ordering::Relaxed), 1);
    // Its fd was closed, not leaked: the number is free, or (tests run in parallel) reused by
    // some other file.
    assert_ne!(identity(other_fd as i32), other_id, "rejected OPEN's fd still open");

    // A READ whose fetch fails (blob file truncated, group not yet cached) still completes.
    // (Truncated, not removed: the source keeps blob files open.)
    std::fs::OpenOptions::new().write(true).open(out.join("blobs").join(&blob.id)).unwrap().set_len(0).unwrap();
    send(&peer, &build::read(5, 11, 0, 4096));
    wait_for("failed READ", || shared.metrics.reads_failed.load(Ordering::Relaxed) == 1);
    wait_for("its completion", || shared.metrics.complete_errors.load(Ordering::Relaxed) == 2);

    assert_eq!(shared.objects.len(), 2);
    send(&peer, &build::close(6, 10));
    send(&peer, &build::close(7, 11));
    wait_for("CLOSEs", || shared.objects.is_empty());
    assert_eq!(shared.metrics.opens.load(Ordering::Relaxed), 3);
    assert_eq!(shared.metrics.reads.load(Ordering::Relaxed), 2);

    stop.stop();
    handle.join().unwrap();
}
