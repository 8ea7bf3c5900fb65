//! One blob as the fill engine sees it: its record from the bootstrap, the map from
//! uncompressed ranges to stored ranges, the source its bytes come from, and counters.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use erofs::blob::{BlobError, BlobRecord, GroupDecoder, GroupMap};
use erofs::rafs::{decode_chunk, BlobMeta, Compressor, RafsBlob, ZranTable};

use super::aligned::AlignedBuf;
use super::source::SharedSource;
use super::zran::ZranDecoder;

/// Stored-byte buffers up to this size are kept per fill thread and reused (a read-ahead
/// piece stores at most 2 MiB); larger spans get their own, freed after use.
const KEPT_STORED_BUF: u64 = 8 << 20;

/// Why a fill failed. Every variant ends as EIO for the reader; the text goes to the log.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("blob {blob}: fetching stored bytes {start}..{end}: {source}")]
    Source { blob: String, start: u64, end: u64, source: io::Error },
    #[error("blob {blob}: {source}")]
    Verify { blob: String, source: BlobError },
    #[error("blob {blob}: writing the filled range into the cache: {source}")]
    Write { blob: String, source: io::Error },
    #[error("{0}")]
    Other(String),
}

#[derive(Default, Debug)]
pub struct BlobStats {
    /// Stored (compressed) bytes received from the source.
    pub stored_bytes: AtomicU64,
    /// Groups fetched, verified and decoded.
    pub groups: AtomicU64,
    /// Source requests made (one per run of groups).
    pub requests: AtomicU64,
    /// Groups that failed to fetch or verify.
    pub errors: AtomicU64,
    /// Of `groups`, those the background prefetcher fetched ([`super::prefetch`]).
    pub prefetch_groups: AtomicU64,
    /// Stored bytes of `prefetch_groups`.
    pub prefetch_bytes: AtomicU64,
}

pub struct Blob {
    pub record: BlobRecord,
    pub id: String,
    pub map: GroupMap,
    pub source: SharedSource,
    pub stats: BlobStats,
    /// nydus blobs only: how compressed chunks are compressed. `None` for an erofsd blob.
    /// (A nydus blob's `record` carries its id and sizes only; its map is chunk mode.)
    pub chunk_compressor: Option<Compressor>,
    /// nydus zran blobs: the inflate contexts their chunks are decoded from.
    pub zran: Option<ZranTable>,
}

impl Blob {
    pub fn new(record: BlobRecord, source: SharedSource) -> Result<Arc<Blob>, BlobError> {
        let map = GroupMap::new(&record)?;
        let id = record.id_hex();
        Ok(Arc::new(Blob { record, id, map, source, stats: BlobStats::default(), chunk_compressor: None, zran: None }))
    }

