//! The erofsd extension inside a bootstrap (docs/format.md): the 128-byte extension header at
//! byte 1152, and the blob table it points to (64-byte blob records, then each blob's group
//! table). The kernel never reads any of this; the daemon uses it to fetch, verify and
//! decompress blob ranges.
//!
//! Encoding is streaming (`encode_table` feeds a sink) so a writer never has to hold a large
//! group table twice; decoding validates everything docs/format.md lists.

use crate::blob::{BlobRecord, Compression, GroupEntry, GROUP_RAW_FLAG, MAX_GROUP_SIZE_LOG2, MIN_GROUP_SIZE_LOG2};
use crate::error::{corrupt, Error, Result};
use crate::ondisk::{le16, le32, le64, BLOCK_SIZE};

pub const EXT_HEADER_OFFSET: u64 = 1152;
pub const EXT_HEADER_SIZE: usize = 128;
pub const EXT_MAGIC: [u8; 8] = *b"ERFSDEXT";
pub const EXT_VERSION: u32 = 1;
pub const BLOB_RECORD_SIZE: usize = 64;
pub const GROUP_ENTRY_SIZE: usize = 8;

/// The extension header (128 bytes at byte 1152).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtHeader {
    pub version: u32,
    pub blob_count: u32,
    pub blob_table_offset: u64,
    pub blob_table_size: u64,
    pub blob_table_crc32: u32,
    pub flags: u32,
}

