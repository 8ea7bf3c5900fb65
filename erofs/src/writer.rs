//! Lays a [`Tree`] out as an EROFS bootstrap (docs/format.md, "Bootstrap layout").
//!
//! Two passes. The first validates the tree and computes the whole layout — every inode's
//! byte offset (hence its nid), data layout, inline tail and data block address, the shared
//! xattr ids and the blob table placement — keeping only a few dozen bytes per node. The
//! second emits the bootstrap strictly in offset order through a buffered writer, so the
//! bootstrap is never held in memory whole; directory blocks are regenerated from the tree
//! when their turn comes.
//!
//! Byte map:
//! ```text
//! 0     zeros
//! 1024  superblock
//! 1152  erofsd extension header
//! 1280  device table (devt_slotoff = 10), one slot per blob
//! …     inodes (meta_blkaddr = 0, nid = offset / 32), root first; each followed by its inline
//!       xattrs and then its inline tail (FLAT_INLINE) or its 8-aligned chunk index array
//! 4K    data blocks of directories / slow symlinks / inline files whose tail did not fit
//! 4K    shared xattrs (xattr_blkaddr)
//! 4K    blob records + group tables
//! 4K    end
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Write};

use crate::blob::BlobRecord;
use crate::blobtable::{self, ExtHeader, EXT_HEADER_OFFSET, EXT_VERSION};
use crate::error::{invalid, Error, Result};
use crate::ondisk::*;
use crate::tree::{FileData, Kind, Node, NodeId, Tree, Xattr, S_IFMT};

/// Byte offset of the device table (`devt_slotoff = 10`).
pub const DEVICE_TABLE_OFFSET: u64 = 1280;
const DEVT_SLOTOFF: u16 = (DEVICE_TABLE_OFFSET / DEVICE_SLOT_SIZE as u64) as u16;
/// At most this many shared xattrs per inode (`h_shared_count` is a u8).
const MAX_SHARED_PER_INODE: usize = 255;
/// Largest inline xattr body `i_xattr_icount` (u16) can describe.
const MAX_XATTR_ISIZE: usize = XATTR_IBODY_HEADER_SIZE + 4 * (u16::MAX as usize - 1);

#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Superblock build time: mtime and ctime of every compact inode. Nodes whose mtime equals
    /// it get compact (32 B) inodes when their other fields fit; the rest get extended ones.
    pub build_time: u64,
    pub build_time_nsec: u32,
    pub uuid: [u8; 16],
    /// At most 15 bytes (the 16-byte field must keep a NUL).
    pub volume_name: Vec<u8>,
}

