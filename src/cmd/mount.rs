//! `erofsd mount` / `erofsd umount`: ask the running daemon to serve or stop serving an image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use hyper::Method;

use crate::daemon::api::UmountRequest;
use crate::daemon::client::{call, call_json};
use crate::daemon::config::DEFAULT_API_SOCKET;
use crate::frontend::{MountInfo, MountRequest};

#[derive(clap::Args, Debug)]
pub struct MountArgs {
    /// Image directory made by `erofsd build` (image.boot + blobs/).
    pub image: PathBuf,
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
    let image = std::fs::canonicalize(&args.image).with_context(|| format!("image {}", args.image.display()))?;
    let mountpoint =
        std::fs::canonicalize(&args.mountpoint).with_context(|| format!("mountpoint {}", args.mountpoint.display()))?;
    let prefetch_bandwidth = args.prefetch_bandwidth.as_deref().map(crate::build::parse_size).transpose().context("--prefetch-bandwidth")?;
    let req = MountRequest {
        image,
        mountpoint,
        fsid: args.fsid,
        domain_id: args.domain_id,
        prefetch: args.prefetch,
        prefetch_bandwidth,
    };
    let info: MountInfo = runtime()?.block_on(call_json(&args.api_socket, Method::POST, "/api/v1/mounts", Some(&req)))?;
    println!("{} mounted at {} (fsid {}, {} front-end)", info.image.display(), info.mountpoint.display(), info.fsid, info.frontend);
    Ok(())
}

pub fn umount(args: UmountArgs) -> Result<()> {
    let mountpoint = std::fs::canonicalize(&args.mountpoint).unwrap_or(args.mountpoint);
    let req = UmountRequest { mountpoint: mountpoint.clone() };
    runtime()?.block_on(call(&args.api_socket, Method::DELETE, "/api/v1/mounts", Some(&req)))?;
    println!("{} unmounted", mountpoint.display());
    Ok(())
}
