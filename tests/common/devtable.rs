//! An independent, minimal reading of an EROFS image's device table: which blob backs which
//! device id. Deliberately not our `erofs` crate, so a writer bug and a reader bug cannot
//! cancel out in the tests. Offsets: docs/protocols/erofs-format.md §2 and §4.

use std::io::Read;
use std::path::{Path, PathBuf};

const SB_OFF: usize = 1024;
const EROFS_MAGIC: u32 = 0xE0F5_E1E2;
const INCOMPAT_DEVICE_TABLE: u32 = 0x8;

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes(b[o..o + 2].try_into().unwrap())
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

#[derive(Debug, Clone)]
pub struct DeviceSlot {
    /// The tag, up to the first NUL (erofsd: the blob's sha256 hex; mkfs.erofs 1.5: empty).
    pub tag: String,
    pub blocks: u32,
    pub mapped_blkaddr: u32,
}

/// The device slots of `image`, in device-id order (slot 0 = device id 1).
pub fn device_slots(image: &Path) -> Vec<DeviceSlot> {
    let mut f = std::fs::File::open(image).unwrap_or_else(|e| panic!("open {}: {e}", image.display()));
    let mut head = vec![0u8; 2048];
    f.read_exact(&mut head).unwrap_or_else(|e| panic!("{}: shorter than a superblock: {e}", image.display()));
    let sb = &head[SB_OFF..SB_OFF + 128];
    assert_eq!(le32(sb, 0), EROFS_MAGIC, "{}: not an EROFS image", image.display());
    assert_eq!(sb[12], 12, "{}: block size is not 4096", image.display());
    if le32(sb, 80) & INCOMPAT_DEVICE_TABLE == 0 {
        return Vec::new();
    }
    let count = le16(sb, 86) as usize;
    let off = le16(sb, 88) as u64 * 128;
    let data = std::fs::read(image).unwrap();
    assert!(off as usize + count * 128 <= data.len(), "{}: device table past the end", image.display());
    (0..count)
        .map(|k| {
            let s = &data[off as usize + k * 128..][..128];
            let tag = &s[..64];
            let end = tag.iter().position(|&c| c == 0).unwrap_or(64);
            DeviceSlot {
                tag: String::from_utf8_lossy(&tag[..end]).into_owned(),
                blocks: le32(s, 64),
                mapped_blkaddr: le32(s, 68),
            }
        })
        .collect()
}

/// The `device=` files for an erofsd image: `dir/<tag>` for each slot, in order. Checks each
/// exists and is at least `blocks * 4096` bytes, the address space the kernel may read.
pub fn erofsd_devices(image: &Path, dir: &Path) -> Vec<PathBuf> {
    device_slots(image)
        .into_iter()
        .enumerate()
        .map(|(k, slot)| {
            assert_eq!(slot.tag.len(), 64, "device {} tag {:?} is not a sha256 hex id", k + 1, slot.tag);
            let p = dir.join(&slot.tag);
            let len = std::fs::metadata(&p).unwrap_or_else(|e| panic!("device {} file {}: {e}", k + 1, p.display())).len();
            assert!(
                len >= slot.blocks as u64 * 4096,
                "device {} file {} has {len} bytes, the table says {} blocks",
                k + 1,
                p.display(),
                slot.blocks
            );
            p
        })
        .collect()
}