impl Default for WriteOptions {
    /// Build time 0 (the epoch: reproducible; every node with a real mtime gets an extended
    /// inode), nil uuid, empty volume name. Builders normally set `build_time` to the most
    /// common mtime or `SOURCE_DATE_EPOCH`.
    fn default() -> Self {
        WriteOptions { build_time: 0, build_time_nsec: 0, uuid: [0; 16], volume_name: Vec::new() }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Bootstrap size in bytes (a multiple of 4096).
    pub bytes: u64,
    /// Inodes written (nodes reachable from the root).
    pub inodes: u64,
    pub compact_inodes: u64,
    pub extended_inodes: u64,
    pub root_nid: u64,
    /// Distinct xattrs stored once in the shared area.
    pub shared_xattrs: u64,
    /// Bytes of 4 KiB data blocks in the bootstrap (directories, slow symlinks, inline files).
    pub data_block_bytes: u64,
    pub blob_table_offset: u64,
    pub blob_table_size: u64,
}

/// Per-node layout decided in the first pass.
#[derive(Clone, Copy)]
struct Plan {
    node: u32,
    /// Parent directory (for `..`); the root is its own parent.
    parent: u32,
    off: u64,
    size: u64,
    ino: u32,
    nlink: u32,
    /// First data block in the bootstrap (flat layouts), 0 if none.
    blkaddr: u32,
    /// Data blocks in the bootstrap.
    data_blocks: u32,
    layout: u16,
    xattr_isize: u32,
    extended: bool,
    /// Bytes stored right after inode + xattrs (FLAT_INLINE tail).
    tail: u16,
}

impl Plan {
    fn inode_size(&self) -> u64 {
        if self.extended {
            EXTENDED_INODE_SIZE as u64
        } else {
            COMPACT_INODE_SIZE as u64
        }
    }
}

fn align(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// Writes `tree` (only the nodes reachable from the root) as a bootstrap whose device table
/// describes `blobs` (slot k = device k + 1 = `blobs[k]`).
pub fn write_bootstrap<W: Write>(tree: &Tree, blobs: &[BlobRecord], opts: &WriteOptions, out: W) -> Result<WriteStats> {
    let layout = Layout::compute(tree, blobs, opts)?;
    layout.emit(tree, blobs, opts, out)
}

/// Inode-area allocator: inodes are 32-byte aligned; an inode with an inline tail must sit
/// with its xattrs and tail inside one block (the kernel refuses tails crossing blocks).
/// When such an inode does not fit in the rest of the current block it starts a new block
/// and the skipped space is remembered as a gap that later inodes may fill.
struct Alloc {
    cursor: u64,
    gaps: Vec<(u64, u64)>,
}

impl Alloc {
    fn place(&mut self, size: u64, one_block: bool) -> u64 {
        while let Some(&(start, end)) = self.gaps.last() {
            if end - start >= size {
                let next = align(start + size, INODE_SLOT_SIZE);
                if end.saturating_sub(next) < INODE_SLOT_SIZE * 2 {
                    self.gaps.pop();
                } else {
                    self.gaps.last_mut().unwrap().0 = next;
                }
                return start;
            }
            if end - start < 256 {
                self.gaps.pop();
                continue;
            }
            break;
        }
        if one_block && self.cursor % BLOCK_SIZE + size > BLOCK_SIZE {
            let next = align(self.cursor, BLOCK_SIZE);
            if next - self.cursor >= 256 {
                self.gaps.push((self.cursor, next));
            }
            self.cursor = next;
        }
        let start = self.cursor;
        self.cursor = align(start + size, INODE_SLOT_SIZE);
        start
    }
}

/// The complete first-pass result.
struct Layout {
    plans: Vec<Plan>,
    /// NodeId → index into `plans` (u32::MAX: not reachable).
    index: Vec<u32>,
    /// Shared xattrs in id order, with their ids (offset / 4 from xattr_blkaddr).
    shared: Vec<(Xattr, u32)>,
    shared_ids: HashMap<Xattr, u32>,
    xattr_blkaddr: u32,
    data_start: u64,
    shared_start: u64,
    table_offset: u64,
    table_size: u64,
    total: u64,
    any_chunked: bool,
}

/// Directory entries including `.` and `..`, in EROFS (unsigned bytewise) order.
fn dir_entries(children: &BTreeMap<Vec<u8>, NodeId>, me: NodeId, parent: NodeId) -> Vec<(&[u8], NodeId)> {
    let mut v: Vec<(&[u8], NodeId)> = Vec::with_capacity(children.len() + 2);
    let dots: [(&[u8], NodeId); 2] = [(b".", me), (b"..", parent)];
    let mut d = 0;
    for (name, &id) in children {
        while d < 2 && name.as_slice() > dots[d].0 {
            v.push(dots[d]);
            d += 1;
        }
        v.push((name.as_slice(), id));
    }
    v.extend_from_slice(&dots[d..]);
    v
}

/// Splits sorted entries into 4 KiB dirent blocks: `(first, end, used bytes)` per block.
fn dir_blocks(entries: &[(&[u8], NodeId)]) -> Vec<(usize, usize, usize)> {
    let mut blocks = Vec::new();
    let (mut first, mut used) = (0usize, 0usize);
    for (i, (name, _)) in entries.iter().enumerate() {
        let need = DIRENT_SIZE + name.len();
        if used + need > BLOCK_SIZE as usize {
            blocks.push((first, i, used));
            first = i;
            used = 0;
        }
        used += need;
    }
    blocks.push((first, entries.len(), used));
    blocks
}

fn file_type(kind: &Kind) -> u8 {
    match kind {
        Kind::Dir { .. } => FT_DIR,
        Kind::File { .. } => FT_REG_FILE,
        Kind::Symlink { .. } => FT_SYMLINK,
        Kind::CharDev { .. } => FT_CHRDEV,
        Kind::BlockDev { .. } => FT_BLKDEV,
        Kind::Fifo => FT_FIFO,
        Kind::Socket => FT_SOCK,
    }
}

/// Splits a node's xattrs into (shared ids, inline entries) the same way in both passes.
fn split_xattrs<'a>(node: &'a Node, shared_ids: &HashMap<Xattr, u32>) -> (Vec<u32>, Vec<&'a Xattr>) {
    let mut ids = Vec::new();
    let mut inline = Vec::new();
    for x in &node.xattrs {
        match shared_ids.get(x) {
            Some(&id) if ids.len() < MAX_SHARED_PER_INODE => ids.push(id),
            _ => inline.push(x),
        }
    }
    (ids, inline)
}

fn xattr_body_size(shared: usize, inline: &[&Xattr]) -> usize {
    if shared == 0 && inline.is_empty() {
        return 0;
    }
    XATTR_IBODY_HEADER_SIZE
        + 4 * shared
        + inline
            .iter()
            .map(|x| {
                let (_, suffix) = split_xattr_name(&x.name).expect("validated");
                xattr_entry_size(suffix.len(), x.value.len())
            })
            .sum::<usize>()
}

fn path_hint(tree: &Tree, id: NodeId) -> String {
    // Names are not stored on nodes; the node number is the best cheap identification.
    let _ = tree;
    format!("node {}", id.0)
}

fn validate_node(tree: &Tree, id: NodeId, blobs: &[BlobRecord]) -> Result<()> {
    let node = tree.node(id);
    let what = || path_hint(tree, id);
    if node.meta.mode & !0o177777 != 0 {
        return Err(invalid!("{}: mode {:#o} has bits beyond 16", what(), node.meta.mode));
    }
    if node.meta.mode & S_IFMT != node.kind.type_bits() {
        return Err(invalid!("{}: mode {:#o} type bits do not match its kind", what(), node.meta.mode));
    }
    if node.meta.mtime_nsec >= 1_000_000_000 {
        return Err(invalid!("{}: mtime_nsec {} out of range", what(), node.meta.mtime_nsec));
    }
    // Xattrs: every name must map to a prefix index; no duplicates; sizes must fit.
    for x in &node.xattrs {
        let (_, suffix) = split_xattr_name(&x.name).ok_or_else(|| {
            invalid!("{}: xattr name {:?} has no EROFS prefix (user., trusted., security., lustre., system.posix_acl_access/default)", what(), String::from_utf8_lossy(&x.name))
        })?;
        if suffix.len() > NAME_LEN_MAX {
            return Err(invalid!("{}: xattr name {:?} too long", what(), String::from_utf8_lossy(&x.name)));
        }
        if x.value.len() > u16::MAX as usize {
            return Err(invalid!("{}: xattr {:?} value of {} bytes exceeds 65535", what(), String::from_utf8_lossy(&x.name), x.value.len()));
        }
    }
    if node.xattrs.len() > 1 {
        let mut names: Vec<&[u8]> = node.xattrs.iter().map(|x| x.name.as_slice()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(invalid!("{}: duplicate xattr {:?}", what(), String::from_utf8_lossy(w[0])));
        }
    }
    match &node.kind {
        Kind::Dir { children } => {
            for (name, &child) in children {
                if name.is_empty() || name.len() > NAME_LEN_MAX {
                    return Err(invalid!("{}: entry name of length {} (must be 1..=255)", what(), name.len()));
                }
                if name.contains(&b'/') || name.contains(&0) {
                    return Err(invalid!("{}: entry name {:?} contains '/' or NUL", what(), String::from_utf8_lossy(name)));
                }
                if name.as_slice() == b"." || name.as_slice() == b".." {
                    return Err(invalid!("{}: entry named {:?} (the writer adds . and ..)", what(), String::from_utf8_lossy(name)));
                }
                if child.0 as usize >= tree.nodes.len() {
                    return Err(invalid!("{}: entry {:?} refers to missing node {}", what(), String::from_utf8_lossy(name), child.0));
                }
            }
        }
        Kind::File { size, data } => match data {
            FileData::Inline(bytes) => {
                if bytes.len() as u64 != *size {
                    return Err(invalid!("{}: inline data of {} bytes for size {}", what(), bytes.len(), size));
                }
            }
            FileData::Chunks { chunk_bits, chunks } => {
                if !(BLKSZBITS..=BLKSZBITS + 31).contains(chunk_bits) {
                    return Err(invalid!("{}: chunk_bits {} out of range 12..=43", what(), chunk_bits));
                }
                let csize = 1u64 << chunk_bits;
                let want = size.div_ceil(csize);
                if chunks.len() as u64 != want {
                    return Err(invalid!("{}: {} chunks for size {} with {}-byte chunks (need {})", what(), chunks.len(), size, csize, want));
                }
                for (i, c) in chunks.iter().enumerate() {
                    if c.is_hole() {
                        continue;
                    }
                    if c.device == 0 || c.device as usize > blobs.len() {
                        return Err(invalid!("{}: chunk {} on device {} but there are {} blobs", what(), i, c.device, blobs.len()));
                    }
                    let len = csize.min(size - i as u64 * csize);
                    let end = c.blkaddr as u64 * BLOCK_SIZE + align(len, BLOCK_SIZE);
                    let dev_size = blobs[c.device as usize - 1].uncompressed_size;
                    if end > dev_size {
                        return Err(invalid!("{}: chunk {} ends at byte {} beyond blob {} ({} bytes)", what(), i, end, c.device, dev_size));
                    }
                }
            }
        },
        Kind::Symlink { target } => {
            if target.is_empty() || target.len() >= BLOCK_SIZE as usize {
                return Err(invalid!("{}: symlink target of {} bytes (must be 1..4095)", what(), target.len()));
            }
            if target.contains(&0) {
                return Err(invalid!("{}: symlink target contains NUL", what()));
            }
        }
        Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
            if *major > 0xfff || *minor > 0xfffff {
                return Err(invalid!("{}: device number {}:{} does not fit in 32 bits", what(), major, minor));
            }
        }
        Kind::Fifo | Kind::Socket => {}
    }
    Ok(())
}

