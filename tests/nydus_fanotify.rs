//! nydus RAFS v6 images (tests/fixtures/nydus, built by nydus-image from one known tree)
//! served through the fanotify front-end on the host kernel: every supported fixture mounts
//! and reads byte-exact (content and metadata) against the unpacked source tree, and a partial
//! read fetches only the chunk it touches. Needs root and a 6.14+ kernel with EROFS
//! file-backed mounts; skips loudly otherwise (fails under CI=true).

mod common;
mod fanotify_harness;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::compare::{assert_trees_equal, Mtime, Options};
use fanotify_harness::{open_without_readahead, require_fanotify, Daemon, MountDir};

fn nydus_fixtures() -> PathBuf {
    common::fixtures::nydus()
}

/// Unpacks the fixtures' source tree (as root, keeping xattrs and owners) into `dir/tree`.
fn unpack_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let tar = nydus_fixtures().join("tree.tar.gz");
    let st = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpzf"])
        .arg(&tar)
        .arg("-C")
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success(), "unpacking {}", tar.display());
    tree
}

/// Copies a fixture image so the test owns it (the shared fixtures are read-only).
fn copy_image(name: &str, to: &Path) -> PathBuf {
    let img = to.join(name);
    let st = std::process::Command::new("cp").arg("-a").arg(nydus_fixtures().join(name)).arg(&img).status().unwrap();
    assert!(st.success());
    img
}

/// A scratch dir holding the unpacked source tree and a private copy of fixture `name`:
/// (scratch, tree, image); `None` after a loud skip where fanotify cannot serve.
fn prepare(test: &str, name: &str) -> Option<(tempfile::TempDir, PathBuf, PathBuf)> {
    let s = common::fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return None;
    }
    let tree = unpack_tree(s.path());
    let img = copy_image(name, s.path());
    Some((s, tree, img))
}

fn serve_fixture(test: &str, name: &str) {
    let Some((s, tree, img)) = prepare(test, name) else { return };
    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);
    // RAFS v6 keeps whole-second mtimes (nydus-image drops the nanoseconds), so seconds are
    // what a byte-exact serve can match.
    // `nydus-image create -t dir-rafs` records mtime 0 for the root directory it was given
    // (the kernel reads that inode straight from the bootstrap), so the root's own metadata
    // is compared only for the tar-built images.
    let opts = Options { mtime: Mtime::Seconds, root_meta: !name.starts_with("dir-"), ..Options::default() };
    let r = assert_trees_equal(&tree, &mnt.0, &opts);
    eprintln!("{name}: {}; metrics {}", r.summary(), d.metrics());
    assert!(r.regular_files >= 20 && r.entries >= 45, "only {} entries / {} files compared", r.entries, r.regular_files);
    assert!(d.frontend("events") > 0, "the reads went through pre-content events");
    assert_eq!(d.frontend("denied"), 0);
    assert!(d.cache_files_sum("groups_fetched") > 0);
    d.umount(&mnt.0);
}

#[test]
fn nydus_dir_zstd_byte_exact() {
    serve_fixture("nydus_dir_zstd_byte_exact", "dir-zstd");
}

#[test]
fn nydus_dir_lz4_block_byte_exact() {
    serve_fixture("nydus_dir_lz4_block_byte_exact", "dir-lz4_block");
}

#[test]
fn nydus_targz_rafs_byte_exact() {
    serve_fixture("nydus_targz_rafs_byte_exact", "targz-rafs");
}

/// zran: the data blob is the original gzip layer (`tree.tar.gz` itself); chunks are decoded
/// by resuming inflate at the contexts in the separate meta blob.
#[test]
fn nydus_targz_ref_byte_exact() {
    serve_fixture("nydus_targz_ref_byte_exact", "targz-ref");
}

