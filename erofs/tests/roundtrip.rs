//! write_bootstrap → reader round trips, layout facts, and writer validation errors.

mod common;

use std::collections::BTreeMap;

use common::*;
use erofs::ondisk::*;
use erofs::reader::{ExtentKind, Image};
use erofs::tree::*;
use erofs::writer::{write_bootstrap, WriteOptions};
use erofs::Error;

#[test]
fn sample_tree_round_trips() {
    let (tree, blobs, expect) = sample_tree();
    let records = blobs.records();
    let bytes = write(&tree, &records, BUILD_TIME);
    assert_eq!(bytes.len() % 4096, 0);
    let img = Image::open(&bytes).expect("open");
    assert_image_matches_tree(&img, &tree, &blobs.contents, (BUILD_TIME, 0));
    assert_eq!(img.blobs().unwrap(), records.as_slice());
    let mut fetch = fetch_from(&blobs.contents);
    for e in &expect {
        let ino = img.lookup(&e.path).unwrap();
        let mut buf = vec![0u8; e.content.len() + 10];
        let n = img.read_file(&ino, 0, &mut buf, &mut fetch).unwrap();
        assert_eq!(&buf[..n], &e.content[..], "{}", e.path);
        // Unaligned reads across chunk boundaries.
        if e.content.len() > 70_000 {
            let mut part = vec![0u8; 70_000];
            let n = img.read_file(&ino, 1234, &mut part, &mut fetch).unwrap();
            assert_eq!(&part[..n], &e.content[1234..1234 + n]);
        }
    }
}

#[test]
fn layout_follows_docs_format() {
    let (tree, blobs, _) = sample_tree();
    let records = blobs.records();
    let bytes = write(&tree, &records, BUILD_TIME);
    assert!(bytes[..1024].iter().all(|&b| b == 0));
    let sb = SuperBlock::decode(&bytes[1024..]);
    assert_eq!(sb.magic, EROFS_MAGIC);
    assert_eq!(sb.feature_incompat, FEATURE_INCOMPAT_CHUNKED_FILE | FEATURE_INCOMPAT_DEVICE_TABLE);
    assert_eq!(sb.extra_devices, 2);
    assert_eq!(sb.devt_slotoff, 10);
    assert_eq!(sb.meta_blkaddr, 0);
    assert_eq!(sb.blocks as usize * 4096, bytes.len());
    assert_eq!(sb.build_time, BUILD_TIME as u64);
    // Root right after the device table.
    assert_eq!(sb.root_nid as u64, (1280 + 2 * 128) / 32);
    assert_eq!(&bytes[1152..1160], b"ERFSDEXT");
    // Device tags: the blob id in hex, filling all 64 bytes.
    let slot = DeviceSlot::decode(&bytes[1280..]);
    assert_eq!(slot.tag_bytes(), records[0].id_hex().as_bytes());
    assert_eq!(slot.blocks as u64 * 4096, records[0].uncompressed_size);
    let img = Image::open(&bytes).unwrap();
    assert!(sb.xattr_blkaddr > 0, "sample has shared xattrs");
    let h = img.ext_header().unwrap();
    assert_eq!(h.blob_table_offset % 4096, 0);
    assert!(h.blob_table_offset >= sb.xattr_blkaddr as u64 * 4096);
    // Inodes are all in the inode area, before the data blocks.
    let mut max_nid = 0;
    img.walk(&mut |e| {
        max_nid = max_nid.max(e.inode.nid);
        Ok(())
    })
    .unwrap();
    assert!(max_nid * 32 < h.blob_table_offset);
    // Writing is deterministic.
    assert_eq!(write(&tree, &records, BUILD_TIME), bytes);
}

#[test]
fn minimal_tree_has_no_optional_features() {
    let tree = Tree::new(meta(0o755));
    let bytes = write(&tree, &[], BUILD_TIME);
    assert_eq!(bytes.len(), 4096);
    let sb = SuperBlock::decode(&bytes[1024..]);
    assert_eq!(sb.feature_incompat, 0);
    assert_eq!(sb.xattr_blkaddr, 0);
    assert_eq!(sb.inos, 1);
    let img = Image::open(&bytes).unwrap();
    let root = img.root().unwrap();
    assert_eq!(root.layout, LAYOUT_FLAT_INLINE);
    assert!(!root.extended);
    let ents = img.readdir(&root).unwrap();
    assert_eq!(ents.len(), 2);
    assert!(ents.iter().all(|e| e.nid == root.nid));
    assert!(img.blobs().unwrap().is_empty());
}

