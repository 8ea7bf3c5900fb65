//! `erofsd check`: verifies an image's every structure and, with its blobs, every byte.
//!
//! * Metadata: the reader walks the whole tree (every inode, dirent, xattr, symlink, chunk
//!   index), checks that each chunk lies inside its device, that link counts match the
//!   directory entries, and that the blob table is consistent.
//! * Blobs (when the blob directory has them): size and sha256 equal the record, every group
//!   decodes and matches its CRC32.
//! * Interior holes (a hole with data after it in the same file) are listed: valid EROFS, but
//!   EROFS over fscache reads the data after them as zeros when served as they are.
//! * `--write-raw DIR`: writes each blob's uncompressed address space to `DIR/<blob-id>`
//!   (zero groups left as holes), so the image can be mounted with `device=` and no daemon.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use erofs::blob::{BlobRecord, GroupDecoder, GroupMap};
use erofs::reader::{ExtentKind, FileKind, Image};
use sha2::{Digest, Sha256};

/// Where the pieces of an image are.
pub struct CheckPaths {
    pub bootstrap: PathBuf,
    pub blob_dir: PathBuf,
    /// The blob directory was named explicitly: its absence is an error, not a note.
    pub blob_dir_given: bool,
}

impl CheckPaths {
    /// `image` is a bootstrap file or an image directory (holding `image.boot`); the blob
    /// directory defaults to `blobs/` next to the bootstrap.
    pub fn resolve(image: &Path, blob_dir: Option<&Path>) -> CheckPaths {
        let bootstrap = if image.is_dir() { image.join("image.boot") } else { image.to_path_buf() };
        let blob_dir_given = blob_dir.is_some();
        let blob_dir = match blob_dir {
            Some(d) => d.to_path_buf(),
            None => bootstrap.parent().unwrap_or(Path::new(".")).join("blobs"),
        };
        CheckPaths { bootstrap, blob_dir, blob_dir_given }
    }
}

#[derive(Debug, Default)]
pub struct CheckReport {
    pub inodes: u64,
    pub dirs: u64,
    pub files: u64,
    pub file_bytes: u64,
    pub chunks: u64,
    pub holes: u64,
    pub xattrs: u64,
    pub blobs: u64,
    pub blobs_verified: u64,
    pub groups_verified: u64,
    pub raw_written: Vec<PathBuf>,
    /// Files with interior holes (valid EROFS, but unsafe through fscache as they are).
    pub interior_holes: Vec<erofs::holes::InteriorHoles>,
    /// Everything wrong that did not stop the check; empty = the image is good.
    pub problems: Vec<String>,
    pub notes: Vec<String>,
}

