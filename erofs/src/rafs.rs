//! nydus RAFS v6 extensions (docs/format.md, "nydus RAFS v6 images"; layouts in
//! docs/protocols/nydus-compat.md Part A).
//!
//! A RAFS v6 bootstrap is an EROFS image whose device slots name nydus data blobs. What the
//! kernel reads through device k is the blob's *uncompressed* address space; the stored blob
//! holds compressed chunks plus, at `ci_offset`, the blob meta: a compressed chunk-information
//! (CI) table followed by a 4 KiB header. This module parses, bounds-checks and decodes those
//! structures; it holds no daemon logic. Every length read from a header is checked against
//! the blob before anything is allocated from it.

use std::ops::Range;

pub mod zran;
pub use zran::{ZranContext, ZranRef, ZranTable};

/// Compat bit nydus sets in the EROFS superblock of a RAFS v6 bootstrap.
pub const RAFS_V6_COMPAT: u32 = 0x4000_0000;
const SB_COMPAT_OFFSET: usize = 1024 + 8;
/// The RAFS ext superblock sits right after the 128-byte EROFS superblock.
const EXT_SB_OFFSET: usize = 1152;
const BLOB_ENTRY_SIZE: usize = 256;
/// Size of the blob meta header that follows the CI table.
pub const META_HEADER_SIZE: u64 = 4096;
const META_MAGIC: u32 = 0xB10B_B10B;
/// Largest chunk nydus writes (16 MiB): bounds every per-chunk allocation.
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;
/// Largest blob address space we serve (1 TiB): bounds the per-page state a daemon keeps.
pub const MAX_ADDRESS_SPACE: u64 = 1 << 40;
/// Largest CI table we accept (16 M entries × 24 B would be 384 MiB; real ones are KBs–MBs).
pub const MAX_CI_TABLE: u64 = 64 << 20;
/// Largest zran CI table (entries + inflate contexts + their 32 KiB windows). nydus makes a
/// context about every 0.5–1 MiB of gzip input, so this serves gzip layers up to ~2–4 GiB.
pub const MAX_ZRAN_META: u64 = 128 << 20;

// BlobFeatures bits (storage/src/device.rs).
pub const FEATURE_ALIGNED: u32 = 0x1;
pub const FEATURE_INLINED_FS_META: u32 = 0x2;
pub const FEATURE_CHUNK_INFO_V2: u32 = 0x4;
pub const FEATURE_ZRAN: u32 = 0x8;
pub const FEATURE_SEPARATE: u32 = 0x10;
pub const FEATURE_INLINED_CHUNK_DIGEST: u32 = 0x20;
pub const FEATURE_TARFS: u32 = 0x40;
pub const FEATURE_BATCH: u32 = 0x80;
pub const FEATURE_ENCRYPTED: u32 = 0x100;
pub const FEATURE_EXTERNAL: u32 = 0x800;
pub const FEATURE_HAS_TAR_HEADER: u32 = 0x1000_0000;
pub const FEATURE_HAS_TOC: u32 = 0x2000_0000;
pub const FEATURE_CAP_TAR_TOC: u32 = 0x4000_0000;

/// Why RAFS input was refused. `Unsupported` is a valid image using a feature we do not serve.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RafsError {
    #[error("corrupt RAFS metadata: {0}")]
    Corrupt(String),
    #[error("not supported yet: {0}")]
    Unsupported(String),
}

macro_rules! bad {
    ($($arg:tt)*) => { RafsError::Corrupt(format!($($arg)*)) };
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

/// How chunk data (or the CI table) is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compressor {
    None,
    Lz4Block,
    Gzip,
    Zstd,
}

impl Compressor {
    pub fn from_u32(v: u32) -> Result<Compressor, RafsError> {
        Ok(match v {
            0 => Compressor::None,
            1 => Compressor::Lz4Block,
            2 => Compressor::Gzip,
            3 => Compressor::Zstd,
            _ => return Err(bad!("unknown compression algorithm {v}")),
        })
    }
}

