//! `erofsd convert SOURCE TARGET`: an OCI/docker image → an erofsd image (docs/registry.md).

use std::path::PathBuf;

use anyhow::{bail, Result};
use erofs::blob::Compression;

use super::print_report;
use crate::build::{self, BuildOptions};
use crate::core::registry::push::PushOptions;
use crate::core::registry::TransportOptions;
use crate::oci::convert::{convert, ConvertOptions};
use crate::oci::Reference;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Image to convert: `[http://]host[:port]/repo[:tag|@sha256:…]` or `oci:DIR[:tag]`.
    pub source: String,
    /// Where to write the erofsd image: a registry reference (with a tag) or `oci:DIR[:tag]`.
    pub target: String,
    /// Group compression of the data blobs: zstd, lz4 or none (see `erofsd build --help`).
    #[arg(long, default_value = "zstd", value_parser = super::build::parse_compression)]
    pub compress: Compression,
    /// zstd level (1..=19).
    #[arg(long, default_value_t = erofs::blob::DEFAULT_ZSTD_LEVEL)]
    pub zstd_level: i32,
    /// EROFS chunk size and dedup unit (power of two, 4K..64M).
    #[arg(long, default_value = "1M")]
    pub chunk_size: String,
    /// Blob group size: unit of compression, verification and fetch (power of two, 4K..16M).
    /// Smaller than `erofsd build`'s default: a converted image is fetched over the network,
    /// where every byte of a group a reader does not need is wasted bandwidth (64K kept the
    /// bytes fetched for a python startup within 1.35x of what it read; 256K: 1.9x).
    #[arg(long, default_value = "64K")]
    pub group_size: String,
    /// Refuse images with more entries than this, over all layers.
    #[arg(long, default_value_t = build::DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,
    /// Refuse images with more file data than this, over all layers (e.g. 64G).
    #[arg(long, default_value = "64G")]
    pub max_size: String,
    /// Parent directory for temporary files (layers, blobs). Default: beside an `oci:` target,
    /// else the system temporary directory.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Accept any TLS certificate from the registries (never a fallback; only when asked).
    #[arg(long)]
    pub insecure: bool,
    /// PEM file of extra CA certificates to trust (repeatable).
    #[arg(long = "ca-file")]
    pub ca_files: Vec<PathBuf>,
    /// docker `config.json` with registry credentials (default: $DOCKER_CONFIG/config.json or
    /// ~/.docker/config.json if present).
    #[arg(long)]
    pub docker_config: Option<PathBuf>,
    /// Blobs larger than this are pushed in chunks of this size (PATCH uploads).
    #[arg(long, default_value = "64M")]
    pub push_chunk_size: String,
    /// Files to place first in their blob, in this order (as for `erofsd build --prefetch-list`:
    /// one path a line, or a trace from `erofsd trace export`): a startup set fetched together.
    #[arg(long)]
    pub prefetch_list: Option<PathBuf>,
    /// No progress bars.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

pub fn run(args: Args) -> Result<()> {
    let build = BuildOptions {
        chunk_size_log2: build::size_log2(&args.chunk_size, "--chunk-size", build::MIN_CHUNK_SIZE_LOG2, build::MAX_CHUNK_SIZE_LOG2)?,
        group_size_log2: build::size_log2(&args.group_size, "--group-size", erofs::blob::MIN_GROUP_SIZE_LOG2, erofs::blob::MAX_GROUP_SIZE_LOG2)?,
        compression: args.compress,
        zstd_level: args.zstd_level,
        merge: true,
        max_entries: args.max_entries,
        max_size: build::parse_size(&args.max_size)?,
        prefetch_list: match &args.prefetch_list {
            Some(p) => build::prefetchlist::load(p)?,
            None => Vec::new(),
        },
        ..BuildOptions::default()
    };
    if !(1..=19).contains(&build.zstd_level) {
        bail!("--zstd-level must be 1..=19");
    }
    let chunk_size = build::parse_size(&args.push_chunk_size)?;
    if chunk_size < 1 << 20 {
        bail!("--push-chunk-size must be at least 1M");
    }
    let opts = ConvertOptions {
        source: Reference::parse(&args.source)?,
        source_text: args.source.clone(),
        target: Reference::parse(&args.target)?,
        build,
        work_dir: args.work_dir,
        transport: TransportOptions { extra_ca_files: args.ca_files, insecure_skip_verify: args.insecure, ..TransportOptions::default() },
        docker_config: args.docker_config,
        push: PushOptions { chunk_size },
        progress: !args.quiet,
    };
    let r = convert(&opts)?;
    let mut out = String::new();
    outln!(out, "source {} ({}): {} layers, {} bytes", args.source, r.source_digest, r.source_layers, r.source_bytes);
    for (i, b) in r.blobs.iter().enumerate() {
        outln!(out, "blob {}: {} {} bytes", i + 1, b.digest, b.size);
    }
    outln!(out, "bootstrap layer: {} {} bytes (bootstrap {} bytes)", r.bootstrap_layer.digest, r.bootstrap_layer.size, r.bootstrap_bytes);
    outln!(out, "config: {}", r.config_digest);
    outln!(out, "blobs written: {} ({} bytes), already present: {}", r.uploaded, r.bytes_sent, r.present);
    outln!(
        out,
        "time: fetch {:.1?}, build {:.1?}, push {:.1?}",
        r.fetch_time,
        r.build_time,
        r.push_time
    );
    outln!(out, "manifest {} ({} bytes) -> {}", r.manifest_digest, r.manifest_size, r.target);
    print_report(&out);
    Ok(())
}