impl ExtHeader {
    pub fn encode(&self) -> [u8; EXT_HEADER_SIZE] {
        let mut b = [0u8; EXT_HEADER_SIZE];
        b[0..8].copy_from_slice(&EXT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.blob_count.to_le_bytes());
        b[16..24].copy_from_slice(&self.blob_table_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.blob_table_size.to_le_bytes());
        b[32..36].copy_from_slice(&self.blob_table_crc32.to_le_bytes());
        b[36..40].copy_from_slice(&self.flags.to_le_bytes());
        let crc = crc32fast::hash(&b[..124]);
        b[124..128].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// `Ok(None)` when the magic is absent (an image without the extension, e.g. from
    /// mkfs.erofs); an error when the magic is there but the header is damaged.
    pub fn decode(b: &[u8]) -> Result<Option<ExtHeader>> {
        if b.len() < EXT_HEADER_SIZE || b[0..8] != EXT_MAGIC {
            return Ok(None);
        }
        let crc = crc32fast::hash(&b[..124]);
        if crc != le32(b, 124) {
            return Err(corrupt!("erofsd extension header CRC mismatch"));
        }
        let h = ExtHeader {
            version: le32(b, 8),
            blob_count: le32(b, 12),
            blob_table_offset: le64(b, 16),
            blob_table_size: le64(b, 24),
            blob_table_crc32: le32(b, 32),
            flags: le32(b, 36),
        };
        if h.version != EXT_VERSION {
            return Err(Error::Unsupported(format!("erofsd extension version {}", h.version)));
        }
        if h.flags != 0 {
            return Err(Error::Unsupported(format!("erofsd extension flags {:#x}", h.flags)));
        }
        Ok(Some(h))
    }
}

/// Uncompressed length of group `i` of a blob.
pub fn group_len(uncompressed_size: u64, group_size_log2: u8, i: u64) -> u64 {
    let g = 1u64 << group_size_log2;
    let start = i * g;
    uncompressed_size.saturating_sub(start).min(g)
}

pub fn expected_group_count(uncompressed_size: u64, group_size_log2: u8) -> u64 {
    uncompressed_size.div_ceil(1u64 << group_size_log2)
}

/// Bytes of the whole table: records, then group tables (each 8-byte aligned, which they
/// are by construction: records are 64 bytes and group entries 8).
pub fn table_size(blobs: &[BlobRecord]) -> u64 {
    blobs.len() as u64 * BLOB_RECORD_SIZE as u64
        + blobs.iter().map(|b| b.groups.len() as u64 * GROUP_ENTRY_SIZE as u64).sum::<u64>()
}

/// Checks a blob record against the rules a reader applies, so the writer never emits a
/// table its own reader refuses. `what` names the blob in messages.
pub fn validate_record(b: &BlobRecord, what: &str) -> std::result::Result<(), String> {
    if !(MIN_GROUP_SIZE_LOG2..=MAX_GROUP_SIZE_LOG2).contains(&b.group_size_log2) {
        return Err(format!("{what}: group_size_log2 {} out of range", b.group_size_log2));
    }
    if !b.uncompressed_size.is_multiple_of(BLOCK_SIZE) {
        return Err(format!("{what}: uncompressed_size {} not a multiple of 4096", b.uncompressed_size));
    }
    if b.uncompressed_size / BLOCK_SIZE > u32::MAX as u64 {
        return Err(format!("{what}: uncompressed_size {} too large for a device", b.uncompressed_size));
    }
    let want = expected_group_count(b.uncompressed_size, b.group_size_log2);
    if b.groups.len() as u64 != want {
        return Err(format!("{what}: {} groups, expected {want}", b.groups.len()));
    }
    let mut sum = 0u64;
    for (i, g) in b.groups.iter().enumerate() {
        let len = group_len(b.uncompressed_size, b.group_size_log2, i as u64);
        if g.stored_len & GROUP_RAW_FLAG != 0 {
            return Err(format!("{what}: group {i} stored_len has bit 31 set"));
        }
        if g.raw {
            if g.stored_len as u64 != len {
                return Err(format!("{what}: raw group {i} stored_len {} != length {len}", g.stored_len));
            }
        } else {
            if b.compression == Compression::None {
                return Err(format!("{what}: group {i} compressed in an uncompressed blob"));
            }
            if g.stored_len == 0 || g.stored_len as u64 > len {
                return Err(format!("{what}: compressed group {i} stored_len {} invalid (length {len})", g.stored_len));
            }
        }
        sum += g.stored_len as u64;
    }
    if sum != b.stored_size {
        return Err(format!("{what}: group stored lengths sum to {sum}, stored_size is {}", b.stored_size));
    }
    Ok(())
}

fn encode_record(b: &BlobRecord, group_table_offset: u64) -> [u8; BLOB_RECORD_SIZE] {
    let mut r = [0u8; BLOB_RECORD_SIZE];
    r[0..32].copy_from_slice(&b.id);
    r[32..40].copy_from_slice(&b.stored_size.to_le_bytes());
    r[40..48].copy_from_slice(&b.uncompressed_size.to_le_bytes());
    r[48] = b.compression as u8;
    r[49] = b.group_size_log2;
    r[52..56].copy_from_slice(&(b.groups.len() as u32).to_le_bytes());
    r[56..64].copy_from_slice(&group_table_offset.to_le_bytes());
    r
}

pub fn encode_group(g: &GroupEntry) -> [u8; GROUP_ENTRY_SIZE] {
    let mut r = [0u8; GROUP_ENTRY_SIZE];
    let len = g.stored_len | if g.raw { GROUP_RAW_FLAG } else { 0 };
    r[0..4].copy_from_slice(&len.to_le_bytes());
    r[4..8].copy_from_slice(&g.crc32.to_le_bytes());
    r
}

pub fn decode_group(b: &[u8]) -> GroupEntry {
    let v = le32(b, 0);
    GroupEntry { stored_len: v & !GROUP_RAW_FLAG, raw: v & GROUP_RAW_FLAG != 0, crc32: le32(b, 4) }
}

/// Streams the table (placed at byte `table_offset` of the bootstrap) into `sink`, in chunks.
pub fn encode_table(blobs: &[BlobRecord], table_offset: u64, sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut gt_off = table_offset + blobs.len() as u64 * BLOB_RECORD_SIZE as u64;
    for b in blobs {
        sink(&encode_record(b, gt_off))?;
        gt_off += b.groups.len() as u64 * GROUP_ENTRY_SIZE as u64;
    }
    let mut buf = Vec::with_capacity(64 * 1024);
    for b in blobs {
        for g in &b.groups {
            buf.extend_from_slice(&encode_group(g));
            if buf.len() >= 64 * 1024 {
                sink(&buf)?;
                buf.clear();
            }
        }
    }
    if !buf.is_empty() {
        sink(&buf)?;
    }
    Ok(())
}

/// CRC32 of the encoded table, computed without materialising it.
pub fn table_crc(blobs: &[BlobRecord], table_offset: u64) -> u32 {
    let mut h = crc32fast::Hasher::new();
    encode_table(blobs, table_offset, &mut |b| {
        h.update(b);
        Ok(())
    })
    .expect("hashing cannot fail");
    h.finalize()
}

/// Reads and validates the blob table of `image` described by `h`. `extra_devices` is the
/// superblock's device count, which must match. Allocations are bounded by the image size
/// (every record and group entry is checked to lie inside it before it is read).
pub fn decode_table(image: &[u8], h: &ExtHeader, extra_devices: u16) -> Result<Vec<BlobRecord>> {
    if h.blob_count != extra_devices as u32 {
        return Err(corrupt!("erofsd blob_count {} != extra_devices {}", h.blob_count, extra_devices));
    }
    let start = h.blob_table_offset;
    let end = start
        .checked_add(h.blob_table_size)
        .filter(|&e| e <= image.len() as u64)
        .ok_or_else(|| corrupt!("erofsd blob table [{start}, +{}) outside the image", h.blob_table_size))?;
    let table = &image[start as usize..end as usize];
    if crc32fast::hash(table) != h.blob_table_crc32 {
        return Err(corrupt!("erofsd blob table CRC mismatch"));
    }
    let rec_bytes = h.blob_count as u64 * BLOB_RECORD_SIZE as u64;
    if rec_bytes > h.blob_table_size {
        return Err(corrupt!("erofsd blob table too small for {} records", h.blob_count));
    }
    let mut blobs = Vec::with_capacity(h.blob_count as usize);
    let mut group_bytes = 0u64;
    for i in 0..h.blob_count as usize {
        let r = &table[i * BLOB_RECORD_SIZE..(i + 1) * BLOB_RECORD_SIZE];
        let what = format!("blob record {i}");
        let compression = Compression::from_u8(r[48]).ok_or_else(|| corrupt!("{what}: unknown compression {}", r[48]))?;
        let group_size_log2 = r[49];
        if le16(r, 50) != 0 {
            return Err(corrupt!("{what}: reserved field not zero"));
        }
        let uncompressed_size = le64(r, 40);
        if !(MIN_GROUP_SIZE_LOG2..=MAX_GROUP_SIZE_LOG2).contains(&group_size_log2) {
            return Err(corrupt!("{what}: group_size_log2 {group_size_log2} out of range"));
        }
        let group_count = le32(r, 52) as u64;
        if group_count != expected_group_count(uncompressed_size, group_size_log2) {
            return Err(corrupt!("{what}: group_count {group_count} inconsistent with size {uncompressed_size}"));
        }
        let gt_off = le64(r, 56);
        let gt_len = group_count * GROUP_ENTRY_SIZE as u64;
        if !gt_off.is_multiple_of(8) || gt_off < start + rec_bytes || gt_off.checked_add(gt_len).is_none_or(|e| e > end) {
            return Err(corrupt!("{what}: group table at {gt_off} (+{gt_len}) outside the blob table"));
        }
        group_bytes += gt_len;
        let gt = &image[gt_off as usize..(gt_off + gt_len) as usize];
        let groups: Vec<GroupEntry> = gt.chunks_exact(GROUP_ENTRY_SIZE).map(decode_group).collect();
        let mut id = [0u8; 32];
        id.copy_from_slice(&r[0..32]);
        let rec = BlobRecord { id, stored_size: le64(r, 32), uncompressed_size, compression, group_size_log2, groups };
        validate_record(&rec, &what).map_err(Error::Corrupt)?;
        blobs.push(rec);
    }
    if rec_bytes + group_bytes != h.blob_table_size {
        return Err(corrupt!("erofsd blob table size {} != records + group tables {}", h.blob_table_size, rec_bytes + group_bytes));
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<BlobRecord> {
        vec![
            BlobRecord {
                id: [0x11; 32],
                stored_size: 4096 + 100,
                uncompressed_size: 4096 * 2,
                compression: Compression::Zstd,
                group_size_log2: 12,
                groups: vec![
                    GroupEntry { stored_len: 4096, raw: true, crc32: 0xAABBCCDD },
                    GroupEntry { stored_len: 100, raw: false, crc32: 0x01020304 },
                ],
            },
            BlobRecord {
                id: [0x22; 32],
                stored_size: 0,
                uncompressed_size: 0,
                compression: Compression::None,
                group_size_log2: 18,
                groups: vec![],
            },
        ]
    }

    #[test]
    fn header_bytes() {
        let h = ExtHeader { version: 1, blob_count: 2, blob_table_offset: 0x3000, blob_table_size: 144, blob_table_crc32: 0x12345678, flags: 0 };
        let b = h.encode();
        assert_eq!(&b[0..8], b"ERFSDEXT");
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[12..16], &[2, 0, 0, 0]);
        assert_eq!(&b[16..24], &[0, 0x30, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..32], &[144, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[32..36], &[0x78, 0x56, 0x34, 0x12]);
        assert!(b[36..124].iter().all(|&x| x == 0));
        assert_eq!(&b[124..], &crc32fast::hash(&b[..124]).to_le_bytes());
        assert_eq!(ExtHeader::decode(&b).unwrap(), Some(h));
        let mut bad = b;
        bad[20] ^= 1;
        assert!(ExtHeader::decode(&bad).is_err());
        assert_eq!(ExtHeader::decode(&[0u8; 128]).unwrap(), None);
    }

    #[test]
    fn table_round_trip() {
        let blobs = sample();
        let off = 0x2000u64;
        let mut bytes = Vec::new();
        encode_table(&blobs, off, &mut |b| {
            bytes.extend_from_slice(b);
            Ok(())
        })
        .unwrap();
        assert_eq!(bytes.len() as u64, table_size(&blobs));
        // Record 0 points at the group table right after both records.
        assert_eq!(&bytes[56..64], &(off + 128).to_le_bytes());
        assert_eq!(bytes[48], 1);
        assert_eq!(bytes[49], 12);
        assert_eq!(&bytes[52..56], &[2, 0, 0, 0]);
        // Group 0 is raw: bit 31 set.
        assert_eq!(&bytes[128..136], &[0x00, 0x10, 0x00, 0x80, 0xDD, 0xCC, 0xBB, 0xAA]);
        assert_eq!(&bytes[136..140], &[100, 0, 0, 0]);
        assert_eq!(table_crc(&blobs, off), crc32fast::hash(&bytes));

        let mut image = vec![0u8; off as usize];
        image.extend_from_slice(&bytes);
        let h = ExtHeader { version: 1, blob_count: 2, blob_table_offset: off, blob_table_size: bytes.len() as u64, blob_table_crc32: crc32fast::hash(&bytes), flags: 0 };
        assert_eq!(decode_table(&image, &h, 2).unwrap(), blobs);
        assert!(decode_table(&image, &h, 3).is_err());
        let mut bad = image.clone();
        bad[off as usize + 140] ^= 1;
        assert!(decode_table(&bad, &h, 2).is_err());
        let mut short = h.clone();
        short.blob_table_size += 8;
        assert!(decode_table(&image, &short, 2).is_err());
    }

    /// Compression byte 2 is an lz4 blob; any other unknown value is refused (with the table
    /// CRC made to match, so only the field check can catch it).
    #[test]
    fn compression_byte() {
        let off = 0x2000u64;
        let table = |blobs: &[BlobRecord], patch: Option<u8>| {
            let mut bytes = Vec::new();
            encode_table(blobs, off, &mut |b| {
                bytes.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            if let Some(v) = patch {
                bytes[48] = v;
            }
            let h = ExtHeader { version: 1, blob_count: 2, blob_table_offset: off, blob_table_size: bytes.len() as u64, blob_table_crc32: crc32fast::hash(&bytes), flags: 0 };
            let mut image = vec![0u8; off as usize];
            image.extend_from_slice(&bytes);
            (bytes[48], decode_table(&image, &h, 2))
        };
        let mut blobs = sample();
        blobs[0].compression = Compression::Lz4;
        let (byte, got) = table(&blobs, None);
        assert_eq!(byte, 2);
        assert_eq!(got.unwrap(), blobs);
        let (_, got) = table(&blobs, Some(3));
        let e = got.unwrap_err().to_string();
        assert!(e.contains("unknown compression 3"), "{e}");
    }

    #[test]
    fn validation() {
        let mut b = sample().remove(0);
        assert!(validate_record(&b, "b").is_ok());
        b.stored_size += 1;
        assert!(validate_record(&b, "b").is_err());
        b.stored_size -= 1;
        b.groups[0].stored_len = 4095;
        assert!(validate_record(&b, "b").is_err());
        b.groups[0].stored_len = 4096;
        b.groups[1].stored_len = 5000;
        b.stored_size = 9096;
        assert!(validate_record(&b, "b").is_err());
    }
}
