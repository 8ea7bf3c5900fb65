//! Hostile and broken layers: each must fail with a clear error naming the problem (and the
//! entry), and leave nothing behind but the empty output directory.

mod build_common;

use build_common::*;
use erofsd::build::{self, BuildOptions};
use tar::EntryType;

/// Builds `layer` into `<scratch>/work/out`; asserts the error mentions every `needles`
/// string and that the only things under `<scratch>/work` are `out/` and `out/blobs/`.
fn expect_fail(layer: &[u8], opts: &BuildOptions, needles: &[&str]) {
    let t = scratch();
    let input = t.path().join("in");
    std::fs::create_dir(&input).unwrap();
    let work = t.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let src = tar_source(&input, "layer.tar", layer);
    let err = build::build(&[src], &work.join("out"), opts).expect_err("hostile layer must fail");
    let msg = format!("{err:#}");
    for n in needles {
        assert!(msg.contains(n), "error {msg:?} should mention {n:?}");
    }
    assert_eq!(list_all(&work), vec!["out".to_string(), "out/blobs".to_string()], "nothing else written ({msg})");
    assert_eq!(list_all(&input), vec!["layer.tar".to_string()]);
    assert_eq!(list_all(t.path()), vec!["in", "in/layer.tar", "work", "work/out", "work/out/blobs"]);
}

fn ok_prefix() -> TarMaker {
    let mut t = TarMaker::new();
    // Blob data first, so a failure must also remove a blob in progress.
    t.file("data", &noise(3 * 1048576, 1));
    t
}

fn defaults() -> BuildOptions {
    BuildOptions::default()
}

#[test]
fn truncated_in_file_data() {
    let mut t = ok_prefix();
    t.file("second", &noise(500_000, 2));
    let tar = t.finish();
    let cut = &tar[..tar.len() - 1024 - 200_000];
    expect_fail(cut, &defaults(), &["\"second\"", "unexpected end of data"]);
}

#[test]
fn truncated_at_a_header_boundary() {
    let mut t = ok_prefix();
    t.file("second", b"x");
    let tar = t.finish();
    // Drop the end-of-archive blocks: looks like a clean end to a lax reader.
    expect_fail(&tar[..tar.len() - 1024], &defaults(), &["truncated tar"]);
    // Cut inside a header.
    let data_end = 512 + 3 * 1048576;
    expect_fail(&tar[..data_end + 100], &defaults(), &["truncated or malformed"]);
}

#[test]
fn truncated_gzip_and_zstd() {
    let tar = ok_prefix().finish();
    let gz = gzip(&tar);
    expect_fail(&gz[..gz.len() / 2], &defaults(), &["data"]);
    let zs = zstd(&tar);
    expect_fail(&zs[..zs.len() / 2], &defaults(), &["data"]);
}

#[test]
fn garbage_empty_and_unsupported_compression() {
    expect_fail(&noise(10_000, 3), &defaults(), &["tar entry #1"]);
    expect_fail(b"", &defaults(), &["empty layer"]);
    expect_fail(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2, 3], &defaults(), &["xz"]);
}

#[test]
fn dotdot_and_absolute_names() {
    let mut t = ok_prefix();
    t.raw(b"a/../../escape", EntryType::Regular, b"", b"evil");
    expect_fail(&t.finish(), &defaults(), &["a/../../escape", "`..`"]);
    let mut t = ok_prefix();
    t.raw(b"/etc/passwd", EntryType::Regular, b"", b"evil");
    expect_fail(&t.finish(), &defaults(), &["/etc/passwd", "absolute path"]);
    let mut t = ok_prefix();
    t.raw(b"..", EntryType::Directory, b"", b"");
    expect_fail(&t.finish(), &defaults(), &["`..`"]);
}

#[test]
fn hard_link_targets() {
    let mut t = ok_prefix();
    t.hardlink("link", "missing");
    expect_fail(&t.finish(), &defaults(), &["\"link\"", "/missing", "not in the layer"]);
    let mut t = ok_prefix();
    t.raw(b"link", EntryType::Link, b"../../etc/shadow", b"");
    expect_fail(&t.finish(), &defaults(), &["hard link target", "`..`"]);
    let mut t = ok_prefix();
    t.raw(b"link", EntryType::Link, b"/data", b"");
    expect_fail(&t.finish(), &defaults(), &["hard link target", "absolute"]);
    let mut t = ok_prefix();
    t.dir("d/", 0o755).hardlink("link", "d");
    expect_fail(&t.finish(), &defaults(), &["is a directory"]);
}

#[test]
fn parents_that_are_not_directories() {
    let mut t = ok_prefix();
    t.symlink("etc", "/host/etc").file("etc/passwd", b"through a symlink");
    expect_fail(&t.finish(), &defaults(), &["etc/passwd", "parent /etc is a symlink"]);
    let mut t = ok_prefix();
    t.file("f", b"file").file("f/x", b"under a file");
    expect_fail(&t.finish(), &defaults(), &["f/x", "parent /f is not a directory"]);
}

