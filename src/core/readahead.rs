//! Read-ahead for sequential readers, shared by both front-ends.
//!
//! The kernel asks for one window at a time and waits for each (cachefiles: its readahead
//! window per READ; fanotify: each backing-file read). Without read-ahead every group boundary
//! costs a whole fetch-decode-write round trip on the reader's critical path. When a request
//! continues where the previous one on the same target ended, the groups after it are filled in
//! the background, in pieces that are fetched and decoded in parallel (from local blobs one per
//! CPU, nearest first). Nobody waits for them: a request that reaches a group still in flight
//! waits for that group only (single flight), and a failed read-ahead costs nothing but the
//! attempt. A request that lands in a group read-ahead claimed but has not filled yet continues
//! the stream wherever the previous request was.
//!
//! From a source where bytes cost (a registry: `BlobSource::request_overhead() > 0`) the window
//! ramps up: a stream gets read-ahead of half what it has already read sequentially (up to the
//! policy's window), as the kernel's own readahead ramps up. A reader that really streams a
//! large file reaches the full window after reading that much; a startup that touches many small
//! neighbouring files, or a few pages of a library, gets little. Against a registry, fixed large
//! windows tripled the bytes fetched for a `python3 -c 'import json'` startup
//! (scripts/bench-registry.sh). From local blobs the full window applies at once: bytes are
//! cheap there, and a cold sequential reader should not pay a ramp. A policy may also let the
//! window from local blobs grow with the streak (`ramp`): fanotify does, since its reader pays
//! an event round trip per read until the whole blob is filled and its mark removed.
//!
//! From a costly source every miss, stream or not, also has its *neighbourhood* fetched: the
//! groups after it worth one request's overhead in stored bytes, as one request beside the
//! reader's own. A program's startup reads files in import order, not blob order, but mostly
//! from the same package directories, which builders store together; each miss is a round trip
//! the reader waits for, and the neighbourhood costs at most one request's worth of transfer.
//! A miss that starts no stream speculates only while a speculation slot is free
//! ([`super::fill::SPECULATIONS`]), so speculative bytes never queue deep ahead of the ones
//! readers wait for. On the container benchmark's Python stack (scripts/bench-containers.sh,
//! 100 Mbit/s with 20 ms of round trip) this cut the start from 105–132 s to about 40 s, with
//! 1.7x the bytes; docs/registry.md, "Benchmark: container start through nerdctl", has the
//! figures and the trade-off.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::fill::{CpuSlot, Filler, Origin, Target};
use super::readiness::Readiness;

/// How much to read ahead, tuned per front-end (their request sizes differ).
#[derive(Clone, Copy, Debug)]
pub struct ReadAheadPolicy {
    /// Bytes after the request to have in flight.
    pub window: u64,
    /// From a free source, the window grows to this many times the reader's current streak
    /// (0: it stays `window`). A reader that has streamed N bytes gets up to `ramp` x N filled
    /// ahead of it, so the bytes filled and never read stay a bounded multiple of those read.
    pub ramp: u64,
    /// Each background fill covers this much (at least one group): the unit of parallelism.
    pub piece: u64,
    /// A request starting within this distance (at least one group) of the previous request's
    /// end is sequential.
    pub slack: u64,
    /// Also require the group before the request to be filled already: a reader walking
    /// forward through data, not one that merely touched two neighbouring places (fanotify sees
    /// every small-file read, and adjacent small files are not a stream).
    pub require_filled_behind: bool,
}

/// Per-target read-ahead state.
pub struct ReadAheadState {
    /// End of the previous request (0: none yet).
    last_end: AtomicU64,
    /// Where the current sequential streak began.
    streak_start: AtomicU64,
    /// Groups a read-ahead was already started for (each is requested once).
    requested: Readiness,
    /// Stored offset up to which the source was told it will be read ([`STORED_HINT`]).
    hinted_until: AtomicU64,
    /// Read-ahead pieces (uncompressed offsets) not started yet (from a free source: waiting for
    /// a CPU slot); the lowest runs first.
    queued: Mutex<BinaryHeap<Reverse<u64>>>,
}

/// A sequential reader of a source with free requests has the source start reading this many
/// stored bytes ahead of it (`BlobSource::will_need`), renewed when it is half used up: far
/// more than the fill window, because the hint costs no thread and makes large disk reads.
const STORED_HINT: u64 = 16 << 20;

impl ReadAheadState {
    pub fn new(groups: usize) -> ReadAheadState {
        ReadAheadState {
            last_end: AtomicU64::new(0),
            streak_start: AtomicU64::new(0),
            requested: Readiness::new(groups),
            hinted_until: AtomicU64::new(0),
            queued: Mutex::new(BinaryHeap::new()),
        }
    }
}

