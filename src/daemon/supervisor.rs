//! Keeping kernel channels alive across a daemon crash.
//!
//! Some kernel channels die with their last file descriptor: when the last fd of an open
//! `/dev/cachefiles` goes, the cache is dead and every mount on it fails until remounted; a
//! fanotify group's pending events are answered "allow" when the group closes. So the daemon
//! parks a duplicate of each such fd with a *holder* that outlives it, and a restarted daemon
//! takes the fd back instead of opening a new channel.
//!
//! Holders:
//! * **our supervisor**, the default of `erofsd daemon` (whatever else the command line says,
//!   README, demo and systemd unit alike): a small parent process that runs the daemon as a
//!   child, keeps the fds it is sent over a unix socket (SCM_RIGHTS), hands them to the next
//!   child, and restarts a child that died abnormally (e.g. SIGKILL). A child that exits with an
//!   error before anything was parked failed to start: it is not restarted, and the supervisor
//!   exits with its code. `--supervise` is still accepted and changes nothing;
//! * **systemd's FD store**, only for a daemon run with `--unsafe-no-supervisor` under a unit
//!   that offers one (`$NOTIFY_SOCKET`): the daemon sends `FDSTORE=1` + `FDNAME=<name>` with the
//!   fd; on restart systemd passes it back as `LISTEN_FDS` / `LISTEN_FDNAMES`. No test has run
//!   this under a real systemd, so nothing relies on it: the shipped unit runs the supervisor;
//! * none: `--unsafe-no-supervisor` without an FD store. The daemon warns loudly at start.
//!
//! Front-ends use the process-wide [`fd_store`]: `take(name)` at start, `store(name, fd)` after
//! setting a channel up, `remove(name)` on a clean shutdown (so the holder lets the channel go).
//!
//! Supervisor protocol (SOCK_SEQPACKET socketpair, child end passed as `EROFSD_SUPERVISOR_FD`,
//! whose presence also tells `erofsd daemon` that it is the child and must not supervise):
//! child → `HELLO`; supervisor → one `FD <name>` message per held fd (fd attached), then `END`.
//! child → `STORE <name>` (fd attached) | `REMOVE <name>` | `STOPPING` (a clean shutdown has
//! begun). Nothing is answered to those.
//!
//! The two processes guard each other. The supervisor restarts a worker that dies; a worker
//! whose supervisor dies (its socket reaches EOF) starts a new one in *adopt* mode
//! (`EROFSD_ADOPT=<worker pid>:<socket fd>`, same command line) and parks every fd it has
//! parked before with it. So one SIGKILL, of either process, never leaves the kernel channels
//! without a holder; only both dying together (a cgroup kill) does, and that no process of ours
//! can cover: the kernel has no fail-closed fanotify group (docs/fanotify.md).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType,
    UnixAddr,
};
use tracing::{info, warn};

/// Environment variable naming the child's end of the supervisor socket.
pub const SUPERVISOR_FD_ENV: &str = "EROFSD_SUPERVISOR_FD";
/// Environment variable telling a new supervisor to adopt a running worker: `<pid>:<fd>`.
const ADOPT_ENV: &str = "EROFSD_ADOPT";
/// A worker restarts its supervisor at most this often within [`RESTART_WINDOW`].
const MAX_REGUARDS: usize = 5;
const MSG_MAX: usize = 512;

/// Where parked fds go.
enum Holder {
    /// No holder: a crash loses the channels (the daemon says so at start).
    None,
    Supervisor(OwnedFd),
    /// `$NOTIFY_SOCKET` address (a path, or `@name` for the abstract namespace).
    Systemd(String),
}

pub struct FdStore {
    holder: Holder,
    /// Pid of our supervisor, when the holder is one.
    holder_pid: Option<u32>,
    /// Fds handed to us at start, not yet taken by a front-end.
    inherited: HashMap<String, OwnedFd>,
    /// Duplicates of everything the supervisor holds for us, to park again with a new
    /// supervisor if this one dies.
    parked: HashMap<String, OwnedFd>,
    /// A clean shutdown has begun (told to every supervisor, the next one included).
    stopping: bool,
}

