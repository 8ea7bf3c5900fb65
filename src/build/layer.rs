//! One source's tree plus what overlay semantics need to know about it: which nodes are
//! whiteouts, which directories are opaque, which directories only exist as implied parents,
//! and hard links whose target lies in a lower layer.
//!
//! Readers insert entries by path in archive order; [`Layer`] applies the replacement rules
//! (a later entry for a path replaces the earlier one; a directory over a directory keeps its
//! children and takes the new metadata; anything else drops what was there).

use std::collections::{BTreeMap, HashSet};

use anyhow::{bail, Result};
use erofs::tree::{Kind, Meta, Node, NodeId, Tree, S_IFCHR, S_IFDIR};

use super::names::show;

/// Metadata of directories nobody described (implied by a deeper entry): root-owned 0755.
pub const IMPLICIT_DIR_META: Meta = Meta { mode: S_IFDIR | 0o755, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0 };

/// A hard link whose target was not found in the same layer (only allowed when merging:
/// it is resolved against the layers below).
#[derive(Clone, Debug)]
pub struct PendingLink {
    pub parent: Vec<Vec<u8>>,
    pub name: Vec<u8>,
    pub target: Vec<Vec<u8>>,
}

pub struct Layer {
    pub tree: Tree,
    /// Whiteout markers (character devices 0/0 in the tree): "delete this name below".
    pub whiteouts: HashSet<NodeId>,
    /// Directories whose lower-layer contents are hidden.
    pub opaque: HashSet<NodeId>,
    /// Directories created only because a deeper entry needed them.
    pub implicit: HashSet<NodeId>,
    pub pending_links: Vec<PendingLink>,
    /// Content xattrs named `trusted.overlay.*` must be escaped when this layer becomes an
    /// overlayfs lower on its own (true for archive layers; a directory is copied literally).
    pub escape_overlay_xattrs: bool,
}

impl Layer {
    pub fn new() -> Layer {
        let mut implicit = HashSet::new();
        implicit.insert(Tree::ROOT);
        Layer {
            tree: Tree::new(IMPLICIT_DIR_META),
            whiteouts: HashSet::new(),
            opaque: HashSet::new(),
            implicit,
            pending_links: Vec::new(),
            escape_overlay_xattrs: true,
        }
    }

    /// Wraps a tree read from a directory: every node is real, nothing is special.
    pub fn from_tree(tree: Tree) -> Layer {
        Layer {
            tree,
            whiteouts: HashSet::new(),
            opaque: HashSet::new(),
            implicit: HashSet::new(),
            pending_links: Vec::new(),
            escape_overlay_xattrs: false,
        }
    }

    /// The directory at `path`, creating implied directories on the way. A path component
    /// that exists and is not a directory is an error (we never write "through" a symlink or
    /// a file). A whiteout on the way is replaced by an opaque directory: "deleted, then
    /// re-created in this layer".
    pub fn dir_at(&mut self, path: &[Vec<u8>]) -> Result<NodeId> {
        let mut cur = Tree::ROOT;
        for (i, name) in path.iter().enumerate() {
            let existing = self.tree.children(cur).unwrap().get(name).copied();
            cur = match existing {
                Some(id) if self.whiteouts.contains(&id) => {
                    let d = self.new_dir(IMPLICIT_DIR_META);
                    self.implicit.insert(d);
                    self.opaque.insert(d);
                    self.tree.children_mut(cur).unwrap().insert(name.clone(), d);
                    d
                }
                Some(id) => match self.tree.node(id).kind {
                    Kind::Dir { .. } => id,
                    Kind::Symlink { .. } => bail!("parent {} is a symlink", show(&path[..=i])),
                    _ => bail!("parent {} is not a directory", show(&path[..=i])),
                },
                None => {
                    let d = self.new_dir(IMPLICIT_DIR_META);
                    self.implicit.insert(d);
                    self.tree.children_mut(cur).unwrap().insert(name.clone(), d);
                    d
                }
            };
        }
        Ok(cur)
    }

    fn new_dir(&mut self, meta: Meta) -> NodeId {
        self.tree.add(Node { meta, xattrs: Vec::new(), kind: Kind::Dir { children: BTreeMap::new() } })
    }

    /// Sets the root directory's own metadata (an archive entry `./`).
    pub fn set_root(&mut self, meta: Meta, xattrs: Vec<erofs::tree::Xattr>) {
        let root = self.tree.node_mut(Tree::ROOT);
        root.meta = meta;
        root.xattrs = xattrs;
        self.implicit.remove(&Tree::ROOT);
    }

    /// Puts `node` at `parent/name` following the replacement rules; returns its id (the
    /// existing directory's id when a directory is updated in place).
    pub fn put(&mut self, parent: NodeId, name: &[u8], node: Node) -> NodeId {
        let existing = self.tree.children(parent).unwrap().get(name).copied();
        let is_dir = matches!(node.kind, Kind::Dir { .. });
        if let Some(old) = existing {
            let old_is_dir = matches!(self.tree.node(old).kind, Kind::Dir { .. });
            let old_is_whiteout = self.whiteouts.contains(&old);
            if is_dir && old_is_dir {
                let n = self.tree.node_mut(old);
                n.meta = node.meta;
                n.xattrs = node.xattrs;
                self.implicit.remove(&old);
                return old;
            }
            let id = self.tree.add(node);
            if old_is_whiteout && is_dir {
                // Deleted below, then created here: the new directory hides lower contents.
                self.opaque.insert(id);
            }
            self.tree.children_mut(parent).unwrap().insert(name.to_vec(), id);
            return id;
        }
        let id = self.tree.add(node);
        self.tree.children_mut(parent).unwrap().insert(name.to_vec(), id);
        id
    }

    /// Links an existing node under another name (a hard link).
    pub fn link(&mut self, parent: NodeId, name: &[u8], id: NodeId) {
        self.tree.children_mut(parent).unwrap().insert(name.to_vec(), id);
    }

    /// Finds a node by path without creating anything; `None` if absent or if the path goes
    /// through a non-directory.
    pub fn lookup(&self, path: &[Vec<u8>]) -> Option<NodeId> {
        lookup(&self.tree, path)
    }

    /// `.wh.NAME` in `parent`: hides NAME of the layers below. Entries of this same layer are
    /// not affected (OCI image spec); a same-layer directory becomes opaque instead, since its
    /// lower namesake must still disappear.
    pub fn whiteout(&mut self, parent: NodeId, name: &[u8], meta: Meta) {
        match self.tree.children(parent).unwrap().get(name).copied() {
            Some(id) if self.whiteouts.contains(&id) => {}
            Some(id) => {
                if matches!(self.tree.node(id).kind, Kind::Dir { .. }) {
                    self.opaque.insert(id);
                }
            }
            None => {
                let marker = Node {
                    meta: Meta { mode: S_IFCHR, ..meta },
                    xattrs: Vec::new(),
                    kind: Kind::CharDev { major: 0, minor: 0 },
                };
                let id = self.tree.add(marker);
                self.whiteouts.insert(id);
                self.tree.children_mut(parent).unwrap().insert(name.to_vec(), id);
            }
        }
    }

    pub fn set_opaque(&mut self, dir: NodeId) {
        self.opaque.insert(dir);
    }
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

/// Path lookup in any tree, never through non-directories.
pub fn lookup(tree: &Tree, path: &[Vec<u8>]) -> Option<NodeId> {
    let mut cur = Tree::ROOT;
    for name in path {
        cur = *tree.children(cur)?.get(name)?;
    }
    Some(cur)
}