impl Layout {
    fn compute(tree: &Tree, blobs: &[BlobRecord], opts: &WriteOptions) -> Result<Layout> {
        if tree.nodes.is_empty() || !matches!(tree.node(Tree::ROOT).kind, Kind::Dir { .. }) {
            return Err(invalid!("the root (node 0) must be a directory"));
        }
        if opts.volume_name.len() > 15 {
            return Err(invalid!("volume name longer than 15 bytes"));
        }
        if blobs.len() > u16::MAX as usize {
            return Err(invalid!("{} blobs; at most 65535 devices", blobs.len()));
        }
        for (i, b) in blobs.iter().enumerate() {
            blobtable::validate_record(b, &format!("blob {i}")).map_err(Error::InvalidTree)?;
        }

        // BFS from the root: placement order, parents, link counts.
        let n = tree.nodes.len();
        let mut index = vec![u32::MAX; n];
        let mut links = vec![0u32; n];
        let mut order: Vec<(u32, u32)> = vec![(0, 0)]; // (node, parent)
        index[0] = 0;
        let mut head = 0;
        while head < order.len() {
            let (id, _) = order[head];
            head += 1;
            validate_node(tree, NodeId(id), blobs)?;
            if let Kind::Dir { children } = &tree.node(NodeId(id)).kind {
                for (name, &child) in children {
                    let c = child.0 as usize;
                    let child_is_dir = matches!(tree.node(child).kind, Kind::Dir { .. });
                    if child_is_dir && (index[c] != u32::MAX) {
                        return Err(invalid!(
                            "directory node {} is linked more than once (at {:?} in node {}); directories cannot be hard links",
                            child.0,
                            String::from_utf8_lossy(name),
                            id
                        ));
                    }
                    links[c] += 1;
                    if index[c] == u32::MAX {
                        index[c] = order.len() as u32;
                        order.push((child.0, id));
                    }
                }
            }
        }
        if order.len() as u64 > u32::MAX as u64 - 1 {
            return Err(invalid!("too many inodes"));
        }

        // Shared xattrs: an identical name+value on two or more inodes is stored once.
        let mut counts: HashMap<&Xattr, u32> = HashMap::new();
        for &(id, _) in &order {
            for x in &tree.node(NodeId(id)).xattrs {
                *counts.entry(x).or_insert(0) += 1;
            }
        }
        let mut shared = Vec::new();
        let mut shared_ids = HashMap::new();
        let mut shared_bytes = 0u64;
        for &(id, _) in &order {
            for x in &tree.node(NodeId(id)).xattrs {
                if counts[x] >= 2 && !shared_ids.contains_key(x) {
                    let (_, suffix) = split_xattr_name(&x.name).expect("validated");
                    let xid = u32::try_from(shared_bytes / 4).map_err(|_| invalid!("shared xattr area too large"))?;
                    shared_ids.insert(x.clone(), xid);
                    shared.push((x.clone(), xid));
                    shared_bytes += xattr_entry_size(suffix.len(), x.value.len()) as u64;
                }
            }
        }
        drop(counts);

        // Inode sizes, layouts and placement.
        let header_end = DEVICE_TABLE_OFFSET + blobs.len() as u64 * DEVICE_SLOT_SIZE as u64;
        let mut alloc = Alloc { cursor: align(header_end, INODE_SLOT_SIZE), gaps: Vec::new() };
        let mut plans = Vec::with_capacity(order.len());
        let mut any_chunked = false;
        for (seq, &(id, parent)) in order.iter().enumerate() {
            let node = tree.node(NodeId(id));
            let (nids, inline) = split_xattrs(node, &shared_ids);
            let xattr_isize = xattr_body_size(nids.len(), &inline);
            if xattr_isize > MAX_XATTR_ISIZE {
                return Err(invalid!("node {id}: {xattr_isize} bytes of inline xattrs (max {MAX_XATTR_ISIZE})"));
            }
            let nlink = match &node.kind {
                Kind::Dir { children } => {
                    2 + children.values().filter(|c| matches!(tree.node(**c).kind, Kind::Dir { .. })).count() as u64
                }
                _ => links[id as usize].max(1) as u64,
            };
            let nlink = u32::try_from(nlink).map_err(|_| invalid!("node {id}: link count {nlink} too large"))?;
            let size = match &node.kind {
                Kind::Dir { children } => {
                    let entries = dir_entries(children, NodeId(id), NodeId(parent));
                    let blocks = dir_blocks(&entries);
                    (blocks.len() as u64 - 1) * BLOCK_SIZE + blocks.last().unwrap().2 as u64
                }
                Kind::File { size, .. } => *size,
                Kind::Symlink { target } => target.len() as u64,
                _ => 0,
            };
            let m = &node.meta;
            let extended = m.uid > 0xFFFF
                || m.gid > 0xFFFF
                || nlink > 0xFFFF
                || size > u32::MAX as u64
                || m.mtime as u64 != opts.build_time
                || m.mtime_nsec != opts.build_time_nsec;
            let isize = if extended { EXTENDED_INODE_SIZE } else { COMPACT_INODE_SIZE } as u64;
            let head = isize + xattr_isize as u64;
            let mut plan = Plan {
                node: id,
                parent,
                off: 0,
                size,
                ino: seq as u32 + 1,
                nlink,
                blkaddr: 0,
                data_blocks: 0,
                layout: LAYOUT_FLAT_PLAIN,
                xattr_isize: xattr_isize as u32,
                extended,
                tail: 0,
            };
            // Flat data (directories, symlinks, inline files): tail inline when it fits.
            let flat = matches!(&node.kind, Kind::Dir { .. } | Kind::Symlink { .. } | Kind::File { data: FileData::Inline(_), .. });
            let item = if flat {
                let tail = size % BLOCK_SIZE;
                let full = size / BLOCK_SIZE;
                if tail != 0 && head + tail <= BLOCK_SIZE {
                    plan.layout = LAYOUT_FLAT_INLINE;
                    plan.tail = tail as u16;
                    plan.data_blocks = u32::try_from(full).map_err(|_| invalid!("node {id}: too large"))?;
                } else {
                    plan.data_blocks = u32::try_from(size.div_ceil(BLOCK_SIZE)).map_err(|_| invalid!("node {id}: too large"))?;
                }
                head + plan.tail as u64
            } else if let Kind::File { data: FileData::Chunks { chunks, .. }, size } = &node.kind {
                if *size == 0 {
                    head
                } else {
                    plan.layout = LAYOUT_CHUNK_BASED;
                    any_chunked = true;
                    align(head, CHUNK_INDEX_SIZE as u64) + chunks.len() as u64 * CHUNK_INDEX_SIZE as u64
                }
            } else {
                head
            };
            plan.off = alloc.place(item, plan.tail != 0);
            plans.push(plan);
        }
        let root_nid = plans[0].off / INODE_SLOT_SIZE;
        if root_nid > u16::MAX as u64 {
            return Err(invalid!("root nid {root_nid} does not fit in 16 bits (too many blobs?)"));
        }

        // Data blocks, in placement order.
        let data_start = align(alloc.cursor, BLOCK_SIZE);
        let mut blk = data_start / BLOCK_SIZE;
        for p in plans.iter_mut() {
            if p.data_blocks > 0 {
                p.blkaddr = u32::try_from(blk).map_err(|_| invalid!("bootstrap larger than 16 TiB"))?;
                blk += p.data_blocks as u64;
            }
        }
        let shared_start = blk * BLOCK_SIZE;
        let xattr_blkaddr = if shared.is_empty() { 0 } else { u32::try_from(blk).map_err(|_| invalid!("bootstrap too large"))? };
        let table_offset = align(shared_start + shared_bytes, BLOCK_SIZE);
        let table_size = blobtable::table_size(blobs);
        let total = align(table_offset + table_size, BLOCK_SIZE);
        if total / BLOCK_SIZE > u32::MAX as u64 {
            return Err(invalid!("bootstrap larger than 16 TiB"));
        }
        Ok(Layout { plans, index, shared, shared_ids, xattr_blkaddr, data_start, shared_start, table_offset, table_size, total, any_chunked })
    }

