//! Cross-checks with the real erofs-utils 1.5 tools: `fsck.erofs` accepts our bootstraps,
//! `dump.erofs` reports what our reader reports, and our reader reads images made by
//! `mkfs.erofs --chunksize --blobdev` byte-exact. Also: nydus RAFS v6 fixture bootstraps open
//! and walk.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use erofs::reader::{ExtentKind, FileKind, Image};

/// Writes the sample tree as `boot` + `blob1`, `blob2` into `dir`; returns the device args.
fn write_sample(dir: &Path) -> (PathBuf, Vec<String>, erofs::tree::Tree, Blobs) {
    let (tree, blobs, _) = sample_tree();
    let boot = dir.join("image.boot");
    write_file(&boot, &write(&tree, &blobs.records(), BUILD_TIME));
    let mut devs = Vec::new();
    for (i, c) in blobs.contents.iter().enumerate() {
        let p = dir.join(format!("blob{}", i + 1));
        write_file(&p, c);
        devs.push(format!("--device={}", p.display()));
    }
    (boot, devs, tree, blobs)
}

fn tools_present() -> bool {
    require(
        have_tool("fsck.erofs") && have_tool("dump.erofs") && have_tool("mkfs.erofs"),
        "erofs-utils (mkfs.erofs, fsck.erofs, dump.erofs) not installed",
    )
}

#[test]
fn fsck_accepts_our_bootstrap_with_real_blobs_and_extracts_it() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (boot, devs, _tree, _blobs) = write_sample(tmp.path());
    run(Command::new("fsck.erofs").args(&devs).arg(&boot));
    let out = tmp.path().join("extract");
    run(Command::new("fsck.erofs").args(&devs).arg(format!("--extract={}", out.display())).arg(&boot));
    // Extraction wrote the files: compare with what the tree says.
    let (_, _, expect) = sample_tree();
    // erofs-utils 1.5 extracts NULL_ADDR hole chunks wrongly (stale bytes instead of zeros;
    // the kernel reads zeros, see kernel_mount.rs), so files with holes are not compared here.
    for e in expect.iter().filter(|e| e.path != "sparse") {
        let got = std::fs::read(out.join(&e.path)).unwrap_or_else(|err| panic!("{}: {err}", e.path));
        assert!(got == e.content, "{}: extracted content differs", e.path);
    }
    assert_eq!(std::fs::read_link(out.join("link")).unwrap(), Path::new("small.txt"));
    let md = std::fs::symlink_metadata(out.join("setuid-owned")).unwrap();
    // (fsck 1.5 chowns after chmod, which drops the setuid bit: compare permission bits only.)
    assert_eq!((md.uid(), md.gid(), md.mode() & 0o777, md.mtime()), (100_000, 70_000, 0o755, 123_456_789));
    assert_eq!(std::fs::read_dir(out.join("big")).unwrap().count(), 3000);
}

#[test]
fn fsck_checks_metadata_with_zero_filled_devices() {
    // The daemon's bootstraps point at blobs that may not exist locally. Zero-filled device
    // files of the right size let fsck.erofs walk and check all metadata.
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (tree, blobs, _) = sample_tree();
    let boot = tmp.path().join("image.boot");
    let records = blobs.records();
    write_file(&boot, &write(&tree, &records, BUILD_TIME));
    let mut devs = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let p = tmp.path().join(format!("zero{i}"));
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(r.uncompressed_size).unwrap();
        devs.push(format!("--device={}", p.display()));
    }
    run(Command::new("fsck.erofs").args(&devs).arg(&boot));
    // And fsck does check: a corrupted bootstrap is refused.
    let mut bad = std::fs::read(&boot).unwrap();
    let img = Image::open(&bad).unwrap();
    let d = img.lookup("big").unwrap();
    let blk = d.i_u as usize * 4096;
    bad[blk + 8] = 0xff; // first dirent's nameoff → out of range
    bad[blk + 9] = 0x7f;
    let badp = tmp.path().join("bad.boot");
    write_file(&badp, &bad);
    let st = Command::new("fsck.erofs").args(&devs).arg(&badp).output().unwrap();
    assert!(!st.status.success(), "fsck.erofs accepted a corrupted directory block");
    assert!(Image::open(&bad).unwrap().readdir(&d).is_err());
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    let i = text.find(key).unwrap_or_else(|| panic!("no {key:?} in:\n{text}")) + key.len();
    text[i..].split_whitespace().next().unwrap()
}

