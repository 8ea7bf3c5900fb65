//! Hand-crafted hostile images: each corrupts one structure of a valid bootstrap and checks
//! that the reader answers with the right kind of error (never a panic).

mod common;

use common::*;
use erofs::ondisk::*;
use erofs::reader::Image;
use erofs::tree::*;
use erofs::Error;

/// A small valid image: root with a subdir, an inline file, a chunked file, a symlink.
fn base() -> (Vec<u8>, Blobs) {
    let mut t = Tree::new(meta(0o755));
    let mut blobs = Blobs::new(1);
    let d = add(&mut t, Tree::ROOT, b"dir", dir());
    add(&mut t, d, b"inner", inline_file(b"inner"));
    let mut f = inline_file(b"hello");
    f.xattrs.push(xattr("user.a", b"1"));
    add(&mut t, Tree::ROOT, b"file", f);
    let c = blobs.file(&pattern(1, 100_000), |_| 1);
    add(&mut t, Tree::ROOT, b"chunked", c);
    add(&mut t, Tree::ROOT, b"sym", node(Kind::Symlink { target: b"file".to_vec() }, 0o777));
    (write(&t, &blobs.records(), BUILD_TIME), blobs)
}

fn open_err(bytes: &[u8]) -> Error {
    match Image::open(bytes) {
        Ok(_) => panic!("hostile image opened"),
        Err(e) => e,
    }
}

fn poke16(b: &mut [u8], off: u64, v: u16) {
    b[off as usize..off as usize + 2].copy_from_slice(&v.to_le_bytes());
}
fn poke32(b: &mut [u8], off: u64, v: u32) {
    b[off as usize..off as usize + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn superblock_checks() {
    let (good, _) = base();
    assert!(matches!(open_err(&good[..1100]), Error::Corrupt(_)));
    let mut b = good.clone();
    b[1024] ^= 1;
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("magic")));
    let mut b = good.clone();
    b[1024 + 12] = 13;
    assert!(matches!(open_err(&b), Error::Unsupported(m) if m.contains("block size")));
    let mut b = good.clone();
    poke32(&mut b, 1024 + 80, 0x80 | 0xC);
    assert!(matches!(open_err(&b), Error::Unsupported(m) if m.contains("incompatible")));
    let mut b = good.clone();
    b[1024 + 64..1024 + 80].fill(b'v');
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("volume name")));
    let mut b = good.clone();
    b[1024 + 90] = 1;
    assert!(matches!(open_err(&b), Error::Unsupported(m) if m.contains("dirblkbits")));
    let mut b = good.clone();
    b[1024 + 13] = 200;
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("sb_extslots")));
    // Checksum flag with a wrong checksum.
    let mut b = good.clone();
    poke32(&mut b, 1024 + 8, FEATURE_COMPAT_SB_CHKSUM | FEATURE_COMPAT_MTIME);
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("checksum")));
    // ...and with the right one it opens.
    let sum = erofs::reader::superblock_checksum(&b);
    poke32(&mut b, 1024 + 4, sum);
    Image::open(&b).unwrap();
    // Root nid pointing at a non-directory / beyond the image.
    let img = Image::open(&good).unwrap();
    let file_nid = img.lookup("file").unwrap().nid;
    let mut b = good.clone();
    poke16(&mut b, 1024 + 14, file_nid as u16);
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("not a directory")));
    let mut b = good.clone();
    poke32(&mut b, 1024 + 40, 0x00FF_FFFF); // meta_blkaddr far away
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("beyond the image")));
}

#[test]
fn extension_and_device_table_checks() {
    let (good, _) = base();
    let mut b = good.clone();
    b[1152 + 20] ^= 1; // blob table offset, header CRC now wrong
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("extension header CRC")));
    let img = Image::open(&good).unwrap();
    let off = img.ext_header().unwrap().blob_table_offset;
    let mut b = good.clone();
    b[off as usize + 40] ^= 1; // uncompressed size in the blob record → table CRC
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("blob table CRC")));
    let mut b = good.clone();
    poke16(&mut b, 1024 + 86, 2); // extra_devices no longer matches blob_count
    assert!(matches!(open_err(&b), Error::Corrupt(_)));
    let mut b = good.clone();
    poke16(&mut b, 1024 + 88, 0xFFFF); // device table beyond the image
    assert!(matches!(open_err(&b), Error::Corrupt(m) if m.contains("device table")));
}

