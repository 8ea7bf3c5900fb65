//! The fill engine: make a byte range of a target hold verified blob data.
//!
//! A *target* is where one blob's address space is materialised for the kernel: a cachefiles
//! object (written through its anon fd) or a sparse cache file under a fanotify mark. Front-ends
//! translate kernel requests into [`Filler::fill`] calls and answer the kernel when it returns:
//! `Ok` means every byte of the range is in the target; `Err` means the reader must get EIO.
//!
//! Rules the engine keeps:
//! * work in whole groups (the unit of storage and verification), so ranges are widened;
//! * a group already in the target is never fetched again ([`Readiness`]);
//! * a group being fetched for one request is awaited, not fetched again, by any other
//!   (single flight per target and group);
//! * the groups a request still needs are fetched as contiguous runs, one source request each;
//! * the work runs in its own task: a front-end that gives up (a killed reader) does not leave
//!   other waiters hanging on a half-done fetch.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Semaphore};
use tracing::warn;

use super::blob::{Blob, FetchError};
use super::readahead::ReadAheadState;
use super::readiness::Readiness;
use super::writer::Writer;

type Outcome = Option<Result<(), Arc<str>>>;

/// One blob's address space, materialised in one file the kernel reads.
pub struct Target {
    pub blob: Arc<Blob>,
    fd: Arc<OwnedFd>,
    ready: Readiness,
    inflight: Mutex<HashMap<u32, watch::Receiver<Outcome>>>,
    read_ahead: ReadAheadState,
}

impl Target {
    /// `fd` must be writable at any offset of the blob's address space.
    pub fn new(blob: Arc<Blob>, fd: OwnedFd) -> Arc<Target> {
        let groups = blob.map.group_count() as usize;
        Arc::new(Target {
            blob,
            fd: Arc::new(fd),
            ready: Readiness::new(groups),
            inflight: Mutex::new(HashMap::new()),
            read_ahead: ReadAheadState::new(groups),
        })
    }

    /// Learns which groups the file already holds (after a restart, or a re-opened object).
    pub fn scan_ready(&self) -> std::io::Result<usize> {
        self.ready.scan(self.fd.as_fd(), self.blob.map.group_size(), self.blob.size())
    }

    pub fn readiness(&self) -> &Readiness {
        &self.ready
    }

    pub fn read_ahead_state(&self) -> &ReadAheadState {
        &self.read_ahead
    }

    pub fn fd(&self) -> &Arc<OwnedFd> {
        &self.fd
    }

    /// True if every group overlapping `[offset, offset + len)` is already in the target.
    pub fn is_ready(&self, offset: u64, len: u64) -> bool {
        match self.clamp(offset, len) {
            None => true,
            Some((off, len)) => match self.blob.map.map(off, len) {
                Ok(run) => self.ready.all_ready(run.first as usize, run.last as usize),
                Err(_) => false,
            },
        }
    }

    /// Clamps a request to the address space; `None` if nothing of it lies inside.
    fn clamp(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let size = self.blob.size();
        if len == 0 || offset >= size {
            return None;
        }
        Some((offset, len.min(size - offset)))
    }
}

/// Removes this request's in-flight claims if its task ends without resolving them.
struct Claims {
    target: Arc<Target>,
    groups: Vec<(u32, watch::Sender<Outcome>)>,
}

impl Claims {
    fn resolve(&mut self, group: u32, result: Result<(), Arc<str>>) {
        if let Some(pos) = self.groups.iter().position(|(g, _)| *g == group) {
            let (g, tx) = self.groups.swap_remove(pos);
            if result.is_ok() {
                self.target.ready.set_ready(g as usize);
            }
            self.target.inflight.lock().expect("inflight lock").remove(&g);
            let _ = tx.send(Some(result));
        }
    }
}

impl Drop for Claims {
    fn drop(&mut self) {
        let left: Vec<u32> = self.groups.iter().map(|(g, _)| *g).collect();
        for g in left {
            self.resolve(g, Err(Arc::from("fill abandoned")));
        }
    }
}

/// Shared by all front-ends; cheap to clone.
#[derive(Clone)]
pub struct Filler {
    writer: Writer,
    /// Bounds concurrent source requests so a read storm cannot open unbounded connections.
    fetch_slots: Arc<Semaphore>,
}

impl Filler {
    pub fn new(writer: Writer, max_concurrent_fetches: usize) -> Filler {
        Filler { writer, fetch_slots: Arc::new(Semaphore::new(max_concurrent_fetches.max(1))) }
    }