static STORE: OnceLock<Mutex<FdStore>> = OnceLock::new();

/// The process-wide store, set up from the environment on first use.
pub fn fd_store() -> &'static Mutex<FdStore> {
    STORE.get_or_init(|| Mutex::new(FdStore::from_env()))
}

impl FdStore {
    fn from_env() -> FdStore {
        if let Some(fd) = std::env::var(SUPERVISOR_FD_ENV).ok().and_then(|v| v.parse::<RawFd>().ok()) {
            std::env::remove_var(SUPERVISOR_FD_ENV);
            // SAFETY: the supervisor created this fd for us and passed its number; we own it now.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = set_cloexec(sock.as_raw_fd());
            let inherited = match hello(&sock) {
                Ok(fds) => fds,
                Err(e) => {
                    warn!("supervisor socket: {e}; running without a holder");
                    return FdStore::detached();
                }
            };
            if !inherited.is_empty() {
                info!("supervisor handed back {} fd(s): {:?}", inherited.len(), inherited.keys().collect::<Vec<_>>());
            }
            // The supervisor keeps holding what it handed back: remember duplicates.
            let parked = inherited.iter().filter_map(|(n, f)| Some((n.clone(), f.try_clone().ok()?))).collect();
            match sock.try_clone() {
                Ok(watch) => {
                    if let Err(e) = std::thread::Builder::new().name("erofsd-holder".into()).spawn(move || watch_supervisor(watch)) {
                        warn!("cannot watch the supervisor ({e}): if it dies, a later crash of this daemon has no holder");
                    }
                }
                Err(e) => warn!("cannot watch the supervisor ({e}): if it dies, a later crash of this daemon has no holder"),
            }
            // SAFETY: getppid has no preconditions.
            let ppid = unsafe { libc::getppid() } as u32;
            return FdStore { holder: Holder::Supervisor(sock), holder_pid: Some(ppid), inherited, parked, stopping: false };
        }
        let inherited = systemd_listen_fds();
        let holder = match std::env::var("NOTIFY_SOCKET") {
            Ok(addr) if !addr.is_empty() => Holder::Systemd(addr),
            _ => Holder::None,
        };
        FdStore { holder, inherited, ..FdStore::detached() }
    }

    /// A store with no holder (tests, `erofsd doctor`).
    pub fn detached() -> FdStore {
        FdStore { holder: Holder::None, holder_pid: None, inherited: HashMap::new(), parked: HashMap::new(), stopping: false }
    }

    /// The supervisor's pid, when the holder is our supervisor.
    pub fn holder_pid(&self) -> Option<u32> {
        self.holder_pid
    }

