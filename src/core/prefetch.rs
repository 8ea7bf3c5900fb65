//! Background prefetch: fill a mount's blobs ahead of any reader, always behind demand.
//!
//! Modes (daemon config `[prefetch] mode`, per mount `erofsd mount --prefetch`):
//! * `none` — nothing (the default);
//! * `trace` — the groups of the image's access trace, in recorded order: the state-dir trace
//!   recorded by an earlier run of this image, else the `prefetch.trace` that
//!   `erofsd build --prefetch-list` left next to `image.boot`;
//! * `blobs` — every group of every blob, front to back (a `--prefetch-list` build puts the
//!   startup files first, so the front of a blob is the startup set);
//! * `trace+blobs` — the trace first, then the rest.
//!
//! Demand always goes first. The prefetcher keeps at most `max_in_flight` requests (default
//! one) on the wire; it takes its fetch slot *before* claiming any group and only while no
//! demand fetch waits for a slot ([`Filler::prefetch_groups`]), so an on-demand read that needs a
//! group the prefetcher holds waits for at most that one request, never for a prefetch queue.
//! Groups in flight for demand are skipped, and everything goes through the same single-flight
//! claims as demand fills, so no group is fetched twice. A token bucket caps the prefetch rate
//! in stored bytes per second.
//!
//! Every mount also saves its access trace ([`super::trace`]) to
//! `<cache_dir>/state/trace/<image id>.trace`: periodically and when the mount stops.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::blob::{Blob, FetchError};
use super::fill::{Claims, Filler, Target};
use super::images::Image;
use super::trace::{state_trace_path, Trace, IMAGE_TRACE_NAME};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrefetchMode {
    #[default]
    None,
    Trace,
    Blobs,
    #[serde(rename = "trace+blobs")]
    #[value(name = "trace+blobs")]
    TraceBlobs,
}

impl PrefetchMode {
    fn uses_trace(self) -> bool {
        matches!(self, PrefetchMode::Trace | PrefetchMode::TraceBlobs)
    }

    fn uses_blobs(self) -> bool {
        matches!(self, PrefetchMode::Blobs | PrefetchMode::TraceBlobs)
    }
}

/// A byte count in config files: an integer or a size string (`"8M"`, `"512K"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => crate::build::parse_size(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// Daemon-wide prefetch settings (`[prefetch]` in the TOML config).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefetchConfig {
    pub mode: PrefetchMode,
    /// Cap in stored bytes per second; 0 = unlimited.
    pub bandwidth: ByteSize,
    /// Prefetch requests on the wire at once.
    pub max_in_flight: usize,
    /// Address-space bytes per prefetch request (whole groups, at least one).
    pub piece: ByteSize,
    /// Record and save access traces.
    pub record_trace: bool,
    /// Seconds between periodic trace saves (0: only when the mount stops).
    pub trace_save_interval: u64,
    /// Where image traces are kept, `<image id>.trace` (default: `<cache_dir>/state/trace`).
    /// Daemons that each cache in a directory of their own but serve the same images (nydusd
    /// fuse mode, one per image) share one, so a trace outlives the daemon that recorded it.
    pub trace_dir: Option<PathBuf>,
}

impl Default for PrefetchConfig {
    fn default() -> PrefetchConfig {
        PrefetchConfig {
            mode: PrefetchMode::None,
            bandwidth: ByteSize(0),
            max_in_flight: 1,
            piece: ByteSize(1 << 20),
            record_trace: true,
            trace_save_interval: 30,
            trace_dir: None,
        }
    }
}

/// Finds the target a blob is materialised in for this mount (it may appear after the mount
/// call returns: cachefiles objects are opened by the kernel).
pub type Resolve = Arc<dyn Fn(&Arc<Blob>) -> Option<Arc<Target>> + Send + Sync>;
/// Called after each prefetched piece (fanotify drops a complete blob's mark there).
pub type OnFilled = Arc<dyn Fn(&Arc<Target>) + Send + Sync>;

