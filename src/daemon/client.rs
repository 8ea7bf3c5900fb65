//! The client side of the control API, used by `erofsd mount`, `erofsd umount` and tests.

use std::path::Path;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixStream;

use super::api::ApiError;

/// Sends one request; returns the status and body of a 2xx answer, or the API's error message.
pub async fn call(socket: &Path, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<(u16, Bytes)> {
    let stream = UnixStream::connect(socket)
        .await
        .with_context(|| format!("connecting to the erofsd daemon at {} (is it running?)", socket.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let bytes = match body {
        Some(b) => serde_json::to_vec(b)?,
        None => Vec::new(),
    };
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "erofsd")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    if !(200..300).contains(&status) {
        match serde_json::from_slice::<ApiError>(&body) {
            Ok(e) => bail!("{}", e.message),
            Err(_) => bail!("daemon answered {status}: {}", String::from_utf8_lossy(&body)),
        }
    }
    Ok((status, body))
}

pub async fn call_json<T: DeserializeOwned>(socket: &Path, method: Method, path: &str, body: Option<&impl Serialize>) -> Result<T> {
    let (_, bytes) = call(socket, method, path, body).await?;
    serde_json::from_slice(&bytes).context("decoding the daemon's answer")
}
