//! The event thread: reads the group, answers what it can at once, hands the rest to fills.
//!
//! The thread never waits on a fetch: an event whose range is already in the cache file is
//! answered ALLOW on the spot (no runtime involved); any other is journaled and its fill runs
//! as a task on the tokio runtime, which answers and closes the event fd when done. Concurrent
//! events on the same groups are coalesced by the core (single flight per group).
//!
//! Response order for every event: respond → clear its journal slot → close its fd.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use fanotify::{events, Event, Group, Response};
use tracing::{error, info, warn};

use super::cache::{CacheFile, Registry};
use super::journal::{Entry, Journal};
use super::metrics::Metrics;
use crate::core::fill::Filler;
use crate::core::readahead::ReadAheadPolicy;

/// Read buffer: many events per read() under a storm (each pre-content event is 48 bytes).
const READ_BUF: usize = 64 * 1024;
/// Read-ahead for a sequential reader: at least 4 MiB ahead, one group per fill (each becomes
/// ready on its own as the page-cache readahead of the backing file walks forward). From local
/// blobs the window grows to 4x the reader's streak: every read of a marked file costs the
/// reader an event round trip (about 20 us, some 5,000 per cold pass of a rootfs) until the
/// blob is complete and its mark removed, so a reader that streams through a blob gains most
/// from the blob being completed early. Those pieces run at the lowest CPU priority
/// ([`crate::core::background`]), so they do not delay the reader itself. (docs/fanotify.md,
/// "Conclusions that shaped the design": a cold full read of the bench rootfs went from
/// 1.56-1.58x to 1.15-1.23x native.)
pub const READ_AHEAD: ReadAheadPolicy = ReadAheadPolicy { window: 4 << 20, ramp: 4, piece: 0, slack: 0, require_filled_behind: true };
/// Events one read() can return beyond the last fd the journal saw (sweep margin).
pub const SWEEP_MARGIN: i32 = (READ_BUF / 48) as i32 + 64;

pub struct Server {
    pub group: Arc<Group>,
    pub registry: Arc<Registry>,
    pub filler: Filler,
    pub journal: Arc<Journal>,
    pub metrics: Arc<Metrics>,
    pub rt: tokio::runtime::Handle,
    /// This process's pid, as events report it (the thread group's).
    pub own_pid: i32,
}

fn eio() -> Response {
    Response::deny_errno(libc::EIO).expect("EIO is allowed")
}

impl Server {
    fn respond(&self, fd: i32, r: Response) {
        if let Err(e) = self.group.respond(fd, r) {
            self.metrics.respond_errors.fetch_add(1, Ordering::Relaxed);
            warn!("event fd {fd}: {e}");
        }
    }

    fn deny(&self, fd: OwnedFd, why: &str) {
        warn!("denying event fd {} (EIO): {why}", fd.as_raw_fd());
        self.metrics.denied.fetch_add(1, Ordering::Relaxed);
        self.respond(fd.as_raw_fd(), eio());
    }

    /// Answers the events a previous worker of this group took but did not answer. First every
    /// pending fd number up to the sweep limit that the journal does not name is denied (EIO:
    /// taken but not yet journaled when the worker died). Then each journaled event's fd number
    /// is reserved in this process (a placeholder fd on that number) and the event is filled
    /// and allowed in the background, while the event loop already reads: its fills may write
    /// through write fds that raise events of their own (cache files reopened after a takeover),
    /// which only the loop can answer. The reservation keeps a new event from being given the
    /// number of a journaled one, whose answer would then go to the older event (the kernel
    /// answers the first pending event with that number). A journaled number this process
    /// already uses cannot be reserved: that event is denied (EIO), never allowed unfilled.
    pub fn replay(self: &Arc<Self>, left: Vec<Entry>, high_fd: i32) {
        let known: HashSet<i32> = left.iter().map(|e| e.fd).collect();
        if high_fd >= 0 || !known.is_empty() {
            let limit = high_fd.max(0) + SWEEP_MARGIN;
            let mut orphans = 0u64;
            for fd in 0..=limit {
                if !known.contains(&fd) && self.group.respond(fd, eio()).is_ok() {
                    orphans += 1;
                }
            }
            self.metrics.orphans_denied.fetch_add(orphans, Ordering::Relaxed);
            info!("restart: {} journaled event(s) to answer, {orphans} unjournaled one(s) denied", known.len());
        }
        if left.is_empty() {
            return;
        }
        let placeholder = std::fs::File::open("/dev/null").map_err(|e| warn!("opening /dev/null for fd placeholders: {e}")).ok();
        for e in left {
            let Some(hold) = placeholder.as_ref().and_then(|p| reserve_fd_number(p, e.fd)) else {
                warn!("journaled event fd {}: its number is in use here; EIO", e.fd);
                self.metrics.denied.fetch_add(1, Ordering::Relaxed);
                self.respond(e.fd, eio());
                continue;
            };
            let id = hex::encode(e.blob);
            let Some(cf) = self.registry.get(&id) else {
                warn!("journaled event fd {} names blob {id}, which no mount uses: EIO", e.fd);
                self.metrics.denied.fetch_add(1, Ordering::Relaxed);
                self.respond(e.fd, eio());
                continue;
            };
            let slot = self.journal.record(&e);
            let this = self.clone();
            self.rt.spawn(async move {
                let r = this.filler.fill(&cf.target, e.offset, e.count).await;
                let resp = match r {
                    Ok(()) => Response::ALLOW,
                    Err(err) => {
                        warn!("replaying fd {}: {err}", e.fd);
                        eio()
                    }
                };
                this.respond(e.fd, resp);
                drop(hold);
                if let Some(s) = slot {
                    this.journal.clear(s);
                }
                this.metrics.replayed.fetch_add(1, Ordering::Relaxed);
                this.after_fill(&cf);
            });
        }
    }

