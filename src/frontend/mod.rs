//! Kernel front-ends: the two doors through which the kernel asks for blob data.
//!
//! Each front-end turns kernel requests (cachefiles READ messages, fanotify pre-access events)
//! into [`crate::core::fill::Filler::fill`] calls and answers the kernel. Everything else —
//! images, blobs, sources, verification — is the core's.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use crate::core::images::Image;
use crate::core::source::BoxFuture;

/// What `erofsd mount` asks the daemon for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MountRequest {
    /// An image directory (`image.boot` + `blobs/`) or a bootstrap file. Filled in by the
    /// daemon when `reference` is given.
    #[serde(default)]
    pub image: PathBuf,
    /// A registry reference or `oci:DIR[:tag]` of an image made by `erofsd convert`: the
    /// daemon pulls its bootstrap and fetches blobs from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub mountpoint: PathBuf,
    /// cachefiles `fsid=`; defaults to the image id (sha256 of the bootstrap).
    #[serde(default)]
    pub fsid: Option<String>,
    /// cachefiles `domain_id=`: images in one domain share blob cache objects.
    #[serde(default)]
    pub domain_id: Option<String>,
    /// Background prefetch for this mount; `None`: the daemon's `[prefetch] mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch: Option<crate::core::prefetch::PrefetchMode>,
    /// Prefetch cap in stored bytes per second (0 = unlimited); `None`: the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch_bandwidth: Option<u64>,
    /// Prefetch requests on the wire at once; `None`: the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetch_in_flight: Option<usize>,
}

impl MountRequest {
    /// The daemon's prefetch settings with this request's overrides.
    pub fn prefetch_config(&self, daemon: &crate::core::prefetch::PrefetchConfig) -> crate::core::prefetch::PrefetchConfig {
        let mut c = daemon.clone();
        if let Some(m) = self.prefetch {
            c.mode = m;
        }
        if let Some(b) = self.prefetch_bandwidth {
            c.bandwidth = crate::core::prefetch::ByteSize(b);
        }
        if let Some(n) = self.prefetch_in_flight {
            c.max_in_flight = n.max(1);
        }
        c
    }
}

/// A mount the daemon serves.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub image: PathBuf,
    pub image_id: String,
    pub fsid: String,
    pub domain_id: Option<String>,
    pub frontend: String,
}

pub trait Frontend: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Mounts `image` at `req.mountpoint` and serves it until [`Frontend::umount`].
    fn mount(&self, image: Arc<Image>, req: MountRequest) -> BoxFuture<'_, Result<MountInfo>>;

    /// Unmounts a mount this front-end made and releases what only it used.
    fn umount(&self, mountpoint: PathBuf) -> BoxFuture<'_, Result<()>>;

    /// Stops serving: every mount is unmounted before the kernel channel closes, so no reader
    /// can be left facing unfilled ranges.
    fn shutdown(&self) -> BoxFuture<'_, ()>;

    /// Front-end counters for `GET /api/v1/metrics` (requests seen, served, failed, …).
    fn metrics(&self) -> serde_json::Value;

    /// Mounts a previous daemon made that this one took over after a crash (failover); the
    /// daemon lists them and accepts `umount` for them.
    fn recovered(&self) -> Vec<(MountInfo, Arc<Image>)> {
        Vec::new()
    }

    /// Whether a mount of this front-end uses a cache entry (`erofsd cache`, the size limit).
    /// Default: yes — what a front-end cannot vouch for is never evicted.
    fn cache_in_use(&self, _cache_dir: &Path, _entry: &crate::cache::CacheEntry) -> bool {
        true
    }

    /// Sets `in_use` of every entry; front-ends that ask the kernel batch it.
    fn cache_in_use_all(&self, cache_dir: &Path, entries: &mut [crate::cache::CacheEntry]) {
        for e in entries {
            e.in_use = self.cache_in_use(cache_dir, e);
        }
    }

    /// Evicts a cache entry no mount uses, atomically with respect to new mounts taking it;
    /// `Ok(false)` if it is in use. Default: never evicts.
    fn cache_evict(&self, _cache_dir: &Path, _entry: &crate::cache::CacheEntry) -> Result<bool> {
        Ok(false)
    }
}

/// Which front-end to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FrontendKind {
    /// fanotify where this kernel supports it, else cachefiles.
    Auto,
    Cachefiles,
    Fanotify,
}

/// Canonical mountpoint key (mounts are looked up by the path the user gave, made absolute).
pub fn mount_key(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf())
}

pub mod cachefiles;
pub mod fanotify;
pub mod kernel;

/// What `erofsd doctor` and `--frontend auto` learn about one front-end.
#[derive(Clone, Debug, Serialize)]
pub struct Support {
    pub usable: bool,
    /// Plain-language findings: what is present, what is missing and how to get it.
    pub details: Vec<String>,
}

/// Starts the front-end `kind` names; `Auto` takes fanotify where usable, else cachefiles.
pub fn start(
    kind: FrontendKind,
    config: &crate::daemon::config::Config,
    filler: crate::core::fill::Filler,
) -> Result<Arc<dyn Frontend>> {
    match kind {
        FrontendKind::Cachefiles => cachefiles::start(config, filler),
        FrontendKind::Fanotify => fanotify::start(config, filler),
        FrontendKind::Auto => {
            let fan = fanotify::probe::probe_in(&config.cache_dir);
            if fan.usable {
                return fanotify::start(config, filler);
            }
            let cf = cachefiles::probe::probe_in(&config.cache_dir);
            if cf.usable {
                return cachefiles::start(config, filler);
            }
            anyhow::bail!(
                "no kernel front-end is usable here (run `erofsd doctor`):\n  fanotify: {}\n  cachefiles: {}",
                fan.details.join("; "),
                cf.details.join("; ")
            )
        }
    }
}
