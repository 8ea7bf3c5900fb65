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

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::warn;

use erofs::blob::GroupMap;

use super::aligned::AlignedBuf;
use super::blob::{Blob, FetchError};
use super::background::BackgroundThreads;
use super::source::MAX_RANGE;
use super::readahead::ReadAheadState;
use super::readiness::Readiness;
use super::trace::TraceLog;
use super::writer::{pwrite_all, Writer, MAX_IOVECS};

type Outcome = Option<Result<(), Arc<str>>>;

/// How filled groups reach a target's file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePath {
    /// Through the shared io_uring ([`Writer`]): cachefiles anon fds, whose writes go to the
    /// backing file with O_DIRECT and can wait on the disk.
    Ring,
    /// `pwrite` on the thread that read and decoded the group: sparse cache files written
    /// through the page cache (fanotify), where a write is a memory copy and handing it to
    /// the ring costs more (a thread hop there and an io-wq worker, since buffered ext4
    /// writes cannot complete inline in io_uring) than the copy itself.
    OnFillThread,
}

/// One blob's address space, materialised in one file the kernel reads.
pub struct Target {
    pub blob: Arc<Blob>,
    fd: Arc<OwnedFd>,
    write_path: WritePath,
    pub(super) ready: Readiness,
    pub(super) inflight: Mutex<HashMap<u32, watch::Receiver<Outcome>>>,
    read_ahead: ReadAheadState,
    trace: TraceLog,
}

impl Target {
    /// A target written through the io_uring ([`WritePath::Ring`]). `fd` must be writable at
    /// any offset of the blob's address space.
    pub fn new(blob: Arc<Blob>, fd: OwnedFd) -> Arc<Target> {
        Target::with_write_path(blob, fd, WritePath::Ring)
    }

