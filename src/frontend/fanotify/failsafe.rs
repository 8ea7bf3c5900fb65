//! The supervisor's last resort for the fanotify group: the worker is gone and will not come
//! back (crash loop, or it died during shutdown) while mounts may still read unfilled ranges.
//!
//! Closing the group would answer every pending event ALLOW and drop the marks: readers would
//! see the sparse holes as zeros. Instead, before the supervisor lets the held fds go:
//! 1. a denier thread answers every event on the group `FAN_DENY_ERRNO(EIO)` (blocked readers
//!    get an error and let go of the mount);
//! 2. each mount in the worker's saved mount table is unmounted (bounded retries, then lazily);
//! 3. if every mount went away cleanly, the group may close: no superblock reads the files.
//!    If one had to be detached, its open files still read through the cache files, so the
//!    supervisor keeps denying until it is told to stop (SIGTERM/SIGINT), and says so loudly.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fanotify::{events, Group, Response};
use tracing::{error, info, warn};

use super::sysmount::{self, Unmounted};
use super::{state, GROUP_FD_NAME};

/// Runs the last-resort sequence if `held` carries a fanotify group. Blocks while mounts it
/// could not unmount cleanly remain (until `wait_for_stop` returns).
pub fn before_release(held: &HashMap<String, OwnedFd>, wait_for_stop: &dyn Fn()) {
    let Some(gfd) = held.get(GROUP_FD_NAME) else { return };
    let Ok(dup) = gfd.try_clone() else { return };
    let group = Arc::new(Group::from(dup));
    let Some(cache_dir) = cache_dir_of(held) else {
        info!("supervisor: fanotify group held but no cache files: nothing can read through it");
        return;
    };
    let mounts = state::load(&cache_dir.join("fanotify").join("mounts.json"));
    // Events the dead worker had read but not answered are no longer in the queue: answer them
    // by fd number (journaled ones and, by sweep, any other), like a restarted worker would.
    let orphans = deny_orphans(&group, &cache_dir.join("fanotify").join("journal"));
    if orphans > 0 {
        warn!("supervisor: denied {orphans} event(s) the dead worker had taken (EIO)");
    }
    error!("supervisor: the fanotify worker is gone for good; denying its events (EIO) and unmounting {} mount(s)", mounts.len());
    let stop = Arc::new(AtomicBool::new(false));
    let denier = {
        let (group, stop) = (group.clone(), stop.clone());
        std::thread::spawn(move || deny_all(&group, &stop))
    };
    let mut detached = mounts.iter().filter(|m| m.detached).count();
    for m in mounts.iter().filter(|m| !m.detached) {
        match sysmount::umount_retrying(&m.mountpoint, Duration::from_secs(3), true) {
            Ok(Unmounted::Detached) => detached += 1,
            Ok(_) => {}
            Err(e) => {
                error!("supervisor: {e:#}");
                detached += 1;
            }
        }
    }
    let _ = state::save(&cache_dir.join("fanotify").join("mounts.json"), &[]);
    if detached > 0 {
        error!("supervisor: {detached} mount(s) were detached lazily; their open files may still read the cache files, so the group stays open and every read of an unfilled range fails with EIO until this supervisor is stopped");
        wait_for_stop();
    }
    stop.store(true, Ordering::Release);
    let _ = denier.join();
}

/// Answers EIO to every read-but-unanswered event of the group: each journaled fd number and
/// every other number up to the highest recorded plus one read batch. Every answer is a
/// denial, so a number that matches nothing (ENOENT) or a new event costs nothing.
fn deny_orphans(group: &Group, journal: &std::path::Path) -> usize {
    let eio = Response::deny_errno(libc::EIO).expect("EIO");
    let high = match super::journal::Journal::open(journal, false) {
        Ok((_, left, high)) => left.iter().map(|e| e.fd).max().unwrap_or(-1).max(high),
        Err(e) => {
            warn!("supervisor: journal {}: {e}; sweeping the default range", journal.display());
            1024
        }
    };
    let limit = high.max(0) + super::listener::SWEEP_MARGIN;
    (0..=limit).filter(|&fd| group.respond(fd, eio).is_ok()).count()
}

/// `<cache>/blobs/<id>` of any held write fd → `<cache>`.
fn cache_dir_of(held: &HashMap<String, OwnedFd>) -> Option<PathBuf> {
    held.iter().filter(|(n, _)| n.starts_with("fanblob-")).find_map(|(_, fd)| {
        let p = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        Some(p.parent()?.parent()?.to_path_buf())
    })
}

fn deny_all(group: &Group, stop: &AtomicBool) {
    let eio = Response::deny_errno(libc::EIO).expect("EIO");
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Acquire) {
        let mut p = libc::pollfd { fd: group.as_fd().as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        loop {
            let n = match group.read_into(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            for ev in events(&buf[..n]).flatten() {
                // SAFETY: from our read on the group, taken once.
                if let Some(fd) = unsafe { ev.take_fd() } {
                    if let Err(e) = group.respond(fd.as_raw_fd(), eio) {
                        warn!("supervisor: {e}");
                    }
                }
            }
        }
    }
}
