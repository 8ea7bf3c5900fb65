//! The erofsd blob format (docs/format.md, "Blobs").
//!
//! A blob has two faces:
//! * the **address space** the kernel reads through an EROFS device: uncompressed, chunk data
//!   4 KiB-aligned, `uncompressed_size` bytes (a multiple of 4096);
//! * the **stored form** kept in a registry or directory: the address space cut into
//!   fixed-size *groups*, each stored compressed (zstd, or lz4 block for the cheapest decode;
//!   raw when compression does not make it smaller), back to
//!   back in group order. The group table (stored length, raw flag and CRC32 of the
//!   uncompressed group per group) lives in the bootstrap, so the daemon can map any
//!   uncompressed range to one stored byte range — one HTTP range request per run of groups —
//!   without fetching anything from the blob first.
//!
//! With `Compression::None` every group is raw, so the stored blob *is* the address space
//! (the same kind of file `mkfs.erofs --blobdev` writes); the group CRCs still guard reads.

/// How a blob's groups are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Zstd = 1,
    /// LZ4 block format (no frame): about a quarter larger than zstd level 3 on a rootfs, but
    /// decodes 2.4-2.7x faster, so a fill costs less CPU per byte (docs/format.md).
    Lz4 = 2,
}

impl Compression {
    pub fn from_u8(v: u8) -> Option<Compression> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::Lz4),
            _ => None,
        }
    }

    /// The name the command line and `inspect` use.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Lz4 => "lz4",
        }
    }

    /// Parses a command-line name (`zstd`, `lz4` or `none`).
    pub fn from_name(name: &str) -> Option<Compression> {
        [Compression::None, Compression::Zstd, Compression::Lz4].into_iter().find(|c| c.name() == name)
    }
}

/// Smallest and largest group size (log2). Bounds every allocation a reader makes for a group.
pub const MIN_GROUP_SIZE_LOG2: u8 = 12;
pub const MAX_GROUP_SIZE_LOG2: u8 = 24;

/// Bit 31 of a stored group length: the group is stored uncompressed.
pub const GROUP_RAW_FLAG: u32 = 1 << 31;

/// One group's entry in the group table (8 bytes on disk: le32 stored_len|flags, le32 crc32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupEntry {
    /// Length of the group in the stored blob.
    pub stored_len: u32,
    /// The group is stored as is (its stored_len equals its uncompressed length).
    pub raw: bool,
    /// CRC32 (IEEE, crc32fast) of the group's *uncompressed* bytes.
    pub crc32: u32,
}

/// Everything the bootstrap records about one blob (one device-table slot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    /// sha256 of the stored blob file; also its name (`blobs/<hex>`) and the device tag.
    pub id: [u8; 32],
    pub stored_size: u64,
    /// Size of the address space; a multiple of 4096 (device blocks × 4096).
    pub uncompressed_size: u64,
    pub compression: Compression,
    pub group_size_log2: u8,
    pub groups: Vec<GroupEntry>,
}

impl BlobRecord {
    pub fn id_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.id {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    pub fn group_size(&self) -> u64 {
        1u64 << self.group_size_log2
    }
}

// ---------------------------------------------------------------------------------------------
// Group codec: one group in, one stored group out (and back).
// ---------------------------------------------------------------------------------------------

/// Why a stored group could not be turned back into its uncompressed bytes.
///
/// [`BlobError::CrcMismatch`] is kept apart from the rest: the bytes decoded fine but are not
/// the bytes the image was built with (a corrupt or substituted blob). The daemon turns any of
/// these into EIO for the reader; it never hands unverified bytes to the kernel.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlobError {
    #[error("group {group}: stored data is {got} bytes, the group table says {want}")]
    StoredLength { group: u32, got: usize, want: u32 },
    #[error("group {group}: output buffer is {got} bytes, the group holds {want}")]
    OutputLength { group: u32, got: usize, want: u64 },
    #[error("group {group}: compressed data does not decode: {msg}")]
    Decompress { group: u32, msg: String },
    #[error("group {group}: decoded to {got} bytes, expected {want}")]
    DecodedLength { group: u32, got: usize, want: u64 },
    #[error("group {group}: CRC32 mismatch (table {want:#010x}, data {got:#010x})")]
    CrcMismatch { group: u32, want: u32, got: u32 },
    #[error("group {group}: table entry is inconsistent: {msg}")]
    BadEntry { group: u32, msg: String },
    #[error("blob group table: {0}")]
    BadTable(String),
    #[error("range {offset}+{len} is outside the blob's {size}-byte address space")]
    OutOfRange { offset: u64, len: u64, size: u64 },
}