/// True if `boot` looks like a RAFS v6 bootstrap (the compat marker is set).
pub fn is_rafs_v6(boot: &[u8]) -> bool {
    boot.len() >= EXT_SB_OFFSET + 256 && u32_at(boot, SB_COMPAT_OFFSET) & RAFS_V6_COMPAT != 0
}

/// One entry of the bootstrap's blob table (`RafsV6Blob`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RafsBlob {
    /// 64 lowercase hex chars; the device tag and the blob's file name.
    pub id: String,
    pub index: u32,
    pub chunk_size: u32,
    pub chunk_count: u32,
    pub compressor: Compressor,
    pub digest_algo: u32,
    pub features: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub toc_size: u32,
    pub ci_compressor: Compressor,
    pub ci_offset: u64,
    pub ci_compressed_size: u64,
    pub ci_uncompressed_size: u64,
    /// ZRAN (SEPARATE) blobs: sha256 of the separate nydus blob holding the blob meta, which
    /// is also that blob's id.
    pub meta_digest: [u8; 32],
    /// ZRAN (SEPARATE) blobs: size of that meta blob.
    pub meta_size: u64,
}

impl RafsBlob {
    fn parse(e: &[u8], slot: usize) -> Result<RafsBlob, RafsError> {
        let id = std::str::from_utf8(&e[..64])
            .ok()
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)))
            .ok_or_else(|| bad!("blob table entry {slot}: blob id is not 64 lowercase hex chars"))?
            .to_string();
        let b = RafsBlob {
            id,
            index: u32_at(e, 64),
            chunk_size: u32_at(e, 68),
            chunk_count: u32_at(e, 72),
            compressor: Compressor::from_u32(u32_at(e, 76)).map_err(|e| bad!("blob table entry {slot}: {e}"))?,
            digest_algo: u32_at(e, 80),
            features: u32_at(e, 84),
            compressed_size: u64_at(e, 88),
            uncompressed_size: u64_at(e, 96),
            toc_size: u32_at(e, 104),
            ci_compressor: Compressor::from_u32(u32_at(e, 108)).map_err(|e| bad!("blob table entry {slot}: CI {e}"))?,
            ci_offset: u64_at(e, 112),
            ci_compressed_size: u64_at(e, 120),
            ci_uncompressed_size: u64_at(e, 128),
            meta_digest: e[168..200].try_into().expect("32 bytes"),
            meta_size: u64_at(e, 200),
        };
        b.validate(slot)?;
        Ok(b)
    }

    fn validate(&self, slot: usize) -> Result<(), RafsError> {
        let ctx = format!("blob table entry {slot} ({})", &self.id[..12]);
        if self.index as usize != slot {
            return Err(bad!("{ctx}: blob_index {} in slot {slot}", self.index));
        }
        if !self.chunk_size.is_power_of_two() || (self.chunk_size as u64) < 4096 || self.chunk_size as u64 > MAX_CHUNK_SIZE {
            return Err(bad!("{ctx}: chunk size {} is not a power of two in 4 KiB..16 MiB", self.chunk_size));
        }
        if self.uncompressed_size > MAX_ADDRESS_SPACE {
            // The daemon keeps a few bits per 4 KiB page of every blob it serves.
            return Err(RafsError::Unsupported(format!(
                "{ctx}: a {}-byte address space (over {MAX_ADDRESS_SPACE})",
                self.uncompressed_size
            )));
        }
        if !self.uncompressed_size.is_multiple_of(4096) {
            return Err(bad!("{ctx}: uncompressed size {} is not 4 KiB aligned", self.uncompressed_size));
        }
        let unsupported = [
            (FEATURE_BATCH, "batch chunks"),
            (FEATURE_ENCRYPTED, "encrypted blobs"),
            (FEATURE_TARFS, "tarfs blobs"),
            (FEATURE_EXTERNAL, "external blobs"),
        ];
        for (bit, what) in unsupported {
            if self.features & bit != 0 {
                return Err(RafsError::Unsupported(format!("{ctx}: {what}")));
            }
        }
        let zran = self.is_zran();
        if self.features & FEATURE_SEPARATE != 0 && !zran {
            return Err(RafsError::Unsupported(format!("{ctx}: separate blob meta without zran")));
        }
        if zran {
            // The data blob is an original gzip layer; its index lives in a separate meta blob.
            if self.features & FEATURE_SEPARATE == 0 {
                return Err(RafsError::Unsupported(format!("{ctx}: zran blob without a separate meta blob")));
            }
            if self.compressor != Compressor::Gzip || self.features & FEATURE_CHUNK_INFO_V2 == 0 {
                return Err(bad!("{ctx}: zran blob that is not gzip with v2 chunk infos"));
            }
            if self.meta_digest == [0u8; 32] {
                return Err(bad!("{ctx}: zran blob without a meta blob digest"));
            }
            if self.meta_size > MAX_ZRAN_META + (16 << 20) {
                return Err(bad!("{ctx}: meta blob of {} bytes over the limit", self.meta_size));
            }
        } else if self.compressor == Compressor::Gzip {
            return Err(RafsError::Unsupported(format!("{ctx}: gzip chunks outside a zran blob")));
        }
        let entry = self.ci_entry_size();
        let entries = self.chunk_count as u64 * entry;
        // A zran CI table carries the inflate contexts and their windows after the entries.
        if (!zran && self.ci_uncompressed_size != entries) || (zran && self.ci_uncompressed_size <= entries) {
            return Err(bad!(
                "{ctx}: CI table of {} bytes for {} chunks of {entry}-byte entries",
                self.ci_uncompressed_size,
                self.chunk_count
            ));
        }
        let limit = if zran { MAX_ZRAN_META } else { MAX_CI_TABLE };
        if self.ci_uncompressed_size > limit || self.ci_compressed_size > limit {
            return Err(bad!("{ctx}: CI table sizes {}/{} over the limit", self.ci_compressed_size, self.ci_uncompressed_size));
        }
        if self.ci_compressor == Compressor::None && self.ci_compressed_size != self.ci_uncompressed_size {
            return Err(bad!("{ctx}: uncompressed CI table with differing sizes"));
        }
        let meta_end = self
            .ci_offset
            .checked_add(self.ci_compressed_size)
            .and_then(|e| e.checked_add(META_HEADER_SIZE))
            .ok_or_else(|| bad!("{ctx}: CI offset overflows"))?;
        let container = if zran { self.meta_size } else { self.compressed_size };
        if meta_end > container {
            return Err(bad!("{ctx}: blob meta ends at {meta_end}, past the {container} bytes of the blob holding it"));
        }
        Ok(())
    }

    /// True for a nydus "zran" blob: an original gzip layer indexed by inflate contexts.
    pub fn is_zran(&self) -> bool {
        self.features & FEATURE_ZRAN != 0
    }

    /// The separate blob holding this blob's meta (zran blobs): its id and size.
    pub fn meta_blob(&self) -> Option<(String, u64)> {
        if !self.is_zran() {
            return None;
        }
        let id = self.meta_digest.iter().map(|b| format!("{b:02x}")).collect();
        Some((id, self.meta_size))
    }

    pub fn ci_entry_size(&self) -> u64 {
        if self.features & FEATURE_CHUNK_INFO_V2 != 0 {
            24
        } else {
            16
        }
    }

    /// Stored byte range of the blob meta: the compressed CI table and its 4 KiB header.
    pub fn meta_range(&self) -> Range<u64> {
        self.ci_offset..self.ci_offset + self.ci_compressed_size + META_HEADER_SIZE
    }

    /// Chunk data lies before the blob meta (and its tar header, when the blob has them).
    pub fn data_end(&self) -> u64 {
        if self.is_zran() {
            // The whole gzip layer: its meta lives elsewhere.
            return self.compressed_size;
        }
        let hdr = if self.features & FEATURE_HAS_TAR_HEADER != 0 { 512 } else { 0 };
        self.ci_offset.saturating_sub(hdr)
    }
}