#[test]
fn inode_format_choice() {
    let mut tree = Tree::new(meta(0o755));
    let root = Tree::ROOT;
    add(&mut tree, root, b"compact", inline_file(b"a"));
    let mut n = inline_file(b"b");
    n.meta.mtime_nsec = 1;
    add(&mut tree, root, b"nsec", n);
    let mut n = inline_file(b"c");
    n.meta.uid = 65536;
    add(&mut tree, root, b"uid", n);
    let mut n = inline_file(b"d");
    n.meta.mtime = -5;
    add(&mut tree, root, b"negative-time", n);
    // A 5 GiB sparse file: one data chunk at the end, size needs 64 bits.
    let mut blobs = Blobs::new(1);
    let size = 5u64 << 30;
    let nchunks = size.div_ceil(CHUNK) as usize;
    let mut chunks = vec![ChunkAddr::HOLE; nchunks];
    chunks[nchunks - 1] = blobs.put(1, &pattern(5, CHUNK as usize));
    add(&mut tree, root, b"huge", node(Kind::File { size, data: FileData::Chunks { chunk_bits: CHUNK_BITS, chunks } }, 0o600));
    let records = blobs.records();
    let bytes = write(&tree, &records, BUILD_TIME);
    let img = Image::open(&bytes).unwrap();
    assert!(!img.lookup("compact").unwrap().extended);
    for p in ["nsec", "uid", "negative-time", "huge"] {
        assert!(img.lookup(p).unwrap().extended, "{p}");
    }
    assert_eq!(img.lookup("negative-time").unwrap().mtime, -5);
    let huge = img.lookup("huge").unwrap();
    assert_eq!(huge.size, size);
    let map = img.data_map(&huge).unwrap();
    assert_eq!(map.len(), 2, "holes merge into one extent: {map:?}");
    assert_eq!(map[0].kind, ExtentKind::Hole);
    assert_eq!(map[0].len, (nchunks as u64 - 1) * CHUNK);
    assert_eq!(map[1].kind, ExtentKind::Chunk { device_id: 1, offset: 0 });
    let mut buf = vec![1u8; 100];
    let mut fetch = fetch_from(&blobs.contents);
    img.read_file(&huge, 4096, &mut buf, &mut fetch).unwrap();
    assert!(buf.iter().all(|&b| b == 0));
    let n = img.read_file(&huge, size - 50, &mut buf, &mut fetch).unwrap();
    assert_eq!(n, 50);
    assert_eq!(&buf[..50], &pattern(5, CHUNK as usize)[CHUNK as usize - 50..]);
}

#[test]
fn inline_tail_that_cannot_fit_falls_back_to_plain() {
    let mut tree = Tree::new(meta(0o755));
    // 4000-byte file with 200 bytes of xattrs: inode + xattrs + tail > 4096.
    let mut n = inline_file(&pattern(1, 4000));
    n.xattrs.push(xattr("user.pad", &[7u8; 200]));
    add(&mut tree, Tree::ROOT, b"f", n);
    let bytes = write(&tree, &[], BUILD_TIME);
    let img = Image::open(&bytes).unwrap();
    let ino = img.lookup("f").unwrap();
    assert_eq!(ino.layout, LAYOUT_FLAT_PLAIN);
    assert_image_matches_tree(&img, &tree, &[], (BUILD_TIME, 0));
}

#[test]
fn many_small_inline_files_never_cross_blocks() {
    // Sizes chosen so tails keep landing near block ends.
    let mut tree = Tree::new(meta(0o755));
    for i in 0..400 {
        let len = 1 + (i * 337) % 3900;
        add(&mut tree, Tree::ROOT, format!("f{i:03}").as_bytes(), inline_file(&pattern(i as u64, len)));
    }
    let bytes = write(&tree, &[], BUILD_TIME);
    let img = Image::open(&bytes).unwrap();
    assert_image_matches_tree(&img, &tree, &[], (BUILD_TIME, 0));
    let mut inline = 0;
    img.walk(&mut |e| {
        if e.inode.layout == LAYOUT_FLAT_INLINE {
            inline += 1;
        }
        Ok(())
    })
    .unwrap();
    assert!(inline >= 400, "all small files stay inline ({inline})");
    // Space use stays reasonable: < 1.5× the data plus inodes.
    let data: usize = (0..400).map(|i| 1 + (i * 337) % 3900).sum();
    assert!(bytes.len() < data * 3 / 2 + 64 * 1024, "{} bytes for {} bytes of data", bytes.len(), data);
}

