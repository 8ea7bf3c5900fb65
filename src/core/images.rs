//! Images and the blobs they share.
//!
//! An image is what `erofsd build` writes: `image.boot` plus `blobs/`. Loading one parses and
//! validates the bootstrap and resolves each device-table slot to a [`Blob`]. Blobs are shared:
//! two images naming the same blob id get the same `Arc<Blob>` (one set of counters, and in a
//! shared cachefiles domain one cache object).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::blob::Blob;
use super::registry::settings::RegistrySettings;
use super::registry::RegistrySource;
use super::source::{LocalDirSource, SharedSource};
use crate::oci::pull::ImageSource;

/// A loaded, validated image. Its bootstrap's bytes are not kept: an image's metadata can be
/// tens of MB (a Python stack's bootstrap: 31 MB), the fanotify door mounts the file itself,
/// and the fscache door reads it once per bind ([`Image::read_bootstrap`]).
pub struct Image {
    /// sha256 of the bootstrap, hex: a content-derived name (default fsid).
    pub id: String,
    pub bootstrap_path: PathBuf,
    /// Blob per device slot, in device-table order (slot k = device id k + 1).
    pub blobs: Vec<Arc<Blob>>,
}

impl Image {
    /// The bootstrap's bytes, read again from `bootstrap_path` and checked against the image
    /// id: a file changed since the image was loaded is an error, never served.
    pub fn read_bootstrap(&self) -> Result<Vec<u8>> {
        let bytes = std::fs::read(&self.bootstrap_path).with_context(|| format!("reading {}", self.bootstrap_path.display()))?;
        if hex::encode(Sha256::digest(&bytes)) != self.id {
            bail!("bootstrap {} changed since image {} was loaded from it", self.bootstrap_path.display(), self.id);
        }
        Ok(bytes)
    }

    pub fn blob_by_tag(&self, tag: &str) -> Option<&Arc<Blob>> {
        self.blobs.iter().find(|b| b.id == tag)
    }

    /// Reads the last stored byte of every blob from its source, all at once: a blob missing
    /// from its registry (or shorter than the bootstrap says) is an error naming it now,
    /// before anything is mounted, instead of EIO to the first reader. One small request per
    /// blob.
    pub async fn check_sources(&self) -> anyhow::Result<()> {
        let checks = self.blobs.iter().filter(|b| b.record.stored_size > 0).map(|b| async move {
            b.source
                .read_range(&b.id, b.record.stored_size - 1, 1)
                .await
                .map_err(|e| anyhow::anyhow!("blob {} ({} stored bytes) from {}: {e}", b.id, b.record.stored_size, b.source.describe()))
        });
        let failed: Vec<String> = futures_util::future::join_all(checks).await.into_iter().filter_map(|r| r.err().map(|e| format!("{e:#}"))).collect();
        match failed.len() {
            0 => Ok(()),
            n => anyhow::bail!("{n} of {} blob(s) cannot be read: {}", self.blobs.len(), failed.join("; ")),
        }
    }
}

/// How the daemon reaches registries (its `[registry]` settings), for every image loaded from a
/// registry in this process. Process-wide because images are also reloaded by the front-ends'
/// failover paths, which know nothing about registries.
static REGISTRY_SETTINGS: RwLock<Option<RegistrySettings>> = RwLock::new(None);

/// One source per (registry, repository): the token cache and connection pool are shared by
/// every image from that repository.
static REGISTRY_SOURCES: Mutex<Vec<((String, String), SharedSource)>> = Mutex::new(Vec::new());

pub fn set_registry_settings(settings: RegistrySettings) {
    *REGISTRY_SETTINGS.write().expect("registry settings") = Some(settings);
    REGISTRY_SOURCES.lock().expect("registry sources").clear();
}

fn remote_source(pulled: &ImageSource) -> Result<SharedSource> {
    match pulled {
        ImageSource::Layout { blob_dir, .. } => Ok(Arc::new(LocalDirSource::new(blob_dir))),
        ImageSource::Registry { registry, repository, .. } => {
            let key = (registry.clone(), repository.clone());
            let mut sources = REGISTRY_SOURCES.lock().expect("registry sources");
            if let Some((_, s)) = sources.iter().find(|(k, _)| *k == key) {
                return Ok(s.clone());
            }
            let settings = REGISTRY_SETTINGS.read().expect("registry settings").clone().unwrap_or_default();
            let cfg = settings.config_for(registry, repository)?;
            let source: SharedSource = Arc::new(RegistrySource::new(cfg)?);
            sources.push((key, source.clone()));
            Ok(source)
        }
    }
}