/// Parses the ext superblock and blob table of a RAFS v6 bootstrap. `device_count` is the
/// number of EROFS device slots: nydus keeps one blob entry per slot.
pub fn parse_blob_table(boot: &[u8], device_count: usize) -> Result<Vec<RafsBlob>, RafsError> {
    if !is_rafs_v6(boot) {
        return Err(bad!("not a RAFS v6 bootstrap (compat bit missing)"));
    }
    let ext = &boot[EXT_SB_OFFSET..EXT_SB_OFFSET + 256];
    let flags = u64_at(ext, 0);
    if flags & 0x200 != 0 {
        return Err(RafsError::Unsupported("tarfs-mode bootstrap (512-byte blocks)".into()));
    }
    let off = u64_at(ext, 8);
    let size = u32_at(ext, 16) as u64;
    if !size.is_multiple_of(BLOB_ENTRY_SIZE as u64) {
        return Err(bad!("blob table size {size} is not a multiple of {BLOB_ENTRY_SIZE}"));
    }
    let end = off.checked_add(size).filter(|&e| e <= boot.len() as u64).ok_or_else(|| {
        bad!("blob table {off}+{size} lies outside the {}-byte bootstrap", boot.len())
    })?;
    if off < (EXT_SB_OFFSET + 256) as u64 {
        return Err(bad!("blob table offset {off} overlaps the superblocks"));
    }
    let count = (size / BLOB_ENTRY_SIZE as u64) as usize;
    if count != device_count {
        return Err(bad!("blob table has {count} entries for {device_count} device slots"));
    }
    boot[off as usize..end as usize].chunks_exact(BLOB_ENTRY_SIZE).enumerate().map(|(i, e)| RafsBlob::parse(e, i)).collect()
}

