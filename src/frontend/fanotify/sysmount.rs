//! File-backed EROFS mounts and their unmount.
//!
//! Always syscalls: util-linux `mount` turns a regular-file source into a loop device, and the
//! loop driver reads its backing file without the pre-content hook.
//!
//! Invariants:
//! - The mount is made with the new mount API (`fsopen`/`fsconfig`/`fsmount`/`move_mount`):
//!   `source` is the bootstrap, then one `device` string per blob device, in device-table
//!   order, so the number of blob devices has no limit of ours (classic mount(2) data is one
//!   page, which capped an image at about 40 layers).
//! - `fsconfig` strings are at most [`MAX_FSCONFIG_STRING`] bytes. A longer path goes as
//!   `/proc/self/fd/N` of an `O_PATH` descriptor held until the superblock exists (EROFS
//!   opens the files while `FSCONFIG_CMD_CREATE` runs).
//! - Failures carry the kernel's own words: the fs context's message log (read(2) on the
//!   fsopen descriptor) is drained into the error.
//! - Only if the kernel has no new mount API (`fsopen` gives `ENOSYS`) does mount(2) run,
//!   with its `device=` option list checked against the one-page limit before the call.
//! - Both ways mount read-only; no other flag.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use tracing::warn;

/// Classic mount(2) data is one page including the NUL.
const MAX_DATA: usize = 4095;

/// The kernel copies an `fsconfig` string with `strndup_user(value, 256)`: 255 bytes and the NUL.
const MAX_FSCONFIG_STRING: usize = 255;

/// The `device=` option list for `devices`, in device-table order (the mount(2) fallback).
pub fn device_options(devices: &[PathBuf]) -> Result<String> {
    let mut parts = Vec::with_capacity(devices.len());
    for d in devices {
        let s = d.to_str().ok_or_else(|| anyhow::anyhow!("device path {} is not UTF-8", d.display()))?;
        if s.contains(',') {
            bail!("device path {s} contains a comma, which mount options cannot carry");
        }
        parts.push(format!("device={s}"));
    }
    let data = parts.join(",");
    if data.len() > MAX_DATA {
        bail!(
            "{} blob devices need {} bytes of mount options, over the {MAX_DATA}-byte limit of mount(2), \
             and this kernel has no new mount API (fsopen: ENOSYS) to pass them one by one \
             (use a shorter cache_dir, or a kernel with fsopen)",
            devices.len(),
            data.len()
        );
    }
    Ok(data)
}

/// Mounts `boot` (a regular file) read-only at `mountpoint` with `devices` as its blob
/// devices, in device-table order.
pub fn mount_file_backed(boot: &Path, mountpoint: &Path, devices: &[PathBuf]) -> Result<()> {
    match mount_new_api(boot, mountpoint, devices)? {
        NewApi::Mounted => Ok(()),
        NewApi::Unavailable => {
            warn!("the kernel has no new mount API (fsopen: ENOSYS); mounting with mount(2) and its one-page option limit");
            mount_legacy(boot, mountpoint, devices)
        }
    }
}

/// Whether an `fsopen` failure means "no new mount API here, use mount(2)". Only `ENOSYS`:
/// every other error (no EROFS, no permission) would fail mount(2) the same way and is
/// reported as it is.
fn fall_back_to_mount2(fsopen_errno: Errno) -> bool {
    fsopen_errno == Errno::ENOSYS
}

enum NewApi {
    Mounted,
    Unavailable,
}

fn mount_legacy(boot: &Path, mountpoint: &Path, devices: &[PathBuf]) -> Result<()> {
    let data = device_options(devices)?;
    match nix::mount::mount(Some(boot), mountpoint, Some("erofs"), MsFlags::MS_RDONLY, Some(data.as_str())) {
        Ok(()) => Ok(()),
        Err(e) => {
            let hint = errno_hint(e);
            bail!("mount -t erofs {} {} -o {data}: {e}{hint}", boot.display(), mountpoint.display())
        }
    }
}

