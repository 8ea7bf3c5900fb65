//! The /dev/cachefiles handle: open it, write commands, read messages.
//!
//! The device is exclusive (a second open gets `EBUSY`), so failover keeps the
//! same open file description alive in a supervisor and hands it to the new
//! daemon; [`Device::from`]`(OwnedFd)` / [`Device::into_owned_fd`] are the
//! ends of that. The SCM_RIGHTS passing itself is daemon business.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::command::{Command, CommandError};
use crate::wire::{parse_message, Header, Message, Opcode, ParseError, HEADER_LEN, MSG_MAX_SIZE};

/// Where the misc device lives.
pub const DEVICE_PATH: &str = "/dev/cachefiles";

#[derive(Debug)]
pub enum DeviceError {
    Open {
        path: PathBuf,
        source: io::Error,
    },
    /// The command failed validation before reaching the kernel.
    InvalidCommand(CommandError),
    /// The kernel refused the command.
    Command {
        verb: &'static str,
        source: io::Error,
    },
    /// `write()` accepted fewer bytes than the command (never seen; defensive).
    ShortWrite {
        verb: &'static str,
        written: usize,
        expected: usize,
    },
    Read(io::Error),
    /// The kernel sent bytes we could not parse. `header` is set when at least
    /// 16 bytes arrived (so an OPEN can still be answered with
    /// `copen <id>,-EINVAL`), `anon_fd` when it was an OPEN whose fd field was
    /// readable: that fd was installed for us and is closed when dropped.
    Malformed {
        error: ParseError,
        header: Option<Header>,
        anon_fd: Option<OwnedFd>,
    },
    /// Could not set FD_CLOEXEC on an OPEN's anon fd (it is then not ours).
    AnonFd {
        msg_id: u32,
        fd: RawFd,
        source: io::Error,
    },
}

impl DeviceError {
    /// The errno behind this error, if the kernel produced one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            DeviceError::Open { source, .. }
            | DeviceError::Command { source, .. }
            | DeviceError::Read(source)
            | DeviceError::AnonFd { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn open_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EBUSY) => " (held by another daemon, e.g. cachefilesd: one daemon per host)",
        Some(libc::ENOENT) | Some(libc::ENODEV) | Some(libc::ENXIO) => {
            " (cachefiles not available: load the cachefiles module / CONFIG_CACHEFILES)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => " (needs CAP_SYS_ADMIN)",
        _ => "",
    }
}

fn command_hint(verb: &str, e: &io::Error) -> &'static str {
    match (verb, e.raw_os_error()) {
        ("bind", Some(libc::EINVAL)) => {
            " (kernel lacks CONFIG_CACHEFILES_ONDEMAND, or dir/tag unusable)"
        }
        ("bind", Some(libc::EBUSY)) => " (cache already bound)",
        ("restore", Some(libc::EOPNOTSUPP)) => {
            " (kernel has no failover support: needs 6.8+ or a stable backport)"
        }
        (_, Some(libc::EOPNOTSUPP)) => " (unknown command or too long)",
        ("copen", Some(libc::EINVAL)) => " (unknown msg_id, not an OPEN, or bad size)",
        (_, Some(libc::EIO)) => " (cache is dead or not ready)",
        ("inuse", Some(libc::EBUSY)) | ("cull", Some(libc::EBUSY)) => " (file is in use)",
        ("dir", Some(libc::EEXIST)) | ("tag", Some(libc::EALREADY)) => " (already set)",
        _ => "",
    }
}

