//! Helpers shared by the builder tests: read an image back through the reader and the blob
//! codec, and snapshot its whole tree for comparison.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use erofs::blob::{BlobRecord, GroupDecoder, GroupMap};
use erofs::reader::{FileKind, Image};

/// One entry of an image (or of the expected tree).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Full st_mode (type + permissions).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// File content or symlink target; empty otherwise.
    pub data: Vec<u8>,
    pub rdev: (u32, u32),
    pub nlink: u32,
    pub nid: u64,
}

pub struct Opened {
    pub img: Image<Vec<u8>>,
    pub blob_dir: PathBuf,
}

pub fn open(outdir: &Path) -> Opened {
    let boot = std::fs::read(outdir.join("image.boot")).expect("reading image.boot");
    let img = Image::open(boot).expect("opening the bootstrap");
    Opened { img, blob_dir: outdir.join("blobs") }
}

/// Reads `dst.len()` bytes at `off` of a blob's address space the way the daemon does: one
/// stored range for the covering groups, each group decoded and CRC-checked.
pub fn fetch(rec: &BlobRecord, blob_dir: &Path, off: u64, dst: &mut [u8]) -> std::io::Result<()> {
    let map = GroupMap::new(rec).map_err(std::io::Error::other)?;
    let run = map.map(off, dst.len() as u64).map_err(std::io::Error::other)?;
    let f = File::open(blob_dir.join(rec.id_hex()))?;
    let mut stored = vec![0u8; (run.stored.end - run.stored.start) as usize];
    f.read_exact_at(&mut stored, run.stored.start)?;
    let mut dec = GroupDecoder::new()?;
    let mut plain = vec![0u8; (run.uncompressed.end - run.uncompressed.start) as usize];
    for g in run.first..=run.last {
        let sr = map.stored_range(g);
        let ur = map.group_range(g);
        let s = &stored[(sr.start - run.stored.start) as usize..(sr.end - run.stored.start) as usize];
        let p = &mut plain[(ur.start - run.uncompressed.start) as usize..(ur.end - run.uncompressed.start) as usize];
        dec.decode(rec.compression, g, &rec.groups[g as usize], s, p).map_err(std::io::Error::other)?;
    }
    let start = (off - run.uncompressed.start) as usize;
    dst.copy_from_slice(&plain[start..start + dst.len()]);
    Ok(())
}

impl Opened {
    pub fn read_content(&self, ino: &erofs::reader::Inode) -> Vec<u8> {
        let blobs: Vec<BlobRecord> = self.img.blobs().map(|b| b.to_vec()).unwrap_or_default();
        let mut buf = vec![0u8; ino.size as usize];
        let dir = self.blob_dir.clone();
        let n = self
            .img
            .read_file(ino, 0, &mut buf, &mut |dev, off, dst| fetch(&blobs[dev as usize - 1], &dir, off, dst))
            .expect("read_file");
        assert_eq!(n as u64, ino.size);
        buf
    }

    /// Every entry by path ("/" for the root).
    pub fn snapshot(&self) -> BTreeMap<String, Entry> {
        let mut out = BTreeMap::new();
        self.img
            .walk(&mut |e| {
                let ino = e.inode;
                let path = format!("/{}", String::from_utf8_lossy(e.path));
                let data = match ino.kind {
                    FileKind::File => self.read_content(ino),
                    FileKind::Symlink => self.img.readlink(ino)?,
                    _ => Vec::new(),
                };
                let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> =
                    self.img.xattrs(ino)?.into_iter().map(|x| (x.name, x.value)).collect();
                xattrs.sort();
                let rdev = if matches!(ino.kind, FileKind::CharDev | FileKind::BlockDev) { ino.rdev() } else { (0, 0) };
                out.insert(
                    path,
                    Entry {
                        mode: ino.mode as u32,
                        uid: ino.uid,
                        gid: ino.gid,
                        mtime: (ino.mtime, ino.mtime_nsec),
                        xattrs,
                        data,
                        rdev,
                        nlink: ino.nlink,
                        nid: ino.nid,
                    },
                );
                Ok(())
            })
            .expect("walking the image");
        out
    }
}

/// A fresh scratch directory under the target dir's tmp (removed on drop).
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("erofsd-build-test-").tempdir().unwrap()
}

/// All paths (relative) under `dir`, recursively, for "nothing written elsewhere" checks.
pub fn list_all(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn rec(base: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            if e.file_type().unwrap().is_dir() {
                rec(base, &p, out);
            }
        }
    }
    rec(dir, dir, &mut out);
    out.sort();
    out
}

// The same file as `common::data`: test crates that load both modules get two copies of it.
#[allow(clippy::duplicate_mod)]
#[path = "../common/data.rs"]
mod data;
pub use data::noise;

/// Compressible text of `n` bytes.
pub fn text(n: usize, seed: u64) -> Vec<u8> {
    let words = ["alpha ", "beta ", "gamma ", "delta\n", "epsilon ", "zeta "];
    let mut s = Vec::with_capacity(n + 8);
    let mut i = seed as usize;
    while s.len() < n {
        s.extend_from_slice(words[i % words.len()].as_bytes());
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    s.truncate(n);
    s
}

/// Builds layer tars entry by entry (GNU headers, long names handled by the tar crate).
pub struct TarMaker {
    pub b: tar::Builder<Vec<u8>>,
}

impl Default for TarMaker {
    fn default() -> Self {
        Self::new()
    }
}

impl TarMaker {
    pub fn new() -> TarMaker {
        TarMaker { b: tar::Builder::new(Vec::new()) }
    }

    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    pub fn pax(&mut self, recs: &[(&str, &[u8])]) -> &mut Self {
        self.b.append_pax_extensions(recs.iter().map(|(k, v)| (*k, *v))).unwrap();
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.file_mode(path, data, 0o644, 0, 0)
    }

    pub fn file_mode(&mut self, path: &str, data: &[u8], mode: u32, uid: u64, gid: u64) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).unwrap();
        self
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode);
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644);
        self.b.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn dev(&mut self, path: &str, kind: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(kind, 0o660);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.b.append_data(&mut h, path, &[][..]).unwrap();
        self
    }

    /// An entry whose name field is written byte for byte, bypassing the tar crate's path
    /// checks (for hostile names: `..`, absolute paths, NUL bytes). At most 100 bytes.
    pub fn raw(&mut self, name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> &mut Self {
        let mut h = Self::header(kind, 0o644);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::bulk::compress(data, 3).unwrap()
}

/// Writes `tar` to `dir/name` and returns a tar source for it.
pub fn tar_source(dir: &Path, name: &str, tar: &[u8]) -> erofsd::build::Source {
    let p = dir.join(name);
    std::fs::write(&p, tar).unwrap();
    erofsd::build::Source::Tar(p)
}