/// Counters of one mount's prefetch, for logs and tests.
#[derive(Default, Debug)]
pub struct PrefetchProgress {
    pub groups: AtomicU64,
    pub stored_bytes: AtomicU64,
    pub errors: AtomicU64,
    pub done: AtomicBool,
}

/// A mount's prefetcher and trace saver; [`MountPrefetch::stop`] at unmount.
pub struct MountPrefetch {
    shared: Arc<Shared>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    pub progress: Arc<PrefetchProgress>,
}

struct Shared {
    image: Arc<Image>,
    resolve: Resolve,
    /// Targets seen so far, kept so the trace can be saved after the front-end let go of them.
    targets: Mutex<Vec<Option<Arc<Target>>>>,
    state_trace: Option<PathBuf>,
    /// The trace this run started from (state dir, else image dir); new accesses are added to it.
    base: Option<Trace>,
    image_path: PathBuf,
    last_saved: Mutex<Option<Trace>>,
}

impl Shared {
    fn target(&self, i: usize) -> Option<Arc<Target>> {
        let mut ts = self.targets.lock().expect("targets");
        if ts[i].is_none() {
            ts[i] = (self.resolve)(&self.image.blobs[i]);
        }
        ts[i].clone()
    }

    /// Saves the trace if this run recorded something new.
    fn save_trace(&self) {
        let Some(path) = &self.state_trace else { return };
        let mut logs = Vec::new();
        for i in 0..self.image.blobs.len() {
            if let Some(t) = self.target(i) {
                logs.push((t.blob.id.clone(), t.trace().snapshot()));
            }
        }
        let new = Trace::merge(&self.image.id, Some(self.image_path.clone()), &logs);
        if new.entries.is_empty() {
            return;
        }
        let out = match &self.base {
            Some(b) => Trace { image_id: self.image.id.clone(), ..b.clone() }.union(&new),
            None => new,
        };
        let mut last = self.last_saved.lock().expect("last saved");
        if last.as_ref() == Some(&out) {
            return;
        }
        match out.save(path) {
            Ok(()) => *last = Some(out),
            Err(e) => warn!("saving the access trace of image {}: {e:#}", self.image.id),
        }
    }
}

impl MountPrefetch {
    /// Starts prefetch (per `config.mode`) and trace saving for one mount, on `rt`.
    /// `cache_dir: None` disables trace saving.
    #[allow(clippy::too_many_arguments)] // each is a distinct piece of the mount; a struct would only rename them
    pub fn start(
        rt: &tokio::runtime::Handle,
        filler: Filler,
        image: Arc<Image>,
        image_path: &Path,
        cache_dir: Option<&Path>,
        config: &PrefetchConfig,
        resolve: Resolve,
        on_filled: OnFilled,
    ) -> MountPrefetch {
        let trace_path = |d: &Path| match &config.trace_dir {
            Some(t) => t.join(format!("{}.trace", image.id)),
            None => state_trace_path(d, &image.id),
        };
        let state_trace = cache_dir.filter(|_| config.record_trace).map(trace_path);
        let base = load_base_trace(cache_dir.map(trace_path).as_deref(), &image);
        let shared = Arc::new(Shared {
            targets: Mutex::new(vec![None; image.blobs.len()]),
            image,
            resolve,
            state_trace,
            base,
            image_path: image_path.to_path_buf(),
            last_saved: Mutex::new(None),
        });
        let progress = Arc::new(PrefetchProgress::default());
        let mut tasks = Vec::new();
        if config.mode != PrefetchMode::None {
            let (s, c, p) = (shared.clone(), config.clone(), progress.clone());
            tasks.push(rt.spawn(async move { run(s, filler, c, on_filled, p).await }));
        } else {
            progress.done.store(true, Ordering::Release);
        }
        if shared.state_trace.is_some() && config.trace_save_interval > 0 {
            let s = shared.clone();
            let every = Duration::from_secs(config.trace_save_interval);
            tasks.push(rt.spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let s = s.clone();
                    let _ = tokio::task::spawn_blocking(move || s.save_trace()).await;
                }
            }));
        }
        MountPrefetch { shared, tasks: Mutex::new(tasks), progress }
    }

    /// Stops prefetching (requests already on the wire finish on their own) and saves the
    /// trace. Safe to call twice.
    pub fn stop(&self) {
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
        self.shared.save_trace();
        self.shared.targets.lock().expect("targets").iter_mut().for_each(|t| *t = None);
    }

    pub fn status(&self) -> serde_json::Value {
        let p = &self.progress;
        serde_json::json!({
            "groups": p.groups.load(Ordering::Relaxed),
            "stored_bytes": p.stored_bytes.load(Ordering::Relaxed),
            "errors": p.errors.load(Ordering::Relaxed),
            "done": p.done.load(Ordering::Acquire),
        })
    }
}

