//! The format's own kernel round trip: mount a bootstrap written by `write_bootstrap` with the
//! host kernel (file-backed EROFS through the mount(2) syscall, blob devices passed as
//! `device=` files holding the chunk data the test synthesised) and compare everything the
//! kernel reports — stat, readdir, readlink, xattrs, file bytes — with the tree.
//!
//! Needs root and a kernel with EROFS file-backed mounts (6.12+); skips loudly otherwise and
//! fails when CI is set.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::*;
use erofs::tree::*;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let p = CString::new(self.0.as_os_str().as_bytes()).unwrap();
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
    }
}

fn kernel_supports_erofs() -> bool {
    std::fs::read_to_string("/proc/filesystems").map(|s| s.lines().any(|l| l.trim_end().ends_with("erofs"))).unwrap_or(false)
}

/// Mounts `boot` at `target` with the given device files; `None` (after a loud message, or a
/// panic under CI) when this kernel cannot do file-backed EROFS mounts.
fn mount(boot: &Path, target: &Path, devices: &[PathBuf]) -> Option<Mount> {
    let src = CString::new(boot.as_os_str().as_bytes()).unwrap();
    let tgt = CString::new(target.as_os_str().as_bytes()).unwrap();
    let fstype = CString::new("erofs").unwrap();
    let data = devices.iter().map(|d| format!("device={}", d.display())).collect::<Vec<_>>().join(",");
    let data = CString::new(data).unwrap();
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fstype.as_ptr(), libc::MS_RDONLY, data.as_ptr() as *const libc::c_void) };
    if r != 0 {
        let err = std::io::Error::last_os_error();
        if matches!(err.raw_os_error(), Some(libc::ENOTBLK) | Some(libc::ENODEV)) {
            require(false, &format!("file-backed EROFS mount not supported by this kernel: {err}"));
            return None;
        }
        panic!("mount({}) failed: {err} (see dmesg)", boot.display());
    }
    Some(Mount(target.to_path_buf()))
}

fn can_mount() -> bool {
    require(unsafe { libc::geteuid() } == 0, "kernel mount test needs root") && require(kernel_supports_erofs(), "kernel has no EROFS")
}

fn xattrs_of(path: &Path) -> Vec<Xattr> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 65536];
    let n = unsafe { libc::llistxattr(p.as_ptr(), names.as_mut_ptr() as *mut libc::c_char, names.len()) };
    assert!(n >= 0, "llistxattr {}: {}", path.display(), std::io::Error::last_os_error());
    let mut out = Vec::new();
    for name in names[..n as usize].split(|&c| c == 0).filter(|s| !s.is_empty()) {
        let cname = CString::new(name).unwrap();
        let mut val = vec![0u8; 65536];
        let m = unsafe { libc::lgetxattr(p.as_ptr(), cname.as_ptr(), val.as_mut_ptr() as *mut libc::c_void, val.len()) };
        assert!(m >= 0, "lgetxattr {} {:?}: {}", path.display(), String::from_utf8_lossy(name), std::io::Error::last_os_error());
        out.push(Xattr { name: name.to_vec(), value: val[..m as usize].to_vec() });
    }
    out.sort();
    out
}

/// The bytes a file node should read as.
fn content_of(node: &Node, contents: &[Vec<u8>]) -> Vec<u8> {
    match &node.kind {
        Kind::File { size, data: FileData::Inline(b) } => {
            assert_eq!(b.len() as u64, *size);
            b.clone()
        }
        Kind::File { size, data: FileData::Chunks { chunk_bits, chunks } } => {
            let cs = 1usize << chunk_bits;
            let mut out = vec![0u8; *size as usize];
            for (i, c) in chunks.iter().enumerate() {
                if c.is_hole() {
                    continue;
                }
                let end = ((i + 1) * cs).min(out.len());
                let at = c.blkaddr as usize * 4096;
                out[i * cs..end].copy_from_slice(&contents[c.device as usize - 1][at..at + end - i * cs]);
            }
            out
        }
        _ => unreachable!(),
    }
}