#[test]
fn shared_xattrs_are_stored_once() {
    let mut tree = Tree::new(meta(0o755));
    let cap = xattr("security.capability", &[1u8; 20]);
    for i in 0..50 {
        let mut n = inline_file(b"x");
        n.xattrs.push(cap.clone());
        n.xattrs.push(xattr("user.i", format!("{i}").as_bytes()));
        add(&mut tree, Tree::ROOT, format!("f{i}").as_bytes(), n);
    }
    let bytes = write(&tree, &[], BUILD_TIME);
    let img = Image::open(&bytes).unwrap();
    let sb = img.superblock();
    assert!(sb.xattr_blkaddr > 0);
    // The capability value occurs exactly once in the whole bootstrap.
    let hits = bytes.windows(20).filter(|w| *w == [1u8; 20]).count();
    assert_eq!(hits, 1);
    assert_image_matches_tree(&img, &tree, &[], (BUILD_TIME, 0));
}

#[test]
fn huge_directory_spans_many_blocks() {
    let mut tree = Tree::new(meta(0o755));
    let d = add(&mut tree, Tree::ROOT, b"d", dir());
    for i in 0..20_000u32 {
        add(&mut tree, d, format!("file-with-a-longish-name-{i:08}").as_bytes(), inline_file(b""));
    }
    let bytes = write(&tree, &[], BUILD_TIME);
    let img = Image::open(&bytes).unwrap();
    let di = img.lookup("d").unwrap();
    assert!(di.size > 100 * 4096, "dir size {}", di.size);
    assert_eq!(img.readdir(&di).unwrap().len(), 20_002);
    assert!(img.lookup("d/file-with-a-longish-name-00012345").is_ok());
    assert!(matches!(img.lookup("d/nope"), Err(Error::NotFound(_))));
    assert_image_matches_tree(&img, &tree, &[], (BUILD_TIME, 0));
}

#[test]
fn a_million_entries_is_linear() {
    // 1M entries in 1000 directories: must write quickly (well under the time a quadratic
    // layout would take) even in a debug build.
    let mut tree = Tree::new(meta(0o755));
    for d in 0..1000 {
        let dd = add(&mut tree, Tree::ROOT, format!("dir{d:04}").as_bytes(), dir());
        for f in 0..1000 {
            add(&mut tree, dd, format!("f{f:04}").as_bytes(), inline_file(b""));
        }
    }
    let t = std::time::Instant::now();
    let mut sink = CountingSink(0);
    let stats = write_bootstrap(&tree, &[], &WriteOptions { build_time: BUILD_TIME as u64, ..Default::default() }, &mut sink).unwrap();
    let dt = t.elapsed();
    eprintln!("1M entries: {stats:?} in {dt:?}");
    assert_eq!(stats.inodes, 1_001_001);
    assert_eq!(sink.0, stats.bytes);
    assert!(dt.as_secs() < 60, "took {dt:?}");
}