impl fmt::Display for DeviceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceError::Open { path, source } => {
                write!(
                    f,
                    "cannot open {}: {source}{}",
                    path.display(),
                    open_hint(source)
                )
            }
            DeviceError::InvalidCommand(e) => write!(f, "{e}"),
            DeviceError::Command { verb, source } => {
                write!(
                    f,
                    "cachefiles '{verb}' failed: {source}{}",
                    command_hint(verb, source)
                )
            }
            DeviceError::ShortWrite {
                verb,
                written,
                expected,
            } => {
                write!(
                    f,
                    "cachefiles '{verb}' short write: {written} of {expected} bytes"
                )
            }
            DeviceError::Read(e) => write!(f, "reading /dev/cachefiles: {e}"),
            DeviceError::Malformed { error, header, .. } => match header {
                Some(h) => write!(
                    f,
                    "malformed cachefiles message (msg_id {}, opcode {}): {error}",
                    h.msg_id, h.opcode
                ),
                None => write!(f, "malformed cachefiles message: {error}"),
            },
            DeviceError::AnonFd { msg_id, fd, source } => {
                write!(
                    f,
                    "OPEN {msg_id}: cannot set FD_CLOEXEC on anon fd {fd}: {source}"
                )
            }
        }
    }
}

/// No `source()`: every variant's Display already prints its cause (followed by a hint), and
/// a source would print it a second time in an error chain (`{:#}`). Use
/// [`DeviceError::errno`] to inspect the kernel's answer.
impl std::error::Error for DeviceError {}

impl From<CommandError> for DeviceError {
    fn from(e: CommandError) -> Self {
        DeviceError::InvalidCommand(e)
    }
}

/// An open /dev/cachefiles (or, in tests, anything message-shaped such as a
/// SOCK_SEQPACKET socket).
#[derive(Debug)]
pub struct Device {
    fd: OwnedFd,
}

impl Device {
    /// Opens [`DEVICE_PATH`].
    pub fn open() -> Result<Device, DeviceError> {
        Device::open_path(Path::new(DEVICE_PATH))
    }