/// Upper bound on a bootstrap we load into memory (a 4 GB image's metadata is a few MB).
pub const MAX_BOOTSTRAP: u64 = 1 << 30;

#[derive(Default)]
pub struct ImageStore {
    blobs: Mutex<HashMap<String, Weak<Blob>>>,
}

impl ImageStore {
    pub fn new() -> ImageStore {
        ImageStore::default()
    }

    /// Loads an image directory (or a bootstrap file whose blobs are in `blob_dir`). A
    /// directory pulled by `erofsd mount <reference>` names its blob source in `source.json`
    /// (see `oci::pull`); any other takes its blobs from `blobs/` beside the bootstrap.
    pub fn load_dir(&self, image: &Path) -> Result<Arc<Image>> {
        if image.is_dir() {
            if let Some(pulled) = ImageSource::read(image)? {
                return self.load(&image.join("image.boot"), remote_source(&pulled)?);
            }
        }
        let (boot, blob_dir) = if image.is_dir() {
            (image.join("image.boot"), image.join("blobs"))
        } else {
            (image.to_path_buf(), image.parent().unwrap_or(Path::new(".")).join("blobs"))
        };
        let source: SharedSource = Arc::new(LocalDirSource::new(&blob_dir));
        self.load(&boot, source)
    }

    /// Loads the bootstrap at `boot`, taking blob bytes from `source`.
    pub fn load(&self, boot: &Path, source: SharedSource) -> Result<Arc<Image>> {
        let meta = std::fs::metadata(boot).with_context(|| format!("image bootstrap {}", boot.display()))?;
        if meta.len() > MAX_BOOTSTRAP {
            bail!("bootstrap {} is {} bytes, over the {} limit", boot.display(), meta.len(), MAX_BOOTSTRAP);
        }
        let bytes = std::fs::read(boot).with_context(|| format!("reading {}", boot.display()))?;
        self.from_bytes(boot, bytes, source)
    }

    pub fn from_bytes(&self, boot: &Path, bytes: Vec<u8>, source: SharedSource) -> Result<Arc<Image>> {
        let id = hex::encode(Sha256::digest(&bytes));
        let reader = erofs::reader::Image::open(&bytes[..]).with_context(|| format!("bootstrap {}", boot.display()))?;
        if reader.blobs().is_none() && erofs::rafs::is_rafs_v6(&bytes) {
            let blobs = self.load_rafs_blobs(&bytes, reader.devices(), &source).with_context(|| format!("nydus bootstrap {}", boot.display()))?;
            return Ok(Arc::new(Image { id, bootstrap_path: boot.into(), blobs }));
        }
        let Some(records) = reader.blobs() else {
            if reader.devices().is_empty() {
                return Ok(Arc::new(Image { id, bootstrap_path: boot.into(), blobs: Vec::new() }));
            }
            bail!(
                "bootstrap {} has {} blob devices but no erofsd blob table (not built by `erofsd build`)",
                boot.display(),
                reader.devices().len()
            );
        };
        let mut blobs = Vec::with_capacity(records.len());
        let mut shared = self.blobs.lock().expect("blob map lock");
        shared.retain(|_, w| w.strong_count() > 0);
        for rec in records {
            let hex = rec.id_hex();
            let blob = match shared.get(&hex).and_then(Weak::upgrade) {
                Some(b) if b.record == *rec => b,
                Some(_) => bail!("blob {hex} is described differently by two loaded bootstraps"),
                None => {
                    let b = Blob::new(rec.clone(), source.clone()).with_context(|| format!("blob {hex}"))?;
                    shared.insert(hex, Arc::downgrade(&b));
                    b
                }
            };
            blobs.push(blob);
        }
        drop(shared);
        Ok(Arc::new(Image { id, bootstrap_path: boot.into(), blobs }))
    }

