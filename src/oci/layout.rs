//! An OCI image layout directory (`oci-layout`, `index.json`, `blobs/sha256/<hex>`), read as a
//! conversion source and written as a target.
//!
//! Digests are validated before they become paths, and every blob read is hashed against its
//! digest (and size) before use. Writes go through a temporary file in the same directory and
//! a rename, so a crash leaves no half-written blob under its final name; `index.json` is
//! replaced the same way.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::manifest::{digest_hex, Descriptor, Index, ANN_REF_NAME, OCI_INDEX};

const LAYOUT_FILE: &str = "oci-layout";
const LAYOUT_VERSION: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";
/// `index.json` larger than this is refused.
const MAX_INDEX: u64 = 4 << 20;

pub struct OciLayout {
    pub dir: PathBuf,
}

impl OciLayout {
    /// Opens an existing layout (it must have `oci-layout` and `index.json`).
    pub fn open(dir: &Path) -> Result<OciLayout> {
        let marker = dir.join(LAYOUT_FILE);
        let f = File::open(&marker).with_context(|| format!("{} is not an OCI layout (no {LAYOUT_FILE})", dir.display()))?;
        let mut v = Vec::new();
        f.take(4096).read_to_end(&mut v).with_context(|| format!("reading {}", marker.display()))?;
        let v: serde_json::Value = serde_json::from_slice(&v).with_context(|| format!("{}: not JSON", marker.display()))?;
        if v.get("imageLayoutVersion").and_then(|x| x.as_str()) != Some("1.0.0") {
            bail!("{}: unsupported imageLayoutVersion {}", marker.display(), v["imageLayoutVersion"]);
        }
        Ok(OciLayout { dir: dir.to_path_buf() })
    }

    /// Opens the layout at `dir`, creating an empty one if the directory is missing or empty.
    pub fn create(dir: &Path) -> Result<OciLayout> {
        if dir.join(LAYOUT_FILE).exists() {
            return OciLayout::open(dir);
        }
        if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
            bail!("{} exists, is not empty and is not an OCI layout", dir.display());
        }
        std::fs::create_dir_all(dir.join("blobs/sha256")).with_context(|| format!("creating {}", dir.display()))?;
        let l = OciLayout { dir: dir.to_path_buf() };
        l.write_atomic(&dir.join(LAYOUT_FILE), LAYOUT_VERSION.as_bytes())?;
        let empty = Index { schema_version: 2, media_type: Some(OCI_INDEX.into()), manifests: Vec::new(), annotations: None };
        l.write_atomic(&dir.join("index.json"), &serde_json::to_vec(&empty)?)?;
        Ok(l)
    }

    pub fn index(&self) -> Result<Index> {
        let p = self.dir.join("index.json");
        let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let mut bytes = Vec::new();
        f.take(MAX_INDEX + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_INDEX {
            bail!("{} is larger than {MAX_INDEX} bytes", p.display());
        }
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
    }

    /// The `index.json` entry tagged `tag` (`org.opencontainers.image.ref.name`).
    pub fn resolve(&self, tag: &str) -> Result<Descriptor> {
        let idx = self.index()?;
        let tagged: Vec<&Descriptor> = idx.manifests.iter().filter(|d| d.annotation(ANN_REF_NAME) == Some(tag)).collect();
        match tagged.as_slice() {
            [d] => Ok((*d).clone()),
            [] => {
                let tags: Vec<&str> = idx.manifests.iter().filter_map(|d| d.annotation(ANN_REF_NAME)).collect();
                bail!("{}: no image tagged {tag:?} (tags: {})", self.dir.display(), if tags.is_empty() { "none".into() } else { tags.join(", ") })
            }
            _ => bail!("{}: several images tagged {tag:?}", self.dir.display()),
        }
    }

    /// Where the blob with `digest` lives (the digest is validated first).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        Ok(self.dir.join("blobs/sha256").join(digest_hex(digest)?))
    }

    pub fn has_blob(&self, d: &Descriptor) -> Result<bool> {
        let p = self.blob_path(&d.digest)?;
        Ok(std::fs::metadata(&p).map(|m| m.is_file() && m.len() == d.size).unwrap_or(false))
    }

    /// Hashes the blob `d` names in place; returns its path when its size and sha256 match.
    pub fn verified_blob(&self, d: &Descriptor) -> Result<PathBuf> {
        let p = self.blob_path(&d.digest)?;
        let f = File::open(&p).with_context(|| format!("blob {} is missing from {}", d.digest, self.dir.display()))?;
        if !f.metadata()?.is_file() {
            bail!("blob {} in {} is not a regular file", d.digest, self.dir.display());
        }
        // At most one byte more than announced: a blob that is a link to an endless file ends.
        let (size, digest) = hash_reader(f.take(d.size.saturating_add(1))).with_context(|| format!("reading {}", p.display()))?;
        if size != d.size {
            bail!("blob {} in {} has {size} bytes, the descriptor says {}", d.digest, self.dir.display(), d.size);
        }
        if digest != d.digest {
            bail!("blob {} in {} has content {digest}: its content does not match its digest", d.digest, self.dir.display());
        }
        Ok(p)
    }

    /// Reads a small blob (manifest, config) after checking size limit, size and digest.
    pub fn read_blob(&self, d: &Descriptor, limit: u64) -> Result<Vec<u8>> {
        if d.size > limit {
            bail!("blob {} is {} bytes, over the {limit} limit for a {}", d.digest, d.size, d.media_type);
        }
        let p = self.blob_path(&d.digest)?;
        let f = File::open(&p).with_context(|| format!("blob {} is missing from {}", d.digest, self.dir.display()))?;
        let mut bytes = Vec::new();
        f.take(limit + 1).read_to_end(&mut bytes)?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if bytes.len() as u64 != d.size || digest != d.digest {
            bail!("blob {} in {}: content ({} bytes, {digest}) does not match its descriptor", d.digest, self.dir.display(), bytes.len());
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a blob; returns its digest (computed here) and whether it was written
    /// (false: a blob with that content was already there).
    pub fn put_blob_bytes(&self, bytes: &[u8]) -> Result<(String, bool)> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let d = Descriptor::new("application/octet-stream", digest.clone(), bytes.len() as u64);
        if self.has_blob(&d)? {
            return Ok((digest, false));
        }
        self.write_atomic(&self.blob_path(&digest)?, bytes)?;
        Ok((digest, true))
    }

    /// Stores file `src` as blob `d` (whose digest the caller computed). With `may_move`, a
    /// rename is tried first (same filesystem: no copy); otherwise, or if that fails, the file
    /// is copied. Returns false if the blob was already there.
    pub fn put_blob_file(&self, src: &Path, d: &Descriptor, may_move: bool) -> Result<bool> {
        if self.has_blob(d)? {
            return Ok(false);
        }
        let dest = self.blob_path(&d.digest)?;
        std::fs::create_dir_all(dest.parent().unwrap())?;
        if may_move && std::fs::rename(src, &dest).is_ok() {
            return Ok(true);
        }
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dest.parent().unwrap())?;
        let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
        io::copy(&mut f, tmp.as_file_mut()).with_context(|| format!("copying {} into the layout", src.display()))?;
        tmp.as_file().sync_all()?;
        set_mode_644(tmp.path())?;
        tmp.persist(&dest).with_context(|| format!("renaming to {}", dest.display()))?;
        Ok(true)
    }

    /// Points `tag` at `manifest` in `index.json` (replacing what the tag named before).
    pub fn set_tag(&self, tag: &str, manifest: &Descriptor) -> Result<()> {
        let mut idx = self.index()?;
        idx.manifests.retain(|d| d.annotation(ANN_REF_NAME) != Some(tag));
        let mut d = manifest.clone();
        d.annotations.get_or_insert_with(Default::default).insert(ANN_REF_NAME.into(), tag.into());
        idx.manifests.push(d);
        if idx.media_type.is_none() {
            idx.media_type = Some(OCI_INDEX.into());
        }
        self.write_atomic(&self.dir.join("index.json"), &serde_json::to_vec(&idx)?)
    }

    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<()> {
        let dir = dest.parent().unwrap();
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
        tmp.write_all(bytes)?;
        tmp.as_file().sync_all()?;
        set_mode_644(tmp.path())?;
        tmp.persist(dest).with_context(|| format!("renaming to {}", dest.display()))?;
        Ok(())
    }
}

