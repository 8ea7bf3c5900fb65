//! The bootstrap layer: a gzip'd tar holding one regular file, `image/image.boot`.
//!
//! Writing is deterministic (mtime 0, owner 0:0, no gzip name or time), so converting the same
//! source twice gives the same layer digest and a re-run push finds it already present.
//! Reading takes only that one entry and treats the tar as hostile: other entries are skipped,
//! a second `image/image.boot`, a non-regular one or one over [`MAX_BOOTSTRAP`] is an error,
//! and the whole decompressed stream is bounded (a gzip bomb of skipped entries ends early).

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::manifest::BOOTSTRAP_TAR_PATH;
use crate::core::images::MAX_BOOTSTRAP;

/// A writer that hashes and counts what passes through.
pub struct HashWriter<W> {
    pub inner: W,
    pub hasher: Sha256,
    pub count: u64,
}

impl<W: Write> HashWriter<W> {
    pub fn new(inner: W) -> HashWriter<W> {
        HashWriter { inner, hasher: Sha256::new(), count: 0 }
    }

    /// `sha256:<hex>` of everything written so far.
    pub fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The bootstrap layer as written.
#[derive(Debug, Clone)]
pub struct BootstrapLayer {
    /// `sha256:` of the gzip'd tar (the layer digest).
    pub digest: String,
    pub size: u64,
    /// `sha256:` of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
}

/// Writes the bootstrap layer for `boot` to `out` (created or truncated, fsynced).
pub fn write_bootstrap_layer(boot: &Path, out: &Path) -> Result<BootstrapLayer> {
    let mut src = File::open(boot).with_context(|| format!("opening {}", boot.display()))?;
    let len = src.metadata()?.len();
    if len > MAX_BOOTSTRAP {
        bail!("bootstrap {} is {len} bytes, over the {MAX_BOOTSTRAP} limit", boot.display());
    }
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let gz_out = HashWriter::new(io::BufWriter::new(file));
    let gz = flate2::GzBuilder::new().mtime(0).write(gz_out, flate2::Compression::default());
    let mut tar_out = HashWriter::new(gz);
    {
        let mut b = tar::Builder::new(&mut tar_out);
        let mut h = tar::Header::new_ustar();
        h.set_path(BOOTSTRAP_TAR_PATH)?;
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(len);
        h.set_cksum();
        b.append(&h, (&mut src).take(len)).context("writing the bootstrap layer")?;
        b.finish().context("writing the bootstrap layer")?;
    }
    let diff_id = tar_out.digest();
    let gz_out = tar_out.inner.finish().context("writing the bootstrap layer")?;
    let digest = gz_out.digest();
    let size = gz_out.count;
    let file = gz_out.inner.into_inner().map_err(|e| e.into_error()).context("writing the bootstrap layer")?;
    file.sync_all().context("syncing the bootstrap layer")?;
    Ok(BootstrapLayer { digest, size, diff_id })
}

/// Stops reading past `left` bytes with an error (bounds the work spent on a hostile stream).
struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bootstrap layer decompresses to more than the limit"));
        }
        let cap = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = self.inner.read(&mut buf[..cap])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Slack on top of [`MAX_BOOTSTRAP`] for headers and entries we skip.
const EXTRACT_SLACK: u64 = 64 << 20;

/// Copies `image/image.boot` out of a bootstrap layer (gzip'd tar; a plain tar is accepted
/// too) into `out`; returns its size. The tar is hostile input: see the module comment.
pub fn extract_bootstrap<R: Read, W: Write>(layer: R, out: &mut W) -> Result<u64> {
    let mut br = BufReader::with_capacity(1 << 16, layer);
    let head = io::BufRead::fill_buf(&mut br).context("reading the bootstrap layer")?;
    let stream: Box<dyn Read + '_> = if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else {
        Box::new(br)
    };
    let bounded = Bounded { inner: stream, left: MAX_BOOTSTRAP + EXTRACT_SLACK };
    let mut archive = tar::Archive::new(bounded);
    let mut found: Option<u64> = None;
    for (i, entry) in archive.entries().context("reading the bootstrap layer tar")?.enumerate() {
        let mut entry = entry.with_context(|| format!("bootstrap layer tar entry #{}: malformed", i + 1))?;
        let path = entry.path_bytes().into_owned();
        let p = path.strip_prefix(b"./").unwrap_or(&path);
        if p != BOOTSTRAP_TAR_PATH.as_bytes() {
            continue;
        }
        if found.is_some() {
            bail!("bootstrap layer holds {BOOTSTRAP_TAR_PATH} twice");
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            bail!("{BOOTSTRAP_TAR_PATH} in the bootstrap layer is not a regular file ({:?})", entry.header().entry_type());
        }
        let size = entry.size();
        if size > MAX_BOOTSTRAP {
            bail!("{BOOTSTRAP_TAR_PATH} is {size} bytes, over the {MAX_BOOTSTRAP} limit");
        }
        let n = io::copy(&mut (&mut entry).take(size), out).context("extracting the bootstrap")?;
        if n != size {
            bail!("{BOOTSTRAP_TAR_PATH} is cut short: {n} of {size} bytes");
        }
        found = Some(n);
    }
    found.with_context(|| format!("the bootstrap layer holds no {BOOTSTRAP_TAR_PATH}"))
}