fn errno_hint(e: Errno) -> &'static str {
    match e {
        Errno::ENODEV => " (the kernel has no EROFS)",
        Errno::ENOTBLK => " (this kernel cannot mount a regular file: needs CONFIG_EROFS_FS_BACKED_BY_FILE, 6.12+)",
        Errno::EINVAL => " (bad bootstrap or device list: see dmesg)",
        _ => "",
    }
}

fn cstring(s: &OsStr) -> Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| anyhow::anyhow!("{} contains a NUL byte", Path::new(s).display()))
}

/// A path as an `fsconfig` string: itself if short enough, else `/proc/self/fd/N` of an
/// `O_PATH` descriptor that the caller keeps open until `FSCONFIG_CMD_CREATE` returned.
fn fsconfig_path(p: &Path, keep: &mut Vec<OwnedFd>) -> Result<CString> {
    if p.as_os_str().len() <= MAX_FSCONFIG_STRING {
        return cstring(p.as_os_str());
    }
    let fd = nix::fcntl::open(p, nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
        .map_err(|e| anyhow::anyhow!("open {}: {e}", p.display()))?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let s = format!("/proc/self/fd/{}", fd.as_raw_fd());
    keep.push(fd);
    Ok(CString::new(s).expect("no NUL"))
}

/// The fs context's message log, oldest first: each read(2) of the fsopen descriptor returns
/// one message ("e erofs: …", "w …", "i …") until `ENODATA`. `read_one` is that read.
fn drain_messages(mut read_one: impl FnMut(&mut [u8]) -> std::io::Result<usize>) -> Vec<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    // The kernel keeps at most 8 messages; the bound only guards against a misbehaving fd.
    for _ in 0..64 {
        match read_one(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let m = String::from_utf8_lossy(&buf[..n]);
                let m = m.trim_end_matches(['\n', '\0']);
                let m = match m.split_once(' ') {
                    Some(("e", rest)) => format!("error: {rest}"),
                    Some(("w", rest)) => format!("warning: {rest}"),
                    Some(("i", rest)) => format!("info: {rest}"),
                    _ => m.to_string(),
                };
                out.push(m);
            }
        }
    }
    out
}

/// `context` of a failed new-API step, the errno, a hint, and what the kernel logged.
fn step_error(fc: RawFd, context: String, e: Errno) -> anyhow::Error {
    let msgs = drain_messages(|buf| {
        // SAFETY: `buf` is a valid writable buffer of `buf.len()` bytes; `fc` is open.
        let n = unsafe { libc::read(fc, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    });
    let kernel = if msgs.is_empty() {
        String::from("; the kernel logged nothing to the mount context (see dmesg)")
    } else {
        format!("; the kernel says: {}", msgs.join("; "))
    };
    anyhow::anyhow!("{context}: {e}{}{kernel}", errno_hint(e))
}

fn syscall_result(r: libc::c_long) -> std::result::Result<libc::c_long, Errno> {
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r)
    }
}

fn fsconfig_string(fc: &OwnedFd, key: &str, value: &CString) -> std::result::Result<(), Errno> {
    let key = CString::new(key).expect("no NUL");
    // SAFETY: fsconfig(2) with two valid NUL-terminated strings that outlive the call and
    // aux 0, as FSCONFIG_SET_STRING requires; `fc` is an open fs context.
    syscall_result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fc.as_raw_fd(),
            libc::FSCONFIG_SET_STRING as libc::c_uint,
            key.as_ptr(),
            value.as_ptr(),
            0 as libc::c_int,
        )
    })
    .map(drop)
}

