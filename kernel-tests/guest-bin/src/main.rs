//! ktest-cachefiles: throwaway guest-side tools for the QEMU kernel tests.
//!
//! THIS IS NOT erofsd. It is a minimal, single-threaded cachefiles on-demand
//! server used only to prove that a test kernel can serve EROFS-over-fscache
//! mounts. It will be replaced by the real erofsd daemon in the guest tests.
//!
//!   ktest-cachefiles probe --dir DIR [--tag TAG]
//!       Checks /dev/cachefiles behaviour: exclusive open, command errors,
//!       `dir`/`tag`/`bind ondemand`, empty read, double bind.
//!   ktest-cachefiles serve --dir DIR [--tag TAG] --object KEY=FILE... \
//!                          [--ready-file PATH] [--log PATH]
//!       Binds an on-demand cache and serves every OPEN whose cookie key is a
//!       KEY from FILE (copen size = file length), every READ by copying the
//!       range from FILE. Runs until SIGTERM/SIGINT; exit status 1 if any
//!       request could not be served.

mod msg;

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

const DEV: &str = "/dev/cachefiles";
/// `CACHEFILES_IOC_READ_COMPLETE = _IOW(0x98, 1, int)` on x86-64; argument is msg_id by value.
const IOC_READ_COMPLETE: libc::c_ulong = 0x4004_9801;
/// `CACHEFILES_MSG_MAX_SIZE`: a read buffer this large always fits one message.
const MSG_MAX: usize = 1024;
const PAGE: u64 = 4096;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("probe") => Opts::parse(&args[1..]).and_then(|o| probe(&o)),
        Some("serve") => Opts::parse(&args[1..]).and_then(|o| serve(&o)),
        _ => Err("usage: ktest-cachefiles probe|serve --dir DIR [--tag TAG] [--object KEY=FILE]... \
                  [--ready-file PATH] [--log PATH]"
            .to_string()),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ktest-cachefiles: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Default)]
struct Opts {
    dir: String,
    tag: Option<String>,
    objects: Vec<(String, String)>,
    ready_file: Option<String>,
    log: Option<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = || it.next().cloned().ok_or_else(|| format!("{a} needs a value"));
            match a.as_str() {
                "--dir" => o.dir = val()?,
                "--tag" => o.tag = Some(val()?),
                "--object" => {
                    let v = val()?;
                    let (k, f) = v.split_once('=').ok_or_else(|| format!("--object {v}: want KEY=FILE"))?;
                    o.objects.push((k.to_string(), f.to_string()));
                }
                "--ready-file" => o.ready_file = Some(val()?),
                "--log" => o.log = Some(val()?),
                other => return Err(format!("unknown argument {other}")),
            }
        }
        if o.dir.is_empty() {
            return Err("--dir is required".into());
        }
        Ok(o)
    }
}