/// [`extract_bootstrap`] from file `layer` to file `dest` (written through a temporary file in
/// the same directory, fsynced, then renamed: `dest` is never half-written).
pub fn extract_bootstrap_file(layer: &Path, dest: &Path) -> Result<u64> {
    let src = File::open(layer).with_context(|| format!("opening {}", layer.display()))?;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-boot-").tempfile_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    let n = {
        let mut w = io::BufWriter::new(tmp.as_file_mut());
        let n = extract_bootstrap(src, &mut w).with_context(|| format!("bootstrap layer {}", layer.display()))?;
        w.flush()?;
        n
    };
    tmp.as_file().sync_all()?;
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(dest).with_context(|| format!("renaming to {}", dest.display()))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(if *kind == tar::EntryType::Regular { data.len() as u64 } else { 0 });
            // set_path refuses `..`; a hostile tar has it anyway: write the name raw.
            let name = &mut h.as_gnu_mut().unwrap().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            b.append(&h, &data[..if *kind == tar::EntryType::Regular { data.len() } else { 0 }]).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn round_trip_is_deterministic() {
        let dir = tempfile::tempdir().unwrap();
        let boot = dir.path().join("image.boot");
        let data: Vec<u8> = (0..20000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&boot, &data).unwrap();
        let a = write_bootstrap_layer(&boot, &dir.path().join("a.tgz")).unwrap();
        let b = write_bootstrap_layer(&boot, &dir.path().join("b.tgz")).unwrap();
        assert_eq!((a.digest.clone(), a.diff_id.clone(), a.size), (b.digest, b.diff_id, b.size));
        let bytes = std::fs::read(dir.path().join("a.tgz")).unwrap();
        assert_eq!(a.digest, format!("sha256:{}", hex::encode(Sha256::digest(&bytes))));
        assert_eq!(a.size, bytes.len() as u64);
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..]).read_to_end(&mut plain).unwrap();
        assert_eq!(a.diff_id, format!("sha256:{}", hex::encode(Sha256::digest(&plain))));
        let mut out = Vec::new();
        assert_eq!(extract_bootstrap(&bytes[..], &mut out).unwrap(), data.len() as u64);
        assert_eq!(out, data);
        let dest = dir.path().join("sub.boot");
        extract_bootstrap_file(&dir.path().join("a.tgz"), &dest).unwrap();
        assert_eq!(std::fs::read(dest).unwrap(), data);
    }

    #[test]
    fn hostile_bootstrap_layers() {
        use tar::EntryType::*;
        // Other entries (even `../` ones) are skipped, never written anywhere.
        let t = tar_gz(&[("../evil", Regular, b"x"), ("image/image.boot", Regular, b"boot"), ("/etc/x", Regular, b"y")]);
        let mut out = Vec::new();
        assert_eq!(extract_bootstrap(&t[..], &mut out).unwrap(), 4);
        assert_eq!(out, b"boot");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (tar_gz(&[("image/other", Regular, b"x")]), "holds no"),
            (tar_gz(&[("image/image.boot", Regular, b"a"), ("image/image.boot", Regular, b"b")]), "twice"),
            (tar_gz(&[("image/image.boot", Symlink, b"")]), "not a regular file"),
            (b"\x1f\x8b garbage".to_vec(), ""),
            (vec![0u8; 10], ""),
        ];
        for (bytes, want) in cases {
            let e = format!("{:#}", extract_bootstrap(&bytes[..], &mut Vec::new()).unwrap_err());
            assert!(e.contains(want), "{e}");
        }
        // A gzip bomb of skipped data ends at the bound, not at its end.
        let mut b = Bounded { inner: io::repeat(0), left: 1000 };
        let mut sink = Vec::new();
        assert!(io::copy(&mut b, &mut sink).is_err());
        assert_eq!(sink.len(), 1000);
    }
}
