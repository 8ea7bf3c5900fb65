//! Where stored blob bytes come from.
//!
//! A [`BlobSource`] answers one question: "give me stored bytes `[offset, offset + len)` of blob
//! `id`". The fill engine asks for exactly one contiguous stored range per run of groups, so a
//! remote source turns each call into one HTTP range request. Sources know nothing about
//! groups, compression or the kernel.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub trait BlobSource: Send + Sync + 'static {
    /// Reads exactly `len` stored bytes of blob `id` (64 lowercase hex chars) at `offset`.
    /// A short answer is an error (`UnexpectedEof`), never a short buffer.
    fn read_range(&self, id: &str, offset: u64, len: u64) -> BoxFuture<'_, io::Result<Vec<u8>>>;

    /// A human-readable description for logs and `erofsd doctor`.
    fn describe(&self) -> String;

    /// What one extra request costs, in stored bytes that could be transferred in its place.
    /// The fill engine fetches a gap of unwanted groups between two wanted runs (and throws it
    /// away) when the gap is at most this, instead of making a second request. Local files: 0
    /// (a second pread is free); a registry: a round trip's worth of bandwidth.
    fn request_overhead(&self) -> u64 {
        0
    }

    /// Reads like [`BlobSource::read_range`] but on the calling thread, for sources whose reads
    /// are plain file reads: the fill engine then reads and decodes on one blocking-pool
    /// thread instead of hopping between two (one hop per group, a thousand on a cold read of
    /// a 250 MB image). The bytes land in `buf[..len]`: `buf` is the caller's reusable buffer,
    /// grown when too short, so a fill neither allocates nor zeroes stored bytes only to
    /// overwrite them. `None`: this source only reads asynchronously (the network); `buf` is
    /// left alone.
    fn read_range_blocking(&self, _id: &str, _offset: u64, _len: u64, _buf: &mut Vec<u8>) -> Option<io::Result<()>> {
        None
    }

    /// A hint that stored bytes `[offset, offset + len)` of blob `id` will be read soon (a
    /// sequential reader is coming). A local file starts reading them into the page cache
    /// without waiting; other sources ignore it. Blocks briefly (it submits I/O): call it on a
    /// blocking thread.
    fn will_need(&self, _id: &str, _offset: u64, _len: u64) {}
}

/// Blobs as files `<dir>/<sha256-hex>` on a local filesystem.
///
/// Open files are kept (one per blob): reopening per read would cost a path walk each time and,
/// worse, throw away the kernel's readahead state for the blob file, which is what makes a
/// sequential cold read of a local blob run at disk speed.
pub struct LocalDirSource {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<File>>>,
}

impl LocalDirSource {
    pub fn new(dir: impl Into<PathBuf>) -> LocalDirSource {
        LocalDirSource { dir: dir.into(), open: Mutex::new(HashMap::new()) }
    }

    /// The open blob file, opened on first use. A missing file is not remembered, so a blob
    /// that appears later (copied in after the mount) is found.
    fn file(&self, id: &str) -> io::Result<Arc<File>> {
        if let Some(f) = self.open.lock().expect("open files").get(id) {
            return Ok(f.clone());
        }
        let path = self.path_of(id)?;
        let file = File::open(&path).map_err(|e| io::Error::new(e.kind(), format!("open blob {}: {e}", path.display())))?;
        let file = Arc::new(file);
        self.open.lock().expect("open files").insert(id.to_string(), file.clone());
        Ok(file)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, id: &str) -> io::Result<PathBuf> {
        // Ids come from bootstraps, which may be hostile: only a 64-hex name may become a path.
        if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid blob id {id:?}")));
        }
        Ok(self.dir.join(id))
    }
}

/// Upper bound on one stored read, so a lying group table cannot make us allocate gigabytes.
pub const MAX_RANGE: u64 = 256 << 20;

impl BlobSource for LocalDirSource {
    fn read_range(&self, id: &str, offset: u64, len: u64) -> BoxFuture<'_, io::Result<Vec<u8>>> {
        let file = self.file(id);
        let id = id.to_string();
        Box::pin(async move {
            let file = file?;
            if len > MAX_RANGE {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("range of {len} bytes is too large")));
            }
            tokio::task::spawn_blocking(move || read_exact_at(&file, &id, offset, len))
                .await
                .map_err(|e| io::Error::other(format!("blob read task failed: {e}")))?
        })
    }

    fn describe(&self) -> String {
        format!("local directory {}", self.dir.display())
    }

    fn read_range_blocking(&self, id: &str, offset: u64, len: u64, buf: &mut Vec<u8>) -> Option<io::Result<()>> {
        if len > MAX_RANGE {
            return Some(Err(io::Error::new(io::ErrorKind::InvalidInput, format!("range of {len} bytes is too large"))));
        }
        let len = len as usize;
        if buf.len() < len {
            buf.resize(len, 0);
        }
        Some(self.file(id).and_then(|file| read_exact_into(&file, id, offset, &mut buf[..len])))
    }

    /// Fills run several groups at once, out of order, on different threads: the kernel's own
    /// readahead for the blob file sees interleaved preads and stays small, so each pread of a
    /// cold blob waits for its own disk read. One WILLNEED over the stored bytes ahead turns
    /// them into large asynchronous reads.
    fn will_need(&self, id: &str, offset: u64, len: u64) {
        if let Ok(file) = self.file(id) {
            // SAFETY: an advisory call on an open fd; errors only mean "no hint".
            unsafe {
                libc::posix_fadvise(file.as_raw_fd(), offset as libc::off_t, len as libc::off_t, libc::POSIX_FADV_WILLNEED)
            };
        }
    }
}

fn read_exact_at(file: &File, id: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    read_exact_into(file, id, offset, &mut buf)?;
    Ok(buf)
}

fn read_exact_into(file: &File, id: &str, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    file.read_exact_at(buf, offset)
        .map_err(|e| io::Error::new(e.kind(), format!("read {} bytes at {offset} of blob {id}: {e}", buf.len())))
}

/// Shared handle to any source.
pub type SharedSource = Arc<dyn BlobSource>;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_reads_exact_ranges_and_rejects_bad_ids() {
        let dir = tempfile::tempdir().unwrap();
        let id = "ab".repeat(32);
        std::fs::write(dir.path().join(&id), b"0123456789").unwrap();
        let src = LocalDirSource::new(dir.path());
        assert_eq!(src.read_range(&id, 2, 3).await.unwrap(), b"234");
        let mut buf = b"old bytes, longer than the read".to_vec();
        src.read_range_blocking(&id, 2, 3, &mut buf).unwrap().unwrap();
        assert_eq!(&buf[..3], b"234", "a long buffer is reused, not shortened");
        let mut short_buf = Vec::new();
        src.read_range_blocking(&id, 4, 6, &mut short_buf).unwrap().unwrap();
        assert_eq!(short_buf, b"456789", "a short buffer grows");
        let short = src.read_range_blocking(&id, 8, 5, &mut buf).unwrap().unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        let short = src.read_range(&id, 8, 5).await.unwrap_err();
        assert_eq!(short.kind(), io::ErrorKind::UnexpectedEof);
        assert!(src.read_range("../etc/passwd", 0, 1).await.is_err());
        assert!(src.read_range(&"AB".repeat(32), 0, 1).await.is_err());
        let missing = src.read_range(&"cd".repeat(32), 0, 1).await.unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
    }
}
