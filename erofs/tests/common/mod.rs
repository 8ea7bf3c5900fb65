//! Shared helpers for the erofs integration tests: sample trees and external tools.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use erofs::blob::{BlobRecord, Compression, GroupEntry};
use erofs::tree::*;

pub const BUILD_TIME: i64 = 1_700_000_000;

pub fn meta(mode: u32) -> Meta {
    Meta { mode, uid: 0, gid: 0, mtime: BUILD_TIME, mtime_nsec: 0 }
}

pub fn node(kind: Kind, perm: u32) -> Node {
    let mode = kind.type_bits() | perm;
    Node { meta: meta(mode), xattrs: Vec::new(), kind }
}

pub fn dir() -> Node {
    node(Kind::Dir { children: BTreeMap::new() }, 0o755)
}

/// Adds `node` under `parent` as `name`.
pub fn add(tree: &mut Tree, parent: NodeId, name: &[u8], node: Node) -> NodeId {
    let id = tree.add(node);
    link(tree, parent, name, id);
    id
}

pub fn link(tree: &mut Tree, parent: NodeId, name: &[u8], id: NodeId) {
    tree.children_mut(parent).expect("parent is a dir").insert(name.to_vec(), id);
}

pub fn inline_file(data: &[u8]) -> Node {
    node(Kind::File { size: data.len() as u64, data: FileData::Inline(data.to_vec()) }, 0o644)
}

pub fn xattr(name: &str, value: &[u8]) -> Xattr {
    Xattr { name: name.as_bytes().to_vec(), value: value.to_vec() }
}

/// A blob record for an uncompressed blob of `size` bytes (a multiple of 4096) with the
/// given content (CRCs filled in from it).
pub fn raw_blob(id_byte: u8, content: &[u8]) -> BlobRecord {
    assert_eq!(content.len() % 4096, 0);
    let gl2 = 16u8;
    let groups = content
        .chunks(1 << gl2)
        .map(|g| GroupEntry { stored_len: g.len() as u32, raw: true, crc32: crc32fast::hash(g) })
        .collect();
    BlobRecord {
        id: [id_byte; 32],
        stored_size: content.len() as u64,
        uncompressed_size: content.len() as u64,
        compression: Compression::None,
        group_size_log2: gl2,
        groups,
    }
}

/// The nydus RAFS v6 fixture images, in the repository (tests/fixtures/nydus, see its README).
pub fn nydus_fixtures() -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nydus");
    assert!(dir.join("tree.tar.gz").exists(), "nydus fixtures missing at {}", dir.display());
    dir
}

pub fn have_tool(name: &str) -> bool {
    Command::new(name).arg("--help").output().is_ok()
}

/// True when tests that need something missing must fail rather than skip.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Skips loudly (or fails under CI) when `cond` is false.
pub fn require(cond: bool, why: &str) -> bool {
    if !cond {
        if in_ci() {
            panic!("required for this test under CI: {why}");
        }
        eprintln!("\n*** SKIPPED: {why} ***\n");
    }
    cond
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{text}", out.status);
    text
}

