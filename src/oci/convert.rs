//! `erofsd convert`: an OCI/docker image (registry or OCI layout) → an erofsd image in the
//! shape docs/registry.md specifies ("An erofsd image in a registry"), pushed to a registry or
//! written to an OCI layout.
//!
//! Steps, each in its own function:
//! 1. [`fetch_source`]: resolve the reference (an index to the host platform's manifest), read
//!    the config and stream every layer to a file in the work directory, verifying each digest
//!    and size (a layout's blobs are hashed in place and read from there).
//! 2. `build::build` with `merge` over the layers in order: one blob per layer with data, one
//!    bootstrap (exactly `erofsd build --merge`).
//! 3. [`package`]: the bootstrap layer tar.gz, the config with `rootfs.diff_ids` replaced, the
//!    manifest with the contract's media types and annotations.
//! 4. [`push_registry`] / [`write_layout`]: blobs first (skipped when present), the manifest
//!    last, so a reader never sees a manifest whose blobs are missing, and an interrupted run
//!    can simply be run again.
//!
//! Nothing is written outside the work directory and the target: layer tars are never
//! extracted (the builder reads them as streams into an in-memory tree).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};

use super::layout::OciLayout;
use super::manifest::{self, Descriptor, ImageManifest, Parsed};
use super::package::{write_bootstrap_layer, BootstrapLayer};
use super::reference::{Reference, RegistryRef};
use crate::build::{self, BuildOptions, BuildReport, Source};
use crate::core::registry::push::{Progress, PushOptions};
use crate::core::registry::{docker_config, RegistryConfig, RegistrySource, TransportOptions, MAX_MANIFEST};

/// Layers downloaded, and blobs uploaded, at the same time.
pub const PARALLEL_TRANSFERS: usize = 3;

pub struct ConvertOptions {
    pub source: Reference,
    /// The source as the user typed it (recorded in the manifest annotations).
    pub source_text: String,
    pub target: Reference,
    /// Builder options; `merge` is forced on.
    pub build: BuildOptions,
    /// Parent of the temporary work directory. Default: beside an `oci:` target's directory
    /// (same filesystem: blobs are renamed into the layout, not copied), else the system
    /// temporary directory.
    pub work_dir: Option<PathBuf>,
    pub transport: TransportOptions,
    /// docker `config.json` for credentials; `None`: the default one if it exists.
    pub docker_config: Option<PathBuf>,
    pub push: PushOptions,
    /// Draw progress bars on stderr (only drawn on a terminal anyway).
    pub progress: bool,
}

#[derive(Debug)]
pub struct ConvertReport {
    pub source_digest: String,
    pub source_layers: usize,
    pub source_bytes: u64,
    /// Blob layers in device order.
    pub blobs: Vec<Descriptor>,
    pub bootstrap_layer: Descriptor,
    pub bootstrap_bytes: u64,
    pub manifest_digest: String,
    pub manifest_size: u64,
    pub config_digest: String,
    /// Blobs (including config and bootstrap layer) sent vs. already present at the target.
    pub uploaded: usize,
    pub present: usize,
    pub bytes_sent: u64,
    pub fetch_time: Duration,
    pub build_time: Duration,
    pub push_time: Duration,
    pub target: String,
}