#[test]
fn symlinks_climbing_above_the_root() {
    let mut t = ok_prefix();
    t.symlink("a/b/l", "../../../etc/shadow");
    expect_fail(&t.finish(), &defaults(), &["a/b/l", "climbs above the root"]);
    // Absolute targets and in-tree relative ones are fine.
    let mut t = TarMaker::new();
    t.symlink("a/b/abs", "/etc/shadow").symlink("a/b/rel", "../../etc");
    let s = scratch();
    build::build(&[tar_source(s.path(), "l.tar", &t.finish())], &s.path().join("out"), &defaults()).unwrap();
}

#[test]
fn long_names_and_nul_bytes() {
    let mut t = ok_prefix();
    t.file(&"n".repeat(256), b"x");
    expect_fail(&t.finish(), &defaults(), &["limit 255"]);
    let mut t = ok_prefix();
    t.pax(&[("path", b"a\0b")]).file("placeholder", b"x");
    expect_fail(&t.finish(), &defaults(), &["NUL"]);
    let mut t = ok_prefix();
    t.pax(&[("linkpath", b"x\0y")]).symlink("s", "placeholder");
    expect_fail(&t.finish(), &defaults(), &["NUL"]);
    // A path longer than PATH_MAX.
    let mut t = ok_prefix();
    t.file(&"d/".repeat(2100), b"x");
    expect_fail(&t.finish(), &defaults(), &["limit 4096"]);
}

#[test]
fn size_and_entry_limits() {
    let mut t = ok_prefix();
    t.file("a", b"1").file("b", b"2").file("c", b"3");
    expect_fail(&t.finish(), &BuildOptions { max_entries: 3, ..defaults() }, &["\"c\"", "entry limit"]);
    let mut t = ok_prefix();
    t.file("more", &noise(10_000, 4));
    expect_fail(&t.finish(), &BuildOptions { max_size: 3 * 1048576 + 5000, ..defaults() }, &["\"more\"", "size limit"]);
}

#[test]
fn lying_size_header_is_no_huge_allocation() {
    // A header claiming 1 TiB of data followed by 1 KiB: fails as truncated, quickly.
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(EntryType::Regular);
    h.set_path("huge").unwrap();
    h.set_mode(0o644);
    h.set_size(1 << 40);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    let mut tar = h.as_bytes().to_vec();
    tar.extend_from_slice(&[7u8; 1024]);
    let start = std::time::Instant::now();
    expect_fail(&tar, &BuildOptions { max_size: 1 << 41, ..defaults() }, &["huge", "unexpected end of data"]);
    assert!(start.elapsed().as_secs() < 30);
}

#[test]
fn bad_xattrs_and_entry_types() {
    let mut t = ok_prefix();
    t.pax(&[("SCHILY.xattr.user.big", &vec![b'v'; 70_000][..])]).file("x", b"x");
    expect_fail(&t.finish(), &defaults(), &["limit 65535"]);
    let mut t = ok_prefix();
    t.raw(b"weird", EntryType::new(b'X'), b"", b"");
    expect_fail(&t.finish(), &defaults(), &["weird", "unsupported tar entry type"]);
    let mut t = ok_prefix();
    t.raw(b"./", EntryType::Regular, b"", b"");
    expect_fail(&t.finish(), &defaults(), &["root must be a directory"]);
}

#[test]
fn failed_merge_removes_blobs_of_earlier_layers() {
    let t = scratch();
    let good = ok_prefix().finish();
    let mut bad = TarMaker::new();
    bad.hardlink("x", "nowhere");
    let srcs = vec![tar_source(t.path(), "1.tar", &good), tar_source(t.path(), "2.tar", &bad.finish())];
    let out = t.path().join("out");
    let err = build::build(&srcs, &out, &BuildOptions { merge: true, ..defaults() }).unwrap_err();
    assert!(format!("{err:#}").contains("nowhere"), "{err:#}");
    assert_eq!(list_all(&out), vec!["blobs".to_string()]);
}

#[test]
fn gzip_with_a_bad_trailer_or_endless_tail() {
    // A complete tar inside a gzip stream whose CRC trailer is wrong.
    let tar = ok_prefix().finish();
    let mut gz = gzip(&tar);
    let n = gz.len();
    gz[n - 8] ^= 0xFF;
    expect_fail(&gz, &defaults(), &["after the end of the archive"]);
    // Megabytes of junk after the end-of-archive blocks.
    let mut long = tar.clone();
    long.extend(std::iter::repeat_n(0x55u8, 17 << 20));
    expect_fail(&long, &defaults(), &["after the end of the tar archive"]);
}
