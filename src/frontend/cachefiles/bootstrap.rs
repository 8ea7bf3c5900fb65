//! The bootstrap object: what the kernel reads as an image's metadata through fscache.
//!
//! EROFS over fscache zero-fills the rest of a read request that starts in an interior hole
//! (see `erofs::holes`), so a bootstrap with interior holes is never served as it is: the
//! object the kernel gets is a copy whose interior holes address a zero extent past the
//! metadata, and every byte past the copy's end reads as zeros. The copy is made once per
//! registration, from the image's bootstrap, and never stored: a restarted daemon makes the
//! same one again. Its size differs from the original's, so a cache object written from the
//! original by an older daemon fails cachefiles' object-size check and is discarded, not
//! reused.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tracing::info;

use crate::core::aligned::{AlignedBuf, PAGE};
use crate::core::images::Image;

/// Writes right after `copen` can meet a backing file the kernel has not set yet (ENOBUFS).
pub const ENOBUFS_RETRIES: u32 = 10;

/// An image's bootstrap as the fscache door serves it.
pub struct FscacheBootstrap {
    /// The metadata bytes (the image's own, or the redirected copy).
    pub bytes: Arc<Vec<u8>>,
    /// The object's size for `copen`; bytes past `bytes.len()` are zeros.
    pub size: u64,
}

impl FscacheBootstrap {
    /// The object for `image`: its bootstrap, with interior holes redirected when it has any.
    /// Fails only for an image the redirection cannot place a zero extent in.
    pub fn for_image(image: &Image) -> Result<FscacheBootstrap> {
        let bytes = image.read_bootstrap()?;
        let redirected = erofs::holes::redirect_interior_holes(&bytes).with_context(|| {
            format!("image {}: its interior holes cannot be served safely through fscache", image.bootstrap_path.display())
        })?;
        Ok(match redirected {
            None => FscacheBootstrap { size: bytes.len() as u64, bytes: Arc::new(bytes) },
            Some(r) => {
                info!(
                    "image {}: {} file(s) with interior holes ({} chunks) point at a zero extent at block {} of the bootstrap object \
                     (EROFS over fscache would read the data after them as zeros)",
                    image.id, r.files, r.chunks, r.zero_blkaddr
                );
                FscacheBootstrap { bytes: Arc::new(r.bootstrap), size: r.size }
            }
        })
    }

    /// Page-rounded length of the metadata bytes (what the prefill writes).
    pub fn prefill_len(&self) -> u64 {
        padded(self.bytes.len() as u64)
    }

    /// Writes object bytes `[off, off + len)` (zeros past the metadata, page-aligned for
    /// O_DIRECT, clipped to the object) into `fd`. Returns the bytes written.
    pub fn write(&self, fd: BorrowedFd<'_>, off: u64, len: u64) -> io::Result<u64> {
        let end = off.saturating_add(len).min(padded(self.size));
        if off >= end {
            return Ok(0);
        }
        if !off.is_multiple_of(PAGE as u64) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unaligned bootstrap READ at {off}")));
        }
        let n = (end - off) as usize;
        let mut buf = AlignedBuf::zeroed(n);
        let boot = &self.bytes;
        let have_end = (boot.len() as u64).min(end);
        if off < have_end {
            buf[..(have_end - off) as usize].copy_from_slice(&boot[off as usize..have_end as usize]);
        }
        let mut done = 0usize;
        let mut tries = 0;
        while done < n {
            let rest = &buf[done..];
            // SAFETY: valid fd, valid buffer of rest.len() bytes.
            let w = unsafe {
                libc::pwrite(fd.as_raw_fd(), rest.as_ptr().cast(), rest.len(), (off + done as u64) as libc::off_t)
            };
            if w < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) if tries < ENOBUFS_RETRIES => {
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(20 * tries as u64));
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            if w == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "pwrite wrote nothing"));
            }
            // Kernels before the 6.13 fix return the page-rounded length.
            done = (done + w as usize).min(n);
        }
        Ok(n as u64)
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(PAGE as u64) * PAGE as u64
}