fn mount_new_api(boot: &Path, mountpoint: &Path, devices: &[PathBuf]) -> Result<NewApi> {
    let what = |step: &str| format!("mounting {} at {} ({} blob devices): {step}", boot.display(), mountpoint.display(), devices.len());
    let fstype = CString::new("erofs").expect("no NUL");
    // SAFETY: fsopen(2) with a valid NUL-terminated name; the result is a new descriptor or -1.
    let fc = match syscall_result(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC as libc::c_uint) }) {
        Ok(fd) => {
            // SAFETY: fsopen just returned this descriptor; we are its only owner.
            unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
        }
        Err(e) if fall_back_to_mount2(e) => return Ok(NewApi::Unavailable),
        Err(e) => bail!("{}: {e}{}", what("fsopen erofs"), errno_hint(e)),
    };
    let mut keep = Vec::new();
    let source = fsconfig_path(boot, &mut keep)?;
    fsconfig_string(&fc, "source", &source).map_err(|e| step_error(fc.as_raw_fd(), what(&format!("source {}", boot.display())), e))?;
    for (i, d) in devices.iter().enumerate() {
        let value = fsconfig_path(d, &mut keep)?;
        fsconfig_string(&fc, "device", &value).map_err(|e| {
            step_error(fc.as_raw_fd(), what(&format!("device {} of {}, {}", i + 1, devices.len(), d.display())), e)
        })?;
    }
    // SAFETY: fsconfig(2) FSCONFIG_CMD_CREATE takes no key, value or aux.
    syscall_result(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fc.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE as libc::c_uint,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_int,
        )
    })
    .map_err(|e| step_error(fc.as_raw_fd(), what("creating the superblock"), e))?;
    drop(keep);
    // SAFETY: fsmount(2) on an fs context holding a created superblock; the result is a new
    // descriptor or -1.
    let mnt = syscall_result(unsafe {
        libc::syscall(libc::SYS_fsmount, fc.as_raw_fd(), libc::FSMOUNT_CLOEXEC as libc::c_uint, libc::MOUNT_ATTR_RDONLY as libc::c_uint)
    })
    .map_err(|e| step_error(fc.as_raw_fd(), what("fsmount"), e))?;
    // SAFETY: fsmount just returned this descriptor; we are its only owner.
    let mnt = unsafe { OwnedFd::from_raw_fd(mnt as RawFd) };
    let target = cstring(mountpoint.as_os_str())?;
    let empty = CString::new("").expect("no NUL");
    // SAFETY: move_mount(2) with valid NUL-terminated paths; `mnt` is the detached mount.
    syscall_result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
        )
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", what(&format!("attaching at {}", mountpoint.display()))))?;
    Ok(NewApi::Mounted)
}

/// Outcome of [`umount_retrying`].
#[derive(Debug, PartialEq, Eq)]
pub enum Unmounted {
    Clean,
    /// Still busy after the retries: detached lazily; open files still read through it.
    Detached,
    NotMounted,
}

/// Unmounts, retrying a busy mount for up to `patience`; then detaches it lazily if
/// `detach_if_busy`, else fails.
pub fn umount_retrying(mountpoint: &Path, patience: Duration, detach_if_busy: bool) -> Result<Unmounted> {
    let start = Instant::now();
    loop {
        match nix::mount::umount2(mountpoint, MntFlags::empty()) {
            Ok(()) => return Ok(Unmounted::Clean),
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(Unmounted::NotMounted),
            Err(Errno::EBUSY) if start.elapsed() < patience => std::thread::sleep(Duration::from_millis(50)),
            Err(Errno::EBUSY) if detach_if_busy => {
                warn!("{} is still busy after {patience:?}: detaching it lazily", mountpoint.display());
                nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH)?;
                return Ok(Unmounted::Detached);
            }
            Err(e) => bail!("umount {}: {e}", mountpoint.display()),
        }
    }
}

/// True if `mountpoint` is currently an EROFS mount (per /proc/self/mountinfo).
pub fn is_erofs_mount(mountpoint: &Path) -> bool {
    mount_type(mountpoint).as_deref() == Some("erofs")
}

/// The filesystem type of the topmost mount at `mountpoint`, if something is mounted there
/// (per /proc/self/mountinfo).
pub fn mount_type(mountpoint: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // Later lines are mounted later: the last match is the one on top.
    info.lines().rev().filter_map(mountinfo_line).find(|(p, _)| p == mountpoint).map(|(_, t)| t)
}

