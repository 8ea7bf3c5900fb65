//! `erofsd mount` / `erofsd umount`: ask the running daemon to serve or stop serving an image.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use hyper::Method;

use crate::daemon::api::UmountRequest;
use crate::daemon::client::{call, call_json};
use crate::daemon::config::DEFAULT_API_SOCKET;
use crate::frontend::{MountInfo, MountRequest};
use crate::oci::Reference;

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// Image directory made by `erofsd build` (image.boot + blobs/), or a reference to an
    /// image made by `erofsd convert`: `[http://]host[:port]/repo:tag|@sha256:…` or `oci:DIR[:tag]`.
    /// An existing path is always taken as a directory.
    pub image: String,
    pub mountpoint: PathBuf,
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// cachefiles fsid (default: the image id).
    #[arg(long)]
    pub fsid: Option<String>,
    /// cachefiles domain: images in one domain share blob cache objects.
    #[arg(long)]
    pub domain_id: Option<String>,
    /// Background prefetch for this mount (default: the daemon's `[prefetch] mode`).
    #[arg(long, value_enum)]
    pub prefetch: Option<crate::core::prefetch::PrefetchMode>,
    /// Prefetch cap in stored bytes per second, e.g. 8M (0 = unlimited; default: the daemon's).
    #[arg(long)]
    pub prefetch_bandwidth: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct UmountArgs {
    pub mountpoint: PathBuf,
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

pub fn mount(args: MountArgs) -> Result<()> {
    let (image, reference) = image_or_reference(&args.image)?;
    let mountpoint =
        std::fs::canonicalize(&args.mountpoint).with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    let prefetch_bandwidth = args.prefetch_bandwidth.as_deref().map(crate::build::parse_size).transpose().context("--prefetch-bandwidth")?;
    let req = MountRequest {
        image,
        reference,
        mountpoint,
        fsid: args.fsid,
        domain_id: args.domain_id,
        prefetch: args.prefetch,
        prefetch_bandwidth,
        prefetch_in_flight: None,
    };
    let info: MountInfo = runtime()?.block_on(call_json(&args.api_socket, Method::POST, "/api/v1/mounts", Some(&req)))?;
    println!("{} mounted at {} (fsid {}, {} front-end)", info.image.display(), info.mountpoint.display(), info.fsid, info.frontend);
    Ok(())
}

/// An existing path is an image directory; anything else must parse as a reference. The daemon
/// may run in another directory: paths (also an `oci:` layout's) are made absolute here.
fn image_or_reference(arg: &str) -> Result<(PathBuf, Option<String>)> {
    if Path::new(arg).exists() {
        return Ok((std::fs::canonicalize(arg).with_context(|| format!("image {arg}"))?, None));
    }
    let r = match Reference::parse(arg).with_context(|| format!("{arg} is neither an image directory nor a reference"))? {
        Reference::Layout { dir, tag } => {
            let dir = std::fs::canonicalize(&dir).with_context(|| format!("OCI layout {}", dir.display()))?;
            Reference::Layout { dir, tag }
        }
        r => r,
    };
    Ok((PathBuf::new(), Some(r.to_string())))
}

pub fn umount(args: UmountArgs) -> Result<()> {
    let mountpoint = std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint);
    let req = UmountRequest { mountpoint: mountpoint.clone() };
    runtime()?.block_on(call(&args.api_socket, Method::DELETE, "/api/v1/mounts", Some(&req)))?;
    println!("{} unmounted", mountpoint.display());
    Ok(())
}
