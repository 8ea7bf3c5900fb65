//! Raw EROFS on-disk structures, byte-exact, with encode and decode.
//!
//! Offsets and rules: `docs/protocols/erofs-format.md` (checked against the kernel's
//! `fs/erofs/erofs_fs.h`). This module only converts between bytes and structs; deciding
//! whether decoded values make sense is the reader's job, choosing them is the writer's.
//! All integers are little-endian.

/// Block size used by every image we write (and the only one we read): 4 KiB.
pub const BLKSZBITS: u8 = 12;
pub const BLOCK_SIZE: u64 = 1 << BLKSZBITS;

pub const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
/// The superblock lives at this byte offset of block 0.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
pub const SUPERBLOCK_SIZE: usize = 128;
/// Inode slots are 32 bytes: `inode offset = meta_blkaddr * 4096 + nid * 32`.
pub const INODE_SLOT_SIZE: u64 = 32;
pub const COMPACT_INODE_SIZE: usize = 32;
pub const EXTENDED_INODE_SIZE: usize = 64;
pub const DEVICE_SLOT_SIZE: usize = 128;
pub const DIRENT_SIZE: usize = 12;
pub const XATTR_IBODY_HEADER_SIZE: usize = 12;
pub const XATTR_ENTRY_HEADER_SIZE: usize = 4;
pub const CHUNK_INDEX_SIZE: usize = 8;
pub const BLOCK_MAP_ENTRY_SIZE: usize = 4;
/// Longest name in a directory (and longest xattr name suffix).
pub const NAME_LEN_MAX: usize = 255;
/// The "null address": a hole in a chunk or block map.
pub const NULL_ADDR: u32 = u32::MAX;

// Compatible features: the kernel ignores unknown ones.
pub const FEATURE_COMPAT_SB_CHKSUM: u32 = 0x1;
pub const FEATURE_COMPAT_MTIME: u32 = 0x2;
pub const FEATURE_COMPAT_XATTR_FILTER: u32 = 0x4;

// Incompatible features: the kernel refuses to mount with an unknown one.
pub const FEATURE_INCOMPAT_ZERO_PADDING: u32 = 0x01;
pub const FEATURE_INCOMPAT_COMPR_CFGS: u32 = 0x02;
pub const FEATURE_INCOMPAT_CHUNKED_FILE: u32 = 0x04;
pub const FEATURE_INCOMPAT_DEVICE_TABLE: u32 = 0x08;
pub const FEATURE_INCOMPAT_ZTAILPACKING: u32 = 0x10;
pub const FEATURE_INCOMPAT_FRAGMENTS: u32 = 0x20;
pub const FEATURE_INCOMPAT_XATTR_PREFIXES: u32 = 0x40;
/// Everything a 6.12 kernel knows; the reader refuses other bits like the kernel does.
pub const FEATURE_INCOMPAT_KNOWN: u32 = 0x7F;

// Data layouts (i_format bits 1..3).
pub const LAYOUT_FLAT_PLAIN: u16 = 0;
pub const LAYOUT_COMPRESSED_FULL: u16 = 1;
pub const LAYOUT_FLAT_INLINE: u16 = 2;
pub const LAYOUT_COMPRESSED_COMPACT: u16 = 3;
pub const LAYOUT_CHUNK_BASED: u16 = 4;

/// Chunk format bits (in `i_u` of a CHUNK_BASED inode).
pub const CHUNK_FORMAT_BLKBITS_MASK: u16 = 0x1F;
pub const CHUNK_FORMAT_INDEXES: u16 = 0x20;

// Directory entry file types.
pub const FT_UNKNOWN: u8 = 0;
pub const FT_REG_FILE: u8 = 1;
pub const FT_DIR: u8 = 2;
pub const FT_CHRDEV: u8 = 3;
pub const FT_BLKDEV: u8 = 4;
pub const FT_FIFO: u8 = 5;
pub const FT_SOCK: u8 = 6;
pub const FT_SYMLINK: u8 = 7;