/// Checks the 4 KiB blob meta header against the blob table entry.
pub fn check_meta_header(blob: &RafsBlob, h: &[u8]) -> Result<(), RafsError> {
    let ctx = format!("blob {} meta header", &blob.id[..12]);
    if h.len() != META_HEADER_SIZE as usize {
        return Err(bad!("{ctx}: {} bytes, want {META_HEADER_SIZE}", h.len()));
    }
    if u32_at(h, 0) != META_MAGIC || u32_at(h, 4092) != META_MAGIC {
        return Err(bad!("{ctx}: bad magic"));
    }
    let fields = [
        ("features", u32_at(h, 4) as u64, blob.features as u64),
        ("ci_entries", u32_at(h, 12) as u64, blob.chunk_count as u64),
        ("ci_offset", u64_at(h, 16), blob.ci_offset),
        ("ci_compressed_size", u64_at(h, 24), blob.ci_compressed_size),
        ("ci_uncompressed_size", u64_at(h, 32), blob.ci_uncompressed_size),
    ];
    for (name, got, want) in fields {
        if got != want {
            return Err(bad!("{ctx}: {name} {got} but the blob table says {want}"));
        }
    }
    if Compressor::from_u32(u32_at(h, 8))? != blob.ci_compressor {
        return Err(bad!("{ctx}: CI compressor differs from the blob table"));
    }
    Ok(())
}

/// One chunk of the blob: where its bytes live in the address space and in the stored blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// `[offset, offset + size)` in the address space; offset 4 KiB aligned.
    pub uncompressed: Range<u64>,
    /// Stored bytes in the blob file.
    pub stored: Range<u64>,
    pub compressed: bool,
    /// CRC32C of the uncompressed bytes, when the entry carries one (v2 HAS_CRC32).
    pub crc32c: Option<u32>,
    /// zran blobs: where the chunk's bytes are in the output of one inflate context.
    pub zran: Option<ZranRef>,
    /// Digest of the uncompressed bytes, from the bootstrap's chunk table (blake3 by nydus's
    /// default, sha256 for zran images); see [`apply_chunk_digests`].
    pub digest: Option<ChunkDigest>,
}

/// A chunk's digest in the algorithm the image was built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkDigest {
    Sha256([u8; 32]),
    Blake3([u8; 32]),
}