pub fn write_file(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Chunk size used by the sample trees (64 KiB).
pub const CHUNK_BITS: u8 = 16;
pub const CHUNK: u64 = 1 << CHUNK_BITS;

/// Deterministic pseudo-random bytes.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Builds blob address spaces as chunks are appended: `put` returns the ChunkAddr.
pub struct Blobs {
    pub contents: Vec<Vec<u8>>,
}

impl Blobs {
    pub fn new(n: usize) -> Blobs {
        Blobs { contents: vec![Vec::new(); n] }
    }
    /// Appends `data` (one chunk's worth) to blob `dev` (1-based), 4 KiB aligned.
    pub fn put(&mut self, dev: u16, data: &[u8]) -> ChunkAddr {
        let b = &mut self.contents[dev as usize - 1];
        let blkaddr = (b.len() / 4096) as u32;
        b.extend_from_slice(data);
        b.resize(b.len().div_ceil(4096) * 4096, 0);
        ChunkAddr { device: dev, blkaddr }
    }
    /// A chunked file node: content split into chunks, all-zero chunks become holes,
    /// chunk i goes to device `dev_of(i)`.
    pub fn file(&mut self, content: &[u8], dev_of: impl Fn(usize) -> u16) -> Node {
        let chunks = content
            .chunks(CHUNK as usize)
            .enumerate()
            .map(|(i, c)| if c.iter().all(|&b| b == 0) { ChunkAddr::HOLE } else { self.put(dev_of(i), c) })
            .collect();
        node(Kind::File { size: content.len() as u64, data: FileData::Chunks { chunk_bits: CHUNK_BITS, chunks } }, 0o644)
    }
    pub fn records(&self) -> Vec<BlobRecord> {
        self.contents.iter().enumerate().map(|(i, c)| raw_blob(i as u8 + 1, c)).collect()
    }
}

/// What a regular file in a sample tree should contain (for comparing reads).
pub struct Expect {
    pub path: String,
    pub content: Vec<u8>,
}

/// A tree with every file type, xattrs (inline, shared, ACL), hard links, odd names, a big
/// directory, a deep path, sparse chunked files over two blobs, odd owners and times.
pub fn sample_tree() -> (Tree, Blobs, Vec<Expect>) {
    let mut t = Tree::new(meta(0o755));
    let mut blobs = Blobs::new(2);
    let mut expect = Vec::new();
    let root = Tree::ROOT;
    t.node_mut(root).xattrs.push(xattr("user.root", b"r"));

    // Regular files: inline, empty, chunked (one and two blobs), sparse, exact chunk multiple.
    add(&mut t, root, b"small.txt", inline_file(b"hello, world\n"));
    expect.push(Expect { path: "small.txt".into(), content: b"hello, world\n".to_vec() });
    add(&mut t, root, b"empty", inline_file(b""));
    expect.push(Expect { path: "empty".into(), content: vec![] });
    let big_inline = pattern(7, 9000);
    add(&mut t, root, b"inline-9000", inline_file(&big_inline));
    expect.push(Expect { path: "inline-9000".into(), content: big_inline });
    let data = pattern(1, 300_000);
    let f = blobs.file(&data, |_| 1);
    add(&mut t, root, b"chunked", f);
    expect.push(Expect { path: "chunked".into(), content: data });
    let data = pattern(2, 5 * CHUNK as usize + 123);
    let f = blobs.file(&data, |i| 1 + (i % 2) as u16);
    add(&mut t, root, b"two-blobs", f);
    expect.push(Expect { path: "two-blobs".into(), content: data });
    let mut sparse = vec![0u8; 10 * CHUNK as usize + 5];
    sparse[3 * CHUNK as usize..3 * CHUNK as usize + 4096].copy_from_slice(&pattern(3, 4096));
    sparse[10 * CHUNK as usize..].copy_from_slice(b"tail!");
    let f = blobs.file(&sparse, |_| 2);
    add(&mut t, root, b"sparse", f);
    expect.push(Expect { path: "sparse".into(), content: sparse });
    let data = pattern(4, 2 * CHUNK as usize);
    let f = blobs.file(&data, |_| 1);
    add(&mut t, root, b"exact", f);
    expect.push(Expect { path: "exact".into(), content: data });

    // Odd owners / times → extended inodes.
    let mut n = inline_file(b"owned\n");
    n.meta.uid = 100_000;
    n.meta.gid = 70_000;
    n.meta.mtime = 123_456_789;
    n.meta.mtime_nsec = 987_654_321;
    n.meta.mode = S_IFREG | 0o4755;
    add(&mut t, root, b"setuid-owned", n);
    expect.push(Expect { path: "setuid-owned".into(), content: b"owned\n".to_vec() });

    // Special files.
    add(&mut t, root, b"null", node(Kind::CharDev { major: 1, minor: 3 }, 0o666));
    add(&mut t, root, b"sda", node(Kind::BlockDev { major: 8, minor: 0x12345 }, 0o660));
    add(&mut t, root, b"fifo", node(Kind::Fifo, 0o644));
    add(&mut t, root, b"sock", node(Kind::Socket, 0o755));
    add(&mut t, root, b"link", node(Kind::Symlink { target: b"small.txt".to_vec() }, 0o777));
    add(&mut t, root, b"dangling", node(Kind::Symlink { target: b"/does/not/exist".to_vec() }, 0o777));
    let mut slow = node(Kind::Symlink { target: vec![b'x'; 4000] }, 0o777);
    slow.xattrs.push(xattr("security.selinux", &[b's'; 200]));
    add(&mut t, root, b"slow-link", slow);

    // Hard links: three names, one node.
    let hl = add(&mut t, root, b"hard1", inline_file(b"linked\n"));
    link(&mut t, root, b"hard2", hl);
    expect.push(Expect { path: "hard1".into(), content: b"linked\n".to_vec() });

    // Odd names: UTF-8, spaces, names sorting before '.', 255 bytes.
    let odd = add(&mut t, root, b"odd names", dir());
    add(&mut t, odd, "résumé – ünïcødé ✓".as_bytes(), inline_file(b"u"));
    add(&mut t, odd, b" leading space", inline_file(b"s"));
    add(&mut t, odd, b"!bang", inline_file(b"b"));
    add(&mut t, odd, b"-dash", inline_file(b"d"));
    add(&mut t, odd, b".hidden", inline_file(b"h"));
    add(&mut t, odd, &[b'L'; 255], inline_file(b"long"));
    add(&mut t, odd, &[0xff, 0xfe, b'x'], inline_file(b"non-utf8"));
    link(&mut t, odd, b"hard3", hl);

    // Xattrs: inline, shared (same name+value on several inodes), ACLs.
    let xd = add(&mut t, root, b"xattrs", dir());
    let acl = [2u8, 0, 0, 0, 1, 0, 6, 0, 0xff, 0xff, 0xff, 0xff, 4, 0, 4, 0, 0xff, 0xff, 0xff, 0xff, 0x20, 0, 4, 0, 0xff, 0xff, 0xff, 0xff];
    for i in 0..5 {
        let mut f = inline_file(format!("x{i}").as_bytes());
        f.xattrs.push(xattr("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"));
        f.xattrs.push(xattr("user.shared", b"same value everywhere"));
        f.xattrs.push(xattr("user.own", format!("value {i}").as_bytes()));
        f.xattrs.push(xattr("trusted.t", b""));
        if i == 0 {
            f.xattrs.push(xattr("system.posix_acl_access", &acl));
            f.xattrs.push(xattr("lustre.l", b"lv"));
            f.xattrs.push(xattr("user.big", &pattern(9, 3000)));
        }
        add(&mut t, xd, format!("f{i}").as_bytes(), f);
    }
    // Chunked files (no inline tail, so no one-block constraint) with big distinct xattrs and
    // extended inodes: their inode bodies and xattrs straddle block boundaries.
    for i in 0..12u64 {
        let content = pattern(20 + i, 5000);
        let mut f = blobs.file(&content, |_| 1);
        f.meta.mtime = 1_000_000 + i as i64;
        f.xattrs.push(xattr("user.straddle", &pattern(40 + i, 1500)));
        add(&mut t, xd, format!("straddle{i}").as_bytes(), f);
        expect.push(Expect { path: format!("xattrs/straddle{i}"), content });
    }
    let mut d = dir();
    d.xattrs.push(xattr("system.posix_acl_default", &acl));
    d.xattrs.push(xattr("trusted.overlay.opaque", b"y"));
    add(&mut t, xd, b"acl-dir", d);

    // A big directory spanning several blocks.
    let big = add(&mut t, root, b"big", dir());
    for i in 0..3000 {
        let name = format!("entry-{i:05}-{}", "n".repeat(i % 40));
        let n = if i % 100 == 0 { dir() } else { inline_file(format!("{i}").as_bytes()) };
        add(&mut t, big, name.as_bytes(), n);
    }

    // A deep path.
    let mut cur = root;
    for i in 0..60 {
        cur = add(&mut t, cur, format!("d{i}").as_bytes(), dir());
    }
    add(&mut t, cur, b"bottom", inline_file(b"deep\n"));
    let deep: Vec<String> = (0..60).map(|i| format!("d{i}")).collect();
    expect.push(Expect { path: format!("{}/bottom", deep.join("/")), content: b"deep\n".to_vec() });

    (t, blobs, expect)
}

/// Reads device `dev` (1-based) from in-memory blob contents.
pub fn fetch_from(contents: &[Vec<u8>]) -> impl FnMut(u16, u64, &mut [u8]) -> std::io::Result<()> + '_ {
    move |dev, off, buf| {
        let b = contents
            .get(dev as usize - 1)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("no device {dev}")))?;
        let end = off as usize + buf.len();
        if end > b.len() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("device {dev} read {off}+{} beyond {}", buf.len(), b.len())));
        }
        buf.copy_from_slice(&b[off as usize..end]);
        Ok(())
    }
}

