//! Which images the kernel may ask about, by the names it uses.
//!
//! An OPEN names a volume (`fsid`, or `domain_id` when the mount had one) and a cookie (the
//! mount's `fsid` for the bootstrap, a blob's device tag otherwise). Each `erofsd mount`
//! registers its image under those names *before* calling mount(2), because mount(2) blocks
//! until the bootstrap OPEN is answered.
//!
//! The registrations are also persisted (JSON, replaced atomically) so a daemon restarted after a
//! crash can answer the OPENs the kernel re-sends for the objects whose fds died: that is all a
//! successor needs (object ids, fds and readiness are rebuilt from the kernel).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::bootstrap::FscacheBootstrap;
use crate::core::blob::Blob;
use crate::core::images::Image;

/// One mount served through cachefiles.
pub struct Registration {
    pub fsid: String,
    pub domain_id: Option<String>,
    pub image: Arc<Image>,
    /// What the kernel reads as the bootstrap object (interior holes redirected).
    pub bootstrap: Arc<FscacheBootstrap>,
    /// The image path the user gave (to reload it after a restart).
    pub image_path: PathBuf,
    pub mountpoint: PathBuf,
}

impl Registration {
    /// A registration of `image`, with the bootstrap object the kernel will be served
    /// ([`FscacheBootstrap::for_image`]).
    pub fn new(fsid: String, domain_id: Option<String>, image: Arc<Image>, image_path: PathBuf, mountpoint: PathBuf) -> Result<Registration> {
        let bootstrap = Arc::new(FscacheBootstrap::for_image(&image)?);
        Ok(Registration { fsid, domain_id, image, bootstrap, image_path, mountpoint })
    }

    /// The name in the OPEN's volume key.
    pub fn volume(&self) -> &str {
        self.domain_id.as_deref().unwrap_or(&self.fsid)
    }
}

/// What an OPEN's keys refer to.
pub enum Lookup {
    Bootstrap(Arc<FscacheBootstrap>),
    Blob(Arc<Blob>),
    Unknown,
}

/// Persisted form of a registration.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    pub fsid: String,
    pub domain_id: Option<String>,
    pub image: PathBuf,
    pub image_id: String,
    pub mountpoint: PathBuf,
}

#[derive(Serialize, Deserialize, Default)]
struct StateFile {
    version: u32,
    mounts: Vec<Saved>,
}

pub struct Registry {
    regs: Mutex<Vec<Arc<Registration>>>,
    state_path: PathBuf,
}

