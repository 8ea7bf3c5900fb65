//! Pushing to a registry (OCI distribution spec), for `erofsd convert`: blob existence checks,
//! blob uploads streamed from files, and manifest puts. Authentication, TLS, proxy and retries
//! are the source's own ([`super::client`]); create the source with
//! [`RegistrySource::new_for_push`] so bearer tokens carry `pull,push`.
//!
//! Uploads: `POST /v2/<repo>/blobs/uploads/` opens a session; a blob up to
//! [`PushOptions::chunk_size`] then goes in one `PUT <location>?digest=` (monolithic); a larger
//! one in `PATCH` chunks with `Content-Range`, then an empty `PUT ?digest=`. A transient failure
//! restarts the whole upload (a fresh session): upload sessions are cheap, resuming one is not
//! portable across registries. The registry checks the digest; we also compare the
//! `Docker-Content-Digest` it answers with.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};
use reqwest::{Response, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use url::Url;

use super::client::{status_failure, with_retries, Failure};
use super::{valid_hex_id, RegistrySource, MAX_MANIFEST};

/// Told how far into the current blob the upload is (bytes; goes back on a retry).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Blobs larger than this are uploaded in `PATCH` chunks of this size.
    pub chunk_size: u64,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions { chunk_size: 64 << 20 }
    }
}

/// Read size of the upload body stream.
const BODY_PIECE: u64 = 256 << 10;

impl RegistrySource {
    /// The size of blob `sha256:<id>` if the repository has it (`HEAD`), else `None`.
    pub async fn blob_exists(&self, id: &str) -> io::Result<Option<u64>> {
        if !valid_hex_id(id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid blob id {id:?}")));
        }
        let url = self.url(&format!("blobs/sha256:{id}"));
        let what = format!("HEAD {url}");
        with_retries(&self.retry, &what, || async {
            let resp = self.session.send(&what, |c| c.head(url.clone())).await?;
            match resp.status() {
                // The header, not `content_length()`: that is the body's length, 0 for a HEAD.
                StatusCode::OK => Ok(Some(
                    resp.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0),
                )),
                StatusCode::NOT_FOUND => Ok(None),
                _ => Err(status_failure(&what, resp).await),
            }
        })
        .await
    }

    /// Uploads file `path` as blob `sha256:<id>` (the caller computed the id). Returns the
    /// bytes sent.
    pub async fn push_blob_file(&self, id: &str, path: &Path, opts: &PushOptions, progress: Option<Progress>) -> io::Result<u64> {
        if !valid_hex_id(id) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid blob id {id:?}")));
        }
        let size = std::fs::metadata(path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?.len();
        let what = format!("upload of blob sha256:{id} to {}", self.describe);
        with_retries(&self.retry, &what, || self.upload_once(id, path, size, opts, progress.clone())).await?;
        Ok(size)
    }

    async fn upload_once(&self, id: &str, path: &Path, size: u64, opts: &PushOptions, progress: Option<Progress>) -> Result<(), Failure> {
        let start = self.url("blobs/uploads/");
        let what = format!("POST {start}");
        let resp = self.session.send(&what, |c| c.post(start.clone()).header(CONTENT_LENGTH, 0)).await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_failure(&what, resp).await);
        }
        let mut location = self.location(&resp, &what)?;
        let chunk = opts.chunk_size.max(1);
        let body_in_put = size <= chunk;
        if !body_in_put {
            let mut offset = 0u64;
            while offset < size {
                let len = chunk.min(size - offset);
                let what = format!("PATCH {} bytes {offset}-{}", location.path(), offset + len - 1);
                let (p, loc) = (path.to_path_buf(), location.clone());
                let prog = progress.clone();
                let resp = self
                    .session
                    .send(&what, |c| {
                        c.patch(loc.clone())
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, len)
                            .header("Content-Range", format!("{offset}-{}", offset + len - 1))
                            .body(file_body(p.clone(), offset, len, prog.clone()))
                    })
                    .await?;
                if resp.status() != StatusCode::ACCEPTED {
                    return Err(status_failure(&what, resp).await);
                }
                location = self.location(&resp, &what)?;
                tracing::debug!("{what}: accepted");
                offset += len;
            }
        }
        let mut put = location.clone();
        put.query_pairs_mut().append_pair("digest", &format!("sha256:{id}"));
        let what = format!("PUT {}?digest=sha256:{id}", location.path());
        let p = path.to_path_buf();
        let resp = self
            .session
            .send(&what, |c| {
                let rb = c.put(put.clone()).header(CONTENT_TYPE, "application/octet-stream");
                if body_in_put {
                    rb.header(CONTENT_LENGTH, size).body(file_body(p.clone(), 0, size, progress.clone()))
                } else {
                    rb.header(CONTENT_LENGTH, 0)
                }
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(status_failure(&what, resp).await);
        }
        check_stated_digest(&resp, &format!("sha256:{id}"), &what)
    }

    /// The upload session URL from a `Location` header (absolute or relative to the registry).
    fn location(&self, resp: &Response, what: &str) -> Result<Url, Failure> {
        let loc = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: answer has no Location header")))?;
        self.base
            .join(loc)
            .map_err(|e| Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: bad Location {loc:?}: {e}")))
    }

    /// Puts a manifest under `reference` (a tag, or its own `sha256:` digest); returns its digest.
    pub async fn push_manifest(&self, reference: &str, media_type: &str, bytes: &[u8]) -> io::Result<String> {
        if reference.is_empty() || reference.contains('/') || reference.len() > 200 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("invalid manifest reference {reference:?}")));
        }
        if bytes.len() > MAX_MANIFEST {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("manifest of {} bytes is over the {MAX_MANIFEST} limit", bytes.len())));
        }
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if reference.starts_with("sha256:") && reference != digest {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("manifest has digest {digest}, not {reference}")));
        }
        let url = self.url(&format!("manifests/{reference}"));
        let what = format!("PUT {url}");
        with_retries(&self.retry, &what, || async {
            let resp = self
                .session
                .send(&what, |c| c.put(url.clone()).header(CONTENT_TYPE, media_type).body(bytes.to_vec()))
                .await?;
            if resp.status() != StatusCode::CREATED {
                return Err(status_failure(&what, resp).await);
            }
            check_stated_digest(&resp, &digest, &what)
        })
        .await?;
        Ok(digest)
    }
}