    pub fn describe(&self) -> &'static str {
        match self.holder {
            Holder::None => "none",
            Holder::Supervisor(_) => "erofsd supervisor",
            Holder::Systemd(_) => "systemd fd store",
        }
    }

    pub fn has_holder(&self) -> bool {
        !matches!(self.holder, Holder::None)
    }

    /// The fd parked under `name` by a previous daemon, if any.
    pub fn take(&mut self, name: &str) -> Option<OwnedFd> {
        self.inherited.remove(name)
    }

    /// Whether a previous daemon's fd under `name` is waiting to be taken.
    pub fn holds(&self, name: &str) -> bool {
        self.inherited.contains_key(name)
    }

    /// Every fd parked by a previous daemon under a name starting with `prefix`.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, OwnedFd)> {
        let names: Vec<String> = self.inherited.keys().filter(|n| n.starts_with(prefix)).cloned().collect();
        names.into_iter().filter_map(|n| self.inherited.remove(&n).map(|f| (n, f))).collect()
    }

    /// Hands the store an fd received some other way (nydusd's `takeover` over the
    /// snapshotter's supervisor socket), for a front-end to [`FdStore::take`].
    pub fn inherit(&mut self, name: &str, fd: OwnedFd) {
        self.inherited.insert(name.to_string(), fd);
    }

    /// Parks a duplicate of `fd` under `name` with the holder (no-op without one).
    pub fn store(&mut self, name: &str, fd: BorrowedFd<'_>) -> io::Result<()> {
        check_name(name)?;
        match &self.holder {
            Holder::None => Ok(()),
            Holder::Supervisor(sock) => {
                send_with_fd(sock.as_fd(), format!("STORE {name}").as_bytes(), Some(fd))?;
                self.parked.insert(name.to_string(), fd.try_clone_to_owned()?);
                Ok(())
            }
            Holder::Systemd(addr) => sd_notify(addr, &format!("FDSTORE=1\nFDNAME={name}"), Some(fd)),
        }
    }

    /// Tells the holder to let `name` go (clean shutdown: the channel may close now).
    pub fn remove(&mut self, name: &str) -> io::Result<()> {
        check_name(name)?;
        match &self.holder {
            Holder::None => Ok(()),
            Holder::Supervisor(sock) => {
                self.parked.remove(name);
                send_with_fd(sock.as_fd(), format!("REMOVE {name}").as_bytes(), None)
            }
            Holder::Systemd(addr) => sd_notify(addr, &format!("FDSTOREREMOVE=1\nFDNAME={name}"), None),
        }
    }

    /// Tells our supervisor that a clean shutdown has begun: when this process exits, what is
    /// still parked is left for the failsafe, not handed to a restarted daemon. (Our own child
    /// exit status says the same to the supervisor that started us; one that adopted us cannot
    /// see that status.)
    pub fn stopping(&mut self) {
        self.stopping = true;
        if let Holder::Supervisor(sock) = &self.holder {
            if let Err(e) = send_with_fd(sock.as_fd(), b"STOPPING", None) {
                warn!("telling the supervisor we stop: {e}");
            }
        }
    }

    /// No holder any more: the supervisor could not be replaced.
    fn lose_holder(&mut self) {
        self.holder = Holder::None;
        self.holder_pid = None;
    }

    /// Starts a new supervisor that adopts this process, parks everything with it and makes it
    /// the holder. Returns our socket end (to watch) and the new supervisor's process.
    fn reguard(&mut self) -> io::Result<(OwnedFd, std::process::Child)> {
        // /proc/self/exe still runs if the binary was replaced on disk since we started.
        // Same command line: supervision is the default (`erofsd daemon` without
        // `--unsafe-no-supervisor`, which a supervised worker never has).
        let mut cmd = std::process::Command::new("/proc/self/exe");
        cmd.args(std::env::args_os().skip(1));
        // Its own session: a terminal's ^C reaches the daemon once, not twice.
        let (child, ours) = spawn_with_socket(cmd, ADOPT_ENV, |fd| format!("{}:{fd}", std::process::id()), true)?;
        for (name, f) in &self.parked {
            send_with_fd(ours.as_fd(), format!("STORE {name}").as_bytes(), Some(f.as_fd()))?;
        }
        if self.stopping {
            send_with_fd(ours.as_fd(), b"STOPPING", None)?;
        }
        let watch = ours.try_clone()?;
        self.holder = Holder::Supervisor(ours);
        self.holder_pid = Some(child.id());
        Ok((watch, child))
    }
}