/// Compares the mounted tree at `mnt` with `tree`, node by node.
fn assert_mount_matches_tree(mnt: &Path, tree: &Tree, contents: &[Vec<u8>]) -> usize {
    let mut ino_of: HashMap<NodeId, u64> = HashMap::new();
    let mut links: HashMap<NodeId, u64> = HashMap::new();
    for id in 0..tree.nodes.len() {
        if let Some(ch) = tree.children(NodeId(id as u32)) {
            for c in ch.values() {
                *links.entry(*c).or_default() += 1;
            }
        }
    }
    let mut checked = 0;
    let mut stack = vec![(mnt.to_path_buf(), Tree::ROOT)];
    while let Some((path, id)) = stack.pop() {
        let node = tree.node(id);
        let md = std::fs::symlink_metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let p = path.display();
        let m = &node.meta;
        assert_eq!(md.mode(), m.mode, "{p}: mode");
        assert_eq!((md.uid(), md.gid()), (m.uid, m.gid), "{p}: owner");
        assert_eq!((md.mtime(), md.mtime_nsec() as u32), (m.mtime, m.mtime_nsec), "{p}: mtime");
        if let Some(prev) = ino_of.insert(id, md.ino()) {
            assert_eq!(prev, md.ino(), "{p}: hard link has another inode number");
        }
        let mut want_x = node.xattrs.clone();
        // The kernel has no handler for lustre.* names and does not list them.
        want_x.retain(|x| !x.name.starts_with(b"lustre."));
        want_x.sort();
        assert_eq!(xattrs_of(&path), want_x, "{p}: xattrs");
        match &node.kind {
            Kind::Dir { children } => {
                let subdirs = children.values().filter(|c| matches!(tree.node(**c).kind, Kind::Dir { .. })).count() as u64;
                assert_eq!(md.nlink(), 2 + subdirs, "{p}: nlink");
                let mut names: Vec<Vec<u8>> = std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
                names.sort();
                assert_eq!(names, children.keys().cloned().collect::<Vec<_>>(), "{p}: readdir");
                for (name, &c) in children {
                    stack.push((path.join(std::ffi::OsStr::from_bytes(name)), c));
                }
            }
            Kind::File { size, .. } => {
                assert!(md.is_file());
                assert_eq!(md.len(), *size, "{p}: size");
                assert_eq!(md.nlink(), links[&id], "{p}: nlink");
                if *size <= 64 << 20 {
                    let got = std::fs::read(&path).unwrap();
                    assert!(got == content_of(node, contents), "{p}: content differs");
                } else {
                    // Huge sparse files: compare the start, the end and a middle window.
                    let want = content_of_window(node, contents);
                    let f = std::fs::File::open(&path).unwrap();
                    for (off, bytes) in want {
                        let mut buf = vec![0u8; bytes.len()];
                        f.read_exact_at(&mut buf, off).unwrap();
                        assert!(buf == bytes, "{p}: bytes at {off} differ");
                    }
                }
            }
            Kind::Symlink { target } => {
                assert!(md.file_type().is_symlink());
                assert_eq!(std::fs::read_link(&path).unwrap().as_os_str().as_bytes(), target.as_slice(), "{p}: target");
            }
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                assert_eq!((libc::major(md.rdev()), libc::minor(md.rdev())), (*major, *minor), "{p}: rdev");
            }
            Kind::Fifo | Kind::Socket => {}
        }
        checked += 1;
    }
    checked
}

/// A few windows of a huge chunked file: (offset, expected bytes).
fn content_of_window(node: &Node, contents: &[Vec<u8>]) -> Vec<(u64, Vec<u8>)> {
    let Kind::File { size, data: FileData::Chunks { chunk_bits, chunks } } = &node.kind else { unreachable!() };
    let cs = 1u64 << chunk_bits;
    let mut out = Vec::new();
    for off in [0, size / 2, size - 4096] {
        let i = (off / cs) as usize;
        let c = chunks[i];
        let len = 4096.min(size - off) as usize;
        let bytes = if c.is_hole() {
            vec![0; len]
        } else {
            let at = c.blkaddr as usize * 4096 + (off - i as u64 * cs) as usize;
            contents[c.device as usize - 1][at..at + len].to_vec()
        };
        out.push((off, bytes));
    }
    out
}

#[test]
fn kernel_reads_our_bootstrap_like_the_tree_says() {
    if !can_mount() {
        return;
    }
    let (mut tree, mut blobs, _) = sample_tree();
    // Plus a 6 GiB sparse file whose last chunk holds data: 64-bit sizes, extended inode.
    let size = 6u64 << 30;
    let n = size.div_ceil(CHUNK) as usize;
    let mut chunks = vec![ChunkAddr::HOLE; n];
    chunks[n - 1] = blobs.put(2, &pattern(77, CHUNK as usize));
    chunks[n / 2] = blobs.put(1, &pattern(78, CHUNK as usize));
    add(&mut tree, Tree::ROOT, b"huge-sparse", node(Kind::File { size, data: FileData::Chunks { chunk_bits: CHUNK_BITS, chunks } }, 0o600));

    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("image.boot");
    write_file(&boot, &write(&tree, &blobs.records(), BUILD_TIME));
    let mut devs = Vec::new();
    for (i, c) in blobs.contents.iter().enumerate() {
        let p = tmp.path().join(format!("blob{}", i + 1));
        write_file(&p, c);
        devs.push(p);
    }
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_m) = mount(&boot, &mnt, &devs) else { return };
    let n = assert_mount_matches_tree(&mnt, &tree, &blobs.contents);
    assert!(n > 3000, "compared {n} entries");
}

#[test]
fn kernel_reads_a_minimal_bootstrap_without_devices() {
    if !can_mount() {
        return;
    }
    let mut tree = Tree::new(meta(0o700));
    add(&mut tree, Tree::ROOT, b"hello", inline_file(b"hi\n"));
    let tmp = tempfile::tempdir().unwrap();
    let boot = tmp.path().join("image.boot");
    write_file(&boot, &write(&tree, &[], BUILD_TIME));
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let Some(_m) = mount(&boot, &mnt, &[]) else { return };
    assert_eq!(assert_mount_matches_tree(&mnt, &tree, &[]), 2);
    let _ = BTreeMap::<u8, u8>::new();
}