#[test]
fn dump_erofs_agrees_with_reader() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (boot, devs, _tree, _blobs) = write_sample(tmp.path());
    let bytes = std::fs::read(&boot).unwrap();
    let img = Image::open(&bytes).unwrap();
    let sb = run(Command::new("dump.erofs").args(&devs).arg("-s").arg(&boot));
    assert_eq!(field(&sb, "Filesystem root nid:").parse::<u64>().unwrap(), img.root_nid());
    assert_eq!(field(&sb, "Filesystem inode count:").parse::<u64>().unwrap(), img.superblock().inos);
    // dump.erofs adds the device blocks to the bootstrap's own.
    let dev_blocks: u64 = img.devices().iter().map(|d| d.blocks as u64).sum();
    assert_eq!(field(&sb, "Filesystem blocks:").parse::<u64>().unwrap(), img.superblock().blocks as u64 + dev_blocks);
    assert!(sb.contains("chunked_file") && sb.contains("device_table"), "{sb}");

    let mut checked = 0;
    let mut paths = Vec::new();
    img.walk(&mut |e| {
        if e.depth <= 2 && !e.path.starts_with(b"big/") {
            paths.push(e.path.to_vec());
        }
        Ok(())
    })
    .unwrap();
    for p in paths {
        let Ok(ps) = String::from_utf8(p.clone()) else { continue };
        let ps = format!("/{ps}");
        if ps.contains(|c: char| !c.is_ascii_graphic()) {
            continue; // keep the command line simple
        }
        let ino = img.lookup(&p).unwrap();
        let out = run(Command::new("dump.erofs").args(&devs).arg(format!("--path={ps}")).arg("-e").arg(&boot));
        assert_eq!(field(&out, "NID:").parse::<u64>().unwrap(), ino.nid, "{ps}");
        assert_eq!(field(&out, "Links:").parse::<u32>().unwrap(), ino.nlink, "{ps}");
        assert_eq!(field(&out, "Layout:").parse::<u16>().unwrap(), ino.layout, "{ps}");
        assert_eq!(field(&out, "Size:").parse::<u64>().unwrap(), ino.size, "{ps}");
        assert_eq!(field(&out, "Uid:").parse::<u32>().unwrap(), ino.uid, "{ps}");
        assert_eq!(field(&out, "Gid:").parse::<u32>().unwrap(), ino.gid, "{ps}");
        let access = field(&out, "Access:");
        // dump.erofs 1.5 prints only the rwx bits.
        assert_eq!(u32::from_str_radix(&access[..4], 8).unwrap(), ino.mode as u32 & 0o777, "{ps}");
        assert_eq!(field(&out, "Xattr size:").parse::<u32>().unwrap(), ino.xattr_isize, "{ps}");
        // Chunk extents: " N:   lo..   hi |  len :   plo..  phi |  plen  # device D"
        for line in out.lines().filter(|l| l.contains("# device")) {
            let nums: Vec<u64> = line
                .split(|c: char| !c.is_ascii_digit())
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap())
                .collect();
            let (logical, phys, dev) = (nums[1], nums[4], nums[7]);
            let e = img.map_at(&ino, logical).unwrap();
            assert_eq!(e.logical, logical, "{ps}: {line}");
            assert_eq!(e.kind, ExtentKind::Chunk { device_id: dev as u16, offset: phys }, "{ps}: {line}");
        }
        if ino.kind == FileKind::Dir {
            let out = run(Command::new("dump.erofs").args(&devs).arg(format!("--path={ps}")).arg("--ls").arg(&boot));
            let listed: Vec<(u64, Vec<u8>)> = out
                .lines()
                .skip_while(|l| !l.contains("NID TYPE  FILENAME"))
                .skip(1)
                .filter_map(|l| {
                    let mut it = l.trim_start().splitn(3, |c: char| c.is_whitespace());
                    let nid = it.next()?.parse().ok()?;
                    let rest = l.trim_start().split_once(char::is_whitespace)?.1.trim_start();
                    let name = rest.split_once(char::is_whitespace)?.1.trim_start();
                    Some((nid, name.as_bytes().to_vec()))
                })
                .collect();
            let ours: Vec<(u64, Vec<u8>)> = img.readdir(&ino).unwrap().into_iter().map(|e| (e.nid, e.name)).collect();
            if ours.iter().all(|(_, n)| n.iter().all(|c| c.is_ascii_graphic())) {
                assert_eq!(listed, ours, "{ps}: --ls");
            } else {
                assert_eq!(listed.len(), ours.len(), "{ps}: --ls count");
            }
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} paths compared");
}