    /// Opens the device at `path` with `O_RDWR | O_CLOEXEC | O_NONBLOCK`.
    /// (`read()` on the device never blocks anyway; O_NONBLOCK only matters
    /// for stand-ins.)
    pub fn open_path(path: &Path) -> Result<Device, DeviceError> {
        let err = |source| DeviceError::Open {
            path: path.to_path_buf(),
            source,
        };
        let c = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| err(io::Error::from_raw_os_error(libc::EINVAL)))?;
        // SAFETY: c is a valid NUL-terminated string.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
            )
        };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: open just returned this fd to us.
        Ok(Device {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Validates and writes one command (one `write()`).
    pub fn send(&self, cmd: &Command) -> Result<(), DeviceError> {
        let bytes = cmd.encode()?;
        let verb = cmd.verb();
        loop {
            // SAFETY: bytes is a live buffer of bytes.len() bytes.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(DeviceError::Command { verb, source: e });
            }
            let n = n as usize;
            if n != bytes.len() {
                return Err(DeviceError::ShortWrite {
                    verb,
                    written: n,
                    expected: bytes.len(),
                });
            }
            return Ok(());
        }
    }

    /// `copen <msg_id>,<size>`.
    pub fn copen(&self, msg_id: u32, size: u64) -> Result<(), DeviceError> {
        self.send(&Command::copen_size(msg_id, size))
    }

    /// `copen <msg_id>,-<errno>`. Also drop the OPEN's anon fd, or it pins the cache.
    pub fn copen_error(&self, msg_id: u32, errno: i32) -> Result<(), DeviceError> {
        self.send(&Command::copen_errno(msg_id, errno))
    }

    /// `inuse <name>`: `Ok(true)` if the kernel says `EBUSY` (in use).
    pub fn inuse(&self, name: &str) -> Result<bool, DeviceError> {
        match self.send(&Command::Inuse(name.to_owned())) {
            Ok(()) => Ok(false),
            Err(e) if e.errno() == Some(libc::EBUSY) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Reads one pending message; `Ok(None)` when nothing is pending (the
    /// device returns 0; `EAGAIN` from a non-blocking stand-in means the same).
    /// Drain until `None` after each edge-triggered wakeup.
    ///
    /// An OPEN's anon fd is returned owned and marked FD_CLOEXEC.
    pub fn read_message(&self) -> Result<Option<Message>, DeviceError> {
        let mut buf = [0u8; MSG_MAX_SIZE];
        let n = loop {
            // SAFETY: buf is a live, writable buffer of buf.len() bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(DeviceError::Read(e)),
            }
        };
        if n == 0 {
            return Ok(None);
        }
        let buf = &buf[..n];
        match parse_message(buf) {
            Ok(msg) => {
                if let Message::Open(o) = &msg {
                    set_cloexec(o.fd as RawFd).map_err(|source| DeviceError::AnonFd {
                        msg_id: o.msg_id,
                        fd: o.fd as RawFd,
                        source,
                    })?;
                }
                // SAFETY: the bytes came from read() on our device, so the
                // kernel installed the OPEN fd in our table for us alone, and
                // F_SETFD above proved the number is open.
                Ok(Some(unsafe { msg.claim_fd() }))
            }
            Err(error) => {
                let header = Header::parse(buf).ok();
                let anon_fd = header.and_then(|h| malformed_open_fd(&h, buf));
                Err(DeviceError::Malformed {
                    error,
                    header,
                    anon_fd,
                })
            }
        }
    }

    /// A new handle on the same open file description (`F_DUPFD_CLOEXEC`),
    /// e.g. to park with a supervisor for failover.
    pub fn try_clone(&self) -> io::Result<Device> {
        Ok(Device {
            fd: self.fd.try_clone()?,
        })
    }

    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }
}

/// For an OPEN we could not parse: if its fd field arrived, the kernel
/// installed that fd for us; take it so it is closed instead of leaking and
/// pinning the cache.
fn malformed_open_fd(h: &Header, buf: &[u8]) -> Option<OwnedFd> {
    if h.opcode != Opcode::OPEN || buf.len() < HEADER_LEN + 12 {
        return None;
    }
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[HEADER_LEN + 8..HEADER_LEN + 12]);
    let fd = u32::from_ne_bytes(b);
    if fd > i32::MAX as u32 || set_cloexec(fd as RawFd).is_err() {
        return None;
    }
    // SAFETY: as in read_message: installed by the kernel for this read.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD takes an int flag; an invalid fd yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl From<OwnedFd> for Device {
    /// Adopts an already-open device fd (e.g. received over SCM_RIGHTS).
    fn from(fd: OwnedFd) -> Self {
        Device { fd }
    }
}

impl From<Device> for OwnedFd {
    fn from(d: Device) -> OwnedFd {
        d.fd
    }
}

impl AsFd for Device {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Device {
    /// For epoll registration (use edge-triggered; docs/protocols/cachefiles.md §3).
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl FromRawFd for Device {
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        Device {
            fd: OwnedFd::from_raw_fd(fd),
        }
    }
}

impl IntoRawFd for Device {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;
    use crate::wire::{CloseRequest, ReadRequest};

    /// A SOCK_SEQPACKET pair behaves like the device for our purposes: each
    /// read returns exactly one written record. Our end is non-blocking, so an
    /// empty queue reads as EAGAIN → None.
    fn fake() -> (Device, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds is a 2-int array.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "socketpair: {}", io::Error::last_os_error());
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        set_nonblock(&ours);
        (Device::from(ours), theirs)
    }

