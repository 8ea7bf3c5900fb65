//! `erofsd build`: directories or OCI layer tars → `OUTDIR/image.boot` + `OUTDIR/blobs/`.

use std::path::PathBuf;

use anyhow::{bail, Result};
use erofs::blob::Compression;

use crate::build::{self, BuildOptions, Source};
use super::print_report;

/// `--compress` of `build` and `convert`: a codec by its name (`Compression::name`).
pub fn parse_compression(name: &str) -> Result<Compression, String> {
    Compression::from_name(name).ok_or_else(|| format!("expected zstd, lz4 or none, not {name:?}"))
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directories or OCI layer tars (plain, gzip or zstd; `-` = stdin). Several need --merge.
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// Output directory: image.boot and blobs/<sha256> are written here.
    #[arg(short = 'o', long = "output")]
    pub outdir: PathBuf,
    /// EROFS chunk size and dedup unit (power of two, 4K..64M).
    #[arg(long, default_value = "1M")]
    pub chunk_size: String,
    /// Blob group size: unit of compression, verification and fetch (power of two, 4K..16M).
    #[arg(long, default_value = "256K")]
    pub group_size: String,
    /// Group compression: zstd (smallest), lz4 (cheapest to decode: about a quarter larger,
    /// 2.4-2.7x faster to decode) or none (the blob is the raw address space).
    #[arg(long, default_value = "zstd", value_parser = parse_compression)]
    pub compress: Compression,
    /// zstd level (1..=19).
    #[arg(long, default_value_t = erofs::blob::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// Apply the sources as layers (bottom first) into one tree without whiteouts.
    #[arg(long)]
    pub merge: bool,
    /// Refuse sources with more entries than this, over all layers.
    #[arg(long, default_value_t = build::DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,
    /// Refuse sources with more file data than this, over all layers (e.g. 64G).
    #[arg(long, default_value = "64G")]
    pub max_size: String,
    /// Compression threads (default: one per CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Files to place first in their blob, in this order: one path a line as seen inside the
    /// image (`#` comments), or an access trace from the daemon. Also writes
    /// OUTDIR/prefetch.trace for `erofsd mount --prefetch trace`.
    #[arg(long)]
    pub prefetch_list: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let mut out = String::new();
    let mut opts = BuildOptions {
        chunk_size_log2: build::size_log2(&args.chunk_size, "--chunk-size", build::MIN_CHUNK_SIZE_LOG2, build::MAX_CHUNK_SIZE_LOG2)?,
        group_size_log2: build::size_log2(
            &args.group_size,
            "--group-size",
            erofs::blob::MIN_GROUP_SIZE_LOG2,
            erofs::blob::MAX_GROUP_SIZE_LOG2,
        )?,
        compression: args.compress,
        zstd_level: args.zstd_level,
        merge: args.merge,
        max_entries: args.max_entries,
        max_size: build::parse_size(&args.max_size)?,
        ..BuildOptions::default()
    };
    if !(1..=19).contains(&opts.zstd_level) {
        bail!("--zstd-level must be 1..=19");
    }
    if let Some(t) = args.threads {
        opts.threads = t.clamp(1, 64);
    }
    if let Some(p) = &args.prefetch_list {
        opts.prefetch_list = build::prefetchlist::load(p)?;
    }
    let sources: Vec<Source> = args.sources.iter().map(|p| Source::from_arg(p)).collect();
    let r = build::build(&sources, &args.outdir, &opts)?;
    let c = &r.chunks;
    outln!(out, "bootstrap {} ({} bytes, {} inodes)", r.bootstrap.display(), r.write.bytes, r.write.inodes);
    for (i, (rec, _)) in r.blobs.iter().enumerate() {
        outln!(out, 
            "device {}: blob {} stored {} bytes, address space {} bytes, {} groups",
            i + 1,
            rec.id_hex(),
            rec.stored_size,
            rec.uncompressed_size,
            rec.groups.len()
        );
    }
    outln!(out, 
        "data {} bytes: {} inline files, {} chunked files; chunks {} stored, {} deduplicated, {} zero{}, {} trailing holes",
        c.source_bytes,
        c.inline_files,
        c.chunked_files,
        c.chunks_stored,
        c.chunks_deduped,
        c.chunks_zero,
        if c.chunks_zero > 0 { " (one stored zero chunk)" } else { "" },
        c.chunks_holes
    );
    print_report(&out);
    Ok(())
}
