//! ktest-nydus: nydus-snapshotter's side of the nydusd API, for the guest tests
//! erofsd-nydusd-*.sh (std + libc only: the guest has no curl).
//!
//!   ktest-nydus req SOCK METHOD PATH [BODY]   one HTTP/1.1 request; prints `STATUS BODY`;
//!                                             exit 0 only for 200/204 (the snapshotter's rule)
//!   ktest-nydus wait-state SOCK STATE [SECS]  GET /api/v1/daemon until `"state":"STATE"`
//!   ktest-nydus watch SOCK FILE               hold an idle connection (the snapshotter's
//!                                             liveness watch); write `HUP` to FILE on hang-up
//!   ktest-nydus holder SOCK                   the snapshotter's supervisor socket: a connection
//!                                             that sends (sendfd) has its bytes + fd kept; one
//!                                             that sends nothing within 500 ms (takeover) gets them

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn request(sock: &str, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String), String> {
    let s = UnixStream::connect(sock).map_err(|e| format!("connect {sock}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: unix\r\n");
    if let Some(b) = body {
        req += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len());
    }
    req += "\r\n";
    req += body.unwrap_or("");
    (&s).write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let code: u16 = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or(format!("bad status line {line:?}"))?;
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).map_err(|e| e.to_string())?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                len = v.trim().parse().map_err(|_| "bad content-length")?;
            }
        }
    }
    let mut b = vec![0; len];
    r.read_exact(&mut b).map_err(|e| e.to_string())?;
    Ok((code, String::from_utf8_lossy(&b).into_owned()))
}

fn send_fd(sock: RawFd, data: &[u8], fd: RawFd) -> std::io::Result<()> {
    unsafe {
        let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut _, iov_len: data.len() };
        let space = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut _;
        msg.msg_controllen = space as _;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut RawFd, fd);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Reads until EOF: (bytes, first fd received).
fn recv_all(sock: RawFd) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut data = Vec::new();
    let mut first: Option<OwnedFd> = None;
    loop {
        let mut buf = vec![0u8; 65536];
        let mut cbuf = vec![0u8; 1024];
        let n = unsafe {
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut _, iov_len: buf.len() };
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr() as *mut _;
            msg.msg_controllen = cbuf.len() as _;
            let n = libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                    for i in 0..count {
                        let fd = std::ptr::read_unaligned((libc::CMSG_DATA(c) as *const RawFd).add(i));
                        let owned = OwnedFd::from_raw_fd(fd);
                        if first.is_none() {
                            first = Some(owned);
                        }
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
            n as usize
        };
        if n == 0 {
            return Ok((data, first));
        }
        data.extend_from_slice(&buf[..n]);
    }
}

fn holder(path: &str) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    let mut saved: Option<(Vec<u8>, OwnedFd)> = None;
    for conn in l.incoming() {
        let conn = conn.map_err(|e| e.to_string())?;
        let mut pfd = libc::pollfd { fd: conn.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ready = unsafe { libc::poll(&mut pfd, 1, 500) };
        if ready > 0 {
            match recv_all(conn.as_raw_fd()) {
                Ok((data, Some(fd))) => {
                    eprintln!("holder: sendfd: {} bytes + fd kept", data.len());
                    saved = Some((data, fd));
                }
                Ok((data, None)) => eprintln!("holder: a sender sent {} bytes and NO fd", data.len()),
                Err(e) => eprintln!("holder: receive: {e}"),
            }
        } else if let Some((data, fd)) = &saved {
            match send_fd(conn.as_raw_fd(), data, fd.as_raw_fd()) {
                Ok(()) => eprintln!("holder: takeover: {} bytes + fd handed over", data.len()),
                Err(e) => eprintln!("holder: takeover send: {e}"),
            }
        } else {
            eprintln!("holder: takeover with nothing saved");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let r: Result<bool, String> = match a.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["req", sock, method, path, rest @ ..] => request(sock, method, path, rest.first().copied()).map(|(code, body)| {
            println!("{code} {body}");
            code == 200 || code == 204
        }),
        ["wait-state", sock, state, rest @ ..] => {
            let secs: u64 = rest.first().and_then(|s| s.parse().ok()).unwrap_or(10);
            let t = Instant::now();
            let want = format!("\"state\":\"{state}\"");
            loop {
                match request(sock, "GET", "/api/v1/daemon", None) {
                    Ok((200, b)) if b.contains(&want) => break Ok(true),
                    other if t.elapsed() > Duration::from_secs(secs) => {
                        eprintln!("wait-state: last answer {other:?}");
                        break Ok(false);
                    }
                    _ => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        ["watch", sock, file] => match UnixStream::connect(sock) {
            Ok(mut s) => {
                let mut b = [0u8; 64];
                let n = s.read(&mut b);
                let _ = std::fs::write(file, format!("HUP {n:?}\n"));
                Ok(true)
            }
            Err(e) => Err(format!("connect {sock}: {e}")),
        },
        ["holder", sock] => holder(sock).map(|_| true),
        _ => Err("usage: ktest-nydus req SOCK METHOD PATH [BODY] | wait-state SOCK STATE [SECS] | watch SOCK FILE | holder SOCK".into()),
    };
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ktest-nydus: {e}");
            ExitCode::from(2)
        }
    }
}