    fn nid_of(&self, id: NodeId) -> u64 {
        self.plans[self.index[id.0 as usize] as usize].off / INODE_SLOT_SIZE
    }

    fn emit<W: Write>(&self, tree: &Tree, blobs: &[BlobRecord], opts: &WriteOptions, out: W) -> Result<WriteStats> {
        let mut o = Out { w: BufWriter::with_capacity(256 * 1024, out), pos: 0 };
        let mut stats = WriteStats {
            bytes: self.total,
            inodes: self.plans.len() as u64,
            root_nid: self.plans[0].off / INODE_SLOT_SIZE,
            shared_xattrs: self.shared.len() as u64,
            blob_table_offset: self.table_offset,
            blob_table_size: self.table_size,
            ..Default::default()
        };

        // Block 0: superblock, extension header, device table.
        let mut incompat = 0;
        if self.any_chunked {
            incompat |= FEATURE_INCOMPAT_CHUNKED_FILE;
        }
        if !blobs.is_empty() {
            incompat |= FEATURE_INCOMPAT_DEVICE_TABLE;
        }
        let mut volume_name = [0u8; 16];
        volume_name[..opts.volume_name.len()].copy_from_slice(&opts.volume_name);
        let sb = SuperBlock {
            magic: EROFS_MAGIC,
            feature_compat: FEATURE_COMPAT_MTIME,
            blkszbits: BLKSZBITS,
            root_nid: stats.root_nid as u16,
            inos: self.plans.len() as u64,
            build_time: opts.build_time,
            build_time_nsec: opts.build_time_nsec,
            blocks: (self.total / BLOCK_SIZE) as u32,
            meta_blkaddr: 0,
            xattr_blkaddr: self.xattr_blkaddr,
            uuid: opts.uuid,
            volume_name,
            feature_incompat: incompat,
            extra_devices: blobs.len() as u16,
            devt_slotoff: DEVT_SLOTOFF,
            ..Default::default()
        };
        o.pad_to(SUPERBLOCK_OFFSET)?;
        o.write(&sb.encode())?;
        let ext = ExtHeader {
            version: EXT_VERSION,
            blob_count: blobs.len() as u32,
            blob_table_offset: self.table_offset,
            blob_table_size: self.table_size,
            blob_table_crc32: blobtable::table_crc(blobs, self.table_offset),
            flags: 0,
        };
        o.pad_to(EXT_HEADER_OFFSET)?;
        o.write(&ext.encode())?;
        o.pad_to(DEVICE_TABLE_OFFSET)?;
        for b in blobs {
            let mut tag = [0u8; 64];
            tag.copy_from_slice(b.id_hex().as_bytes());
            let slot = DeviceSlot { tag, blocks: (b.uncompressed_size / BLOCK_SIZE) as u32, mapped_blkaddr: 0 };
            o.write(&slot.encode())?;
        }

        // Inodes in offset order.
        let mut by_off: Vec<u32> = (0..self.plans.len() as u32).collect();
        by_off.sort_unstable_by_key(|&i| self.plans[i as usize].off);
        let mut buf = Vec::with_capacity(8192);
        for &pi in &by_off {
            let p = &self.plans[pi as usize];
            let node = tree.node(NodeId(p.node));
            buf.clear();
            self.encode_inode(tree, p, node, opts, &mut buf, &mut stats);
            o.pad_to(p.off)?;
            o.write(&buf)?;
            if let (LAYOUT_CHUNK_BASED, Kind::File { data: FileData::Chunks { chunks, .. }, .. }) = (p.layout, &node.kind) {
                let idx_start = align(p.off + buf.len() as u64, CHUNK_INDEX_SIZE as u64);
                o.pad_to(idx_start)?;
                buf.clear();
                for c in chunks {
                    let ci = if c.is_hole() {
                        ChunkIndex { advise: 0, device_id: 0, blkaddr: NULL_ADDR }
                    } else {
                        ChunkIndex { advise: 0, device_id: c.device, blkaddr: c.blkaddr }
                    };
                    buf.extend_from_slice(&ci.encode());
                    if buf.len() >= 64 * 1024 {
                        o.write(&buf)?;
                        buf.clear();
                    }
                }
                o.write(&buf)?;
            }
        }

        // Data blocks.
        o.pad_to(self.data_start)?;
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        for p in &self.plans {
            if p.data_blocks == 0 {
                continue;
            }
            o.pad_to(p.blkaddr as u64 * BLOCK_SIZE)?;
            let node = tree.node(NodeId(p.node));
            match &node.kind {
                Kind::Dir { children } => {
                    let entries = dir_entries(children, NodeId(p.node), NodeId(p.parent));
                    for (b, &(first, end, used)) in dir_blocks(&entries).iter().enumerate() {
                        if b as u32 >= p.data_blocks {
                            break; // the last block is the inline tail
                        }
                        self.encode_dir_block(tree, &entries[first..end], &mut block);
                        debug_assert!(used <= block.len());
                        o.write(&block)?;
                    }
                }
                Kind::Symlink { target } => {
                    block.fill(0);
                    block[..target.len()].copy_from_slice(target);
                    o.write(&block)?;
                }
                Kind::File { data: FileData::Inline(bytes), .. } => {
                    let n = p.data_blocks as usize * BLOCK_SIZE as usize;
                    let n_data = n.min(bytes.len());
                    o.write(&bytes[..n_data])?;
                    o.pad_to(p.blkaddr as u64 * BLOCK_SIZE + n as u64)?;
                }
                _ => unreachable!("only flat nodes have data blocks"),
            }
            stats.data_block_bytes += p.data_blocks as u64 * BLOCK_SIZE;
        }

        // Shared xattrs.
        o.pad_to(self.shared_start)?;
        for (x, id) in &self.shared {
            debug_assert_eq!(o.pos, self.shared_start + *id as u64 * 4);
            buf.clear();
            encode_xattr_entry(x, &mut buf);
            o.write(&buf)?;
        }

        // Blob table.
        o.pad_to(self.table_offset)?;
        blobtable::encode_table(blobs, self.table_offset, &mut |b| o.write(b))?;
        o.pad_to(self.total)?;
        o.w.flush()?;
        Ok(stats)
    }

