//! `erofsd status`: what the running daemon reports (state, mounts, metrics) as JSON.

use std::path::PathBuf;

use anyhow::Result;
use hyper::Method;

use crate::daemon::client::call;
use crate::daemon::config::DEFAULT_API_SOCKET;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, default_value = DEFAULT_API_SOCKET)]
    pub api_socket: PathBuf,
    /// Print the metrics (per-blob fetch counters, front-end counters) instead of the state.
    #[arg(long)]
    pub metrics: bool,
    /// Print the mounts the daemon serves.
    #[arg(long)]
    pub mounts: bool,
}

pub fn run(args: Args) -> Result<()> {
    let path = if args.metrics {
        "/api/v1/metrics"
    } else if args.mounts {
        "/api/v1/mounts"
    } else {
        "/api/v1/daemon"
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (_, body) = rt.block_on(call(&args.api_socket, Method::GET, path, None::<&()>))?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}
