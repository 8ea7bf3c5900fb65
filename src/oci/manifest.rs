//! OCI / docker manifest JSON: the types we read and write, media types and annotations, the
//! platform choice in an index, and how a reader finds the layers of an erofsd image
//! ([`find_erofsd_layers`], the contract in docs/registry.md).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};


pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_FOREIGN: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
/// Layer media types a conversion reads (the builder detects the compression by magic bytes).
pub const SOURCE_LAYER_TYPES: [&str; 8] = [
    OCI_LAYER_TAR,
    OCI_LAYER_GZIP,
    OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_FOREIGN,
];

/// An erofsd data blob layer (the nydus snapshotter's media type).
pub const NYDUS_BLOB: &str = "application/vnd.oci.image.layer.nydus.blob.v1";
pub const ANN_NYDUS_BLOB: &str = "containerd.io/snapshot/nydus-blob";
pub const ANN_NYDUS_BOOTSTRAP: &str = "containerd.io/snapshot/nydus-bootstrap";
pub const ANN_NYDUS_FS_VERSION: &str = "containerd.io/snapshot/nydus-fs-version";
/// Which bootstrap the bootstrap layer holds; absent means a nydus RAFS bootstrap.
pub const ANN_BOOTSTRAP_FORMAT: &str = "dev.erofsd.bootstrap-format";
pub const BOOTSTRAP_FORMAT_EROFSD_V1: &str = "erofsd-v1";
pub const ANN_SOURCE_REFERENCE: &str = "dev.erofsd.source-reference";
pub const ANN_SOURCE_DIGEST: &str = "dev.erofsd.source-digest";
/// The tag of a manifest in an OCI layout's `index.json`.
pub const ANN_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Path of the bootstrap inside the bootstrap layer's tar.
pub const BOOTSTRAP_TAR_PATH: &str = "image/image.boot";

/// Configs larger than this are refused (real ones are a few KiB; history can make tens).
pub const MAX_CONFIG: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: String, size: u64) -> Descriptor {
        Descriptor { media_type: media_type.to_string(), digest, size, annotations: None, platform: None }
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The hex part of a validated `sha256:` digest.
    pub fn hex(&self) -> Result<&str> {
        digest_hex(&self.digest)
    }
}

/// `sha256:` followed by 64 lowercase hex digits (the only digest algorithm we accept).
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// The 64 hex digits of `sha256:<hex>`, or an error naming the bad digest.
pub fn digest_hex(d: &str) -> Result<&str> {
    if !valid_digest(d) {
        bail!("digest {d:?} is not sha256:<64 lowercase hex>");
    }
    Ok(&d[7..])
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// A manifest or an index, told apart by the media type (the transport's, else the body's).
pub enum Parsed {
    Manifest(ImageManifest),
    Index(Index),
}

/// Parses manifest bytes. `media_type` is what the transport said (may be empty).
pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Parsed> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        schema_version: Option<u32>,
        #[serde(default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(bytes).context("manifest is not JSON of a manifest or index")?;
    if probe.schema_version != Some(2) {
        bail!("manifest schemaVersion is {:?}, expected 2 (docker schema 1 is not supported)", probe.schema_version);
    }
    let mt = match (media_type, probe.media_type.as_deref()) {
        ("" | "application/json", Some(body)) => body.to_string(),
        ("" | "application/json", None) => {
            if probe.manifests.is_some() { OCI_INDEX.to_string() } else { OCI_MANIFEST.to_string() }
        }
        (t, _) => t.to_string(),
    };
    match mt.as_str() {
        OCI_INDEX | DOCKER_LIST => Ok(Parsed::Index(serde_json::from_slice(bytes).context("parsing the image index")?)),
        OCI_MANIFEST | DOCKER_MANIFEST => {
            let m: ImageManifest = serde_json::from_slice(bytes).context("parsing the image manifest")?;
            m.config.hex().context("config descriptor")?;
            for (i, l) in m.layers.iter().enumerate() {
                l.hex().with_context(|| format!("layer {}", i + 1))?;
            }
            Ok(Parsed::Manifest(m))
        }
        other => bail!("unsupported manifest media type {other:?}"),
    }
}

