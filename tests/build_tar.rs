//! Builder tests on OCI layer tars: entry kinds, PAX metadata, compression detection,
//! replacement rules, whiteouts (single layer) and `--merge`.

mod build_common;

use build_common::*;
use erofsd::build::{self, BuildOptions};
use tar::EntryType;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

fn sample_layer() -> Vec<u8> {
    let mut t = TarMaker::new();
    t.dir("./", 0o755)
        .dir("etc/", 0o755)
        .file_mode("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644, 0, 0)
        .pax(&[
            ("SCHILY.xattr.security.capability", &[1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..]),
            ("SCHILY.xattr.user.note", b"hello"),
            ("mtime", b"1700000123.456789012"),
            ("uid", b"100000"),
        ])
        .file_mode("usr/bin/ping", &noise(300_000, 1), 0o4755, 0, 0)
        .file("usr/share/big.txt", &text(3 * 1048576 + 77, 2))
        .file("usr/share/zero", &vec![0u8; 2 * 1048576])
        .symlink("usr/bin/sh", "/bin/dash")
        .symlink("usr/lib/rel", "../share/big.txt")
        .hardlink("usr/bin/ping6", "usr/bin/ping")
        .dev("dev/null", EntryType::Char, 1, 3)
        .dev("dev/sda", EntryType::Block, 8, 0)
        .dev("run/fifo", EntryType::Fifo, 0, 0);
    let long = format!("deep/{}/{}", "d".repeat(200), "f".repeat(250));
    t.file(&long, b"long name");
    t.finish()
}

#[test]
fn tar_layer_roundtrip_plain_gzip_zstd() {
    let t = scratch();
    let tar = sample_layer();
    let mut ids = Vec::new();
    for (name, bytes) in [("plain.tar", tar.clone()), ("layer.tar.gz", gzip(&tar)), ("layer.tar.zst", zstd(&tar))] {
        let out = t.path().join(format!("out-{name}"));
        let r = build::build(&[tar_source(t.path(), name, &bytes)], &out, &BuildOptions::default()).unwrap();
        ids.push(r.blobs.iter().map(|(b, _)| b.id).collect::<Vec<_>>());
        let s = open(&out).snapshot();
        let e = |p: &str| s.get(p).unwrap_or_else(|| panic!("{p} missing; have {:?}", s.keys()));
        assert_eq!(e("/etc/passwd").data, b"root:x:0:0::/root:/bin/sh\n");
        let ping = e("/usr/bin/ping");
        assert_eq!(ping.data, noise(300_000, 1));
        assert_eq!(ping.mode, S_IFREG | 0o4755);
        assert_eq!(ping.mtime, (1700000123, 456789012));
        assert_eq!(ping.uid, 100000);
        assert_eq!(
            ping.xattrs,
            vec![
                (b"security.capability".to_vec(), vec![1, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
                (b"user.note".to_vec(), b"hello".to_vec())
            ]
        );
        assert_eq!(ping.nlink, 2);
        assert_eq!(e("/usr/bin/ping6").nid, ping.nid);
        assert_eq!(e("/usr/share/big.txt").data, text(3 * 1048576 + 77, 2));
        assert_eq!(e("/usr/share/zero").data, vec![0u8; 2 * 1048576]);
        assert_eq!(e("/usr/bin/sh").data, b"/bin/dash");
        assert_eq!(e("/usr/lib/rel").data, b"../share/big.txt");
        assert_eq!((e("/dev/null").mode, e("/dev/null").rdev), (S_IFCHR | 0o660, (1, 3)));
        assert_eq!(e("/dev/sda").rdev, (8, 0));
        assert_eq!(e("/run/fifo").mode & 0o170000, 0o010000);
        // Implicit parents: root-owned 0755.
        assert_eq!(e("/usr").mode, S_IFDIR | 0o755);
        assert_eq!(e("/usr").mtime, (0, 0));
        assert_eq!(e("/etc").mtime, (1_700_000_000, 0));
        let long = format!("/deep/{}/{}", "d".repeat(200), "f".repeat(250));
        assert_eq!(e(&long).data, b"long name");
        // An all-zero file needs no blob bytes: its chunks are holes.
        let o = open(&out);
        let ino = o.img.lookup("usr/share/zero").unwrap();
        assert!(o.img.data_map(&ino).unwrap().iter().all(|x| x.kind == erofs::reader::ExtentKind::Hole));
        let rep = build::check::check(&build::check::CheckPaths::resolve(&out, None), None).unwrap();
        assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    }
    // The blob does not depend on how the tar was compressed.
    assert_eq!(ids[0], ids[1]);
    assert_eq!(ids[0], ids[2]);
}

#[test]
fn later_entries_replace_earlier_ones() {
    let t = scratch();
    let mut m = TarMaker::new();
    m.dir("a/", 0o700)
        .file("a/keep", b"kept child")
        .dir("a/", 0o750) // dir over dir: metadata updated, children kept
        .dir("b/", 0o755)
        .file("b/gone", b"dropped with its directory")
        .file("b", b"now a file") // non-dir over dir: subtree dropped
        .file("c", b"first")
        .hardlink("c-link", "c")
        .file("c", b"second version") // replaces c; the hard link keeps the first node
        .symlink("d", "/x")
        .dir("d/", 0o755); // dir over symlink
    let out = t.path().join("out");
    build::build(&[tar_source(t.path(), "l.tar", &m.finish())], &out, &BuildOptions::default()).unwrap();
    let s = open(&out).snapshot();
    assert_eq!(s["/a"].mode, S_IFDIR | 0o750);
    assert_eq!(s["/a/keep"].data, b"kept child");
    assert_eq!(s["/b"].data, b"now a file");
    assert!(!s.contains_key("/b/gone"));
    assert_eq!(s["/c"].data, b"second version");
    assert_eq!(s["/c-link"].data, b"first");
    assert_eq!(s["/c-link"].nlink, 1);
    assert_eq!(s["/d"].mode, S_IFDIR | 0o755);
}

#[test]
fn single_layer_whiteouts_become_overlayfs_markers() {
    let t = scratch();
    let mut m = TarMaker::new();
    m.dir("etc/", 0o755)
        .file("etc/.wh.removed", b"")
        .file("etc/.wh..wh..opq", b"")
        .file("etc/new", b"added")
        .file(".wh.rootgone", b"")
        .dir("same/", 0o755)
        .file(".wh.same", b""); // whiteout after a same-layer dir: the dir stays, opaque
    let out = t.path().join("out");
    let r = build::build(&[tar_source(t.path(), "l.tar", &m.finish())], &out, &BuildOptions::default()).unwrap();
    assert!(r.blobs.is_empty(), "small files only: no blob");
    let s = open(&out).snapshot();
    let keys: Vec<&str> = s.keys().map(|k| k.as_str()).collect();
    assert_eq!(keys, vec!["/", "/etc", "/etc/new", "/etc/removed", "/rootgone", "/same"]);
    for w in ["/etc/removed", "/rootgone"] {
        assert_eq!(s[w].mode & 0o170000, S_IFCHR, "{w} is a char device");
        assert_eq!(s[w].rdev, (0, 0));
    }
    let opq = (b"trusted.overlay.opaque".to_vec(), b"y".to_vec());
    assert_eq!(s["/etc"].xattrs, vec![opq.clone()]);
    assert_eq!(s["/same"].xattrs, vec![opq]);
    assert!(s["/"].xattrs.is_empty());
}

#[test]
fn merge_applies_whiteouts_opaque_and_additions() {
    let t = scratch();
    let big1 = noise(100_000, 11);
    let big2 = noise(200_000, 12);
    let mut l1 = TarMaker::new();
    l1.file("a/x", b"x1")
        .file("a/y", b"y1")
        .file("d/p", b"p1")
        .file("d/sub/q", b"q1")
        .file("f", b"f is a file")
        .file("g/1", b"g1")
        .file("h/old", b"h old")
        .file("keep", &big1)
        .file("shared", &big2);
    let mut l2 = TarMaker::new();
    l2.file("a/.wh.x", b"")
        .file("a/z", b"z2")
        .dir("d/", 0o700)
        .file("d/.wh..wh..opq", b"")
        .file("d/new", b"new2")
        .file(".wh.g", b"")
        .file(".wh.h", b"")
        .file("h/new", b"h new")
        .file("f/inner", b"dir over file")
        .hardlink("a/link", "keep") // target in the lower layer
        .file("dup", &big2) // same content as layer 1's `shared`: deduplicated into device 1
        .file("own", &noise(50_000, 13));
    let mut l3 = TarMaker::new();
    l3.file("a/y", b"y3 small"); // no blob data: no device
    let srcs = vec![
        tar_source(t.path(), "1.tar", &l1.finish()),
        tar_source(t.path(), "2.tar.gz", &gzip(&l2.finish())),
        tar_source(t.path(), "3.tar", &l3.finish()),
    ];
    let out = t.path().join("out");
    let r = build::build(&srcs, &out, &BuildOptions { merge: true, ..BuildOptions::default() }).unwrap();
    assert_eq!(r.blobs.len(), 2, "layers 1 and 2 have blob data, layer 3 none");
    let o = open(&out);
    let s = o.snapshot();
    let keys: Vec<&str> = s.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        keys,
        vec!["/", "/a", "/a/link", "/a/y", "/a/z", "/d", "/d/new", "/dup", "/f", "/f/inner", "/h", "/h/new", "/keep", "/own", "/shared"]
    );
    assert_eq!(s["/a/y"].data, b"y3 small");
    assert_eq!(s["/a/link"].data, big1);
    assert_eq!(s["/a/link"].nid, s["/keep"].nid);
    assert_eq!(s["/keep"].nlink, 2);
    assert_eq!(s["/d"].mode, S_IFDIR | 0o700);
    assert_eq!(s["/dup"].data, big2);
    assert_eq!(s["/own"].data, noise(50_000, 13));
    assert!(s.values().all(|e| e.mode & 0o170000 != S_IFCHR), "no whiteouts left");
    assert!(s.values().all(|e| e.xattrs.is_empty()), "no opaque xattrs in a merged tree");
    let dev_of = |p: &str| match o.img.data_map(&o.img.lookup(p).unwrap()).unwrap()[0].kind {
        erofs::reader::ExtentKind::Chunk { device_id, .. } => device_id,
        k => panic!("{p}: {k:?}"),
    };
    assert_eq!(dev_of("keep"), 1);
    assert_eq!(dev_of("dup"), 1, "deduplicated against the lower layer's blob");
    assert_eq!(dev_of("own"), 2);
    let rep = build::check::check(&build::check::CheckPaths::resolve(&out, None), None).unwrap();
    assert!(rep.problems.is_empty(), "{:?}", rep.problems);
    assert_eq!(rep.blobs_verified, 2);
}

#[test]
fn several_sources_need_merge() {
    let t = scratch();
    let mut l = TarMaker::new();
    l.file("a", b"a");
    let tar = l.finish();
    let srcs = vec![tar_source(t.path(), "1.tar", &tar), tar_source(t.path(), "2.tar", &tar)];
    let err = build::build(&srcs, &t.path().join("out"), &BuildOptions::default()).unwrap_err();
    assert!(format!("{err:#}").contains("--merge"), "{err:#}");
}

#[test]
fn cli_build_from_stdin_and_check() {
    let t = scratch();
    let tar = gzip(&sample_layer());
    let out = t.path().join("out");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_erofsd"))
        .args(["build", "-", "-o"])
        .arg(&out)
        .args(["--chunk-size", "64K", "--group-size", "128K", "--compress", "none"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(&tar).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let s = open(&out).snapshot();
    assert_eq!(s["/usr/bin/ping"].data, noise(300_000, 1));
    let img = open(&out);
    let rec = &img.img.blobs().unwrap()[0];
    assert_eq!(rec.group_size_log2, 17);
    assert_eq!(rec.compression, erofs::blob::Compression::None);

    let raw = t.path().join("raw");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_erofsd")).arg("check").arg(&out).arg("--write-raw").arg(&raw).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(stdout.contains("OK"), "{stdout}");
    // Uncompressed: the raw device equals the stored blob.
    assert_eq!(std::fs::read(raw.join(rec.id_hex())).unwrap(), std::fs::read(out.join("blobs").join(rec.id_hex())).unwrap());

    // Bad option values are clear errors.
    for args in [vec!["--chunk-size", "3K"], vec!["--group-size", "32M"], vec!["--compress", "gzip"]] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_erofsd"))
            .args(["build", "x", "-o"])
            .arg(t.path().join("o2"))
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(args[0]), "{args:?}: {e}");
    }
}

#[test]
fn overlay_xattrs_in_content_are_escaped_for_a_single_layer() {
    let t = scratch();
    let mut m = TarMaker::new();
    m.pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y"), ("SCHILY.xattr.user.k", b"v")]).dir("d/", 0o755);
    let tar = m.finish();
    let out = t.path().join("single");
    build::build(&[tar_source(t.path(), "l.tar", &tar)], &out, &BuildOptions::default()).unwrap();
    let s = open(&out).snapshot();
    assert_eq!(
        s["/d"].xattrs,
        vec![(b"trusted.overlay.overlay.opaque".to_vec(), b"y".to_vec()), (b"user.k".to_vec(), b"v".to_vec())]
    );
    // A merged tree is a plain root filesystem: names stay as they are.
    let out = t.path().join("merged");
    build::build(&[tar_source(t.path(), "l.tar", &tar)], &out, &BuildOptions { merge: true, ..BuildOptions::default() }).unwrap();
    let s = open(&out).snapshot();
    assert_eq!(s["/d"].xattrs, vec![(b"trusted.overlay.opaque".to_vec(), b"y".to_vec()), (b"user.k".to_vec(), b"v".to_vec())]);
}