#[test]
fn inode_checks() {
    let (good, _) = base();
    let img = Image::open(&good).unwrap();
    let file = img.lookup("file").unwrap();
    let mut b = good.clone();
    poke16(&mut b, file.offset, 0x10 | (LAYOUT_FLAT_INLINE << 1)); // unknown i_format bit
    assert!(matches!(Image::open(&b).unwrap().lookup("file"), Err(Error::Unsupported(_))));
    let mut b = good.clone();
    poke16(&mut b, file.offset, 6 << 1); // layout 6
    assert!(matches!(Image::open(&b).unwrap().lookup("file"), Err(Error::Corrupt(m)) if m.contains("layout")));
    let mut b = good.clone();
    poke16(&mut b, file.offset + 4, 0o170644); // invalid mode type
    assert!(matches!(Image::open(&b).unwrap().lookup("file"), Err(Error::Corrupt(m)) if m.contains("mode")));
    let mut b = good.clone();
    poke16(&mut b, file.offset + 2, 1); // xattr_icount 1
    assert!(matches!(Image::open(&b).unwrap().lookup("file"), Err(Error::Corrupt(m)) if m.contains("xattr_icount")));
    // A compressed layout reads as unsupported, but the inode itself decodes.
    let mut b = good.clone();
    poke16(&mut b, file.offset, LAYOUT_COMPRESSED_FULL << 1);
    let img2 = Image::open(&b).unwrap();
    let f = img2.lookup("file").unwrap();
    let mut buf = [0u8; 5];
    assert!(matches!(img2.read_file(&f, 0, &mut buf, &mut |_, _, _| Ok(())), Err(Error::Unsupported(_))));
    // Size grown so the inline tail would cross its block.
    let mut b = good.clone();
    poke32(&mut b, file.offset + 8, 4095);
    let img2 = Image::open(&b).unwrap();
    let f = img2.lookup("file").unwrap();
    let mut buf = [0u8; 5];
    assert!(matches!(img2.read_file(&f, 0, &mut buf, &mut |_, _, _| Ok(())), Err(Error::Corrupt(m)) if m.contains("crosses")));
}

#[test]
fn xattr_checks() {
    let (good, _) = base();
    let img = Image::open(&good).unwrap();
    let file = img.lookup("file").unwrap();
    let entry = file.offset + 32 + 12; // compact inode, ibody header, no shared ids
    let mut b = good.clone();
    b[entry as usize + 1] = 0x81; // long-prefix index
    let img2 = Image::open(&b).unwrap();
    assert!(matches!(img2.xattrs(&img2.lookup("file").unwrap()), Err(Error::Unsupported(m)) if m.contains("long xattr")));
    let mut b = good.clone();
    b[entry as usize + 1] = 9; // unknown index
    let img2 = Image::open(&b).unwrap();
    assert!(matches!(img2.xattrs(&img2.lookup("file").unwrap()), Err(Error::Corrupt(_))));
    let mut b = good.clone();
    b[entry as usize + 2] = 200; // value runs past the xattr area
    let img2 = Image::open(&b).unwrap();
    assert!(matches!(img2.xattrs(&img2.lookup("file").unwrap()), Err(Error::Corrupt(_))));
    let mut b = good.clone();
    b[(file.offset + 32 + 4) as usize] = 50; // 50 shared ids do not fit
    let img2 = Image::open(&b).unwrap();
    assert!(matches!(img2.xattrs(&img2.lookup("file").unwrap()), Err(Error::Corrupt(m)) if m.contains("shared")));
}