impl GroupEntry {
    /// The on-disk 32-bit stored-length word (raw flag in bit 31).
    pub fn stored_word(&self) -> u32 {
        self.stored_len | if self.raw { GROUP_RAW_FLAG } else { 0 }
    }

    /// Splits an on-disk stored-length word back into (length, raw).
    pub fn from_words(stored_word: u32, crc32: u32) -> GroupEntry {
        GroupEntry { stored_len: stored_word & !GROUP_RAW_FLAG, raw: stored_word & GROUP_RAW_FLAG != 0, crc32 }
    }
}

/// Compresses groups with one reusable zstd context (contexts are costly to create, so a
/// builder keeps one per worker thread); lz4 needs no context.
pub struct GroupEncoder {
    compression: Compression,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

/// zstd level used by default: level 3 (zstd's own default) compresses a typical rootfs to
/// about 40 % while leaving a 2-core builder faster than the disk it reads.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

impl GroupEncoder {
    pub fn new(compression: Compression, level: i32) -> std::io::Result<GroupEncoder> {
        let zstd = match compression {
            Compression::None | Compression::Lz4 => None,
            Compression::Zstd => {
                let mut c = zstd::bulk::Compressor::new(level)?;
                // Stored groups are found through the group table, so the frame needs no
                // checksum of its own (the group CRC covers the bytes) and no magic-less tricks.
                c.include_checksum(false)?;
                c.include_contentsize(true)?;
                Some(c)
            }
        };
        Ok(GroupEncoder { compression, zstd })
    }

    /// Encodes one group: appends its stored bytes to `out` (cleared first) and returns its
    /// group-table entry. A group is stored raw when compression would not make it smaller,
    /// so a stored group is never longer than the uncompressed one.
    pub fn encode(&mut self, data: &[u8], out: &mut Vec<u8>) -> std::io::Result<GroupEntry> {
        let len = u32::try_from(data.len())
            .ok()
            .filter(|&l| l & GROUP_RAW_FLAG == 0)
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "group larger than 2 GiB"))?;
        let crc32 = crc32fast::hash(data);
        out.clear();
        // Both codecs write into `out` itself: zstd into its spare capacity (a frame that does
        // not fit in the input's length is not worth keeping, and zstd reports "destination
        // too small" for it), lz4 into room for its worst case (it never fails on that).
        let compressed = match (self.compression, self.zstd.as_mut()) {
            _ if data.is_empty() => None,
            (Compression::Zstd, Some(z)) => {
                out.reserve(data.len());
                z.compress_to_buffer(data, out).ok()
            }
            (Compression::Lz4, _) => {
                out.resize(lz4_flex::block::get_maximum_output_size(data.len()), 0);
                lz4_flex::block::compress_into(data, out).ok()
            }
            _ => None,
        };
        // Kept only when smaller than the group: a stored group is never longer than its data.
        if let Some(n) = compressed.filter(|&n| n > 0 && n < data.len()) {
            out.truncate(n);
            return Ok(GroupEntry { stored_len: n as u32, raw: false, crc32 });
        }
        out.clear();
        out.extend_from_slice(data);
        Ok(GroupEntry { stored_len: len, raw: true, crc32 })
    }
}

