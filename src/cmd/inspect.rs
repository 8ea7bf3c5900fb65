//! `erofsd inspect`: print an image's superblock, blobs and tree (text or JSON).
//!
//! Thin on purpose: opening, validating and walking live in `erofs::reader`.

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use erofs::ondisk::*;
use erofs::reader::{FileKind, Image, Inode};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A bootstrap file, or an image directory holding image.boot.
    pub image: PathBuf,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Print only the superblock and blobs, not the tree.
    #[arg(long)]
    pub no_tree: bool,
}

/// `IMAGE` itself, or `IMAGE/image.boot` when it is a directory.
pub fn bootstrap_path(image: &Path) -> PathBuf {
    if image.is_dir() {
        image.join("image.boot")
    } else {
        image.to_path_buf()
    }
}

fn feature_names(compat: u32, incompat: u32) -> Vec<String> {
    let mut v = Vec::new();
    for (bit, name) in [(FEATURE_COMPAT_SB_CHKSUM, "sb_csum"), (FEATURE_COMPAT_MTIME, "mtime"), (FEATURE_COMPAT_XATTR_FILTER, "xattr_filter")] {
        if compat & bit != 0 {
            v.push(name.to_string());
        }
    }
    let known_compat = FEATURE_COMPAT_SB_CHKSUM | FEATURE_COMPAT_MTIME | FEATURE_COMPAT_XATTR_FILTER;
    if compat & !known_compat != 0 {
        v.push(format!("compat:{:#x}", compat & !known_compat));
    }
    for (bit, name) in [
        (FEATURE_INCOMPAT_ZERO_PADDING, "zero_padding"),
        (FEATURE_INCOMPAT_COMPR_CFGS, "compr_cfgs"),
        (FEATURE_INCOMPAT_CHUNKED_FILE, "chunked_file"),
        (FEATURE_INCOMPAT_DEVICE_TABLE, "device_table"),
        (FEATURE_INCOMPAT_ZTAILPACKING, "ztailpacking"),
        (FEATURE_INCOMPAT_FRAGMENTS, "fragments"),
        (FEATURE_INCOMPAT_XATTR_PREFIXES, "xattr_prefixes"),
    ] {
        if incompat & bit != 0 {
            v.push(name.to_string());
        }
    }
    v
}

fn cstr(b: &[u8]) -> String {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

fn uuid(u: &[u8; 16]) -> String {
    let h: Vec<String> = u.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", h[0..4].concat(), h[4..6].concat(), h[6..8].concat(), h[8..10].concat(), h[10..16].concat())
}

fn header_json<T: AsRef<[u8]>>(img: &Image<T>) -> Value {
    let sb = img.superblock();
    let devices: Vec<Value> = img
        .devices()
        .iter()
        .enumerate()
        .map(|(k, d)| json!({"device_id": k + 1, "tag": String::from_utf8_lossy(d.tag_bytes()), "blocks": d.blocks, "mapped_blkaddr": d.mapped_blkaddr}))
        .collect();
    let blobs: Option<Vec<Value>> = img.blobs().map(|bs| {
        bs.iter()
            .enumerate()
            .map(|(k, b)| {
                json!({
                    "device_id": k + 1,
                    "id": b.id_hex(),
                    "uncompressed_size": b.uncompressed_size,
                    "stored_size": b.stored_size,
                    "compression": b.compression.name(),
                    "group_size": b.group_size(),
                    "groups": b.groups.len(),
                    "raw_groups": b.groups.iter().filter(|g| g.raw).count(),
                })
            })
            .collect()
    });
    json!({
        "superblock": {
            "bytes": img.bytes().len(),
            "blocks": sb.blocks,
            "inodes": sb.inos,
            "root_nid": sb.root_nid,
            "meta_blkaddr": sb.meta_blkaddr,
            "xattr_blkaddr": sb.xattr_blkaddr,
            "build_time": sb.build_time,
            "build_time_nsec": sb.build_time_nsec,
            "uuid": uuid(&sb.uuid),
            "volume_name": cstr(&sb.volume_name),
            "features": feature_names(sb.feature_compat, sb.feature_incompat),
            "extra_devices": img.devices().len(),
        },
        "devices": devices,
        "blobs": blobs,
    })
}

fn entry_json<T: AsRef<[u8]>>(img: &Image<T>, path: &[u8], ino: &Inode) -> Result<Value> {
    let xattrs: Vec<String> = img.xattrs(ino)?.iter().map(|x| String::from_utf8_lossy(&x.name).into_owned()).collect();
    let mut v = json!({
        "path": format!("/{}", String::from_utf8_lossy(path)),
        "type": ino.kind.name(),
        "mode": format!("{:04o}", ino.mode & 0o7777),
        "uid": ino.uid,
        "gid": ino.gid,
        "size": ino.size,
        "nlink": ino.nlink,
        "nid": ino.nid,
        "mtime": ino.mtime,
        "layout": ino.layout_name(),
        "xattrs": xattrs,
    });
    match ino.kind {
        FileKind::Symlink => v["target"] = json!(String::from_utf8_lossy(&img.readlink(ino)?)),
        FileKind::CharDev | FileKind::BlockDev => v["rdev"] = json!([ino.rdev().0, ino.rdev().1]),
        _ => {}
    }
    if let Some(bits) = ino.chunk_bits() {
        v["chunk_size"] = json!(1u64 << bits);
    }
    Ok(v)
}

pub fn run(args: Args) -> Result<()> {
    let path = bootstrap_path(&args.image);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let img = Image::open(bytes).with_context(|| format!("opening {}", path.display()))?;
    let out = io::stdout().lock();
    let mut out = BufWriter::new(out);
    let r = if args.json { print_json(&img, &path, !args.no_tree, &mut out) } else { print_text(&img, &path, !args.no_tree, &mut out) };
    match r.and_then(|()| out.flush().map_err(Into::into)) {
        Err(e) if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) => Ok(()),
        other => other,
    }
}

