//! Tests of the test harness itself, so a green round-trip test means something:
//! * the comparator finds every kind of difference it claims to check;
//! * the mount + compare pipeline passes for images made by the reference tool
//!   (`mkfs.erofs --blobdev`, erofs-utils 1.5) and mounted by the real kernel.

mod common;

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::compare::{assert_trees_equal, compare_trees, Mtime, Options};
use common::{cli, devtable, env, fixtures, mount::Mount};

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    assert_eq!(r, 0, "setxattr {name} on {}: {}", p.display(), std::io::Error::last_os_error());
}

fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let ts = [libc::timespec { tv_sec: 0, tv_nsec: libc::UTIME_OMIT }, libc::timespec { tv_sec: sec, tv_nsec: nsec }];
    let r = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), ts.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    assert_eq!(r, 0, "utimensat {}", p.display());
}

/// A small tree with one of everything the comparator checks (user.* xattrs only, so it works
/// unprivileged; devices and owners are added when root).
fn small_tree(root: &Path) {
    std::fs::create_dir_all(root.join("d/sub")).unwrap();
    std::fs::write(root.join("d/file"), vec![7u8; 100_000]).unwrap();
    std::fs::write(root.join("d/small"), b"hello").unwrap();
    std::fs::hard_link(root.join("d/file"), root.join("d/sub/file-link")).unwrap();
    std::fs::write(root.join("d/other"), b"other").unwrap();
    symlink("file", root.join("d/sym")).unwrap();
    nix::unistd::mkfifo(&root.join("d/fifo"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    set_xattr(&root.join("d/small"), "user.k", b"v");
    set_mtime(&root.join("d/small"), 1_600_000_000, 123_456_789);
    if env::is_root() {
        nix::sys::stat::mknod(
            &root.join("d/dev"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap();
    }
}

#[test]
fn comparator_finds_every_kind_of_difference() {
    let s = fixtures::scratch("comparator");
    let reference = s.path().join("ref");
    small_tree(&reference);
    let copy = |name: &str| -> PathBuf {
        let p = s.path().join(name);
        cp_a(&reference, &p);
        p
    };
    let o = Options::default();

    // A faithful copy compares equal, and the comparison covered the tree.
    let same = copy("same");
    let r = assert_trees_equal(&reference, &same, &o);
    assert!(r.regular_files >= 4 && r.bytes >= 100_005 && r.hardlink_groups == 1 && r.xattrs >= 1, "{r:?}");

    type Mutation = (&'static str, fn(&Path), &'static str);
    let mut cases: Vec<Mutation> = vec![
        ("content", |t| {
            let mut v = std::fs::read(t.join("d/file")).unwrap();
            v[77_777] ^= 1;
            let mt = std::fs::symlink_metadata(t.join("d/file")).unwrap();
            std::fs::write(t.join("d/file"), v).unwrap();
            set_mtime(&t.join("d/file"), mt.mtime(), mt.mtime_nsec());
        }, "content differs at byte 77777"),
        ("size", |t| std::fs::write(t.join("d/other"), b"other!").unwrap(), "size 5 vs 6"),
        ("mode", |t| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(t.join("d/small"), std::fs::Permissions::from_mode(0o4644)).unwrap()
        }, "mode"),
        ("mtime-nsec", |t| set_mtime(&t.join("d/small"), 1_600_000_000, 123_456_788), "mtime 1600000000.123456789 vs 1600000000.123456788"),
        ("xattr-value", |t| set_xattr(&t.join("d/small"), "user.k", b"w"), "xattr user.k"),
        ("xattr-extra", |t| set_xattr(&t.join("d/other"), "user.new", b""), "extra xattr user.new"),
        ("symlink", |t| {
            std::fs::remove_file(t.join("d/sym")).unwrap();
            symlink("other", t.join("d/sym")).unwrap();
        }, "symlink target"),
        ("hardlink-broken", |t| {
            std::fs::remove_file(t.join("d/sub/file-link")).unwrap();
            std::fs::copy(t.join("d/file"), t.join("d/sub/file-link")).unwrap();
        }, "nlink"),
        ("missing", |t| std::fs::remove_file(t.join("d/other")).unwrap(), "/d/other: missing"),
        ("extra", |t| std::fs::write(t.join("d/sub/new"), b"").unwrap(), "/d/sub/new: unexpected extra entry"),
        ("type", |t| {
            std::fs::remove_file(t.join("d/fifo")).unwrap();
            std::fs::create_dir(t.join("d/fifo")).unwrap();
        }, "type fifo vs directory"),
    ];
    if env::is_root() {
        cases.push(("owner", |t| nix::unistd::chown(&t.join("d/small"), Some(1234.into()), None).unwrap(), "owner 0:0 vs 1234:0"));
        cases.push(("device", |t| {
            std::fs::remove_file(t.join("d/dev")).unwrap();
            nix::sys::stat::mknod(
                &t.join("d/dev"),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(1, 5),
            )
            .unwrap();
        }, "device 1:3 vs 1:5"));
    }
    for (name, mutate, expect) in cases {
        let t = copy(name);
        mutate(&t);
        let r = compare_trees(&reference, &t, &o);
        assert!(
            r.diffs.iter().any(|d| d.contains(expect)),
            "mutation {name}: expected a difference containing {expect:?}, got {:?}",
            r.diffs
        );
    }

    // Hard-link identity on its own: same nlink, different partition.
    let a = s.path().join("links-a");
    let b = s.path().join("links-b");
    for t in [&a, &b] {
        std::fs::create_dir(t).unwrap();
        for n in ["1", "2", "3", "4"] {
            std::fs::write(t.join(n), b"x").unwrap();
        }
    }
    std::fs::remove_file(a.join("2")).unwrap();
    std::fs::hard_link(a.join("1"), a.join("2")).unwrap();
    std::fs::remove_file(a.join("4")).unwrap();
    std::fs::hard_link(a.join("3"), a.join("4")).unwrap();
    std::fs::remove_file(b.join("3")).unwrap();
    std::fs::hard_link(b.join("1"), b.join("3")).unwrap();
    std::fs::remove_file(b.join("4")).unwrap();
    std::fs::hard_link(b.join("2"), b.join("4")).unwrap();
    let o = Options { mtime: Mtime::Ignore, root_meta: false, ..Options::default() };
    let r = compare_trees(&a, &b, &o);
    assert!(r.diffs.iter().any(|d| d.starts_with("hard links:")), "partition change not found: {:?}", r.diffs);
}

/// Builds `tree` with `mkfs.erofs --chunksize=65536 --blobdev`, mounts it, compares.
fn mkfs_erofs_roundtrip(test: &str, tree: &Path) {
    let s = fixtures::scratch(test);
    let (img, blob) = (s.path().join("image.erofs"), s.path().join("blob"));
    let mut args: Vec<&std::ffi::OsStr> = vec!["--chunksize=65536".as_ref()];
    let blobdev = format!("--blobdev={}", blob.display());
    args.push(blobdev.as_ref());
    args.push(img.as_os_str());
    args.push(tree.as_os_str());
    cli::run_ok("mkfs.erofs", args);
    let slots = devtable::device_slots(&img);
    assert_eq!(slots.len(), 1, "mkfs.erofs --blobdev makes one device: {slots:?}");
    cli::run_ok("fsck.erofs", [format!("--device={}", blob.display()), img.display().to_string()]);
    let m = Mount::erofs(&img, &[blob]).unwrap();
    // mkfs.erofs 1.5 stores the root's own mtime as the build time; everything else exactly.
    let o = Options { root_meta: false, ..Options::default() };
    let r = assert_trees_equal(tree, m.path(), &o);
    assert!(r.regular_files > 100, "{}", r.summary());
}

#[test]
fn mkfs_erofs_alltypes_roundtrip() {
    if !env::require_erofs_mount("mkfs_erofs_alltypes_roundtrip") || !env::require_tools("mkfs_erofs_alltypes_roundtrip", &["mkfs.erofs", "fsck.erofs"]) {
        return;
    }
    mkfs_erofs_roundtrip("mkfs-alltypes", &fixtures::fixture("alltypes-compat").join("tree"));
}

#[test]
fn mkfs_erofs_rootfs_roundtrip() {
    if !env::require_erofs_mount("mkfs_erofs_rootfs_roundtrip") || !env::require_tools("mkfs_erofs_rootfs_roundtrip", &["mkfs.erofs", "fsck.erofs"]) {
        return;
    }
    mkfs_erofs_roundtrip("mkfs-rootfs", &fixtures::fixture("rootfs").join("tree"));
}