fn open_dev() -> io::Result<OwnedFd> {
    let path = std::ffi::CString::new(DEV).unwrap();
    // SAFETY: plain open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// One text command = one write(2) (the kernel parses each write on its own).
fn cmd(fd: &OwnedFd, c: &str) -> io::Result<()> {
    // SAFETY: writing from a valid buffer to an open fd.
    let n = unsafe { libc::write(fd.as_raw_fd(), c.as_ptr().cast(), c.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cmd_ok(fd: &OwnedFd, c: &str) -> Result<(), String> {
    cmd(fd, c).map_err(|e| format!("command {c:?} failed: {e}"))
}

fn expect_errno(fd: &OwnedFd, c: &str, errno: i32, name: &str) -> Result<(), String> {
    match cmd(fd, c) {
        Ok(()) => Err(format!("command {c:?} succeeded, expected {name}")),
        Err(e) if e.raw_os_error() == Some(errno) => {
            println!("probe: ok: {c:?} -> {name}");
            Ok(())
        }
        Err(e) => Err(format!("command {c:?}: got {e}, expected {name}")),
    }
}

/// read(2) one message; Ok(0) means nothing pending (the device never blocks).
fn read_msg(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: reading into a valid, writable buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

fn probe(o: &Opts) -> Result<(), String> {
    let meta = std::fs::metadata(DEV).map_err(|e| format!("{DEV}: {e} (CACHEFILES=y and devtmpfs?)"))?;
    if !meta.file_type().is_char_device() {
        return Err(format!("{DEV} is not a character device"));
    }
    println!("probe: ok: {DEV} is a character device");
    let fd = open_dev().map_err(|e| format!("open {DEV}: {e}"))?;
    println!("probe: ok: opened {DEV}");
    match open_dev() {
        Ok(_) => return Err(format!("second open of {DEV} succeeded; it must be exclusive")),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => println!("probe: ok: second open -> EBUSY"),
        Err(e) => return Err(format!("second open of {DEV}: got {e}, expected EBUSY")),
    }
    expect_errno(&fd, "frobnicate 1", libc::EOPNOTSUPP, "EOPNOTSUPP")?;
    cmd_ok(&fd, &format!("dir {}", o.dir))?;
    if let Some(t) = &o.tag {
        cmd_ok(&fd, &format!("tag {t}"))?;
    }
    cmd_ok(&fd, "bind ondemand").map_err(|e| format!("{e} (EINVAL here means no CACHEFILES_ONDEMAND)"))?;
    println!("probe: ok: dir/tag/bind ondemand accepted");
    let mut buf = [0u8; MSG_MAX];
    match read_msg(&fd, &mut buf) {
        Ok(0) => println!("probe: ok: read with nothing pending -> 0"),
        Ok(n) => return Err(format!("read returned a {n}-byte message with no mount active")),
        Err(e) => return Err(format!("read on idle cache: {e}")),
    }
    expect_errno(&fd, "bind ondemand", libc::EBUSY, "EBUSY (already bound)")?;
    expect_errno(&fd, "copen 12345,0", libc::EINVAL, "EINVAL (unknown msg_id)")?;
    println!("probe: all checks passed");
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// One cache object the kernel opened: its anon fd and where its bytes come from.
struct Object {
    key: String,
    anon: OwnedFd,
    src: File,
    size: u64,
}

#[derive(Default)]
struct Stats {
    opens: u64,
    reads: u64,
    bytes: u64,
    closes: u64,
    errors: u64,
}

struct Server {
    dev: OwnedFd,
    sources: HashMap<String, String>,
    objects: HashMap<u32, Object>,
    log: Option<File>,
    stats: Stats,
}

impl Server {
    fn log(&mut self, line: String) {
        eprintln!("ktest-cachefiles: {line}");
        if let Some(f) = &mut self.log {
            let _ = writeln!(f, "{line}");
        }
    }

    fn error(&mut self, line: String) {
        self.stats.errors += 1;
        self.log(format!("ERROR {line}"));
    }

    fn handle(&mut self, buf: &[u8]) {
        let m = match msg::parse(buf) {
            Ok(m) => m,
            Err(e) => return self.error(format!("bad message: {e}")),
        };
        match m.body {
            msg::Body::Open { volume_key, cookie_key, fd, flags } => {
                self.stats.opens += 1;
                // SAFETY: the kernel installed `fd` in our table for this OPEN; we own it now.
                let anon = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
                // SAFETY: fcntl on a descriptor we own. The anon fd is not O_CLOEXEC.
                unsafe { libc::fcntl(anon.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
                let (vol, key) = (msg::key_str(volume_key), msg::key_str(cookie_key));
                let src = self.sources.get(&key).cloned();
                let opened = src.as_ref().map(|p| File::open(p).and_then(|f| Ok((f.metadata()?.len(), f))));
                match opened {
                    Some(Ok((size, src))) => {
                        let c = format!("copen {},{size}", m.msg_id);
                        if let Err(e) = cmd(&self.dev, &c) {
                            return self.error(format!("{c}: {e}"));
                        }
                        self.log(format!(
                            "OPEN id={} obj={} volume={vol} cookie={key} flags={flags} size={size}",
                            m.msg_id, m.object_id
                        ));
                        self.objects.insert(m.object_id, Object { key, anon, src, size });
                    }
                    other => {
                        let why = match other {
                            None => "no --object for this cookie".to_string(),
                            Some(Err(e)) => format!("{}: {e}", src.unwrap_or_default()),
                            Some(Ok(_)) => unreachable!(),
                        };
                        // Reject, and drop the anon fd (else it pins the cache).
                        let _ = cmd(&self.dev, &format!("copen {},-{}", m.msg_id, libc::ENOENT));
                        drop(anon);
                        self.error(format!("OPEN volume={vol} cookie={key} rejected: {why}"));
                    }
                }
            }
            msg::Body::Read { off, len } => {
                self.stats.reads += 1;
                if let Err(e) = self.serve_read(m.msg_id, m.object_id, off, len) {
                    self.error(format!("READ id={} obj={} off={off} len={len}: {e}", m.msg_id, m.object_id));
                }
            }
            msg::Body::Close => {
                self.stats.closes += 1;
                match self.objects.remove(&m.object_id) {
                    Some(o) => self.log(format!("CLOSE obj={} cookie={}", m.object_id, o.key)),
                    None => self.error(format!("CLOSE for unknown obj={}", m.object_id)),
                }
            }
        }
    }

    /// Copy [off, off+len) of the source into the cache file, then complete the request.
    /// The anon fd writes with O_DIRECT: 4 KiB-aligned buffer, offset and length, zero tail.
    fn serve_read(&mut self, msg_id: u32, obj_id: u32, off: u64, len: u64) -> Result<(), String> {
        let obj = self.objects.get(&obj_id).ok_or("unknown object")?;
        if !off.is_multiple_of(PAGE) {
            return Err("offset not 4 KiB aligned".into());
        }
        // Bound the allocation: never trust len beyond the object plus one page of padding.
        let end = off.checked_add(len).ok_or("off+len overflows")?;
        if end > obj.size.div_ceil(PAGE) * PAGE + PAGE * 1024 {
            return Err(format!("range beyond object size {}", obj.size));
        }
        let n = len.div_ceil(PAGE) * PAGE;
        let mut raw = vec![0u8; n as usize + PAGE as usize];
        let skew = raw.as_ptr().align_offset(PAGE as usize);
        let buf = &mut raw[skew..skew + n as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match obj.src.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break, // past EOF: rest stays zero
                Ok(k) => got += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("source read: {e}")),
            }
        }
        let anon = obj.anon.as_raw_fd();
        // ENOBUFS right after copen means the backing file is not set yet: retry briefly.
        let mut tries = 0;
        loop {
            // SAFETY: pwrite from a valid buffer to our anon fd.
            let w = unsafe { libc::pwrite(anon, buf.as_ptr().cast(), buf.len(), off as libc::off_t) };
            if w >= 0 {
                // Pre-6.13 kernels may report the page-rounded length; >= requested is success.
                if (w as usize) < buf.len() {
                    return Err(format!("short pwrite {w} of {}", buf.len()));
                }
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) && tries < 20 {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            // Still complete the request so the reader gets EIO instead of hanging.
            // SAFETY: ioctl with an integer argument on our anon fd.
            unsafe { libc::ioctl(anon, IOC_READ_COMPLETE, msg_id as libc::c_ulong) };
            return Err(format!("pwrite: {e}"));
        }
        // SAFETY: as above.
        if unsafe { libc::ioctl(anon, IOC_READ_COMPLETE, msg_id as libc::c_ulong) } < 0 {
            return Err(format!("READ_COMPLETE ioctl: {}", io::Error::last_os_error()));
        }
        self.stats.bytes += len;
        let key = self.objects[&obj_id].key.clone();
        self.log(format!("READ id={msg_id} obj={obj_id} cookie={key} off={off} len={len}"));
        Ok(())
    }
}

fn serve(o: &Opts) -> Result<(), String> {
    if o.objects.is_empty() {
        return Err("serve needs at least one --object KEY=FILE".into());
    }
    // SAFETY: installing an async-signal-safe handler that only stores an atomic.
    unsafe {
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
    let dev = open_dev().map_err(|e| format!("open {DEV}: {e}"))?;
    cmd_ok(&dev, &format!("dir {}", o.dir))?;
    if let Some(t) = &o.tag {
        cmd_ok(&dev, &format!("tag {t}"))?;
    }
    cmd_ok(&dev, "bind ondemand")?;
    let log = match &o.log {
        Some(p) => Some(File::create(p).map_err(|e| format!("{p}: {e}"))?),
        None => None,
    };
    let mut s = Server {
        dev,
        sources: o.objects.iter().cloned().collect(),
        objects: HashMap::new(),
        log,
        stats: Stats::default(),
    };
    s.log(format!("bound on-demand cache at {}", o.dir));
    if let Some(p) = &o.ready_file {
        File::create(p).map_err(|e| format!("{p}: {e}"))?;
    }
    let mut buf = [0u8; MSG_MAX];
    while !STOP.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd { fd: s.dev.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: poll on one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 200) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("poll: {e}"));
        }
        if r == 0 {
            continue;
        }
        // Drain: read() returns one message at a time, 0 when none is pending.
        let mut got_any = false;
        loop {
            match read_msg(&s.dev, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got_any = true;
                    s.handle(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => break,
                Err(e) => {
                    s.error(format!("read {DEV}: {e}"));
                    break;
                }
            }
        }
        if !got_any {
            // Kernels before 6.8 report POLLIN while requests are merely in flight; don't spin.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let st = &s.stats;
    let summary = format!(
        "stopping: {} opens, {} reads, {} bytes, {} closes, {} errors",
        st.opens, st.reads, st.bytes, st.closes, st.errors
    );
    let errors = st.errors;
    s.log(summary);
    if errors > 0 {
        return Err(format!("{errors} request(s) failed"));
    }
    Ok(())
}
