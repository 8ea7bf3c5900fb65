//! The journal of events taken from the group but not yet answered.
//!
//! Why: the group fd outlives a crashed worker (the supervisor holds a duplicate), and so do
//! the events the worker had read but not answered: their readers stay blocked. The kernel
//! matches a response by the event's fd *number*, whoever writes it. So each taken event is
//! recorded here — fd number, blob id, range — and a successor holding the same group fills
//! those ranges and answers them by number before it reads anything new (fd numbers are
//! reused by new events once read).
//!
//! Layout: a file under the cache dir, mapped shared. A process crash cannot lose stores to a
//! shared file mapping (they are in the page cache), so recording costs a few memory stores,
//! not a syscall. Header (64 B): magic, version, slot count, highest event fd ever recorded.
//! Slots (64 B each): state (0 free, 1 taken), fd, offset, count, blob id (32 raw bytes).
//! Ordering for fd-number reuse: a slot is cleared *before* its event fd is closed, so a slot
//! never names an fd number the kernel may have given to a newer event.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

const MAGIC: u32 = 0x4a46_4e45; // "ENFJ"
const VERSION: u32 = 1;
const HEADER: usize = 64;
const SLOT: usize = 64;
/// Enough for every event fd a worker can hold at once (bounded by RLIMIT_NOFILE in practice);
/// when full, events are still served, just not journaled (a crash then answers them EIO).
pub const SLOTS: usize = 1 << 16;

/// One recorded event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub fd: i32,
    pub offset: u64,
    pub count: u64,
    pub blob: [u8; 32],
}

pub struct Journal {
    base: *mut u8,
    len: usize,
    free: Mutex<Vec<u32>>,
}

// SAFETY: the mapping is only touched through atomics and slots owned by one taker at a time.
unsafe impl Send for Journal {}
unsafe impl Sync for Journal {}