#[test]
fn directory_checks() {
    let (good, _) = base();
    let img = Image::open(&good).unwrap();
    let root = img.root().unwrap();
    let blk = root.body_end(); // root's dirents are its inline tail
    // nameoff0 = 0
    let mut b = good.clone();
    poke16(&mut b, blk + 8, 0);
    let img2 = Image::open(&b).unwrap();
    assert!(matches!(img2.readdir(&img2.root().unwrap()), Err(Error::Corrupt(m)) if m.contains("nameoff")));
    // Swap two names' first bytes → unsorted.
    let ents = img.readdir(&root).unwrap();
    assert_eq!(ents.iter().map(|e| e.name.as_slice()).collect::<Vec<_>>(), [&b"."[..], b"..", b"chunked", b"dir", b"file", b"sym"]);
    let nameoff = |i: usize| u16::from_le_bytes([good[(blk + 12 * i as u64 + 8) as usize], good[(blk + 12 * i as u64 + 9) as usize]]) as u64;
    let mut b = good.clone();
    b[(blk + nameoff(2)) as usize] = b'z'; // "zhunked" > "dir"
    let img2 = Image::open(&b).unwrap();
    assert!(matches!(img2.readdir(&img2.root().unwrap()), Err(Error::Corrupt(m)) if m.contains("sorted")));
    // Zero-length name (two equal nameoffs).
    let mut b = good.clone();
    poke16(&mut b, blk + 12 * 3 + 8, nameoff(4) as u16);
    let img2 = Image::open(&b).unwrap();
    assert!(img2.readdir(&img2.root().unwrap()).is_err());
    // A cycle: "dir" → the root.
    let mut b = good.clone();
    b[(blk + 12 * 3) as usize..(blk + 12 * 3 + 8) as usize].copy_from_slice(&root.nid.to_le_bytes());
    let img2 = Image::open(&b).unwrap();
    let r = img2.walk(&mut |_| Ok(()));
    assert!(matches!(&r, Err(Error::Corrupt(m)) if m.contains("reached twice")), "{r:?}");
    // An entry pointing far outside the image.
    let mut b = good.clone();
    b[(blk + 12 * 4) as usize..(blk + 12 * 4 + 8) as usize].copy_from_slice(&u64::MAX.to_le_bytes());
    let img2 = Image::open(&b).unwrap();
    assert!(matches!(img2.lookup("file"), Err(Error::Corrupt(_))));
}

#[test]
fn chunk_checks() {
    let (good, blobs) = base();
    let img = Image::open(&good).unwrap();
    let c = img.lookup("chunked").unwrap();
    let idx = c.body_end().div_ceil(8) * 8;
    let mut fetch = fetch_from(&blobs.contents);
    // The kernel masks device ids with roundup_pow_of_two(N + 1) - 1 (here N = 1 → 1), so
    // extra high bits (nydus keeps data there) are ignored.
    let mut b = good.clone();
    poke16(&mut b, idx + 2, 0x0301); // high byte ignored by the mask, like nydus
    let img2 = Image::open(&b).unwrap();
    let c2 = img2.lookup("chunked").unwrap();
    let mut buf = vec![0u8; 100_000];
    img2.read_file(&c2, 0, &mut buf, &mut fetch).unwrap();
    assert!(buf == pattern(1, 100_000));
    // Size claims far more chunks than the image holds indexes for.
    let mut b = good.clone();
    poke32(&mut b, c.offset + 8, u32::MAX);
    let img2 = Image::open(&b).unwrap();
    let c2 = img2.lookup("chunked").unwrap();
    assert!(matches!(img2.data_map(&c2), Err(Error::Corrupt(m)) if m.contains("chunk index")));
    // Unknown chunk format bits.
    let mut b = good.clone();
    poke16(&mut b, c.offset + 16, 0x40 | 0x20 | 4);
    assert!(matches!(Image::open(&b).unwrap().lookup("chunked"), Err(Error::Unsupported(m)) if m.contains("chunk format")));
}