    fn encode_inode(&self, tree: &Tree, p: &Plan, node: &Node, opts: &WriteOptions, buf: &mut Vec<u8>, stats: &mut WriteStats) {
        let (shared, inline) = split_xattrs(node, &self.shared_ids);
        let icount = if p.xattr_isize == 0 { 0 } else { ((p.xattr_isize as usize - XATTR_IBODY_HEADER_SIZE) / 4 + 1) as u16 };
        let i_u = match &node.kind {
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => encode_dev(*major, *minor),
            Kind::File { data: FileData::Chunks { chunk_bits, .. }, .. } if p.layout == LAYOUT_CHUNK_BASED => {
                (CHUNK_FORMAT_INDEXES | (*chunk_bits - BLKSZBITS) as u16) as u32
            }
            _ => p.blkaddr,
        };
        let m = &node.meta;
        let di = DiskInode {
            format: DiskInode::format_for(p.layout, p.extended),
            xattr_icount: icount,
            mode: m.mode as u16,
            nlink: p.nlink,
            size: p.size,
            i_u,
            ino: p.ino,
            uid: m.uid,
            gid: m.gid,
            mtime: m.mtime as u64,
            mtime_nsec: m.mtime_nsec,
        };
        if p.extended {
            buf.extend_from_slice(&di.encode_extended());
            stats.extended_inodes += 1;
        } else {
            buf.extend_from_slice(&di.encode_compact());
            stats.compact_inodes += 1;
        }
        let _ = opts;
        if p.xattr_isize > 0 {
            let h = XattrIbodyHeader { name_filter: 0, shared_count: shared.len() as u8 };
            buf.extend_from_slice(&h.encode());
            for id in &shared {
                buf.extend_from_slice(&id.to_le_bytes());
            }
            for x in inline {
                encode_xattr_entry(x, buf);
            }
            debug_assert_eq!(buf.len() as u64, p.inode_size() + p.xattr_isize as u64);
        }
        if p.tail > 0 {
            let tail = p.tail as usize;
            match &node.kind {
                Kind::Dir { children } => {
                    let entries = dir_entries(children, NodeId(p.node), NodeId(p.parent));
                    let blocks = dir_blocks(&entries);
                    let &(first, end, used) = blocks.last().unwrap();
                    debug_assert_eq!(used, tail);
                    let mut block = vec![0u8; BLOCK_SIZE as usize];
                    self.encode_dir_block(tree, &entries[first..end], &mut block);
                    buf.extend_from_slice(&block[..tail]);
                }
                Kind::Symlink { target } => buf.extend_from_slice(target),
                Kind::File { data: FileData::Inline(bytes), .. } => buf.extend_from_slice(&bytes[bytes.len() - tail..]),
                _ => unreachable!("only flat nodes have tails"),
            }
        }
    }