fn set_mode_644(p: &Path) -> Result<()> {
    std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o644)).with_context(|| format!("chmod {}", p.display()))
}

/// (size, `sha256:<hex>`) of everything `r` yields.
pub fn hash_reader<R: Read>(mut r: R) -> io::Result<(u64, String)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = r.read(&mut buf)?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, format!("sha256:{}", hex::encode(h.finalize()))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_put_tag_resolve_verify() {
        let dir = tempfile::tempdir().unwrap();
        let l = OciLayout::create(&dir.path().join("lay")).unwrap();
        let (d, written) = l.put_blob_bytes(b"hello").unwrap();
        assert!(written);
        assert!(!l.put_blob_bytes(b"hello").unwrap().1);
        let desc = Descriptor::new("application/octet-stream", d.clone(), 5);
        assert!(l.has_blob(&desc).unwrap());
        assert_eq!(l.read_blob(&desc, 100).unwrap(), b"hello");
        assert!(l.verified_blob(&desc).is_ok());
        l.set_tag("t", &desc).unwrap();
        l.set_tag("t", &desc).unwrap();
        assert_eq!(l.index().unwrap().manifests.len(), 1);
        assert_eq!(l.resolve("t").unwrap().digest, d);
        assert!(l.resolve("u").unwrap_err().to_string().contains("tags: t"));
        // A blob whose content does not match its name.
        std::fs::write(l.blob_path(&d).unwrap(), b"HELLO").unwrap();
        assert!(l.verified_blob(&desc).unwrap_err().to_string().contains("does not match"));
        assert!(l.read_blob(&desc, 100).is_err());
        assert!(l.blob_path("sha256:../../../etc/passwd").is_err());
        // A blob that is a link to an endless device: refused, not read forever.
        std::fs::remove_file(l.blob_path(&d).unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/zero", l.blob_path(&d).unwrap()).unwrap();
        assert!(l.verified_blob(&desc).unwrap_err().to_string().contains("not a regular file"));
        // Reopen; a non-layout non-empty dir is refused.
        assert!(OciLayout::create(&dir.path().join("lay")).is_ok());
        std::fs::write(dir.path().join("junk"), b"x").unwrap();
        assert!(OciLayout::create(dir.path()).is_err());
        assert!(OciLayout::open(dir.path()).is_err());
    }
}