    /// Makes `[offset, offset + len)` of `target` hold verified data (widened to whole groups).
    pub async fn fill(&self, target: &Arc<Target>, offset: u64, len: u64) -> Result<(), FetchError> {
        let Some((offset, len)) = target.clamp(offset, len) else { return Ok(()) };
        let run = target
            .blob
            .map
            .map(offset, len)
            .map_err(|source| FetchError::Verify { blob: target.blob.id.clone(), source })?;

        let mut claims = Claims { target: target.clone(), groups: Vec::new() };
        let mut waits = Vec::new();
        {
            let mut inflight = target.inflight.lock().expect("inflight lock");
            for g in run.first..=run.last {
                if target.ready.is_ready(g as usize) {
                    continue;
                }
                if let Some(rx) = inflight.get(&g) {
                    waits.push(rx.clone());
                } else {
                    let (tx, rx) = watch::channel(None);
                    inflight.insert(g, rx);
                    claims.groups.push((g, tx));
                }
            }
        }

        let mut first_error: Option<String> = None;
        if !claims.groups.is_empty() {
            let this = self.clone();
            let work = tokio::spawn(async move { this.fetch_claimed(claims).await });
            match work.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => first_error = Some(e.to_string()),
                Err(e) => first_error = Some(format!("fill task failed: {e}")),
            }
        }
        for mut rx in waits {
            let outcome = loop {
                if let Some(r) = rx.borrow().clone() {
                    break r;
                }
                if rx.changed().await.is_err() {
                    break rx.borrow().clone().unwrap_or_else(|| Err(Arc::from("fill abandoned")));
                }
            };
            if let Err(e) = outcome {
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(FetchError::Other(e)),
        }
    }

    /// Fetches the claimed groups as contiguous runs, concurrently, and writes them.
    async fn fetch_claimed(&self, mut claims: Claims) -> Result<(), FetchError> {
        let runs = runs_of(&claims);
        let target = claims.target.clone();
        let mut tasks = Vec::new();
        for &(first, last) in &runs {
            let this = self.clone();
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let _slot = this.fetch_slots.acquire().await.expect("fetch semaphore");
                let bufs = target.blob.fetch_groups(first, last).await?;
                let mut results = Vec::with_capacity(bufs.len());
                for (i, buf) in bufs.into_iter().enumerate() {
                    let g = first + i as u32;
                    let at = target.blob.map.group_range(g).start;
                    let r = this.writer.write_all_at(target.fd.clone(), buf, at).await;
                    results.push((g, r));
                }
                Ok::<_, FetchError>(results)
            }));
        }
        let mut first_error = None;
        for (task, (first, last)) in tasks.into_iter().zip(runs) {
            match task.await {
                Ok(Ok(results)) => {
                    for (g, r) in results {
                        match r {
                            Ok(()) => claims.resolve(g, Ok(())),
                            Err(e) => {
                                let err = FetchError::Write { blob: target.blob.id.clone(), source: e };
                                warn!("{err}");
                                claims.resolve(g, Err(Arc::from(err.to_string())));
                                first_error.get_or_insert(err);
                            }
                        }
                    }
                }
                Ok(Err(err)) => {
                    warn!("{err}");
                    let msg: Arc<str> = Arc::from(err.to_string());
                    for g in first..=last {
                        claims.resolve(g, Err(msg.clone()));
                    }
                    first_error.get_or_insert(err);
                }
                Err(e) => {
                    let msg: Arc<str> = Arc::from(format!("fetch task failed: {e}"));
                    for g in first..=last {
                        claims.resolve(g, Err(msg.clone()));
                    }
                    first_error.get_or_insert(FetchError::Other(msg.to_string()));
                }
            }
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }
}