impl Drop for MountPrefetch {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("tasks").drain(..) {
            t.abort();
        }
    }
}

/// The prefetchers of a front-end's mounts, by mountpoint.
#[derive(Default)]
pub struct Prefetchers {
    map: Mutex<std::collections::BTreeMap<PathBuf, MountPrefetch>>,
}

impl Prefetchers {
    pub fn insert(&self, mountpoint: &Path, p: MountPrefetch) {
        if let Some(old) = self.map.lock().expect("prefetchers").insert(mountpoint.to_path_buf(), p) {
            old.stop();
        }
    }

    /// Stops a mount's prefetch and saves its trace (call before its targets are released).
    pub fn stop(&self, mountpoint: &Path) {
        let p = self.map.lock().expect("prefetchers").remove(mountpoint);
        if let Some(p) = p {
            p.stop();
        }
    }

    pub fn stop_all(&self) {
        let all = std::mem::take(&mut *self.map.lock().expect("prefetchers"));
        for p in all.values() {
            p.stop();
        }
    }

    /// Per-mount progress for the metrics output.
    pub fn json(&self) -> serde_json::Value {
        let m = self.map.lock().expect("prefetchers");
        serde_json::Value::Object(m.iter().map(|(k, p)| (k.display().to_string(), p.status())).collect())
    }
}

/// The trace a run starts from: the state-dir trace of this image, else the image's own
/// `prefetch.trace`. A bad file is logged and ignored (prefetch is only an optimisation).
fn load_base_trace(state: Option<&Path>, image: &Image) -> Option<Trace> {
    let image_trace = image.bootstrap_path.parent().map(|d| d.join(IMAGE_TRACE_NAME));
    for p in state.into_iter().chain(image_trace.as_deref()) {
        if !p.exists() {
            continue;
        }
        match Trace::load(p) {
            Ok(t) if !t.image_id.is_empty() && t.image_id != image.id => {
                warn!("trace {} was recorded for image {}, not {}: ignored", p.display(), t.image_id, image.id)
            }
            Ok(t) => return Some(t),
            Err(e) => warn!("{e:#}: ignored"),
        }
    }
    None
}

/// What to prefetch, in order: `(blob index, first group, last group)`, each at most `piece`
/// groups. Trace entries naming blobs or groups the image does not have are dropped.
pub fn plan(image: &Image, mode: PrefetchMode, trace: Option<&Trace>, piece_groups: u32) -> Vec<(usize, u32, u32)> {
    let piece_groups = piece_groups.max(1);
    let mut out: Vec<(usize, u32, u32)> = Vec::new();
    if mode.uses_trace() {
        if let Some(t) = trace {
            for (id, g) in &t.entries {
                let Some(bi) = image.blobs.iter().position(|b| &b.id == id) else { continue };
                if *g >= image.blobs[bi].map.group_count() {
                    continue;
                }
                match out.last_mut() {
                    Some((b, first, last)) if *b == bi && *last + 1 == *g && *last - *first + 1 < piece_groups => *last = *g,
                    _ => out.push((bi, *g, *g)),
                }
            }
        }
    }
    if mode.uses_blobs() {
        for (bi, b) in image.blobs.iter().enumerate() {
            let n = b.map.group_count();
            let mut g = 0;
            while g < n {
                let last = (g + piece_groups - 1).min(n - 1);
                out.push((bi, g, last));
                g = last + 1;
            }
        }
    }
    out
}

