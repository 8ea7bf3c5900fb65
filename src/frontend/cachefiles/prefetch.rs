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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;

    use cachefiles::wire::build;

    use super::super::tests::{anon_file, command, send, standin, wait_for};
    use super::*;
    use crate::core::prefetch::PrefetchMode;

    /// A blobs-mode prefetch finds the blob object the (stand-in) kernel opened, learns what it
    /// already holds, and fills the rest.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blobs_prefetch_fills_the_opened_blob_object() {
        let dir = tempfile::tempdir().unwrap();
        let (out, image, shared, peer) = standin(dir.path());
        let blob = image.blobs[0].clone();
        let (handle, stop) = super::super::reader::spawn(shared.clone()).unwrap();
        let (_boot_file, boot_fd) = anon_file(dir.path(), "boot");
        send(&peer, &build::open(1, 10, b"erofs,img1", b"img1", boot_fd));
        command(&peer);
        let (blob_file, blob_fd) = anon_file(dir.path(), "blob");
        send(&peer, &build::open(2, 11, b"erofs,img1", blob.id.as_bytes(), blob_fd));
        assert_eq!(command(&peer), format!("copen 2,{}", blob.size()));

        let config = PrefetchConfig { mode: PrefetchMode::Blobs, ..Default::default() };
        let p = start(&shared, &dir.path().join("cache"), &image, &out, &config);
        wait_for("prefetch", || p.progress.done.load(Ordering::Acquire));
        let groups = blob.map.group_count();
        assert_eq!(p.progress.groups.load(Ordering::Relaxed), groups as u64);
        assert_eq!(blob.stats.prefetch_groups.load(Ordering::Relaxed), groups as u64);
        for g in 0..groups {
            let want = blob.fetch_groups(g, g).await.unwrap();
            let mut got = vec![0u8; want[0].len()];
            blob_file.read_exact_at(&mut got, blob.map.group_range(g).start).unwrap();
            assert!(got[..] == want[0][..], "group {g}");
        }
        p.stop();
        stop.stop();
        handle.join().unwrap();
    }
}
