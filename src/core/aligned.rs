//! Page-aligned byte buffers.
//!
//! cachefiles writes the backing file with O_DIRECT, so every buffer handed to `pwrite` on an
//! anon fd must be 4 KiB aligned in memory, offset and length. One buffer type for every target
//! keeps the fill path identical for both front-ends.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

pub const PAGE: usize = 4096;

/// A heap buffer whose start is 4 KiB aligned and whose capacity is a whole number of pages.
/// `len` may be any value up to that capacity. Its bytes are always initialised: zeroed when
/// new, or left over from an earlier use when taken with [`AlignedBuf::recycled`].
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    cap: usize,
    len: usize,
    /// Return the allocation to [`POOL`] on drop instead of freeing it.
    pooled: bool,
}

/// Allocations the fill path gives back, for the next group of the same size. A fresh group
/// buffer costs an mmap, a page fault and a kernel zeroing per page and a TLB shootdown at
/// munmap; a cold read of a 250 MB image decodes about a thousand of them (profiled: ~8 % of
/// the daemon's CPU). Bounded by [`POOL_BYTES`].
static POOL: std::sync::Mutex<Vec<(usize, SendPtr)>> = std::sync::Mutex::new(Vec::new());
const POOL_BYTES: usize = 32 << 20;

struct SendPtr(NonNull<u8>);
// SAFETY: a pooled allocation is owned by the pool alone until taken out.
unsafe impl Send for SendPtr {}

// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes (capacity rounded up to a page, at least one page).
    pub fn zeroed(len: usize) -> AlignedBuf {
        let cap = len.max(1).div_ceil(PAGE) * PAGE;
        let layout = Layout::from_size_align(cap, PAGE).expect("buffer layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, cap, len, pooled: false }
    }

    /// A buffer of `len` bytes for a caller that overwrites all of them (a group decoder whose
    /// output length is checked): its bytes are whatever an earlier user left. Dropping it
    /// gives the allocation back to the pool.
    pub fn recycled(len: usize) -> AlignedBuf {
        let cap = len.max(1).div_ceil(PAGE) * PAGE;
        let taken = {
            let mut pool = POOL.lock().expect("buffer pool");
            pool.iter().position(|(c, _)| *c == cap).map(|i| pool.swap_remove(i).1)
        };
        match taken {
            Some(SendPtr(ptr)) => AlignedBuf { ptr, cap, len, pooled: true },
            None => {
                let mut fresh = AlignedBuf::zeroed(len);
                fresh.pooled = true;
                fresh
            }
        }
    }

    /// Grows (zero-filled) or shrinks the visible length within the capacity.
    pub fn set_len(&mut self, len: usize) {
        assert!(len <= self.cap, "AlignedBuf::set_len beyond capacity");
        if len > self.len {
            // SAFETY: [self.len, len) lies inside the allocation.
            unsafe { std::ptr::write_bytes(self.ptr.as_ptr().add(self.len), 0, len - self.len) };
        }
        self.len = len;
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.pooled {
            let mut pool = POOL.lock().expect("buffer pool");
            if pool.iter().map(|(c, _)| c).sum::<usize>() + self.cap <= POOL_BYTES {
                pool.push((self.cap, SendPtr(self.ptr)));
                return;
            }
        }
        let layout = Layout::from_size_align(self.cap, PAGE).expect("buffer layout");
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(5000);
        assert_eq!(b.as_ptr() as usize % PAGE, 0);
        assert_eq!(b.len(), 5000);
        assert_eq!(b.capacity(), 8192);
        assert!(b.iter().all(|&x| x == 0));
        b[4999] = 7;
        b.set_len(100);
        b.set_len(6000);
        assert!(b[100..].iter().all(|&x| x == 0), "regrown bytes are zero");
    }

    #[test]
    fn recycled_buffers_come_back_aligned_and_sized() {
        // 14 pages is no group size, so the pool's entries of this capacity are this test's.
        let len = 13 * PAGE + 17;
        let mut a = AlignedBuf::recycled(len);
        a.fill(0xa5);
        let addr = a.as_ptr() as usize;
        drop(a);
        let b = AlignedBuf::recycled(len);
        assert_eq!(b.as_ptr() as usize % PAGE, 0);
        assert_eq!((b.len(), b.capacity()), (len, 14 * PAGE));
        // Taken back from the pool: same allocation, old bytes still there (callers overwrite).
        assert_eq!(b.as_ptr() as usize, addr);
        assert!(b.iter().all(|&x| x == 0xa5));
        let c = AlignedBuf::recycled(len);
        assert_ne!(c.as_ptr() as usize, addr, "one allocation is never handed out twice");
    }
}
