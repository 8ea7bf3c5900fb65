//! `erofsd build --prefetch-list`: put the startup files first in their blob.
//!
//! The list names files as seen inside the image, one a line (`#` comments, a leading `/` is
//! optional); a daemon access trace (`core::trace`) is accepted too and turned into such a list
//! through the bootstrap it was recorded for ([`files_of_trace`]).
//!
//! How the files get to the front: before a layer is read, the listed files of that layer are
//! stored through the chunk store in list order. Chunks are deduplicated by content, so when the
//! normal walk reaches those files later their chunks are found and point at the front of the
//! blob. Nothing else changes: the on-disk format is the same, and an image built with a list
//! reads exactly like one built without. After the build, `OUTDIR/prefetch.trace` records the
//! listed files' groups in the new image, in list order, for the daemon's `trace` prefetch.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Seek, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use erofs::reader::{ExtentKind, FileKind, Image as Reader};

use super::chunks::ChunkStore;
use super::Source;
use crate::core::trace::Trace;

/// Upper bound on a list file (a million paths is a few tens of MB).
const MAX_LIST_FILE: u64 = 256 << 20;

/// Reads a list (or a trace, mapped through the image it names) into normalized paths
/// (`a/b/c`, no leading slash), first occurrence kept.
pub fn load(path: &Path) -> Result<Vec<Vec<u8>>> {
    let meta = std::fs::metadata(path).with_context(|| format!("prefetch list {}", path.display()))?;
    if meta.len() > MAX_LIST_FILE {
        bail!("prefetch list {} is {} bytes, over the {MAX_LIST_FILE} limit", path.display(), meta.len());
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("reading prefetch list {}", path.display()))?;
    if Trace::looks_like(&text) {
        let trace = Trace::parse(&text).with_context(|| format!("trace {}", path.display()))?;
        let Some(image) = &trace.image else {
            bail!("trace {} does not name the image it was recorded for; run `erofsd trace export IMAGE_DIR --trace {}`", path.display(), path.display());
        };
        let boot = if image.is_dir() { image.join("image.boot") } else { image.clone() };
        let bytes = std::fs::read(&boot).with_context(|| format!("bootstrap {} named by trace {}", boot.display(), path.display()))?;
        let files = files_of_trace(&bytes, &trace)?;
        return parse(&files.join("\n"));
    }
    parse(&text).with_context(|| format!("prefetch list {}", path.display()))
}

/// Parses list text.
pub fn parse(text: &str) -> Result<Vec<Vec<u8>>> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let rel = line.trim_start_matches('/');
        let comps = super::names::split_path(rel.as_bytes()).with_context(|| format!("line {}: {line:?}", n + 1))?;
        if comps.is_empty() {
            bail!("line {}: {line:?} names the root, not a file", n + 1);
        }
        let joined = comps.join(&b'/');
        if seen.insert(joined.clone()) {
            out.push(joined);
        }
    }
    Ok(out)
}

/// What priming stored for the report.
#[derive(Clone, Debug, Default)]
pub struct PrimeStats {
    pub files: u64,
    pub bytes: u64,
}

/// Stores the listed regular files of `src` (bigger than the inline limit) through `store`,
/// in list order. Files the source does not have are skipped (another layer may have them).
pub fn prime(src: &Source, list: &[Vec<u8>], store: &mut ChunkStore, inline_max: usize, spool_dir: &Path) -> Result<PrimeStats> {
    let mut stats = PrimeStats::default();
    match src {
        Source::Dir(root) => {
            for p in list {
                let Some(path) = regular_file_under(root, p)? else { continue };
                let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                let size = f.metadata()?.len();
                if size <= inline_max as u64 {
                    continue;
                }
                store.store(&mut f, size, &path.display())?;
                stats.files += 1;
                stats.bytes += size;
            }
        }
        Source::Tar(tar_path) => {
            // A tar can only be read front to back: spool the listed files, then store them in
            // list order.
            let wanted: HashMap<&[u8], usize> = list.iter().enumerate().map(|(i, p)| (p.as_slice(), i)).collect();
            let mut spooled: Vec<Option<(File, u64)>> = (0..list.len()).map(|_| None).collect();
            let f = File::open(tar_path).with_context(|| format!("opening {}", tar_path.display()))?;
            let stream = super::ocitar::decompress(Box::new(f))?;
            let mut archive = tar::Archive::new(stream);
            for entry in archive.entries().context("reading the tar archive")? {
                let mut entry = entry.context("reading the tar archive")?;
                if entry.header().entry_type() != tar::EntryType::Regular && entry.header().entry_type() != tar::EntryType::Continuous {
                    continue;
                }
                let raw = entry.path_bytes().into_owned();
                let Ok(comps) = super::names::split_path(&raw) else { continue };
                let Some(&i) = wanted.get(comps.join(&b'/').as_slice()) else { continue };
                let size = entry.size();
                if size <= inline_max as u64 {
                    continue;
                }
                let mut tmp = tempfile::tempfile_in(spool_dir).context("creating a spool file for --prefetch-list")?;
                let n = std::io::copy(&mut entry, &mut tmp).context("spooling a listed file")?;
                tmp.flush()?;
                tmp.rewind()?;
                // A later entry of the same path replaces an earlier one, as in the layer.
                spooled[i] = Some((tmp, n));
            }
            for (i, s) in spooled.into_iter().enumerate() {
                let Some((mut f, size)) = s else { continue };
                store.store(&mut f, size, &String::from_utf8_lossy(&list[i]))?;
                stats.files += 1;
                stats.bytes += size;
            }
        }
        Source::Stdin => bail!("--prefetch-list cannot reorder a layer read from stdin (it is read once, front to back); pass the tar as a file"),
    }
    Ok(stats)
}