/// One line of /proc/self/mountinfo: its mount point (octal escapes undone) and filesystem type.
pub fn mountinfo_line(line: &str) -> Option<(PathBuf, String)> {
    let (a, b) = line.split_once(" - ")?;
    let point = unescape(a.split(' ').nth(4)?);
    Some((PathBuf::from(point), b.split(' ').next().unwrap_or("").to_string()))
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let d = device_options(&[PathBuf::from("/c/blobs/a"), PathBuf::from("/c/blobs/b")]).unwrap();
        assert_eq!(d, "device=/c/blobs/a,device=/c/blobs/b");
        assert!(device_options(&[PathBuf::from("/a,b")]).is_err());
        let many: Vec<PathBuf> = (0..100).map(|i| PathBuf::from(format!("/{}/{i}", "x".repeat(64)))).collect();
        assert!(device_options(&many).unwrap_err().to_string().contains("limit"));
        assert_eq!(unescape(r"/a\040b"), "/a b");
    }

    #[test]
    fn only_enosys_falls_back_to_mount2() {
        assert!(fall_back_to_mount2(Errno::ENOSYS));
        for e in [Errno::EPERM, Errno::ENODEV, Errno::EINVAL, Errno::EMFILE] {
            assert!(!fall_back_to_mount2(e), "{e} must be reported, not hidden behind mount(2)");
        }
    }

    #[test]
    fn fs_context_messages_are_drained_in_order() {
        let mut queue: std::collections::VecDeque<&[u8]> =
            [&b"e erofs: cannot find valid device"[..], b"w erofs: something odd\n", b"i erofs: note", b"plain"].into();
        let msgs = drain_messages(|buf| match queue.pop_front() {
            Some(m) => {
                buf[..m.len()].copy_from_slice(m);
                Ok(m.len())
            }
            None => Err(std::io::Error::from_raw_os_error(libc::ENODATA)),
        });
        assert_eq!(
            msgs,
            ["error: erofs: cannot find valid device", "warning: erofs: something odd", "info: erofs: note", "plain"]
        );
        assert!(drain_messages(|_| Err(std::io::Error::from_raw_os_error(libc::ENODATA))).is_empty());
    }

    /// The real kernel's log, through a real fs context: an unknown parameter is refused by
    /// the fsconfig call itself, with the key named in the log. Skips where erofs or the new
    /// mount API is missing or not permitted (unprivileged), loudly; fails then under CI=true.
    #[test]
    fn kernel_fs_context_log_reaches_the_error() {
        let fstype = CString::new("erofs").unwrap();
        // SAFETY: as in mount_new_api.
        let r = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC as libc::c_uint) };
        if r < 0 {
            // As tests/common/env.rs::require: loud here, a failure under CI=true.
            let what = format!("fsopen(\"erofs\") (root, EROFS, the new mount API): {}", Errno::last());
            let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(!ci, "kernel_fs_context_log_reaches_the_error: requires {what} (CI is set, so this is a failure)");
            eprintln!("\n*** SKIP kernel_fs_context_log_reaches_the_error: requires {what} (would FAIL under CI=true) ***\n");
            if let Some(log) = std::env::var_os("EROFSD_SKIP_LOG") {
                use std::io::Write;
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(log) {
                    let _ = writeln!(f, "SKIP kernel_fs_context_log_reaches_the_error: requires {what}");
                }
            }
            return;
        }
        // SAFETY: fsopen returned this descriptor.
        let fc = unsafe { OwnedFd::from_raw_fd(r as RawFd) };
        let v = CString::new("x").unwrap();
        let e = fsconfig_string(&fc, "no_such_erofs_option", &v).unwrap_err();
        let err = step_error(fc.as_raw_fd(), "probe".into(), e).to_string();
        assert!(err.contains("no_such_erofs_option"), "{err}");
    }

    #[test]
    fn long_paths_go_by_descriptor() {
        let mut keep = Vec::new();
        assert_eq!(fsconfig_path(Path::new("/short"), &mut keep).unwrap().to_str().unwrap(), "/short");
        assert!(keep.is_empty());
        let dir = std::env::temp_dir().join(format!("erofsd-longpath-{}", std::process::id()));
        let deep = dir.join("d".repeat(200)).join("e".repeat(100));
        std::fs::create_dir_all(&deep).unwrap();
        let s = fsconfig_path(&deep, &mut keep).unwrap().into_string().unwrap();
        assert!(s.starts_with("/proc/self/fd/") && s.len() <= MAX_FSCONFIG_STRING, "{s}");
        assert_eq!(std::fs::canonicalize(&s).unwrap(), std::fs::canonicalize(&deep).unwrap());
        drop(keep);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
