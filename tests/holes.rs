//! Zero runs and holes, as `erofsd build` writes them and as the fanotify door serves them.
//!
//! EROFS over fscache zero-fills the rest of a read that starts in an interior hole (a hole
//! with data after it; `erofs::holes`), so the builder writes none: every zero chunk before a
//! file's last data chunk addresses one stored zero chunk, and only trailing zero chunks stay
//! holes. The shapes come from `common::shapes` (the fixed ones the bug was found with, and a
//! seeded random set whose seed is printed; `EROFSD_SHAPES_SEED` replays one). The cachefiles
//! door reads the same shapes in the QEMU guests (kernel-tests guest test `erofsd-holes`).

mod common;
mod fanotify_harness;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::data::Rng;
use common::shapes::{self, Shape};
use common::{cli, fixtures};
use erofs::reader::{ExtentKind, FileKind, Image};
use fanotify_harness::{drop_caches, require_fanotify, Daemon, MountDir};

/// The previous builder's image of `shapes::fixture()` (64 KiB chunks), with interior holes.
fn old_fixture() -> PathBuf {
    common::env::repo_root().join("tests/fixtures/interior-holes")
}

/// Writes the fixed and `seed`'s random shapes under `dir` (`fixed/`, `random/`); returns
/// every shape by its path relative to `dir`.
fn write_shapes(dir: &Path, seed: u64, n: usize) -> BTreeMap<String, Shape> {
    let mut all = BTreeMap::new();
    for (sub, list) in [("fixed", shapes::fixed()), ("random", shapes::random(seed, n))] {
        shapes::write_all(&dir.join(sub), &list).unwrap();
        for s in list {
            all.insert(format!("{sub}/{}", s.name), s);
        }
    }
    all
}

/// Reads every file of the image at `img` through the reader, with blob bytes from the raw
/// address spaces `erofsd check --write-raw` wrote (so every group was verified on the way).
fn read_through_raw(img: &Path, raw: &Path) -> BTreeMap<String, Vec<u8>> {
    cli::erofsd_check(img, &img.join("blobs"), Some(raw));
    read_with_raw(&std::fs::read(img.join("image.boot")).unwrap(), raw)
}

/// Every file of the bootstrap `boot` through the reader, blob bytes from `raw/<blob id>`.
fn read_with_raw(boot: &[u8], raw: &Path) -> BTreeMap<String, Vec<u8>> {
    let image = Image::open(boot).unwrap();
    let ids: Vec<String> = image.blobs().unwrap_or_default().iter().map(|b| b.id_hex()).collect();
    let mut files = Vec::new();
    image
        .walk(&mut |e| {
            if e.inode.kind == FileKind::File {
                files.push((String::from_utf8(e.path.to_vec()).unwrap(), e.inode.clone()));
            }
            Ok(())
        })
        .unwrap();
    let mut out = BTreeMap::new();
    for (p, ino) in files {
        let mut buf = vec![0u8; ino.size as usize];
        image
            .read_file(&ino, 0, &mut buf, &mut |dev, off, dst| {
                std::fs::File::open(raw.join(&ids[dev as usize - 1]))?.read_exact_at(dst, off)
            })
            .unwrap();
        out.insert(p, buf);
    }
    out
}

#[test]
fn builder_writes_no_interior_hole_for_any_shape() {
    let s = fixtures::scratch("builder_writes_no_interior_hole_for_any_shape");
    let seed = shapes::seed_from_env();
    let src = s.path().join("src");
    let shapes = write_shapes(&src, seed, 200);
    let variants: [(&str, &[&str]); 4] = [
        ("zstd", &[]),
        ("lz4", &["--compress", "lz4"]),
        ("none", &["--compress", "none"]),
        ("small-chunks", &["--chunk-size", "64K", "--group-size", "64K"]),
    ];
    for (name, args) in variants {
        let img = s.path().join(name);
        let out = cli::erofsd_build(&[&src], &img, args);
        let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let boot = std::fs::read(img.join("image.boot")).unwrap();
        let image = Image::open(&boot[..]).unwrap();
        let holes = erofs::holes::interior_holes(&image).unwrap();
        assert!(holes.is_empty(), "{name} (seed {seed}): interior holes in {:?}", holes.iter().map(|h| String::from_utf8_lossy(&h.path)).collect::<Vec<_>>());
        // Every zero chunk that is not trailing addresses the same stored zero chunk.
        let mut zero_at = std::collections::HashSet::new();
        let chunk = if name == "small-chunks" { 64 << 10 } else { 1 << 20 };
        for (path, shape) in &shapes {
            let content = shape.content();
            let ino = image.lookup(path).unwrap();
            if ino.layout != erofs::ondisk::LAYOUT_CHUNK_BASED {
                continue;
            }
            for (i, c) in content.chunks(chunk).enumerate() {
                if c.iter().all(|&b| b == 0) {
                    if let ExtentKind::Chunk { device_id, offset } = image.map_at(&ino, (i * chunk) as u64).unwrap().kind {
                        zero_at.insert((device_id, offset));
                    }
                }
            }
        }
        assert_eq!(zero_at.len(), 1, "{name} (seed {seed}): zero chunks at {zero_at:?}\n{report}");
        let got = read_through_raw(&img, &s.path().join(format!("{name}-raw")));
        assert_eq!(got.len(), shapes.len(), "{name}");
        for (path, shape) in &shapes {
            assert!(got[path] == shape.content(), "{name} (seed {seed}): {path} reads differently from its source");
        }
        eprintln!("{name}: {} files equal; {}", shapes.len(), report.lines().find(|l| l.contains("chunks")).unwrap_or(""));
    }
}