/// Converts `opts.source` into `opts.target`.
pub fn convert(opts: &ConvertOptions) -> Result<ConvertReport> {
    if let Reference::Registry(r) = &opts.target {
        if r.is_digest() {
            bail!("target {r}: give a tag, not a digest (the converted manifest has a new digest)");
        }
    }
    let work_parent = match (&opts.work_dir, &opts.target) {
        (Some(w), _) => w.clone(),
        (None, Reference::Layout { dir, .. }) => {
            let abs = std::path::absolute(dir).with_context(|| format!("target {}", dir.display()))?;
            abs.parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir)
        }
        (None, Reference::Registry(_)) => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&work_parent).with_context(|| format!("creating work directory {}", work_parent.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".erofsd-convert-")
        .tempdir_in(&work_parent)
        .with_context(|| format!("creating a work directory in {}", work_parent.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let bars = Bars::new(opts.progress);

    let t0 = Instant::now();
    let fetched = rt.block_on(fetch_source(opts, work.path(), &bars))?;
    let fetch_time = t0.elapsed();

    let t1 = Instant::now();
    let spinner = bars.spinner(format!("building {} layers", fetched.layers.len()));
    let sources: Vec<Source> = fetched.layers.iter().map(|p| Source::Tar(p.clone())).collect();
    let build_dir = work.path().join("build");
    std::fs::create_dir_all(&build_dir)?;
    let bopts = BuildOptions { merge: true, ..opts.build.clone() };
    let built = build::build(&sources, &build_dir, &bopts).context("building the erofsd image from the layers")?;
    spinner.finish_and_clear();
    let pkg = package(&fetched, &built, opts, work.path())?;
    let build_time = t1.elapsed();

    let t2 = Instant::now();
    let (uploaded, present, bytes_sent) = match &opts.target {
        Reference::Registry(r) => rt.block_on(push_registry(r, opts, &pkg, &bars))?,
        Reference::Layout { dir, tag } => write_layout(dir, tag, &pkg, work.path())?,
    };
    let push_time = t2.elapsed();
    Ok(ConvertReport {
        source_digest: fetched.manifest_digest.clone(),
        source_layers: fetched.layers.len(),
        source_bytes: fetched.bytes,
        blobs: pkg.blobs.iter().map(|(d, _)| d.clone()).collect(),
        bootstrap_layer: pkg.bootstrap.0.clone(),
        bootstrap_bytes: built.write.bytes,
        manifest_digest: pkg.manifest_digest.clone(),
        manifest_size: pkg.manifest.len() as u64,
        config_digest: pkg.config.0.digest.clone(),
        uploaded,
        present,
        bytes_sent,
        fetch_time,
        build_time,
        push_time,
        target: opts.target.to_string(),
    })
}

// ---------------------------------------------------------------- progress

/// Progress bars on stderr; hidden unless asked for and stderr is a terminal.
struct Bars {
    multi: MultiProgress,
}

impl Bars {
    fn new(wanted: bool) -> Bars {
        let visible = wanted && std::io::IsTerminal::is_terminal(&std::io::stderr());
        let target = if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        Bars { multi: MultiProgress::with_draw_target(target) }
    }

    fn bytes(&self, total: u64, msg: String) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new(total));
        pb.set_style(
            ProgressStyle::with_template("{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_message(msg);
        pb
    }

    fn spinner(&self, msg: String) -> ProgressBar {
        let pb = self.multi.add(ProgressBar::new_spinner());
        pb.set_message(msg);
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }
}

// ---------------------------------------------------------------- 1. source

struct Fetched {
    manifest_digest: String,
    config: serde_json::Value,
    /// Layer tar files in order (in the work dir, or a verified layout's blob files).
    layers: Vec<PathBuf>,
    bytes: u64,
}

fn registry_config(r: &RegistryRef, opts: &ConvertOptions) -> Result<RegistryConfig> {
    let mut cfg = RegistryConfig::new(&r.registry, &r.repository);
    cfg.transport = opts.transport.clone();
    let path = opts.docker_config.clone().or_else(|| docker_config::default_path().filter(|p| p.exists()));
    if let Some(p) = path {
        cfg = cfg.with_docker_config(&p).with_context(|| format!("docker config {}", p.display()))?;
    }
    Ok(cfg)
}

/// Media type check for a source layer: a tar we can build from, or a clear refusal.
fn check_source_layer(i: usize, d: &Descriptor) -> Result<()> {
    if manifest::SOURCE_LAYER_TYPES.contains(&d.media_type.as_str()) {
        return Ok(());
    }
    if d.media_type == manifest::NYDUS_BLOB || d.annotation(manifest::ANN_NYDUS_BOOTSTRAP).is_some() {
        bail!("layer {} is a nydus/erofsd layer: the source is already converted", i + 1);
    }
    bail!("layer {} has media type {:?}, not a tar layer (tar, tar+gzip, tar+zstd)", i + 1, d.media_type)
}

async fn fetch_source(opts: &ConvertOptions, work: &Path, bars: &Bars) -> Result<Fetched> {
    let (os, arch) = manifest::host_platform();
    match &opts.source {
        Reference::Registry(r) => {
            let src = RegistrySource::new(registry_config(r, opts)?)?;
            let mut m = src.fetch_manifest(&r.reference).await.with_context(|| format!("source {r}"))?;
            let mut depth = 0;
            let manifest = loop {
                match manifest::parse(&m.media_type, &m.bytes).with_context(|| format!("source {r}: manifest {}", m.digest))? {
                    Parsed::Manifest(x) => break x,
                    Parsed::Index(idx) => {
                        depth += 1;
                        if depth > 2 {
                            bail!("source {r}: indexes nested too deep");
                        }
                        let d = manifest::select_platform(&idx, os, arch).with_context(|| format!("source {r}"))?;
                        m = src.fetch_manifest(&d.digest).await.with_context(|| format!("source {r}: manifest {}", d.digest))?;
                    }
                }
            };
            for (i, l) in manifest.layers.iter().enumerate() {
                check_source_layer(i, l)?;
            }
            if manifest.config.size > manifest::MAX_CONFIG {
                bail!("source {r}: config is {} bytes, over the {} limit", manifest.config.size, manifest::MAX_CONFIG);
            }
            let cfg_path = work.join("source-config.json");
            let n = src.download_blob(manifest.config.hex()?, Some(manifest.config.size), &cfg_path).await.with_context(|| format!("source {r}: config {}", manifest.config.digest))?;
            check_size(n, &manifest.config, "config")?;
            let config = parse_config(&std::fs::read(&cfg_path)?)?;
            let total: u64 = manifest.layers.iter().map(|l| l.size).sum();
            let pb = bars.bytes(total, format!("pulling {} layers", manifest.layers.len()));
            let dir = work.join("layers");
            std::fs::create_dir_all(&dir)?;
            // A few at a time, kept in order; the first failure cancels the rest (their partial
            // files go with the work directory).
            let (src, dir, pb) = (&src, &dir, &pb);
            let jobs = manifest.layers.iter().enumerate().map(|(i, l)| async move {
                let hex = l.hex()?;
                let dest = dir.join(format!("{}-{hex}", i + 1));
                let n = src.download_blob(hex, Some(l.size), &dest).await.with_context(|| format!("source {r}: layer {} ({})", i + 1, l.digest))?;
                check_size(n, l, &format!("layer {}", i + 1))?;
                pb.inc(n);
                Ok::<PathBuf, anyhow::Error>(dest)
            });
            let layers: Vec<PathBuf> = stream::iter(jobs).buffered(PARALLEL_TRANSFERS).try_collect().await?;
            pb.finish_and_clear();
            Ok(Fetched { manifest_digest: m.digest, config, layers, bytes: total })
        }
        Reference::Layout { dir, tag } => {
            let lay = OciLayout::open(dir)?;
            let mut desc = lay.resolve(tag)?;
            let mut depth = 0;
            let manifest: ImageManifest = loop {
                let bytes = lay.read_blob(&desc, MAX_MANIFEST as u64)?;
                match manifest::parse(&desc.media_type, &bytes).with_context(|| format!("oci:{}: manifest {}", dir.display(), desc.digest))? {
                    Parsed::Manifest(x) => break x,
                    Parsed::Index(idx) => {
                        depth += 1;
                        if depth > 2 {
                            bail!("oci:{}: indexes nested too deep", dir.display());
                        }
                        desc = manifest::select_platform(&idx, os, arch)?.clone();
                    }
                }
            };
            for (i, l) in manifest.layers.iter().enumerate() {
                check_source_layer(i, l)?;
            }
            let config = parse_config(&lay.read_blob(&manifest.config, manifest::MAX_CONFIG)?)?;
            let total: u64 = manifest.layers.iter().map(|l| l.size).sum();
            let pb = bars.bytes(total, format!("verifying {} layers", manifest.layers.len()));
            let mut layers = Vec::new();
            for (i, l) in manifest.layers.iter().enumerate() {
                let p = lay.verified_blob(l).with_context(|| format!("oci:{}: layer {}", dir.display(), i + 1))?;
                pb.inc(l.size);
                layers.push(p);
            }
            pb.finish_and_clear();
            Ok(Fetched { manifest_digest: desc.digest, config, layers, bytes: total })
        }
    }
}

fn check_size(n: u64, d: &Descriptor, what: &str) -> Result<()> {
    if n != d.size {
        bail!("{what} {} has {n} bytes, the manifest says {}", d.digest, d.size);
    }
    Ok(())
}

fn parse_config(bytes: &[u8]) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(bytes).context("the image config is not JSON")?;
    if !v.is_object() {
        bail!("the image config is not a JSON object");
    }
    Ok(v)
}

// ---------------------------------------------------------------- 3. package

struct Package {
    /// Blob layer descriptors with their files, in device order.
    blobs: Vec<(Descriptor, PathBuf)>,
    bootstrap: (Descriptor, PathBuf),
    config: (Descriptor, Vec<u8>),
    manifest: Vec<u8>,
    manifest_digest: String,
}

fn package(fetched: &Fetched, built: &BuildReport, opts: &ConvertOptions, work: &Path) -> Result<Package> {
    let ann = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    };
    let blobs: Vec<(Descriptor, PathBuf)> = built
        .blobs
        .iter()
        .map(|(rec, path)| {
            let mut d = Descriptor::new(manifest::NYDUS_BLOB, format!("sha256:{}", rec.id_hex()), rec.stored_size);
            d.annotations = ann(&[(manifest::ANN_NYDUS_BLOB, "true")]);
            (d, path.clone())
        })
        .collect();
    let boot_path = work.join("bootstrap.tar.gz");
    let BootstrapLayer { digest, size, diff_id } = write_bootstrap_layer(&built.bootstrap, &boot_path)?;
    let mut boot = Descriptor::new(manifest::OCI_LAYER_GZIP, digest, size);
    boot.annotations = ann(&[
        (manifest::ANN_NYDUS_BOOTSTRAP, "true"),
        (manifest::ANN_NYDUS_FS_VERSION, "6"),
        (manifest::ANN_BOOTSTRAP_FORMAT, manifest::BOOTSTRAP_FORMAT_EROFSD_V1),
    ]);

    // A blob layer's diff_id is its digest (it is not a compressed tar); the bootstrap's is
    // the sha256 of its uncompressed tar.
    let mut config = fetched.config.clone();
    let mut diff_ids: Vec<serde_json::Value> = blobs.iter().map(|(d, _)| d.digest.clone().into()).collect();
    diff_ids.push(diff_id.into());
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    let config_bytes = serde_json::to_vec(&config)?;
    let config_desc = Descriptor::new(
        manifest::OCI_CONFIG,
        format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes))),
        config_bytes.len() as u64,
    );

    let mut layers: Vec<Descriptor> = blobs.iter().map(|(d, _)| d.clone()).collect();
    layers.push(boot.clone());
    let m = ImageManifest {
        schema_version: 2,
        media_type: Some(manifest::OCI_MANIFEST.into()),
        config: config_desc.clone(),
        layers,
        annotations: ann(&[
            (manifest::ANN_SOURCE_REFERENCE, opts.source_text.as_str()),
            (manifest::ANN_SOURCE_DIGEST, fetched.manifest_digest.as_str()),
        ]),
    };
    let manifest = serde_json::to_vec_pretty(&m)?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
    Ok(Package { blobs, bootstrap: (boot, boot_path), config: (config_desc, config_bytes), manifest, manifest_digest })
}

