//! OCI layers, end to end on the host kernel, from an image made by real tools (umoci):
//! layer 1 = the debootstrap rootfs, layer 2 = umoci repack of a modified bundle (whiteouts of
//! files and directories, replaced directory content, mode/owner changes, new files, hard
//! link, setuid, fifo, xattr), layer 3 = hand-written opaque directories and whiteouts added
//! with `umoci raw add-layer` (see scripts/fixtures/oci.sh).
//!
//! * Each layer built alone carries overlayfs conventions: whiteout = char 0/0, opaque
//!   directory = `trusted.overlay.opaque=y`, and no `.wh.*` names.
//! * The three single-layer images stacked with overlayfs equal `umoci unpack` of the image.
//! * The `--merge` image of the three layers equals both.
//! * Hostile or broken tars fail cleanly and write nothing outside OUTDIR.

mod common;

use std::ffi::OsString;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::compare::{assert_trees_equal, get_xattr, Mtime, Options};
use common::{cli, devtable, env, fixtures, mount::Mount, snapshot};

struct Built {
    _scratch: tempfile::TempDir,
    boot: PathBuf,
    devices: Vec<PathBuf>,
}

/// `erofsd build` (zstd) + `erofsd check --write-raw`, ready to mount.
fn build(test: &str, sources: &[&Path], extra: &[&str]) -> Built {
    let s = fixtures::scratch(test);
    let out = s.path().join("out");
    cli::erofsd_build(sources, &out, extra);
    let boot = out.join("image.boot");
    let raw = s.path().join("raw");
    cli::erofsd_check(&boot, &out.join("blobs"), Some(&raw));
    let devices = devtable::erofsd_devices(&boot, &raw);
    Built { _scratch: s, boot, devices }
}

fn oci() -> PathBuf {
    fixtures::fixture("oci")
}

fn layer(n: usize) -> PathBuf {
    oci().join(format!("layers/{n}.tar.gz"))
}

fn needs(test: &str) -> bool {
    env::require_erofs_mount(test) && env::require(env::kernel_has_fs("overlay"), test, "a kernel with overlayfs")
}

/// umoci writes ustar headers: whole-second mtimes.
fn oci_opts() -> Options {
    Options { mtime: Mtime::Seconds, root_meta: false, ..Options::default() }
}

fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p).map(|m| m.file_type().is_char_device() && m.rdev() == 0).unwrap_or(false)
}

fn opaque(p: &Path) -> Option<Vec<u8>> {
    get_xattr(p, &OsString::from("trusted.overlay.opaque")).ok()
}

fn assert_no_wh_names(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            n += 1;
            assert!(!e.file_name().to_string_lossy().starts_with(".wh."), "whiteout name left in image: {}", e.path().display());
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            }
        }
    }
    assert!(n > 0);
}

