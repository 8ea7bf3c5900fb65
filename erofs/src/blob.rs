//! The erofsd blob format (docs/format.md, "Blobs").
//!
//! A blob has two faces:
//! * the **address space** the kernel reads through an EROFS device: uncompressed, chunk data
//!   4 KiB-aligned, `uncompressed_size` bytes (a multiple of 4096);
//! * the **stored form** kept in a registry or directory: the address space cut into
//!   fixed-size *groups*, each stored zstd-compressed (or raw when that is not smaller), back to
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
}

impl Compression {
    pub fn from_u8(v: u8) -> Option<Compression> {
        match v {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
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
