//! An OCI layer tar (plain, gzip or zstd) as a layer.
//!
//! Entries are applied in archive order to a [`Layer`]; file contents stream straight from
//! the archive into the [`ChunkStore`], so nothing but metadata is held in memory. Whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`) are recorded as such; the caller decides whether they stay
//! overlayfs-style markers (single layer) or are applied (merge).

use std::io::{BufRead, BufReader, Read};

use anyhow::{anyhow, bail, Context, Result};
use erofs::tree::{Kind, Meta, Node, Xattr, S_IFMT};
use tar::EntryType;

use super::chunks::ChunkStore;
use super::layer::Layer;
use super::names::{check_symlink_target, show, split_path};
use super::{Limits, PendingLink};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Opens a possibly compressed tar stream, detecting gzip and zstd by their magic bytes.
pub fn decompress<'a>(input: Box<dyn Read + 'a>) -> Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(1 << 16, input);
    let head = br.fill_buf().context("reading the layer")?;
    let out: Box<dyn Read + 'a> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br).context("starting zstd decoder")?)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        bail!("xz-compressed layers are not supported (use gzip, zstd or plain tar)");
    } else if head.starts_with(b"BZh") {
        bail!("bzip2-compressed layers are not supported (use gzip, zstd or plain tar)");
    } else {
        Box::new(br)
    };
    Ok(out)
}

/// Remembers whether the last 512 bytes the tar parser consumed were zeros: the tar crate
/// treats a plain EOF at a header boundary as the end of the archive, but a complete archive
/// ends with zero blocks, so a missing one means the layer was cut short.
struct TailCheck<R> {
    inner: R,
    tail: [u8; 512],
    total: u64,
}

impl<R: Read> Read for TailCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let got = &buf[..n];
        if n >= 512 {
            self.tail.copy_from_slice(&got[n - 512..]);
        } else if n > 0 {
            self.tail.copy_within(n.., 0);
            self.tail[512 - n..].copy_from_slice(got);
        }
        self.total += n as u64;
        Ok(n)
    }
}

/// Reads one layer. `lower_exists`: links may refer to lower layers (merge of a later layer).
pub fn read_tar_layer(input: Box<dyn Read + '_>, store: &mut ChunkStore, limits: &mut Limits, lower_exists: bool) -> Result<Layer> {
    let stream = decompress(input)?;
    let mut archive = tar::Archive::new(TailCheck { inner: stream, tail: [1; 512], total: 0 });
    let mut layer = Layer::new();
    let entries = archive.entries().context("reading the tar archive")?;
    let mut index = 0u64;
    for entry in entries {
        index += 1;
        // The tar crate's messages may quote raw header bytes: show them escaped.
        let mut entry = entry.map_err(|e| {
            let what = if index == 1 { "not a tar archive, or a corrupt first header" } else { "truncated or malformed archive" };
            anyhow!("tar entry #{index}: {what}: {:?}", e.to_string())
        })?;
        let raw_path = entry.path_bytes().into_owned();
        let label = format!("tar entry #{index} {:?}", String::from_utf8_lossy(&raw_path));
        limits.entry().with_context(|| label.clone())?;
        add_entry(&mut layer, &mut entry, &raw_path, store, limits, lower_exists).with_context(|| label.clone())?;
    }
    let mut tc = archive.into_inner();
    if tc.total == 0 {
        bail!("empty layer: no tar data at all");
    }
    if tc.tail.iter().any(|&b| b != 0) {
        bail!("truncated tar: the archive ends without its end-of-archive zero blocks");
    }
    // Read what follows the end marker (record padding), so a compressed stream reaches its
    // end and verifies its own checksum (gzip CRC32/ISIZE, zstd frame end). Bounded: a stream
    // that goes on and on after the archive is refused.
    const MAX_TRAILER: u64 = 16 << 20;
    let mut sink = vec![0u8; 1 << 16];
    let mut extra = 0u64;
    loop {
        let n = tc.inner.read(&mut sink).context("reading after the end of the archive (corrupt compressed stream?)")?;
        if n == 0 {
            break;
        }
        extra += n as u64;
        if extra > MAX_TRAILER {
            bail!("more than {MAX_TRAILER} bytes of data after the end of the tar archive");
        }
    }
    Ok(layer)
}

