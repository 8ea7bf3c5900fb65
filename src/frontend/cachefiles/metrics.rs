//! Counters of the cachefiles front-end, for `GET /api/v1/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Keep at most this many READ latency samples (a ring: the newest win).
const MAX_SAMPLES: usize = 1 << 18;

#[derive(Default)]
pub struct Metrics {
    pub opens: AtomicU64,
    /// OPENs answered with an error (unknown keys, bad message).
    pub opens_rejected: AtomicU64,
    pub closes: AtomicU64,
    pub reads: AtomicU64,
    /// READs completed without data (the reader got EIO).
    pub reads_failed: AtomicU64,
    /// Bytes the kernel asked for in READs that were served.
    pub read_bytes: AtomicU64,
    /// Bootstrap bytes written into cache objects (prefill and READs).
    pub bootstrap_bytes: AtomicU64,
    /// READ_COMPLETE ioctls the kernel refused (object gone, id reused on old kernels).
    pub complete_errors: AtomicU64,
    /// Background fills started ahead of a sequential reader.
    pub prefetches: AtomicU64,
    /// Errors reading /dev/cachefiles.
    pub device_errors: AtomicU64,
    latencies: Mutex<Latencies>,
}

#[derive(Default)]
struct Latencies {
    samples: Vec<u32>,
    next: usize,
}

impl Metrics {
    /// Records one READ round trip (message read → ioctl issued).
    pub fn record_read_latency(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        let mut l = self.latencies.lock().expect("latency lock");
        if l.samples.len() < MAX_SAMPLES {
            l.samples.push(us);
        } else {
            let i = l.next;
            l.samples[i] = us;
            l.next = (i + 1) % MAX_SAMPLES;
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut sorted = self.latencies.lock().expect("latency lock").samples.clone();
        sorted.sort_unstable();
        let pct = |p: f64| -> u32 {
            if sorted.is_empty() {
                return 0;
            }
            let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
            sorted[idx.min(sorted.len() - 1)]
        };
        serde_json::json!({
            "opens": get(&self.opens),
            "opens_rejected": get(&self.opens_rejected),
            "closes": get(&self.closes),
            "reads": get(&self.reads),
            "reads_failed": get(&self.reads_failed),
            "read_bytes": get(&self.read_bytes),
            "bootstrap_bytes": get(&self.bootstrap_bytes),
            "complete_errors": get(&self.complete_errors),
            "device_errors": get(&self.device_errors),
            "prefetches": get(&self.prefetches),
            "read_latency_us": {
                "samples": sorted.len(),
                "p50": pct(0.50),
                "p90": pct(0.90),
                "p99": pct(0.99),
                "max": sorted.last().copied().unwrap_or(0),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_from_samples() {
        let m = Metrics::default();
        for us in 1..=100u64 {
            m.record_read_latency(Duration::from_micros(us));
        }
        m.reads.fetch_add(100, Ordering::Relaxed);
        let j = m.to_json();
        assert_eq!(j["reads"], 100);
        assert_eq!(j["read_latency_us"]["samples"], 100);
        assert_eq!(j["read_latency_us"]["p50"], 51);
        assert_eq!(j["read_latency_us"]["p99"], 99);
        assert_eq!(j["read_latency_us"]["max"], 100);
    }
}