/// The claimed groups as sorted, contiguous (first, last) runs.
fn runs_of(claims: &Claims) -> Vec<(u32, u32)> {
    let mut groups: Vec<u32> = claims.groups.iter().map(|(g, _)| *g).collect();
    groups.sort_unstable();
    let mut runs: Vec<(u32, u32)> = Vec::new();
    for g in groups {
        match runs.last_mut() {
            Some((_, last)) if *last + 1 == g => *last = g,
            _ => runs.push((g, g)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;
    use super::*;
    use crate::core::source::LocalDirSource;
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_fills_fetch_each_group_once_and_write_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(64); // 256 KiB = 4 groups of 64 KiB
        let rec = store(dir.path(), &data);
        let blob = Blob::new(rec, Arc::new(LocalDirSource::new(dir.path()))).unwrap();
        let (target, file) = sparse_target(dir.path(), &blob);
        let filler = Filler::new(Writer::start(), 8);

        // 16 requests for overlapping ranges at once.
        let mut tasks = Vec::new();
        for i in 0..16u64 {
            let (f, t) = (filler.clone(), target.clone());
            tasks.push(tokio::spawn(async move { f.fill(&t, (i % 4) * 70_000, 5000).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 4, "each group decoded once");
        let mut back = vec![0u8; data.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back == data, "target holds the address space");
        assert!(target.readiness().is_complete());

        // Already filled: no new fetch.
        let requests = blob.stats.requests.load(Ordering::Relaxed);
        filler.fill(&target, 0, data.len() as u64).await.unwrap();
        assert_eq!(blob.stats.requests.load(Ordering::Relaxed), requests);
        assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 4);

        // A fresh Target over the same file learns readiness from the file itself.
        let again = Target::new(blob.clone(), file.try_clone().unwrap().into());
        assert_eq!(again.scan_ready().unwrap(), 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partial_fill_fetches_only_the_groups_it_touches() {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(64);
        let rec = store(dir.path(), &data);
        let blob = Blob::new(rec.clone(), Arc::new(LocalDirSource::new(dir.path()))).unwrap();
        let (target, file) = sparse_target(dir.path(), &blob);
        let filler = Filler::new(Writer::start(), 8);
        filler.fill(&target, 65536 + 100, 10).await.unwrap();
        assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 1);
        assert_eq!(blob.stats.stored_bytes.load(Ordering::Relaxed), rec.groups[1].stored_len as u64);
        let mut back = vec![0u8; 65536];
        file.read_exact_at(&mut back, 65536).unwrap();
        assert!(back == data[65536..131072]);
        assert!(target.is_ready(65536, 65536) && !target.is_ready(0, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn corrupt_or_missing_blob_is_an_error_and_leaves_the_range_unfilled() {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(32);
        let rec = store(dir.path(), &data);
        // Flip one stored byte inside group 0.
        let path = dir.path().join(rec.id_hex());
        let mut stored = std::fs::read(&path).unwrap();
        stored[rec.groups[0].stored_len as usize / 2] ^= 0x55;
        std::fs::write(&path, &stored).unwrap();
        let blob = Blob::new(rec.clone(), Arc::new(LocalDirSource::new(dir.path()))).unwrap();
        let (target, file) = sparse_target(dir.path(), &blob);
        let filler = Filler::new(Writer::start(), 8);
        assert!(filler.fill(&target, 0, 4096).await.is_err());
        assert!(!target.is_ready(0, 4096));
        let mut back = vec![1u8; 4096];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back.iter().all(|&b| b == 0), "nothing was written for the bad group");
        // Group 1 is intact and still serves.
        filler.fill(&target, 65536, 4096).await.unwrap();

        std::fs::remove_file(&path).unwrap();
        let blob2 = Blob::new(rec, Arc::new(LocalDirSource::new(dir.path()))).unwrap();
        let (t2, _f) = sparse_target(dir.path(), &blob2);
        let err = filler.fill(&t2, 0, 1).await.unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::tests_support::*;
    use super::*;
    use crate::core::readahead::ReadAheadPolicy;
    use std::sync::atomic::Ordering;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_requests_fill_the_window_ahead_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(64); // 4 groups of 64 KiB
        let rec = store(dir.path(), &data);
        let blob = Blob::new(rec, Arc::new(crate::core::source::LocalDirSource::new(dir.path()))).unwrap();
        let (target, _file) = sparse_target(dir.path(), &blob);
        let filler = Filler::new(Writer::start(), 8);
        let policy = ReadAheadPolicy { window: 128 << 10, piece: 64 << 10, slack: 64 << 10, require_filled_behind: false };
        let rt = tokio::runtime::Handle::current();
        // The first request has no predecessor: no read-ahead.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 0, 4096, || {}), 0);
        // A random jump: none.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 200_000, 4096, || {}), 0);
        // Continuing at 4096 after 0..4096 would be sequential, but 200_000 was last: reset first.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 0, 4096, || {}), 0);
        // Sequential: groups 1 and 2 (the 128 KiB after the request) are started, once.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 4096, 4096, || {}), 2);
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 8192, 4096, || {}), 0, "already requested");
        for _ in 0..200 {
            if target.readiness().ready_count() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(target.readiness().is_ready(1) && target.readiness().is_ready(2));
        assert!(!target.readiness().is_ready(0) && !target.readiness().is_ready(3));
        assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 2);
    }
}

#[cfg(test)]
mod tests_support {
    use super::*;
    use erofs::blob::{encode_blob, BlobRecord, Compression};

    const GS_LOG2: u8 = 16;

    /// Address space of `pages` pages: half compressible text, half noise.
    pub fn address_space(pages: usize) -> Vec<u8> {
        let mut x = 0x1234_5678_9abc_def0u64;
        (0..pages * 4096)
            .map(|i| {
                if (i / 65536) % 2 == 0 {
                    b"erofsd fill engine "[i % 19]
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                }
            })
            .collect()
    }

    /// Stores `data` as a zstd blob in `dir`; returns its record.
    pub fn store(dir: &std::path::Path, data: &[u8]) -> BlobRecord {
        let (stored, rec) = encode_blob(data, Compression::Zstd, GS_LOG2).unwrap();
        std::fs::write(dir.join(rec.id_hex()), &stored).unwrap();
        rec
    }

    pub fn sparse_target(dir: &std::path::Path, blob: &Arc<Blob>) -> (Arc<Target>, std::fs::File) {
        let path = dir.join("target");
        let f = std::fs::OpenOptions::new().create(true).read(true).write(true).open(&path).unwrap();
        f.set_len(blob.size()).unwrap();
        let fd: OwnedFd = f.try_clone().unwrap().into();
        (Target::new(blob.clone(), fd), f)
    }

}