fn print_json<T: AsRef<[u8]>>(img: &Image<T>, path: &Path, tree: bool, out: &mut dyn Write) -> Result<()> {
    let mut doc = header_json(img);
    doc["bootstrap"] = json!(path.display().to_string());
    if tree {
        let mut entries = Vec::new();
        img.walk(&mut |e| {
            entries.push(entry_json(img, e.path, e.inode).map_err(|e| erofs::Error::Corrupt(e.to_string()))?);
            Ok(())
        })?;
        doc["tree"] = Value::Array(entries);
    }
    serde_json::to_writer_pretty(&mut *out, &doc)?;
    writeln!(out)?;
    Ok(())
}

fn print_text<T: AsRef<[u8]>>(img: &Image<T>, path: &Path, tree: bool, out: &mut dyn Write) -> Result<()> {
    let h = header_json(img);
    let sb = &h["superblock"];
    writeln!(out, "bootstrap:     {} ({} bytes)", path.display(), sb["bytes"])?;
    writeln!(out, "blocks:        {}", sb["blocks"])?;
    writeln!(out, "inodes:        {} (root nid {})", sb["inodes"], sb["root_nid"])?;
    writeln!(out, "build time:    {}.{:09}", sb["build_time"], sb["build_time_nsec"].as_u64().unwrap_or(0))?;
    writeln!(out, "uuid:          {}", sb["uuid"].as_str().unwrap_or(""))?;
    writeln!(out, "volume name:   {:?}", sb["volume_name"].as_str().unwrap_or(""))?;
    let feats: Vec<&str> = sb["features"].as_array().map(|a| a.iter().filter_map(|f| f.as_str()).collect()).unwrap_or_default();
    writeln!(out, "features:      {}", feats.join(" "))?;
    writeln!(out, "meta/xattr:    meta_blkaddr {} xattr_blkaddr {}", sb["meta_blkaddr"], sb["xattr_blkaddr"])?;
    match img.blobs() {
        Some(blobs) => {
            writeln!(out, "blobs:         {}", blobs.len())?;
            for (k, b) in blobs.iter().enumerate() {
                writeln!(
                    out,
                    "  device {:<3} {}  {} bytes, stored {} ({}), {} groups of {} KiB",
                    k + 1,
                    b.id_hex(),
                    b.uncompressed_size,
                    b.stored_size,
                    b.compression.name(),
                    b.groups.len(),
                    b.group_size() / 1024
                )?;
            }
        }
        None => {
            writeln!(out, "blobs:         no erofsd blob table; {} device(s)", img.devices().len())?;
            for (k, d) in img.devices().iter().enumerate() {
                writeln!(out, "  device {:<3} tag {:?} {} blocks", k + 1, String::from_utf8_lossy(d.tag_bytes()), d.blocks)?;
            }
        }
    }
    if !tree {
        return Ok(());
    }
    writeln!(out, "tree:")?;
    let mut io_err: Option<io::Error> = None;
    img.walk(&mut |e| {
        let ino = e.inode;
        let xattrs = img.xattrs(ino)?;
        let mut line = format!(
            "  {:<8} {:04o} {:>11} {:>12} {:>3} {:<12} /{}",
            ino.kind.name(),
            ino.mode & 0o7777,
            format!("{}:{}", ino.uid, ino.gid),
            ino.size,
            ino.nlink,
            ino.layout_name(),
            String::from_utf8_lossy(e.path)
        );
        match ino.kind {
            FileKind::Symlink => line.push_str(&format!(" -> {}", String::from_utf8_lossy(&img.readlink(ino)?))),
            FileKind::CharDev | FileKind::BlockDev => line.push_str(&format!(" [{}:{}]", ino.rdev().0, ino.rdev().1)),
            _ => {}
        }
        if !xattrs.is_empty() {
            let names: Vec<String> = xattrs.iter().map(|x| String::from_utf8_lossy(&x.name).into_owned()).collect();
            line.push_str(&format!("  xattrs: {}", names.join(",")));
        }
        if let Err(err) = writeln!(out, "{line}") {
            io_err = Some(err);
            return Err(erofs::Error::Io(io::Error::new(io::ErrorKind::BrokenPipe, "output closed")));
        }
        Ok(())
    })
    .map_err(|e| match io_err.take() {
        Some(err) => anyhow::Error::from(err),
        None => e.into(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use erofs::tree::*;
    use std::collections::BTreeMap;

    fn sample() -> Vec<u8> {
        let meta = |mode| Meta { mode, uid: 1, gid: 2, mtime: 10, mtime_nsec: 0 };
        let mut t = Tree::new(meta(0o755));
        let f = t.add(Node {
            meta: meta(S_IFREG | 0o644),
            xattrs: vec![Xattr { name: b"user.k".to_vec(), value: b"v".to_vec() }],
            kind: Kind::File { size: 2, data: FileData::Inline(b"hi".to_vec()) },
        });
        let d = t.add(Node { meta: meta(S_IFDIR | 0o700), xattrs: vec![], kind: Kind::Dir { children: BTreeMap::new() } });
        let l = t.add(Node { meta: meta(S_IFLNK | 0o777), xattrs: vec![], kind: Kind::Symlink { target: b"f".to_vec() } });
        let c = t.add(Node { meta: meta(S_IFCHR | 0o600), xattrs: vec![], kind: Kind::CharDev { major: 4, minor: 5 } });
        let ch = t.children_mut(Tree::ROOT).unwrap();
        ch.insert(b"f".to_vec(), f);
        ch.insert(b"d".to_vec(), d);
        ch.insert(b"l".to_vec(), l);
        ch.insert(b"c".to_vec(), c);
        let mut out = Vec::new();
        erofs::writer::write_bootstrap(&t, &[], &Default::default(), &mut out).unwrap();
        out
    }

    #[test]
    fn json_lists_superblock_and_tree() {
        let img = Image::open(sample()).unwrap();
        let mut out = Vec::new();
        print_json(&img, Path::new("x.boot"), true, &mut out).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["superblock"]["inodes"], 5);
        assert_eq!(v["blobs"].as_array().map(|a| a.len()), Some(0));
        let tree = v["tree"].as_array().unwrap();
        let paths: Vec<&str> = tree.iter().map(|e| e["path"].as_str().unwrap()).collect();
        assert_eq!(paths, ["/", "/c", "/d", "/f", "/l"]);
        assert_eq!(tree[3]["xattrs"][0], "user.k");
        assert_eq!(tree[3]["mode"], "0644");
        assert_eq!(tree[3]["layout"], "flat-inline");
        assert_eq!(tree[4]["target"], "f");
        assert_eq!(tree[1]["rdev"], json!([4, 5]));
        assert_eq!(tree[2]["nlink"], 2);
        assert_eq!(tree[0]["nlink"], 3);
    }

    #[test]
    fn text_has_one_line_per_entry() {
        let img = Image::open(sample()).unwrap();
        let mut out = Vec::new();
        print_text(&img, Path::new("x.boot"), true, &mut out).unwrap();
        let s = String::from_utf8(out).unwrap();
        let tree: Vec<&str> = s.lines().skip_while(|l| *l != "tree:").skip(1).collect();
        assert_eq!(tree.len(), 5, "{s}");
        assert!(tree[3].contains("/f") && tree[3].contains("xattrs: user.k") && tree[3].contains("1:2"), "{s}");
        assert!(tree[4].ends_with("/l -> f"), "{s}");
        assert!(s.contains("no erofsd blob table") || s.contains("blobs:         0"), "{s}");
    }

    #[test]
    fn image_directory_resolves_to_image_boot() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(bootstrap_path(dir.path()), dir.path().join("image.boot"));
        assert_eq!(bootstrap_path(&dir.path().join("f.boot")), dir.path().join("f.boot"));
    }
}
