//! Access traces: the order in which a mount's groups were first needed on demand.
//!
//! Each [`Target`](super::fill::Target) keeps a [`TraceLog`]: every group an on-demand fill
//! asks for is noted once, with a process-wide sequence number, so the logs of an image's
//! blobs can be merged back into one time order. The prefetcher ([`super::prefetch`]) saves
//! the merged order as a trace file and replays it on a later run; `erofsd trace export` maps
//! it back to file paths for `erofsd build --prefetch-list`.
//!
//! Trace file (text, one record a line, `#` starts a comment):
//!
//! ```text
//! # erofsd access trace v1
//! image-id <sha256 of the bootstrap, hex>
//! image <image directory or bootstrap path the trace was recorded for>
//! <blob id hex> <group index>
//! …
//! ```
//!
//! Accesses the front-end answers without the fill engine (fanotify's fast path for a range
//! already filled, e.g. by read-ahead) are noted through [`Target::note_access`](super::fill::Target::note_access).
//! What the kernel never asks about is not seen: a blob whose mark is gone (complete), or
//! cachefiles objects already in the cache, record nothing.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};

use super::readiness::Readiness;

/// Orders entries across all targets of the process.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// First-access log of one target: at most one entry per group.
pub struct TraceLog {
    seen: Readiness,
    entries: Mutex<Vec<(u64, u32)>>,
}

impl TraceLog {
    pub fn new(groups: usize) -> TraceLog {
        TraceLog { seen: Readiness::new(groups), entries: Mutex::new(Vec::new()) }
    }

    /// Notes groups `first..=last` (those not noted before), in order.
    pub fn note(&self, first: u32, last: u32) {
        for g in first..=last {
            if self.seen.set_ready(g as usize) {
                let seq = SEQ.fetch_add(1, Ordering::Relaxed);
                self.entries.lock().expect("trace log").push((seq, g));
            }
        }
    }

    /// `(sequence, group)` pairs noted so far.
    pub fn snapshot(&self) -> Vec<(u64, u32)> {
        self.entries.lock().expect("trace log").clone()
    }

    pub fn len(&self) -> usize {
        self.entries.lock().expect("trace log").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl super::fill::Target {
    /// Notes a kernel access the front-end served without the fill engine (a range already
    /// filled, e.g. by read-ahead), so the trace holds every group the kernel asked for.
    pub fn note_access(&self, offset: u64, len: u64) {
        let size = self.blob.size();
        if len == 0 || offset >= size {
            return;
        }
        if let Ok(run) = self.blob.map.map(offset, len.min(size - offset)) {
            self.trace().note(run.first, run.last);
        }
    }
}

/// One image's trace: `(blob id hex, group)` in first-access order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub image_id: String,
    /// Where the image was when the trace was recorded (a hint for `trace export`).
    pub image: Option<PathBuf>,
    pub entries: Vec<(String, u32)>,
}

/// Upper bound on a trace file we read (a trace holds one line per group: 10M groups of
/// 256 KiB is 2.5 TB of blobs).
pub const MAX_TRACE_FILE: u64 = 1 << 30;
pub const TRACE_MAGIC: &str = "# erofsd access trace v1";

impl Trace {
    /// Merges per-blob logs (blob id, log snapshot) into one time order.
    pub fn merge(image_id: &str, image: Option<PathBuf>, logs: &[(String, Vec<(u64, u32)>)]) -> Trace {
        let mut all: Vec<(u64, &str, u32)> = Vec::new();
        for (id, log) in logs {
            all.extend(log.iter().map(|&(seq, g)| (seq, id.as_str(), g)));
        }
        all.sort_unstable_by_key(|e| e.0);
        let mut seen = HashSet::new();
        let entries = all
            .into_iter()
            .filter(|&(_, id, g)| seen.insert((id.to_string(), g)))
            .map(|(_, id, g)| (id.to_string(), g))
            .collect();
        Trace { image_id: image_id.to_string(), image, entries }
    }

    /// `self` followed by the entries of `newer` it does not hold yet.
    pub fn union(&self, newer: &Trace) -> Trace {
        let mut seen: HashSet<(String, u32)> = self.entries.iter().cloned().collect();
        let mut out = self.clone();
        out.image = newer.image.clone().or(out.image);
        for e in &newer.entries {
            if seen.insert(e.clone()) {
                out.entries.push(e.clone());
            }
        }
        out
    }

    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(32 + self.entries.len() * 70);
        s.push_str(TRACE_MAGIC);
        s.push('\n');
        s.push_str(&format!("image-id {}\n", self.image_id));
        if let Some(p) = &self.image {
            // A path with a newline cannot be written on one line; leave the hint out.
            if let Some(t) = p.to_str().filter(|t| !t.contains('\n')) {
                s.push_str(&format!("image {t}\n"));
            }
        }
        for (id, g) in &self.entries {
            s.push_str(&format!("{id} {g}\n"));
        }
        s
    }