impl Journal {
    /// Opens (creating if needed) the journal at `path`. With `fresh`, all slots are cleared
    /// (a new group: old fd numbers mean nothing). Returns the journal and the entries a
    /// previous worker of the same group left behind (empty when fresh).
    pub fn open(path: &Path, fresh: bool) -> io::Result<(Journal, Vec<Entry>, i32)> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = HEADER + SLOTS * SLOT;
        if fresh || file.metadata()?.len() != len as u64 {
            file.set_len(0)?;
            file.set_len(len as u64)?;
        }
        // SAFETY: mapping a file we just sized; unmapped in Drop.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, file.as_raw_fd(), 0)
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let j = Journal { base: base as *mut u8, len, free: Mutex::new(Vec::new()) };
        let mut left = Vec::new();
        let mut high = -1;
        if j.u32(0).load(Ordering::Acquire) == MAGIC && j.u32(4).load(Ordering::Acquire) == VERSION {
            high = j.high().load(Ordering::Acquire);
            for i in 0..SLOTS {
                if let Some(e) = j.read_slot(i) {
                    left.push(e);
                }
            }
        } else if !fresh {
            // An unknown or torn header: nothing trustworthy to replay.
        }
        // Start clean: the caller answers `left` before taking new events.
        for i in 0..SLOTS {
            j.state(i).store(0, Ordering::Relaxed);
        }
        j.u32(0).store(MAGIC, Ordering::Release);
        j.u32(4).store(VERSION, Ordering::Release);
        j.u32(8).store(SLOTS as u32, Ordering::Release);
        j.high().store(high, Ordering::Release);
        *j.free.lock().expect("journal") = (0..SLOTS as u32).rev().collect();
        Ok((j, left, high))
    }

    fn ptr(&self, off: usize) -> *mut u8 {
        assert!(off + 8 <= self.len);
        // SAFETY: in bounds of the mapping.
        unsafe { self.base.add(off) }
    }
    fn u32(&self, off: usize) -> &AtomicU32 {
        // SAFETY: aligned (offsets are multiples of 4), in bounds, lives as long as self.
        unsafe { &*(self.ptr(off) as *const AtomicU32) }
    }
    fn high(&self) -> &AtomicI32 {
        // SAFETY: as above.
        unsafe { &*(self.ptr(12) as *const AtomicI32) }
    }
    fn state(&self, slot: usize) -> &AtomicU32 {
        self.u32(HEADER + slot * SLOT)
    }
    fn u64(&self, off: usize) -> &AtomicU64 {
        // SAFETY: 8-aligned offsets inside the mapping.
        unsafe { &*(self.ptr(off) as *const AtomicU64) }
    }

    fn read_slot(&self, slot: usize) -> Option<Entry> {
        let at = HEADER + slot * SLOT;
        if self.state(slot).load(Ordering::Acquire) != 1 {
            return None;
        }
        let fd = self.u32(at + 4).load(Ordering::Relaxed) as i32;
        let offset = self.u64(at + 8).load(Ordering::Relaxed);
        let count = self.u64(at + 16).load(Ordering::Relaxed);
        let mut blob = [0u8; 32];
        for (k, chunk) in blob.chunks_mut(8).enumerate() {
            chunk.copy_from_slice(&self.u64(at + 24 + k * 8).load(Ordering::Relaxed).to_ne_bytes());
        }
        Some(Entry { fd, offset, count, blob })
    }

    /// Records an event; returns its slot (None if the journal is full).
    pub fn record(&self, e: &Entry) -> Option<u32> {
        let slot = self.free.lock().expect("journal").pop()?;
        let at = HEADER + slot as usize * SLOT;
        self.u32(at + 4).store(e.fd as u32, Ordering::Relaxed);
        self.u64(at + 8).store(e.offset, Ordering::Relaxed);
        self.u64(at + 16).store(e.count, Ordering::Relaxed);
        for (k, chunk) in e.blob.chunks(8).enumerate() {
            self.u64(at + 24 + k * 8).store(u64::from_ne_bytes(chunk.try_into().expect("8 bytes")), Ordering::Relaxed);
        }
        self.high().fetch_max(e.fd, Ordering::Relaxed);
        self.state(slot as usize).store(1, Ordering::Release);
        Some(slot)
    }

    /// Clears a slot. Call after responding and before closing the event fd.
    pub fn clear(&self, slot: u32) {
        self.state(slot as usize).store(0, Ordering::Release);
        self.free.lock().expect("journal").push(slot);
    }

    /// Raises the recorded highest event fd (events read but not yet recorded may be up to a
    /// batch above what was recorded; the successor sweeps up to here).
    pub fn note_fd(&self, fd: i32) {
        self.high().fetch_max(fd, Ordering::Relaxed);
    }

    pub fn in_use(&self) -> usize {
        SLOTS - self.free.lock().expect("journal").len()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        // SAFETY: unmapping what `open` mapped.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_survive_reopen_and_fresh_clears() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal");
        let (j, left, _) = Journal::open(&p, true).unwrap();
        assert!(left.is_empty());
        let e1 = Entry { fd: 7, offset: 4096, count: 65536, blob: [0xab; 32] };
        let e2 = Entry { fd: 9, offset: 0, count: 1, blob: [1; 32] };
        let s1 = j.record(&e1).unwrap();
        let _s2 = j.record(&e2).unwrap();
        j.clear(s1);
        j.note_fd(40);
        drop(j); // as if the process died: the mapping's stores are in the file
        let (j, left, high) = Journal::open(&p, false).unwrap();
        assert_eq!(left, vec![e2]);
        assert_eq!(high, 40);
        assert_eq!(j.in_use(), 0, "a reopened journal starts with every slot free");
        drop(j);
        let (_j, left, high) = Journal::open(&p, true).unwrap();
        assert!(left.is_empty());
        assert_eq!(high, -1);
    }
}