#[inline]
pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
#[inline]
pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}
#[inline]
pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}
#[inline]
fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
#[inline]
fn put32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
#[inline]
fn put64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// `struct erofs_super_block` (128 bytes at byte 1024).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SuperBlock {
    pub magic: u32,
    pub checksum: u32,
    pub feature_compat: u32,
    pub blkszbits: u8,
    pub sb_extslots: u8,
    pub root_nid: u16,
    pub inos: u64,
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub blocks: u32,
    pub meta_blkaddr: u32,
    pub xattr_blkaddr: u32,
    pub uuid: [u8; 16],
    pub volume_name: [u8; 16],
    pub feature_incompat: u32,
    /// available_compr_algs / lz4_max_distance.
    pub u1: u16,
    pub extra_devices: u16,
    pub devt_slotoff: u16,
    pub dirblkbits: u8,
    pub xattr_prefix_count: u8,
    pub xattr_prefix_start: u32,
    pub packed_nid: u64,
    pub xattr_filter_reserved: u8,
}

impl SuperBlock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        put32(&mut b, 0, self.magic);
        put32(&mut b, 4, self.checksum);
        put32(&mut b, 8, self.feature_compat);
        b[12] = self.blkszbits;
        b[13] = self.sb_extslots;
        put16(&mut b, 14, self.root_nid);
        put64(&mut b, 16, self.inos);
        put64(&mut b, 24, self.build_time);
        put32(&mut b, 32, self.build_time_nsec);
        put32(&mut b, 36, self.blocks);
        put32(&mut b, 40, self.meta_blkaddr);
        put32(&mut b, 44, self.xattr_blkaddr);
        b[48..64].copy_from_slice(&self.uuid);
        b[64..80].copy_from_slice(&self.volume_name);
        put32(&mut b, 80, self.feature_incompat);
        put16(&mut b, 84, self.u1);
        put16(&mut b, 86, self.extra_devices);
        put16(&mut b, 88, self.devt_slotoff);
        b[90] = self.dirblkbits;
        b[91] = self.xattr_prefix_count;
        put32(&mut b, 92, self.xattr_prefix_start);
        put64(&mut b, 96, self.packed_nid);
        b[104] = self.xattr_filter_reserved;
        b
    }

    /// Decodes the first 128 bytes of `b` (which must hold at least that many).
    pub fn decode(b: &[u8]) -> SuperBlock {
        let b = &b[..SUPERBLOCK_SIZE];
        SuperBlock {
            magic: le32(b, 0),
            checksum: le32(b, 4),
            feature_compat: le32(b, 8),
            blkszbits: b[12],
            sb_extslots: b[13],
            root_nid: le16(b, 14),
            inos: le64(b, 16),
            build_time: le64(b, 24),
            build_time_nsec: le32(b, 32),
            blocks: le32(b, 36),
            meta_blkaddr: le32(b, 40),
            xattr_blkaddr: le32(b, 44),
            uuid: b[48..64].try_into().unwrap(),
            volume_name: b[64..80].try_into().unwrap(),
            feature_incompat: le32(b, 80),
            u1: le16(b, 84),
            extra_devices: le16(b, 86),
            devt_slotoff: le16(b, 88),
            dirblkbits: b[90],
            xattr_prefix_count: b[91],
            xattr_prefix_start: le32(b, 92),
            packed_nid: le64(b, 96),
            xattr_filter_reserved: b[104],
        }
    }
}

/// A compact (32 B) or extended (64 B) inode, in one struct. Fields a compact inode lacks
/// (`mtime`, `mtime_nsec`) are ignored when encoding one and zero when decoding one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskInode {
    /// Bit 0 = extended, bits 1..3 = data layout.
    pub format: u16,
    pub xattr_icount: u16,
    pub mode: u16,
    pub nlink: u32,
    pub size: u64,
    /// raw_blkaddr / rdev / compressed_blocks / chunk format (le16) + reserved (le16).
    pub i_u: u32,
    pub ino: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
}

impl DiskInode {
    pub fn format_for(layout: u16, extended: bool) -> u16 {
        (layout << 1) | extended as u16
    }
    pub fn is_extended(&self) -> bool {
        self.format & 1 != 0
    }
    pub fn layout(&self) -> u16 {
        (self.format >> 1) & 0x7
    }
    pub fn disk_size(&self) -> usize {
        if self.is_extended() {
            EXTENDED_INODE_SIZE
        } else {
            COMPACT_INODE_SIZE
        }
    }

