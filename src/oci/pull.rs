//! `erofsd mount <reference>`: fetch an erofsd image's bootstrap from a registry or an OCI
//! layout, and record where its blobs come from.
//!
//! Only metadata is pulled: the manifest and the bootstrap layer (a few MB for a large image).
//! The result is an ordinary image directory under `<cache_dir>/images/<manifest hex>/`:
//! `image.boot` plus `source.json` naming the blob source (the registry repository, or the
//! layout's `blobs/sha256/`). `core::images::ImageStore::load_dir` reads `source.json`, so a
//! restarted daemon reloads a pulled image exactly like a built one. Everything here is
//! rebuildable: deleting the directory only means pulling the bootstrap again.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::layout::OciLayout;
use super::manifest::{self, find_erofsd_layers, host_platform, select_platform, BootstrapFormat, ErofsdLayers, Parsed, MAX_CONFIG};
use super::package::extract_bootstrap_file;
use super::reference::{Reference, RegistryRef};
use crate::core::registry::settings::RegistrySettings;
use crate::core::registry::RegistrySource;

/// Next to `image.boot` in a pulled image directory.
pub const SOURCE_FILE: &str = "source.json";
/// Under the cache dir.
pub const IMAGES_DIR: &str = "images";

/// Where a pulled image's blobs come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ImageSource {
    /// Blobs `GET /v2/<repository>/blobs/sha256:<id>` on `registry` (`http(s)://host[:port]`).
    Registry { registry: String, repository: String, reference: String, manifest_digest: String },
    /// Blobs are files `<blob_dir>/<id>` (an OCI layout's `blobs/sha256`).
    Layout { blob_dir: PathBuf, reference: String, manifest_digest: String },
}

impl ImageSource {
    pub fn read(dir: &Path) -> Result<Option<ImageSource>> {
        let p = dir.join(SOURCE_FILE);
        match std::fs::read(&p) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b).with_context(|| format!("{}", p.display()))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
}

/// Pulls `reference`'s bootstrap into `<cache_dir>/images/` (reused when already there) and
/// returns the image directory.
pub async fn pull(reference: &Reference, settings: &RegistrySettings, cache_dir: &Path) -> Result<PathBuf> {
    let images = cache_dir.join(IMAGES_DIR);
    std::fs::create_dir_all(&images).with_context(|| format!("creating {}", images.display()))?;
    match reference {
        Reference::Registry(r) => pull_registry(r, settings, &images).await,
        Reference::Layout { dir, tag } => {
            let (l, tag) = (dir.clone(), tag.clone());
            let images = images.clone();
            tokio::task::spawn_blocking(move || pull_layout(&l, &tag, &images)).await.context("pull task")?
        }
    }
    .with_context(|| format!("pulling {reference}"))
}

async fn pull_registry(r: &RegistryRef, settings: &RegistrySettings, images: &Path) -> Result<PathBuf> {
    let cfg = settings.config_for(&r.registry, &r.repository)?;
    let src = RegistrySource::new(cfg)?;
    let mut m = src.fetch_manifest(&r.reference).await?;
    if let Parsed::Index(index) = manifest::parse(&m.media_type, &m.bytes)? {
        let (os, arch) = host_platform();
        let d = select_platform(&index, os, arch)?;
        m = src.fetch_manifest(&d.digest).await?;
    }
    let layers = erofsd_layers(&m.bytes)?;
    let manifest_hex = manifest::digest_hex(&m.digest)?.to_string();
    let source = ImageSource::Registry {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        reference: r.to_string(),
        manifest_digest: m.digest.clone(),
    };
    let dest = images.join(&manifest_hex);
    if let Some(done) = reuse(&dest, &source)? {
        return Ok(done);
    }
    let tmp = tempfile::Builder::new().prefix(".pull-").tempdir_in(images)?;
    let layer_file = tmp.path().join("bootstrap.layer");
    src.download_blob(layers.bootstrap.hex()?, Some(layers.bootstrap.size), &layer_file).await.context("downloading the bootstrap layer")?;
    finish(tmp, &layer_file, &layers, &source, &dest)
}

