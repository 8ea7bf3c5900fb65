//! Image references as users type them.
//!
//! Two kinds:
//! * a registry reference `[http://|https://]host[:port]/repo/path(:tag|@sha256:hex)`; `http://`
//!   selects plain HTTP, anything else HTTPS. A first component without `.` or `:` that is not
//!   `localhost` means Docker Hub, as docker spells it (`debian:12` = `docker.io/library/debian:12`).
//! * an OCI image layout directory `oci:DIR[:tag]` (tag default `latest`).

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Result};

/// The host Docker Hub's API lives on (what `docker.io` references resolve to).
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Registry(RegistryRef),
    Layout { dir: PathBuf, tag: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// `http://host:port` or `https://host:port`: what `RegistryConfig::registry` takes.
    pub registry: String,
    /// `host[:port]` as written (docker config keys and messages use it).
    pub host: String,
    pub repository: String,
    /// A tag, or `sha256:<hex>` for a digest reference.
    pub reference: String,
}

impl RegistryRef {
    pub fn is_digest(&self) -> bool {
        self.reference.starts_with("sha256:")
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.is_digest() { '@' } else { ':' };
        let scheme = if self.registry.starts_with("http://") { "http://" } else { "" };
        write!(f, "{scheme}{}/{}{sep}{}", self.host, self.repository, self.reference)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Registry(r) => r.fmt(f),
            Reference::Layout { dir, tag } => write!(f, "oci:{}:{tag}", dir.display()),
        }
    }
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference> {
        if let Some(rest) = s.strip_prefix("oci:") {
            // The tag is what follows the last ':' if that part has no '/' (directories may
            // contain ':' themselves only before their last '/').
            let (dir, tag) = match rest.rsplit_once(':') {
                Some((d, t)) if !t.contains('/') && !d.is_empty() => (d, t),
                _ => (rest, "latest"),
            };
            if dir.is_empty() {
                bail!("reference {s:?}: `oci:` needs a directory");
            }
            if !valid_tag(tag) {
                bail!("reference {s:?}: invalid tag {tag:?}");
            }
            return Ok(Reference::Layout { dir: dir.into(), tag: tag.into() });
        }
        Ok(Reference::Registry(parse_registry(s)?))
    }
}

fn parse_registry(s: &str) -> Result<RegistryRef> {
    let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = s.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = s.strip_prefix("docker://") {
        ("https", r)
    } else {
        ("https", s)
    };
    // name[@digest] first: the digest contains ':' too.
    let (name, digest) = match rest.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (rest, None),
    };
    // A tag is after the last ':' that follows the last '/' (a port's ':' precedes a '/').
    let last_slash = name.rfind('/');
    let (name, tag) = match name.rfind(':') {
        Some(c) if last_slash.is_none_or(|sl| c > sl) => (&name[..c], Some(&name[c + 1..])),
        _ => (name, None),
    };
    let (host, repository) = match name.split_once('/') {
        Some((h, r)) if h.contains('.') || h.contains(':') || h == "localhost" => (h.to_string(), r.to_string()),
        _ => {
            let repo = if name.contains('/') { name.to_string() } else { format!("library/{name}") };
            ("docker.io".to_string(), repo)
        }
    };
    if repository.is_empty() || !valid_repository(&repository) {
        bail!("reference {s:?}: invalid repository {repository:?} (lowercase [a-z0-9._-] path components)");
    }
    let reference = match (tag, digest) {
        (_, Some(d)) => {
            let hex = d.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
                bail!("reference {s:?}: digest must be sha256:<64 lowercase hex>");
            }
            d.to_string()
        }
        (Some(t), None) => {
            if !valid_tag(t) {
                bail!("reference {s:?}: invalid tag {t:?}");
            }
            t.to_string()
        }
        (None, None) => "latest".to_string(),
    };
    let api_host = if host == "docker.io" { DOCKER_HUB_API.to_string() } else { host.clone() };
    Ok(RegistryRef { registry: format!("{scheme}://{api_host}"), host, repository, reference })
}

/// Tags per the distribution spec: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_repository(r: &str) -> bool {
    r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match Reference::parse(s).unwrap() {
            Reference::Registry(r) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn registry_references() {
        let r = reg("127.0.0.1:5000/erofsd/rootfs:v1");
        assert_eq!((r.registry.as_str(), r.host.as_str()), ("https://127.0.0.1:5000", "127.0.0.1:5000"));
        assert_eq!((r.repository.as_str(), r.reference.as_str()), ("erofsd/rootfs", "v1"));
        let r = reg("http://localhost:5000/a/b/c");
        assert_eq!((r.registry.as_str(), r.reference.as_str()), ("http://localhost:5000", "latest"));
        assert_eq!(r.to_string(), "http://localhost:5000/a/b/c:latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        let r = reg(&format!("reg.example.com/x@{d}"));
        assert!(r.is_digest());
        assert_eq!(r.reference, d);
        assert_eq!(r.to_string(), format!("reg.example.com/x@{d}"));
        let r = reg(&format!("reg.example.com:443/x:tag@{d}"));
        assert_eq!(r.reference, d, "a digest wins over a tag");
        let r = reg("debian:12");
        assert_eq!((r.registry.as_str(), r.host.as_str(), r.repository.as_str()), ("https://registry-1.docker.io", "docker.io", "library/debian"));
        let r = reg("docker://someone/app");
        assert_eq!((r.repository.as_str(), r.reference.as_str()), ("someone/app", "latest"));
    }

    #[test]
    fn layout_references() {
        assert_eq!(Reference::parse("oci:/tmp/lay").unwrap(), Reference::Layout { dir: "/tmp/lay".into(), tag: "latest".into() });
        assert_eq!(Reference::parse("oci:/tmp/lay:v2").unwrap(), Reference::Layout { dir: "/tmp/lay".into(), tag: "v2".into() });
        assert_eq!(Reference::parse("oci:rel/dir").unwrap(), Reference::Layout { dir: "rel/dir".into(), tag: "latest".into() });
    }

    #[test]
    fn bad_references_are_clear_errors() {
        for s in ["oci:", "Host.com/UPPER:tag", "h.com/x@sha256:abc", "h.com/x:bad tag", "h.com/x:", "h.com//x", "h.com/x@md5:00"] {
            let e = Reference::parse(s).unwrap_err().to_string();
            assert!(e.contains("reference"), "{s}: {e}");
        }
    }
}
