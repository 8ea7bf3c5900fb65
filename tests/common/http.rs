//! HTTP/1.1 over a unix socket, the way nydus-snapshotter talks to nydusd (one request per
//! call, or several on one kept-alive connection), and the `nydusd` link to our binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A symlink named `nydusd` to the erofsd binary, in `dir`.
pub fn nydusd_link(dir: &Path) -> PathBuf {
    let link = dir.join("nydusd");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_erofsd"), &link).unwrap();
    link
}

/// One HTTP/1.1 exchange on a (kept-alive) connection: (status, body).
pub fn exchange(conn: &mut BufReader<UnixStream>, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: unix\r\n");
    if let Some(b) = body {
        req += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
    }
    req += "\r\n";
    if let Some(b) = body {
        req += b;
    }
    conn.get_mut().write_all(req.as_bytes()).unwrap();
    let mut status = String::new();
    conn.read_line(&mut status).unwrap();
    let code: u16 = status.split_whitespace().nth(1).unwrap_or_else(|| panic!("bad status line {status:?}")).parse().unwrap();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().unwrap();
            }
        }
    }
    let mut b = vec![0; len];
    conn.read_exact(&mut b).unwrap();
    (code, String::from_utf8(b).unwrap())
}

pub fn connect(sock: &Path) -> BufReader<UnixStream> {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    BufReader::new(s)
}

pub fn call(sock: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    exchange(&mut connect(sock), method, path, body)
}

pub fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