/// The manifest for `os`/`architecture` in an index. A single entry without a platform is
/// taken as is (some tools write indexes without platforms).
pub fn select_platform<'a>(index: &'a Index, os: &str, architecture: &str) -> Result<&'a Descriptor> {
    let manifests: Vec<&Descriptor> =
        index.manifests.iter().filter(|d| matches!(d.media_type.as_str(), OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST)).collect();
    if let Some(d) = manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| p.os == os && p.architecture == architecture)) {
        return Ok(d);
    }
    if manifests.len() == 1 && manifests[0].platform.is_none() {
        return Ok(manifests[0]);
    }
    let have: Vec<String> = manifests
        .iter()
        .map(|d| d.platform.as_ref().map(|p| format!("{}/{}", p.os, p.architecture)).unwrap_or_else(|| "?".into()))
        .collect();
    bail!("the index has no {os}/{architecture} manifest (it has: {})", if have.is_empty() { "none".into() } else { have.join(", ") })
}

/// The platform this build converts for and pulls.
pub fn host_platform() -> (&'static str, &'static str) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    ("linux", arch)
}

/// What the bootstrap layer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapFormat {
    /// An erofsd bootstrap (docs/format.md).
    ErofsdV1,
    /// No `dev.erofsd.bootstrap-format`: a nydus RAFS bootstrap (not readable by erofsd yet).
    NydusRafs,
}

/// The layers of an erofsd image, as a reader needs them.
#[derive(Debug, Clone)]
pub struct ErofsdLayers {
    pub bootstrap: Descriptor,
    pub format: BootstrapFormat,
    /// The data blob layers in manifest order (their digests are `sha256:<blob id>`).
    pub blobs: Vec<Descriptor>,
}

impl ErofsdLayers {
    /// The blob ids (hex) the manifest offers.
    pub fn blob_ids(&self) -> Vec<&str> {
        self.blobs.iter().map(|d| &d.digest[7..]).collect()
    }

    /// Checks that every id a bootstrap's blob table names is a blob layer of the manifest.
    pub fn check_blob_ids<'a>(&self, bootstrap_ids: impl IntoIterator<Item = &'a str>) -> Result<()> {
        let have = self.blob_ids();
        for id in bootstrap_ids {
            if !have.contains(&id) {
                bail!("the bootstrap names blob {id}, which is not a layer of the manifest");
            }
        }
        Ok(())
    }
}

