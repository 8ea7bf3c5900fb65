//! Kernel round trips on the host (root, 6.12+ kernel with file-backed EROFS mounts):
//! `erofsd build` a tree, mount the bootstrap with the blobs as `device=` files through the
//! mount(2) syscall, and compare the mounted tree with the source, entry by entry.
//!
//! * `--compress none`: the stored blobs are the address space; they are mounted directly.
//! * zstd: `erofsd check --write-raw` verifies every group and writes each blob's address
//!   space, which is then mounted.
//!
//! fsck.erofs (erofs-utils 1.5) must accept every bootstrap too.

mod common;

use std::path::{Path, PathBuf};

use common::compare::{assert_trees_equal, Mtime, Options};
use common::{cli, devtable, env, fixtures, mount::Mount};

enum Data {
    /// `--compress none`: mount `OUT/blobs/<id>` directly.
    Raw,
    /// Compressed: `erofsd check --write-raw` first, mount what it wrote.
    ViaCheck,
}

struct Case<'a> {
    test: &'a str,
    sources: Vec<PathBuf>,
    build_args: &'a [&'a str],
    data: Data,
    reference: PathBuf,
    opts: Options,
    /// The image must hold at least this many regular files (guards against comparing an
    /// empty tree with an empty tree).
    min_files: usize,
}

fn roundtrip(c: Case) {
    let s = fixtures::scratch(c.test);
    let out = s.path().join("out");
    let srcs: Vec<&Path> = c.sources.iter().map(|p| p.as_path()).collect();
    cli::erofsd_build(&srcs, &out, c.build_args);
    let boot = out.join("image.boot");
    let blobs = out.join("blobs");

    // Every blob file is named by the sha256 of its stored bytes.
    let slots = devtable::device_slots(&boot);
    assert!(!slots.is_empty(), "image has no blob devices");
    for slot in &slots {
        let p = blobs.join(&slot.tag);
        let digest = sha256_file(&p);
        assert_eq!(digest, slot.tag, "blob {} is not named by its sha256", p.display());
    }

    inspect_agrees(&boot, &blobs, &slots, matches!(c.data, Data::Raw));

    let dev_dir = match c.data {
        Data::Raw => blobs.clone(),
        Data::ViaCheck => {
            let raw = s.path().join("raw");
            cli::erofsd_check(&boot, &blobs, Some(&raw));
            raw
        }
    };
    let devices = devtable::erofsd_devices(&boot, &dev_dir);
    let mut fsck = vec![];
    for d in &devices {
        fsck.push(format!("--device={}", d.display()));
    }
    fsck.push(boot.display().to_string());
    cli::run_ok("fsck.erofs", &fsck);

    let m = Mount::erofs(&boot, &devices).unwrap_or_else(|e| panic!("{}: {e}", c.test));
    let r = assert_trees_equal(&c.reference, m.path(), &c.opts);
    assert!(r.regular_files >= c.min_files, "{}: only {} regular files compared", c.test, r.regular_files);
    drop(m);

    if matches!(c.data, Data::Raw) {
        // With --compress none, check --write-raw (when available) must reproduce the blobs.
        let raw = s.path().join("raw-none");
        let out = cli::run(cli::erofsd_bin(), ["check".as_ref(), boot.as_os_str(), "--blob-dir".as_ref(), blobs.as_os_str(), "--write-raw".as_ref(), raw.as_os_str()]);
        assert!(out.status.success(), "erofsd check of a --compress none image failed:\n{}", cli::tail(&out.stderr));
        for (d, slot) in devices.iter().zip(&slots) {
            assert!(std::fs::read(d).unwrap() == std::fs::read(raw.join(&slot.tag)).unwrap(), "raw address space differs from the uncompressed blob {}", slot.tag);
        }
    }

}

/// `erofsd inspect --json` (our reader) must list the same devices, in the same order, as the
/// independent device-table parser the mounts use, with blob records that match the files.
fn inspect_agrees(boot: &Path, blobs: &Path, slots: &[devtable::DeviceSlot], uncompressed: bool) {
    let out = cli::run_ok(cli::erofsd_bin(), ["inspect".as_ref(), "--json".as_ref(), "--no-tree".as_ref(), boot.as_os_str()]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints JSON");
    let devices = v["devices"].as_array().expect("devices array");
    let tags: Vec<&str> = devices.iter().map(|d| d["tag"].as_str().unwrap()).collect();
    let want: Vec<&str> = slots.iter().map(|s| s.tag.as_str()).collect();
    assert_eq!(tags, want, "inspect --json device order");
    let records = v["blobs"].as_array().expect("an erofsd image has a blob table");
    assert_eq!(records.len(), slots.len());
    for (r, slot) in records.iter().zip(slots) {
        assert_eq!(r["id"].as_str(), Some(slot.tag.as_str()));
        let stored = std::fs::metadata(blobs.join(&slot.tag)).unwrap().len();
        assert_eq!(r["stored_size"].as_u64(), Some(stored), "stored_size of {}", slot.tag);
        assert_eq!(r["uncompressed_size"].as_u64(), Some(slot.blocks as u64 * 4096), "uncompressed_size of {}", slot.tag);
        if uncompressed {
            assert_eq!(r["compression"].as_str(), Some("none"));
            assert_eq!(stored, slot.blocks as u64 * 4096, "--compress none: stored blob is the address space");
        }
    }
}

fn sha256_file(p: &Path) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::io::copy(&mut f, &mut h).unwrap();
    hex::encode(h.finalize())
}