#[test]
fn single_layer_images_use_overlay_conventions() {
    if !needs("single_layer_images_use_overlay_conventions") {
        return;
    }
    // Layer 1 alone is the base rootfs, as umoci packed it: ustar headers, mtimes rounded to
    // whole seconds.
    let l1 = build("oci-l1", &[&layer(1)], &[]);
    let m1 = Mount::erofs(&l1.boot, &l1.devices).unwrap();
    let tree = fixtures::fixture("rootfs").join("tree");
    let r = assert_trees_equal(&tree, m1.path(), &Options { mtime: Mtime::WithinSecond, ..oci_opts() });
    assert!(r.regular_files > 6000, "{}", r.summary());

    let l2 = build("oci-l2", &[&layer(2)], &[]);
    let m2 = Mount::erofs(&l2.boot, &l2.devices).unwrap();
    let p2 = m2.path();
    for w in ["usr/share/doc", "usr/share/common-licenses", "etc/hostname", "etc/motd", "usr/bin/rgrep", "etc/apt/apt.conf.d/70debconf"] {
        assert!(is_whiteout(&p2.join(w)), "layer 2: {w} should be a whiteout (char 0/0)");
    }
    assert_eq!(std::fs::read(p2.join("etc/apt/apt.conf.d/99erofsd")).unwrap(), b"APT::Install-Recommends \"false\";\n");
    let blob = std::fs::symlink_metadata(p2.join("opt/app/data/blob")).unwrap();
    assert_eq!((blob.len(), blob.uid(), blob.nlink()), (3 << 20, 100000, 2));
    assert_eq!(blob.ino(), std::fs::symlink_metadata(p2.join("opt/app/data/blob-link")).unwrap().ino());
    assert_eq!(std::fs::symlink_metadata(p2.join("opt/app/bin/tool")).unwrap().mode() & 0o7777, 0o4755);
    assert!(std::fs::symlink_metadata(p2.join("opt/app/fifo")).unwrap().file_type().is_fifo());
    assert_eq!(get_xattr(&p2.join("opt/app/data/with-xattr"), &"user.erofsd".into()).unwrap(), b"layer2");
    assert_eq!(opaque(&p2.join("etc/apt/apt.conf.d")), None, "umoci emits per-file whiteouts, not opaque");
    assert_no_wh_names(p2);

    let l3 = build("oci-l3", &[&layer(3)], &[]);
    let m3 = Mount::erofs(&l3.boot, &l3.devices).unwrap();
    let p3 = m3.path();
    assert_eq!(opaque(&p3.join("etc/apt")).as_deref(), Some(&b"y"[..]), "etc/apt opaque");
    assert_eq!(opaque(&p3.join("opt/app")).as_deref(), Some(&b"y"[..]), "opt/app opaque");
    assert_eq!(opaque(&p3.join("opt")), None, "opt is not opaque");
    assert!(is_whiteout(&p3.join("usr/bin/apt-cache")));
    assert!(is_whiteout(&p3.join("usr/bin/does-not-exist")));
    let a = std::fs::symlink_metadata(p3.join("opt/new/a")).unwrap();
    assert_eq!((a.nlink(), a.ino()), (2, std::fs::symlink_metadata(p3.join("opt/new/b")).unwrap().ino()));
    assert_eq!(std::fs::read(p3.join("opt/app/only-this")).unwrap(), b"layer 3 replaced opt/app\n");
    assert_eq!(std::fs::read_dir(p3.join("opt/app")).unwrap().count(), 1);
    // PAX records: binary security.capability, user.* xattr, nanosecond mtime.
    let cap = p3.join("opt/new/cap");
    let mut want_cap = vec![0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00];
    want_cap.resize(20, 0);
    assert_eq!(get_xattr(&cap, &"security.capability".into()).unwrap(), want_cap);
    assert_eq!(get_xattr(&cap, &"user.layer".into()).unwrap(), b"3");
    let md = std::fs::symlink_metadata(&cap).unwrap();
    assert_eq!((md.mtime(), md.mtime_nsec(), md.mode() & 0o7777), (1_700_000_000, 123_456_789, 0o755));
    assert_no_wh_names(p3);
}

#[test]
fn overlay_stack_and_merge_equal_umoci_unpack() {
    if !needs("overlay_stack_and_merge_equal_umoci_unpack") {
        return;
    }
    let umoci_rootfs = oci().join("final/rootfs");
    let built: Vec<Built> = (1..=3).map(|n| build(&format!("oci-stack-l{n}"), &[&layer(n)], &[])).collect();
    let mounts: Vec<Mount> = built.iter().map(|b| Mount::erofs(&b.boot, &b.devices).unwrap()).collect();
    let lowers: Vec<&Path> = mounts.iter().rev().map(|m| m.path()).collect(); // topmost first
    let ovl = Mount::overlay(&lowers).unwrap();
    // Overlayfs hides trusted.overlay.*, and resolves whiteouts and opaque dirs: the result
    // must be what umoci extracted, except directory mtimes: umoci's layer 2 has
    // usr/lib/os-release but no usr/lib/ entry, so the single-layer image of layer 2 has an
    // implicit usr/lib (mtime 0) and overlayfs reports the topmost layer's directory mtime.
    let ovl_opts = Options { dir_mtime: false, ..oci_opts() };
    let r = assert_trees_equal(&umoci_rootfs, ovl.path(), &ovl_opts);
    assert!(r.regular_files > 5000 && r.xattrs >= 2, "{}", r.summary());
    // Spot checks that the layers really took effect (not two copies of layer 1).
    for gone in ["usr/share/doc", "etc/hostname", "usr/bin/apt-cache", "etc/apt/apt.conf.d", "opt/app/bin"] {
        assert!(std::fs::symlink_metadata(ovl.path().join(gone)).is_err(), "{gone} should be gone");
    }
    assert!(ovl.path().join("opt/app/only-this").exists() && ovl.path().join("etc/apt/sources.list").exists());

    // --merge of the same three layers: one tree, no whiteouts, one blob per layer at most.
    let layers: Vec<PathBuf> = (1..=3).map(layer).collect();
    let refs: Vec<&Path> = layers.iter().map(|p| p.as_path()).collect();
    let merged = build("oci-merge", &refs, &["--merge"]);
    assert!(
        (1..=3).contains(&merged.devices.len()),
        "--merge keeps one blob per layer that has data: {} devices",
        merged.devices.len()
    );
    let mm = Mount::erofs(&merged.boot, &merged.devices).unwrap();
    assert_no_wh_names(mm.path());
    // A merge applies layers like umoci does (an implicit parent does not replace an existing
    // directory's metadata), so here directory mtimes must match too.
    let r = assert_trees_equal(&umoci_rootfs, mm.path(), &oci_opts());
    assert!(r.regular_files > 5000, "{}", r.summary());
    // Image to image (both through the kernel): exact mtimes of everything but directories.
    let o = Options { mtime: Mtime::Exact, dir_mtime: false, root_meta: false, ..Options::default() };
    assert_trees_equal(ovl.path(), mm.path(), &o);
}

