//! Interior holes, and why EROFS over fscache cannot be trusted with them.
//!
//! A *hole* is a chunk whose address is the null address (`NULL_ADDR`): it reads as zeros and
//! costs no I/O. An *interior* hole is one that a chunk with data follows in the same file; a
//! *trailing* hole has only holes after it.
//!
//! The kernel's EROFS-over-fscache read path (`erofs_fscache_data_read_slice`, Linux 5.19 to
//! 7.1, checked in the 6.1 and 6.12 sources) zero-fills **the whole rest of a read request** when
//! the request starts in an unmapped extent, where its mapped branch clamps the slice to the
//! extent. A read-ahead request that starts in an interior hole and runs into data therefore
//! returns zeros for that data, silently. A trailing hole is safe: a request that starts in it
//! ends at the end of the file, so zeroing the rest is right. File-backed mounts (the fanotify
//! door) and block-device mounts map each extent separately and read holes right.
//!
//! What lives here, as pure functions of the bootstrap bytes (the policy, which door needs
//! what, is the caller's):
//! * [`interior_holes`] lists the files that have interior holes;
//! * [`redirect_interior_holes`] returns a copy of the bootstrap in which every interior hole
//!   addresses one zero extent placed right after the metadata, in the bootstrap itself
//!   (device 0). Whoever serves that copy serves zeros past its end; the kernel then maps those
//!   chunks like any other and never takes the zero-fill branch. Trailing holes are left as
//!   they are.
//!
//! Invariant: a redirected bootstrap differs from the original only in the rewritten chunk
//! entries (and the superblock checksum when the image has one and an entry lies in block 0),
//! and it reads, file by file, exactly as the original does through [`crate::reader`].

use std::collections::HashSet;

use crate::error::{corrupt, Error, Result};
use crate::ondisk::*;
use crate::reader::{superblock_checksum, FileKind, Image};

/// The interior holes of one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InteriorHoles {
    /// Path from the root (the first one the walk meets, for a file with hard links).
    pub path: Vec<u8>,
    pub nid: u64,
    /// File offset of the first interior hole.
    pub first_offset: u64,
    /// How many chunks are interior holes.
    pub chunks: u64,
    pub chunk_bits: u8,
}

/// Every file with interior holes, in walk order. Errors only on a corrupt image.
pub fn interior_holes<T: AsRef<[u8]>>(img: &Image<T>) -> Result<Vec<InteriorHoles>> {
    Ok(files_with_interior_holes(img)?.into_iter().map(|f| f.holes).collect())
}

/// One file's interior holes and where their chunk entries are.
struct Found {
    holes: InteriorHoles,
    indexes: bool,
    /// Byte offset in the bootstrap of each interior hole's chunk entry.
    entries: Vec<u64>,
}

/// The one walk behind [`interior_holes`] and [`redirect_interior_holes`]: each regular file
/// once (a hard-linked one under the first path met), its chunk table scanned for null entries
/// with a mapped entry after them.
fn files_with_interior_holes<T: AsRef<[u8]>>(img: &Image<T>) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    img.walk(&mut |e| {
        if e.inode.kind != FileKind::File || !seen.insert(e.inode.nid) {
            return Ok(());
        }
        let Some(table) = img.chunk_table(e.inode)? else { return Ok(()) };
        let (mut interior, mut pending) = (Vec::new(), Vec::new());
        for i in 0..table.count {
            let entry = img.chunk_entry(&table, i)?;
            if entry.blkaddr == NULL_ADDR {
                pending.push((i, entry.offset));
            } else {
                interior.append(&mut pending);
            }
        }
        if let Some(&(first, _)) = interior.first() {
            out.push(Found {
                holes: InteriorHoles {
                    path: e.path.to_vec(),
                    nid: e.inode.nid,
                    first_offset: first << table.chunk_bits,
                    chunks: interior.len() as u64,
                    chunk_bits: table.chunk_bits,
                },
                indexes: table.indexes,
                entries: interior.into_iter().map(|(_, off)| off).collect(),
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// A bootstrap whose interior holes address a zero extent ([`redirect_interior_holes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirected {
    /// The rewritten bootstrap (same length as the original).
    pub bootstrap: Vec<u8>,
    /// Bytes the kernel must be told the bootstrap object has: the bootstrap rounded up to a
    /// block, plus the zero extent. Everything past `bootstrap.len()` reads as zeros.
    pub size: u64,
    /// First block of the zero extent (device 0).
    pub zero_blkaddr: u32,
    /// Files and chunks rewritten.
    pub files: u64,
    pub chunks: u64,
}

/// Rewrites every interior hole to address one zero extent appended to the bootstrap (see the
/// module doc). `None` when the image has no interior hole (serve it as it is). An image whose
/// device table maps the zero extent's blocks to another device is refused as
/// [`Error::Unsupported`].
pub fn redirect_interior_holes(bytes: &[u8]) -> Result<Option<Redirected>> {
    let img = Image::open(bytes)?;
    let found = files_with_interior_holes(&img)?;
    let Some(max_bits) = found.iter().map(|f| f.holes.chunk_bits).max() else { return Ok(None) };
    let zero_blkaddr = u32::try_from((bytes.len() as u64).div_ceil(BLOCK_SIZE))
        .ok()
        .filter(|&b| b != NULL_ADDR)
        .ok_or_else(|| corrupt!("bootstrap of {} bytes is too large to address", bytes.len()))?;
    let zero_blocks = 1u64 << (max_bits - BLKSZBITS);
    let zero_end = zero_blkaddr as u64 + zero_blocks;
    if zero_end > NULL_ADDR as u64 {
        return Err(Error::Unsupported(format!("a zero extent of 2^{max_bits} bytes after the bootstrap is beyond 16 TiB")));
    }
    for (k, d) in img.devices().iter().enumerate() {
        let (start, end) = (d.mapped_blkaddr as u64, d.mapped_blkaddr as u64 + d.blocks as u64);
        if d.mapped_blkaddr != 0 && start < zero_end && (zero_blkaddr as u64) < end {
            return Err(Error::Unsupported(format!(
                "device {} is mapped at blocks {start}..{end}, over the zero extent needed at block {zero_blkaddr}",
                k + 1
            )));
        }
    }
    let mut out = bytes.to_vec();
    for (off, indexes) in found.iter().flat_map(|f| f.entries.iter().map(move |&off| (off as usize, f.indexes))) {
        if indexes {
            // struct erofs_inode_chunk_index: advise (kept), device_id, blkaddr.
            out[off + 2..off + 4].copy_from_slice(&0u16.to_le_bytes());
            out[off + 4..off + 8].copy_from_slice(&zero_blkaddr.to_le_bytes());
        } else {
            out[off..off + 4].copy_from_slice(&zero_blkaddr.to_le_bytes());
        }
    }
    let sb = img.superblock();
    if sb.feature_compat & FEATURE_COMPAT_SB_CHKSUM != 0 && found.iter().flat_map(|f| &f.entries).any(|&off| off < BLOCK_SIZE) {
        let sum = superblock_checksum(&out);
        let at = SUPERBLOCK_OFFSET as usize + 4;
        out[at..at + 4].copy_from_slice(&sum.to_le_bytes());
    }
    Ok(Some(Redirected {
        bootstrap: out,
        size: zero_end * BLOCK_SIZE,
        zero_blkaddr,
        files: found.len() as u64,
        chunks: found.iter().map(|f| f.holes.chunks).sum(),
    }))
}