/// A 100-byte read in the middle of a 2.5 MB incompressible file (three 1 MiB chunks) fetches
/// and decodes only the chunk it touches, and returns the right bytes.
#[test]
fn nydus_partial_read_fetches_only_the_touched_chunk() {
    let Some((s, tree, img)) = prepare("nydus_partial_read_fetches_only_the_touched_chunk", "dir-zstd") else { return };
    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);
    let want = std::fs::read(tree.join("data/random_2_5m")).unwrap();
    // No readahead: the page read is the only backing read.
    let f = open_without_readahead(&mnt.0.join("data/random_2_5m"));
    let off = (1 << 20) + 300_000;
    let mut buf = vec![0u8; 100];
    f.read_exact_at(&mut buf, off as u64).unwrap();
    assert!(buf == want[off..off + 100], "partial read returned wrong bytes");
    let chunks = d.cache_files_sum("groups_fetched");
    let stored = d.cache_files_sum("stored_bytes");
    eprintln!("partial read: {chunks} chunk(s), {stored} stored bytes; metrics {}", d.metrics());
    assert_eq!(chunks, 1, "a 100-byte read inside one chunk decoded {chunks} chunks");
    assert!(stored <= (1 << 20) + 4096, "fetched {stored} stored bytes for one 1 MiB chunk");
    // The whole file still reads right, each remaining chunk fetched once.
    assert!(std::fs::read(mnt.0.join("data/random_2_5m")).unwrap() == want);
    eprintln!("after the whole file: {}", d.metrics());
    // The file's three chunks at least; a sequential read also starts read-ahead of the chunks
    // after it (src/core/readahead.rs), so the upper bound is the read-ahead policy's, not ours.
    let n = d.cache_files_sum("groups_fetched");
    assert!(n >= 3, "{n} chunks decoded for a three-chunk file");
    assert_eq!(d.blobs_sum("errors"), 0);
    drop(f);
    d.umount(&mnt.0);
}

/// `dir-zstd` with one byte changed in the raw (stored uncompressed) chunk holding the second
/// MiB of `data/random_2_5m`: nothing to decompress, so only the chunk's blake3 digest from the
/// bootstrap's chunk table can catch it. A reader of that chunk gets EIO, every time, never the
/// changed bytes; the file's other chunks and the other files read right.
#[test]
fn nydus_altered_chunk_is_eio_never_wrong_bytes() {
    let Some((s, tree, img)) = prepare("nydus_altered_chunk_is_eio_never_wrong_bytes", "dir-zstd") else { return };
    let want = std::fs::read(tree.join("data/random_2_5m")).unwrap();
    let boot = std::fs::read(img.join("image.boot")).unwrap();
    let rb = erofs::rafs::parse_blob_table(&boot, 1).unwrap().remove(0);
    let blob_path = img.join("blobs").join(&rb.id);
    let mut blob = std::fs::read(&blob_path).unwrap();
    let meta = &blob[rb.meta_range().start as usize..rb.meta_range().end as usize];
    let chunks = erofs::rafs::read_blob_meta(&rb, meta).unwrap().chunks;
    let stored = |c: &erofs::rafs::Chunk| c.stored.start as usize..c.stored.end as usize;
    let c = chunks.iter().find(|c| !c.compressed && blob[stored(c)] == want[1 << 20..2 << 20]);
    let c = c.expect("the file's second MiB as a raw chunk");
    let in_chunk = 300_000;
    blob[c.stored.start as usize + in_chunk] ^= 0x04;
    std::fs::write(&blob_path, &blob).unwrap();

    let d = Daemon::start(s.path(), false);
    let mnt = MountDir::new(s.path(), "mnt");
    d.mount(&img, &mnt.0);
    // No readahead: each read below asks for its own chunk only.
    let f = open_without_readahead(&mnt.0.join("data/random_2_5m"));
    let mut buf = vec![0u8; 100];
    let read_at = |buf: &mut [u8], off: usize| f.read_exact_at(buf, off as u64).map_err(|e| e.raw_os_error());
    read_at(&mut buf, 12_345).unwrap();
    assert!(buf == want[12_345..12_445], "first chunk");
    for _ in 0..2 {
        assert_eq!(read_at(&mut buf, (1 << 20) + in_chunk), Err(Some(libc::EIO)), "the altered chunk must be EIO");
    }
    read_at(&mut buf, (2 << 20) + 1000).unwrap();
    assert!(buf == want[(2 << 20) + 1000..(2 << 20) + 1100], "last chunk");
    let whole = std::fs::read(mnt.0.join("data/random_2_5m")).map_err(|e| e.raw_os_error());
    assert_eq!(whole, Err(Some(libc::EIO)), "whole file");
    for p in ["data/text_3m", "bin/busybox", "pyjson/decoder.py"] {
        assert!(std::fs::read(mnt.0.join(p)).unwrap() == std::fs::read(tree.join(p)).unwrap(), "{p}");
    }
    let log = std::fs::read_to_string(s.path().join("daemon.log")).unwrap();
    assert!(log.contains("blake3 mismatch (chunk table "), "the daemon log names the failure:\n{}", d.log_text());
    let errors = d.blobs_sum("errors");
    eprintln!("altered chunk: EIO; blob errors {errors}; metrics {}", d.metrics());
    assert!(errors > 0);
    drop(f);
    d.umount(&mnt.0);
}