impl Filler {
    /// Notes a kernel request for `[offset, offset + len)` of `target` and, if it continues the
    /// previous one, starts background fills of the window after it. `on_filled` runs after
    /// each successful piece (fanotify removes a complete blob's mark there). The fills run on
    /// `rt` (front-ends call this from their own kernel-reading threads). Returns the number of
    /// fills started.
    pub fn read_ahead<F>(
        &self,
        rt: &tokio::runtime::Handle,
        target: &Arc<Target>,
        policy: &ReadAheadPolicy,
        offset: u64,
        len: u64,
        on_filled: F,
    ) -> usize
    where
        F: Fn() + Clone + Send + 'static,
    {
        let state = target.read_ahead_state();
        let end = offset.saturating_add(len);
        let prev = state.last_end.swap(end, Ordering::Relaxed);
        let size = target.blob.size();
        let gs = target.blob.map.group_size();
        let overhead = target.blob.source.request_overhead();
        // A request the reader will wait a round trip for. From a costly source its
        // neighbourhood is fetched beside it ([`Filler::neighbourhood`]), stream or not.
        let miss = overhead > 0 && !target.is_ready(offset, len);
        let continues = prev != 0 && offset.abs_diff(prev) <= policy.slack.max(gs);
        // A request for a group read-ahead has claimed but not yet filled is the reader
        // catching up with its read-ahead: the stream goes on, though the request may start far
        // from the previous one (cachefiles asks only for what is missing, so the previous READ
        // may be a whole window back). Without this the window stopped there, and the reader
        // then waited at its end for an on-demand fill while the daemon sat idle.
        let caught_up = || {
            let g = (offset / gs) as usize;
            state.requested.is_ready(g) && !target.readiness().is_ready(g)
        };
        let stream = continues || caught_up();
        if !stream {
            state.streak_start.store(offset, Ordering::Relaxed);
        }
        if end >= size || !(stream || miss) {
            return 0;
        }
        let behind_filled = offset >= gs && target.is_ready(offset - gs, 1);
        if policy.require_filled_behind && !behind_filled && !miss {
            return 0;
        }
        let mut at = end.div_ceil(gs) * gs;
        // Concurrent readers of one target race on these two atomics; the worst outcome is a
        // window computed from the other reader's streak, which only changes how far ahead.
        let streak = end.saturating_sub(state.streak_start.load(Ordering::Relaxed));
        let (window, piece) = if overhead > 0 {
            // Pieces of one request's worth of stored bytes: a piece costs at most twice what
            // its request costs anyway.
            let near = self.neighbourhood(target, at, overhead, policy.window);
            let streaming = if stream && (behind_filled || !policy.require_filled_behind) { policy.window.min(streak / 2) } else { 0 };
            let window = if miss { streaming.max(at + near - end) } else { streaming };
            (window, near.max(policy.piece))
        } else {
            (policy.window.max(streak.saturating_mul(policy.ramp)), policy.piece)
        };
        let piece = piece.max(gs).div_ceil(gs) * gs;
        let stop = end.saturating_add(window).min(size);
        // A miss that starts no stream only speculates, and only while few speculations are in
        // flight: bytes fetched for a reader that may never come must not queue ahead of the
        // ones readers wait for.
        let mut speculation = if miss && !stream {
            match self.speculation_slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return 0,
            }
        } else {
            None
        };
        // Whole pieces already claimed are skipped a bitmap word at a time: with a ramped
        // window most of it was claimed by earlier requests of the same stream, and this runs
        // on the front-end's event thread for every request.
        let unclaimed = (state.requested.first_unready_from((at / gs) as usize) as u64 * gs).min(stop);
        at += (unclaimed.saturating_sub(at) / piece) * piece;
        let mut pieces = Vec::new();
        while at < stop {
            let first = (at / gs) as usize;
            let last = ((at + piece).min(size).div_ceil(gs) as usize).saturating_sub(1);
            // From a costly source a piece (one request's worth) may reach past the window: it
            // starts only for a group inside the window, and what lies past it comes along.
            let within = if overhead > 0 { last.min((stop.div_ceil(gs) as usize).saturating_sub(1)) } else { last };
            // Claim the piece for read-ahead once; on-demand fills are unaffected by the bits.
            // From a free source pieces have one size and the first group claims one; from a
            // costly source each is one request's worth of stored bytes, so pieces of
            // different requests overlap, and any group of the window not claimed yet does.
            let claimed = if overhead > 0 {
                (first..=within).filter(|&g| !target.readiness().is_ready(g)).fold(false, |won, g| state.requested.set_ready(g) | won)
            } else {
                (first..=within).any(|g| !target.readiness().is_ready(g)) && state.requested.set_ready(first)
            };
            if claimed {
                for g in first + 1..=last {
                    state.requested.set_ready(g);
                }
                pieces.push(at);
            }
            at += piece;
        }
        let started = pieces.len();
        if started == 0 {
            return 0;
        }
        // From a free source a piece is CPU work (read, decode, CRC): pieces decode one per
        // CPU, each giving its slot back before its write ([`CpuSlot`]). From a costly source
        // a piece mostly waits on the network: all run at once. Either way each task takes the
        // nearest piece still queued for this target (the reader needs it first), whichever
        // request queued it. An on-demand fill of a queued piece's group does not wait for the
        // queue: it claims the group itself, and the piece later finds it filled.
        let cpu_slots = (overhead == 0).then(|| self.read_ahead_slots.clone());
        state.queued.lock().expect("read-ahead queue").extend(pieces.into_iter().map(Reverse));
        for _ in 0..started {
            let (this, t, slots, done) = (self.clone(), target.clone(), cpu_slots.clone(), on_filled.clone());
            let held = speculation.take();
            rt.spawn(async move {
                let _held = held;
                // (Acquiring cannot fail: nothing closes the semaphore.)
                let permit = match slots {
                    Some(slots) => slots.acquire_owned().await.ok(),
                    None => None,
                };
                let next = t.read_ahead_state().queued.lock().expect("read-ahead queue").pop();
                if let Some(Reverse(at)) = next {
                    if this.fill_in_slot(&t, at, piece, Origin::ReadAhead, CpuSlot::holding(permit)).await.is_ok() {
                        done();
                    }
                }
            });
        }
        if cpu_slots.is_some() {
            self.hint_stored_ahead(rt, target, state, end, stop);
        }
        started
    }

    /// The uncompressed length, from group-aligned `at`, of the groups whose stored bytes add
    /// up to `overhead` (what one more request costs), at most `max_len`: fetched with a miss,
    /// they cost at most one request's worth of transfer, and a reader that goes on to them
    /// saves a round trip (module doc).
    fn neighbourhood(&self, target: &Target, at: u64, overhead: u64, max_len: u64) -> u64 {
        let map = &target.blob.map;
        let gs = map.group_size();
        let count = map.group_count();
        let first = (at / gs) as u32;
        if first >= count {
            return 0;
        }
        let start = map.stored_range(first).start;
        let last = count.min(first.saturating_add((max_len / gs).max(1) as u32)) - 1;
        let mut g = first;
        // (Saturating: nydus pages of one chunk share a stored range, and a deduplicated chunk
        // may be stored before its predecessor.)
        while g < last && map.stored_range(g).end.saturating_sub(start) < overhead {
            g += 1;
        }
        (g + 1 - first) as u64 * gs
    }

    /// Tells the source the stored bytes after uncompressed offset `end` will be read soon: at
    /// least [`STORED_HINT`] of them, and all of the read-ahead window up to `window_end` (a
    /// ramped window runs far ahead of the reader, and its pieces would otherwise each wait for
    /// their own disk read), when the previous hint is half used up or the window has grown
    /// past it.
    fn hint_stored_ahead(&self, rt: &tokio::runtime::Handle, target: &Arc<Target>, state: &ReadAheadState, end: u64, window_end: u64) {
        let map = &target.blob.map;
        let last = map.group_count().saturating_sub(1) as u64;
        let from = map.stored_range((end / map.group_size()).min(last) as u32).start;
        let window_stored_end = map.stored_range((window_end.saturating_sub(1) / map.group_size()).min(last) as u32).end;
        let hinted = state.hinted_until.load(Ordering::Relaxed);
        if hinted >= from + STORED_HINT / 2 && hinted >= window_stored_end {
            return;
        }
        let start = hinted.max(from);
        // Past the window by half a hint, so a growing window renews it every few MiB, not on
        // every request.
        let stop = (from + STORED_HINT).max(window_stored_end + STORED_HINT / 2);
        if state.hinted_until.compare_exchange(hinted, stop, Ordering::Relaxed, Ordering::Relaxed).is_err() {
            return; // a concurrent reader of this target just did it
        }
        let (source, id) = (target.blob.source.clone(), target.blob.id.clone());
        rt.spawn_blocking(move || source.will_need(&id, start, stop - start));
    }
}