    /// `struct erofs_inode_compact`. The caller guarantees the values fit (nlink, uid, gid
    /// ≤ 65535, size < 4 GiB).
    pub fn encode_compact(&self) -> [u8; COMPACT_INODE_SIZE] {
        let mut b = [0u8; COMPACT_INODE_SIZE];
        put16(&mut b, 0, self.format);
        put16(&mut b, 2, self.xattr_icount);
        put16(&mut b, 4, self.mode);
        put16(&mut b, 6, self.nlink as u16);
        put32(&mut b, 8, self.size as u32);
        // 12: i_reserved (6.15+: mtime offset from build_time) stays 0.
        put32(&mut b, 16, self.i_u);
        put32(&mut b, 20, self.ino);
        put16(&mut b, 24, self.uid as u16);
        put16(&mut b, 26, self.gid as u16);
        b
    }

    /// `struct erofs_inode_extended`.
    pub fn encode_extended(&self) -> [u8; EXTENDED_INODE_SIZE] {
        let mut b = [0u8; EXTENDED_INODE_SIZE];
        put16(&mut b, 0, self.format);
        put16(&mut b, 2, self.xattr_icount);
        put16(&mut b, 4, self.mode);
        put64(&mut b, 8, self.size);
        put32(&mut b, 16, self.i_u);
        put32(&mut b, 20, self.ino);
        put32(&mut b, 24, self.uid);
        put32(&mut b, 28, self.gid);
        put64(&mut b, 32, self.mtime);
        put32(&mut b, 40, self.mtime_nsec);
        put32(&mut b, 44, self.nlink);
        b
    }

    /// Decodes an inode whose first byte is at `b[0]`; `b` must hold at least
    /// [`DiskInode::disk_size`] bytes (32 for a compact one, 64 for an extended one).
    /// Returns `None` if `b` is too short.
    pub fn decode(b: &[u8]) -> Option<DiskInode> {
        if b.len() < 2 {
            return None;
        }
        let format = le16(b, 0);
        if format & 1 == 0 {
            if b.len() < COMPACT_INODE_SIZE {
                return None;
            }
            Some(DiskInode {
                format,
                xattr_icount: le16(b, 2),
                mode: le16(b, 4),
                nlink: le16(b, 6) as u32,
                size: le32(b, 8) as u64,
                i_u: le32(b, 16),
                ino: le32(b, 20),
                uid: le16(b, 24) as u32,
                gid: le16(b, 26) as u32,
                mtime: 0,
                mtime_nsec: 0,
            })
        } else {
            if b.len() < EXTENDED_INODE_SIZE {
                return None;
            }
            Some(DiskInode {
                format,
                xattr_icount: le16(b, 2),
                mode: le16(b, 4),
                size: le64(b, 8),
                i_u: le32(b, 16),
                ino: le32(b, 20),
                uid: le32(b, 24),
                gid: le32(b, 28),
                mtime: le64(b, 32),
                mtime_nsec: le32(b, 40),
                nlink: le32(b, 44),
            })
        }
    }
}

/// Bytes of inline xattrs (header + shared ids + entries) for `i_xattr_icount`.
pub fn xattr_ibody_size(icount: u16) -> usize {
    if icount == 0 {
        0
    } else {
        XATTR_IBODY_HEADER_SIZE + 4 * (icount as usize - 1)
    }
}

/// `struct erofs_inode_chunk_index` (8 bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkIndex {
    pub advise: u16,
    pub device_id: u16,
    pub blkaddr: u32,
}

impl ChunkIndex {
    pub fn encode(&self) -> [u8; CHUNK_INDEX_SIZE] {
        let mut b = [0u8; 8];
        put16(&mut b, 0, self.advise);
        put16(&mut b, 2, self.device_id);
        put32(&mut b, 4, self.blkaddr);
        b
    }
    pub fn decode(b: &[u8]) -> ChunkIndex {
        ChunkIndex { advise: le16(b, 0), device_id: le16(b, 2), blkaddr: le32(b, 4) }
    }
}