fn pull_layout(dir: &Path, tag: &str, images: &Path) -> Result<PathBuf> {
    let layout = OciLayout::open(dir)?;
    let mut desc = layout.resolve(tag)?;
    let mut bytes = layout.read_blob(&desc, MAX_CONFIG)?;
    if let Parsed::Index(index) = manifest::parse(&desc.media_type, &bytes)? {
        let (os, arch) = host_platform();
        desc = select_platform(&index, os, arch)?.clone();
        bytes = layout.read_blob(&desc, MAX_CONFIG)?;
    }
    let layers = erofsd_layers(&bytes)?;
    let blob_dir = std::fs::canonicalize(dir.join("blobs/sha256")).with_context(|| format!("{}/blobs/sha256", dir.display()))?;
    let source = ImageSource::Layout {
        blob_dir,
        reference: format!("oci:{}:{tag}", dir.display()),
        manifest_digest: desc.digest.clone(),
    };
    let dest = images.join(desc.hex()?);
    if let Some(done) = reuse(&dest, &source)? {
        return Ok(done);
    }
    let layer_file = layout.verified_blob(&layers.bootstrap)?;
    let tmp = tempfile::Builder::new().prefix(".pull-").tempdir_in(images)?;
    finish(tmp, &layer_file, &layers, &source, &dest)
}

fn erofsd_layers(manifest: &[u8]) -> Result<ErofsdLayers> {
    let layers = find_erofsd_layers(manifest)?;
    if layers.format != BootstrapFormat::ErofsdV1 {
        bail!("this is a nydus RAFS image; erofsd serves images made by `erofsd convert` (RAFS support is planned)");
    }
    Ok(layers)
}

/// An earlier pull of the same manifest, if complete and from the same source.
fn reuse(dest: &Path, source: &ImageSource) -> Result<Option<PathBuf>> {
    if !dest.join("image.boot").is_file() {
        return Ok(None);
    }
    match ImageSource::read(dest) {
        Ok(Some(s)) if s == *source => Ok(Some(dest.to_path_buf())),
        // Same manifest from elsewhere (another tag, a mirror) or a damaged record: pull anew
        // into a fresh directory and replace it (it is only rebuildable metadata).
        _ => Ok(None),
    }
}

/// Extracts the bootstrap from `layer_file`, checks it names only the manifest's blobs,
/// writes `source.json`, and moves the finished directory to `dest`.
fn finish(tmp: tempfile::TempDir, layer_file: &Path, layers: &ErofsdLayers, source: &ImageSource, dest: &Path) -> Result<PathBuf> {
    let boot = tmp.path().join("image.boot");
    extract_bootstrap_file(layer_file, &boot)?;
    if layer_file.starts_with(tmp.path()) {
        std::fs::remove_file(layer_file)?;
    }
    let bytes = std::fs::read(&boot)?;
    let image = erofs::reader::Image::open(&bytes[..]).context("the pulled bootstrap")?;
    let ids: Vec<String> = image.blobs().map(|b| b.iter().map(|r| r.id_hex()).collect()).unwrap_or_default();
    if ids.is_empty() && !image.devices().is_empty() {
        bail!("the pulled bootstrap has blob devices but no erofsd blob table");
    }
    layers.check_blob_ids(ids.iter().map(String::as_str))?;
    let record = tmp.path().join(SOURCE_FILE);
    std::fs::write(&record, serde_json::to_vec_pretty(source)?)?;
    std::fs::File::open(&record)?.sync_all()?;
    std::fs::File::open(tmp.path())?.sync_all()?;
    let staged = tmp.keep();
    if dest.exists() {
        // A stale or foreign record: move it aside first so the rename below is atomic.
        let old = dest.with_extension(format!("old-{}", std::process::id()));
        std::fs::rename(dest, &old)?;
        let _ = std::fs::remove_dir_all(&old);
    }
    if let Err(e) = std::fs::rename(&staged, dest) {
        let _ = std::fs::remove_dir_all(&staged);
        // Lost a race with a concurrent pull of the same manifest: theirs is as good.
        if dest.join("image.boot").is_file() {
            return Ok(dest.to_path_buf());
        }
        return Err(e).with_context(|| format!("moving the pulled image to {}", dest.display()));
    }
    if let Some(parent) = dest.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(dest.to_path_buf())
}