impl ChunkDigest {
    pub fn algorithm(&self) -> &'static str {
        match self {
            ChunkDigest::Sha256(_) => "sha256",
            ChunkDigest::Blake3(_) => "blake3",
        }
    }

    pub fn bytes(&self) -> &[u8; 32] {
        match self {
            ChunkDigest::Sha256(d) | ChunkDigest::Blake3(d) => d,
        }
    }

    /// The digest of `data` in the same algorithm.
    pub fn of(&self, data: &[u8]) -> ChunkDigest {
        use sha2::Digest;
        match self {
            ChunkDigest::Sha256(_) => ChunkDigest::Sha256(sha2::Sha256::digest(data).into()),
            ChunkDigest::Blake3(_) => ChunkDigest::Blake3(*blake3::hash(data).as_bytes()),
        }
    }
}

impl Chunk {
    /// First stored byte a decode of this chunk needs: the chunk's own bytes, or for a zran
    /// chunk the start of its inflate context (decoding resumes there).
    pub fn fetch_start(&self) -> u64 {
        self.zran.map_or(self.stored.start, |z| z.input_start)
    }
}

/// Everything the blob meta says about a blob's chunks.
#[derive(Debug)]
pub struct BlobMeta {
    pub chunks: Vec<Chunk>,
    /// zran blobs only: the inflate contexts and windows chunks are decoded from.
    pub zran: Option<ZranTable>,
}

/// Parses a decoded blob meta table (`table`, `ci_uncompressed_size` bytes) with its 4 KiB
/// header (already checked by [`check_meta_header`]): the chunks and, for a zran blob, its
/// inflate contexts, each chunk checked against them.
pub fn parse_blob_meta(blob: &RafsBlob, header: &[u8], table: &[u8]) -> Result<BlobMeta, RafsError> {
    if !blob.is_zran() {
        return Ok(BlobMeta { chunks: parse_chunks(blob, table, None)?, zran: None });
    }
    let zt = ZranTable::parse(blob, header, table)?;
    let chunks = parse_chunks(blob, table, Some(&zt))?;
    Ok(BlobMeta { chunks, zran: Some(zt) })
}

/// Reads a blob meta from its stored bytes (`meta`: the [`RafsBlob::meta_range`] bytes of the
/// blob, or of its separate meta blob for zran): the compressed CI table, then the 4 KiB header,
/// which is checked ([`check_meta_header`]); the table is decoded and parsed
/// ([`parse_blob_meta`]).
pub fn read_blob_meta(blob: &RafsBlob, meta: &[u8]) -> Result<BlobMeta, RafsError> {
    let want = blob.ci_compressed_size + META_HEADER_SIZE;
    if meta.len() as u64 != want {
        return Err(bad!("blob {} meta: {} bytes, want {want}", &blob.id[..12], meta.len()));
    }
    let (ci, header) = meta.split_at(blob.ci_compressed_size as usize);
    check_meta_header(blob, header)?;
    let table = decode_ci_table(blob, ci)?;
    parse_blob_meta(blob, header, &table)
}

/// Decodes the CI table (already decompressed, `blob.ci_uncompressed_size` bytes) into chunks,
/// checking every chunk against the blob: inside its address space and data area, no overlap,
/// sizes within the chunk size, compressed chunks smaller than... well, bounded.
pub fn parse_chunk_infos(blob: &RafsBlob, table: &[u8]) -> Result<Vec<Chunk>, RafsError> {
    if blob.is_zran() {
        return Err(bad!("a zran blob's chunks need its inflate contexts (parse_blob_meta)"));
    }
    parse_chunks(blob, table, None)
}