    /// The event loop; returns when `stop` becomes readable.
    pub fn run(self: Arc<Self>, stop: OwnedFd) {
        // Every blocked reader waits on this thread: on a busy machine let it run first.
        // SAFETY: setpriority on our own thread id; failure (no CAP_SYS_NICE) is harmless.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10) };
        let mut buf = vec![0u8; READ_BUF];
        loop {
            let mut fds = [
                libc::pollfd { fd: self.group.as_raw_fd(), events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                error!("poll on the fanotify group: {e}");
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            loop {
                let n = match self.group.read_into(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        error!("{e}");
                        break;
                    }
                };
                for item in events(&buf[..n]) {
                    match item {
                        Ok(ev) => self.handle(ev),
                        Err(e) => {
                            // The rest of this batch cannot be located; its events stay pending
                            // (their readers wait) rather than being guessed at.
                            error!("{e}");
                            break;
                        }
                    }
                }
            }
        }
    }

    fn handle(self: &Arc<Self>, ev: Event) {
        // SAFETY: the event came from our read() on the group and is taken exactly once.
        let Some(fd) = (unsafe { ev.take_fd() }) else {
            if ev.is_overflow() {
                self.metrics.overflows.fetch_add(1, Ordering::Relaxed);
                error!("fanotify queue overflow: the kernel allowed an access unanswered");
            }
            return;
        };
        self.metrics.events.fetch_add(1, Ordering::Relaxed);
        let raw = fd.as_raw_fd();
        self.journal.note_fd(raw);
        if !ev.is_pre_access() {
            return self.deny(fd, &format!("unexpected event mask {:#x}", ev.mask));
        }
        if ev.pid == self.own_pid {
            // Our own write through a write fd opened after the mark (a takeover): never a
            // reader, and only the fill that raised it waits on it.
            self.metrics.own_allowed.fetch_add(1, Ordering::Relaxed);
            self.respond(raw, Response::ALLOW);
            return;
        }
        let range = match ev.range {
            Ok(r) => r,
            Err(e) => return self.deny(fd, &e.to_string()),
        };
        let (dev, ino) = match nix::sys::stat::fstat(raw) {
            Ok(st) => (st.st_dev, st.st_ino),
            Err(e) => return self.deny(fd, &format!("fstat: {e}")),
        };
        let Some(cf) = self.registry.lookup(dev, ino) else {
            return self.deny(fd, &format!("no blob cache file has inode {dev}:{ino}"));
        };
        if cf.target.is_ready(range.offset, range.count) {
            self.metrics.fast_allowed.fetch_add(1, Ordering::Relaxed);
            self.respond(raw, Response::ALLOW);
            drop(fd);
            cf.target.note_access(range.offset, range.count);
            self.maybe_prefetch(&cf, range.offset, range.count);
            return;
        }
        self.maybe_prefetch(&cf, range.offset, range.count);
        let slot = self.journal.record(&Entry { fd: raw, offset: range.offset, count: range.count, blob: cf.id_bytes() });
        let this = self.clone();
        self.rt.spawn(async move {
            let resp = match this.filler.fill(&cf.target, range.offset, range.count).await {
                Ok(()) => {
                    this.metrics.filled_allowed.fetch_add(1, Ordering::Relaxed);
                    Response::ALLOW
                }
                Err(e) => {
                    warn!("fill {}+{} of blob {}: {e}", range.offset, range.count, cf.target.blob.id);
                    this.metrics.denied.fetch_add(1, Ordering::Relaxed);
                    eio()
                }
            };
            this.respond(raw, resp);
            if let Some(s) = slot {
                this.journal.clear(s);
            }
            drop(fd);
            this.after_fill(&cf);
        });
    }

    /// Starts background fills after a sequential reader (the core's read-ahead). Runs on
    /// fast-path events too, so a sequential reader never reaches the end of the window.
    fn maybe_prefetch(self: &Arc<Self>, cf: &Arc<CacheFile>, offset: u64, count: u64) {
        let (this, done_cf) = (self.clone(), cf.clone());
        let started = self.filler.read_ahead(&self.rt, &cf.target, &READ_AHEAD, offset, count, move || {
            this.after_fill(&done_cf)
        });
        self.metrics.prefetches.fetch_add(started as u64, Ordering::Relaxed);
    }

    fn after_fill(&self, cf: &CacheFile) {
        if self.registry.unmark_if_complete(cf) {
            self.metrics.marks_removed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Occupies fd number `n` in this process with a duplicate of `placeholder`, so no new fd (an
/// event's) gets that number while the placeholder lives. `None` if `n` is already in use.
fn reserve_fd_number(placeholder: &std::fs::File, n: i32) -> Option<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new fd (the lowest free one >= n) or -1.
    let fd = unsafe { libc::fcntl(placeholder.as_raw_fd(), libc::F_DUPFD_CLOEXEC, n) };
    if fd < 0 {
        return None;
    }
    // SAFETY: fd was just created by fcntl and is ours.
    let owned = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    (fd == n).then_some(owned)
}
