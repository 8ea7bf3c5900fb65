//! The image builder: sources (directories, OCI layer tars) → `OUTDIR/image.boot` plus
//! `OUTDIR/blobs/<sha256>`.
//!
//! Flow: each source is read into a [`layer::Layer`] while its file data streams through a
//! [`chunks::ChunkStore`] into that layer's blob ([`blobwriter`]: groups compressed on worker
//! threads, hashed and written as they fill). A single layer keeps overlayfs whiteout
//! conventions; `--merge` applies layers on top of each other ([`merge`]). The tree is then
//! handed to [`erofs::writer`].
//!
//! Everything is written under OUTDIR only, through temporary files that are removed on error;
//! blobs this run created are removed again if the build fails.

pub mod blobwriter;
pub mod check;
pub mod chunks;
pub mod dirsource;
pub mod layer;
pub mod merge;
pub mod names;
pub mod ocitar;
pub mod prefetchlist;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use erofs::blob::{BlobRecord, Compression};
use erofs::tree::{Tree, Xattr};
use erofs::writer::{WriteOptions, WriteStats};

pub use chunks::ChunkStats;
pub use layer::PendingLink;

/// Files up to this size are stored inline in the bootstrap. Reading them then costs no blob
/// fetch (no round trip, no group to decompress), which matters most for the many tiny config
/// and script files a rootfs has. 2 KiB keeps the bootstrap small: a tail at most half a block
/// long always fits next to its inode after at most half a block of padding, and files above
/// it are few but carry most of the bytes.
pub const DEFAULT_INLINE_MAX: usize = 2048;
/// Default cap on entries over all sources (a rootfs has tens of thousands; this stops a
/// hostile layer from growing the in-memory tree without bound: ~4M nodes ≈ 1 GiB of RAM).
pub const DEFAULT_MAX_ENTRIES: u64 = 4 << 20;
/// Default cap on file data over all sources (bytes before deduplication).
pub const DEFAULT_MAX_SIZE: u64 = 64 << 30;

#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// log2 of the EROFS chunk size (12..=26: 4 KiB to 64 MiB; one chunk is held in memory).
    pub chunk_size_log2: u8,
    /// log2 of the blob group size (12..=24).
    pub group_size_log2: u8,
    pub compression: Compression,
    pub zstd_level: i32,
    /// Apply several layers into one tree (else exactly one source).
    pub merge: bool,
    pub max_entries: u64,
    pub max_size: u64,
    pub inline_max: usize,
    /// Compression worker threads.
    pub threads: usize,
    /// Files (normalized paths, `a/b/c`) whose data goes first in their blob, in this order
    /// ([`prefetchlist`]).
    pub prefetch_list: Vec<Vec<u8>>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            chunk_size_log2: 20,
            group_size_log2: 18,
            compression: Compression::Zstd,
            zstd_level: erofs::blob::DEFAULT_ZSTD_LEVEL,
            merge: false,
            max_entries: DEFAULT_MAX_ENTRIES,
            max_size: DEFAULT_MAX_SIZE,
            inline_max: DEFAULT_INLINE_MAX,
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            prefetch_list: Vec::new(),
        }
    }
}

pub const MIN_CHUNK_SIZE_LOG2: u8 = 12;
pub const MAX_CHUNK_SIZE_LOG2: u8 = 26;

/// Where a layer comes from.
#[derive(Clone, Debug)]
pub enum Source {
    Dir(PathBuf),
    /// A tar file (plain, gzip or zstd).
    Tar(PathBuf),
    /// A tar stream on standard input.
    Stdin,
}

impl Source {
    /// `-` is stdin, a directory is a directory, anything else is read as a tar.
    pub fn from_arg(arg: &Path) -> Source {
        if arg.as_os_str() == "-" {
            Source::Stdin
        } else if arg.is_dir() {
            Source::Dir(arg.to_path_buf())
        } else {
            Source::Tar(arg.to_path_buf())
        }
    }