fn parse_chunks(blob: &RafsBlob, table: &[u8], zran: Option<&ZranTable>) -> Result<Vec<Chunk>, RafsError> {
    let entry = blob.ci_entry_size() as usize;
    if table.len() as u64 != blob.ci_uncompressed_size {
        return Err(bad!("CI table is {} bytes, want {}", table.len(), blob.ci_uncompressed_size));
    }
    let entries = &table[..blob.chunk_count as usize * entry];
    let v2 = entry == 24;
    let data_end = blob.data_end();
    let mut out: Vec<Chunk> = Vec::with_capacity(blob.chunk_count as usize);
    for (i, e) in entries.chunks_exact(entry).enumerate() {
        let (u, c) = (u64_at(e, 0), u64_at(e, 8));
        let (uoff, usize_, coff, csize, compressed, crc, is_zran) = if v2 {
            let flags = (u >> 56) as u8;
            if flags & 0x0C != 0 {
                return Err(RafsError::Unsupported(format!("chunk {i}: batch/encrypted flags {flags:#x}")));
            }
            let crc = (flags & 0x10 != 0).then_some(u64_at(e, 16) as u32);
            let uoff = (u & 0xFFFF_FFFF) << 12;
            (uoff, ((u >> 32) & 0xFF_FFFF) + 1, c & 0xFF_FFFF_FFFF, c >> 40, flags & 0x01 != 0, crc, flags & 0x02 != 0)
        } else {
            let uoff = u & 0x0FFF_FFFF_F000;
            let usz = ((u >> 44) | (((u >> 8) & 0xF) << 20)) + 1;
            let coff = c & 0xFF_FFFF_FFFF;
            let csz = ((c >> 44) | (((c >> 40) & 0xF) << 20)) + 1;
            (uoff, usz, coff, csz, csz != usz, None, false)
        };
        let ctx = || format!("chunk {i} (uncompressed {uoff}+{usize_}, stored {coff}+{csize})");
        if !uoff.is_multiple_of(4096) {
            return Err(bad!("{}: offset not 4 KiB aligned", ctx()));
        }
        let zref = match (zran, is_zran) {
            (None, false) => None,
            (Some(zt), true) if compressed => Some(zt.resolve(i, u64_at(e, 16), coff..coff.saturating_add(csize), usize_)?),
            (None, true) => return Err(bad!("{}: zran chunk in a blob that is not zran", ctx())),
            (Some(_), _) => return Err(bad!("{}: chunk of a zran blob without the zran and compressed flags", ctx())),
        };
        // A zran chunk's stored bytes are the stretch of the gzip stream its output came from
        // (possibly none: inflate may have read them ahead); a gzip'd chunk can exceed its size.
        let size_ok = if zref.is_some() {
            usize_ <= blob.chunk_size as u64 && csize <= zran::MAX_CONTEXT_INPUT
        } else {
            usize_ <= blob.chunk_size as u64 && csize <= MAX_CHUNK_SIZE && csize != 0
        };
        if !size_ok {
            return Err(bad!("{}: size over the {}-byte chunk size", ctx(), blob.chunk_size));
        }
        if !compressed && csize != usize_ {
            return Err(bad!("{}: uncompressed chunk with differing sizes", ctx()));
        }
        if compressed && blob.compressor == Compressor::None {
            return Err(bad!("{}: compressed chunk in an uncompressed blob", ctx()));
        }
        if uoff + usize_ > blob.uncompressed_size {
            return Err(bad!("{}: past the {}-byte address space", ctx(), blob.uncompressed_size));
        }
        if coff + csize > data_end {
            return Err(bad!("{}: stored bytes past the data area ending at {data_end}", ctx()));
        }
        if let Some(prev) = out.last() {
            // The serving map needs chunks ascending in both spaces (nydus writes them so).
            if uoff < prev.uncompressed.end.next_multiple_of(4096) {
                return Err(bad!("{}: overlaps or precedes chunk {}", ctx(), i - 1));
            }
            if coff < prev.stored.end {
                return Err(RafsError::Unsupported(format!("{}: stored chunks out of order or shared", ctx())));
            }
            if let (Some(a), Some(b)) = (prev.zran, zref) {
                // Contexts are in stream order, so decoding a run of chunks never goes back.
                if b.context < a.context {
                    return Err(bad!("{}: inflate context {} after chunk {} used context {}", ctx(), b.context, i - 1, a.context));
                }
            }
        }
        out.push(Chunk { uncompressed: uoff..uoff + usize_, stored: coff..coff + csize, compressed, crc32c: crc, zran: zref, digest: None });
    }
    Ok(out)
}

