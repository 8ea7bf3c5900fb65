//! Interior holes (`erofs::holes`): which files have them, and the redirected bootstrap that
//! the cachefiles door serves instead. Trees of seeded random chunk patterns are written by the
//! writer, and every file of the redirected image must read exactly as in the original, with
//! no hole left before data; a `mkfs.erofs` image (superblock checksum, block-map-free chunk
//! indexes) goes through the same.

mod common;
// The tests' one seeded generator (tests/common/data.rs at the workspace root).
#[allow(dead_code)]
#[path = "../../tests/common/data.rs"]
mod data;

use std::collections::BTreeMap;

use common::*;
use data::Rng;
use erofs::holes::{interior_holes, redirect_interior_holes};
use erofs::reader::{ExtentKind, FileKind, Image};
use erofs::tree::*;

/// Files of random chunk patterns (data, zero chunk, partial last chunk), some hard-linked.
fn random_tree(seed: u64) -> (Tree, Blobs, BTreeMap<String, Vec<u8>>) {
    let mut r = Rng::new(seed);
    let mut t = Tree::new(meta(0o755));
    let mut blobs = Blobs::new(2);
    let mut files = BTreeMap::new();
    let dir = add(&mut t, Tree::ROOT, b"d", dir());
    for i in 0..60u64 {
        let chunks = 1 + r.below(8);
        let mut content = Vec::new();
        for c in 0..chunks {
            let last = c + 1 == chunks;
            let len = if last { 1 + r.below(CHUNK) } else { CHUNK } as usize;
            if r.below(3) == 0 {
                content.extend(std::iter::repeat(0u8).take(len));
            } else {
                content.extend(pattern(seed * 1000 + i * 10 + c, len));
            }
        }
        let name = format!("f{i}");
        let node = blobs.file(&content, |c| 1 + (c % 2) as u16);
        let id = add(&mut t, dir, name.as_bytes(), node);
        if r.below(10) == 0 {
            link(&mut t, Tree::ROOT, format!("link{i}").as_bytes(), id);
            files.insert(format!("link{i}"), content.clone());
        }
        files.insert(format!("d/{name}"), content);
    }
    (t, blobs, files)
}

fn expected_interior(content: &[u8]) -> bool {
    let zero: Vec<bool> = content.chunks(CHUNK as usize).map(|c| c.iter().all(|&b| b == 0)).collect();
    zero.iter().rposition(|z| !z).is_some_and(|last| zero[..last].iter().any(|&z| z))
}

fn read_all<T: AsRef<[u8]>>(img: &Image<T>, contents: &[Vec<u8>]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut fetch = fetch_from(contents);
    let mut files = Vec::new();
    img.walk(&mut |e| {
        if e.inode.kind == FileKind::File {
            files.push((String::from_utf8(e.path.to_vec()).unwrap(), e.inode.clone()));
        }
        Ok(())
    })
    .unwrap();
    for (p, ino) in files {
        let mut buf = vec![0u8; ino.size as usize];
        img.read_file(&ino, 0, &mut buf, &mut fetch).unwrap();
        out.insert(p, buf);
    }
    out
}

/// No file of `img` has a hole extent with a non-hole extent after it.
fn assert_no_hole_before_data<T: AsRef<[u8]>>(img: &Image<T>) {
    img.walk(&mut |e| {
        if e.inode.kind == FileKind::File {
            let map = img.data_map(e.inode).unwrap();
            if let Some(last) = map.iter().rposition(|x| x.kind != ExtentKind::Hole) {
                assert!(map[..last].iter().all(|x| x.kind != ExtentKind::Hole), "{:?}: {map:?}", String::from_utf8_lossy(e.path));
            }
        }
        Ok(())
    })
    .unwrap();
}

#[test]
fn random_trees_redirect_to_the_same_bytes() {
    for seed in 1..=12u64 {
        let (tree, blobs, files) = random_tree(seed);
        let boot = write(&tree, &blobs.records(), BUILD_TIME);
        let img = Image::open(&boot[..]).unwrap();
        let want: Vec<String> = files.iter().filter(|(p, c)| !p.starts_with("link") && expected_interior(c)).map(|(p, _)| p.clone()).collect();
        let found = interior_holes(&img).unwrap();
        let mut got: Vec<String> = found.iter().map(|h| String::from_utf8(h.path.clone()).unwrap()).collect();
        // A hard-linked file is listed once, under the first path the walk meets ("d/..." sorts after "link...").
        got = got.into_iter().map(|p| if p.starts_with("link") { format!("d/f{}", &p[4..]) } else { p }).collect();
        got.sort();
        assert_eq!(got, want, "seed {seed}");
        let before = read_all(&img, &blobs.contents);
        assert_eq!(before.len(), files.len());
        for (p, c) in &files {
            assert!(before[p] == *c, "seed {seed}: {p} reads differently from its content");
        }
        match redirect_interior_holes(&boot).unwrap() {
            None => assert!(want.is_empty(), "seed {seed}: interior holes but nothing redirected"),
            Some(r) => {
                assert_eq!(r.bootstrap.len(), boot.len());
                assert_eq!(r.files, want.len() as u64, "seed {seed}");
                assert_eq!(r.size, (r.zero_blkaddr as u64 + CHUNK / 4096) * 4096);
                // What the kernel sees: the bytes, then zeros up to the object size.
                let mut object = r.bootstrap.clone();
                object.resize(r.size as usize, 0);
                let red = Image::open(&object[..]).unwrap();
                assert!(interior_holes(&red).unwrap().is_empty(), "seed {seed}");
                assert_no_hole_before_data(&red);
                assert_eq!(read_all(&red, &blobs.contents), before, "seed {seed}: redirected image reads differently");
                // Only chunk entries changed: the trees are the same entry for entry.
                assert_image_matches_tree(&red, &tree, &blobs.contents, (BUILD_TIME, 0));
            }
        }
    }
}