    /// Fills `block` (4 KiB, zeroed first) with the dirents and names of `entries`.
    fn encode_dir_block(&self, tree: &Tree, entries: &[(&[u8], NodeId)], block: &mut [u8]) {
        block.fill(0);
        let mut nameoff = entries.len() * DIRENT_SIZE;
        for (i, (name, id)) in entries.iter().enumerate() {
            let de = Dirent { nid: self.nid_of(*id), nameoff: nameoff as u16, file_type: file_type(&tree.node(*id).kind) };
            block[i * DIRENT_SIZE..(i + 1) * DIRENT_SIZE].copy_from_slice(&de.encode());
            block[nameoff..nameoff + name.len()].copy_from_slice(name);
            nameoff += name.len();
        }
    }
}

fn encode_xattr_entry(x: &Xattr, buf: &mut Vec<u8>) {
    let (index, suffix) = split_xattr_name(&x.name).expect("validated");
    let h = XattrEntryHeader { name_len: suffix.len() as u8, name_index: index, value_size: x.value.len() as u16 };
    let start = buf.len();
    buf.extend_from_slice(&h.encode());
    buf.extend_from_slice(suffix);
    buf.extend_from_slice(&x.value);
    buf.resize(start + xattr_entry_size(suffix.len(), x.value.len()), 0);
}

/// A buffered writer that knows its position and pads forward with zeros.
struct Out<W: Write> {
    w: BufWriter<W>,
    pos: u64,
}

impl<W: Write> Out<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.w.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }
    fn pad_to(&mut self, off: u64) -> std::io::Result<()> {
        assert!(off >= self.pos, "writer layout bug: offset {off} behind position {}", self.pos);
        static ZEROS: [u8; 4096] = [0; 4096];
        while self.pos < off {
            let n = (off - self.pos).min(ZEROS.len() as u64) as usize;
            self.write(&ZEROS[..n])?;
        }
        Ok(())
    }
}
