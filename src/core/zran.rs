//! Decoding nydus zran chunks: stretches of an original gzip layer's uncompressed stream.
//!
//! The blob meta ([`erofs::rafs::zran`]) says, per chunk, which inflate context it lies in and
//! at what offset of that context's output. A chunk is decoded by resuming raw inflate at its
//! context's start (bits + 32 KiB window, [`erofs::inflate_resume`]) over the fetched gzip
//! bytes, discarding output up to the chunk's offset, then keeping exactly its bytes. Chunks
//! of one context decoded in one call share one resumed stream (the decoder only moves
//! forward), so a run of chunks costs one inflate of their context, not one per chunk.
//!
//! Verified: every chunk's digest against the bootstrap's chunk table (nydus builds zran
//! images with sha256 chunk digests; [`erofs::rafs::apply_chunk_digests`]), its CRC32C when
//! its CI entry has one (nydus writes none for zran chunks today), and that the gzip bytes
//! inflate cleanly from the context to the chunk's end and yield exactly its length. The meta
//! blob was checked against its sha256 id at load. Not checked: the gzip CRC32 (it covers
//! whole members, which a resumed decode never sees whole) — and a chunk the chunk table does
//! not list is only as good as the inflate.

use erofs::inflate_resume::RawInflater;
use erofs::rafs::{verify_chunk, Chunk, ZranTable};

/// A resumed inflate stream, reused while consecutive chunks stay in one context.
pub struct ZranDecoder {
    inflater: RawInflater,
    /// Context the inflater is positioned in, if any.
    context: Option<u32>,
}

impl ZranDecoder {
    pub fn new() -> Result<ZranDecoder, String> {
        Ok(ZranDecoder { inflater: RawInflater::new().map_err(|e| e.to_string())?, context: None })
    }

    /// Decodes zran `chunk` into `out` (exactly its uncompressed length). `stored` holds the
    /// blob's bytes from offset `base` on; it must cover the chunk's context start through the
    /// chunk's end, and must stay the same buffer across calls on one decoder.
    pub fn decode(&mut self, table: &ZranTable, chunk: &Chunk, base: u64, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
        let z = chunk.zran.ok_or("not a zran chunk")?;
        let ctx = table.contexts().get(z.context as usize).ok_or_else(|| format!("inflate context {} out of range", z.context))?;
        if out.len() as u64 != chunk.uncompressed.end - chunk.uncompressed.start {
            return Err(format!("{}-byte buffer for a {}-byte chunk", out.len(), chunk.uncompressed.end - chunk.uncompressed.start));
        }
        let fetched = base..base + stored.len() as u64;
        if ctx.in_offset < fetched.start || chunk.stored.end > fetched.end {
            return Err(format!(
                "gzip bytes {}..{} (context {} start to chunk end) outside the fetched {}..{}",
                ctx.in_offset, chunk.stored.end, z.context, fetched.start, fetched.end
            ));
        }
        // The context's input as far as it was fetched: the same slice for every chunk of it.
        let input_end = ctx.input().end.min(fetched.end);
        let input = &stored[(ctx.in_offset - base) as usize..(input_end - base) as usize];
        let fresh = self.context != Some(z.context) || self.inflater.produced() > z.offset as u64;
        if fresh {
            self.context = None;
            let at = table.resume_point(z.context).ok_or("inflate context out of range")?;
            self.inflater.resume(&at).map_err(|e| e.to_string())?;
            self.context = Some(z.context);
        }
        let step = (|| {
            self.inflater.skip(input, z.offset as u64 - self.inflater.produced())?;
            self.inflater.read_exact(input, out)
        })();
        if let Err(e) = step {
            self.context = None; // the stream is in an unknown state
            return Err(format!("inflate context {} (gzip offset {}): {e}", z.context, ctx.in_offset));
        }
        verify_chunk(chunk, out)
    }
}