    fn label(&self) -> String {
        match self {
            Source::Dir(p) => format!("directory {}", p.display()),
            Source::Tar(p) => format!("layer {}", p.display()),
            Source::Stdin => "layer on stdin".into(),
        }
    }
}

/// Running totals checked against the limits.
pub struct Limits {
    entries: u64,
    bytes: u64,
    max_entries: u64,
    max_size: u64,
}

impl Limits {
    pub fn new(max_entries: u64, max_size: u64) -> Limits {
        Limits { entries: 0, bytes: 0, max_entries, max_size }
    }

    pub fn entry(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > self.max_entries {
            bail!("over the entry limit: more than {} entries (raise --max-entries)", self.max_entries);
        }
        Ok(())
    }

    pub fn data(&mut self, n: u64) -> Result<()> {
        self.bytes = self.bytes.saturating_add(n);
        if self.bytes > self.max_size {
            bail!("over the size limit: more than {} bytes of file data (raise --max-size)", self.max_size);
        }
        Ok(())
    }
}

/// xattr names EROFS can store: the prefixes of its name-index table.
pub fn check_xattr_name(name: &[u8]) -> Result<()> {
    const PREFIXES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"lustre."];
    const ACLS: [&[u8]; 2] = [b"system.posix_acl_access", b"system.posix_acl_default"];
    if name.contains(&0) {
        bail!("xattr name contains a NUL byte");
    }
    if ACLS.contains(&name) {
        return Ok(());
    }
    match PREFIXES.iter().find(|p| name.starts_with(p)) {
        Some(p) if name.len() > p.len() && name.len() - p.len() <= 255 => Ok(()),
        Some(_) => bail!("xattr name {:?} has an empty or over-long suffix", String::from_utf8_lossy(name)),
        None => bail!("xattr name {:?} has a prefix EROFS cannot store", String::from_utf8_lossy(name)),
    }
}

pub fn check_xattr_value(name: &[u8], value: &[u8]) -> Result<()> {
    if value.len() > u16::MAX as usize {
        bail!("xattr {} value is {} bytes (limit 65535)", String::from_utf8_lossy(name), value.len());
    }
    Ok(())
}

/// What a build produced.
#[derive(Debug)]
pub struct BuildReport {
    pub bootstrap: PathBuf,
    pub blobs: Vec<(BlobRecord, PathBuf)>,
    pub chunks: ChunkStats,
    pub write: WriteStats,
    pub nodes: usize,
}

/// Builds an image from `sources` into `outdir`.
pub fn build(sources: &[Source], outdir: &Path, opts: &BuildOptions) -> Result<BuildReport> {
    validate_options(sources, opts)?;
    let blob_dir = outdir.join("blobs");
    std::fs::create_dir_all(&blob_dir).with_context(|| format!("creating {}", blob_dir.display()))?;
    let mut created: Vec<PathBuf> = Vec::new();
    let res = build_inner(sources, outdir, &blob_dir, opts, &mut created);
    if res.is_err() {
        for p in created {
            let _ = std::fs::remove_file(p);
        }
    }
    res
}

fn validate_options(sources: &[Source], opts: &BuildOptions) -> Result<()> {
    if sources.is_empty() {
        bail!("no source given");
    }
    if sources.len() > 1 && !opts.merge {
        bail!("several sources need --merge (each becomes a layer of one merged tree)");
    }
    if !(MIN_CHUNK_SIZE_LOG2..=MAX_CHUNK_SIZE_LOG2).contains(&opts.chunk_size_log2) {
        bail!("chunk size must be between 4 KiB and 64 MiB");
    }
    if !(erofs::blob::MIN_GROUP_SIZE_LOG2..=erofs::blob::MAX_GROUP_SIZE_LOG2).contains(&opts.group_size_log2) {
        bail!("group size must be between 4 KiB and 16 MiB");
    }
    if sources.iter().filter(|s| matches!(s, Source::Stdin)).count() > 1 {
        bail!("stdin (`-`) can be given only once");
    }
    if sources.len() > 255 {
        bail!("at most 255 layers");
    }
    Ok(())
}

