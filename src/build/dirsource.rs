//! A directory on disk as a layer: walked without following symlinks, keeping mode, owner,
//! mtime (ns), xattrs, device numbers and hard links (by device and inode number). File
//! contents stream through the [`ChunkStore`]; sparse files are read normally and their zero
//! chunks become holes. Names under the directory are taken literally (no whiteout rules).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use erofs::tree::{Kind, Meta, Node, NodeId, Tree, Xattr, S_IFMT};

use super::chunks::ChunkStore;
use super::layer::Layer;
use super::names::{check_name, MAX_DEPTH};
use super::Limits;

pub fn read_dir_layer(root: &Path, store: &mut ChunkStore, limits: &mut Limits) -> Result<Layer> {
    // The source argument itself may be a symlink to the directory; nothing below it is
    // ever followed.
    let root = std::fs::canonicalize(root).with_context(|| format!("{}", root.display()))?;
    let md = std::fs::symlink_metadata(&root).with_context(|| format!("{}", root.display()))?;
    if !md.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut tree = Tree::new(meta_of(&md));
    tree.node_mut(Tree::ROOT).xattrs = read_xattrs(&root)?;
    let mut w = Walker { store, limits, links: HashMap::new() };
    w.walk(&mut tree, &root, Tree::ROOT, 0)?;
    Ok(Layer::from_tree(tree))
}

struct Walker<'a> {
    store: &'a mut ChunkStore,
    limits: &'a mut Limits,
    /// (st_dev, st_ino) of non-directories with several links → their node.
    links: HashMap<(u64, u64), NodeId>,
}

impl Walker<'_> {
    fn walk(&mut self, tree: &mut Tree, dir: &Path, id: NodeId, depth: usize) -> Result<()> {
        if depth >= MAX_DEPTH {
            bail!("{}: nested more than {MAX_DEPTH} directories deep", dir.display());
        }
        let mut names = Vec::new();
        for ent in std::fs::read_dir(dir).with_context(|| format!("reading directory {}", dir.display()))? {
            let ent = ent.with_context(|| format!("reading directory {}", dir.display()))?;
            names.push(ent.file_name());
        }
        // Sorted, so blob layout (and so the blob id) does not depend on readdir order.
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        for name in names {
            let path = dir.join(&name);
            let name = name.as_bytes().to_vec();
            check_name(&name).with_context(|| format!("{}", path.display()))?;
            self.limits.entry().with_context(|| format!("{}", path.display()))?;
            let md = std::fs::symlink_metadata(&path).with_context(|| format!("{}", path.display()))?;
            if !md.is_dir() && md.nlink() > 1 {
                if let Some(&existing) = self.links.get(&(md.dev(), md.ino())) {
                    tree.children_mut(id).unwrap().insert(name, existing);
                    continue;
                }
            }
            let meta = meta_of(&md);
            let xattrs = read_xattrs(&path)?;
            let ft = md.file_type();
            let kind = if ft.is_dir() {
                Kind::Dir { children: BTreeMap::new() }
            } else if ft.is_file() {
                self.limits.data(md.len()).with_context(|| format!("{}", path.display()))?;
                let mut f = File::options()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let data = self.store.store(&mut f, md.len(), &path.display())?;
                Kind::File { size: md.len(), data }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).with_context(|| format!("{}", path.display()))?;
                Kind::Symlink { target: target.as_os_str().as_bytes().to_vec() }
            } else {
                let (major, minor) = split_dev(md.rdev());
                match md.mode() & S_IFMT {
                    erofs::tree::S_IFCHR => Kind::CharDev { major, minor },
                    erofs::tree::S_IFBLK => Kind::BlockDev { major, minor },
                    erofs::tree::S_IFIFO => Kind::Fifo,
                    erofs::tree::S_IFSOCK => Kind::Socket,
                    other => bail!("{}: unknown file type {other:#o}", path.display()),
                }
            };
            let is_dir = ft.is_dir();
            let child = tree.add(Node { meta, xattrs, kind });
            tree.children_mut(id).unwrap().insert(name, child);
            if !is_dir && md.nlink() > 1 {
                self.links.insert((md.dev(), md.ino()), child);
            }
            if is_dir {
                self.walk(tree, &path, child, depth + 1)?;
            }
        }
        Ok(())
    }
}

fn meta_of(md: &Metadata) -> Meta {
    Meta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime: md.mtime(),
        mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
    }
}

/// glibc's `gnu_dev_major/minor` encoding of a 64-bit dev_t.
fn split_dev(dev: u64) -> (u32, u32) {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

/// The xattrs of `path` itself (llistxattr/lgetxattr: a symlink's own, never its target's),
/// sorted by name. Names EROFS cannot store are skipped with a warning.
fn read_xattrs(path: &Path) -> Result<Vec<Xattr>> {
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing xattrs of {}", path.display())),
    };
    let mut out = Vec::new();
    for name in names {
        let name = name.as_bytes().to_vec();
        if let Err(e) = super::check_xattr_name(&name) {
            tracing::warn!("{}: skipping xattr: {e:#}", path.display());
            continue;
        }
        let Some(value) = xattr::get(path, std::ffi::OsStr::from_bytes(&name))
            .with_context(|| format!("reading xattr {} of {}", String::from_utf8_lossy(&name), path.display()))?
        else {
            continue;
        };
        super::check_xattr_value(&name, &value).with_context(|| format!("{}", path.display()))?;
        out.push(Xattr { name, value });
    }
    out.sort();
    Ok(out)
}