    pub fn with_write_path(blob: Arc<Blob>, fd: OwnedFd, write_path: WritePath) -> Arc<Target> {
        let groups = blob.map.group_count() as usize;
        Arc::new(Target {
            blob,
            fd: Arc::new(fd),
            write_path,
            ready: Readiness::new(groups),
            inflight: Mutex::new(HashMap::new()),
            read_ahead: ReadAheadState::new(groups),
            trace: TraceLog::new(groups),
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

    /// Groups on-demand fills asked for, in first-access order ([`super::trace`]).
    pub fn trace(&self) -> &TraceLog {
        &self.trace
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
pub(super) struct Claims {
    pub(super) target: Arc<Target>,
    pub(super) groups: Vec<(u32, watch::Sender<Outcome>)>,
}

impl Claims {
    pub(super) fn resolve(&mut self, group: u32, result: Result<(), Arc<str>>) {
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
    pub(super) writer: Writer,
    /// Bounds concurrent source requests so a read storm cannot open unbounded connections.
    pub(super) fetch_slots: Arc<Semaphore>,
    /// Demand fetches (on-demand and read-ahead) waiting for a fetch slot: prefetch holds
    /// back while this is non-zero ([`super::prefetch`]).
    pub(super) demand_waiting: Arc<std::sync::atomic::AtomicUsize>,
    /// Read-ahead pieces from a free source (local blobs) that may run at once: one per CPU.
    /// Such a piece is CPU work (decode, CRC, copy); more of them at once only share the CPUs,
    /// so the piece the reader needs next would finish no sooner than the last one queued
    /// ([`Filler::read_ahead`] queues them nearest first). A piece holds its slot until it is
    /// decoded, not through its write ([`CpuSlot`]).
    pub(super) read_ahead_slots: Arc<Semaphore>,
    /// Speculative neighbourhood fetches from costly sources that may be in flight at once
    /// ([`Filler::read_ahead`]): a miss finding none free speculates no further.
    pub(super) speculation_slots: Arc<Semaphore>,
    /// Where read-ahead pieces of [`WritePath::OnFillThread`] targets from local blobs run: at
    /// the lowest CPU priority, one thread per read-ahead slot.
    background: Arc<BackgroundThreads>,
}

/// A read-ahead piece's CPU slot ([`Filler::read_ahead_slots`]) while the piece is filled,
/// given back as soon as its groups are decoded: the write that follows (direct I/O for a
/// cachefiles object) waits on the disk, not on a CPU, and the next piece can decode meanwhile.
#[derive(Clone, Default)]
pub(super) struct CpuSlot(Arc<Mutex<Option<OwnedSemaphorePermit>>>);

impl CpuSlot {
    pub(super) fn holding(permit: Option<OwnedSemaphorePermit>) -> CpuSlot {
        CpuSlot(Arc::new(Mutex::new(permit)))
    }

    fn release(&self) {
        self.0.lock().expect("cpu slot").take();
    }
}

/// Who asks for a fill. On-demand fills (a kernel request a reader waits on) are traced;
/// read-ahead serves a live reader too, so both count as demand for the prefetch gate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    OnDemand,
    ReadAhead,
}

impl Filler {
    pub fn new(writer: Writer, max_concurrent_fetches: usize) -> Filler {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        Filler {
            writer,
            fetch_slots: Arc::new(Semaphore::new(max_concurrent_fetches.max(1))),
            demand_waiting: Default::default(),
            read_ahead_slots: Arc::new(Semaphore::new(cpus)),
            speculation_slots: Arc::new(Semaphore::new(SPECULATIONS)),
            background: Arc::new(BackgroundThreads::new(cpus)),
        }
    }

    /// Makes `[offset, offset + len)` of `target` hold verified data (widened to whole groups).
    /// The on-demand entry point for kernel requests.
    pub async fn fill(&self, target: &Arc<Target>, offset: u64, len: u64) -> Result<(), FetchError> {
        self.fill_as(target, offset, len, Origin::OnDemand).await
    }

    /// [`Filler::fill`] on behalf of `origin` (only on-demand fills are traced).
    pub async fn fill_as(&self, target: &Arc<Target>, offset: u64, len: u64, origin: Origin) -> Result<(), FetchError> {
        self.fill_in_slot(target, offset, len, origin, CpuSlot::default()).await
    }

    /// [`Filler::fill_as`], releasing `slot` once the data is decoded (or found claimed).
    pub(super) async fn fill_in_slot(&self, target: &Arc<Target>, offset: u64, len: u64, origin: Origin, slot: CpuSlot) -> Result<(), FetchError> {
        let Some((offset, len)) = target.clamp(offset, len) else { return Ok(()) };
        let run = target
            .blob
            .map
            .map(offset, len)
            .map_err(|source| FetchError::Verify { blob: target.blob.id.clone(), source })?;
        if origin == Origin::OnDemand {
            target.trace.note(run.first, run.last);
        }

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
        if claims.groups.is_empty() {
            slot.release(); // only waiting from here on
        } else {
            let this = self.clone();
            let work = tokio::spawn(async move { this.fetch_claimed(claims, origin, slot).await });
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

    /// Fetches the claimed groups, one source request per planned span, concurrently, and
    /// writes the wanted groups.
    async fn fetch_claimed(&self, mut claims: Claims, origin: Origin, slot: CpuSlot) -> Result<(), FetchError> {
        let target = claims.target.clone();
        let mut wanted: Vec<u32> = claims.groups.iter().map(|(g, _)| *g).collect();
        wanted.sort_unstable();
        let spans = plan_requests(&wanted, &target.blob.map, target.blob.source.request_overhead());
        let runs: Vec<(u32, u32)> = spans.iter().map(|s| (s.first, s.last)).collect();
        // One span (the common case: a read-ahead piece, a random miss) runs in this task; more
        // run concurrently, each in its own.
        let outcomes = if spans.len() == 1 {
            let span = spans.into_iter().next().expect("one span");
            vec![Ok(self.fetch_and_write(&target, span, origin, slot).await)]
        } else {
            let tasks: Vec<_> = spans
                .into_iter()
                .map(|span| {
                    let (this, target, slot) = (self.clone(), target.clone(), slot.clone());
                    tokio::spawn(async move { this.fetch_and_write(&target, span, origin, slot).await })
                })
                .collect();
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await);
            }
            outcomes
        };
        let mut first_error = None;
        for (outcome, (first, last)) in outcomes.into_iter().zip(runs) {
            match outcome {
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

impl Filler {
    /// One planned request: fetch the span, decode the wanted groups and write each into the
    /// target. Returns each written group with its write result. `slot` is released once the
    /// span is decoded.
    async fn fetch_and_write(&self, target: &Arc<Target>, span: Span, origin: Origin, slot: CpuSlot) -> Result<Vec<(u32, std::io::Result<()>)>, FetchError> {
        let _slot = self.demand_slot().await;
        let (first, last) = (span.first, span.last);
        let wanted: Arc<dyn Fn(u32) -> bool + Send + Sync> = Arc::new(move |g| span.wants(g));
        if target.write_path == WritePath::OnFillThread {
            // Read, decode and write on one thread (local sources only): read-ahead from a
            // free source on a low-priority thread, anything else on the blocking pool.
            let (t, w) = (target.clone(), wanted.clone());
            let job = move || {
                let bufs = t.blob.fetch_span_blocking(first, last, &*w)?;
                Some(bufs.map(|bufs| bufs.into_iter().map(|(g, buf)| (g, pwrite_all(&t.fd, &buf, t.blob.map.group_range(g).start))).collect()))
            };
            let done = if origin == Origin::ReadAhead && target.blob.source.request_overhead() == 0 {
                self.background.run(job).await.map_err(|e| FetchError::Other(format!("fill task failed: {e}")))?
            } else {
                tokio::task::spawn_blocking(job).await.map_err(|e| FetchError::Other(format!("fill task failed: {e}")))?
            };
            slot.release();
            match done {
                Some(results) => return results,
                // Not a local source: already known, skip fetch_span's own local attempt.
                None => {
                    let bufs = target.blob.fetch_span_remote(first, last, wanted).await?;
                    slot.release();
                    return self.write_through_ring(target, bufs).await;
                }
            }
        }
        let bufs = target.blob.fetch_span(first, last, wanted).await;
        slot.release();
        self.write_through_ring(target, bufs?).await
    }

    /// Writes decoded groups with the shared writer; each group with its write result.
    /// Groups that follow each other in the address space go as one vectored write (a 2 MiB
    /// read-ahead piece: one write, not eight), and all of a span's writes go to the ring at
    /// once.
    async fn write_through_ring(&self, target: &Arc<Target>, bufs: Vec<(u32, AlignedBuf)>) -> Result<Vec<(u32, std::io::Result<()>)>, FetchError> {
        // Runs of consecutive groups (consecutive groups are adjacent in the address space),
        // each as (first group, its buffers).
        let mut runs: Vec<(u32, Vec<AlignedBuf>)> = Vec::new();
        for (g, buf) in bufs {
            match runs.last_mut() {
                Some((first, bs)) if bs.len() < MAX_IOVECS && *first + bs.len() as u32 == g => bs.push(buf),
                _ => runs.push((g, vec![buf])),
            }
        }
        let writes = runs.into_iter().map(|(first, bufs)| {
            let groups = first..first + bufs.len() as u32;
            let write = self.writer.write_all_vectored_at(target.fd.clone(), bufs, target.blob.map.group_range(first).start);
            async move {
                let result = write.await;
                groups.map(|g| (g, result.as_ref().map(|_| ()).map_err(same_error))).collect::<Vec<_>>()
            }
        });
        Ok(futures_util::future::join_all(writes).await.into_iter().flatten().collect())
    }
}

/// A copy of `e` for each group of a failed vectored write (io::Error is not Clone).
fn same_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// Speculative neighbourhood fetches in flight at once ([`Filler::speculation_slots`]).
pub const SPECULATIONS: usize = 2;

/// Read amplification allowed when gaps are merged: stored bytes fetched at most this many
/// times the stored bytes wanted, per request.
pub const MAX_AMPLIFICATION: f64 = 1.5;

/// One source request: stored groups `first..=last`, of which those in `wanted` (sorted) are
/// decoded and written; the rest is a gap fetched only to save a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Span {
    pub first: u32,
    pub last: u32,
    pub wanted: Arc<[u32]>,
}

impl Span {
    pub fn wants(&self, g: u32) -> bool {
        self.wanted.binary_search(&g).is_ok()
    }
}

/// Plans the requests for the sorted groups `wanted`: contiguous runs always share a request;
/// two runs are merged across a gap when the gap's stored bytes are at most `overhead` (what
/// a separate request costs) and the merged request stays within [`MAX_AMPLIFICATION`] and
/// [`MAX_RANGE`].
pub fn plan_requests(wanted: &[u32], map: &GroupMap, overhead: u64) -> Vec<Span> {
    let stored = |a: u32, b: u32| map.stored_range(b).end - map.stored_range(a).start;
    let mut spans: Vec<(u32, u32, Vec<u32>, u64)> = Vec::new(); // first, last, wanted, wanted bytes
    for &g in wanted {
        let size = stored(g, g);
        if let Some((_, last, w, wbytes)) = spans.last_mut() {
            if *last + 1 == g && stored(w[0], g) <= MAX_RANGE {
                *last = g;
                w.push(g);
                *wbytes += size;
                continue;
            }
            // saturating: nydus pages of one chunk share a stored range.
            let gap = map.stored_range(g).start.saturating_sub(map.stored_range(*last).end);
            let total = stored(w[0], g);
            let within = (total as f64) <= (*wbytes + size) as f64 * MAX_AMPLIFICATION;
            if gap <= overhead && within && total <= MAX_RANGE {
                *last = g;
                w.push(g);
                *wbytes += size;
                continue;
            }
        }
        spans.push((g, g, vec![g], size));
    }
    spans.into_iter().map(|(first, last, w, _)| Span { first, last, wanted: w.into() }).collect()
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
        concurrent_fills(WritePath::Ring).await;
        concurrent_fills(WritePath::OnFillThread).await;
    }

    async fn concurrent_fills(write_path: WritePath) {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(64); // 256 KiB = 4 groups of 64 KiB
        let rec = store(dir.path(), &data);
        let blob = Blob::new(rec, Arc::new(LocalDirSource::new(dir.path()))).unwrap();
        let (target, file) = sparse_target_with(dir.path(), &blob, write_path);
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
        corrupt_or_missing(WritePath::Ring).await;
        corrupt_or_missing(WritePath::OnFillThread).await;
    }

    async fn corrupt_or_missing(write_path: WritePath) {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(32);
        let rec = store(dir.path(), &data);
        // Flip one stored byte inside group 0.
        let path = dir.path().join(rec.id_hex());
        let mut stored = std::fs::read(&path).unwrap();
        stored[rec.groups[0].stored_len as usize / 2] ^= 0x55;
        std::fs::write(&path, &stored).unwrap();
        let blob = Blob::new(rec.clone(), Arc::new(LocalDirSource::new(dir.path()))).unwrap();
        let (target, file) = sparse_target_with(dir.path(), &blob, write_path);
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
        let (t2, _f) = sparse_target_with(dir.path(), &blob2, write_path);
        let err = filler.fill(&t2, 0, 1).await.unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
    }
}

#[cfg(test)]
mod read_ahead_tests {
    use super::tests_support::*;
    use super::*;
    use crate::core::readahead::ReadAheadPolicy;
    use crate::core::source::{LocalDirSource, SharedSource};
    use std::sync::atomic::Ordering;

    const POLICY: ReadAheadPolicy = ReadAheadPolicy { window: 128 << 10, ramp: 0, piece: 64 << 10, slack: 64 << 10, require_filled_behind: false };

    /// A 4-group (64 KiB each) blob in `dir` read through `source(dir)`, with its sparse target.
    fn setup(dir: &std::path::Path, source: impl FnOnce(&std::path::Path) -> SharedSource) -> (Arc<Blob>, Arc<Target>, Filler) {
        setup_pages(dir, 64, source)
    }

    /// [`setup`] with an address space of `pages` 4 KiB pages (16 per group).
    fn setup_pages(dir: &std::path::Path, pages: usize, source: impl FnOnce(&std::path::Path) -> SharedSource) -> (Arc<Blob>, Arc<Target>, Filler) {
        let rec = store(dir, &address_space(pages));
        let blob = Blob::new(rec, source(dir)).unwrap();
        let (target, _file) = sparse_target(dir, &blob);
        (blob, target, Filler::new(Writer::start(), 8))
    }

    /// Waits (up to 3 s) for background fills to make `groups` groups of `target` ready.
    async fn wait_ready(target: &Target, groups: usize) {
        for _ in 0..300 {
            if target.readiness().ready_count() == groups {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// The groups of `target` that are filled.
    fn ready_groups(target: &Target) -> Vec<u32> {
        (0..target.readiness().groups() as u32).filter(|&g| target.readiness().is_ready(g as usize)).collect()
    }

    /// Waits for the background fills, then checks exactly groups 1 and 2 are filled.
    async fn expect_groups_1_and_2(target: &Target) {
        wait_ready(target, 2).await;
        assert!(target.readiness().is_ready(1) && target.readiness().is_ready(2));
        assert!(!target.readiness().is_ready(0) && !target.readiness().is_ready(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_requests_fill_the_window_ahead_once() {
        let dir = tempfile::tempdir().unwrap();
        let (blob, target, filler) = setup(dir.path(), |d| Arc::new(LocalDirSource::new(d)));
        let rt = tokio::runtime::Handle::current();
        // The first request has no predecessor: no read-ahead.
        assert_eq!(filler.read_ahead(&rt, &target, &POLICY, 0, 4096, || {}), 0);
        // A random jump: none.
        assert_eq!(filler.read_ahead(&rt, &target, &POLICY, 200_000, 4096, || {}), 0);
        // Continuing at 4096 after 0..4096 would be sequential, but 200_000 was last: reset first.
        assert_eq!(filler.read_ahead(&rt, &target, &POLICY, 0, 4096, || {}), 0);
        // Sequential: groups 1 and 2 (the 128 KiB after the request) are started, once.
        assert_eq!(filler.read_ahead(&rt, &target, &POLICY, 4096, 4096, || {}), 2);
        assert_eq!(filler.read_ahead(&rt, &target, &POLICY, 8192, 4096, || {}), 0, "already requested");
        expect_groups_1_and_2(&target).await;
        assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 2);
    }

    /// A sequential reader of a source with free requests has it read the stored bytes ahead
    /// (one hint, renewed only when half used up); a costly source gets no hint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_reader_of_a_free_source_hints_the_stored_bytes_ahead() {
        for (overhead, want_hints) in [(0, 1), (512 << 10, 0)] {
            let dir = tempfile::tempdir().unwrap();
            let source = Arc::new(Costly::new(dir.path(), overhead));
            let shared: SharedSource = source.clone();
            let (_blob, target, filler) = setup(dir.path(), |_| shared);
            let rt = tokio::runtime::Handle::current();
            filler.read_ahead(&rt, &target, &POLICY, 0, 4096, || {});
            filler.read_ahead(&rt, &target, &POLICY, 4096, 60000, || {});
            filler.read_ahead(&rt, &target, &POLICY, 64096, 4096, || {});
            for _ in 0..100 {
                if source.hints.lock().unwrap().len() >= want_hints {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let hints = source.hints.lock().unwrap().clone();
            assert_eq!(hints.len(), want_hints, "overhead {overhead}: {hints:?}");
            if want_hints > 0 {
                assert_eq!(hints[0], (0, 16 << 20), "from the reader's group on, 16 MiB of stored bytes");
            }
        }
    }

    /// From a free source, read-ahead pieces run one per slot, nearest first; a request that
    /// lands in a piece still queued (the reader caught up, far from its previous request)
    /// extends the window instead of ending the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn free_source_pieces_queue_nearest_first_and_a_caught_up_reader_extends_the_window() {
        const GS: u64 = 64 << 10;
        let policy = ReadAheadPolicy { window: 8 * GS, ramp: 0, piece: GS, slack: GS, require_filled_behind: false };
        let dir = tempfile::tempdir().unwrap();
        let source = Arc::new(Costly::new(dir.path(), 0));
        let shared: SharedSource = source.clone();
        let (blob, target, mut filler) = setup_pages(dir.path(), 256, |_| shared); // 16 groups
        filler.read_ahead_slots = Arc::new(tokio::sync::Semaphore::new(1));
        let hold = filler.read_ahead_slots.clone().try_acquire_owned().unwrap();
        let rt = tokio::runtime::Handle::current();

        assert_eq!(filler.read_ahead(&rt, &target, &policy, 0, 4096, || {}), 0);
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 4096, 4096, || {}), 8, "groups 1..=8");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(source.reads.lock().unwrap().is_empty(), "every piece waits for the held slot");
        // The reader asks inside group 3 (claimed, not filled): 192 KiB past its previous
        // request, beyond the slack, yet the window moves on to groups 9..=11.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 3 * GS + 4096, 4096, || {}), 3);
        // A jump to a group nobody claimed is a new streak.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 14 * GS, 4096, || {}), 0);

        drop(hold);
        wait_ready(&target, 11).await;
        assert!((1..=11).all(|g| target.readiness().is_ready(g)), "groups 1..=11 filled");
        let reads = source.reads.lock().unwrap().clone();
        let want: Vec<u64> = (1..=11).map(|g| blob.map.stored_range(g).start).collect();
        assert_eq!(reads, want, "one piece at a time, nearest first");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_a_free_source_a_ramped_window_grows_with_the_streak() {
        const GS: u64 = 64 << 10;
        let policy = ReadAheadPolicy { window: 2 * GS, ramp: 2, piece: GS, slack: GS, require_filled_behind: false };
        let dir = tempfile::tempdir().unwrap();
        let (_blob, target, filler) = setup_pages(dir.path(), 256, |d| Arc::new(Costly::new(d, 0))); // 16 groups
        let rt = tokio::runtime::Handle::current();
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 0, 4096, || {}), 0);
        // Streak 8 KiB: 2x of it is under the 2-group floor, so groups 1 and 2.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 4096, 4096, || {}), 2, "groups 1..=2");
        // Streak 0..4 groups: 2x is 8 groups ahead, to the end of group 11; 1 and 2 are
        // skipped as claimed, 4..=11 are new.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 8192, 4 * GS - 8192, || {}), 8, "groups 4..=11");
        // Streak 0..5 groups: 10 groups ahead, to the end of group 14; only 12..=14 are new.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 4 * GS, GS, || {}), 3, "groups 12..=14");
        // Streak 0..6 groups: the window reaches past the end of the blob; group 15 is new.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 5 * GS, GS, || {}), 1, "group 15");
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 6 * GS, GS, || {}), 0, "all claimed");
        wait_ready(&target, 14).await;
        let filled = ready_groups(&target);
        assert_eq!(filled, [1, 2].into_iter().chain(4..16).collect::<Vec<u32>>(), "what read-ahead claimed, nothing else");
    }

    /// From a costly source every miss also fetches the groups after it, one request's worth of
    /// stored bytes (capped by the window), stream or not; a miss that starts no stream only
    /// while a speculation slot is free.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_a_costly_source_a_miss_fetches_its_neighbourhood() {
        const GS: u64 = 64 << 10;
        let policy = ReadAheadPolicy { window: 2 * GS, ramp: 0, piece: GS, slack: GS, require_filled_behind: true };
        let dir = tempfile::tempdir().unwrap();
        let (_blob, target, filler) = setup_pages(dir.path(), 256, |d| Arc::new(Costly::new(d, 512 << 10))); // 16 groups
        let rt = tokio::runtime::Handle::current();
        // A first request, a miss: groups 1..=2 in one piece (the window caps the neighbourhood).
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 0, 4096, || {}), 1);
        wait_ready(&target, 2).await;
        // A jump to another miss: its own neighbourhood, 9..=10.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 8 * GS + 100, 4096, || {}), 1);
        wait_ready(&target, 4).await;
        // A hit that continues no stream: nothing.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, GS, 4096, || {}), 0);
        // With every speculation slot taken, a lone miss speculates no further.
        let held = filler.speculation_slots.clone().try_acquire_many_owned(SPECULATIONS as u32).unwrap();
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 13 * GS, 4096, || {}), 0);
        drop(held);
        let filled = ready_groups(&target);
        assert_eq!(filled, [1, 2, 9, 10], "the neighbourhoods of the misses, nothing else");
    }

    /// From a costly source a stream of hits (data already there) gets read-ahead of half what it
    /// has read sequentially: a few neighbouring pages get none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn from_a_costly_source_a_stream_of_hits_ramps_up() {
        const GS: u64 = 64 << 10;
        let policy = ReadAheadPolicy { window: 2 * GS, ramp: 0, piece: GS, slack: GS, require_filled_behind: false };
        let dir = tempfile::tempdir().unwrap();
        let (_blob, target, filler) = setup_pages(dir.path(), 256, |d| Arc::new(Costly::new(d, 512 << 10))); // 16 groups
        let rt = tokio::runtime::Handle::current();
        filler.fill(&target, 0, 4 * GS).await.unwrap();
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 0, 4096, || {}), 0);
        // Sequential hits, streak 8 KiB: 4 KiB ahead does not reach group 1's end.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 4096, 4096, || {}), 0);
        // Streak 0..4 groups: 2 groups ahead, 4..=5, in one piece.
        assert_eq!(filler.read_ahead(&rt, &target, &policy, 8192, 4 * GS - 8192, || {}), 1);
        wait_ready(&target, 6).await;
        let filled = ready_groups(&target);
        assert_eq!(filled, (0..6).collect::<Vec<u32>>());
    }
}

