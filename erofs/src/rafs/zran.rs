//! nydus "zran" blob meta: random access into an original gzip layer.
//!
//! A zran blob is the OCI gzip layer itself. Its chunks are stretches of the layer's
//! uncompressed tar stream; to decode one without inflating the layer from its start, nydus
//! records *inflate contexts* at DEFLATE block boundaries about every 0.5–1 MiB of input:
//! where the context starts in the gzip stream (`in_offset`, plus the `ctx_bits` unread bits
//! of the byte before it, kept in `ctx_byte`), how much input and output it spans, and the
//! 32 KiB of output before it (its *window*, stored in a dictionary area after the context
//! array). A chunk's CI v2 entry names its context (high 32 bits of `data`) and its offset in
//! that context's output (low 32 bits). The table lives after the CI entries in the blob meta
//! (header +40 offset, +48 size, +56 count).
//!
//! This module parses and bounds-checks that table and checks every chunk against it, so the
//! decoder (`erofsd::core::zran`, using [`crate::inflate_resume`]) can trust every offset.

use std::ops::Range;

use super::{u32_at, u64_at, RafsBlob, RafsError};
use crate::inflate_resume::{ResumePoint, WINDOW_SIZE};

macro_rules! bad {
    ($($arg:tt)*) => { RafsError::Corrupt(format!($($arg)*)) };
}

/// Size of one on-disk inflate context.
pub const CONTEXT_SIZE: usize = 40;
/// Largest gzip input one context may span. nydus starts a new context after ~0.5 MiB of input
/// (a single chunk can push one past that by up to its own compressed size, ≤ 16 MiB + a
/// little); this bounds what one chunk fetch can cost.
pub const MAX_CONTEXT_INPUT: u64 = 64 << 20;

/// One inflate context (`ZranInflateContext`, 40 bytes little-endian).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZranContext {
    /// Where decoding resumes in the gzip layer.
    pub in_offset: u64,
    /// Offset of this context's output in the layer's uncompressed stream.
    pub out_offset: u64,
    /// Offset of its window in the dictionary area.
    pub dict_offset: u64,
    pub in_len: u32,
    pub out_len: u32,
    pub dict_size: u32,
    /// The byte before `in_offset`, whose top `ctx_bits` bits are still unread.
    pub ctx_byte: u8,
    pub ctx_bits: u8,
}

impl ZranContext {
    fn parse(e: &[u8]) -> ZranContext {
        ZranContext {
            in_offset: u64_at(e, 0),
            out_offset: u64_at(e, 8),
            dict_offset: u64_at(e, 16),
            in_len: u32_at(e, 24),
            out_len: u32_at(e, 28),
            dict_size: u32_at(e, 32),
            ctx_byte: e[36],
            ctx_bits: e[37],
        }
    }

    /// The gzip input this context spans.
    pub fn input(&self) -> Range<u64> {
        self.in_offset..self.in_offset + self.in_len as u64
    }
}

/// Where a zran chunk's bytes are: `offset` bytes into the output of context `context`, whose
/// input starts at `input_start` in the gzip layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZranRef {
    pub context: u32,
    pub offset: u32,
    pub input_start: u64,
}

/// The inflate contexts of one zran blob and their windows, all checked against the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ZranTable {
    contexts: Vec<ZranContext>,
    dicts: Vec<u8>,
}