/// Runs `erofsd build` on a bad input in a fresh parent directory; returns its stderr.
/// Asserts: non-zero exit (not a timeout, not a panic), and nothing created or changed
/// outside OUTDIR (parent snapshot before/after, and the absolute-path targets).
fn build_must_fail(test: &str, sources: &[&Path], extra: &[&str]) -> String {
    let s = fixtures::scratch(test);
    let parent = s.path().join("parent");
    let out = parent.join("out");
    std::fs::create_dir_all(parent.join("sibling")).unwrap();
    std::fs::write(parent.join("sibling/keep"), b"untouched").unwrap();
    let evil = Path::new("/tmp/erofsd-evil");
    let _ = std::fs::remove_dir_all(evil);
    let before = snapshot::snapshot(s.path(), Some(&out));
    let mut args: Vec<OsString> = vec!["120".into(), cli::erofsd_bin().into(), "build".into()];
    args.extend(sources.iter().map(|p| p.as_os_str().to_owned()));
    args.extend(["-o".into(), out.clone().into_os_string()]);
    args.extend(extra.iter().map(OsString::from));
    let o = std::process::Command::new("timeout")
        .args(&args)
        .current_dir(&parent)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_ne!(o.status.code(), Some(124), "{test}: erofsd build hung (killed after 120 s)");
    assert!(!o.status.success(), "{test}: erofsd build accepted bad input");
    assert_eq!(o.status.code(), Some(1), "{test}: expected exit 1 (an error), got {}: {stderr}", o.status);
    assert!(!stderr.contains("panicked"), "{test}: panic instead of an error:\n{stderr}");
    let after = snapshot::snapshot(s.path(), Some(&out));
    let d = snapshot::diff(&before, &after);
    assert!(d.is_empty(), "{test}: wrote outside OUTDIR: {d:?}");
    assert!(!evil.exists(), "{test}: created {}", evil.display());
    assert!(!Path::new("/etc/passwd").symlink_metadata().unwrap().file_type().is_symlink());
    eprintln!("{test}: failed as expected: {}", stderr.trim());
    stderr
}

#[test]
fn bad_layer_tars_fail_cleanly() {
    let bad = fixtures::fixture("badtars");
    // (file, words the message must contain: the offending entry, and the problem)
    let cases: &[(&str, &[&str])] = &[
        ("truncated.tar", &["ok/big", "truncated"]),
        ("lying-size.tar", &["ok/liar"]),
        ("garbage.tar", &["tar"]),
        ("dotdot.tar", &["../evil-dotdot", ".."]),
        ("dotdot-inner.tar", &["ok/../../evil-inner", ".."]),
        ("absolute.tar", &["/tmp/erofsd-evil/absolute", "absolute"]),
        ("hardlink-out.tar", &["ok/link", "hard link"]),
        ("hardlink-absolute.tar", &["ok/link", "hard link"]),
        ("hardlink-missing.tar", &["ok/link", "hard link"]),
        ("symlink-parent.tar", &["ok/sym", "symlink"]),
        ("symlink-parent-rel.tar", &["ok/up", "symlink"]),
    ];
    for (file, words) in cases {
        let tar = bad.join(file);
        assert!(tar.exists(), "fixture {file} missing");
        for (mode, extra) in [("single", &[][..]), ("merge", &["--merge"][..])] {
            let msg = build_must_fail(&format!("bad-{file}-{mode}"), &[&tar], extra);
            for w in *words {
                assert!(msg.contains(w), "{file} ({mode}): message should mention {w:?}:\n{msg}");
            }
        }
    }
}

#[test]
fn layer_over_limits_fails_cleanly() {
    // The OCI fixture is made as root (umoci unpack/repack with real owners).
    if !env::require(env::is_root(), "layer_over_limits_fails_cleanly", "root (to make the OCI fixture)") {
        return;
    }
    let l2 = layer(2);
    // Layer 2 holds a 3 MiB file: over a 1 MiB data limit, and over 10 entries.
    let msg = build_must_fail("limit-size", &[&l2], &["--max-size", "1M"]);
    assert!(msg.to_lowercase().contains("size") || msg.contains("--max-size"), "size limit message: {msg}");
    let msg = build_must_fail("limit-entries", &[&l2], &["--max-entries", "10"]);
    assert!(msg.contains("entries") || msg.contains("--max-entries"), "entry limit message: {msg}");
    // Limits count over all layers of a --merge build.
    let msg = build_must_fail("limit-merge", &[&layer(3), &l2], &["--merge", "--max-entries", "30"]);
    assert!(msg.contains("entries") || msg.contains("--max-entries"), "entry limit message: {msg}");
}
