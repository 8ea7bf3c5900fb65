//! Prefetch against real blob files: a local directory source, optionally slowed down per
//! request, and sparse target files.

use super::*;
use crate::core::source::{BlobSource, BoxFuture, LocalDirSource};
use crate::core::writer::Writer;
use erofs::blob::{encode_blob, Compression};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::AtomicU64;

/// A local directory whose every request takes `delay` and is logged (stored offset).
struct SlowSource {
    inner: LocalDirSource,
    delay: Duration,
    log: Mutex<Vec<u64>>,
    requests: AtomicU64,
}

impl BlobSource for SlowSource {
    fn read_range(&self, id: &str, offset: u64, len: u64) -> BoxFuture<'_, std::io::Result<Vec<u8>>> {
        let id = id.to_string();
        Box::pin(async move {
            self.requests.fetch_add(1, Ordering::Relaxed);
            self.log.lock().unwrap().push(offset);
            tokio::time::sleep(self.delay).await;
            self.inner.read_range(&id, offset, len).await
        })
    }

    fn describe(&self) -> String {
        "slow local directory".into()
    }
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

struct Fixture {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: Vec<u8>,
    image: Arc<Image>,
    source: Arc<SlowSource>,
}

/// An image of one blob of `len` noise bytes in 64 KiB groups (raw: stored = address space).
fn fixture(len: usize, delay: Duration) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let data = noise(len, 42);
    let (stored, rec) = encode_blob(&data, Compression::Zstd, 16).unwrap();
    std::fs::write(dir.join(rec.id_hex()), &stored).unwrap();
    let source = Arc::new(SlowSource { inner: LocalDirSource::new(&dir), delay, log: Mutex::new(Vec::new()), requests: AtomicU64::new(0) });
    let blob = Blob::new(rec, source.clone()).unwrap();
    std::fs::write(dir.join("image.boot"), b"not read by these tests").unwrap();
    let image = Arc::new(Image { id: "ee".repeat(32), bootstrap_path: dir.join("image.boot"), blobs: vec![blob] });
    Fixture { _dir: tmp, dir, data, image, source }
}

impl Fixture {
    fn target(&self, name: &str) -> (Arc<Target>, std::fs::File) {
        let blob = &self.image.blobs[0];
        let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(self.dir.join(name)).unwrap();
        f.set_len(blob.size()).unwrap();
        let fd: OwnedFd = f.try_clone().unwrap().into();
        (Target::new(blob.clone(), fd), f)
    }

    fn start(&self, filler: &Filler, target: &Arc<Target>, cache: &Path, config: PrefetchConfig) -> MountPrefetch {
        let t = target.clone();
        MountPrefetch::start(
            &tokio::runtime::Handle::current(),
            filler.clone(),
            self.image.clone(),
            &self.dir,
            Some(cache),
            &config,
            Arc::new(move |_| Some(t.clone())),
            Arc::new(|_| {}),
        )
    }
}

