//! Streams chunk data into one blob file: the address space is cut into groups, groups are
//! compressed on worker threads, and a writer thread stores them in order while hashing.
//!
//! ```text
//!  builder thread          worker threads (N)            writer thread
//!  append(chunk) ──group──▶ GroupEncoder::encode ──────▶ reorder by sequence number,
//!  (fills group buffers)     (zstd or raw + CRC32)        write, sha256, group table,
//!        ▲                                                 return buffers to the pool
//!        └──────────────── buffer pool ◀──────────────────────────┘
//! ```
//!
//! Memory is bounded by the pool: a fixed number of (group, stored) buffer pairs circulate,
//! so a multi-GB layer never holds more than a few groups at once. The blob goes to a
//! temporary file inside the blob directory (removed on drop) and is renamed to its sha256
//! name by [`BlobWriter::finish`].

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};
use erofs::blob::{BlobRecord, Compression, GroupEncoder, GroupEntry};
use sha2::{Digest, Sha256};

/// A group buffer and the buffer its stored form is encoded into; they travel together.
type BufPair = (Vec<u8>, Vec<u8>);

struct Encoded {
    seq: u64,
    result: std::io::Result<GroupEntry>,
    bufs: BufPair,
}

struct WriterOutput {
    groups: Vec<GroupEntry>,
    stored_size: u64,
    sha256: [u8; 32],
}

pub struct BlobWriter {
    blob_dir: PathBuf,
    compression: Compression,
    group_size_log2: u8,
    group_size: usize,
    /// The group being filled, `None` until the first byte of it arrives.
    cur: Option<BufPair>,
    /// Bytes of address space appended so far (always a multiple of 4096 between appends).
    len: u64,
    next_seq: u64,
    jobs: Option<SyncSender<(u64, BufPair)>>,
    pool: Receiver<BufPair>,
    workers: Vec<JoinHandle<()>>,
    writer: Option<JoinHandle<Result<WriterOutput>>>,
    tmp: Option<tempfile::TempPath>,
}

