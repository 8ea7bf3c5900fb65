//! Failover through nydus-snapshotter's supervisor socket.
//!
//! The snapshotter is the *server* on `--supervisor SOCK`. On `PUT /api/v1/daemon/fuse/sendfd`
//! we connect, send opaque state bytes with the /dev/cachefiles fd attached (SCM_RIGHTS), and
//! close; it keeps both in memory. A successor started after a crash (or with `--upgrade`)
//! gets `PUT …/fuse/takeover`, connects, and receives the bytes and the fd back. The state
//! bytes are ours to define: a JSON copy of the bind list (the front-end's state file on disk
//! is the one a successor reloads; the copy is for diagnosis).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// What the snapshotter accepts at most (its reader's limits).
const MAX_STATE: usize = 256 << 10;
const MAX_FDS: usize = 64;

/// Connects to the supervisor socket and sends `state` with `fd` attached.
pub fn send(sock: &Path, state: &[u8], fd: BorrowedFd<'_>) -> Result<()> {
    if state.is_empty() || state.len() > MAX_STATE {
        bail!("failover state is {} bytes (1..={MAX_STATE})", state.len());
    }
    let s = UnixStream::connect(sock).with_context(|| format!("connecting to supervisor {}", sock.display()))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let mut sent = sendmsg::<()>(s.as_raw_fd(), &[IoSlice::new(state)], &cmsg, MsgFlags::MSG_NOSIGNAL, None)
        .context("sending state and fd to the supervisor")?;
    // The fd went with the first bytes; the rest (if the socket took a partial write) plainly.
    while sent < state.len() {
        sent += sendmsg::<()>(s.as_raw_fd(), &[IoSlice::new(&state[sent..])], &[], MsgFlags::MSG_NOSIGNAL, None)
            .context("sending state to the supervisor")?;
    }
    Ok(())
}

/// Connects to the supervisor socket and reads the saved state and the first fd until EOF.
pub fn receive(sock: &Path) -> Result<(Vec<u8>, OwnedFd)> {
    let s = UnixStream::connect(sock).with_context(|| format!("connecting to supervisor {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut state = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let mut cmsg_space = nix::cmsg_space!([std::os::fd::RawFd; MAX_FDS]);
        let (n, got) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(s.as_raw_fd(), &mut iov, Some(&mut cmsg_space), MsgFlags::MSG_CMSG_CLOEXEC)
                .context("receiving state from the supervisor")?;
            let mut got = Vec::new();
            for c in msg.cmsgs().context("control messages")? {
                if let ControlMessageOwned::ScmRights(raw) = c {
                    // SAFETY: SCM_RIGHTS just installed these fds in our table; we own them.
                    got.extend(raw.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
                }
            }
            (msg.bytes, got)
        };
        fds.extend(got);
        if n == 0 {
            break;
        }
        if state.len() + n > MAX_STATE {
            bail!("supervisor sent more than {MAX_STATE} bytes of state");
        }
        state.extend_from_slice(&buf[..n]);
    }
    let Some(fd) = fds.into_iter().next() else {
        bail!("the supervisor sent no fd: nothing saved to take over (was sendfd called?)");
    };
    Ok((state, fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    /// A stand-in snapshotter: accept one sender, keep bytes + fd, hand them to one receiver.
    #[test]
    fn state_and_fd_round_trip_through_a_holder() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sup.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let file = tempfile::tempfile().unwrap();
        use std::io::Write;
        (&file).write_all(b"device stand-in").unwrap();
        let holder = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
            let mut buf = vec![0u8; 1024];
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(conn.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty()).unwrap();
            let n = msg.bytes;
            let fd = msg.cmsgs().unwrap().find_map(|c| match c {
                ControlMessageOwned::ScmRights(f) => Some(f[0]),
                _ => None,
            });
            let fd = unsafe { OwnedFd::from_raw_fd(fd.expect("an fd")) };
            let data = buf[..n].to_vec();
            let (conn2, _) = listener.accept().unwrap();
            let fds = [fd.as_raw_fd()];
            sendmsg::<()>(conn2.as_raw_fd(), &[IoSlice::new(&data)], &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)
                .unwrap();
        });
        send(&sock, b"{\"binds\":[]}", file.as_fd()).unwrap();
        let (state, fd) = receive(&sock).unwrap();
        holder.join().unwrap();
        assert_eq!(state, b"{\"binds\":[]}");
        let mut f = std::fs::File::from(fd);
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(0)).unwrap();
        let mut s = String::new();
        f.read_to_string(&mut s).unwrap();
        assert_eq!(s, "device stand-in");
    }

    #[test]
    fn a_holder_without_fd_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("sup.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            use std::io::Write;
            let (mut c, _) = listener.accept().unwrap();
            c.write_all(b"state").unwrap();
        });
        let e = receive(&sock).unwrap_err();
        t.join().unwrap();
        assert!(format!("{e:#}").contains("no fd"), "{e:#}");
    }
}