async fn wait_done(p: &MountPrefetch, limit: Duration) {
    let t0 = Instant::now();
    while !p.progress.done.load(Ordering::Acquire) {
        assert!(t0.elapsed() < limit, "prefetch did not finish within {limit:?}: {}", p.status());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_mode_fills_the_whole_blob_once_and_exactly() {
    let fx = fixture(2 << 20, Duration::ZERO);
    let (target, file) = fx.target("t");
    let filler = Filler::new(Writer::start(), 8);
    let cache = fx.dir.join("cache");
    // A demand fill first: prefetch must skip that group rather than fetch it again.
    filler.fill(&target, 5 * 65536, 10).await.unwrap();
    let cfg = PrefetchConfig { mode: PrefetchMode::Blobs, piece: ByteSize(256 << 10), ..Default::default() };
    let p = fx.start(&filler, &target, &cache, cfg);
    wait_done(&p, Duration::from_secs(20)).await;
    assert!(target.readiness().is_complete());
    let st = &fx.image.blobs[0].stats;
    assert_eq!(st.groups.load(Ordering::Relaxed), 32, "each group fetched once");
    assert_eq!(st.prefetch_groups.load(Ordering::Relaxed), 31);
    assert_eq!(p.progress.groups.load(Ordering::Relaxed), 31);
    let mut back = vec![0u8; fx.data.len()];
    file.read_exact_at(&mut back, 0).unwrap();
    assert!(back == fx.data);
    p.stop();
    // The demand fill was traced and saved; prefetch was not traced.
    let t = Trace::load(&state_trace_path(&cache, &fx.image.id)).unwrap();
    assert_eq!(t.entries, vec![(fx.image.blobs[0].id.clone(), 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_mode_replays_the_recorded_groups_in_order_and_nothing_else() {
    let fx = fixture(2 << 20, Duration::ZERO);
    let filler = Filler::new(Writer::start(), 8);
    let cache = fx.dir.join("cache");
    // First run: a reader touches groups 20, 3, 4 and 11 (in that order).
    {
        let (target, _f) = fx.target("run1");
        let p = fx.start(&filler, &target, &cache, PrefetchConfig::default());
        for (off, len) in [(20 * 65536 + 7, 100), (3 * 65536, 65536 + 1), (11 * 65536, 1)] {
            filler.fill(&target, off, len).await.unwrap();
        }
        p.stop();
    }
    let trace = Trace::load(&state_trace_path(&cache, &fx.image.id)).unwrap();
    let id = fx.image.blobs[0].id.clone();
    assert_eq!(trace.entries, vec![(id.clone(), 20), (id.clone(), 3), (id.clone(), 4), (id.clone(), 11)]);

    // Second run over an empty target: exactly those groups, in that order.
    let (target, file) = fx.target("run2");
    fx.source.log.lock().unwrap().clear();
    let before = fx.image.blobs[0].stats.groups.load(Ordering::Relaxed);
    let cfg = PrefetchConfig { mode: PrefetchMode::Trace, ..Default::default() };
    let p = fx.start(&filler, &target, &cache, cfg);
    wait_done(&p, Duration::from_secs(20)).await;
    let ready: Vec<usize> = (0..32).filter(|&g| target.readiness().is_ready(g)).collect();
    assert_eq!(ready, vec![3, 4, 11, 20]);
    assert_eq!(fx.image.blobs[0].stats.groups.load(Ordering::Relaxed) - before, 4);
    let map = &fx.image.blobs[0].map;
    let starts: Vec<u64> = [20, 3, 11].iter().map(|&g| map.stored_range(g).start).collect();
    assert_eq!(*fx.source.log.lock().unwrap(), starts, "one request per run, in trace order");
    let mut back = vec![0u8; 65536];
    file.read_exact_at(&mut back, 20 * 65536).unwrap();
    assert!(back[..] == fx.data[20 * 65536..21 * 65536]);
    p.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_cap_paces_the_prefetch() {
    // 2 MiB of noise stored raw-sized; 1 MiB/s with a one-piece burst takes >= ~1.75 s.
    let fx = fixture(2 << 20, Duration::ZERO);
    let (target, _f) = fx.target("t");
    let filler = Filler::new(Writer::start(), 8);
    let cfg = PrefetchConfig { mode: PrefetchMode::Blobs, bandwidth: ByteSize(1 << 20), piece: ByteSize(128 << 10), ..Default::default() };
    let stored = fx.image.blobs[0].record.stored_size;
    assert!(stored > 2_000_000, "noise does not compress: {stored}");
    let t0 = Instant::now();
    let p = fx.start(&filler, &target, &fx.dir.join("cache"), cfg);
    wait_done(&p, Duration::from_secs(30)).await;
    let took = t0.elapsed();
    eprintln!("prefetch of {stored} stored bytes at 1 MiB/s took {took:.2?}");
    assert!(target.readiness().is_complete());
    let floor = (stored - (128 << 10)) as f64 / (1 << 20) as f64;
    assert!(took.as_secs_f64() >= floor * 0.95, "took {took:?}, the cap allows no less than {floor:.2} s");
}

/// Measures an on-demand fill of the blob's last group while a blobs-mode prefetch of a slow
/// source runs, with `slots` fetch slots in the filler.
async fn demand_during_prefetch(slots: usize) -> (Duration, Duration) {
    let delay = Duration::from_millis(300);
    let fx = fixture(4 << 20, delay); // 64 groups
    let (target, _f) = fx.target("t");
    let filler = Filler::new(Writer::start(), slots);
    let cfg = PrefetchConfig { mode: PrefetchMode::Blobs, piece: ByteSize(64 << 10), ..Default::default() };
    let p = fx.start(&filler, &target, &fx.dir.join("cache"), cfg);
    tokio::time::sleep(Duration::from_millis(450)).await; // mid-way through the second request
    assert!(!target.readiness().is_ready(63), "prefetch has not reached the far group");
    let t0 = Instant::now();
    filler.fill(&target, 63 * 65536, 4096).await.unwrap();
    let took = t0.elapsed();
    assert!(p.progress.groups.load(Ordering::Relaxed) < 10, "prefetch is still early in the blob");
    p.stop();
    (took, delay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demand_does_not_wait_for_the_prefetch_queue() {
    let (took, delay) = demand_during_prefetch(8).await;
    eprintln!("on-demand fill during prefetch (8 slots): {took:.2?}, request time {delay:?}");
    assert!(took < 2 * delay, "on-demand fill took {took:?}: it waited behind prefetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_fetch_slot_demand_waits_for_at_most_one_prefetch_request() {
    let (took, delay) = demand_during_prefetch(1).await;
    eprintln!("on-demand fill during prefetch (1 slot): {took:.2?}, request time {delay:?}");
    // At most the prefetch request on the wire, then its own request.
    assert!(took < delay * 5 / 2, "on-demand fill took {took:?}: it waited behind more than one prefetch request");
}

#[test]
fn plan_coalesces_trace_runs_and_covers_blobs() {
    let fx = fixture(1 << 20, Duration::ZERO); // 16 groups
    let id = fx.image.blobs[0].id.clone();
    let t = Trace {
        image_id: fx.image.id.clone(),
        image: None,
        entries: vec![(id.clone(), 4), (id.clone(), 5), (id.clone(), 6), (id.clone(), 1), ("ab".repeat(32), 2), (id.clone(), 99)],
    };
    assert_eq!(plan(&fx.image, PrefetchMode::Trace, Some(&t), 2), vec![(0, 4, 5), (0, 6, 6), (0, 1, 1)]);
    let b = plan(&fx.image, PrefetchMode::Blobs, Some(&t), 8);
    assert_eq!(b, vec![(0, 0, 7), (0, 8, 15)]);
    assert_eq!(plan(&fx.image, PrefetchMode::TraceBlobs, Some(&t), 8).len(), 4);
    assert!(plan(&fx.image, PrefetchMode::None, Some(&t), 8).is_empty());
}

#[test]
fn config_parses_modes_and_sizes() {
    #[derive(Deserialize)]
    struct W {
        prefetch: PrefetchConfig,
    }
    let w: W = toml::from_str("[prefetch]\nmode = \"trace+blobs\"\nbandwidth = \"8M\"\n").unwrap();
    assert_eq!(w.prefetch.mode, PrefetchMode::TraceBlobs);
    assert_eq!(w.prefetch.bandwidth, ByteSize(8 << 20));
    let w: W = toml::from_str("[prefetch]\nbandwidth = 1000\n").unwrap();
    assert_eq!((w.prefetch.mode, w.prefetch.bandwidth.0), (PrefetchMode::None, 1000));
    assert!(toml::from_str::<W>("[prefetch]\nmode = \"all\"\n").is_err());
    assert!(toml::from_str::<W>("[prefetch]\nbandwith = 1\n").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trace_is_saved_periodically_and_grows_from_its_base() {
    let fx = fixture(1 << 20, Duration::ZERO);
    let filler = Filler::new(Writer::start(), 8);
    let cache = fx.dir.join("cache");
    let path = state_trace_path(&cache, &fx.image.id);
    let id = fx.image.blobs[0].id.clone();
    {
        let (target, _f) = fx.target("run1");
        let p = fx.start(&filler, &target, &cache, PrefetchConfig { trace_save_interval: 1, ..Default::default() });
        filler.fill(&target, 9 * 65536, 1).await.unwrap();
        let t0 = Instant::now();
        while !path.exists() {
            assert!(t0.elapsed() < Duration::from_secs(5), "no periodic save");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(Trace::load(&path).unwrap().entries, vec![(id.clone(), 9)]);
        drop(p); // a crash: no final save, the periodic one stays
    }
    // A trace-mode run: group 9 is prefetched (so never missed); a new miss (2) is appended.
    let (target, _f) = fx.target("run2");
    let p = fx.start(&filler, &target, &cache, PrefetchConfig { mode: PrefetchMode::Trace, ..Default::default() });
    wait_done(&p, Duration::from_secs(10)).await;
    filler.fill(&target, 2 * 65536, 1).await.unwrap();
    p.stop();
    assert_eq!(Trace::load(&path).unwrap().entries, vec![(id.clone(), 9), (id, 2)]);
}

#[test]
fn daemon_config_has_a_prefetch_table() {
    let c: crate::daemon::config::Config = toml::from_str("[prefetch]\nmode = \"blobs\"\nbandwidth = \"8M\"\nmax_in_flight = 2\n").unwrap();
    assert_eq!((c.prefetch.mode, c.prefetch.bandwidth.0, c.prefetch.max_in_flight), (PrefetchMode::Blobs, 8 << 20, 2));
    let d = crate::daemon::config::Config::default();
    assert_eq!(d.prefetch.mode, PrefetchMode::None);
    // Old mount requests (no prefetch fields) still parse; overrides apply on top of the daemon's.
    let r: crate::frontend::MountRequest = serde_json::from_str(r#"{"image":"/i","mountpoint":"/m"}"#).unwrap();
    assert_eq!(r.prefetch_config(&c.prefetch), c.prefetch);
    let r: crate::frontend::MountRequest =
        serde_json::from_str(r#"{"image":"/i","mountpoint":"/m","prefetch":"trace+blobs","prefetch_bandwidth":0}"#).unwrap();
    let pc = r.prefetch_config(&c.prefetch);
    assert_eq!((pc.mode, pc.bandwidth.0), (PrefetchMode::TraceBlobs, 0));
}