// ---------------------------------------------------------------- 4. target

/// Pushes blobs (skipping present ones), then the manifest. Returns (uploaded, present, bytes).
async fn push_registry(r: &RegistryRef, opts: &ConvertOptions, pkg: &Package, bars: &Bars) -> Result<(usize, usize, u64)> {
    let dst = RegistrySource::new_for_push(registry_config(r, opts)?)?;
    let cfg_file = tempfile::NamedTempFile::new_in(pkg.bootstrap.1.parent().unwrap())?;
    std::fs::write(cfg_file.path(), &pkg.config.1)?;
    let mut files: Vec<(&Descriptor, &Path)> = pkg.blobs.iter().map(|(d, p)| (d, p.as_path())).collect();
    files.push((&pkg.bootstrap.0, pkg.bootstrap.1.as_path()));
    files.push((&pkg.config.0, cfg_file.path()));
    // The same blob twice (two identical layers) goes up once.
    let mut seen = std::collections::HashSet::new();
    files.retain(|(d, _)| seen.insert(d.digest.clone()));
    let dst = &dst;
    // A few blobs at a time; each is skipped when the registry has it with the right size.
    let jobs = files.into_iter().map(|(d, path)| async move {
        let id = d.hex()?;
        if dst.blob_exists(id).await.with_context(|| format!("target {r}: checking blob {}", d.digest))? == Some(d.size) {
            return Ok::<Option<u64>, anyhow::Error>(None);
        }
        let pb = bars.bytes(d.size, format!("pushing {}", &d.digest[..19]));
        let p2 = pb.clone();
        let progress: Progress = Arc::new(move |n| p2.set_position(n));
        let n = dst
            .push_blob_file(id, path, &opts.push, Some(progress))
            .await
            .with_context(|| format!("target {r}: pushing blob {}", d.digest))?;
        pb.finish_and_clear();
        Ok(Some(n))
    });
    let sent: Vec<Option<u64>> = stream::iter(jobs).buffer_unordered(PARALLEL_TRANSFERS).try_collect().await?;
    let uploaded = sent.iter().filter(|x| x.is_some()).count();
    let present = sent.len() - uploaded;
    let bytes: u64 = sent.iter().flatten().sum();
    let digest = dst
        .push_manifest(&r.reference, manifest::OCI_MANIFEST, &pkg.manifest)
        .await
        .with_context(|| format!("target {r}: pushing the manifest"))?;
    if digest != pkg.manifest_digest {
        bail!("target {r}: manifest digest {digest}, expected {}", pkg.manifest_digest);
    }
    Ok((uploaded, present, bytes))
}

/// Writes blobs (moved from the work dir when possible), then the manifest, then the tag.
fn write_layout(dir: &Path, tag: &str, pkg: &Package, work: &Path) -> Result<(usize, usize, u64)> {
    let lay = OciLayout::create(dir)?;
    let (mut uploaded, mut present, mut bytes) = (0, 0, 0u64);
    // Blob files in the build output are used nowhere else afterwards: move them.
    let movable = |p: &Path| p.starts_with(work);
    for (d, p) in pkg.blobs.iter().chain(std::iter::once(&pkg.bootstrap)) {
        if lay.put_blob_file(p, d, movable(p))? {
            uploaded += 1;
            bytes += d.size;
        } else {
            present += 1;
        }
    }
    for b in [&pkg.config.1, &pkg.manifest] {
        if lay.put_blob_bytes(b)?.1 {
            uploaded += 1;
            bytes += b.len() as u64;
        } else {
            present += 1;
        }
    }
    let mdesc = Descriptor::new(manifest::OCI_MANIFEST, pkg.manifest_digest.clone(), pkg.manifest.len() as u64);
    lay.set_tag(tag, &mdesc)?;
    Ok((uploaded, present, bytes))
}