    /// A nydus RAFS v6 data blob: chunks (and zran contexts) from its blob meta (see
    /// `images::load_rafs_blobs`).
    pub fn new_nydus(rb: &RafsBlob, meta: BlobMeta, source: SharedSource) -> Result<Arc<Blob>, BlobError> {
        let mut id = [0u8; 32];
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&rb.id[2 * i..2 * i + 2], 16).map_err(|_| BlobError::BadTable("blob id is not hex".into()))?;
        }
        let record = BlobRecord {
            id,
            stored_size: rb.compressed_size,
            uncompressed_size: rb.uncompressed_size,
            compression: erofs::blob::Compression::None,
            group_size_log2: 12,
            groups: Vec::new(),
        };
        let map = GroupMap::chunked(rb.uncompressed_size, meta.chunks)?;
        Ok(Arc::new(Blob {
            record,
            id: rb.id.clone(),
            map,
            source,
            stats: BlobStats::default(),
            chunk_compressor: Some(rb.compressor),
            zran: meta.zran,
        }))
    }

    pub fn size(&self) -> u64 {
        self.record.uncompressed_size
    }

    /// Fetches groups `first..=last` with one source request, then decodes and verifies each.
    /// Returns one page-aligned buffer per group, in order.
    pub async fn fetch_groups(self: &Arc<Self>, first: u32, last: u32) -> Result<Vec<AlignedBuf>, FetchError> {
        let got = self.fetch_span(first, last, Arc::new(move |_| true)).await?;
        Ok(got.into_iter().map(|(_, buf)| buf).collect())
    }

    /// Fetches the stored span of groups `first..=last` with one source request and decodes
    /// and verifies only the groups `wanted` selects (the others are a gap fetched to save a
    /// request). Returns `(group, buffer)` for the wanted groups, in order.
    pub async fn fetch_span(
        self: &Arc<Self>,
        first: u32,
        last: u32,
        wanted: Arc<dyn Fn(u32) -> bool + Send + Sync>,
    ) -> Result<Vec<(u32, AlignedBuf)>, FetchError> {
        // Decompression and CRC are CPU work: keep them off the async workers. A local source
        // is read on the same blocking thread that decodes (`None` from a network source: it
        // is read asynchronously below, then decoded).
        let (this, w) = (self.clone(), wanted.clone());
        let local = tokio::task::spawn_blocking(move || this.fetch_span_blocking(first, last, &*w))
            .await
            .map_err(|e| FetchError::Other(format!("decode task failed: {e}")))?;
        match local {
            Some(result) => result,
            None => self.fetch_span_remote(first, last, wanted).await,
        }
    }

    /// [`Blob::fetch_span`] for a source that reads only asynchronously (`read_range_blocking`
    /// gave `None`): read it on the runtime, decode on the blocking pool.
    pub async fn fetch_span_remote(
        self: &Arc<Self>,
        first: u32,
        last: u32,
        wanted: Arc<dyn Fn(u32) -> bool + Send + Sync>,
    ) -> Result<Vec<(u32, AlignedBuf)>, FetchError> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let stored_range = self.map.span(first, last);
        let (start, len) = (stored_range.start, stored_range.end - stored_range.start);
        let stored = self.source.read_range(&self.id, start, len).await;
        let stored = stored.map_err(|e| self.source_failed(first, last, start, len, e))?;
        self.received(stored.len() as u64);
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.decode_run(first, last, &*wanted, start, &stored))
            .await
            .map_err(|e| FetchError::Other(format!("decode task failed: {e}")))?
    }

    /// [`Blob::fetch_span`] on this (blocking-pool) thread, when the source reads local files;
    /// `None` when it does not (read it asynchronously instead).
    pub fn fetch_span_blocking(
        &self,
        first: u32,
        last: u32,
        wanted: &dyn Fn(u32) -> bool,
    ) -> Option<Result<Vec<(u32, AlignedBuf)>, FetchError>> {
        let stored_range = self.map.span(first, last);
        if stored_range.is_empty() {
            // Only holes of a nydus blob: nothing stored to fetch, whatever the source.
            return Some(self.decode_run(first, last, wanted, stored_range.start, &[]));
        }
        let (start, len) = (stored_range.start, stored_range.end - stored_range.start);
        // The stored bytes go into this thread's reusable buffer: a fresh one per span would
        // be zeroed (or faulted in) only to be overwritten, a second pass over every byte.
        thread_local! {
            static STORED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        STORED.with(|cell| {
            let mut kept = cell.borrow_mut();
            let mut one_off = Vec::new();
            // A rare huge span (a prefetch list's run) gets its own buffer, freed after it.
            let buf = if len <= KEPT_STORED_BUF { &mut *kept } else { &mut one_off };
            let read = self.source.read_range_blocking(&self.id, start, len, buf)?;
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = read {
                return Some(Err(self.source_failed(first, last, start, len, e)));
            }
            self.received(len);
            Some(self.decode_run(first, last, wanted, start, &buf[..len as usize]))
        })
    }

    /// Counts `n` stored bytes received from the source.
    fn received(&self, n: u64) {
        self.stats.stored_bytes.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts a failed source request for groups `first..=last` and turns its error into ours.
    fn source_failed(&self, first: u32, last: u32, start: u64, len: u64, source: io::Error) -> FetchError {
        self.stats.errors.fetch_add((last - first + 1) as u64, Ordering::Relaxed);
        FetchError::Source { blob: self.id.clone(), start, end: start + len, source }
    }

    fn decode_run(
        &self,
        first: u32,
        last: u32,
        wanted: &dyn Fn(u32) -> bool,
        base: u64,
        stored: &[u8],
    ) -> Result<Vec<(u32, AlignedBuf)>, FetchError> {
        if let Some(compressor) = self.chunk_compressor {
            return self.decode_chunks(compressor, first, last, wanted, base, stored);
        }
        thread_local! {
            static DECODER: std::cell::RefCell<Option<GroupDecoder>> = const { std::cell::RefCell::new(None) };
        }
        DECODER.with(|cell| {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(GroupDecoder::new().map_err(|e| FetchError::Other(format!("zstd context: {e}")))?);
            }
            let decoder = slot.as_mut().expect("decoder");
            let mut out = Vec::with_capacity((last - first + 1) as usize);
            for g in (first..=last).filter(|&g| wanted(g)) {
                let sr = self.map.stored_range(g);
                let piece = &stored[(sr.start - base) as usize..(sr.end - base) as usize];
                let ur = self.map.group_range(g);
                // decode() fills every byte (it checks the decoded length), so a recycled
                // buffer's old contents never survive into the cache.
                let mut buf = AlignedBuf::recycled((ur.end - ur.start) as usize);
                decoder.decode(self.record.compression, g, &self.record.groups[g as usize], piece, &mut buf).map_err(|source| {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    FetchError::Verify { blob: self.id.clone(), source }
                })?;
                self.stats.groups.fetch_add(1, Ordering::Relaxed);
                out.push((g, buf));
            }
            Ok(out)
        })
    }

    /// nydus blobs: the wanted pages of `first..=last`, each chunk decoded (and checked) once;
    /// holes between chunks are zeros.
    fn decode_chunks(
        &self,
        compressor: Compressor,
        first: u32,
        last: u32,
        wanted: &dyn Fn(u32) -> bool,
        base: u64,
        stored: &[u8],
    ) -> Result<Vec<(u32, AlignedBuf)>, FetchError> {
        let mut out = Vec::new();
        let mut current: Option<(u64, Vec<u8>)> = None; // (chunk start, decoded bytes)
        let mut zran: Option<ZranDecoder> = None; // made on the first zran chunk
        for g in (first..=last).filter(|&g| wanted(g)) {
            let ur = self.map.group_range(g);
            let mut buf = AlignedBuf::zeroed((ur.end - ur.start) as usize);
            if let Some(c) = self.map.chunk_of(g) {
                if current.as_ref().map(|(s, _)| *s) != Some(c.uncompressed.start) {
                    let fail = |msg: String| {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        FetchError::Verify {
                            blob: self.id.clone(),
                            source: BlobError::Decompress { group: g, msg: format!("chunk at {}: {msg}", c.uncompressed.start) },
                        }
                    };
                    let mut plain = vec![0u8; (c.uncompressed.end - c.uncompressed.start) as usize];
                    if let (Some(table), Some(_)) = (&self.zran, c.zran) {
                        let dec = match &mut zran {
                            Some(d) => d,
                            None => zran.insert(ZranDecoder::new().map_err(&fail)?),
                        };
                        dec.decode(table, c, base, stored, &mut plain).map_err(&fail)?;
                    } else {
                        let piece = c
                            .stored
                            .start
                            .checked_sub(base)
                            .map(|s| s as usize..(c.stored.end - base) as usize)
                            .filter(|r| r.end <= stored.len())
                            .ok_or_else(|| fail("stored bytes outside the fetched span".into()))?;
                        decode_chunk(compressor, c, &stored[piece], &mut plain).map_err(&fail)?;
                    }
                    self.stats.groups.fetch_add(1, Ordering::Relaxed);
                    current = Some((c.uncompressed.start, plain));
                }
                let (start, plain) = current.as_ref().expect("decoded chunk");
                let from = (ur.start - start) as usize;
                let to = ((ur.end - start) as usize).min(plain.len());
                buf[..to - from].copy_from_slice(&plain[from..to]);
            }
            out.push((g, buf));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fill::tests_support::{address_space, store};
    use crate::core::source::LocalDirSource;

    /// The stored-bytes buffer is reused per thread: a short span read after a long one must
    /// decode from its own bytes only, never from the longer span's leftovers.
    #[test]
    fn spans_on_one_thread_decode_from_their_own_stored_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = address_space(256); // 16 groups of 64 KiB, text and noise alternating
        let rec = store(dir.path(), &data);
        let blob = Blob::new(rec, Arc::new(LocalDirSource::new(dir.path()))).unwrap();
        let check = |first: u32, last: u32| {
            let got = blob.fetch_span_blocking(first, last, &|_| true).expect("a local source reads blocking").unwrap();
            assert_eq!(got.len() as u32, last - first + 1);
            for (g, buf) in got {
                let r = blob.map.group_range(g);
                assert!(buf[..] == data[r.start as usize..r.end as usize], "group {g} after span {first}..={last}");
            }
        };
        check(0, 15);
        check(5, 5);
        check(2, 3);
        check(14, 15);
    }
}
