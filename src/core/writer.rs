//! Writes filled ranges into their targets (a cachefiles anon fd or a sparse cache file).
//!
//! One io_uring, owned by one thread, takes every write: fills from many concurrent fetches are
//! batched into one `io_uring_enter` instead of one `pwrite` syscall each. Callers await a
//! oneshot. An eventfd read kept armed in the ring wakes the thread when new work is queued while
//! it waits for completions. Where io_uring is unavailable (old kernel, `io_uring_disabled`
//! sysctl, seccomp), writes fall back to `pwrite` on the blocking pool: same results, more
//! syscalls.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;

use io_uring::{opcode, types, IoUring};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::aligned::AlignedBuf;

struct WriteReq {
    fd: Arc<OwnedFd>,
    buf: AlignedBuf,
    /// Bytes of `buf` already written (short writes are resubmitted for the rest).
    done_len: usize,
    offset: u64,
    reply: oneshot::Sender<io::Result<()>>,
}

enum Backend {
    Uring { tx: mpsc::Sender<WriteReq>, wake: Arc<OwnedFd> },
    Pwrite,
}

/// Cheap to clone; all clones feed the same ring.
#[derive(Clone)]
pub struct Writer {
    backend: Arc<Backend>,
}

const WAKE_TOKEN: u64 = u64::MAX;
const RING_ENTRIES: u32 = 256;

impl Writer {
    /// Starts the io_uring thread, or falls back to `pwrite` if the ring cannot be created.
    pub fn start() -> Writer {
        match Self::start_uring() {
            Ok(w) => w,
            Err(e) => {
                warn!("io_uring unavailable ({e}); filling with pwrite");
                Writer { backend: Arc::new(Backend::Pwrite) }
            }
        }
    }

    /// A writer that never uses io_uring (tests compare both paths).
    pub fn pwrite_only() -> Writer {
        Writer { backend: Arc::new(Backend::Pwrite) }
    }

    pub fn uses_io_uring(&self) -> bool {
        matches!(*self.backend, Backend::Uring { .. })
    }

    fn start_uring() -> io::Result<Writer> {
        let ring = IoUring::new(RING_ENTRIES)?;
        // SAFETY: eventfd returns a fresh fd or -1.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: efd is a new, owned descriptor.
        let wake = Arc::new(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(efd) });
        let (tx, rx) = mpsc::channel();
        let thread_wake = wake.clone();
        std::thread::Builder::new().name("erofsd-uring".into()).spawn(move || ring_loop(ring, rx, thread_wake))?;
        Ok(Writer { backend: Arc::new(Backend::Uring { tx, wake }) })
    }

    /// Writes all of `buf` at `offset` of `fd`.
    pub async fn write_all_at(&self, fd: Arc<OwnedFd>, buf: AlignedBuf, offset: u64) -> io::Result<()> {
        match &*self.backend {
            Backend::Pwrite => tokio::task::spawn_blocking(move || pwrite_all(&fd, &buf, offset))
                .await
                .map_err(|e| io::Error::other(format!("write task failed: {e}")))?,
            Backend::Uring { tx, wake } => {
                let (reply, rx) = oneshot::channel();
                tx.send(WriteReq { fd, buf, done_len: 0, offset, reply })
                    .map_err(|_| io::Error::other("io_uring writer thread is gone"))?;
                let one: u64 = 1;
                // SAFETY: writing 8 bytes from a valid u64 to our eventfd.
                unsafe { libc::write(wake.as_raw_fd(), &one as *const u64 as *const libc::c_void, 8) };
                rx.await.map_err(|_| io::Error::other("io_uring writer dropped a request"))?
            }
        }
    }
}

/// Writes all of `buf` at `offset` with plain `pwrite` calls on this thread.
pub(super) fn pwrite_all(fd: &OwnedFd, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &buf[done..];
        // SAFETY: valid fd and buffer for the given length.
        let n = unsafe {
            libc::pwrite(fd.as_raw_fd(), rest.as_ptr() as *const libc::c_void, rest.len(), (offset + done as u64) as i64)
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing"));
        }
        // Kernels before the 6.13 cachefiles fix report the page-rounded length: never step past the end.
        done = (done + n as usize).min(buf.len());
    }
    Ok(())
}

