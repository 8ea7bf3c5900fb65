//! Thin safe wrappers over `fanotify_init(2)` / `fanotify_mark(2)` and the
//! group fd's read/write. No policy: which files to mark, when to respond
//! and what to do with fds is the daemon's business.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::consts::*;
use crate::response::Response;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Init,
    MarkAdd,
    MarkRemove,
    Read,
    Respond,
}

/// A failed syscall, with a hint for the errnos that have a known cause.
#[derive(Debug)]
pub struct Error {
    pub op: Op,
    pub source: io::Error,
}

impl Error {
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// True when the kernel or filesystem does not support pre-content marks
    /// (pre-6.14 kernel, filesystem without FS_ALLOW_HSM such as tmpfs, or
    /// fanotify permission events compiled out).
    pub fn is_unsupported(&self) -> bool {
        matches!(self.op, Op::Init | Op::MarkAdd)
            && matches!(
                self.errno(),
                Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP)
            )
    }

    fn hint(&self) -> &'static str {
        match (self.op, self.errno()) {
            (_, Some(libc::EPERM)) => " (needs CAP_SYS_ADMIN in the initial user namespace)",
            (Op::Init, Some(libc::EINVAL)) | (Op::Init, Some(libc::ENOSYS)) => {
                " (kernel lacks fanotify pre-content support: needs 6.14+ with CONFIG_FANOTIFY_ACCESS_PERMISSIONS)"
            }
            // Measured on 6.18: tmpfs answers EOPNOTSUPP; old kernels and
            // non-pre-content groups answer EINVAL.
            (Op::MarkAdd, Some(libc::EOPNOTSUPP)) => {
                " (filesystem has no pre-content (HSM) support, e.g. tmpfs; use ext4/xfs/btrfs)"
            }
            (Op::MarkAdd, Some(libc::EINVAL)) => {
                " (FAN_PRE_ACCESS unsupported: kernel < 6.14, group not FAN_CLASS_PRE_CONTENT, or not a regular file/dir)"
            }
            (Op::MarkRemove, Some(libc::ENOENT)) => " (no such mark)",
            (Op::Respond, Some(libc::ENOENT)) => " (no pending permission event with that fd)",
            (Op::Respond, Some(libc::EINVAL)) => " (invalid response value)",
            _ => "",
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.op {
            Op::Init => "fanotify_init",
            Op::MarkAdd => "fanotify_mark(FAN_MARK_ADD)",
            Op::MarkRemove => "fanotify_mark(FAN_MARK_REMOVE)",
            Op::Read => "reading fanotify group",
            Op::Respond => "writing fanotify response",
        };
        write!(f, "{what}: {}{}", self.source, self.hint())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn err(op: Op) -> Error {
    Error {
        op,
        source: io::Error::last_os_error(),
    }
}

/// What a mark is on: a path (resolved relative to the cwd, following
/// symlinks unless the flags say otherwise) or an open fd's inode.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Path(&'a Path),
    Fd(BorrowedFd<'a>),
}

/// A fanotify group fd.
///
/// **Dropping the group allows every pending permission event** (fail-open):
/// unmount whatever depends on it first. See docs/protocols/fanotify-precontent.md §6.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

impl Group {
    /// `fanotify_init(flags, event_f_flags)`.
    pub fn init(flags: u32, event_f_flags: i32) -> Result<Group, Error> {
        // SAFETY: plain syscall with integer arguments.
        let fd = unsafe { libc::fanotify_init(flags, event_f_flags as libc::c_uint) };
        if fd < 0 {
            return Err(err(Op::Init));
        }
        // SAFETY: fanotify_init returned a new fd we own.
        Ok(Group {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// The usual pre-content group: `FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC |
    /// FAN_NONBLOCK`; event fds opened `O_RDWR` when `writable_event_fds`
    /// (so fills can go through them without raising events), else `O_RDONLY`.
    pub fn pre_content(writable_event_fds: bool) -> Result<Group, Error> {
        let mode = if writable_event_fds {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        Group::init(
            FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK,
            mode | libc::O_LARGEFILE | libc::O_CLOEXEC,
        )
    }

    /// Raw `fanotify_mark`.
    pub fn mark(&self, flags: u32, mask: u64, target: Target<'_>) -> Result<(), Error> {
        let op = if flags & FAN_MARK_REMOVE != 0 {
            Op::MarkRemove
        } else {
            Op::MarkAdd
        };
        let (dirfd, path) = match target {
            Target::Path(p) => {
                let c = CString::new(p.as_os_str().as_bytes()).map_err(|_| Error {
                    op,
                    source: io::Error::from_raw_os_error(libc::EINVAL),
                })?;
                (libc::AT_FDCWD, Some(c))
            }
            // dirfd with a NULL path marks the fd's own inode.
            Target::Fd(fd) => (fd.as_raw_fd(), None),
        };
        let pathp = path.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: pathp is NULL or a valid C string that outlives the call.
        let rc = unsafe { libc::fanotify_mark(self.fd.as_raw_fd(), flags, mask, dirfd, pathp) };
        if rc < 0 {
            return Err(err(op));
        }
        Ok(())
    }

    /// Adds `FAN_PRE_ACCESS` on a regular file. Mark before the file is
    /// opened by whoever should raise events (the notify mode is fixed at open).
    pub fn add_pre_access(&self, target: Target<'_>) -> Result<(), Error> {
        self.mark(FAN_MARK_ADD, FAN_PRE_ACCESS, target)
    }

    /// Removes `FAN_PRE_ACCESS` (e.g. once a blob is fully filled).
    pub fn remove_pre_access(&self, target: Target<'_>) -> Result<(), Error> {
        self.mark(FAN_MARK_REMOVE, FAN_PRE_ACCESS, target)
    }

    /// One `read()` into `buf`; `Ok(0)` when nothing is pending
    /// (non-blocking group). Parse the bytes with [`crate::events`].
    pub fn read_into(&self, buf: &mut [u8]) -> Result<usize, Error> {
        loop {
            // SAFETY: buf is a live writable buffer of buf.len() bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(0),
                _ => {
                    return Err(Error {
                        op: Op::Read,
                        source: e,
                    })
                }
            }
        }
    }

    /// Answers the permission event whose fd number is `event_fd`. Do this
    /// before closing that fd.
    pub fn respond(&self, event_fd: RawFd, response: Response) -> Result<(), Error> {
        let b = response.encode(event_fd);
        loop {
            // SAFETY: b is an 8-byte buffer.
            let n = unsafe { libc::write(self.fd.as_raw_fd(), b.as_ptr().cast(), b.len()) };
            if n >= 0 {
                if n as usize != b.len() {
                    return Err(Error {
                        op: Op::Respond,
                        source: io::Error::from(io::ErrorKind::WriteZero),
                    });
                }
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(Error {
                    op: Op::Respond,
                    source: e,
                });
            }
        }
    }

    /// A new handle on the same group (e.g. to park with a supervisor so a
    /// crash does not fail open).
    pub fn try_clone(&self) -> io::Result<Group> {
        Ok(Group {
            fd: self.fd.try_clone()?,
        })
    }

    pub fn into_owned_fd(self) -> OwnedFd {
        self.fd
    }
}

impl From<OwnedFd> for Group {
    fn from(fd: OwnedFd) -> Self {
        Group { fd }
    }
}

impl From<Group> for OwnedFd {
    fn from(g: Group) -> OwnedFd {
        g.fd
    }
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Group {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl FromRawFd for Group {
    unsafe fn from_raw_fd(fd: RawFd) -> Self {
        Group {
            fd: OwnedFd::from_raw_fd(fd),
        }
    }
}

impl IntoRawFd for Group {
    fn into_raw_fd(self) -> RawFd {
        self.fd.into_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_carry_hints() {
        let e = Error {
            op: Op::MarkAdd,
            source: io::Error::from_raw_os_error(libc::EOPNOTSUPP),
        };
        assert!(e.is_unsupported());
        assert!(e.to_string().contains("tmpfs"), "{e}");
        let e = Error {
            op: Op::MarkAdd,
            source: io::Error::from_raw_os_error(libc::EINVAL),
        };
        assert!(e.is_unsupported());
        assert!(e.to_string().contains("6.14"), "{e}");
        let e = Error {
            op: Op::Respond,
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(!e.is_unsupported());
        assert!(e.to_string().contains("no pending permission event"), "{e}");
        let e = Error {
            op: Op::Init,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert!(e.to_string().contains("CAP_SYS_ADMIN"), "{e}");
    }

    #[test]
    fn path_with_nul_is_einval_not_panic() {
        // The CString check happens before the syscall, so a stand-in fd will do.
        let g = Group::from(OwnedFd::from(std::fs::File::open("/dev/null").unwrap()));
        let p = Path::new(std::ffi::OsStr::from_bytes(b"/a\0b"));
        let e = g.add_pre_access(Target::Path(p)).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert_eq!(e.op, Op::MarkAdd);
    }
}