fn alltypes() -> PathBuf {
    fixtures::fixture("alltypes").join("tree")
}

fn rootfs() -> PathBuf {
    fixtures::fixture("rootfs").join("tree")
}

macro_rules! needs_kernel {
    ($name:expr) => {
        if !env::require_erofs_mount($name) || !env::require_tools($name, &["fsck.erofs"]) {
            return;
        }
    };
}

#[test]
fn alltypes_uncompressed() {
    needs_kernel!("alltypes_uncompressed");
    roundtrip(Case {
        test: "alltypes-none",
        sources: vec![alltypes()],
        build_args: &["--compress", "none"],
        data: Data::Raw,
        reference: alltypes(),
        opts: Options::default(),
        min_files: 3900,
    });
}

#[test]
fn alltypes_zstd() {
    needs_kernel!("alltypes_zstd");
    roundtrip(Case {
        test: "alltypes-zstd",
        sources: vec![alltypes()],
        build_args: &["--compress", "zstd"],
        data: Data::ViaCheck,
        reference: alltypes(),
        opts: Options::default(),
        min_files: 3900,
    });
}

#[test]
fn alltypes_lz4() {
    needs_kernel!("alltypes_lz4");
    roundtrip(Case {
        test: "alltypes-lz4",
        sources: vec![alltypes()],
        build_args: &["--compress", "lz4"],
        data: Data::ViaCheck,
        reference: alltypes(),
        opts: Options::default(),
        min_files: 3900,
    });
}

/// Smallest chunks and groups: every 4 KiB block its own chunk, many groups per file.
#[test]
fn alltypes_zstd_4k_chunks_and_groups() {
    needs_kernel!("alltypes_zstd_4k_chunks_and_groups");
    roundtrip(Case {
        test: "alltypes-4k",
        sources: vec![alltypes()],
        build_args: &["--compress", "zstd", "--chunk-size", "4K", "--group-size", "4K"],
        data: Data::ViaCheck,
        reference: alltypes(),
        opts: Options::default(),
        min_files: 3900,
    });
}

/// Large chunks, groups larger than most files.
#[test]
fn alltypes_uncompressed_4m_chunks() {
    needs_kernel!("alltypes_uncompressed_4m_chunks");
    roundtrip(Case {
        test: "alltypes-4m",
        sources: vec![alltypes()],
        build_args: &["--compress", "none", "--chunk-size", "4M", "--group-size", "1M"],
        data: Data::Raw,
        reference: alltypes(),
        opts: Options::default(),
        min_files: 3900,
    });
}

#[test]
fn rootfs_uncompressed() {
    needs_kernel!("rootfs_uncompressed");
    roundtrip(Case {
        test: "rootfs-none",
        sources: vec![rootfs()],
        build_args: &["--compress", "none"],
        data: Data::Raw,
        reference: rootfs(),
        opts: Options::default(),
        min_files: 6000,
    });
}

#[test]
fn rootfs_zstd() {
    needs_kernel!("rootfs_zstd");
    roundtrip(Case {
        test: "rootfs-zstd",
        sources: vec![rootfs()],
        build_args: &["--compress", "zstd"],
        data: Data::ViaCheck,
        reference: rootfs(),
        opts: Options::default(),
        min_files: 6000,
    });
}

/// The same rootfs as a tar (GNU tar, POSIX format with xattrs and nanosecond mtimes):
/// a single-layer build must give the same tree as the directory build.
#[test]
fn rootfs_tar_zstd() {
    needs_kernel!("rootfs_tar_zstd");
    let fx = fixtures::fixture("rootfs");
    roundtrip(Case {
        test: "rootfs-tar",
        sources: vec![fx.join("rootfs.tar")],
        build_args: &["--compress", "zstd"],
        data: Data::ViaCheck,
        reference: fx.join("tree"),
        opts: Options { mtime: Mtime::Exact, ..Options::default() },
        min_files: 6000,
    });
}