/// Worker side: waits for the supervisor's end of the socket to close (it died), then starts a
/// new supervisor, again and again, so that a crash of this process always finds a holder.
fn watch_supervisor(mut sock: OwnedFd) {
    let mut ours: Option<std::process::Child> = None;
    let mut starts: Vec<Instant> = Vec::new();
    loop {
        // Nothing is sent to a worker after the hand-back, so anything but EOF is ignored.
        while let Ok(Some(_)) = recv_with_fds(sock.as_fd()) {}
        if let Some(mut c) = ours.take() {
            let _ = c.try_wait();
        }
        let mut store = fd_store().lock().expect("fd store");
        let now = Instant::now();
        starts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if starts.len() >= MAX_REGUARDS {
            tracing::error!(
                "the supervisor died {MAX_REGUARDS} times within {RESTART_WINDOW:?}; running WITHOUT a holder: if this daemon dies now, readers of unfilled ranges are not protected"
            );
            store.lose_holder();
            return;
        }
        starts.push(now);
        warn!("the supervisor (fd holder, pid {:?}) is gone; starting a new one", store.holder_pid);
        match store.reguard() {
            Ok((watch, child)) => {
                info!("new supervisor pid {} holds {} fd(s) for us", child.id(), store.parked.len());
                sock = watch;
                ours = Some(child);
            }
            Err(e) => {
                tracing::error!("starting a new supervisor: {e}; running WITHOUT a holder");
                store.lose_holder();
                return;
            }
        }
    }
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() > 255 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad fd name {name:?}")));
    }
    Ok(())
}

fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_SETFD with a flag on an fd we own.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn send_with_fd(sock: BorrowedFd<'_>, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let iov = [IoSlice::new(msg)];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = raw.as_ref().map(|r| vec![ControlMessage::ScmRights(r)]).unwrap_or_default();
    sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    Ok(())
}

/// Receives one message and the fds attached to it. `Ok(None)` at EOF.
fn recv_with_fds(sock: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
    let mut buf = [0u8; MSG_MAX];
    let mut cmsg = nix::cmsg_space!([RawFd; 4]);
    loop {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let r = match recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
            Ok(r) => r,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        let mut fds = Vec::new();
        for c in r.cmsgs()? {
            if let ControlMessageOwned::ScmRights(list) = c {
                // SAFETY: SCM_RIGHTS installed these fds in our table for this message.
                fds.extend(list.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }));
            }
        }
        let n = r.bytes;
        if n == 0 && fds.is_empty() {
            return Ok(None);
        }
        return Ok(Some((buf[..n].to_vec(), fds)));
    }
}

/// Child side: asks the supervisor for what it holds.
fn hello(sock: &OwnedFd) -> io::Result<HashMap<String, OwnedFd>> {
    send_with_fd(sock.as_fd(), b"HELLO", None)?;
    let mut out = HashMap::new();
    loop {
        let Some((msg, mut fds)) = recv_with_fds(sock.as_fd())? else {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "supervisor closed the socket"));
        };
        if msg == b"END" {
            return Ok(out);
        }
        match (std::str::from_utf8(&msg).ok().and_then(|s| s.strip_prefix("FD ")), fds.pop()) {
            (Some(name), Some(fd)) => {
                out.insert(name.to_string(), fd);
            }
            _ => warn!("supervisor sent an unexpected message {:?}", String::from_utf8_lossy(&msg)),
        }
    }
}

/// `LISTEN_FDS` / `LISTEN_FDNAMES` from systemd (only if `LISTEN_PID` is us).
fn systemd_listen_fds() -> HashMap<String, OwnedFd> {
    let mut out = HashMap::new();
    let pid_ok = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok()) == Some(std::process::id());
    let n = std::env::var("LISTEN_FDS").ok().and_then(|v| v.parse::<i32>().ok()).unwrap_or(0);
    if !pid_ok || n <= 0 {
        return out;
    }
    let names: Vec<String> =
        std::env::var("LISTEN_FDNAMES").unwrap_or_default().split(':').map(str::to_string).collect();
    for i in 0..n.min(1024) {
        let fd = 3 + i;
        let _ = set_cloexec(fd);
        // SAFETY: systemd passed fds 3..3+LISTEN_FDS to this process.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let name = names.get(i as usize).cloned().unwrap_or_else(|| "unknown".into());
        out.insert(name, owned);
    }
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    out
}