fn add_entry<R: Read>(
    layer: &mut Layer,
    entry: &mut tar::Entry<R>,
    raw_path: &[u8],
    store: &mut ChunkStore,
    limits: &mut Limits,
    lower_exists: bool,
) -> Result<()> {
    let etype = entry.header().entry_type();
    if matches!(etype, EntryType::XGlobalHeader) {
        return Ok(());
    }
    let path = split_path(raw_path)?;
    let (meta, xattrs) = read_meta(entry)?;

    let Some((name, parent_path)) = path.split_last() else {
        // The root itself (`./`).
        if etype != EntryType::Directory {
            bail!("the root must be a directory");
        }
        layer.set_root(Meta { mode: (meta.mode & !S_IFMT) | erofs::tree::S_IFDIR, ..meta }, xattrs);
        return Ok(());
    };
    let parent = layer.dir_at(parent_path)?;

    if name == OPAQUE_MARKER {
        layer.set_opaque(parent);
        return Ok(());
    }
    if let Some(victim) = name.strip_prefix(WHITEOUT_PREFIX) {
        super::names::check_name(victim).context("whiteout of an invalid name")?;
        layer.whiteout(parent, victim, meta);
        return Ok(());
    }

    let perm = meta.mode & 0o7777;
    let kind = match etype {
        EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
            let size = entry.size();
            limits.data(size)?;
            let data = store.store(entry, size, &"file data")?;
            Kind::File { size, data }
        }
        EntryType::Directory => Kind::Dir { children: Default::default() },
        EntryType::Symlink => {
            let target = entry.link_name_bytes().ok_or_else(|| anyhow!("symlink without a target"))?.into_owned();
            check_symlink_target(parent_path.len(), &target)?;
            Kind::Symlink { target }
        }
        EntryType::Link => {
            let raw = entry.link_name_bytes().ok_or_else(|| anyhow!("hard link without a target"))?.into_owned();
            let target = split_path(&raw).context("hard link target")?;
            return add_hard_link(layer, parent_path, parent, name, target, lower_exists);
        }
        EntryType::Char | EntryType::Block => {
            let major = entry.header().device_major().context("device major")?.unwrap_or(0);
            let minor = entry.header().device_minor().context("device minor")?.unwrap_or(0);
            if etype == EntryType::Char {
                Kind::CharDev { major, minor }
            } else {
                Kind::BlockDev { major, minor }
            }
        }
        EntryType::Fifo => Kind::Fifo,
        other => bail!("unsupported tar entry type {:?}", other.as_byte() as char),
    };
    let meta = Meta { mode: kind.type_bits() | perm, ..meta };
    layer.put(parent, name, Node { meta, xattrs, kind });
    Ok(())
}

fn add_hard_link(
    layer: &mut Layer,
    parent_path: &[Vec<u8>],
    parent: erofs::tree::NodeId,
    name: &[u8],
    target: Vec<Vec<u8>>,
    lower_exists: bool,
) -> Result<()> {
    if target.is_empty() {
        bail!("hard link to the root directory");
    }
    match layer.lookup(&target) {
        Some(id) if layer.whiteouts.contains(&id) => bail!("hard link target {} is a whiteout", show(&target)),
        Some(id) => {
            if matches!(layer.tree.node(id).kind, Kind::Dir { .. }) {
                bail!("hard link target {} is a directory", show(&target));
            }
            layer.link(parent, name, id);
        }
        None if lower_exists => {
            layer.pending_links.push(PendingLink { parent: parent_path.to_vec(), name: name.to_vec(), target });
        }
        None => bail!("hard link target {} is not in the layer (missing, or outside the tree)", show(&target)),
    }
    Ok(())
}

/// Mode, owner, mtime (with PAX nanoseconds) and `SCHILY.xattr.*` xattrs of an entry.
fn read_meta<R: Read>(entry: &mut tar::Entry<R>) -> Result<(Meta, Vec<Xattr>)> {
    let h = entry.header();
    let mode = h.mode().context("bad mode field")?;
    // The tar crate already applied PAX uid/gid to the header.
    let uid = u32::try_from(h.uid().context("bad uid field")?).context("uid larger than 32 bits")?;
    let gid = u32::try_from(h.gid().context("bad gid field")?).context("gid larger than 32 bits")?;
    let mut mtime = i64::try_from(h.mtime().context("bad mtime field")?).unwrap_or(i64::MAX);
    let mut mtime_nsec = 0u32;
    let mut xattrs = Vec::new();
    if let Some(pax) = entry.pax_extensions().context("bad PAX header")? {
        for ext in pax {
            let ext = ext.context("bad PAX record")?;
            let key = ext.key_bytes();
            if key == b"mtime" {
                let v = ext.value().context("PAX mtime is not text")?;
                (mtime, mtime_nsec) = parse_pax_time(v).with_context(|| format!("bad PAX mtime {v:?}"))?;
            } else if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if let Err(e) = super::check_xattr_name(name) {
                    tracing::warn!("skipping xattr: {e:#}");
                    continue;
                }
                let value = ext.value_bytes();
                super::check_xattr_value(name, value)?;
                xattrs.retain(|x: &Xattr| x.name != name);
                xattrs.push(Xattr { name: name.to_vec(), value: value.to_vec() });
            }
        }
    }
    xattrs.sort();
    Ok((Meta { mode, uid, gid, mtime, mtime_nsec }, xattrs))
}

/// `SECONDS[.FRACTION]`, possibly negative, as PAX writes times.
fn parse_pax_time(v: &str) -> Option<(i64, u32)> {
    let (neg, v) = match v.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, v),
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut nsec = 0u32;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nsec += (b - b'0') as u32 * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.5 s = -2 s + 0.5 s.
        if nsec > 0 {
            Some((-secs - 1, 1_000_000_000 - nsec))
        } else {
            Some((-secs, 0))
        }
    } else {
        Some((secs, nsec))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pax_times() {
        assert_eq!(super::parse_pax_time("1700000000.123456789"), Some((1700000000, 123456789)));
        assert_eq!(super::parse_pax_time("12.5"), Some((12, 500000000)));
        assert_eq!(super::parse_pax_time("-1.5"), Some((-2, 500000000)));
        assert_eq!(super::parse_pax_time("7"), Some((7, 0)));
        assert_eq!(super::parse_pax_time("x"), None);
    }
}