impl BlobWriter {
    /// Starts a blob in `blob_dir` (which must exist). `threads` compression workers.
    pub fn new(blob_dir: &Path, compression: Compression, level: i32, group_size_log2: u8, threads: usize) -> Result<BlobWriter> {
        let group_size = 1usize << group_size_log2;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-blob-")
            .tempfile_in(blob_dir)
            .with_context(|| format!("creating a temporary blob in {}", blob_dir.display()))?;
        let (file, tmp) = tmp.into_parts();
        let threads = threads.max(1);
        // Enough buffers to keep every worker busy while the writer drains, capped so big
        // groups do not blow the memory budget (~24 MiB of group data at most).
        let pool_size = (3 * threads + 2).min((24usize << 20) / group_size).max(2);
        let (pool_tx, pool) = channel::<BufPair>();
        for _ in 0..pool_size {
            pool_tx.send((Vec::with_capacity(group_size), Vec::with_capacity(group_size))).unwrap();
        }
        let (jobs_tx, jobs_rx) = sync_channel::<(u64, BufPair)>(pool_size);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done_rx) = channel::<Encoded>();
        let mut workers = Vec::new();
        for i in 0..threads {
            let jobs_rx = Arc::clone(&jobs_rx);
            let done_tx = done_tx.clone();
            let mut enc = GroupEncoder::new(compression, level).context("creating a zstd context")?;
            let h = std::thread::Builder::new()
                .name(format!("blob-enc-{i}"))
                .spawn(move || loop {
                    let job = jobs_rx.lock().unwrap().recv();
                    let Ok((seq, (data, mut stored))) = job else { return };
                    let result = enc.encode(&data, &mut stored);
                    if done_tx.send(Encoded { seq, result, bufs: (data, stored) }).is_err() {
                        return;
                    }
                })
                .context("spawning a compression thread")?;
            workers.push(h);
        }
        drop(done_tx);
        let writer = std::thread::Builder::new()
            .name("blob-write".into())
            .spawn(move || write_loop(file, done_rx, pool_tx))
            .context("spawning the blob writer thread")?;
        Ok(BlobWriter {
            blob_dir: blob_dir.to_path_buf(),
            compression,
            group_size_log2,
            group_size,
            cur: None,
            len: 0,
            next_seq: 0,
            jobs: Some(jobs_tx),
            pool,
            workers,
            writer: Some(writer),
            tmp: Some(tmp),
        })
    }

    /// Address-space bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends one chunk at the current (4 KiB-aligned) end of the address space, zero-padded
    /// to a 4 KiB multiple, and returns its offset.
    pub fn append(&mut self, data: &[u8]) -> Result<u64> {
        let offset = self.len;
        self.push(data)?;
        let pad = (4096 - data.len() % 4096) % 4096;
        if pad > 0 {
            const ZEROS: [u8; 4096] = [0; 4096];
            self.push(&ZEROS[..pad])?;
        }
        Ok(offset)
    }

    fn push(&mut self, mut data: &[u8]) -> Result<()> {
        while !data.is_empty() {
            if self.cur.is_none() {
                let mut bufs = self.pool.recv().map_err(|_| self.pipeline_error())?;
                bufs.0.clear();
                self.cur = Some(bufs);
            }
            let group = &mut self.cur.as_mut().unwrap().0;
            let take = (self.group_size - group.len()).min(data.len());
            group.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.len += take as u64;
            if group.len() == self.group_size {
                self.send_current()?;
            }
        }
        Ok(())
    }

    fn send_current(&mut self) -> Result<()> {
        if let Some(bufs) = self.cur.take() {
            let seq = self.next_seq;
            self.next_seq += 1;
            let jobs = self.jobs.as_ref().expect("blob writer already finished");
            if jobs.send((seq, bufs)).is_err() {
                return Err(self.pipeline_error());
            }
        }
        Ok(())
    }

    /// The pipeline stopped early: the writer thread's own error says why.
    fn pipeline_error(&mut self) -> anyhow::Error {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        match self.writer.take().map(|w| w.join()) {
            Some(Ok(Err(e))) => e,
            Some(Err(_)) => anyhow!("blob writer thread panicked"),
            _ => anyhow!("blob pipeline stopped unexpectedly"),
        }
    }

    /// Flushes the last group, waits for the pipeline, and renames the blob to
    /// `blob_dir/<sha256>`. Returns `None` (and leaves no file) if nothing was appended.
    pub fn finish(mut self) -> Result<Option<(BlobRecord, PathBuf)>> {
        self.send_current()?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            w.join().map_err(|_| anyhow!("compression thread panicked"))?;
        }
        let out = self
            .writer
            .take()
            .unwrap()
            .join()
            .map_err(|_| anyhow!("blob writer thread panicked"))??;
        let tmp = self.tmp.take().unwrap();
        if self.len == 0 {
            drop(tmp);
            return Ok(None);
        }
        debug_assert_eq!(out.groups.len() as u64, self.len.div_ceil(self.group_size as u64));
        let rec = BlobRecord {
            id: out.sha256,
            stored_size: out.stored_size,
            uncompressed_size: self.len,
            compression: self.compression,
            group_size_log2: self.group_size_log2,
            groups: out.groups,
        };
        let path = self.blob_dir.join(rec.id_hex());
        // Durable before it gets its final name: a crash must not leave a sha256-named blob
        // whose bytes never reached the disk.
        std::fs::File::open(&*tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        // tempfile creates 0600; blobs are public content, readable by the daemon's user.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .with_context(|| format!("chmod {}", tmp.display()))?;
        tmp.persist(&path).with_context(|| format!("renaming the finished blob to {}", path.display()))?;
        Ok(Some((rec, path)))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // On an error path: stop the threads; the TempPath removes the partial file.
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

fn write_loop(file: File, done: Receiver<Encoded>, pool: Sender<BufPair>) -> Result<WriterOutput> {
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut sha = Sha256::new();
    let mut groups = Vec::new();
    let mut stored_size = 0u64;
    let mut pending: BTreeMap<u64, Encoded> = BTreeMap::new();
    let mut next = 0u64;
    for enc in done {
        pending.insert(enc.seq, enc);
        while let Some(enc) = pending.remove(&next) {
            let entry = enc.result.context("compressing a group")?;
            let stored = &enc.bufs.1;
            out.write_all(stored).context("writing the blob")?;
            sha.update(stored);
            stored_size += stored.len() as u64;
            groups.push(entry);
            next += 1;
            // The builder may already be gone (error path); then the buffer is just freed.
            let _ = pool.send(enc.bufs);
        }
    }
    if !pending.is_empty() {
        return Err(anyhow!("blob pipeline lost group {next}"));
    }
    out.flush().context("writing the blob")?;
    Ok(WriterOutput { groups, stored_size, sha256: sha.finalize().into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use erofs::blob::{GroupDecoder, GroupMap};

    fn data(n: usize, seed: u8) -> Vec<u8> {
        // Half text, half counter noise: some groups compress, some do not.
        (0..n).map(|i| if (i / 5000) % 2 == 0 { b"abcdefgh"[i % 8] } else { (i as u8).wrapping_mul(seed) ^ (i >> 8) as u8 }).collect()
    }

    #[test]
    fn pipeline_output_decodes_to_the_padded_input() {
        for (threads, comp, gs_log2) in [(1, Compression::Zstd, 12), (4, Compression::Zstd, 14), (2, Compression::None, 16)] {
            let dir = tempfile::tempdir().unwrap();
            let mut w = BlobWriter::new(dir.path(), comp, 3, gs_log2, threads).unwrap();
            let mut expect = Vec::new();
            for (k, len) in [1usize, 4096, 5000, 70000, 123457, 4095, 300000].into_iter().enumerate() {
                let d = data(len, k as u8 + 1);
                let off = w.append(&d).unwrap();
                assert_eq!(off, expect.len() as u64);
                expect.extend_from_slice(&d);
                expect.resize(expect.len().div_ceil(4096) * 4096, 0);
            }
            let (rec, path) = w.finish().unwrap().unwrap();
            assert_eq!(rec.uncompressed_size, expect.len() as u64);
            let stored = std::fs::read(&path).unwrap();
            assert_eq!(stored.len() as u64, rec.stored_size);
            let map = GroupMap::new(&rec).unwrap();
            let mut dec = GroupDecoder::new().unwrap();
            let mut got = vec![0u8; expect.len()];
            for g in 0..map.group_count() {
                let s = map.stored_range(g);
                let u = map.group_range(g);
                dec.decode(rec.compression, g, &rec.groups[g as usize], &stored[s.start as usize..s.end as usize], &mut got[u.start as usize..u.end as usize])
                    .unwrap();
            }
            assert_eq!(got, expect, "threads {threads} {comp:?}");
            // Only the finished blob is left.
            let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
            assert_eq!(names, vec![std::ffi::OsString::from(rec.id_hex())]);
        }
    }

    #[test]
    fn empty_or_abandoned_blob_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = BlobWriter::new(dir.path(), Compression::Zstd, 3, 18, 2).unwrap();
        assert!(w.finish().unwrap().is_none());
        let mut w = BlobWriter::new(dir.path(), Compression::Zstd, 3, 12, 2).unwrap();
        w.append(&data(100_000, 3)).unwrap();
        drop(w); // an error path: the temporary file goes away
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