    /// True if `text` starts like a trace file (so `--prefetch-list` can accept one).
    pub fn looks_like(text: &str) -> bool {
        text.starts_with(TRACE_MAGIC)
    }

    pub fn parse(text: &str) -> Result<Trace> {
        if !Trace::looks_like(text) {
            bail!("not an erofsd trace (first line is not {TRACE_MAGIC:?})");
        }
        let mut t = Trace::default();
        for (n, line) in text.lines().enumerate().skip(1) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, rest) = line.split_once(' ').with_context(|| format!("trace line {}: {line:?}", n + 1))?;
            match key {
                "image-id" => t.image_id = check_hex(rest.trim()).with_context(|| format!("trace line {}", n + 1))?,
                "image" => t.image = Some(PathBuf::from(rest)),
                id => {
                    let id = check_hex(id).with_context(|| format!("trace line {}", n + 1))?;
                    let g: u32 = rest.trim().parse().with_context(|| format!("trace line {}: bad group {rest:?}", n + 1))?;
                    t.entries.push((id, g));
                }
            }
        }
        Ok(t)
    }

    pub fn load(path: &Path) -> Result<Trace> {
        let meta = std::fs::metadata(path).with_context(|| format!("trace {}", path.display()))?;
        if meta.len() > MAX_TRACE_FILE {
            bail!("trace {} is {} bytes, over the {} limit", path.display(), meta.len(), MAX_TRACE_FILE);
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading trace {}", path.display()))?;
        Trace::parse(&text).with_context(|| format!("trace {}", path.display()))
    }

    /// Writes the trace atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-trace-")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary trace in {}", dir.display()))?;
        tmp.write_all(self.to_text().as_bytes()).context("writing the trace")?;
        tmp.as_file().sync_all().context("syncing the trace")?;
        tmp.persist(path).with_context(|| format!("renaming to {}", path.display()))?;
        Ok(())
    }
}

fn check_hex(s: &str) -> Result<String> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
        bail!("{s:?} is not a 64-character lowercase hex id");
    }
    Ok(s.to_string())
}

/// The state-dir trace of an image: `<cache_dir>/state/trace/<image id>.trace`.
pub fn state_trace_path(cache_dir: &Path, image_id: &str) -> PathBuf {
    cache_dir.join("state").join("trace").join(format!("{image_id}.trace"))
}

/// The trace `erofsd build --prefetch-list` leaves next to `image.boot`: the listed files'
/// groups in the new image, in list order.
pub const IMAGE_TRACE_NAME: &str = "prefetch.trace";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_merge_in_time_order_and_round_trip() {
        let (a, b) = ("aa".repeat(32), "bb".repeat(32));
        let la = TraceLog::new(10);
        let lb = TraceLog::new(10);
        la.note(3, 3);
        lb.note(0, 1);
        la.note(2, 3); // 3 again: not noted twice
        let t = Trace::merge(&"cc".repeat(32), Some("/img".into()), &[(a.clone(), la.snapshot()), (b.clone(), lb.snapshot())]);
        assert_eq!(t.entries, vec![(a.clone(), 3), (b.clone(), 0), (b.clone(), 1), (a.clone(), 2)]);
        let back = Trace::parse(&t.to_text()).unwrap();
        assert_eq!(back, t);
        let u = back.union(&Trace { entries: vec![(b.clone(), 1), (b.clone(), 7)], ..Default::default() });
        assert_eq!(u.entries.len(), 5);
        assert_eq!(u.entries[4], (b, 7));
    }

    #[test]
    fn bad_traces_are_errors() {
        assert!(Trace::parse("hello\n").is_err());
        assert!(Trace::parse(&format!("{TRACE_MAGIC}\n../x 1\n")).is_err());
        assert!(Trace::parse(&format!("{TRACE_MAGIC}\n{} -1\n", "aa".repeat(32))).is_err());
        assert!(Trace::parse(&format!("{TRACE_MAGIC}\n{} 99999999999\n", "aa".repeat(32))).is_err());
    }
}