#[test]
fn no_interior_hole_no_copy() {
    let mut t = Tree::new(meta(0o755));
    let mut blobs = Blobs::new(1);
    let mut content = pattern(5, CHUNK as usize);
    content.extend(vec![0u8; 2 * CHUNK as usize + 5]);
    let node = blobs.file(&content, |_| 1);
    add(&mut t, Tree::ROOT, b"trailing", node);
    let boot = write(&t, &blobs.records(), BUILD_TIME);
    assert!(interior_holes(&Image::open(&boot[..]).unwrap()).unwrap().is_empty());
    assert_eq!(redirect_interior_holes(&boot).unwrap(), None, "trailing holes are safe and kept");
}

/// erofs-utils 1.5 stores zero chunks as data (no null chunk even for a sparse file), so the
/// image made elsewhere is forged: a `mkfs.erofs` image (superblock checksum on) whose zero
/// chunks before data are set to the null address, as another builder would write them.
#[test]
fn mkfs_erofs_image_with_forged_interior_holes_redirects_with_a_valid_checksum() {
    if !require(have_tool("mkfs.erofs"), "erofs-utils (mkfs.erofs) not installed") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut content = b"head".to_vec();
    content.resize(3 * 65536 + 17, 0);
    content.extend(pattern(9, 5000));
    write_file(&src.join("sparse"), &content);
    let boot_path = tmp.path().join("mkfs.img");
    let blob_path = tmp.path().join("mkfs.blob");
    run(std::process::Command::new("mkfs.erofs")
        .arg("--chunksize=65536")
        .arg(format!("--blobdev={}", blob_path.display()))
        .arg(&boot_path)
        .arg(&src));
    let mut boot = std::fs::read(&boot_path).unwrap();
    let contents = vec![std::fs::read(&blob_path).unwrap()];
    let (entries, sb_checksum) = {
        let img = Image::open(&boot[..]).unwrap();
        assert!(interior_holes(&img).unwrap().is_empty(), "erofs-utils 1.5 writes no null chunk");
        let ino = img.lookup("sparse").unwrap();
        let table = img.chunk_table(&ino).unwrap().expect("chunk-based");
        assert!(table.indexes, "--blobdev images use chunk indexes");
        // Chunks 1 and 2 are all zeros and chunk 3 has data: they become the holes.
        let entries: Vec<u64> = (1..=2).map(|i| img.chunk_entry(&table, i).unwrap().offset).collect();
        (entries, img.superblock().feature_compat & erofs::ondisk::FEATURE_COMPAT_SB_CHKSUM != 0)
    };
    for off in entries {
        boot[off as usize + 4..off as usize + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    assert!(sb_checksum, "mkfs.erofs sets the superblock checksum");
    let sum = erofs::reader::superblock_checksum(&boot);
    boot[1024 + 4..1024 + 8].copy_from_slice(&sum.to_le_bytes());
    let img = Image::open(&boot[..]).expect("forged image opens");
    let holes = interior_holes(&img).unwrap();
    assert_eq!(holes.len(), 1, "{holes:?}");
    assert_eq!((holes[0].path.as_slice(), holes[0].first_offset, holes[0].chunks), (&b"sparse"[..], 65536, 2));
    let r = redirect_interior_holes(&boot).unwrap().expect("redirected");
    let mut object = r.bootstrap.clone();
    object.resize(r.size as usize, 0);
    // Image::open checks the superblock checksum (recomputed when block 0 was rewritten).
    let red = Image::open(&object[..]).expect("redirected mkfs.erofs image opens (checksum)");
    assert_no_hole_before_data(&red);
    let got = read_all(&red, &contents);
    assert!(got["sparse"] == content);
    assert_eq!(got, read_all(&img, &contents));
}