fn check_stated_digest(resp: &Response, want: &str, what: &str) -> Result<(), Failure> {
    match resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
        Some(d) if d != want => Err(Failure::fatal(io::ErrorKind::InvalidData, format!("{what}: the registry stored digest {d}, expected {want}"))),
        _ => Ok(()),
    }
}

/// A request body streaming `len` bytes of `path` from `offset`, opened lazily (a request
/// built twice, for re-authentication, reads the file twice).
fn file_body(path: PathBuf, offset: u64, len: u64, progress: Option<Progress>) -> reqwest::Body {
    struct St {
        path: PathBuf,
        file: Option<tokio::fs::File>,
        offset: u64,
        left: u64,
        sent: u64,
        progress: Option<Progress>,
    }
    let st = St { path, file: None, offset, left: len, sent: offset, progress };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        if st.left == 0 {
            return None;
        }
        if st.file.is_none() {
            let opened = async {
                let mut f = tokio::fs::File::open(&st.path).await?;
                f.seek(io::SeekFrom::Start(st.offset)).await?;
                Ok::<_, io::Error>(f)
            }
            .await;
            match opened {
                Ok(f) => st.file = Some(f),
                Err(e) => {
                    st.left = 0;
                    return Some((Err(io::Error::new(e.kind(), format!("{}: {e}", st.path.display()))), st));
                }
            }
        }
        let n = st.left.min(BODY_PIECE) as usize;
        let mut buf = vec![0u8; n];
        match st.file.as_mut().expect("opened").read_exact(&mut buf).await {
            Ok(_) => {
                st.left -= n as u64;
                st.sent += n as u64;
                if let Some(p) = &st.progress {
                    p(st.sent);
                }
                Some((Ok(buf), st))
            }
            Err(e) => {
                st.left = 0;
                Some((Err(io::Error::new(e.kind(), format!("{} (changed while uploading?): {e}", st.path.display()))), st))
            }
        }
    });
    reqwest::Body::wrap_stream(stream)
}