/// `root/rel` if it is a regular file reached without following a symlink (a symlink in the
/// source may point anywhere on the build machine; inside the image it is just a symlink).
fn regular_file_under(root: &Path, rel: &[u8]) -> Result<Option<std::path::PathBuf>> {
    use std::os::unix::ffi::OsStrExt;
    let mut path = root.to_path_buf();
    let comps: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
    for (i, c) in comps.iter().enumerate() {
        path.push(std::ffi::OsStr::from_bytes(c));
        let md = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
        };
        let last = i + 1 == comps.len();
        if (last && !md.file_type().is_file()) || (!last && !md.file_type().is_dir()) {
            return Ok(None);
        }
    }
    Ok(Some(path))
}

/// A file's path and its `(blob index, group)` pairs.
type FileGroups = (Vec<u8>, Vec<(usize, u32)>);

/// The groups of each chunked regular file: `(path, [(blob index, group)])`, one entry per
/// inode (the first path a hard-linked file is reached by), in walk order.
fn file_groups<T: AsRef<[u8]>>(img: &Reader<T>) -> Result<Vec<FileGroups>> {
    let Some(blobs) = img.blobs() else { bail!("the bootstrap has no erofsd blob table (not built by `erofsd build`)") };
    let gs: Vec<u64> = blobs.iter().map(|b| b.group_size()).collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    img.walk(&mut |e| {
        if e.inode.kind != FileKind::File || !seen.insert(e.inode.nid) {
            return Ok(());
        }
        let mut groups = Vec::new();
        for x in img.data_map(e.inode)? {
            if let ExtentKind::Chunk { device_id, offset } = x.kind {
                let Some(bi) = (device_id as usize).checked_sub(1).filter(|&i| i < gs.len()) else { continue };
                if x.len == 0 {
                    continue;
                }
                // A chunk occupies whole blocks; its last byte is inside the group of offset+len-1.
                for g in offset / gs[bi]..=(offset + x.len - 1) / gs[bi] {
                    groups.push((bi, g as u32));
                }
            }
        }
        if !groups.is_empty() {
            out.push((e.path.to_vec(), groups));
        }
        Ok(())
    })?;
    Ok(out)
}

/// Maps a trace back to files: for each traced group in order, every file with data in it
/// (a group may hold several small files; all of them are taken), each file once.
pub fn files_of_trace(bootstrap: &[u8], trace: &Trace) -> Result<Vec<String>> {
    let img = Reader::open(bootstrap).context("opening the bootstrap")?;
    let ids: Vec<String> = img.blobs().map(|b| b.iter().map(|r| r.id_hex()).collect()).unwrap_or_default();
    let files = file_groups(&img)?;
    let mut by_group: HashMap<(usize, u32), Vec<usize>> = HashMap::new();
    for (fi, (_, groups)) in files.iter().enumerate() {
        for &g in groups {
            let v = by_group.entry(g).or_default();
            if v.last() != Some(&fi) {
                v.push(fi);
            }
        }
    }
    let mut taken = HashSet::new();
    let mut out = Vec::new();
    for (id, g) in &trace.entries {
        let Some(bi) = ids.iter().position(|x| x == id) else { continue };
        for &fi in by_group.get(&(bi, *g)).map(|v| v.as_slice()).unwrap_or(&[]) {
            if taken.insert(fi) {
                out.push(format!("/{}", String::from_utf8_lossy(&files[fi].0)));
            }
        }
    }
    Ok(out)
}

/// The groups of the listed files in a (new) image, in list order: the image's own trace.
pub fn trace_of_list(bootstrap: &[u8], image_id: &str, list: &[Vec<u8>]) -> Result<Trace> {
    let img = Reader::open(bootstrap).context("opening the bootstrap")?;
    let ids: Vec<String> = img.blobs().map(|b| b.iter().map(|r| r.id_hex()).collect()).unwrap_or_default();
    let files: HashMap<Vec<u8>, Vec<(usize, u32)>> = file_groups(&img)?.into_iter().collect();
    let mut seen = HashSet::new();
    let mut entries = Vec::new();
    for p in list {
        for &(bi, g) in files.get(p).map(|v| v.as_slice()).unwrap_or(&[]) {
            if seen.insert((bi, g)) {
                entries.push((ids[bi].clone(), g));
            }
        }
    }
    Ok(Trace { image_id: image_id.to_string(), image: None, entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_reject_escapes() {
        let l = parse("# startup\n/usr/bin/app\nusr/lib/libx.so\n\n./etc//conf\n/usr/bin/app\n").unwrap();
        assert_eq!(l, vec![b"usr/bin/app".to_vec(), b"usr/lib/libx.so".to_vec(), b"etc/conf".to_vec()]);
        assert!(parse("/a/../../etc/passwd\n").is_err());
        assert!(parse("/\n").is_err());
        assert!(parse("a\0b\n").is_err());
    }
}