struct CountingSink(u64);
impl std::io::Write for CountingSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn expect_invalid(tree: &Tree, blobs: &[erofs::blob::BlobRecord], needle: &str) {
    let mut out = Vec::new();
    match write_bootstrap(tree, blobs, &WriteOptions::default(), &mut out) {
        Err(Error::InvalidTree(msg)) => assert!(msg.contains(needle), "message {msg:?} lacks {needle:?}"),
        other => panic!("expected InvalidTree containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn writer_rejects_bad_trees() {
    let base = || Tree::new(meta(0o755));
    let mut t = base();
    let mut n = inline_file(b"x");
    n.meta.mode = S_IFDIR | 0o644;
    add(&mut t, Tree::ROOT, b"f", n);
    expect_invalid(&t, &[], "type bits");

    for (name, msg) in [(&b"a/b"[..], "'/'"), (b"a\0b", "NUL"), (b"", "length 0"), (&[b'x'; 256][..], "length 256"), (b"..", "writer adds")] {
        let mut t = base();
        add(&mut t, Tree::ROOT, name, inline_file(b"x"));
        expect_invalid(&t, &[], msg);
    }

    let mut t = base();
    add(&mut t, Tree::ROOT, b"f", node(Kind::File { size: 3 * CHUNK, data: FileData::Chunks { chunk_bits: CHUNK_BITS, chunks: vec![ChunkAddr::HOLE; 2] } }, 0o644));
    expect_invalid(&t, &[], "2 chunks");

    let mut t = base();
    add(&mut t, Tree::ROOT, b"f", node(Kind::File { size: 10, data: FileData::Chunks { chunk_bits: CHUNK_BITS, chunks: vec![ChunkAddr { device: 3, blkaddr: 0 }] } }, 0o644));
    expect_invalid(&t, &[raw_blob(1, &[0; 4096])], "device 3");

    let mut t = base();
    add(&mut t, Tree::ROOT, b"f", node(Kind::File { size: 8192, data: FileData::Chunks { chunk_bits: 12, chunks: vec![ChunkAddr { device: 1, blkaddr: 0 }, ChunkAddr { device: 1, blkaddr: 1 }] } }, 0o644));
    expect_invalid(&t, &[raw_blob(1, &[0; 4096])], "beyond blob");

    let mut t = base();
    let mut n = inline_file(b"x");
    n.xattrs.push(xattr("system.foo", b"v"));
    add(&mut t, Tree::ROOT, b"f", n);
    expect_invalid(&t, &[], "no EROFS prefix");

    let mut t = base();
    let mut n = inline_file(b"x");
    n.xattrs.push(xattr("user.a", b"1"));
    n.xattrs.push(xattr("user.a", b"2"));
    add(&mut t, Tree::ROOT, b"f", n);
    expect_invalid(&t, &[], "duplicate xattr");

    let mut t = base();
    let d = add(&mut t, Tree::ROOT, b"d", dir());
    link(&mut t, Tree::ROOT, b"e", d);
    expect_invalid(&t, &[], "linked more than once");

    let mut t = base();
    link(&mut t, Tree::ROOT, b"loop", Tree::ROOT);
    expect_invalid(&t, &[], "linked more than once");

    let mut t = base();
    add(&mut t, Tree::ROOT, b"l", node(Kind::Symlink { target: vec![] }, 0o777));
    expect_invalid(&t, &[], "symlink target");

    let mut t = base();
    add(&mut t, Tree::ROOT, b"c", node(Kind::CharDev { major: 0x1000, minor: 0 }, 0o600));
    expect_invalid(&t, &[], "device number");

    let mut t = base();
    add(&mut t, Tree::ROOT, b"f", node(Kind::File { size: 5, data: FileData::Inline(b"abc".to_vec()) }, 0o644));
    expect_invalid(&t, &[], "inline data of 3 bytes");

    let mut bad_blob = raw_blob(1, &[0; 8192]);
    bad_blob.stored_size = 1;
    expect_invalid(&base(), &[bad_blob], "stored_size");

    let opts = WriteOptions { volume_name: vec![b'v'; 16], ..Default::default() };
    assert!(matches!(write_bootstrap(&base(), &[], &opts, Vec::new()), Err(Error::InvalidTree(_))));
}

#[test]
fn unreachable_nodes_are_not_written() {
    let mut t = Tree::new(meta(0o755));
    t.add(inline_file(b"orphan"));
    add(&mut t, Tree::ROOT, b"kept", inline_file(b"k"));
    let bytes = write(&t, &[], BUILD_TIME);
    let img = Image::open(&bytes).unwrap();
    assert_eq!(img.superblock().inos, 2);
    let _ = BTreeMap::<u8, u8>::new();
}

#[test]
fn sample_has_inode_bodies_straddling_blocks() {
    let (tree, blobs, _) = sample_tree();
    let bytes = write(&tree, &blobs.records(), BUILD_TIME);
    let img = Image::open(&bytes).unwrap();
    let mut straddling = 0;
    img.walk(&mut |e| {
        let start = e.inode.offset;
        if start / 4096 != (e.inode.body_end() - 1) / 4096 {
            straddling += 1;
        }
        Ok(())
    })
    .unwrap();
    assert!(straddling > 0, "no inode+xattr body crosses a block; the kernel test would not cover it");
}
