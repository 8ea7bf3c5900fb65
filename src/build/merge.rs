//! Turning layers into the one tree the bootstrap is written from.
//!
//! * A single layer keeps overlayfs lower-layer conventions, so the image can itself be an
//!   overlay lower: whiteouts stay character devices 0/0, opaque directories get
//!   `trusted.overlay.opaque=y`.
//! * `--merge` applies layers bottom-up (opaque directories first, then whiteouts, then
//!   additions) and leaves no whiteout behind.
//!
//! Replaced or deleted subtrees stay in the arena until [`compact`] drops every node no
//! directory reaches any more.

use std::collections::{BTreeMap, HashMap};

use anyhow::{bail, Context, Result};
use erofs::tree::{Kind, Node, NodeId, Tree, Xattr};

use super::layer::{lookup, Layer};
use super::names::show;

pub const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";

/// A single-layer image: opaque directories get the overlayfs xattr, whiteouts are already
/// character devices 0/0, archive xattrs named `trusted.overlay.*` are escaped to
/// `trusted.overlay.overlay.*`. Pending links cannot exist (there is no lower layer).
pub fn finish_single(mut layer: Layer) -> Result<Tree> {
    if let Some(l) = layer.pending_links.first() {
        bail!("hard link {} → {}: target not found in the layer", show(&[l.parent.clone(), vec![l.name.clone()]].concat()), show(&l.target));
    }
    if layer.escape_overlay_xattrs {
        // overlayfs strips one `overlay.` level from escaped names, so content xattrs keep
        // their meaning instead of being taken for overlay metadata.
        for node in &mut layer.tree.nodes {
            for x in &mut node.xattrs {
                if let Some(rest) = x.name.strip_prefix(OVERLAY_PREFIX) {
                    let escaped = [OVERLAY_PREFIX, b"overlay.", rest].concat();
                    if escaped.len() - b"trusted.".len() > 255 {
                        bail!("xattr {} is too long to escape for overlayfs", String::from_utf8_lossy(&x.name));
                    }
                    x.name = escaped;
                }
            }
            node.xattrs.sort();
        }
    }
    for &dir in &layer.opaque {
        let node = layer.tree.node_mut(dir);
        node.xattrs.retain(|x| x.name != OPAQUE_XATTR);
        node.xattrs.push(Xattr { name: OPAQUE_XATTR.to_vec(), value: b"y".to_vec() });
        node.xattrs.sort();
    }
    Ok(compact(&layer.tree))
}

/// Applies `layer` on top of `merged`.
pub fn apply_layer(merged: &mut Tree, layer: &Layer) -> Result<()> {
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    if !layer.implicit.contains(&Tree::ROOT) {
        let r = layer.tree.node(Tree::ROOT);
        let m = merged.node_mut(Tree::ROOT);
        m.meta = r.meta;
        m.xattrs = r.xattrs.clone();
    }
    merge_dir(merged, layer, Tree::ROOT, Tree::ROOT, &mut map);
    for l in &layer.pending_links {
        let what = show(&[l.parent.clone(), vec![l.name.clone()]].concat());
        let target = lookup(merged, &l.target)
            .with_context(|| format!("hard link {what}: target {} not found in this or lower layers", show(&l.target)))?;
        if matches!(merged.node(target).kind, Kind::Dir { .. }) {
            bail!("hard link {what}: target {} is a directory", show(&l.target));
        }
        let parent = lookup(merged, &l.parent)
            .filter(|&p| merged.children(p).is_some())
            .with_context(|| format!("hard link {what}: parent directory vanished"))?;
        merged.children_mut(parent).unwrap().insert(l.name.clone(), target);
    }
    Ok(())
}

fn merge_dir(merged: &mut Tree, layer: &Layer, mdir: NodeId, ldir: NodeId, map: &mut HashMap<NodeId, NodeId>) {
    if layer.opaque.contains(&ldir) {
        merged.children_mut(mdir).unwrap().clear();
    }
    let lchildren: Vec<(Vec<u8>, NodeId)> =
        layer.tree.children(ldir).unwrap().iter().map(|(k, v)| (k.clone(), *v)).collect();
    for (name, lid) in lchildren {
        if layer.whiteouts.contains(&lid) {
            merged.children_mut(mdir).unwrap().remove(&name);
            continue;
        }
        if let Some(&mid) = map.get(&lid) {
            // Second name of a node this layer already placed (hard link).
            merged.children_mut(mdir).unwrap().insert(name, mid);
            continue;
        }
        let lnode = layer.tree.node(lid);
        let existing = merged.children(mdir).unwrap().get(&name).copied();
        if let Kind::Dir { .. } = lnode.kind {
            let mid = match existing {
                Some(mid) if matches!(merged.node(mid).kind, Kind::Dir { .. }) => {
                    if !layer.implicit.contains(&lid) {
                        let m = merged.node_mut(mid);
                        m.meta = lnode.meta;
                        m.xattrs = lnode.xattrs.clone();
                    }
                    mid
                }
                _ => {
                    let mid = merged.add(Node { meta: lnode.meta, xattrs: lnode.xattrs.clone(), kind: Kind::Dir { children: BTreeMap::new() } });
                    merged.children_mut(mdir).unwrap().insert(name, mid);
                    mid
                }
            };
            map.insert(lid, mid);
            merge_dir(merged, layer, mid, lid, map);
        } else {
            let mid = merged.add(lnode.clone());
            map.insert(lid, mid);
            merged.children_mut(mdir).unwrap().insert(name, mid);
        }
    }
}

/// A copy of `tree` holding only the nodes reachable from the root, numbered in
/// breadth-first order (so a directory's children get neighbouring ids). Hard links stay
/// shared.
pub fn compact(tree: &Tree) -> Tree {
    let mut out = Tree { nodes: Vec::new() };
    let mut map: HashMap<NodeId, NodeId> = HashMap::new();
    let mut queue = std::collections::VecDeque::new();
    map.insert(Tree::ROOT, NodeId(0));
    out.nodes.push(tree.node(Tree::ROOT).clone());
    queue.push_back(Tree::ROOT);
    while let Some(old) = queue.pop_front() {
        let new = map[&old];
        let Some(children) = tree.children(old) else { continue };
        let mut remapped = BTreeMap::new();
        for (name, &c) in children {
            let nc = match map.get(&c) {
                Some(&nc) => nc,
                None => {
                    let nc = NodeId(out.nodes.len() as u32);
                    let mut n = tree.node(c).clone();
                    if let Kind::Dir { children } = &mut n.kind {
                        children.clear();
                    }
                    out.nodes.push(n);
                    map.insert(c, nc);
                    queue.push_back(c);
                    nc
                }
            };
            remapped.insert(name.clone(), nc);
        }
        if let Kind::Dir { children } = &mut out.nodes[new.0 as usize].kind {
            *children = remapped;
        }
    }
    out
}