/// Encodes a whole address space held in memory as one blob: its stored bytes and its record
/// (id = sha256 of the stored bytes). For tests and small tools; the image builder streams
/// instead, so a layer never has to fit in memory.
pub fn encode_blob(data: &[u8], compression: Compression, group_size_log2: u8) -> std::io::Result<(Vec<u8>, BlobRecord)> {
    use sha2::{Digest, Sha256};
    let mut enc = GroupEncoder::new(compression, DEFAULT_ZSTD_LEVEL)?;
    let mut stored = Vec::new();
    let mut groups = Vec::new();
    for chunk in data.chunks(1 << group_size_log2) {
        let mut out = Vec::new();
        groups.push(enc.encode(chunk, &mut out)?);
        stored.extend_from_slice(&out);
    }
    let record = BlobRecord {
        id: Sha256::digest(&stored).into(),
        stored_size: stored.len() as u64,
        uncompressed_size: data.len() as u64,
        compression,
        group_size_log2,
        groups,
    };
    Ok((stored, record))
}

/// Decodes stored groups (one reusable zstd context; lz4 needs none).
pub struct GroupDecoder {
    zstd: zstd::bulk::Decompressor<'static>,
}

impl GroupDecoder {
    pub fn new() -> std::io::Result<GroupDecoder> {
        Ok(GroupDecoder { zstd: zstd::bulk::Decompressor::new()? })
    }

    /// Decodes group `index` of a blob stored with `codec` (its table entry `entry`, its stored
    /// bytes `stored`) into `out`, whose length must be exactly the group's uncompressed
    /// length, and verifies its CRC. `out` holds garbage on error.
    pub fn decode(
        &mut self,
        codec: Compression,
        index: u32,
        entry: &GroupEntry,
        stored: &[u8],
        out: &mut [u8],
    ) -> Result<(), BlobError> {
        if stored.len() != entry.stored_len as usize {
            return Err(BlobError::StoredLength { group: index, got: stored.len(), want: entry.stored_len });
        }
        if entry.raw {
            if stored.len() != out.len() {
                return Err(BlobError::OutputLength { group: index, got: out.len(), want: stored.len() as u64 });
            }
            out.copy_from_slice(stored);
        } else {
            if stored.is_empty() || stored.len() > out.len() {
                return Err(BlobError::BadEntry {
                    group: index,
                    msg: format!("{} group of {} stored bytes for {} uncompressed", codec.name(), stored.len(), out.len()),
                });
            }
            let decoded = match codec {
                // decompress_to_buffer never writes past `out`; a frame that would is an
                // error, a frame that decodes short is caught by the length check.
                Compression::Zstd => self.zstd.decompress_to_buffer(stored, out).map_err(|e| e.to_string()),
                // Bounds-checked decoder (lz4_flex's safe-decode): a hostile block that points
                // outside its output is an error, never a write out of `out`.
                Compression::Lz4 => lz4_flex::block::decompress_into(stored, out).map_err(|e| e.to_string()),
                Compression::None => Err("compressed group in an uncompressed blob".to_string()),
            };
            let n = decoded.map_err(|msg| BlobError::Decompress { group: index, msg })?;
            if n != out.len() {
                return Err(BlobError::DecodedLength { group: index, got: n, want: out.len() as u64 });
            }
        }
        let got = crc32fast::hash(out);
        if got != entry.crc32 {
            return Err(BlobError::CrcMismatch { group: index, want: entry.crc32, got });
        }
        Ok(())
    }
}

/// A run of whole groups covering an uncompressed range, and where their stored bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRun {
    pub first: u32,
    /// Inclusive.
    pub last: u32,
    /// Stored byte range `[start, end)` in the blob file: fetch exactly this in one request.
    pub stored: std::ops::Range<u64>,
    /// Uncompressed byte range `[start, end)` the run decodes to (whole groups).
    pub uncompressed: std::ops::Range<u64>,
}