/// `struct erofs_deviceslot` (128 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceSlot {
    pub tag: [u8; 64],
    pub blocks: u32,
    pub mapped_blkaddr: u32,
}

impl DeviceSlot {
    pub fn encode(&self) -> [u8; DEVICE_SLOT_SIZE] {
        let mut b = [0u8; DEVICE_SLOT_SIZE];
        b[..64].copy_from_slice(&self.tag);
        put32(&mut b, 64, self.blocks);
        put32(&mut b, 68, self.mapped_blkaddr);
        b
    }
    pub fn decode(b: &[u8]) -> DeviceSlot {
        DeviceSlot { tag: b[..64].try_into().unwrap(), blocks: le32(b, 64), mapped_blkaddr: le32(b, 68) }
    }
    /// The tag up to its first NUL (all 64 bytes if there is none).
    pub fn tag_bytes(&self) -> &[u8] {
        let n = self.tag.iter().position(|&c| c == 0).unwrap_or(64);
        &self.tag[..n]
    }
}

/// `struct erofs_dirent` (12 bytes; the name is elsewhere in the block).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dirent {
    pub nid: u64,
    pub nameoff: u16,
    pub file_type: u8,
}

impl Dirent {
    pub fn encode(&self) -> [u8; DIRENT_SIZE] {
        let mut b = [0u8; DIRENT_SIZE];
        put64(&mut b, 0, self.nid);
        put16(&mut b, 8, self.nameoff);
        b[10] = self.file_type;
        b
    }
    pub fn decode(b: &[u8]) -> Dirent {
        Dirent { nid: le64(b, 0), nameoff: le16(b, 8), file_type: b[10] }
    }
}

/// `struct erofs_xattr_ibody_header` (12 bytes), followed on disk by `shared_count` le32 ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrIbodyHeader {
    pub name_filter: u32,
    pub shared_count: u8,
}

impl XattrIbodyHeader {
    pub fn encode(&self) -> [u8; XATTR_IBODY_HEADER_SIZE] {
        let mut b = [0u8; XATTR_IBODY_HEADER_SIZE];
        put32(&mut b, 0, self.name_filter);
        b[4] = self.shared_count;
        b
    }
    pub fn decode(b: &[u8]) -> XattrIbodyHeader {
        XattrIbodyHeader { name_filter: le32(b, 0), shared_count: b[4] }
    }
}

/// `struct erofs_xattr_entry` header (4 bytes), followed by the name suffix and the value;
/// the whole entry is padded to 4 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XattrEntryHeader {
    pub name_len: u8,
    pub name_index: u8,
    pub value_size: u16,
}

impl XattrEntryHeader {
    pub fn encode(&self) -> [u8; XATTR_ENTRY_HEADER_SIZE] {
        let mut b = [0u8; 4];
        b[0] = self.name_len;
        b[1] = self.name_index;
        put16(&mut b, 2, self.value_size);
        b
    }
    pub fn decode(b: &[u8]) -> XattrEntryHeader {
        XattrEntryHeader { name_len: b[0], name_index: b[1], value_size: le16(b, 2) }
    }
    /// Size of the whole entry on disk, padded to 4 bytes.
    pub fn entry_size(&self) -> usize {
        xattr_entry_size(self.name_len as usize, self.value_size as usize)
    }
}

pub fn xattr_entry_size(suffix_len: usize, value_len: usize) -> usize {
    (XATTR_ENTRY_HEADER_SIZE + suffix_len + value_len + 3) & !3
}

/// Bit 7 of `e_name_index`: a long (6.4+) prefix from the prefix table.
pub const XATTR_LONG_PREFIX_FLAG: u8 = 0x80;

/// The built-in xattr name prefixes, by `e_name_index`.
pub const XATTR_PREFIXES: [(u8, &[u8]); 6] = [
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (5, b"lustre."),
    (6, b"security."),
];

pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    XATTR_PREFIXES.iter().find(|(i, _)| *i == index).map(|(_, p)| *p)
}

