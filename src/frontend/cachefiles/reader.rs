//! The one thread that reads /dev/cachefiles.
//!
//! Edge-triggered epoll, and after every wakeup `read()` until it returns 0. Level-triggered
//! polling would spin on 5.19–6.7, where POLLIN stays raised while any request — including the
//! ones already read and still being served — is outstanding. An eventfd in the same epoll set
//! stops the thread.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cachefiles::{DeviceError, Message, Opcode};
use tracing::{error, warn};

use super::serve::{handle_close, handle_open, handle_read, Shared};

const TOKEN_DEVICE: u64 = 1;
const TOKEN_STOP: u64 = 2;

/// Stops the reader thread when signalled.
pub struct StopHandle {
    efd: Arc<OwnedFd>,
}

impl StopHandle {
    pub fn stop(&self) {
        let one: u64 = 1;
        // SAFETY: 8-byte write from a valid u64 to our eventfd.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

fn epoll_add(epfd: &OwnedFd, fd: i32, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: valid epoll fd, fd and event struct.
    if unsafe { libc::epoll_ctl(epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts the reader thread.
pub fn spawn(shared: Arc<Shared>) -> io::Result<(std::thread::JoinHandle<()>, StopHandle)> {
    // SAFETY: plain syscalls returning new fds or -1.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epfd < 0 {
        return Err(io::Error::last_os_error());
    }
    let epfd = unsafe { OwnedFd::from_raw_fd(epfd) };
    let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if efd < 0 {
        return Err(io::Error::last_os_error());
    }
    let efd = Arc::new(unsafe { OwnedFd::from_raw_fd(efd) });
    epoll_add(&epfd, shared.device.as_raw_fd(), (libc::EPOLLIN | libc::EPOLLET) as u32, TOKEN_DEVICE)?;
    epoll_add(&epfd, efd.as_raw_fd(), libc::EPOLLIN as u32, TOKEN_STOP)?;
    let stop = StopHandle { efd: efd.clone() };
    let handle = std::thread::Builder::new()
        .name("erofsd-cachefiles".into())
        .spawn(move || run(shared, epfd))?;
    Ok((handle, stop))
}

fn run(shared: Arc<Shared>, epfd: OwnedFd) {
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 8];
    let mut consecutive_errors = 0u32;
    loop {
        // Drain first: requests may be pending from before we registered (restore, restart).
        loop {
            match shared.device.read_message() {
                Ok(Some(msg)) => {
                    consecutive_errors = 0;
                    dispatch(&shared, msg, Instant::now());
                }
                Ok(None) => break,
                Err(e) => {
                    shared.metrics.device_errors.fetch_add(1, Ordering::Relaxed);
                    consecutive_errors += 1;
                    if handle_read_error(&shared, e) {
                        continue;
                    }
                    // A persistent device error (cache dead): do not spin on it.
                    if consecutive_errors > 3 {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    break;
                }
            }
        }
        // SAFETY: events is a valid buffer of events.len() entries.
        let n = unsafe { libc::epoll_wait(epfd.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            error!("cachefiles epoll_wait: {e}; reader stops");
            return;
        }
        if events[..n as usize].iter().any(|ev| ev.u64 == TOKEN_STOP) {
            return;
        }
    }
}

fn dispatch(shared: &Arc<Shared>, msg: Message, received: Instant) {
    match msg {
        Message::Open(o) => handle_open(shared, o),
        Message::Read(r) => handle_read(shared, r, received),
        Message::Close(c) => handle_close(shared, c),
    }
}

/// Handles a failed read of one message. Returns true if the next message may be read at once
/// (the failure concerned only that message).
fn handle_read_error(shared: &Shared, e: DeviceError) -> bool {
    match e {
        DeviceError::Malformed { error, header, anon_fd } => {
            warn!("{}", DeviceError::Malformed { error, header, anon_fd: None });
            drop(anon_fd);
            if let Some(h) = header {
                if h.opcode == Opcode::OPEN {
                    shared.metrics.opens_rejected.fetch_add(1, Ordering::Relaxed);
                    let _ = shared.device.copen_error(h.msg_id, libc::EINVAL);
                }
            }
            true
        }
        DeviceError::AnonFd { msg_id, .. } => {
            warn!("{e}");
            shared.metrics.opens_rejected.fetch_add(1, Ordering::Relaxed);
            let _ = shared.device.copen_error(msg_id, libc::EBADF);
            true
        }
        // EMFILE etc. while the kernel installed an OPEN's fd: the kernel failed that OPEN.
        DeviceError::Read(ref io) if matches!(io.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
            warn!("{e} (raise RLIMIT_NOFILE: one fd per open cache object)");
            true
        }
        other => {
            error!("{other}");
            false
        }
    }
}