impl ZranTable {
    /// Parses the context table inside the decoded blob meta `table`, as located by the 4 KiB
    /// meta `header`.
    pub fn parse(blob: &RafsBlob, header: &[u8], table: &[u8]) -> Result<ZranTable, RafsError> {
        if header.len() != super::META_HEADER_SIZE as usize {
            return Err(bad!("zran table: meta header of {} bytes", header.len()));
        }
        let (offset, size, count) = (u64_at(header, 40), u64_at(header, 48), u32_at(header, 56) as u64);
        let ctx = format!("blob {} zran table ({count} contexts, {size} bytes at {offset})", &blob.id[..12]);
        let entries_end = blob.chunk_count as u64 * blob.ci_entry_size();
        let end = offset.checked_add(size).ok_or_else(|| bad!("{ctx}: offset overflows"))?;
        if offset < entries_end || end > table.len() as u64 {
            return Err(bad!("{ctx}: outside the {}-byte table after its {entries_end} bytes of chunk entries", table.len()));
        }
        if count == 0 || count * CONTEXT_SIZE as u64 > size {
            return Err(bad!("{ctx}: context count does not fit the table"));
        }
        let area = &table[offset as usize..end as usize];
        let (array, dicts) = area.split_at(count as usize * CONTEXT_SIZE);
        let mut contexts: Vec<ZranContext> = Vec::with_capacity(count as usize);
        for (i, e) in array.chunks_exact(CONTEXT_SIZE).enumerate() {
            let c = ZranContext::parse(e);
            let what = || format!("{ctx}: context {i} (input {}+{}, output {}+{})", c.in_offset, c.in_len, c.out_offset, c.out_len);
            if c.in_len == 0 || c.in_len as u64 > MAX_CONTEXT_INPUT || c.out_len == 0 {
                return Err(bad!("{}: empty or over {MAX_CONTEXT_INPUT} bytes of input", what()));
            }
            if c.in_offset.checked_add(c.in_len as u64).is_none_or(|e| e > blob.compressed_size) {
                return Err(bad!("{}: input past the {}-byte gzip blob", what(), blob.compressed_size));
            }
            if c.out_offset.checked_add(c.out_len as u64).is_none() {
                return Err(bad!("{}: output offset overflows", what()));
            }
            if c.dict_size as usize > WINDOW_SIZE
                || c.dict_offset.checked_add(c.dict_size as u64).is_none_or(|e| e > dicts.len() as u64)
            {
                return Err(bad!("{}: window {}+{} outside the {}-byte dictionary area", what(), c.dict_offset, c.dict_size, dicts.len()));
            }
            if c.ctx_bits > 7 {
                return Err(bad!("{}: {} leftover bits (at most 7)", what(), c.ctx_bits));
            }
            if let Some(p) = contexts.last() {
                if c.in_offset <= p.in_offset || c.out_offset <= p.out_offset {
                    return Err(bad!("{}: not after context {} in the stream", what(), i - 1));
                }
            }
            contexts.push(c);
        }
        Ok(ZranTable { contexts, dicts: dicts.to_vec() })
    }

    pub fn contexts(&self) -> &[ZranContext] {
        &self.contexts
    }

    /// Where decoding of context `i` resumes (bits and window), or `None` for a bad index.
    pub fn resume_point(&self, i: u32) -> Option<ResumePoint<'_>> {
        let c = self.contexts.get(i as usize)?;
        let window = &self.dicts[c.dict_offset as usize..c.dict_offset as usize + c.dict_size as usize];
        Some(ResumePoint { bits: c.ctx_bits, byte: c.ctx_byte, window })
    }

    /// Checks chunk `i` (stored bytes `stored`, `size` uncompressed bytes, CI `data` word)
    /// against its context and says where its bytes are.
    pub(super) fn resolve(&self, i: usize, data: u64, stored: Range<u64>, size: u64) -> Result<ZranRef, RafsError> {
        let (context, offset) = ((data >> 32) as u32, data as u32);
        let what = format!("chunk {i} (stored {}..{}, context {context} offset {offset} size {size})", stored.start, stored.end);
        let c = self
            .contexts
            .get(context as usize)
            .ok_or_else(|| bad!("{what}: context index out of range ({} contexts)", self.contexts.len()))?;
        let input = c.input();
        if stored.start < input.start || stored.end > input.end {
            return Err(bad!("{what}: stored bytes outside the context's input {}..{}", input.start, input.end));
        }
        if offset as u64 + size > c.out_len as u64 {
            return Err(bad!("{what}: past the context's {} output bytes", c.out_len));
        }
        Ok(ZranRef { context, offset, input_start: c.in_offset })
    }
}

#[cfg(test)]
mod tests;