/// Runs every check. Structural errors that make the walk impossible are returned as `Err`;
/// anything else found goes into `problems`.
pub fn check(paths: &CheckPaths, write_raw: Option<&Path>) -> Result<CheckReport> {
    let boot = std::fs::read(&paths.bootstrap).with_context(|| format!("reading {}", paths.bootstrap.display()))?;
    let img = Image::open(boot.as_slice()).with_context(|| format!("{}", paths.bootstrap.display()))?;
    let mut rep = CheckReport::default();
    let ndev = img.devices().len();
    // Size of each device's address space: the blob record if there is one, else the slot.
    // (mkfs.erofs 1.5 leaves the slot's block count 0: size unknown, range not checked.)
    let dev_sizes: Vec<Option<u64>> = match img.blobs() {
        Some(recs) => recs.iter().map(|r| Some(r.uncompressed_size)).collect(),
        None => img.devices().iter().map(|d| (d.blocks != 0).then_some(d.blocks as u64 * 4096)).collect(),
    };
    if let Some(recs) = img.blobs() {
        for (k, (rec, slot)) in recs.iter().zip(img.devices()).enumerate() {
            if let Err(e) = GroupMap::new(rec) {
                rep.problems.push(format!("blob {} (device {}): {e}", rec.id_hex(), k + 1));
            }
            if slot.blocks as u64 * 4096 != rec.uncompressed_size {
                rep.problems.push(format!("device {}: slot says {} blocks, blob record {} bytes", k + 1, slot.blocks, rec.uncompressed_size));
            }
            if slot.tag[..] != *rec.id_hex().as_bytes() {
                rep.problems.push(format!("device {}: tag does not name blob {}", k + 1, rec.id_hex()));
            }
        }
    } else if ndev > 0 {
        rep.notes.push("no erofsd blob table: devices are plain files without checksums".into());
    }

    // nid → (i_nlink, dirents seen) for non-directories.
    let mut links: HashMap<u64, (u32, u32)> = HashMap::new();
    let problems = &mut rep.problems;
    let (mut inodes, mut dirs, mut files, mut file_bytes, mut chunks, mut holes, mut nx) = (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    img.walk(&mut |e| {
        let ino = e.inode;
        let path = String::from_utf8_lossy(e.path).into_owned();
        let path = if path.is_empty() { "/".to_string() } else { format!("/{path}") };
        nx += img.xattrs(ino).map_err(|err| ctx(err, &path))?.len() as u64;
        match ino.kind {
            FileKind::Dir => {
                dirs += 1;
            }
            FileKind::Symlink => {
                let t = img.readlink(ino).map_err(|err| ctx(err, &path))?;
                if t.len() as u64 != ino.size || t.is_empty() {
                    problems.push(format!("{path}: symlink target length {} for size {}", t.len(), ino.size));
                }
            }
            FileKind::File => {
                files += 1;
                file_bytes += ino.size;
                for x in img.data_map(ino).map_err(|err| ctx(err, &path))? {
                    match x.kind {
                        ExtentKind::Hole => holes += 1,
                        ExtentKind::Inline { .. } => {}
                        ExtentKind::Chunk { device_id, offset } => {
                            chunks += 1;
                            let dev = device_id as usize;
                            let end = offset + x.len.div_ceil(4096) * 4096;
                            if dev == 0 || dev > ndev {
                                problems.push(format!("{path}: chunk at {} on device {device_id} (image has {ndev})", x.logical));
                            } else if let Some(size) = dev_sizes[dev - 1].filter(|&s| end > s) {
                                problems.push(format!(
                                    "{path}: chunk at {} ends at byte {end} of device {device_id}, which has {size}",
                                    x.logical
                                ));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
        if !ino.is_dir() {
            let ent = links.entry(ino.nid).or_insert((ino.nlink, 0));
            ent.1 += 1;
        } else {
            inodes += 1;
        }
        Ok(())
    })
    .context("walking the tree")?;
    for (nid, (nlink, seen)) in &links {
        if nlink != seen {
            rep.problems.push(format!("inode {nid}: i_nlink {nlink} but {seen} directory entries"));
        }
    }
    rep.inodes = inodes + links.len() as u64;
    rep.interior_holes = erofs::holes::interior_holes(&img).context("looking for interior holes")?;
    (rep.dirs, rep.files, rep.file_bytes, rep.chunks, rep.holes, rep.xattrs) = (dirs, files, file_bytes, chunks, holes, nx);

    if let Some(recs) = img.blobs() {
        rep.blobs = recs.len() as u64;
        if let Some(dir) = write_raw {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let have_dir = paths.blob_dir.is_dir();
        if !have_dir && !recs.is_empty() {
            if write_raw.is_some() || paths.blob_dir_given {
                bail!("blob directory {} not found", paths.blob_dir.display());
            }
            rep.notes.push(format!("blob directory {} not found: blob contents not verified", paths.blob_dir.display()));
        } else {
            for rec in recs {
                let raw = write_raw.map(|d| d.join(rec.id_hex()));
                match verify_blob(&paths.blob_dir, rec, raw.as_deref()) {
                    Ok(groups) => {
                        rep.blobs_verified += 1;
                        rep.groups_verified += groups;
                        if let Some(r) = raw {
                            rep.raw_written.push(r);
                        }
                    }
                    Err(e) => rep.problems.push(format!("blob {}: {e:#}", rec.id_hex())),
                }
            }
        }
    } else if write_raw.is_some() && ndev > 0 {
        bail!("--write-raw: the image has no erofsd blob table (its devices are already raw)");
    }
    Ok(rep)
}

fn ctx(e: erofs::Error, path: &str) -> erofs::Error {
    match e {
        erofs::Error::Corrupt(m) => erofs::Error::Corrupt(format!("{path}: {m}")),
        other => other,
    }
}

/// Streams one blob file: size, sha256, every group decoded and CRC-checked; optionally
/// writes the decoded address space. Returns the number of groups verified.
fn verify_blob(dir: &Path, rec: &BlobRecord, raw: Option<&Path>) -> Result<u64> {
    let path = dir.join(rec.id_hex());
    let map = GroupMap::new(rec)?;
    let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let size = f.metadata()?.len();
    if size != rec.stored_size {
        bail!("{} is {size} bytes, the record says {}", path.display(), rec.stored_size);
    }
    let out = match raw {
        Some(p) => {
            let o = File::create(p).with_context(|| format!("creating {}", p.display()))?;
            Some(o)
        }
        None => None,
    };
    let mut dec = GroupDecoder::new()?;
    let mut sha = Sha256::new();
    let mut stored = Vec::new();
    let mut plain = Vec::new();
    let mut first_error: Option<anyhow::Error> = None;
    for i in 0..map.group_count() {
        let sr = map.stored_range(i);
        let ur = map.group_range(i);
        stored.resize((sr.end - sr.start) as usize, 0);
        f.read_exact(&mut stored).with_context(|| format!("reading group {i} of {}", path.display()))?;
        sha.update(&stored);
        plain.resize((ur.end - ur.start) as usize, 0);
        match dec.decode(rec.compression, i, &rec.groups[i as usize], &stored, &mut plain) {
            Ok(()) => {
                if let Some(o) = &out {
                    // Leave zero groups as holes: the raw file stays sparse like the image.
                    if plain.iter().any(|&b| b != 0) {
                        o.write_all_at(&plain, ur.start).context("writing the raw blob")?;
                    }
                }
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(e.into());
                }
            }
        }
    }
    let mut rest = [0u8; 1];
    if f.read(&mut rest)? != 0 {
        bail!("{} grew while reading", path.display());
    }
    let digest: [u8; 32] = sha.finalize().into();
    if digest != rec.id {
        bail!("sha256 of {} is {}, not its name", path.display(), hex::encode(digest));
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    if let Some(mut o) = out {
        o.set_len(rec.uncompressed_size)?;
        o.flush()?;
    }
    Ok(map.group_count() as u64)
}