/// Compares everything the reader reports about `img` with the tree it was written from:
/// the set of paths, kinds, modes, owners, times, sizes, link counts, hard-link identity,
/// xattrs, link targets, device numbers, `.`/`..`, and every regular file's bytes.
pub fn assert_image_matches_tree<T: AsRef<[u8]>>(img: &erofs::reader::Image<T>, tree: &Tree, contents: &[Vec<u8>], build_time: (i64, u32)) {
    use erofs::reader::FileKind;
    use std::collections::HashMap;
    // Expected: path → node, in the tree.
    let mut want: BTreeMap<Vec<u8>, (NodeId, NodeId)> = BTreeMap::new(); // path → (node, parent)
    let mut links: HashMap<NodeId, u32> = HashMap::new();
    let mut stack = vec![(Vec::new(), Tree::ROOT, Tree::ROOT)];
    while let Some((path, id, parent)) = stack.pop() {
        want.insert(path.clone(), (id, parent));
        if let Some(children) = tree.children(id) {
            for (name, &c) in children {
                *links.entry(c).or_default() += 1;
                let mut p = path.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(name);
                stack.push((p, c, id));
            }
        }
    }
    // Seen: path → inode, from the image.
    let mut seen: BTreeMap<Vec<u8>, erofs::reader::Inode> = BTreeMap::new();
    img.walk(&mut |e| {
        seen.insert(e.path.to_vec(), e.inode.clone());
        Ok(())
    })
    .expect("walk");
    assert_eq!(seen.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "paths differ");
    let mut nid_of_node: HashMap<NodeId, u64> = HashMap::new();
    let mut fetch = fetch_from(contents);
    for (path, ino) in &seen {
        let (id, parent) = want[path];
        let node = tree.node(id);
        let p = String::from_utf8_lossy(path);
        if let Some(prev) = nid_of_node.insert(id, ino.nid) {
            assert_eq!(prev, ino.nid, "{p}: hard link resolves to another nid");
        }
        let m = &node.meta;
        assert_eq!(ino.mode as u32, m.mode, "{p}: mode");
        assert_eq!((ino.uid, ino.gid), (m.uid, m.gid), "{p}: owner");
        if ino.extended {
            assert_eq!((ino.mtime, ino.mtime_nsec), (m.mtime, m.mtime_nsec), "{p}: mtime");
        } else {
            assert_eq!((m.mtime, m.mtime_nsec), build_time, "{p}: compact inode but mtime differs from build time");
        }
        let mut got_x = img.xattrs(ino).expect("xattrs");
        let mut want_x = node.xattrs.clone();
        got_x.sort();
        want_x.sort();
        assert_eq!(got_x, want_x, "{p}: xattrs");
        match &node.kind {
            Kind::Dir { children } => {
                assert_eq!(ino.kind, FileKind::Dir, "{p}");
                let subdirs = children.values().filter(|c| matches!(tree.node(**c).kind, Kind::Dir { .. })).count() as u32;
                assert_eq!(ino.nlink, 2 + subdirs, "{p}: dir nlink");
                let ents = img.readdir(ino).expect("readdir");
                let mut names: Vec<Vec<u8>> = children.keys().cloned().collect();
                names.push(b".".to_vec());
                names.push(b"..".to_vec());
                names.sort();
                assert_eq!(ents.iter().map(|e| e.name.clone()).collect::<Vec<_>>(), names, "{p}: entries");
                let dot = ents.iter().find(|e| e.name == b".").unwrap();
                assert_eq!(dot.nid, ino.nid, "{p}: '.'");
                let dotdot = ents.iter().find(|e| e.name == b"..").unwrap();
                let parent_path = want.iter().find(|(_, v)| v.0 == parent).unwrap().0;
                assert_eq!(dotdot.nid, seen[parent_path].nid, "{p}: '..'");
                for e in &ents {
                    let child = img.inode(e.nid).unwrap();
                    let ft = match child.kind {
                        FileKind::File => 1,
                        FileKind::Dir => 2,
                        FileKind::CharDev => 3,
                        FileKind::BlockDev => 4,
                        FileKind::Fifo => 5,
                        FileKind::Socket => 6,
                        FileKind::Symlink => 7,
                    };
                    assert_eq!(e.file_type, ft, "{p}: file type of {:?}", String::from_utf8_lossy(&e.name));
                }
            }
            Kind::File { size, data } => {
                assert_eq!(ino.kind, FileKind::File, "{p}");
                assert_eq!(ino.size, *size, "{p}: size");
                assert_eq!(ino.nlink, links[&id], "{p}: nlink");
                let mut buf = vec![0u8; *size as usize];
                let n = img.read_file(ino, 0, &mut buf, &mut fetch).expect("read_file");
                assert_eq!(n as u64, *size);
                match data {
                    FileData::Inline(bytes) => assert_eq!(&buf, bytes, "{p}: content"),
                    FileData::Chunks { chunk_bits, chunks } => {
                        assert_eq!(ino.chunk_bits(), Some(*chunk_bits).filter(|_| *size > 0), "{p}: chunk bits");
                        let cs = 1usize << chunk_bits;
                        for (i, c) in chunks.iter().enumerate() {
                            let piece = &buf[i * cs..((i + 1) * cs).min(buf.len())];
                            if c.is_hole() {
                                assert!(piece.iter().all(|&b| b == 0), "{p}: hole {i} not zero");
                            } else {
                                let blob = &contents[c.device as usize - 1];
                                let at = c.blkaddr as usize * 4096;
                                assert_eq!(piece, &blob[at..at + piece.len()], "{p}: chunk {i}");
                            }
                        }
                    }
                }
            }
            Kind::Symlink { target } => {
                assert_eq!(ino.kind, FileKind::Symlink);
                assert_eq!(&img.readlink(ino).unwrap(), target, "{p}: target");
                assert_eq!(ino.nlink, links[&id]);
            }
            Kind::CharDev { major, minor } => {
                assert_eq!(ino.kind, FileKind::CharDev);
                assert_eq!(ino.rdev(), (*major, *minor), "{p}: rdev");
            }
            Kind::BlockDev { major, minor } => {
                assert_eq!(ino.kind, FileKind::BlockDev);
                assert_eq!(ino.rdev(), (*major, *minor), "{p}: rdev");
            }
            Kind::Fifo => assert_eq!(ino.kind, FileKind::Fifo),
            Kind::Socket => assert_eq!(ino.kind, FileKind::Socket),
        }
    }
}

/// Writes a tree to bytes.
pub fn write(tree: &Tree, blobs: &[BlobRecord], build_time: i64) -> Vec<u8> {
    let opts = erofs::writer::WriteOptions { build_time: build_time as u64, ..Default::default() };
    let mut out = Vec::new();
    erofs::writer::write_bootstrap(tree, blobs, &opts, &mut out).expect("write_bootstrap");
    out
}