async fn run(shared: Arc<Shared>, filler: Filler, config: PrefetchConfig, on_filled: OnFilled, progress: Arc<PrefetchProgress>) {
    let t0 = Instant::now();
    let image = shared.image.clone();
    let gs = image.blobs.iter().map(|b| b.map.group_size()).max().unwrap_or(1 << 18);
    let piece_groups = u32::try_from(config.piece.0.div_ceil(gs)).unwrap_or(u32::MAX).max(1);
    let trace = if config.mode.uses_trace() { shared.base.clone() } else { None };
    if config.mode.uses_trace() && trace.is_none() {
        info!("prefetch: no access trace for image {} yet", image.id);
    }
    let steps = plan(&image, config.mode, trace.as_ref(), piece_groups);
    // Targets may appear only after the mount call returned (cachefiles objects are opened by
    // the kernel during the mount): give them a moment.
    let t_wait = Instant::now();
    while (0..image.blobs.len()).any(|i| shared.target(i).is_none()) && t_wait.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let mut bucket = TokenBucket::new(config.bandwidth.0, piece_groups as u64 * gs);
    let mut running = JoinSet::new();
    for (bi, first, last) in steps {
        let Some(target) = shared.target(bi) else { continue };
        for (a, b) in missing_runs(&target, first, last) {
            let sr = target.blob.map.stored_range(a).start..target.blob.map.stored_range(b).end;
            bucket.take(sr.end - sr.start).await;
            let permit = in_flight.clone().acquire_owned().await.expect("prefetch semaphore");
            let (f, t, done, p) = (filler.clone(), target.clone(), on_filled.clone(), progress.clone());
            running.spawn(async move {
                let _permit = permit;
                match f.prefetch_groups(&t, a, b).await {
                    Ok(n) => {
                        if n > 0 {
                            p.groups.fetch_add(n as u64, Ordering::Relaxed);
                            done(&t);
                        }
                    }
                    Err(e) => {
                        p.errors.fetch_add(1, Ordering::Relaxed);
                        warn!("prefetch of groups {a}..={b} of blob {}: {e}", t.blob.id);
                    }
                }
            });
            while running.try_join_next().is_some() {}
        }
    }
    while running.join_next().await.is_some() {}
    let bytes: u64 = image.blobs.iter().map(|b| b.stats.prefetch_bytes.load(Ordering::Relaxed)).sum();
    progress.stored_bytes.store(bytes, Ordering::Relaxed);
    progress.done.store(true, Ordering::Release);
    info!(
        "prefetch ({:?}) of image {}: {} groups in {:.2?}, {} errors",
        config.mode,
        image.id,
        progress.groups.load(Ordering::Relaxed),
        t0.elapsed(),
        progress.errors.load(Ordering::Relaxed)
    );
}

/// The not-ready runs of `first..=last` in `target`.
fn missing_runs(target: &Target, first: u32, last: u32) -> Vec<(u32, u32)> {
    let last = last.min(target.blob.map.group_count().saturating_sub(1));
    let mut out: Vec<(u32, u32)> = Vec::new();
    for g in first..=last {
        if target.readiness().is_ready(g as usize) {
            continue;
        }
        match out.last_mut() {
            Some((_, l)) if *l + 1 == g => *l = g,
            _ => out.push((g, g)),
        }
    }
    out
}

/// Paces prefetch to `rate` bytes per second with a burst of `burst` bytes; 0 = unlimited.
/// A request waits until the bucket holds its size (or a full bucket, for a request larger
/// than the burst, which then leaves the bucket in debt), so the long-run rate is exact.
pub struct TokenBucket {
    rate: u64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: u64, burst: u64) -> TokenBucket {
        TokenBucket { rate, burst: burst.max(1) as f64, tokens: burst.max(1) as f64, last: Instant::now() }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate as f64).min(self.burst);
        self.last = now;
    }

    pub async fn take(&mut self, n: u64) {
        if self.rate == 0 {
            return;
        }
        let need = (n as f64).min(self.burst);
        self.refill();
        while self.tokens < need {
            tokio::time::sleep(Duration::from_secs_f64((need - self.tokens) / self.rate as f64)).await;
            self.refill();
        }
        self.tokens -= n as f64;
    }
}

