//! mount(2)/umount2(2) for file-backed EROFS mounts.
//!
//! Always the syscall: util-linux `mount` turns a regular-file source into a loop device, and
//! the loop driver reads its backing file without the pre-content hook.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use tracing::warn;

/// Classic mount(2) data is one page including the NUL.
const MAX_DATA: usize = 4095;

/// The `device=` option list for `devices`, in device-table order.
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
            "{} blob devices need {} bytes of mount options, over the {MAX_DATA}-byte limit (use a shorter cache_dir)",
            devices.len(),
            data.len()
        );
    }
    Ok(data)
}

/// Mounts `boot` (a regular file) read-only at `mountpoint` with `devices` as `device=` files.
pub fn mount_file_backed(boot: &Path, mountpoint: &Path, devices: &[PathBuf]) -> Result<()> {
    let data = device_options(devices)?;
    match nix::mount::mount(Some(boot), mountpoint, Some("erofs"), MsFlags::MS_RDONLY, Some(data.as_str())) {
        Ok(()) => Ok(()),
        Err(e) => {
            let hint = match e {
                Errno::ENODEV => " (the kernel has no EROFS)",
                Errno::ENOTBLK => " (this kernel cannot mount a regular file: needs CONFIG_EROFS_FS_BACKED_BY_FILE, 6.12+)",
                Errno::EINVAL => " (bad bootstrap or device list: see dmesg)",
                _ => "",
            };
            bail!("mount -t erofs {} {} -o {data}: {e}{hint}", boot.display(), mountpoint.display())
        }
    }
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
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return false };
    let want = mountpoint.to_string_lossy();
    info.lines().any(|l| {
        let mut halves = l.splitn(2, " - ");
        let (Some(a), Some(b)) = (halves.next(), halves.next()) else { return false };
        a.split(' ').nth(4).map(unescape) == Some(want.to_string()) && b.split(' ').next() == Some("erofs")
    })
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
}