/// Splits a full xattr name into (`e_name_index`, suffix). The two POSIX ACL names match
/// only exactly (empty suffix); the other prefixes need a non-empty suffix.
pub fn split_xattr_name(name: &[u8]) -> Option<(u8, &[u8])> {
    for &(index, prefix) in &XATTR_PREFIXES {
        if index == 2 || index == 3 {
            if name == prefix {
                return Some((index, &[]));
            }
        } else if name.len() > prefix.len() && name.starts_with(prefix) {
            return Some((index, &name[prefix.len()..]));
        }
    }
    None
}

/// Linux `new_encode_dev`: the 32-bit device number EROFS keeps in `i_u`.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

/// Linux `new_decode_dev`: (major, minor).
pub fn decode_dev(dev: u32) -> (u32, u32) {
    ((dev & 0xfff00) >> 8, (dev & 0xff) | ((dev >> 12) & 0xfff00))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_bytes() {
        let sb = SuperBlock {
            magic: EROFS_MAGIC,
            feature_compat: FEATURE_COMPAT_MTIME,
            blkszbits: 12,
            root_nid: 0x0102,
            inos: 0x1122334455667788,
            build_time: 0x0102030405060708,
            build_time_nsec: 0x0A0B0C0D,
            blocks: 7,
            meta_blkaddr: 0,
            xattr_blkaddr: 0x55,
            uuid: [0xAB; 16],
            volume_name: *b"vol\0\0\0\0\0\0\0\0\0\0\0\0\0",
            feature_incompat: 0xC,
            extra_devices: 3,
            devt_slotoff: 10,
            ..Default::default()
        };
        let b = sb.encode();
        assert_eq!(&b[0..4], &[0xE2, 0xE1, 0xF5, 0xE0]);
        assert_eq!(&b[8..12], &[2, 0, 0, 0]);
        assert_eq!(b[12], 12);
        assert_eq!(b[13], 0);
        assert_eq!(&b[14..16], &[0x02, 0x01]);
        assert_eq!(&b[16..24], &[0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[24..32], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[32..36], &[0x0D, 0x0C, 0x0B, 0x0A]);
        assert_eq!(&b[36..40], &[7, 0, 0, 0]);
        assert_eq!(&b[44..48], &[0x55, 0, 0, 0]);
        assert_eq!(&b[48..64], &[0xAB; 16]);
        assert_eq!(&b[64..67], b"vol");
        assert_eq!(&b[80..84], &[0xC, 0, 0, 0]);
        assert_eq!(&b[86..88], &[3, 0]);
        assert_eq!(&b[88..90], &[10, 0]);
        assert!(b[90..].iter().all(|&x| x == 0));
        assert_eq!(SuperBlock::decode(&b), sb);
    }

    #[test]
    fn compact_inode_bytes() {
        let ino = DiskInode {
            format: DiskInode::format_for(LAYOUT_FLAT_INLINE, false),
            xattr_icount: 5,
            mode: 0o040755,
            nlink: 3,
            size: 0x1234,
            i_u: 0xDEADBEEF,
            ino: 42,
            uid: 1000,
            gid: 0xFFFF,
            ..Default::default()
        };
        let b = ino.encode_compact();
        #[rustfmt::skip]
        let want: [u8; 32] = [
            0x04, 0x00, 0x05, 0x00, 0xED, 0x41, 0x03, 0x00, 0x34, 0x12, 0, 0, 0, 0, 0, 0,
            0xEF, 0xBE, 0xAD, 0xDE, 42, 0, 0, 0, 0xE8, 0x03, 0xFF, 0xFF, 0, 0, 0, 0,
        ];
        assert_eq!(b, want);
        assert_eq!(DiskInode::decode(&b).unwrap(), ino);
        assert_eq!(ino.layout(), LAYOUT_FLAT_INLINE);
        assert_eq!(ino.disk_size(), 32);
    }

    #[test]
    fn extended_inode_bytes() {
        let ino = DiskInode {
            format: DiskInode::format_for(LAYOUT_CHUNK_BASED, true),
            xattr_icount: 0,
            mode: 0o100644,
            nlink: 70000,
            size: 0x1_0000_0001,
            i_u: 0x0000_0028,
            ino: 7,
            uid: 100000,
            gid: 2,
            mtime: 0x0000_0000_6000_0000,
            mtime_nsec: 999_999_999,
        };
        let b = ino.encode_extended();
        assert_eq!(&b[0..2], &[0x09, 0x00]);
        assert_eq!(&b[4..6], &[0xA4, 0x81]);
        assert_eq!(&b[6..8], &[0, 0]);
        assert_eq!(&b[8..16], &[1, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&b[16..20], &[0x28, 0, 0, 0]);
        assert_eq!(&b[20..24], &[7, 0, 0, 0]);
        assert_eq!(&b[24..28], &100000u32.to_le_bytes());
        assert_eq!(&b[28..32], &[2, 0, 0, 0]);
        assert_eq!(&b[32..40], &[0, 0, 0, 0x60, 0, 0, 0, 0]);
        assert_eq!(&b[40..44], &999_999_999u32.to_le_bytes());
        assert_eq!(&b[44..48], &70000u32.to_le_bytes());
        assert!(b[48..].iter().all(|&x| x == 0));
        assert_eq!(DiskInode::decode(&b).unwrap(), ino);
        assert!(DiskInode::decode(&b[..40]).is_none());
    }

    #[test]
    fn small_structs_bytes() {
        let ci = ChunkIndex { advise: 0x0102, device_id: 0x0304, blkaddr: 0x05060708 };
        assert_eq!(ci.encode(), [2, 1, 4, 3, 8, 7, 6, 5]);
        assert_eq!(ChunkIndex::decode(&ci.encode()), ci);

        let mut tag = [0u8; 64];
        tag[..3].copy_from_slice(b"abc");
        let ds = DeviceSlot { tag, blocks: 0x100, mapped_blkaddr: 2 };
        let b = ds.encode();
        assert_eq!(&b[..4], b"abc\0");
        assert_eq!(&b[64..72], &[0, 1, 0, 0, 2, 0, 0, 0]);
        assert_eq!(DeviceSlot::decode(&b), ds);
        assert_eq!(ds.tag_bytes(), b"abc");

        let de = Dirent { nid: 0x1_0000_0002, nameoff: 36, file_type: FT_DIR };
        assert_eq!(de.encode(), [2, 0, 0, 0, 1, 0, 0, 0, 36, 0, 2, 0]);
        assert_eq!(Dirent::decode(&de.encode()), de);

        let h = XattrIbodyHeader { name_filter: 0, shared_count: 2 };
        assert_eq!(h.encode(), [0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        let e = XattrEntryHeader { name_len: 3, name_index: 1, value_size: 0x102 };
        assert_eq!(e.encode(), [3, 1, 2, 1]);
        assert_eq!(e.entry_size(), (4 + 3 + 0x102 + 3) & !3);
        assert_eq!(xattr_ibody_size(0), 0);
        assert_eq!(xattr_ibody_size(1), 12);
        assert_eq!(xattr_ibody_size(3), 20);
    }

    #[test]
    fn xattr_prefixes() {
        assert_eq!(split_xattr_name(b"user.foo"), Some((1, &b"foo"[..])));
        assert_eq!(split_xattr_name(b"security.capability"), Some((6, &b"capability"[..])));
        assert_eq!(split_xattr_name(b"system.posix_acl_access"), Some((2, &b""[..])));
        assert_eq!(split_xattr_name(b"system.posix_acl_default"), Some((3, &b""[..])));
        assert_eq!(split_xattr_name(b"trusted.overlay.opaque"), Some((4, &b"overlay.opaque"[..])));
        assert_eq!(split_xattr_name(b"lustre.x"), Some((5, &b"x"[..])));
        assert_eq!(split_xattr_name(b"system.foo"), None);
        assert_eq!(split_xattr_name(b"system.posix_acl_accessX"), None);
        assert_eq!(split_xattr_name(b"user."), None);
    }

    #[test]
    fn device_numbers() {
        assert_eq!(encode_dev(5, 1), 0x501);
        assert_eq!(encode_dev(8, 0x123), 0x10_0823);
        assert_eq!(decode_dev(encode_dev(8, 0x12345)), (8, 0x12345));
        assert_eq!(decode_dev(encode_dev(0xfff, 0xfffff)), (0xfff, 0xfffff));
    }
}