    /// Resolves the device slots of a nydus RAFS v6 bootstrap to blobs: parses its blob table,
    /// reads each blob's meta (CI table + header, at `ci_offset` inside the blob, or for a zran
    /// blob inside the separate meta blob the table names) through `source` and checks it, so
    /// every chunk offset the fill engine later uses is trusted.
    fn load_rafs_blobs(&self, boot: &[u8], devices: &[erofs::ondisk::DeviceSlot], source: &SharedSource) -> Result<Vec<Arc<Blob>>> {
        let table = erofs::rafs::parse_blob_table(boot, devices.len())?;
        let mut blobs = Vec::with_capacity(table.len());
        for (k, (rb, slot)) in table.iter().zip(devices).enumerate() {
            if slot.tag[..] != *rb.id.as_bytes() {
                bail!("device slot {k} names {:?}, the blob table {}", String::from_utf8_lossy(&slot.tag), rb.id);
            }
            if slot.blocks as u64 * 4096 != rb.uncompressed_size {
                bail!("device slot {k}: {} blocks for a {}-byte blob", slot.blocks, rb.uncompressed_size);
            }
            if let Some(b) = self.blobs.lock().expect("blob map lock").get(&rb.id).and_then(Weak::upgrade) {
                if b.chunk_compressor != Some(rb.compressor) || b.size() != rb.uncompressed_size {
                    bail!("blob {} is described differently by two loaded bootstraps", rb.id);
                }
                blobs.push(b);
                continue;
            }
            let meta = match rb.meta_blob() {
                None => read_blocking(source, &rb.id, rb.meta_range()).with_context(|| format!("reading the blob meta of {}", rb.id))?,
                Some((meta_id, meta_size)) => {
                    // zran: the data blob is the gzip layer; its meta is a separate nydus blob,
                    // read whole (it is small) and checked against its id before it is trusted.
                    let whole = read_blocking(source, &meta_id, 0..meta_size)
                        .with_context(|| format!("reading meta blob {meta_id} of zran blob {}", rb.id))?;
                    let got = hex::encode(Sha256::digest(&whole));
                    if got != meta_id {
                        bail!("meta blob {meta_id} of zran blob {} has sha256 {got}", rb.id);
                    }
                    let r = rb.meta_range();
                    whole[r.start as usize..r.end as usize].to_vec()
                }
            };
            let mut parsed = erofs::rafs::read_blob_meta(rb, &meta)?;
            let digests = erofs::rafs::apply_chunk_digests(boot, rb, &mut parsed.chunks)?;
            if rb.is_zran() && digests != parsed.chunks.len() {
                // Nothing else ties a zran chunk's inflated bytes to the image (DEFLATE has no
                // checksum of its own); nydus writes the table today, but it is optional.
                tracing::warn!(
                    "zran blob {}: the bootstrap's chunk table gives digests for {digests} of {} chunks; the others are served unverified",
                    rb.id,
                    parsed.chunks.len()
                );
            } else if digests == 0 && !parsed.chunks.is_empty() {
                // A merged bootstrap may leave out chunks no file uses any more, so only a blob
                // with no digest at all is worth a word: no table, or an algorithm not stated
                // unambiguously (erofs::rafs::apply_chunk_digests).
                tracing::warn!(
                    "blob {}: the bootstrap's chunk table gives no usable digest for its {} chunks (no table, or \
                     the superblock flags and the blob table do not agree on the algorithm); they are checked only \
                     by their decompression",
                    rb.id,
                    parsed.chunks.len()
                );
            }
            let b = Blob::new_nydus(rb, parsed, source.clone()).with_context(|| format!("blob {}", rb.id))?;
            self.blobs.lock().expect("blob map lock").insert(rb.id.clone(), Arc::downgrade(&b));
            blobs.push(b);
        }
        Ok(blobs)
    }
}

/// Reads `range` of blob `id` from `source` from synchronous code that may itself run on a
/// runtime worker. On a multi-thread runtime the read runs on that runtime (a registry
/// source's connection pool belongs to it); otherwise on a helper thread with its own small
/// runtime.
fn read_blocking(source: &SharedSource, id: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let len = range.end - range.start;
    if let Ok(h) = Handle::try_current() {
        if h.runtime_flavor() == RuntimeFlavor::MultiThread {
            let bytes = tokio::task::block_in_place(|| h.block_on(source.read_range(id, range.start, len)))?;
            if bytes.len() as u64 != len {
                bail!("short read: {} of {len} bytes", bytes.len());
            }
            return Ok(bytes);
        }
    }
    let (source, id) = (source.clone(), id.to_string());
    let got = std::thread::scope(|s| {
        s.spawn(move || -> Result<Vec<u8>> {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            Ok(rt.block_on(source.read_range(&id, range.start, range.end - range.start))?)
        })
        .join()
    });
    let bytes = got.map_err(|_| anyhow::anyhow!("blob meta reader thread panicked"))??;
    if bytes.len() as u64 != range.end - range.start {
        bail!("short read: {} of {} bytes", bytes.len(), range.end - range.start);
    }
    Ok(bytes)
}