#[cfg(test)]
mod merge_tests {
    use super::tests_support::*;
    use super::*;
    use erofs::blob::{encode_blob, Compression};
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::Ordering;

    /// 16 uncompressed groups of 64 KiB: every group's stored size is 64 KiB.
    fn raw_map() -> GroupMap {
        let (_, rec) = encode_blob(&address_space(256), Compression::None, 16).unwrap();
        GroupMap::new(&rec).unwrap()
    }

    fn plan(wanted: &[u32], overhead: u64) -> Vec<(u32, u32, Vec<u32>)> {
        plan_requests(wanted, &raw_map(), overhead).into_iter().map(|s| (s.first, s.last, s.wanted.to_vec())).collect()
    }

    #[test]
    fn runs_merge_across_small_gaps_within_the_amplification_bound() {
        // No overhead (a local file): contiguous runs only.
        assert_eq!(plan(&[0, 1, 3, 4, 10], 0), vec![(0, 1, vec![0, 1]), (3, 4, vec![3, 4]), (10, 10, vec![10])]);
        // A one-group gap costs less than a request: merged; the far group is not.
        assert_eq!(plan(&[0, 1, 3, 4, 10], 64 << 10), vec![(0, 4, vec![0, 1, 3, 4]), (10, 10, vec![10])]);
        // 2 wanted of 3 fetched = 1.5x: allowed. 2 of 4 = 2x: not, whatever the overhead.
        assert_eq!(plan(&[0, 2], 1 << 20), vec![(0, 2, vec![0, 2])]);
        assert_eq!(plan(&[0, 3], 1 << 20), vec![(0, 0, vec![0]), (3, 3, vec![3])]);
        // A gap larger than the overhead is never fetched.
        assert_eq!(plan(&[0, 1, 2, 3, 5], 32 << 10), vec![(0, 3, vec![0, 1, 2, 3]), (5, 5, vec![5])]);
        assert!(plan(&[], 1 << 20).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_gap_of_ready_groups_is_fetched_in_one_request_and_not_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(256); // 16 groups of 64 KiB (zstd)
        let rec = store(dir.path(), &data);
        let source = Arc::new(Costly::new(dir.path(), 256 << 10));
        let blob = Blob::new(rec, source.clone()).unwrap();
        let (target, file) = sparse_target(dir.path(), &blob);
        let filler = Filler::new(Writer::start(), 8);
        filler.fill(&target, 2 << 16, 1).await.unwrap(); // group 2
        assert_eq!(blob.stats.requests.load(Ordering::Relaxed), 1);
        // Scribble over group 2 in the target: a merged request must not rewrite a ready group.
        file.write_all_at(&[0xEE; 4096], 2 << 16).unwrap();
        // Groups 0..=4 wanted, 2 already ready: one request spanning the gap, not two.
        filler.fill(&target, 0, 5 << 16).await.unwrap();
        assert_eq!(blob.stats.requests.load(Ordering::Relaxed), 2, "one request across the ready gap");
        assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 5, "gap group fetched but not decoded again");
        let mut back = vec![0u8; 5 << 16];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..2 << 16] == data[..2 << 16] && back[3 << 16..] == data[3 << 16..5 << 16]);
        assert_eq!(&back[2 << 16..(2 << 16) + 4096], &[0xEE; 4096][..], "ready group left alone");
        let stored = source.bytes.load(Ordering::Relaxed);
        assert_eq!(stored, blob.map.stored_range(4).end - blob.map.stored_range(0).start + { let r = blob.map.stored_range(2); r.end - r.start });
    }
}

