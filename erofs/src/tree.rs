//! The in-memory tree a bootstrap is written from.
//!
//! Builders (a directory walk, an OCI layer tar, a merge of several layers) fill a [`Tree`];
//! [`crate::writer`] lays it out as EROFS metadata. File *data* never lives here: a regular
//! file is either a few inline bytes (small files, stored in the bootstrap so reading them
//! costs no blob fetch) or a list of chunk addresses into blob devices.
//!
//! Nodes live in an arena and are referred to by [`NodeId`]. A hard link is simply a second
//! directory entry naming the same `NodeId`; the writer derives `i_nlink` from the number of
//! entries that reach a node, so builders never keep link counts themselves.

use std::collections::BTreeMap;

/// Index of a node in [`Tree::nodes`]. The root is always `NodeId(0)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u32);

/// A chunk's place in a blob device, as an EROFS 8-byte chunk index stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkAddr {
    /// 1-based device id (slot k of the device table is device k+1). Never 0 for blob data.
    pub device: u16,
    /// Block (4 KiB) number inside that device, or [`ChunkAddr::HOLE_BLKADDR`].
    pub blkaddr: u32,
}

impl ChunkAddr {
    /// The kernel's "null address": the chunk reads as zeros and costs no I/O.
    pub const HOLE_BLKADDR: u32 = u32::MAX;
    pub const HOLE: ChunkAddr = ChunkAddr { device: 0, blkaddr: Self::HOLE_BLKADDR };

    pub fn is_hole(&self) -> bool {
        self.blkaddr == Self::HOLE_BLKADDR
    }
}

/// Where a regular file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileData {
    /// The whole content, stored in the bootstrap right after the inode (FLAT_INLINE).
    /// Only for small files; the writer falls back to FLAT_PLAIN blocks in the bootstrap if
    /// the tail cannot be placed without crossing a block boundary.
    Inline(Vec<u8>),
    /// CHUNK_BASED layout: `chunks.len() == ceil(size / (1 << chunk_bits))`.
    Chunks { chunk_bits: u8, chunks: Vec<ChunkAddr> },
}

/// What a node is. The file-type bits of [`Meta::mode`] must agree with this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Children sorted by name bytes (BTreeMap order is the unsigned bytewise order EROFS
    /// requires). `.` and `..` are NOT stored here; the writer adds them.
    Dir { children: BTreeMap<Vec<u8>, NodeId> },
    File { size: u64, data: FileData },
    Symlink { target: Vec<u8> },
    /// Device numbers as (major, minor).
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
    Socket,
}

/// Ownership, permissions and times of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Full `st_mode`: file-type bits (S_IFMT) plus permission bits (07777).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    pub mtime_nsec: u32,
}

/// One extended attribute with its full name (`user.foo`, `security.capability`,
/// `system.posix_acl_access`, …).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub meta: Meta,
    pub xattrs: Vec<Xattr>,
    pub kind: Kind,
}

/// A whole filesystem tree. `nodes[0]` is the root directory.
#[derive(Clone, Debug)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

impl Kind {
    /// The S_IFMT bits matching this kind.
    pub fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir { .. } => S_IFDIR,
            Kind::File { .. } => S_IFREG,
            Kind::Symlink { .. } => S_IFLNK,
            Kind::CharDev { .. } => S_IFCHR,
            Kind::BlockDev { .. } => S_IFBLK,
            Kind::Fifo => S_IFIFO,
            Kind::Socket => S_IFSOCK,
        }
    }
}

impl Tree {
    /// A tree holding only a root directory with the given metadata.
    pub fn new(root_meta: Meta) -> Tree {
        let mut meta = root_meta;
        meta.mode = (meta.mode & !S_IFMT) | S_IFDIR;
        Tree { nodes: vec![Node { meta, xattrs: Vec::new(), kind: Kind::Dir { children: BTreeMap::new() } }] }
    }

    pub const ROOT: NodeId = NodeId(0);

    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id.0 as usize]
    }

    /// Adds a node to the arena (not yet linked into any directory).
    pub fn add(&mut self, node: Node) -> NodeId {
        let id = NodeId(u32::try_from(self.nodes.len()).expect("more than 4G nodes"));
        self.nodes.push(node);
        id
    }

    /// The children of a directory node, or `None` if it is not a directory.
    pub fn children(&self, id: NodeId) -> Option<&BTreeMap<Vec<u8>, NodeId>> {
        match &self.node(id).kind {
            Kind::Dir { children } => Some(children),
            _ => None,
        }
    }

    pub fn children_mut(&mut self, id: NodeId) -> Option<&mut BTreeMap<Vec<u8>, NodeId>> {
        match &mut self.node_mut(id).kind {
            Kind::Dir { children } => Some(children),
            _ => None,
        }
    }
}