/// fsids and domain ids end up in mount options (`,` separated), volume keys, sysfs names and
/// cache directory names: keep them to a safe alphabet.
pub fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 128 {
        bail!("{what} must be 1 to 128 characters");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        bail!("{what} {name:?} may only contain letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

impl Registry {
    pub fn new(state_path: PathBuf) -> Registry {
        Registry { regs: Mutex::new(Vec::new()), state_path }
    }

    /// Adds a registration unless it collides with one the kernel would confuse it with.
    pub fn add(&self, reg: Registration) -> Result<Arc<Registration>> {
        let mut regs = self.regs.lock().expect("registry lock");
        for r in regs.iter() {
            if r.mountpoint == reg.mountpoint {
                bail!("{} is already served", reg.mountpoint.display());
            }
            if r.volume() == reg.volume() && r.fsid == reg.fsid {
                match &reg.domain_id {
                    Some(d) => bail!("fsid {} is already mounted in domain {d}", reg.fsid),
                    None => bail!("fsid {} is already mounted (at {})", reg.fsid, r.mountpoint.display()),
                }
            }
            if r.domain_id.is_none() && reg.domain_id.is_none() && (r.fsid == reg.fsid) {
                bail!("fsid {} is already mounted", reg.fsid);
            }
            // A shared domain's namespace holds both fsids and blob tags.
            if r.volume() == reg.volume() && r.image.blob_by_tag(&reg.fsid).is_some() {
                bail!("fsid {} equals a blob id in domain {}", reg.fsid, reg.volume());
            }
            if r.volume() == reg.volume() && reg.image.blob_by_tag(&r.fsid).is_some() {
                bail!("a blob of this image has the id of mounted fsid {} in domain {}", r.fsid, reg.volume());
            }
        }
        if reg.image.blob_by_tag(&reg.fsid).is_some() {
            bail!("fsid {} equals one of the image's blob ids", reg.fsid);
        }
        let reg = Arc::new(reg);
        regs.push(reg.clone());
        Ok(reg)
    }

    pub fn remove(&self, mountpoint: &Path) -> Option<Arc<Registration>> {
        let mut regs = self.regs.lock().expect("registry lock");
        let pos = regs.iter().position(|r| r.mountpoint == mountpoint)?;
        Some(regs.remove(pos))
    }

    pub fn get(&self, mountpoint: &Path) -> Option<Arc<Registration>> {
        self.regs.lock().expect("registry lock").iter().find(|r| r.mountpoint == mountpoint).cloned()
    }

    pub fn all(&self) -> Vec<Arc<Registration>> {
        self.regs.lock().expect("registry lock").clone()
    }

    /// Resolves an OPEN's keys. A blob is found through any registration in the volume that
    /// names it (in a shared domain, several images may; they describe identical content).
    pub fn lookup(&self, volume: &str, cookie: &str) -> Lookup {
        let regs = self.regs.lock().expect("registry lock");
        let in_volume = || regs.iter().filter(|r| r.volume() == volume);
        if let Some(r) = in_volume().find(|r| r.fsid == cookie) {
            return Lookup::Bootstrap(r.bootstrap.clone());
        }
        for r in in_volume() {
            if let Some(b) = r.image.blob_by_tag(cookie) {
                return Lookup::Blob(b.clone());
            }
        }
        Lookup::Unknown
    }

    /// Writes the registrations to the state file (write to a temp file, then rename).
    pub fn persist(&self) -> Result<()> {
        let state = StateFile {
            version: 1,
            mounts: self
                .all()
                .iter()
                .map(|r| Saved {
                    fsid: r.fsid.clone(),
                    domain_id: r.domain_id.clone(),
                    image: r.image_path.clone(),
                    image_id: r.image.id.clone(),
                    mountpoint: r.mountpoint.clone(),
                })
                .collect(),
        };
        if let Some(dir) = self.state_path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = self.state_path.with_extension("tmp");
        let bytes = serde_json::to_vec_pretty(&state)?;
        std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &self.state_path).with_context(|| format!("replacing {}", self.state_path.display()))?;
        Ok(())
    }

    /// Reads a state file; a missing file is an empty list.
    pub fn load_saved(path: &Path) -> Result<Vec<Saved>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if bytes.len() > 16 << 20 {
            bail!("state file {} is implausibly large", path.display());
        }
        let state: StateFile = serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?;
        if state.version != 1 {
            bail!("state file {} has unknown version {}", path.display(), state.version);
        }
        Ok(state.mounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_restricted() {
        assert!(check_name("fsid", "img-1.a_b").is_ok());
        assert!(check_name("fsid", "").is_err());
        assert!(check_name("fsid", "a,b").is_err());
        assert!(check_name("fsid", "a/b").is_err());
        assert!(check_name("fsid", &"x".repeat(129)).is_err());
    }

    fn empty_bootstrap() -> Vec<u8> {
        let meta = erofs::tree::Meta { mode: erofs::tree::S_IFDIR | 0o755, uid: 0, gid: 0, mtime: 0, mtime_nsec: 0 };
        let mut out = Vec::new();
        erofs::writer::write_bootstrap(&erofs::tree::Tree::new(meta), &[], &Default::default(), &mut out).unwrap();
        out
    }

    #[test]
    fn state_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/cachefiles.json");
        assert!(Registry::load_saved(&path).unwrap().is_empty());
        let reg = Registry::new(path.clone());
        let boot = dir.path().join("image.boot");
        std::fs::write(&boot, empty_bootstrap()).unwrap();
        let image = crate::core::images::ImageStore::new().load_dir(&boot).unwrap();
        let registration = |mp: &str| Registration::new("f1".into(), Some("d".into()), image.clone(), "/x".into(), mp.into()).unwrap();
        reg.add(registration("/mnt/a")).unwrap();
        assert!(reg.add(registration("/mnt/b")).is_err());
        reg.persist().unwrap();
        let saved = Registry::load_saved(&path).unwrap();
        assert_eq!(saved.len(), 1);
        assert_eq!(saved[0].fsid, "f1");
        assert_eq!(saved[0].domain_id.as_deref(), Some("d"));
        assert!(matches!(reg.lookup("d", "f1"), Lookup::Bootstrap(_)));
        assert!(matches!(reg.lookup("f1", "f1"), Lookup::Unknown));
        assert!(matches!(reg.lookup("d", "zz"), Lookup::Unknown));
        std::fs::write(&path, b"{not json").unwrap();
        assert!(Registry::load_saved(&path).is_err());
    }
}