/// A source tree on disk for mkfs.erofs.
fn make_source_tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    let sizes = [0usize, 1, 100, 4095, 4096, 4097, 65535, 65536, 65537, 200_000, 1_000_000];
    for (i, &s) in sizes.iter().enumerate() {
        let name = format!("f{i}-{s}");
        let data = pattern(i as u64 + 100, s);
        write_file(&root.join(&name), &data);
        files.insert(name, data);
    }
    let mut sparse = vec![0u8; 700_000];
    sparse[300_000..300_010].copy_from_slice(b"0123456789");
    write_file(&root.join("sub/sparse"), &sparse);
    files.insert("sub/sparse".into(), sparse);
    write_file(&root.join("sub/deeper/name with spaces ✓"), b"utf8");
    files.insert("sub/deeper/name with spaces ✓".into(), b"utf8".to_vec());
    std::os::unix::fs::symlink("../f1-1", root.join("sub/link")).unwrap();
    std::fs::set_permissions(root.join("f2-100"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::hard_link(root.join("f3-4095"), root.join("sub/hard")).unwrap();
    files.insert("sub/hard".into(), files["f3-4095"].clone());
    files
}

#[test]
fn reads_mkfs_erofs_blobdev_images() {
    if !tools_present() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    let files = make_source_tree(&src);
    let img_path = tmp.path().join("mkfs.img");
    let blob_path = tmp.path().join("mkfs.blob");
    run(Command::new("mkfs.erofs")
        .arg("--chunksize=65536")
        .arg(format!("--blobdev={}", blob_path.display()))
        .arg(&img_path)
        .arg(&src));
    let bytes = std::fs::read(&img_path).unwrap();
    let blob = std::fs::read(&blob_path).unwrap();
    let img = Image::open(&bytes).expect("open mkfs.erofs image");
    assert_eq!(img.devices().len(), 1);
    assert!(img.blobs().is_none(), "mkfs.erofs images have no erofsd blob table");
    let contents = vec![blob];
    let mut fetch = fetch_from(&contents);
    let mut seen = BTreeMap::new();
    img.walk(&mut |e| {
        seen.insert(String::from_utf8(e.path.to_vec()).unwrap(), e.inode.clone());
        Ok(())
    })
    .unwrap();
    for (path, data) in &files {
        let ino = seen.get(path).unwrap_or_else(|| panic!("{path} missing"));
        assert_eq!(ino.size, data.len() as u64, "{path}");
        let mut buf = vec![0u8; data.len()];
        img.read_file(ino, 0, &mut buf, &mut fetch).unwrap();
        assert!(&buf == data, "{path}: content differs");
        let md = std::fs::symlink_metadata(src.join(path)).unwrap();
        assert_eq!(ino.mode as u32, md.mode(), "{path}");
        assert_eq!(ino.nlink, md.nlink() as u32, "{path}");
    }
    assert_eq!(seen["sub/hard"].nid, seen["f3-4095"].nid);
    assert_eq!(img.readlink(&seen["sub/link"]).unwrap(), b"../f1-1");
    // Every path of the source exists in the image and nothing else.
    let mut want: Vec<String> = Vec::new();
    let mut stack = vec![(src.clone(), String::new())];
    while let Some((dir, rel)) = stack.pop() {
        for ent in std::fs::read_dir(&dir).unwrap() {
            let ent = ent.unwrap();
            let name = ent.file_name().into_string().unwrap();
            let r = if rel.is_empty() { name } else { format!("{rel}/{name}") };
            if ent.file_type().unwrap().is_dir() {
                stack.push((ent.path(), r.clone()));
            }
            want.push(r);
        }
    }
    want.push(String::new());
    want.sort();
    assert_eq!(seen.keys().cloned().collect::<Vec<_>>(), want);
}

#[test]
fn nydus_fixture_bootstraps_open_and_walk() {
    let base = &nydus_fixtures();
    let sums = std::fs::read_to_string(base.join("tree.sha256")).unwrap();
    let regular: Vec<String> = sums.lines().map(|l| l.split_whitespace().nth(1).unwrap().trim_start_matches("./").to_string()).collect();
    let mut opened = 0;
    for ent in std::fs::read_dir(base).unwrap() {
        let boot = ent.unwrap().path().join("image.boot");
        if !boot.exists() {
            continue;
        }
        let bytes = std::fs::read(&boot).unwrap();
        let img = Image::open(&bytes).unwrap_or_else(|e| panic!("{}: {e}", boot.display()));
        let mut files = BTreeMap::new();
        let mut entries = 0;
        img.walk(&mut |e| {
            entries += 1;
            img.xattrs(e.inode)?;
            match e.inode.kind {
                FileKind::File => {
                    // Every chunk maps to a real device after the kernel's device-id mask.
                    for x in img.data_map(e.inode)? {
                        if let ExtentKind::Chunk { device_id, .. } = x.kind {
                            assert!(device_id >= 1 && device_id as usize <= img.devices().len(), "{x:?}");
                        }
                    }
                    files.insert(String::from_utf8(e.path.to_vec()).unwrap(), e.inode.size);
                }
                FileKind::Symlink => {
                    img.readlink(e.inode)?;
                }
                _ => {}
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{}: {e}", boot.display()));
        assert_eq!(entries, 50, "{}", boot.display());
        for r in &regular {
            assert!(files.contains_key(r), "{}: {r} missing", boot.display());
        }
        assert_eq!(files["data/empty"], 0);
        opened += 1;
    }
    assert_eq!(opened, 4);
}
