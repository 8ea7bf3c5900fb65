//! Front-end counters for `GET /api/v1/metrics` (`frontend` object).

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    /// Pre-content events read from the group (every one is answered).
    pub events: AtomicU64,
    /// Answered ALLOW at once: the range was already in the cache file.
    pub fast_allowed: AtomicU64,
    /// Answered ALLOW after a fill.
    pub filled_allowed: AtomicU64,
    /// Answered FAN_DENY_ERRNO(EIO): fill failed, bad range, unknown file.
    pub denied: AtomicU64,
    /// Queue overflow markers (cannot happen with FAN_UNLIMITED_QUEUE; counted if it does).
    pub overflows: AtomicU64,
    /// Responses the kernel refused (e.g. ENOENT).
    pub respond_errors: AtomicU64,
    /// Marks removed because a blob became complete.
    pub marks_removed: AtomicU64,
    /// Read-ahead fills started for sequential readers.
    pub prefetches: AtomicU64,
    /// Events of a previous worker answered from the journal after a restart.
    pub replayed: AtomicU64,
    /// Unjournaled events of a previous worker found by the fd sweep and answered EIO.
    pub orphans_denied: AtomicU64,
    /// Events raised by this process's own writes (a cache file reopened after a takeover:
    /// its write fd notifies), answered ALLOW at once.
    pub own_allowed: AtomicU64,
}

impl Metrics {
    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "events": g(&self.events),
            "fast_allowed": g(&self.fast_allowed),
            "filled_allowed": g(&self.filled_allowed),
            "denied": g(&self.denied),
            "overflows": g(&self.overflows),
            "respond_errors": g(&self.respond_errors),
            "marks_removed": g(&self.marks_removed),
            "replayed": g(&self.replayed),
            "prefetches": g(&self.prefetches),
            "orphans_denied": g(&self.orphans_denied),
            "own_allowed": g(&self.own_allowed),
        })
    }
}