fn ring_loop(mut ring: IoUring, rx: mpsc::Receiver<WriteReq>, wake: Arc<OwnedFd>) {
    let mut slots: Vec<Option<WriteReq>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut pending: VecDeque<usize> = VecDeque::new();
    let mut wake_buf = [0u8; 8];
    let mut wake_armed = false;
    let mut inflight = 0usize;
    let mut senders_gone = false;
    loop {
        // Take everything queued so far.
        loop {
            match rx.try_recv() {
                Ok(req) => {
                    let idx = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    slots[idx] = Some(req);
                    pending.push_back(idx);
                }
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    senders_gone = true;
                    break;
                }
            }
        }
        if senders_gone && inflight == 0 && pending.is_empty() {
            debug!("io_uring writer exiting");
            return;
        }
        // Queue writes while the submission queue has room.
        while let Some(&idx) = pending.front() {
            let req = slots[idx].as_ref().expect("pending slot");
            let rest = &req.buf[req.done_len..];
            let sqe = opcode::Write::new(types::Fd(req.fd.as_raw_fd()), rest.as_ptr(), rest.len() as u32)
                .offset(req.offset + req.done_len as u64)
                .build()
                .user_data(idx as u64);
            // SAFETY: the buffer lives in `slots` until its completion is reaped.
            if unsafe { ring.submission().push(&sqe) }.is_err() {
                break;
            }
            pending.pop_front();
            inflight += 1;
        }
        if !wake_armed && !senders_gone {
            let sqe = opcode::Read::new(types::Fd(wake.as_raw_fd()), wake_buf.as_mut_ptr(), 8)
                .build()
                .user_data(WAKE_TOKEN);
            // SAFETY: wake_buf outlives the ring loop.
            if unsafe { ring.submission().push(&sqe) }.is_ok() {
                wake_armed = true;
            }
        }
        if let Err(e) = ring.submit_and_wait(1) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            // A broken ring: fail everything in flight; callers see the error, readers get EIO.
            warn!("io_uring submit failed: {e}");
            for slot in slots.iter_mut() {
                if let Some(req) = slot.take() {
                    let _ = req.reply.send(Err(io::Error::new(e.kind(), format!("io_uring: {e}"))));
                }
            }
            return;
        }
        let completions: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
        for (token, res) in completions {
            if token == WAKE_TOKEN {
                wake_armed = false;
                continue;
            }
            inflight -= 1;
            let idx = token as usize;
            let mut req = slots[idx].take().expect("completed slot");
            if res == -libc::EINTR || res == -libc::EAGAIN {
                slots[idx] = Some(req);
                pending.push_back(idx);
                continue;
            }
            if res < 0 {
                let _ = req.reply.send(Err(io::Error::from_raw_os_error(-res)));
                free.push(idx);
                continue;
            }
            if res == 0 {
                let _ = req.reply.send(Err(io::Error::new(io::ErrorKind::WriteZero, "write returned 0")));
                free.push(idx);
                continue;
            }
            req.done_len = (req.done_len + res as usize).min(req.buf.len());
            if req.done_len < req.buf.len() {
                slots[idx] = Some(req);
                pending.push_back(idx);
            } else {
                let _ = req.reply.send(Ok(()));
                free.push(idx);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    async fn write_pattern(writer: &Writer) {
        let file = tempfile::tempfile().unwrap();
        let fd: Arc<OwnedFd> = Arc::new(file.try_clone().unwrap().into());
        let mut tasks = Vec::new();
        for i in 0..64u64 {
            let mut buf = AlignedBuf::zeroed(8192);
            buf.fill(i as u8);
            let w = writer.clone();
            let fd = fd.clone();
            tasks.push(tokio::spawn(async move { w.write_all_at(fd, buf, i * 8192).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let mut back = vec![0u8; 64 * 8192];
        file.read_exact_at(&mut back, 0).unwrap();
        for i in 0..64usize {
            assert!(back[i * 8192..(i + 1) * 8192].iter().all(|&b| b == i as u8), "block {i}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_land_at_their_offsets() {
        let w = Writer::start();
        write_pattern(&w).await;
        write_pattern(&Writer::pwrite_only()).await;
    }

    #[tokio::test]
    async fn write_errors_reach_the_caller() {
        let file = tempfile::tempfile().unwrap();
        let path = std::path::Path::new("/proc/self/fd").join(file.as_raw_fd().to_string());
        let ro: OwnedFd = std::fs::File::open(path).unwrap().into();
        for w in [Writer::start(), Writer::pwrite_only()] {
            let err = w.write_all_at(Arc::new(ro.try_clone().unwrap()), AlignedBuf::zeroed(4096), 0).await.unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        }
    }
}