    #[test]
    fn open_error_names_the_cause_once_with_its_hint() {
        let e = DeviceError::Open {
            path: DEVICE_PATH.into(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        let text = e.to_string();
        assert!(text.starts_with("cannot open /dev/cachefiles: "), "{text}");
        assert!(text.ends_with("(held by another daemon, e.g. cachefilesd: one daemon per host)"), "{text}");
        assert_eq!(e.errno(), Some(libc::EBUSY));
        // The cause is in the text: an error chain must not print it a second time.
        assert!(std::error::Error::source(&e).is_none());
    }

    fn set_nonblock(fd: &OwnedFd) {
        unsafe {
            let fl = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
            assert!(libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK) >= 0);
        }
    }

    fn send(peer: &OwnedFd, bytes: &[u8]) {
        let n = unsafe { libc::write(peer.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        assert_eq!(n as usize, bytes.len());
    }

    fn recv(peer: &OwnedFd) -> Vec<u8> {
        let mut buf = [0u8; 8192];
        let n = unsafe { libc::read(peer.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        assert!(n >= 0);
        buf[..n as usize].to_vec()
    }

    /// An fd without FD_CLOEXEC, like the kernel installs for OPEN.
    fn inheritable_fd() -> RawFd {
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY) };
        assert!(fd >= 0);
        fd
    }

    fn fd_flags(fd: RawFd) -> i32 {
        unsafe { libc::fcntl(fd, libc::F_GETFD) }
    }

    #[test]
    fn empty_queue_is_none() {
        let (dev, _peer) = fake();
        assert!(dev.read_message().unwrap().is_none());
    }

    #[test]
    fn reads_messages_in_order_and_claims_open_fd() {
        let (dev, peer) = fake();
        let raw = inheritable_fd();
        assert_eq!(fd_flags(raw) & libc::FD_CLOEXEC, 0);
        send(&peer, &build::open(1, 5, b"erofs,img", b"img", raw as u32));
        send(&peer, &build::read(2, 5, 0, 4096));
        send(&peer, &build::close(3, 5));

        let Some(Message::Open(o)) = dev.read_message().unwrap() else {
            panic!("expected OPEN")
        };
        assert_eq!((o.msg_id, o.object_id), (1, 5));
        assert_eq!(o.volume_key, b"erofs,img");
        assert_eq!(o.cookie_key, b"img");
        assert_eq!(o.fd.as_raw_fd(), raw);
        assert_ne!(
            fd_flags(raw) & libc::FD_CLOEXEC,
            0,
            "anon fd must be made FD_CLOEXEC"
        );
        drop(o);

        let Some(Message::Read(r)) = dev.read_message().unwrap() else {
            panic!("expected READ")
        };
        assert_eq!(
            r,
            ReadRequest {
                msg_id: 2,
                object_id: 5,
                off: 0,
                len: 4096
            }
        );
        let Some(Message::Close(c)) = dev.read_message().unwrap() else {
            panic!("expected CLOSE")
        };
        assert_eq!(
            c,
            CloseRequest {
                msg_id: 3,
                object_id: 5
            }
        );
        assert!(dev.read_message().unwrap().is_none());
    }

    #[test]
    fn open_with_closed_fd_is_an_error_not_a_claim() {
        let (dev, peer) = fake();
        // A number far above anything open in the test process.
        send(&peer, &build::open(4, 1, b"v", b"c", 900_000));
        let err = dev.read_message().unwrap_err();
        assert!(
            matches!(
                err,
                DeviceError::AnonFd {
                    msg_id: 4,
                    fd: 900_000,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(err.errno(), Some(libc::EBADF));
    }

    #[test]
    fn malformed_open_hands_back_header_and_fd() {
        let (dev, peer) = fake();
        let raw = inheritable_fd();
        let mut m = build::open(8, 3, b"erofs,x", b"x", raw as u32);
        // Remove the volume key's NUL by bumping the cookie size instead.
        let vks = 8u32 - 1; // "erofs,x" without NUL
        m[16..20].copy_from_slice(&vks.to_ne_bytes());
        m[20..24].copy_from_slice(&2u32.to_ne_bytes());
        send(&peer, &m);
        match dev.read_message().unwrap_err() {
            DeviceError::Malformed {
                error,
                header,
                anon_fd,
            } => {
                assert_eq!(error, ParseError::VolumeKeyMissingNul);
                assert_eq!(header.unwrap().msg_id, 8);
                let fd = anon_fd.expect("fd of a malformed OPEN must be claimed");
                assert_eq!(fd.as_raw_fd(), raw);
                assert_ne!(fd_flags(raw) & libc::FD_CLOEXEC, 0);
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn malformed_short_message_has_no_header() {
        let (dev, peer) = fake();
        send(&peer, &[1, 2, 3]);
        match dev.read_message().unwrap_err() {
            DeviceError::Malformed {
                error,
                header,
                anon_fd,
            } => {
                assert_eq!(error, ParseError::Short { got: 3 });
                assert!(header.is_none() && anon_fd.is_none());
            }
            e => panic!("unexpected {e:?}"),
        }
        // A malformed READ keeps its header, and no fd is touched.
        send(&peer, &build::header(6, Opcode::READ, 16, 2));
        match dev.read_message().unwrap_err() {
            DeviceError::Malformed {
                header, anon_fd, ..
            } => {
                assert_eq!(header.unwrap().msg_id, 6);
                assert!(anon_fd.is_none());
            }
            e => panic!("unexpected {e:?}"),
        }
    }

    #[test]
    fn commands_are_one_write_each() {
        let (dev, peer) = fake();
        dev.send(&Command::dir("/var/cache/erofsd")).unwrap();
        dev.send(&Command::BindOndemand).unwrap();
        dev.copen(7, 4096).unwrap();
        dev.copen_error(8, libc::ENOENT).unwrap();
        assert_eq!(recv(&peer), b"dir /var/cache/erofsd");
        assert_eq!(recv(&peer), b"bind ondemand");
        assert_eq!(recv(&peer), b"copen 7,4096");
        assert_eq!(recv(&peer), b"copen 8,-2");
    }

    #[test]
    fn invalid_command_never_reaches_the_fd() {
        let (dev, peer) = fake();
        let err = dev.send(&Command::Tag("a\nb".into())).unwrap_err();
        assert!(matches!(
            err,
            DeviceError::InvalidCommand(CommandError::Newline { verb: "tag" })
        ));
        set_nonblock(&peer);
        let mut b = [0u8; 16];
        let n = unsafe { libc::read(peer.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
        assert_eq!(n, -1, "nothing must have been written");
    }

    #[test]
    fn kernel_errors_map_to_clear_messages() {
        // Writing to a read-only fd gives EBADF; to a full pipe… use /dev/full: ENOSPC.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let dev = Device::from(OwnedFd::from(full));
        let err = dev.send(&Command::BindOndemand).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOSPC));
        assert!(
            err.to_string().starts_with("cachefiles 'bind' failed"),
            "{err}"
        );

        let e = DeviceError::Command {
            verb: "bind",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(e.to_string().contains("CONFIG_CACHEFILES_ONDEMAND"), "{e}");
        let e = DeviceError::Command {
            verb: "restore",
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        assert!(e.to_string().contains("6.8"), "{e}");
        let e = DeviceError::Open {
            path: DEVICE_PATH.into(),
            source: io::Error::from_raw_os_error(libc::EBUSY),
        };
        assert!(e.to_string().contains("cachefilesd"), "{e}");
    }

    #[test]
    fn open_missing_device_is_clear() {
        let err = Device::open_path(Path::new("/nonexistent/cachefiles")).unwrap_err();
        assert_eq!(err.errno(), Some(libc::ENOENT));
        assert!(
            err.to_string().contains("cachefiles not available"),
            "{err}"
        );
    }

    #[test]
    fn fd_round_trips_for_failover() {
        let (dev, peer) = fake();
        let dup = dev.try_clone().unwrap();
        assert_ne!(dup.as_raw_fd(), dev.as_raw_fd());
        drop(dev);
        // The duplicate still talks to the same description.
        let raw = dup.into_raw_fd();
        let dev = unsafe { Device::from_raw_fd(raw) };
        send(&peer, &build::close(1, 1));
        assert!(matches!(
            dev.read_message().unwrap(),
            Some(Message::Close(_))
        ));
        let owned: OwnedFd = dev.into();
        assert_eq!(owned.as_raw_fd(), raw);
    }
}