fn build_inner(sources: &[Source], outdir: &Path, blob_dir: &Path, opts: &BuildOptions, created: &mut Vec<PathBuf>) -> Result<BuildReport> {
    let mut store = chunks::ChunkStore::new(opts, blob_dir);
    let mut limits = Limits::new(opts.max_entries, opts.max_size);
    let mut blobs: Vec<(BlobRecord, PathBuf)> = Vec::new();
    let mut merged: Option<Tree> = None;
    let mut single: Option<layer::Layer> = None;
    for (i, src) in sources.iter().enumerate() {
        let device = u16::try_from(blobs.len() + 1).unwrap();
        store.begin_layer(device)?;
        let layer = if opts.prefetch_list.is_empty() {
            read_source(src, &mut store, &mut limits, i > 0).with_context(|| src.label())?
        } else {
            // Listed files first: the walk below then finds their chunks already stored.
            let before = store.stats.clone();
            let p = prefetchlist::prime(src, &opts.prefetch_list, &mut store, opts.inline_max, outdir)
                .with_context(|| format!("{}: --prefetch-list", src.label()))?;
            let primed = store.stats.chunks_stored - before.chunks_stored;
            let layer = read_source(src, &mut store, &mut limits, i > 0).with_context(|| src.label())?;
            // Report the primed files once, as the walk stored them (not as duplicates).
            let s = &mut store.stats;
            s.source_bytes -= p.bytes.min(s.source_bytes);
            s.chunked_files -= p.files.min(s.chunked_files);
            s.chunks_deduped -= primed.min(s.chunks_deduped);
            layer
        };
        if let Some((rec, path)) = store.end_layer().with_context(|| src.label())? {
            if !blobs.iter().any(|(r, _)| r.id == rec.id) {
                created.push(path.clone());
            }
            blobs.push((rec, path));
        }
        if opts.merge {
            let m = merged.get_or_insert_with(|| Tree::new(layer::IMPLICIT_DIR_META));
            merge::apply_layer(m, &layer).with_context(|| src.label())?;
        } else {
            single = Some(layer);
        }
    }
    let tree = match (merged, single) {
        (Some(m), _) => merge::compact(&m),
        (None, Some(l)) => merge::finish_single(l)?,
        _ => unreachable!(),
    };
    let records: Vec<BlobRecord> = blobs.iter().map(|(r, _)| r.clone()).collect();
    let wopts = write_options(&tree);
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-boot-")
        .tempfile_in(outdir)
        .with_context(|| format!("creating a temporary bootstrap in {}", outdir.display()))?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    let write = erofs::writer::write_bootstrap(&tree, &records, &wopts, &mut out).context("writing the bootstrap")?;
    out.flush().context("writing the bootstrap")?;
    drop(out);
    tmp.as_file().sync_all().context("syncing the bootstrap")?;
    let bootstrap = outdir.join("image.boot");
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .with_context(|| format!("chmod {}", tmp.path().display()))?;
    // Names are durable only once their directory is synced: the blobs' names first, so a
    // bootstrap that survives a crash never points at blobs that did not.
    let sync_dir = |dir: &Path| -> Result<()> {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", dir.display()))
    };
    if outdir.join("blobs").is_dir() {
        sync_dir(&outdir.join("blobs"))?;
    }
    if !opts.prefetch_list.is_empty() {
        write_image_trace(tmp.path(), outdir, &opts.prefetch_list)?;
    }
    tmp.persist(&bootstrap).with_context(|| format!("renaming to {}", bootstrap.display()))?;
    sync_dir(outdir)?;
    Ok(BuildReport { bootstrap, blobs, chunks: store.stats.clone(), write, nodes: tree.nodes.len() })
}

