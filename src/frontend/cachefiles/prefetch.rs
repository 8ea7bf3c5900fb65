//! Starting the core's background prefetcher for a cachefiles mount: targets are the blob
//! objects the kernel opened for the mount. An object's readiness is learned from its cache
//! file before prefetch touches it (as the first READ does), so a warm cache is not refetched.

use std::path::Path;
use std::sync::Arc;

use super::objects::Kind;
use super::serve::Shared;
use crate::core::images::Image;
use crate::core::prefetch::{MountPrefetch, PrefetchConfig};

pub fn start(shared: &Arc<Shared>, cache_dir: &Path, image: &Arc<Image>, image_path: &Path, config: &PrefetchConfig) -> MountPrefetch {
    let s = shared.clone();
    MountPrefetch::start(
        &shared.rt,
        shared.filler.clone(),
        image.clone(),
        image_path,
        Some(cache_dir),
        config,
        Arc::new(move |b| {
            let obj = s.objects.blob(&b.id)?;
            let Kind::Blob { target } = &obj.kind else { return None };
            if obj.scanned.get().is_none() {
                // Right after copen the backing file may not be set yet (ENOBUFS): try later.
                target.scan_ready().ok()?;
                let _ = obj.scanned.set(());
            }
            Some(target.clone())
        }),
        Arc::new(|_| {}),
    )
}
