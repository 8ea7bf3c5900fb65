//! Starting the core's background prefetcher for a fanotify mount: targets are the blobs'
//! cache files, and a blob the prefetch completes loses its mark like any other.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::listener::Server;
use crate::core::images::Image;
use crate::core::prefetch::{MountPrefetch, PrefetchConfig};

pub fn start(server: &Arc<Server>, cache_dir: &Path, image: &Arc<Image>, image_path: &Path, config: &PrefetchConfig) -> MountPrefetch {
    let (reg, s) = (server.registry.clone(), server.clone());
    MountPrefetch::start(
        &server.rt,
        server.filler.clone(),
        image.clone(),
        image_path,
        Some(cache_dir),
        config,
        Arc::new(move |b| reg.get(&b.id).map(|cf| cf.target.clone())),
        Arc::new(move |t| {
            if let Some(cf) = s.registry.get(&t.blob.id) {
                if s.registry.unmark_if_complete(&cf) {
                    s.metrics.marks_removed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }),
    )
}
