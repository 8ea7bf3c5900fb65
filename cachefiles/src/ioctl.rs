//! `CACHEFILES_IOC_READ_COMPLETE`: the only way to finish a READ.
//!
//! The kernel re-probes the backing file afterwards; if the requested range is
//! still a hole the reader gets `EIO`. So completing without writing is also
//! how a READ is failed. The argument is the msg_id **by value**, not a pointer.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

// `_IOC` bit layout (include/uapi/asm-generic/ioctl.h and the arch overrides).
const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
))]
mod arch {
    pub const IOC_SIZEBITS: u32 = 13;
    pub const IOC_WRITE: u32 = 4;
}
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "mips32r6",
    target_arch = "mips64r6",
    target_arch = "sparc",
    target_arch = "sparc64"
)))]
mod arch {
    pub const IOC_SIZEBITS: u32 = 14;
    pub const IOC_WRITE: u32 = 1;
}

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + arch::IOC_SIZEBITS;

/// `_IOW(ty, nr, size)`.
pub const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    (arch::IOC_WRITE << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// `_IOW(0x98, 1, int)`; 0x40049801 on x86-64 and arm64.
pub const CACHEFILES_IOC_READ_COMPLETE: u32 = iow(0x98, 1, std::mem::size_of::<libc::c_int>());

/// Completes READ `msg_id` on an anon fd of the same object.
///
/// Errors (6.10+): `EINVAL` if the id is unknown, not a READ, or belongs to
/// another object. Older kernels accept more. Complete each id exactly once.
pub fn read_complete(anon_fd: BorrowedFd<'_>, msg_id: u32) -> io::Result<()> {
    // SAFETY: the request takes an integer argument by value; no memory is
    // passed to the kernel. The request type differs between libcs, hence `as _`.
    let rc = unsafe {
        libc::ioctl(
            anon_fd.as_raw_fd(),
            CACHEFILES_IOC_READ_COMPLETE as _,
            msg_id as libc::c_ulong,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "x86",
        target_arch = "arm"
    ))]
    fn read_complete_number_matches_uapi() {
        assert_eq!(CACHEFILES_IOC_READ_COMPLETE, 0x4004_9801);
    }

    #[test]
    fn iow_matches_known_requests() {
        // FS_IOC_SETVERSION is _IOW('v', 2, long): 0x40087602 on 64-bit x86/arm.
        #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
        assert_eq!(iow(b'v', 2, 8), 0x4008_7602);
        assert_eq!(iow(0, 0, 0), arch::IOC_WRITE << IOC_DIRSHIFT);
    }

    #[test]
    fn read_complete_on_wrong_fd_is_a_clean_error() {
        // A regular file does not implement the ioctl: ENOTTY, not a crash.
        let f = std::fs::File::open("/proc/self/status").unwrap();
        let err = read_complete(f.as_fd(), 1).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
    }
}