#[cfg(test)]
pub(super) mod tests_support {
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

    /// Blobs from a local directory, from a source that claims a request costs `overhead`
    /// bytes (as a registry does); counts the stored bytes asked for.
    pub struct Costly {
        inner: crate::core::source::LocalDirSource,
        overhead: u64,
        pub bytes: std::sync::atomic::AtomicU64,
        /// Offsets of the stored ranges asked for, in order.
        pub reads: std::sync::Mutex<Vec<u64>>,
        /// `will_need` calls received: (offset, len).
        pub hints: std::sync::Mutex<Vec<(u64, u64)>>,
    }

    impl Costly {
        pub fn new(dir: &std::path::Path, overhead: u64) -> Costly {
            Costly {
                inner: crate::core::source::LocalDirSource::new(dir),
                overhead,
                bytes: Default::default(),
                reads: Default::default(),
                hints: Default::default(),
            }
        }
    }

    impl crate::core::source::BlobSource for Costly {
        fn read_range(&self, id: &str, offset: u64, len: u64) -> crate::core::source::BoxFuture<'_, std::io::Result<Vec<u8>>> {
            self.bytes.fetch_add(len, std::sync::atomic::Ordering::Relaxed);
            self.reads.lock().unwrap().push(offset);
            self.inner.read_range(id, offset, len)
        }
        fn describe(&self) -> String {
            "local blobs, priced like a registry".into()
        }
        fn request_overhead(&self) -> u64 {
            self.overhead
        }
        fn will_need(&self, _id: &str, offset: u64, len: u64) {
            self.hints.lock().unwrap().push((offset, len));
        }
    }

    pub fn sparse_target(dir: &std::path::Path, blob: &Arc<Blob>) -> (Arc<Target>, std::fs::File) {
        sparse_target_with(dir, blob, WritePath::Ring)
    }

    pub fn sparse_target_with(dir: &std::path::Path, blob: &Arc<Blob>, write_path: WritePath) -> (Arc<Target>, std::fs::File) {
        let path = dir.join("target");
        let f = std::fs::OpenOptions::new().create(true).read(true).write(true).truncate(true).open(&path).unwrap();
        f.set_len(blob.size()).unwrap();
        let fd: OwnedFd = f.try_clone().unwrap().into();
        (Target::with_write_path(blob.clone(), fd, write_path), f)
    }

}