/// Maps uncompressed ranges of one blob to group runs, using prefix sums of stored lengths.
///
/// Built once per blob from its (already validated or freshly written) [`BlobRecord`];
/// [`GroupMap::new`] re-checks the table so a daemon can trust every offset it hands out.
#[derive(Clone, Debug)]
pub struct GroupMap {
    group_size_log2: u8,
    uncompressed_size: u64,
    /// `starts[i]` = stored offset of group i; `starts[group_count]` = stored_size.
    /// Empty in chunk mode.
    starts: Vec<u64>,
    /// Chunk mode (nydus blobs, [`GroupMap::chunked`]): groups are the 4 KiB pages of the
    /// address space and each page's stored range is that of the chunk holding it (for a zran
    /// chunk: from its inflate context's start, where decoding must begin).
    chunks: Vec<crate::rafs::Chunk>,
}

impl GroupMap {
    pub fn new(rec: &BlobRecord) -> Result<GroupMap, BlobError> {
        if !(MIN_GROUP_SIZE_LOG2..=MAX_GROUP_SIZE_LOG2).contains(&rec.group_size_log2) {
            return Err(BlobError::BadTable(format!("group size log2 {} out of range", rec.group_size_log2)));
        }
        if !rec.uncompressed_size.is_multiple_of(4096) {
            return Err(BlobError::BadTable(format!("uncompressed size {} not 4 KiB aligned", rec.uncompressed_size)));
        }
        let gs = 1u64 << rec.group_size_log2;
        let want = rec.uncompressed_size.div_ceil(gs);
        if rec.groups.len() as u64 != want {
            return Err(BlobError::BadTable(format!("{} groups, size {} needs {want}", rec.groups.len(), rec.uncompressed_size)));
        }
        let mut starts = Vec::with_capacity(rec.groups.len() + 1);
        let mut off = 0u64;
        for (i, g) in rec.groups.iter().enumerate() {
            let ulen = (rec.uncompressed_size - i as u64 * gs).min(gs);
            let bad = |msg: String| BlobError::BadEntry { group: i as u32, msg };
            if g.raw && g.stored_len as u64 != ulen {
                return Err(bad(format!("raw group stored_len {} != {ulen}", g.stored_len)));
            }
            if !g.raw && (g.stored_len == 0 || g.stored_len as u64 > ulen) {
                return Err(bad(format!("compressed group stored_len {} for {ulen} bytes", g.stored_len)));
            }
            if !g.raw && rec.compression == Compression::None {
                return Err(bad("compressed group in an uncompressed blob".into()));
            }
            starts.push(off);
            off += g.stored_len as u64;
        }
        starts.push(off);
        if off != rec.stored_size {
            return Err(BlobError::BadTable(format!("stored lengths sum to {off}, record says {}", rec.stored_size)));
        }
        Ok(GroupMap { group_size_log2: rec.group_size_log2, uncompressed_size: rec.uncompressed_size, starts, chunks: Vec::new() })
    }

