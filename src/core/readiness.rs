//! Which groups of a target already hold verified data.
//!
//! One bit per group. The bitmap is never persisted on its own: after a restart it is rebuilt
//! from the target itself with `SEEK_DATA`/`SEEK_HOLE` (a group counts as ready only if its whole
//! range is allocated data), so a wiped or replaced cache file can never be mistaken for a
//! filled one. Fills always write whole groups, zeros included, so a filled group has no holes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub struct Readiness {
    words: Box<[AtomicU64]>,
    groups: usize,
    ready_count: AtomicUsize,
}

impl Readiness {
    pub fn new(groups: usize) -> Readiness {
        let words = (0..groups.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        Readiness { words, groups, ready_count: AtomicUsize::new(0) }
    }

    pub fn groups(&self) -> usize {
        self.groups
    }

    pub fn is_ready(&self, group: usize) -> bool {
        group < self.groups && self.words[group / 64].load(Ordering::Acquire) & (1 << (group % 64)) != 0
    }

    /// Marks a group ready; returns true if it was not ready before.
    pub fn set_ready(&self, group: usize) -> bool {
        if group >= self.groups {
            return false;
        }
        let bit = 1u64 << (group % 64);
        let old = self.words[group / 64].fetch_or(bit, Ordering::AcqRel);
        let newly = old & bit == 0;
        if newly {
            self.ready_count.fetch_add(1, Ordering::AcqRel);
        }
        newly
    }

    /// The first group at or after `from` that is not ready (`groups()` if there is none): a
    /// word at a time, so skipping a long run of ready groups stays cheap.
    pub fn first_unready_from(&self, from: usize) -> usize {
        let mut g = from;
        while g < self.groups {
            let free = !self.words[g / 64].load(Ordering::Acquire) >> (g % 64);
            if free != 0 {
                return (g + free.trailing_zeros() as usize).min(self.groups);
            }
            g = (g / 64 + 1) * 64;
        }
        self.groups
    }

    pub fn all_ready(&self, first: usize, last: usize) -> bool {
        (first..=last).all(|g| self.is_ready(g))
    }

    pub fn ready_count(&self) -> usize {
        self.ready_count.load(Ordering::Acquire)
    }

    pub fn is_complete(&self) -> bool {
        self.ready_count() == self.groups
    }

    /// Rebuilds readiness from the allocated ranges of `fd` (a sparse cache file or a cachefiles
    /// anon fd, which forwards `lseek`). `group_size` is a power of two; `size` is the address
    /// space size. Groups partly allocated (a fill interrupted by a crash) stay not ready.
    pub fn scan(&self, fd: BorrowedFd<'_>, group_size: u64, size: u64) -> io::Result<usize> {
        let mut pos: u64 = 0;
        while pos < size {
            let data = match seek(fd, pos, libc::SEEK_DATA)? {
                Some(d) if d < size => d,
                _ => break,
            };
            let hole = seek(fd, data, libc::SEEK_HOLE)?.unwrap_or(size).min(size);
            // Whole groups inside [data, hole).
            let first = data.div_ceil(group_size);
            let mut g = first;
            while g * group_size < hole {
                let end = ((g + 1) * group_size).min(size);
                if end > hole {
                    break;
                }
                self.set_ready(g as usize);
                g += 1;
            }
            pos = hole.max(data + 1);
        }
        Ok(self.ready_count())
    }
}

/// `lseek` returning `None` at ENXIO (no more data / offset past the end).
fn seek(fd: BorrowedFd<'_>, pos: u64, whence: i32) -> io::Result<Option<u64>> {
    // SAFETY: plain lseek on a borrowed, valid fd.
    let r = unsafe { libc::lseek(fd.as_raw_fd(), pos as libc::off_t, whence) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileExt;

    #[test]
    fn bits_and_counts() {
        let r = Readiness::new(130);
        assert!(!r.is_ready(129));
        assert!(r.set_ready(129));
        assert!(!r.set_ready(129));
        assert!(!r.set_ready(130), "out of range is ignored");
        assert_eq!(r.ready_count(), 1);
        for g in 0..130 {
            r.set_ready(g);
        }
        assert!(r.is_complete());
    }

    #[test]
    fn first_unready_skips_whole_words() {
        let r = Readiness::new(200);
        assert_eq!(r.first_unready_from(0), 0);
        for g in 0..150 {
            r.set_ready(g);
        }
        assert_eq!(r.first_unready_from(0), 150);
        assert_eq!(r.first_unready_from(64), 150);
        assert_eq!(r.first_unready_from(170), 170);
        r.set_ready(151);
        assert_eq!(r.first_unready_from(151), 152);
        for g in 150..200 {
            r.set_ready(g);
        }
        assert_eq!(r.first_unready_from(3), 200, "none left: the group count");
        assert_eq!(r.first_unready_from(250), 200, "past the end");
    }

    #[test]
    fn scan_counts_only_whole_allocated_groups() {
        // Needs a filesystem with SEEK_DATA granularity of a block; the work disk (ext4) and tmpfs both do.
        let dir = tempfile::tempdir_in(std::env::temp_dir()).unwrap();
        let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(dir.path().join("c")).unwrap();
        let gs = 64 * 1024u64;
        let size = 10 * gs;
        f.set_len(size).unwrap();
        f.write_all_at(&vec![1u8; gs as usize], 2 * gs).unwrap(); // group 2 whole
        f.write_all_at(&vec![1u8; 4096], 5 * gs).unwrap(); // group 5 partly
        f.write_all_at(&vec![0u8; (2 * gs) as usize], 7 * gs).unwrap(); // groups 7, 8: explicit zeros are data
        let r = Readiness::new(10);
        r.scan(f.as_fd(), gs, size).unwrap();
        let ready: Vec<usize> = (0..10).filter(|&g| r.is_ready(g)).collect();
        assert_eq!(ready, vec![2, 7, 8]);
    }
}
