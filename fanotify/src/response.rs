//! `struct fanotify_response` (8 bytes written to the group fd):
//! `+0 s32 fd`, `+4 u32 response`. The kernel matches it to a read-but-
//! unanswered permission event by the numeric fd.

use std::fmt;

use crate::consts::*;

/// A verdict. Construct with [`Response::ALLOW`], [`Response::DENY`] or
/// [`Response::deny_errno`] so only values the kernel accepts exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response(u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadDenyErrno(pub i32);

impl fmt::Display for BadDenyErrno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "errno {} not allowed in FAN_DENY_ERRNO (allowed: EPERM, EIO, EBUSY, ETXTBSY, EAGAIN, ENOSPC, EDQUOT)",
            self.0
        )
    }
}

impl std::error::Error for BadDenyErrno {}

impl Response {
    /// Let the access proceed.
    pub const ALLOW: Response = Response(FAN_ALLOW);
    /// Fail the access with `EPERM`.
    pub const DENY: Response = Response(FAN_DENY);

    /// Fail the access with `errno` (pre-content groups only, 6.14+).
    pub fn deny_errno(errno: i32) -> Result<Response, BadDenyErrno> {
        if FAN_DENY_ERRNO_ALLOWED.contains(&errno) {
            Ok(Response(fan_deny_errno(errno)))
        } else {
            Err(BadDenyErrno(errno))
        }
    }

    /// The `response` field value.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The 8 bytes to write for the event whose fd is `fd`.
    pub fn encode(self, fd: i32) -> [u8; FAN_RESPONSE_LEN] {
        let mut b = [0u8; FAN_RESPONSE_LEN];
        b[..4].copy_from_slice(&fd.to_ne_bytes());
        b[4..].copy_from_slice(&self.0.to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn encodes_bytes() {
        assert_eq!(Response::ALLOW.encode(7), [7, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(Response::DENY.encode(7), [7, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(
            Response::deny_errno(libc::EIO).unwrap().encode(300),
            [0x2c, 1, 0, 0, 2, 0, 0, 5]
        );
        assert_eq!(
            Response::ALLOW.encode(-1),
            [0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0]
        );
    }

    #[test]
    fn deny_errno_values() {
        for e in FAN_DENY_ERRNO_ALLOWED {
            assert_eq!(
                Response::deny_errno(e).unwrap().bits(),
                FAN_DENY | ((e as u32) << 24)
            );
        }
        assert_eq!(
            Response::deny_errno(libc::ENOENT),
            Err(BadDenyErrno(libc::ENOENT))
        );
        assert_eq!(Response::deny_errno(0), Err(BadDenyErrno(0)));
        assert_eq!(Response::deny_errno(-5), Err(BadDenyErrno(-5)));
        assert!(BadDenyErrno(2).to_string().contains("EIO"));
    }
}