#[test]
fn old_interior_hole_fixture_is_reported_and_redirects_right() {
    let s = fixtures::scratch("old_interior_hole_fixture_is_reported_and_redirects_right");
    let fx = old_fixture();
    let out = cli::run_ok(cli::erofsd_bin(), ["check".as_ref(), fx.as_os_str()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("4 file(s) have interior holes"), "{text}");
    assert!(text.contains("interior holes: /data-zeros-data: 2 chunk(s) of 65536 bytes, first at byte 65536"), "{text}");
    assert!(!text.contains("trailing-zeros"), "a file with only trailing zeros has no interior hole: {text}");
    // The fixture really is the old shape: its bootstrap has interior holes.
    let boot = std::fs::read(fx.join("image.boot")).unwrap();
    let redirected = erofs::holes::redirect_interior_holes(&boot).unwrap().expect("the fixture has interior holes");
    assert_eq!(redirected.files, 4);
    // The original and the redirected bootstrap (read with zeros past its end, as the
    // cachefiles door serves it) both give every file's source bytes.
    let raw = s.path().join("raw");
    let before = read_through_raw(&fx, &raw);
    let mut object = redirected.bootstrap.clone();
    object.resize(redirected.size as usize, 0);
    let after = read_with_raw(&object, &raw);
    for shape in shapes::fixture() {
        assert!(before[&shape.name] == shape.content(), "{} reads differently from its source", shape.name);
        assert!(after[&shape.name] == shape.content(), "{} reads differently through the redirected bootstrap", shape.name);
    }
}

/// Every file read sequentially, then in shuffled pieces of random size, with a cold page
/// cache each time, against its source bytes.
fn read_back(mnt: &Path, files: &BTreeMap<String, Vec<u8>>, seed: u64) {
    drop_caches();
    for (p, want) in files {
        let got = std::fs::read(mnt.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(got == *want, "{p}: sequential read differs ({} bytes, seed {seed})", want.len());
    }
    drop_caches();
    let mut r = Rng::new(seed);
    for (p, want) in files {
        let f = std::fs::File::open(mnt.join(p)).unwrap();
        let pieces = shapes::random_pieces(&mut r, want.len() as u64);
        for (at, len) in pieces {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, at).unwrap();
            assert!(buf[..] == want[at as usize..(at + len) as usize], "{p}: {len} bytes at {at} differ (seed {seed})");
        }
    }
}

#[test]
fn fanotify_reads_every_shape_and_the_old_fixture() {
    let test = "fanotify_reads_every_shape_and_the_old_fixture";
    let s = fixtures::scratch(test);
    if !require_fanotify(test, s.path()) {
        return;
    }
    let seed = shapes::seed_from_env();
    let src = s.path().join("src");
    let shapes = write_shapes(&src, seed, 200);
    let d = Daemon::start(s.path(), false);
    for (name, args) in [("zstd", &[][..]), ("lz4", &["--compress", "lz4"][..]), ("none", &["--compress", "none"][..])] {
        let img = s.path().join(name);
        cli::erofsd_build(&[&src], &img, args);
        let mnt = MountDir::new(s.path(), &format!("mnt-{name}"));
        d.mount(&img, &mnt.0);
        let files: BTreeMap<String, Vec<u8>> = shapes.iter().map(|(p, sh)| (p.clone(), sh.content())).collect();
        read_back(&mnt.0, &files, seed);
        d.umount(&mnt.0);
    }
    // The previous builder's interior holes read right through this door as they are.
    let mnt = MountDir::new(s.path(), "mnt-old");
    d.mount(&old_fixture(), &mnt.0);
    let files = shapes::fixture().into_iter().map(|sh| (sh.name.clone(), sh.content())).collect();
    read_back(&mnt.0, &files, seed);
    d.umount(&mnt.0);
    assert_eq!(d.frontend("denied"), 0);
}