    /// A map over nydus chunks (from [`crate::rafs::parse_chunk_infos`], which checked them:
    /// 4 KiB-aligned, ascending and disjoint in both spaces). Groups are 4 KiB pages so the
    /// fill engine's readiness, single flight and read-ahead work unchanged; [`GroupMap::map`]
    /// widens every range to whole chunks, so a chunk is fetched and decoded once.
    pub fn chunked(uncompressed_size: u64, chunks: Vec<crate::rafs::Chunk>) -> Result<GroupMap, BlobError> {
        if !uncompressed_size.is_multiple_of(4096) || uncompressed_size >> 12 > u32::MAX as u64 {
            return Err(BlobError::BadTable(format!("uncompressed size {uncompressed_size} not 4 KiB aligned or too large")));
        }
        let mut prev_end = 0u64;
        let mut prev_stored = 0u64;
        let mut prev_fetch = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            let bad = |msg: &str| BlobError::BadEntry { group: i as u32, msg: msg.into() };
            if c.uncompressed.start % 4096 != 0 || c.uncompressed.start < prev_end || c.uncompressed.end > uncompressed_size {
                return Err(bad("chunk out of order or outside the address space"));
            }
            if c.uncompressed.is_empty() || c.stored.start < prev_stored || c.stored.end < c.stored.start {
                return Err(bad("chunk stored range out of order"));
            }
            // zran chunks are fetched from their inflate context's start: those starts must
            // ascend too, so a run of pages maps to one ascending stored span.
            if c.fetch_start() > c.stored.start || c.fetch_start() < prev_fetch {
                return Err(bad("chunk fetch start out of order"));
            }
            prev_end = c.uncompressed.end.next_multiple_of(4096);
            prev_stored = c.stored.end;
            prev_fetch = c.fetch_start();
        }
        Ok(GroupMap { group_size_log2: 12, uncompressed_size, starts: Vec::new(), chunks })
    }

    /// The chunk holding page `i`, chunk mode only (`None` for a hole or an erofsd map).
    pub fn chunk_of(&self, i: u32) -> Option<&crate::rafs::Chunk> {
        self.chunk_index(i).map(|k| &self.chunks[k])
    }

    fn chunk_index(&self, i: u32) -> Option<usize> {
        let at = (i as u64) << 12;
        let k = self.chunks.partition_point(|c| c.uncompressed.start <= at).checked_sub(1)?;
        (at < self.chunks[k].uncompressed.end).then_some(k)
    }

    pub fn is_chunked(&self) -> bool {
        self.starts.is_empty()
    }

    pub fn group_count(&self) -> u32 {
        if self.is_chunked() {
            return (self.uncompressed_size >> 12) as u32;
        }
        (self.starts.len() - 1) as u32
    }

    pub fn group_size(&self) -> u64 {
        1u64 << self.group_size_log2
    }

    /// Uncompressed byte range of group `i`.
    pub fn group_range(&self, i: u32) -> std::ops::Range<u64> {
        let start = (i as u64) << self.group_size_log2;
        start..(start + self.group_size()).min(self.uncompressed_size)
    }

    /// Stored byte range of group `i`.
    pub fn stored_range(&self, i: u32) -> std::ops::Range<u64> {
        if self.is_chunked() {
            let at = (i as u64) << 12;
            let k = self.chunks.partition_point(|c| c.uncompressed.start <= at);
            return match k.checked_sub(1).map(|k| &self.chunks[k]) {
                Some(c) if at < c.uncompressed.end => c.fetch_start()..c.stored.end,
                // A hole (padding between chunks): nothing stored; an empty range where the
                // previous chunk ends keeps stored ranges ascending.
                Some(c) => c.stored.end..c.stored.end,
                None => {
                    let s = self.chunks.first().map_or(0, |c| c.stored.start);
                    s..s
                }
            };
        }
        self.starts[i as usize]..self.starts[i as usize + 1]
    }

    /// Stored bytes to fetch to decode groups `first..=last` (inclusive). For an erofsd map or
    /// plain nydus chunks that is `stored_range(first).start..stored_range(last).end`; a zran
    /// chunk after a leading hole page needs its context's earlier input too, so in chunk mode
    /// the span runs from the first touched chunk's fetch start to the last one's end.
    pub fn span(&self, first: u32, last: u32) -> std::ops::Range<u64> {
        let plain = self.stored_range(first).start..self.stored_range(last).end;
        if !self.is_chunked() {
            return plain;
        }
        let (lo, hi) = ((first as u64) << 12, (last as u64 + 1) << 12);
        let k0 = self.chunks.partition_point(|c| c.uncompressed.end <= lo);
        let k1 = self.chunks.partition_point(|c| c.uncompressed.start < hi);
        if k0 >= k1 {
            return plain; // only holes: nothing stored
        }
        self.chunks[k0].fetch_start().min(plain.start)..self.chunks[k1 - 1].stored.end.max(plain.end)
    }

    /// The groups covering `[offset, offset + len)` (len > 0) and their stored byte range.
    pub fn map(&self, offset: u64, len: u64) -> Result<GroupRun, BlobError> {
        let end = offset.checked_add(len).filter(|&e| len > 0 && e <= self.uncompressed_size);
        let Some(end) = end else {
            return Err(BlobError::OutOfRange { offset, len, size: self.uncompressed_size });
        };
        let mut first = (offset >> self.group_size_log2) as u32;
        let mut last = ((end - 1) >> self.group_size_log2) as u32;
        if self.is_chunked() {
            // Widen to whole chunks: a chunk is the unit of storage and verification.
            if let Some(c) = self.chunk_of(first) {
                first = (c.uncompressed.start >> 12) as u32;
            }
            if let Some(c) = self.chunk_of(last) {
                last = ((c.uncompressed.end - 1) >> 12) as u32;
            }
            return Ok(GroupRun {
                first,
                last,
                stored: self.span(first, last),
                uncompressed: self.group_range(first).start..self.group_range(last).end,
            });
        }
        Ok(GroupRun {
            first,
            last,
            stored: self.starts[first as usize]..self.starts[last as usize + 1],
            uncompressed: self.group_range(first).start..self.group_range(last).end,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize) -> Vec<u8> {
        (0..n).map(|i| b"the quick brown fox "[i % 20]).collect()
    }

    fn noise(n: usize) -> Vec<u8> {
        // xorshift: incompressible, deterministic.
        let mut x = 0x9E3779B97F4A7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn roundtrip(c: Compression, data: &[u8]) -> (GroupEntry, Vec<u8>) {
        let mut enc = GroupEncoder::new(c, DEFAULT_ZSTD_LEVEL).unwrap();
        let mut stored = Vec::new();
        let e = enc.encode(data, &mut stored).unwrap();
        assert_eq!(e.stored_len as usize, stored.len());
        assert_eq!(e.crc32, crc32fast::hash(data));
        let mut out = vec![0xAA; data.len()];
        GroupDecoder::new().unwrap().decode(c, 7, &e, &stored, &mut out).unwrap();
        assert_eq!(out, data);
        (e, stored)
    }

    #[test]
    fn compressible_group_is_zstd() {
        let (e, stored) = roundtrip(Compression::Zstd, &text(65536));
        assert!(!e.raw);
        assert!(stored.len() < 1000);
        assert_eq!(&stored[..4], &[0x28, 0xB5, 0x2F, 0xFD], "an ordinary zstd frame");
    }

    #[test]
    fn incompressible_group_is_raw() {
        let data = noise(65536);
        let (e, stored) = roundtrip(Compression::Zstd, &data);
        assert!(e.raw);
        assert_eq!(stored, data);
        assert_eq!(e.stored_word(), 65536 | GROUP_RAW_FLAG);
    }

    #[test]
    fn none_is_always_raw() {
        let (e, stored) = roundtrip(Compression::None, &text(4096));
        assert!(e.raw);
        assert_eq!(stored.len(), 4096);
        let w = GroupEntry::from_words(e.stored_word(), e.crc32);
        assert_eq!(w, e);
    }

    #[test]
    fn empty_and_zero_groups() {
        roundtrip(Compression::Zstd, &[]);
        let (e, _) = roundtrip(Compression::Zstd, &vec![0u8; 262144]);
        assert!(!e.raw);
    }

    #[test]
    fn bad_crc_is_a_distinct_error() {
        let data = text(8192);
        let (mut e, stored) = roundtrip(Compression::Zstd, &data);
        e.crc32 ^= 1;
        let mut out = vec![0; data.len()];
        let err = GroupDecoder::new().unwrap().decode(Compression::Zstd, 3, &e, &stored, &mut out).unwrap_err();
        assert!(matches!(err, BlobError::CrcMismatch { group: 3, .. }), "{err}");
        // Raw group with flipped data byte.
        let (e, mut stored) = roundtrip(Compression::None, &data);
        stored[100] ^= 0xFF;
        let err = GroupDecoder::new().unwrap().decode(Compression::None, 0, &e, &stored, &mut out).unwrap_err();
        assert!(matches!(err, BlobError::CrcMismatch { .. }), "{err}");
    }

    #[test]
    fn corrupt_zstd_frame() {
        let data = text(65536);
        let (e, stored) = roundtrip(Compression::Zstd, &data);
        let mut out = vec![0; data.len()];
        let mut dec = GroupDecoder::new().unwrap();
        // Broken magic.
        let mut bad = stored.clone();
        bad[0] ^= 0xFF;
        let err = dec.decode(Compression::Zstd, 1, &e, &bad, &mut out).unwrap_err();
        assert!(matches!(err, BlobError::Decompress { .. }), "{err}");
        // Garbage in the middle: either undecodable or wrong content, never accepted.
        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..] {
            *b = 0x5A;
        }
        assert!(dec.decode(Compression::Zstd, 1, &e, &bad, &mut out).is_err());
    }

    /// Lengths that disagree, for each codec: the decoder, not luck, must catch them.
    #[test]
    fn wrong_lengths() {
        let data = text(65536);
        let mut dec = GroupDecoder::new().unwrap();
        let mut out = vec![0; data.len()];
        for codec in [Compression::Zstd, Compression::Lz4] {
            let (e, stored) = roundtrip(codec, &data);
            // Stored slice shorter than the table says (truncated input).
            let err = dec.decode(codec, 0, &e, &stored[..stored.len() - 1], &mut out).unwrap_err();
            assert!(matches!(err, BlobError::StoredLength { .. }), "{codec:?}: {err}");
            // Truncated data with the table entry adjusted to match (only the decoder can notice).
            let short = &stored[..stored.len() - 3];
            let e2 = GroupEntry { stored_len: short.len() as u32, ..e };
            let err = dec.decode(codec, 1, &e2, short, &mut out).unwrap_err();
            assert!(matches!(err, BlobError::Decompress { .. } | BlobError::DecodedLength { .. }), "{codec:?}: {err}");
            // Output buffer too small: the decoder must refuse, not overflow.
            let mut small = vec![0; data.len() - 4096];
            assert!(dec.decode(codec, 0, &e, &stored, &mut small).is_err(), "{codec:?}");
            // Output buffer too large: decodes short.
            let mut big = vec![0; data.len() + 4096];
            let err = dec.decode(codec, 0, &e, &stored, &mut big).unwrap_err();
            assert!(matches!(err, BlobError::DecodedLength { .. }), "{codec:?}: {err}");
        }
        // Raw group with the wrong output length.
        let (e, stored) = roundtrip(Compression::None, &data[..4096]);
        let mut out = vec![0; 8192];
        let err = dec.decode(Compression::Zstd, 0, &e, &stored, &mut out).unwrap_err();
        assert!(matches!(err, BlobError::OutputLength { .. }), "{err}");
        // Zstd entry claiming more stored bytes than the group has.
        let e = GroupEntry { stored_len: 5000, raw: false, crc32: 0 };
        let err = dec.decode(Compression::Zstd, 0, &e, &[0u8; 5000], &mut out[..4096]).unwrap_err();
        assert!(matches!(err, BlobError::BadEntry { .. }), "{err}");
    }

    #[test]
    fn compressible_group_is_lz4() {
        let (e, stored) = roundtrip(Compression::Lz4, &text(65536));
        assert!(!e.raw);
        assert!(stored.len() < 2000, "{}", stored.len());
        // A bare LZ4 block: no frame magic (0x184D2204), first token has a literal run.
        assert_ne!(&stored[..4], &[0x04, 0x22, 0x4D, 0x18]);
        assert_eq!(stored[0] >> 4, 15, "first sequence starts with a long literal run");
        let data = noise(65536);
        let (e, stored) = roundtrip(Compression::Lz4, &data);
        assert!(e.raw, "incompressible group is stored raw");
        assert_eq!(stored, data);
        roundtrip(Compression::Lz4, &[]);
        let (e, _) = roundtrip(Compression::Lz4, &vec![0u8; 262144]);
        assert!(!e.raw);
    }

    #[test]
    fn corrupt_lz4_block() {
        let data = text(65536);
        let (e, stored) = roundtrip(Compression::Lz4, &data);
        let mut dec = GroupDecoder::new().unwrap();
        let mut out = vec![0; data.len()];
        // Garbage from the middle on: undecodable or wrong content, never accepted.
        let mut bad = stored.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..] {
            *b = 0xFF;
        }
        assert!(dec.decode(Compression::Lz4, 1, &e, &bad, &mut out).is_err());
        // A hostile block: one literal, then a match whose offset (0xFFFF) points before the
        // start of the output. Must be an error, not a read outside the buffer.
        let hostile = [0x1F, b'x', 0xFF, 0xFF, 0xFF, 0x10];
        let he = GroupEntry { stored_len: hostile.len() as u32, raw: false, crc32: 0 };
        let err = dec.decode(Compression::Lz4, 2, &he, &hostile, &mut out).unwrap_err();
        assert!(matches!(err, BlobError::Decompress { group: 2, .. }), "{err}");
        // The same bytes read with the wrong codec never pass as data.
        assert!(dec.decode(Compression::Zstd, 1, &e, &stored, &mut out).is_err());
        assert!(dec.decode(Compression::None, 1, &e, &stored, &mut out).is_err());
    }

    #[test]
    fn codec_names() {
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            assert_eq!(Compression::from_name(c.name()), Some(c));
            assert_eq!(Compression::from_u8(c as u8), Some(c));
        }
        assert_eq!(Compression::from_name("gzip"), None);
        assert_eq!(Compression::from_u8(3), None);
    }

    fn record(groups: &[(u32, bool)], gs_log2: u8, usize_: u64) -> BlobRecord {
        BlobRecord {
            id: [0; 32],
            stored_size: groups.iter().map(|g| g.0 as u64).sum(),
            uncompressed_size: usize_,
            compression: Compression::Zstd,
            group_size_log2: gs_log2,
            groups: groups.iter().map(|&(l, raw)| GroupEntry { stored_len: l, raw, crc32: 0 }).collect(),
        }
    }

    #[test]
    fn group_map_ranges() {
        // 3 groups of 16 KiB, the last 8 KiB long.
        let rec = record(&[(100, false), (16384, true), (200, false)], 14, 40960);
        let m = GroupMap::new(&rec).unwrap();
        assert_eq!(m.group_count(), 3);
        assert_eq!(m.group_range(2), 32768..40960);
        assert_eq!(m.stored_range(1), 100..16484);
        let r = m.map(0, 1).unwrap();
        assert_eq!((r.first, r.last, r.stored.clone(), r.uncompressed.clone()), (0, 0, 0..100, 0..16384));
        let r = m.map(16383, 2).unwrap();
        assert_eq!((r.first, r.last, r.stored.clone()), (0, 1, 0..16484));
        let r = m.map(20000, 20960).unwrap();
        assert_eq!((r.first, r.last, r.stored.clone(), r.uncompressed.clone()), (1, 2, 100..16684, 16384..40960));
        assert!(matches!(m.map(40960, 1), Err(BlobError::OutOfRange { .. })));
        assert!(matches!(m.map(0, 0), Err(BlobError::OutOfRange { .. })));
        assert!(matches!(m.map(u64::MAX, 2), Err(BlobError::OutOfRange { .. })));
    }

    #[test]
    fn group_map_rejects_bad_tables() {
        // Wrong group count.
        assert!(GroupMap::new(&record(&[(100, false)], 14, 40960)).is_err());
        // Raw group of the wrong length.
        assert!(GroupMap::new(&record(&[(100, true)], 14, 16384)).is_err());
        // zstd group longer than the group.
        assert!(GroupMap::new(&record(&[(20000, false)], 14, 16384)).is_err());
        // Stored size disagreeing with the sum.
        let mut rec = record(&[(100, false)], 14, 16384);
        rec.stored_size = 99;
        assert!(GroupMap::new(&rec).is_err());
        // Group size out of range, unaligned size.
        assert!(GroupMap::new(&record(&[(100, false)], 11, 2048)).is_err());
        assert!(GroupMap::new(&record(&[(100, false)], 14, 1000)).is_err());
        // Empty blob: no groups, valid.
        assert_eq!(GroupMap::new(&record(&[], 14, 0)).unwrap().group_count(), 0);
    }
}