impl Filler {
    /// A fetch slot for a demand fetch; counted while waiting so prefetch holds back.
    pub(super) async fn demand_slot(&self) -> tokio::sync::SemaphorePermit<'_> {
        struct Waiting<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.demand_waiting.fetch_add(1, Ordering::AcqRel);
        let _w = Waiting(&self.demand_waiting);
        self.fetch_slots.acquire().await.expect("fetch semaphore")
    }

    /// Takes a fetch slot for prefetch: only while no demand fetch waits for one.
    async fn prefetch_slot(&self) -> OwnedSemaphorePermit {
        loop {
            if self.demand_waiting.load(Ordering::Acquire) == 0 {
                if let Ok(p) = self.fetch_slots.clone().try_acquire_owned() {
                    if self.demand_waiting.load(Ordering::Acquire) == 0 {
                        return p;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Fills the groups of `first..=last` that are neither ready nor in flight, with one
    /// source request per contiguous run, under one fetch slot taken *before* any group is
    /// claimed. Groups in flight for someone else are skipped, not awaited. Returns how many
    /// groups this call fetched.
    pub async fn prefetch_groups(&self, target: &Arc<Target>, first: u32, last: u32) -> Result<u32, FetchError> {
        let last = last.min(target.blob.map.group_count().saturating_sub(1));
        if first > last || target.ready.all_ready(first as usize, last as usize) {
            return Ok(0);
        }
        let permit = self.prefetch_slot().await;
        let mut claims = Claims { target: target.clone(), groups: Vec::new() };
        {
            let mut inflight = target.inflight.lock().expect("inflight lock");
            for g in first..=last {
                if target.ready.is_ready(g as usize) || inflight.contains_key(&g) {
                    continue;
                }
                let (tx, rx) = watch::channel(None);
                inflight.insert(g, rx);
                claims.groups.push((g, tx));
            }
        }
        if claims.groups.is_empty() {
            return Ok(0);
        }
        // The work runs in its own task (as demand fills do): stopping the prefetcher must not
        // leave a demand reader waiting on a claim nobody resolves.
        let this = self.clone();
        let work = tokio::spawn(async move {
            let _slot = permit;
            let target = claims.target.clone();
            let mut groups: Vec<u32> = claims.groups.iter().map(|(g, _)| *g).collect();
            groups.sort_unstable();
            let mut fetched = 0u32;
            let mut i = 0;
            while i < groups.len() {
                let mut j = i;
                while j + 1 < groups.len() && groups[j + 1] == groups[j] + 1 {
                    j += 1;
                }
                let (a, b) = (groups[i], groups[j]);
                i = j + 1;
                let bufs = match target.blob.fetch_groups(a, b).await {
                    Ok(bufs) => bufs,
                    Err(e) => {
                        let msg: Arc<str> = Arc::from(e.to_string());
                        for g in a..=b {
                            claims.resolve(g, Err(msg.clone()));
                        }
                        return Err(e);
                    }
                };
                for (k, buf) in bufs.into_iter().enumerate() {
                    let g = a + k as u32;
                    let at = target.blob.map.group_range(g).start;
                    match this.writer.write_all_at(target.fd().clone(), buf, at).await {
                        Ok(()) => {
                            let sr = target.blob.map.stored_range(g);
                            target.blob.stats.prefetch_groups.fetch_add(1, Ordering::Relaxed);
                            target.blob.stats.prefetch_bytes.fetch_add(sr.end - sr.start, Ordering::Relaxed);
                            claims.resolve(g, Ok(()));
                            fetched += 1;
                        }
                        Err(e) => {
                            let err = FetchError::Write { blob: target.blob.id.clone(), source: e };
                            claims.resolve(g, Err(Arc::from(err.to_string())));
                            return Err(err);
                        }
                    }
                }
            }
            Ok(fetched)
        });
        work.await.map_err(|e| FetchError::Other(format!("prefetch task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests;