/// Finds the bootstrap layer (the last one annotated `nydus-bootstrap: "true"`) and the blob
/// layers (`nydus-blob: "true"` or the nydus blob media type) of an image manifest. Digests
/// are validated; an index, a manifest without a bootstrap layer, or an unknown bootstrap
/// format is an error.
pub fn find_erofsd_layers(manifest: &[u8]) -> Result<ErofsdLayers> {
    let m = match parse("", manifest)? {
        Parsed::Manifest(m) => m,
        Parsed::Index(_) => bail!("this is an image index, not a manifest: select a platform first"),
    };
    let bootstrap = m
        .layers
        .iter()
        .rev()
        .find(|l| l.annotation(ANN_NYDUS_BOOTSTRAP) == Some("true"))
        .context("no layer is annotated containerd.io/snapshot/nydus-bootstrap=true: not an erofsd or nydus image")?
        .clone();
    let format = match bootstrap.annotation(ANN_BOOTSTRAP_FORMAT) {
        Some(BOOTSTRAP_FORMAT_EROFSD_V1) => BootstrapFormat::ErofsdV1,
        None => BootstrapFormat::NydusRafs,
        Some(other) => bail!("bootstrap layer has unknown format {other:?} (this erofsd reads {BOOTSTRAP_FORMAT_EROFSD_V1})"),
    };
    if bootstrap.size > crate::core::images::MAX_BOOTSTRAP {
        bail!("bootstrap layer is {} bytes, over the {} limit", bootstrap.size, crate::core::images::MAX_BOOTSTRAP);
    }
    let blobs: Vec<Descriptor> = m
        .layers
        .iter()
        .filter(|l| l.annotation(ANN_NYDUS_BLOB) == Some("true") || l.media_type == NYDUS_BLOB)
        .cloned()
        .collect();
    Ok(ErofsdLayers { bootstrap, format, blobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> String {
        format!("sha256:{}", c.to_string().repeat(64))
    }

    fn erofsd_manifest(format: Option<&str>) -> Vec<u8> {
        let mut boot_ann = serde_json::json!({ANN_NYDUS_BOOTSTRAP: "true", ANN_NYDUS_FS_VERSION: "6"});
        if let Some(f) = format {
            boot_ann[ANN_BOOTSTRAP_FORMAT] = f.into();
        }
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": d('c'), "size": 10},
            "layers": [
                {"mediaType": NYDUS_BLOB, "digest": d('a'), "size": 5, "annotations": {ANN_NYDUS_BLOB: "true"}},
                {"mediaType": NYDUS_BLOB, "digest": d('b'), "size": 6, "annotations": {ANN_NYDUS_BLOB: "true"}},
                {"mediaType": OCI_LAYER_GZIP, "digest": d('e'), "size": 7, "annotations": boot_ann},
            ],
        }))
        .unwrap()
    }

    #[test]
    fn finds_bootstrap_and_blobs() {
        let l = find_erofsd_layers(&erofsd_manifest(Some(BOOTSTRAP_FORMAT_EROFSD_V1))).unwrap();
        assert_eq!(l.format, BootstrapFormat::ErofsdV1);
        assert_eq!(l.bootstrap.digest, d('e'));
        assert_eq!(l.blob_ids(), vec!["a".repeat(64), "b".repeat(64)]);
        assert!(l.check_blob_ids(["a".repeat(64).as_str()]).is_ok());
        assert!(l.check_blob_ids(["f".repeat(64).as_str()]).is_err());
        assert_eq!(find_erofsd_layers(&erofsd_manifest(None)).unwrap().format, BootstrapFormat::NydusRafs);
        assert!(find_erofsd_layers(&erofsd_manifest(Some("v9"))).is_err());
    }

    #[test]
    fn rejects_non_erofsd_and_bad_json() {
        let plain = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": d('c'), "size": 10},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": d('a'), "size": 5}],
        }))
        .unwrap();
        assert!(find_erofsd_layers(&plain).unwrap_err().to_string().contains("nydus-bootstrap"));
        let bad_digest = String::from_utf8(plain.clone()).unwrap().replace(&d('a'), "sha256:../../etc");
        assert!(find_erofsd_layers(bad_digest.as_bytes()).is_err());
        assert!(find_erofsd_layers(b"{").is_err());
        assert!(find_erofsd_layers(b"{\"schemaVersion\":1}").is_err());
        let index = serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})).unwrap();
        assert!(find_erofsd_layers(&index).unwrap_err().to_string().contains("index"));
    }

    #[test]
    fn platform_selection() {
        let idx: Index = serde_json::from_value(serde_json::json!({
            "schemaVersion": 2,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d('a'), "size": 1, "platform": {"os": "linux", "architecture": "arm64"}},
                {"mediaType": OCI_MANIFEST, "digest": d('b'), "size": 1, "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        }))
        .unwrap();
        assert_eq!(select_platform(&idx, "linux", "amd64").unwrap().digest, d('b'));
        assert!(select_platform(&idx, "linux", "s390x").unwrap_err().to_string().contains("linux/arm64"));
    }
}