/// One datagram to systemd's notify socket, optionally with an fd.
fn sd_notify(addr: &str, state: &str, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let sock = nix::sys::socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    let ua = if let Some(abs) = addr.strip_prefix('@') {
        UnixAddr::new_abstract(abs.as_bytes())?
    } else {
        UnixAddr::new(addr)?
    };
    let iov = [IoSlice::new(state.as_bytes())];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = raw.as_ref().map(|r| vec![ControlMessage::ScmRights(r)]).unwrap_or_default();
    sendmsg(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, Some(&ua))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The supervisor process.

/// Restart policy: give up after this many abnormal exits within [`RESTART_WINDOW`].
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(30);

/// The daemon process a supervisor guards.
enum Worker {
    /// Started by us: its exit status says whether it crashed.
    Child(std::process::Child),
    /// A running daemon whose previous supervisor died ([`ADOPT_ENV`]). Not our child: its
    /// exit is seen as EOF on its socket, and a `STOPPING` message before it says "clean".
    Adopted(i32),
}

/// How a worker ended.
enum Ended {
    Clean,
    /// Error exit with nothing held: a failed start, not a crash.
    FailedToStart(i32),
    /// The worker we adopted died with nothing parked with us: nothing to hold, nothing to restart.
    AdoptedDiedEmpty,
    Crashed(String),
}

/// `EROFSD_ADOPT=<pid>:<fd>`, set by a worker that starts us to replace its dead supervisor.
fn adopt_from_env() -> Option<(i32, OwnedFd)> {
    let v = std::env::var(ADOPT_ENV).ok()?;
    std::env::remove_var(ADOPT_ENV);
    let (pid, fd) = v.split_once(':')?;
    let (pid, fd) = (pid.parse::<i32>().ok()?, fd.parse::<RawFd>().ok()?);
    let _ = set_cloexec(fd);
    // SAFETY: the worker that started us created this fd for us and passed its number.
    Some((pid, unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Starts `cmd` holding the far end of a new supervisor socket, whichever side is starting the
/// other: `env` is set to `value(fd number)`, the fd survives the exec, the signal mask (the
/// supervisor blocks the signals it waits for) is cleared, argv[0] is ours, and with `new_session` the child
/// gets a session of its own. Returns the child and our end of the socket.
fn spawn_with_socket(
    mut cmd: std::process::Command,
    env: &str,
    value: impl FnOnce(RawFd) -> String,
    new_session: bool,
) -> io::Result<(std::process::Child, OwnedFd)> {
    let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    let fd = theirs.as_raw_fd();
    cmd.env(env, value(fd));
    // Our argv[0], whichever side starts the other: a `nydusd` link dispatches on it.
    if let Some(arg0) = std::env::args_os().next() {
        cmd.arg0(arg0);
    }
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if new_session {
                libc::setsid();
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((child, ours))
}

/// Starts the daemon as our child with its end of a new supervisor socket.
fn spawn_worker(exe: &std::path::Path, args: &[OsString]) -> Result<(Worker, OwnedFd)> {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(args);
    let (child, ours) = spawn_with_socket(cmd, SUPERVISOR_FD_ENV, |fd| fd.to_string(), false)
        .with_context(|| format!("starting {}", exe.display()))?;
    Ok((Worker::Child(child), ours))
}

/// Becomes the supervisor of this same command line, unless this process is already the worker
/// a supervisor started (it finds the socket in its environment): then returns, and the caller
/// serves. The supervisor never returns: it exits with the worker's final code. `keep` filters
/// the arguments the worker gets.
pub fn supervise_unless_worker(keep: impl Fn(&std::ffi::OsStr) -> bool) -> Result<()> {
    if std::env::var_os(SUPERVISOR_FD_ENV).is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe()?;
    let args: Vec<OsString> = std::env::args_os().skip(1).filter(|a| keep(a)).collect();
    let code = run(&exe, &args)?;
    std::process::exit(code);
}

/// Runs `exe args…` as the daemon child, holding the fds it parks, restarting it when it dies
/// abnormally. Returns the exit code to use. SIGTERM/SIGINT are forwarded to the child; once the
/// child exits cleanly the held fds are closed and the supervisor exits too. Started by a
/// worker whose supervisor died, it first guards that worker, then restarts as usual.
pub fn run(exe: &std::path::Path, args: &[OsString]) -> Result<i32> {
    // Block the signals we wait for before any thread exists, so sigwait sees them all.
    let mut set = nix::sys::signal::SigSet::empty();
    for s in [nix::sys::signal::SIGTERM, nix::sys::signal::SIGINT, nix::sys::signal::SIGCHLD] {
        set.add(s);
    }
    set.thread_block().context("blocking signals")?;

    let held: Arc<Mutex<HashMap<String, OwnedFd>>> = Arc::new(Mutex::new(HashMap::new()));
    let mut restarts: Vec<Instant> = Vec::new();
    let mut adopt = adopt_from_env();
    loop {
        let (mut worker, ours) = match adopt.take() {
            Some((pid, sock)) => {
                info!("supervisor: guarding the running daemon (pid {pid}), whose previous supervisor died");
                (Worker::Adopted(pid), sock)
            }
            None => spawn_worker(exe, args)?,
        };
        let pid = match &worker {
            Worker::Child(c) => c.id() as i32,
            Worker::Adopted(p) => *p,
        };
        info!("supervisor: daemon pid {pid}, holding {} fd(s)", held.lock().expect("held").len());
        let stopping = Arc::new(AtomicBool::new(false));
        let eof = Arc::new(AtomicBool::new(false));
        let (serve_held, serve_stopping, serve_eof) = (held.clone(), stopping.clone(), eof.clone());
        let wake_on_eof = matches!(worker, Worker::Adopted(_));
        let server = std::thread::Builder::new()
            .name("erofsd-supervise".into())
            .spawn(move || {
                serve_child(ours, serve_held, serve_stopping);
                // Set before the signal: the main thread may see the signal before this thread
                // has finished, so it looks at the flag, not at the thread.
                serve_eof.store(true, Ordering::SeqCst);
                if wake_on_eof {
                    // An adopted worker's exit raises no SIGCHLD here: raise one for sigwait.
                    // SAFETY: signalling ourselves.
                    unsafe { libc::kill(libc::getpid(), libc::SIGCHLD) };
                }
            })
            .context("supervisor thread")?;

        let ended = loop {
            let sig = set.wait().context("sigwait")?;
            match (sig, &mut worker) {
                (nix::sys::signal::SIGCHLD, Worker::Child(child)) => {
                    if let Some(st) = child.try_wait().context("waitpid")? {
                        break match st.code() {
                            Some(0) => Ended::Clean,
                            // An error exit before any channel was parked: the daemon could not
                            // start (bad config, device busy, cache locked); the same start would
                            // fail again, and there is nothing to keep.
                            Some(code) if held.lock().expect("held").is_empty() => Ended::FailedToStart(code),
                            _ => Ended::Crashed(describe_status(st)),
                        };
                    }
                }
                (nix::sys::signal::SIGCHLD, Worker::Adopted(_)) => {
                    if eof.load(Ordering::SeqCst) {
                        break if stopping.load(Ordering::SeqCst) {
                            Ended::Clean
                        } else if held.lock().expect("held").is_empty() {
                            // It died before it could park anything with us (both processes were
                            // killed together, one just later): we were started only to hold its
                            // channels, and a fresh daemon of ours would compete with whatever
                            // restarts it (nydus-snapshotter's recover_policy, systemd).
                            Ended::AdoptedDiedEmpty
                        } else {
                            Ended::Crashed("died (its exit status is not ours to see)".into())
                        };
                    }
                }
                (other, _) => {
                    info!("supervisor: {other:?}: stopping the daemon");
                    // SAFETY: signalling the worker we guard.
                    unsafe { libc::kill(pid, other as i32) };
                    let code = match &mut worker {
                        Worker::Child(child) => child.wait().context("waitpid")?.code().unwrap_or(1),
                        Worker::Adopted(_) => 0,
                    };
                    let _ = server.join();
                    release_held(&held, &set);
                    return Ok(code);
                }
            }
        };
        let _ = server.join();
        let how = match ended {
            Ended::Clean => {
                info!("supervisor: daemon exited cleanly");
                release_held(&held, &set);
                return Ok(0);
            }
            Ended::FailedToStart(code) => {
                info!("supervisor: daemon exited with {code} before parking any kernel channel: not restarted");
                return Ok(code);
            }
            Ended::AdoptedDiedEmpty => {
                warn!("supervisor: the daemon we adopted died before parking anything with us: not restarted");
                return Ok(1);
            }
            Ended::Crashed(how) => how,
        };
        let now = Instant::now();
        restarts.retain(|t| now.duration_since(*t) < RESTART_WINDOW);
        if restarts.len() >= MAX_RESTARTS {
            release_held(&held, &set);
            bail!("daemon {how}; {MAX_RESTARTS} restarts within {RESTART_WINDOW:?}, giving up");
        }
        restarts.push(now);
        warn!("supervisor: daemon {how}; restarting with {} held fd(s)", held.lock().expect("held").len());
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe_status(st: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match st.signal() {
        Some(s) => format!("killed by signal {s}"),
        None => format!("exited with {}", st.code().unwrap_or(-1)),
    }
}

/// Lets the held fds go, after the front-ends' last-resort steps for channels whose closing
/// would hurt readers (a fanotify group still marking files of live mounts).
fn release_held(held: &Mutex<HashMap<String, OwnedFd>>, signals: &nix::sys::signal::SigSet) {
    let mut held = held.lock().expect("held");
    crate::frontend::fanotify::failsafe::before_release(&held, &|| {
        let _ = signals.wait();
    });
    held.clear();
}

/// Serves one child's socket until it closes (the child exited).
fn serve_child(sock: OwnedFd, held: Arc<Mutex<HashMap<String, OwnedFd>>>, stopping: Arc<AtomicBool>) {
    loop {
        let (msg, mut fds) = match recv_with_fds(sock.as_fd()) {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                warn!("supervisor socket: {e}");
                return;
            }
        };
        let text = String::from_utf8_lossy(&msg).to_string();
        if text == "HELLO" {
            let held = held.lock().expect("held");
            for (name, fd) in held.iter() {
                if let Err(e) = send_with_fd(sock.as_fd(), format!("FD {name}").as_bytes(), Some(fd.as_fd())) {
                    warn!("supervisor: handing {name} back: {e}");
                }
            }
            let _ = send_with_fd(sock.as_fd(), b"END", None);
        } else if let Some(name) = text.strip_prefix("STORE ") {
            match fds.pop() {
                Some(fd) => {
                    info!("supervisor: holding {name}");
                    held.lock().expect("held").insert(name.to_string(), fd);
                }
                None => warn!("supervisor: STORE {name} without an fd"),
            }
        } else if let Some(name) = text.strip_prefix("REMOVE ") {
            held.lock().expect("held").remove(name);
        } else if text == "STOPPING" {
            stopping.store(true, Ordering::SeqCst);
        } else {
            warn!("supervisor: unknown message {text:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_and_hello_round_trip_fds() {
        let (a, b) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let held = Arc::new(Mutex::new(HashMap::new()));
        let h = held.clone();
        let t = std::thread::spawn(move || serve_child(a, h, Arc::new(AtomicBool::new(false))));
        let mut store = FdStore { holder: Holder::Supervisor(b.try_clone().unwrap()), ..FdStore::detached() };
        let file = tempfile::tempfile().unwrap();
        store.store("cachefiles", file.as_fd()).unwrap();
        // A second child asks for what is held and gets a working duplicate back.
        let got = hello(&b).unwrap();
        let fd = got.get("cachefiles").expect("held fd handed back");
        let f: std::fs::File = fd.try_clone().unwrap().into();
        use std::io::Write;
        (&f).write_all(b"x").unwrap();
        assert_eq!(file.metadata().unwrap().len(), 1, "same open file description");
        store.remove("cachefiles").unwrap();
        let got = hello(&b).unwrap();
        assert!(got.is_empty());
        assert!(store.store("bad name", file.as_fd()).is_err());
        drop(store);
        drop(b);
        t.join().unwrap();
    }
}