/// Size of one bootstrap chunk table record (`RafsV5ChunkInfo`).
const CHUNK_RECORD_SIZE: u64 = 80;
/// Ext superblock flags (`RafsSuperFlags`): the digest algorithm of the bootstrap's chunk digests.
const FLAG_HASH_BLAKE3: u64 = 0x4;
const FLAG_HASH_SHA256: u64 = 0x8;
/// Blob table `digest_algo` (nydus `digest::Algorithm`).
const DIGEST_ALGO_BLAKE3: u32 = 0;
const DIGEST_ALGO_SHA256: u32 = 1;

/// The algorithm of `blob`'s chunk digests in the chunk table, as a constructor, or `None` when
/// the image does not say it unambiguously.
///
/// Two fields name it: the ext superblock flags (one algorithm for the bootstrap: nydus reads
/// its chunk table with it, e.g. when loading it as a chunk dict) and the blob's `digest_algo`
/// (what nydus's storage layer hashes that blob's chunks with). nydus-image sets both from one
/// setting, so in every image it builds they agree (all four fixtures do). They can disagree in
/// a RAFS v6 bootstrap stacked on a parent built with the other algorithm (nydus checks the
/// digester matches only for v5), where some records were hashed with each; or in a damaged
/// bootstrap. Guessing there would either fail good chunks (a wrong guess: EIO for a valid
/// image) or pick by a rule nydus itself does not apply, so a disagreement, both flags or
/// neither (nydus would then default to blake3) attach nothing: those chunks are served as
/// before, checked only by their decompression (and CRC32C if any). Trusting an unchecked
/// chunk costs nothing a hostile bootstrap could not already get by leaving out its chunk table.
fn digest_kind(flags: u64, blob: &RafsBlob) -> Option<fn([u8; 32]) -> ChunkDigest> {
    match (flags & (FLAG_HASH_BLAKE3 | FLAG_HASH_SHA256), blob.digest_algo) {
        (FLAG_HASH_BLAKE3, DIGEST_ALGO_BLAKE3) => Some(ChunkDigest::Blake3),
        (FLAG_HASH_SHA256, DIGEST_ALGO_SHA256) => Some(ChunkDigest::Sha256),
        _ => None,
    }
}

