//! Answering the kernel: OPEN, READ and CLOSE.
//!
//! OPEN and CLOSE are handled inline by the reader thread (they are quick, and a READ for an
//! object must never be dispatched before its OPEN was recorded). Each READ becomes a task on
//! the tokio runtime, so a slow fetch never holds up any other request; the task always ends
//! with the READ_COMPLETE ioctl, also on failure (the kernel then finds the range still a hole
//! and fails the reader with EIO — the protocol's only error path).

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachefiles::{read_complete, CloseRequest, Device, ErofsKeys, OpenRequest, ReadRequest};
use tracing::{debug, info, warn};

use super::bootstrap::ENOBUFS_RETRIES;
use super::metrics::Metrics;
use super::objects::{Kind, Object, ObjectTable};
use super::registry::{Lookup, Registry};
use crate::core::fill::{Filler, Target};
use crate::core::readahead::ReadAheadPolicy;

/// Everything the handlers share.
pub struct Shared {
    pub device: Device,
    pub registry: Registry,
    pub objects: ObjectTable,
    pub filler: Filler,
    pub metrics: Metrics,
    pub rt: tokio::runtime::Handle,
}


pub fn handle_open(shared: &Arc<Shared>, o: OpenRequest<OwnedFd>) {
    let m = &shared.metrics;
    m.opens.fetch_add(1, Ordering::Relaxed);
    let keys = match ErofsKeys::parse(&o.volume_key, &o.cookie_key) {
        Ok(k) => k,
        Err(e) => {
            warn!("OPEN {} (object {}): {e}; rejecting", o.msg_id, o.object_id);
            return reject(shared, o.msg_id, o.fd);
        }
    };
    let (kind, size) = match shared.registry.lookup(&keys.volume, &keys.cookie) {
        Lookup::Unknown => {
            warn!(
                "OPEN {} (object {}): volume {:?} cookie {:?} is not an image or blob this daemon serves; rejecting",
                o.msg_id, o.object_id, keys.volume, keys.cookie
            );
            return reject(shared, o.msg_id, o.fd);
        }
        Lookup::Bootstrap(boot) => {
            let size = boot.size;
            (Kind::Bootstrap { boot, fd: o.fd }, size)
        }
        Lookup::Blob(blob) => {
            let size = blob.size();
            (Kind::Blob { target: Target::new(blob, o.fd) }, size)
        }
    };
    let obj = Arc::new(Object {
        object_id: o.object_id,
        cookie: keys.cookie.clone(),
        kind,
        scanned: Default::default(),
    });
    if let Some(old) = shared.objects.insert(obj.clone()) {
        debug!("object {} re-opened (stale entry for {} dropped)", o.object_id, old.cookie);
    }
    if let Err(e) = shared.device.copen(o.msg_id, size) {
        warn!("OPEN {}: copen failed: {e}", o.msg_id);
        shared.objects.remove(o.object_id);
        m.opens_rejected.fetch_add(1, Ordering::Relaxed);
        return;
    }
    info!("OPEN object {} volume {} cookie {} size {size}", o.object_id, keys.volume, keys.cookie);
    if let Kind::Bootstrap { boot, .. } = &obj.kind {
        // Metadata never waits for the network: put the whole bootstrap in the cache now (a
        // zero extent past it is written when the kernel asks for it).
        let (shared2, obj2, boot) = (shared.clone(), obj.clone(), boot.clone());
        shared.rt.spawn_blocking(move || {
            match boot.write(obj2.fd(), 0, boot.prefill_len()) {
                Ok(n) => {
                    shared2.metrics.bootstrap_bytes.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => warn!("prefilling bootstrap object {}: {e} (READs will still be served)", obj2.object_id),
            }
        });
    }
}

fn reject(shared: &Shared, msg_id: u32, fd: OwnedFd) {
    // Close the anon fd first: an unanswered object would otherwise pin the cache.
    drop(fd);
    shared.metrics.opens_rejected.fetch_add(1, Ordering::Relaxed);
    if let Err(e) = shared.device.copen_error(msg_id, libc::ENOENT) {
        warn!("OPEN {msg_id}: copen error answer failed: {e}");
    }
}

pub fn handle_close(shared: &Shared, c: CloseRequest) {
    shared.metrics.closes.fetch_add(1, Ordering::Relaxed);
    match shared.objects.remove(c.object_id) {
        Some(obj) => info!("CLOSE object {} ({})", c.object_id, obj.cookie),
        None => debug!("CLOSE for unknown object {}", c.object_id),
    }
}

pub fn handle_read(shared: &Arc<Shared>, r: ReadRequest, received: Instant) {
    let m = &shared.metrics;
    m.reads.fetch_add(1, Ordering::Relaxed);
    let Some(obj) = shared.objects.get(r.object_id) else {
        // Without the object's fd the READ cannot even be completed; it fails when the object
        // closes. Only a kernel bug or a lost OPEN gets here.
        warn!("READ {} for unknown object {}", r.msg_id, r.object_id);
        m.reads_failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let shared = shared.clone();
    shared.rt.clone().spawn(async move {
        let result = serve_read(&shared, &obj, r).await;
        let m = &shared.metrics;
        match &result {
            Ok(()) => {
                m.read_bytes.fetch_add(r.len, Ordering::Relaxed);
            }
            Err(e) => {
                m.reads_failed.fetch_add(1, Ordering::Relaxed);
                warn!("READ {} object {} ({}) {}+{}: {e}; the reader gets EIO", r.msg_id, r.object_id, obj.cookie, r.off, r.len);
            }
        }
        if let Err(e) = read_complete(obj.fd(), r.msg_id) {
            m.complete_errors.fetch_add(1, Ordering::Relaxed);
            debug!("READ_COMPLETE {} on object {}: {e}", r.msg_id, r.object_id);
        }
        m.record_read_latency(received.elapsed());
    });
}

async fn serve_read(shared: &Arc<Shared>, obj: &Arc<Object>, r: ReadRequest) -> Result<(), String> {
    match &obj.kind {
        Kind::Bootstrap { boot, .. } => {
            let (obj, boot, shared) = (obj.clone(), boot.clone(), shared.clone());
            tokio::task::spawn_blocking(move || {
                let n = boot.write(obj.fd(), r.off, r.len)?;
                shared.metrics.bootstrap_bytes.fetch_add(n, Ordering::Relaxed);
                Ok::<_, io::Error>(())
            })
            .await
            .map_err(|e| format!("bootstrap write task: {e}"))?
            .map_err(|e| format!("writing bootstrap: {e}"))
        }
        Kind::Blob { target } => {
            if obj.scanned.get().is_none() {
                let t = target.clone();
                let found = tokio::task::spawn_blocking(move || scan_with_retry(&t)).await;
                match found {
                    Ok(Ok(n)) if n > 0 => debug!("object {}: {n} group(s) already cached", obj.object_id),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => debug!("object {}: readiness scan: {e}", obj.object_id),
                    Err(e) => debug!("object {}: readiness scan task: {e}", obj.object_id),
                }
                let _ = obj.scanned.set(());
            }
            maybe_prefetch(shared, target, r);
            shared.filler.fill(target, r.off, r.len).await.map_err(|e| e.to_string())
        }
    }
}

/// Read-ahead for a sequential reader. The kernel asks for at most its readahead window
/// (128 KiB by default) per READ and waits for each; 16 MiB ahead in 2 MiB pieces (each its own
/// fetch and decode, so decoding uses every CPU while the reader waits) measured best in the
/// guest benchmark: 2.3x -> 1.6x native for a cold full read; 32 MiB in 4 MiB pieces was worse.
const READ_AHEAD: ReadAheadPolicy = ReadAheadPolicy { window: 16 << 20, ramp: 0, piece: 2 << 20, slack: 1 << 20, require_filled_behind: false };

fn maybe_prefetch(shared: &Arc<Shared>, target: &Arc<Target>, r: ReadRequest) {
    let started = shared.filler.read_ahead(&shared.rt, target, &READ_AHEAD, r.off, r.len, || {});
    shared.metrics.prefetches.fetch_add(started as u64, Ordering::Relaxed);
}

fn scan_with_retry(t: &Target) -> io::Result<usize> {
    let mut tries = 0;
    loop {
        match t.scan_ready() {
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) && tries < ENOBUFS_RETRIES => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20 * tries as u64));
            }
            other => return other,
        }
    }
}

