//! File data → [`FileData`]: small files inline, larger ones cut into chunks that are
//! deduplicated by content across the whole image, and new chunks appended to the current
//! layer's blob.
//!
//! All-zero chunks: a file's *trailing* ones (nothing but zeros after them) become holes; every
//! other one addresses the image's one stored zero chunk, deduplicated like any chunk. So no
//! image this builder writes has an interior hole, which EROFS over fscache reads as zeros for
//! the data after it (see `erofs::holes`; the measurement behind the choice is in
//! docs/format.md).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use erofs::blob::BlobRecord;
use erofs::tree::{ChunkAddr, FileData};
use sha2::{Digest, Sha256};

use super::blobwriter::BlobWriter;
use super::BuildOptions;

/// Counters for the build report.
#[derive(Clone, Debug, Default)]
pub struct ChunkStats {
    /// File bytes read from the sources.
    pub source_bytes: u64,
    pub inline_files: u64,
    pub chunked_files: u64,
    pub chunks_stored: u64,
    pub chunks_deduped: u64,
    /// Trailing all-zero chunks, written as holes.
    pub chunks_holes: u64,
    /// Other all-zero chunks, pointed at the one stored zero chunk.
    pub chunks_zero: u64,
}

pub struct ChunkStore {
    opts: BuildOptions,
    blob_dir: PathBuf,
    chunk_size: usize,
    /// sha256 of chunk content → where it was stored (any device of this image).
    seen: HashMap<[u8; 32], ChunkAddr>,
    /// Where the image's one zero chunk is, once stored.
    zero: Option<ChunkAddr>,
    /// The blob of the layer being read, and its device id.
    blob: Option<(BlobWriter, u16)>,
    buf: Vec<u8>,
    pub stats: ChunkStats,
}

impl ChunkStore {
    pub fn new(opts: &BuildOptions, blob_dir: &Path) -> ChunkStore {
        ChunkStore {
            opts: opts.clone(),
            blob_dir: blob_dir.to_path_buf(),
            chunk_size: 1usize << opts.chunk_size_log2,
            seen: HashMap::new(),
            zero: None,
            blob: None,
            buf: Vec::new(),
            stats: ChunkStats::default(),
        }
    }

    /// Starts the blob for the next layer; its chunks will name device `device`.
    pub fn begin_layer(&mut self, device: u16) -> Result<()> {
        assert!(self.blob.is_none(), "previous layer not finished");
        let w = BlobWriter::new(
            &self.blob_dir,
            self.opts.compression,
            self.opts.zstd_level,
            self.opts.group_size_log2,
            self.opts.threads,
        )?;
        self.blob = Some((w, device));
        Ok(())
    }

    /// Finishes the current layer's blob; `None` if the layer stored no chunk.
    pub fn end_layer(&mut self) -> Result<Option<(BlobRecord, PathBuf)>> {
        match self.blob.take() {
            Some((w, _)) => w.finish(),
            None => Ok(None),
        }
    }

    /// Reads exactly `size` bytes of one file from `r` and stores them. `what` names the file
    /// in errors.
    pub fn store(&mut self, r: &mut dyn Read, size: u64, what: &dyn std::fmt::Display) -> Result<FileData> {
        self.stats.source_bytes += size;
        if size <= self.opts.inline_max as u64 {
            let mut data = vec![0u8; size as usize];
            read_full(r, &mut data).with_context(|| format!("{what}: reading {size} bytes"))?;
            self.stats.inline_files += 1;
            return Ok(FileData::Inline(data));
        }
        self.stats.chunked_files += 1;
        let n = size.div_ceil(self.chunk_size as u64);
        let mut chunks = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(1 << 20));
        let mut left = size;
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(self.chunk_size, 0);
        let res: Result<()> = (|| {
            while left > 0 {
                let len = left.min(self.chunk_size as u64) as usize;
                let data = &mut buf[..len];
                read_full(r, data).with_context(|| format!("{what}: reading at offset {}", size - left))?;
                chunks.push(if is_zero(data) { ChunkAddr::HOLE } else { self.put_chunk(data)? });
                left -= len as u64;
            }
            Ok(())
        })();
        self.buf = buf;
        res?;
        // Zero chunks before the last data chunk are interior: give them the stored zero chunk.
        // The rest (all of them, in a file of zeros) are trailing and stay holes.
        let last_data = chunks.iter().rposition(|c| !c.is_hole()).unwrap_or(0);
        let (interior, trailing) = chunks.split_at_mut(last_data);
        self.stats.chunks_holes += trailing.iter().filter(|c| c.is_hole()).count() as u64;
        for c in interior.iter_mut().filter(|c| c.is_hole()) {
            *c = self.zero_chunk()?;
            self.stats.chunks_zero += 1;
        }
        Ok(FileData::Chunks { chunk_bits: self.opts.chunk_size_log2, chunks })
    }

    /// The address of a whole chunk of zeros: stored on first use (in the current layer's blob,
    /// counted once as stored) and shared by every later use in the image.
    fn zero_chunk(&mut self) -> Result<ChunkAddr> {
        if let Some(addr) = self.zero {
            return Ok(addr);
        }
        let addr = self.put_chunk(&vec![0u8; self.chunk_size])?;
        self.zero = Some(addr);
        Ok(addr)
    }

    fn put_chunk(&mut self, data: &[u8]) -> Result<ChunkAddr> {
        let digest: [u8; 32] = Sha256::digest(data).into();
        if let Some(&addr) = self.seen.get(&digest) {
            self.stats.chunks_deduped += 1;
            return Ok(addr);
        }
        let (w, device) = self.blob.as_mut().expect("begin_layer not called");
        let off = w.append(data)?;
        let blkaddr = u32::try_from(off / 4096)
            .ok()
            .filter(|&b| b != ChunkAddr::HOLE_BLKADDR)
            .context("blob address space larger than 16 TiB")?;
        let addr = ChunkAddr { device: *device, blkaddr };
        self.seen.insert(digest, addr);
        self.stats.chunks_stored += 1;
        Ok(addr)
    }
}

/// Fills `buf` completely; a short source is an error (the file changed or the archive is
/// truncated), never silently zero-filled.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => bail!("unexpected end of data: got {done} of {} bytes (truncated input or file changed while reading)", buf.len()),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn is_zero(data: &[u8]) -> bool {
    let (head, body, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && tail.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0)
}