/// Attaches the digest of every chunk of `blob` that the bootstrap's chunk table lists (80-byte
/// records at the ext superblock's `chunk_table_offset`: digest, blob index, …, CI index), so
/// decoding can verify the bytes. The digests are blake3 or sha256 (nydus's default is blake3;
/// zran images use sha256), as the ext superblock flags and the blob's `digest_algo` both say
/// ([`digest_kind`]); if they do not agree, or without a table, nothing is attached. Returns
/// how many chunks got a digest.
pub fn apply_chunk_digests(boot: &[u8], blob: &RafsBlob, chunks: &mut [Chunk]) -> Result<usize, RafsError> {
    if !is_rafs_v6(boot) {
        return Err(bad!("not a RAFS v6 bootstrap (compat bit missing)"));
    }
    let ext = &boot[EXT_SB_OFFSET..EXT_SB_OFFSET + 256];
    let (flags, off, size) = (u64_at(ext, 0), u64_at(ext, 24), u64_at(ext, 32));
    let Some(kind) = digest_kind(flags, blob) else { return Ok(0) };
    if size == 0 {
        return Ok(0);
    }
    let end = off.checked_add(size).filter(|&e| e <= boot.len() as u64 && size.is_multiple_of(CHUNK_RECORD_SIZE));
    let Some(end) = end else {
        return Err(bad!("chunk table {off}+{size} is not whole 80-byte records inside the {}-byte bootstrap", boot.len()));
    };
    let mut n = 0;
    for r in boot[off as usize..end as usize].chunks_exact(CHUNK_RECORD_SIZE as usize) {
        if u32_at(r, 32) != blob.index {
            continue;
        }
        let ci = u32_at(r, 72) as usize;
        let digest = kind(r[..32].try_into().expect("32 bytes"));
        let c = chunks.get_mut(ci).ok_or_else(|| bad!("chunk table names chunk {ci} of blob {}, which has {}", blob.index, blob.chunk_count))?;
        // The record repeats the CI entry's offsets: a mismatch means the two tables disagree.
        if u64_at(r, 56) != c.uncompressed.start || u32_at(r, 44) as u64 != c.uncompressed.end - c.uncompressed.start {
            return Err(bad!("chunk table record for chunk {ci} disagrees with the blob meta on its offset or size"));
        }
        match c.digest {
            Some(d) if d != digest => return Err(bad!("chunk table lists chunk {ci} twice with different digests")),
            Some(_) => {}
            None => {
                c.digest = Some(digest);
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Checks `data` against a chunk's digests (CRC32C and its chunk-table digest, those it has).
pub fn verify_chunk(chunk: &Chunk, data: &[u8]) -> Result<(), String> {
    if let Some(want) = chunk.crc32c {
        let got = crc32c(data);
        if got != want {
            return Err(format!("CRC32C mismatch (table {want:#010x}, data {got:#010x})"));
        }
    }
    if let Some(want) = chunk.digest {
        let got = want.of(data);
        if got != want {
            let hex = |d: &[u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
            let (algo, want, got) = (want.algorithm(), hex(want.bytes()), hex(got.bytes()));
            return Err(format!("{algo} mismatch (chunk table {want}, data {got})"));
        }
    }
    Ok(())
}

/// Decompresses the CI table read from the blob (`stored` = the `ci_compressed_size` bytes).
pub fn decode_ci_table(blob: &RafsBlob, stored: &[u8]) -> Result<Vec<u8>, RafsError> {
    let mut out = vec![0u8; blob.ci_uncompressed_size as usize];
    if stored.len() as u64 != blob.ci_compressed_size {
        return Err(bad!("CI table: {} stored bytes, want {}", stored.len(), blob.ci_compressed_size));
    }
    decompress(blob.ci_compressor, stored, &mut out).map_err(|e| bad!("CI table: {e}"))?;
    Ok(out)
}

/// Decompresses `stored` into exactly `out.len()` bytes.
pub fn decompress(c: Compressor, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    let n = match c {
        Compressor::None => {
            if stored.len() != out.len() {
                return Err(format!("{} raw bytes for {}", stored.len(), out.len()));
            }
            out.copy_from_slice(stored);
            out.len()
        }
        Compressor::Zstd => zstd::bulk::decompress_to_buffer(stored, out).map_err(|e| format!("zstd: {e}"))?,
        Compressor::Lz4Block => lz4_flex::block::decompress_into(stored, out).map_err(|e| format!("lz4_block: {e}"))?,
        Compressor::Gzip => return Err("gzip chunks are not supported".into()),
    };
    if n != out.len() {
        return Err(format!("decoded to {n} bytes, want {}", out.len()));
    }
    Ok(())
}

/// Decodes one chunk's stored bytes into `out` (exactly the chunk's uncompressed length) and
/// checks its CRC32C and chunk-table digest when it has them.
pub fn decode_chunk(blob_compressor: Compressor, chunk: &Chunk, stored: &[u8], out: &mut [u8]) -> Result<(), String> {
    if stored.len() as u64 != chunk.stored.end - chunk.stored.start {
        return Err(format!("{} stored bytes, want {}", stored.len(), chunk.stored.end - chunk.stored.start));
    }
    let c = if chunk.compressed { blob_compressor } else { Compressor::None };
    decompress(c, stored, out)?;
    verify_chunk(chunk, out)
}

/// CRC-32C (Castagnoli) as nydus stores it (standard init and final inversion).
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, v) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
            }
            *v = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = t[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests;