/// Writes `OUTDIR/prefetch.trace`: the listed files' groups in the new image, in list order.
fn write_image_trace(boot: &Path, outdir: &Path, list: &[Vec<u8>]) -> Result<()> {
    use sha2::Digest;
    let bytes = std::fs::read(boot).context("reading the new bootstrap back")?;
    let id = hex::encode(sha2::Sha256::digest(&bytes));
    let trace = prefetchlist::trace_of_list(&bytes, &id, list)?;
    trace.save(&outdir.join(crate::core::trace::IMAGE_TRACE_NAME))
}

fn read_source(src: &Source, store: &mut chunks::ChunkStore, limits: &mut Limits, lower_exists: bool) -> Result<layer::Layer> {
    match src {
        Source::Dir(p) => dirsource::read_dir_layer(p, store, limits),
        Source::Tar(p) => {
            let f = File::open(p).with_context(|| format!("opening {}", p.display()))?;
            ocitar::read_tar_layer(Box::new(f), store, limits, lower_exists)
        }
        Source::Stdin => {
            let stdin: Box<dyn Read> = Box::new(std::io::stdin().lock());
            ocitar::read_tar_layer(stdin, store, limits, lower_exists)
        }
    }
}

/// The superblock build time is the most common mtime, so most inodes can be compact (their
/// mtime is the build time) while every other node keeps its exact mtime in an extended inode.
fn write_options(tree: &Tree) -> WriteOptions {
    let mut counts: HashMap<(i64, u32), u32> = HashMap::new();
    for n in &tree.nodes {
        *counts.entry((n.meta.mtime, n.meta.mtime_nsec)).or_default() += 1;
    }
    let best = counts
        .into_iter()
        .filter(|((t, _), _)| *t >= 0)
        .max_by_key(|&((t, ns), c)| (c, std::cmp::Reverse((t, ns))))
        .map(|(k, _)| k)
        .unwrap_or((0, 0));
    WriteOptions { build_time: best.0 as u64, build_time_nsec: best.1, ..WriteOptions::default() }
}

/// An xattr list helper for tests and tools: value of `name` if present.
pub fn xattr<'a>(xattrs: &'a [Xattr], name: &[u8]) -> Option<&'a [u8]> {
    xattrs.iter().find(|x| x.name == name).map(|x| x.value.as_slice())
}

/// Parses a byte size: a number with an optional binary suffix (`K`, `M`, `G`, `T`, also
/// `KiB`…, case-insensitive): `1M` = 1048576.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let digits = t.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        bail!("invalid size {s:?}: expected a number with an optional K/M/G/T suffix");
    }
    let n: u64 = t[..digits].parse().with_context(|| format!("invalid size {s:?}"))?;
    let shift = match t[digits..].to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => bail!("invalid size {s:?}: unknown suffix {other:?}"),
    };
    n.checked_mul(1u64 << shift).with_context(|| format!("size {s:?} too large"))
}

/// log2 of a size that must be a power of two within `[min_log2, max_log2]`.
pub fn size_log2(s: &str, what: &str, min_log2: u8, max_log2: u8) -> Result<u8> {
    let n = parse_size(s)?;
    if !n.is_power_of_two() || n < (1 << min_log2) || n > (1 << max_log2) {
        bail!("{what} {s:?} must be a power of two between {} KiB and {} MiB", (1u64 << min_log2) >> 10, (1u64 << max_log2) >> 20);
    }
    Ok(n.trailing_zeros() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("64K").unwrap(), 65536);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
        assert!(parse_size("x").is_err());
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("99999999999T").is_err());
        assert_eq!(size_log2("1M", "chunk size", 12, 26).unwrap(), 20);
        assert!(size_log2("3K", "chunk size", 12, 26).is_err());
        assert!(size_log2("2K", "chunk size", 12, 26).is_err());
    }

    #[test]
    fn xattr_names() {
        assert!(check_xattr_name(b"user.x").is_ok());
        assert!(check_xattr_name(b"security.capability").is_ok());
        assert!(check_xattr_name(b"system.posix_acl_access").is_ok());
        assert!(check_xattr_name(b"system.nfs4_acl").is_err());
        assert!(check_xattr_name(b"user.").is_err());
    }
}
