//! The mount(2) / umount2(2) calls of the cachefiles front-end.
//!
//! `mount("none", mp, "erofs", MS_RDONLY, "fsid=…[,domain_id=…]")` blocks until the daemon has
//! answered the bootstrap OPEN and its first READ, so it must run on a thread other than the
//! cachefiles reader (callers use the blocking pool).

use std::path::Path;

use anyhow::{bail, Result};
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use tracing::warn;

fn mount_hint(e: Errno) -> &'static str {
    match e {
        Errno::ENODEV => " (the kernel has no EROFS: CONFIG_EROFS_FS / modprobe erofs)",
        Errno::EINVAL => {
            " (the kernel may lack CONFIG_EROFS_FS_ONDEMAND, or domain_id= (needs 6.1+); see dmesg and `erofsd doctor`)"
        }
        Errno::ENOTBLK => " (the kernel ignored fsid=: CONFIG_EROFS_FS_ONDEMAND is missing)",
        Errno::EBUSY => " (this fsid is already mounted)",
        Errno::EEXIST => " (this fsid already exists in the domain)",
        Errno::ENOENT => " (the daemon did not recognise the bootstrap cookie)",
        Errno::ENOBUFS | Errno::EIO => " (the cachefiles cache is not usable: see dmesg)",
        _ => "",
    }
}

pub fn mount_fscache(mountpoint: &Path, opts: &str) -> Result<()> {
    match nix::mount::mount(Some("none"), mountpoint, Some("erofs"), MsFlags::MS_RDONLY, Some(opts)) {
        Ok(()) => Ok(()),
        Err(e) => bail!("mount -t erofs -o {opts} none {}: {e}{}", mountpoint.display(), mount_hint(e)),
    }
}

/// Unmounts; with `detach_if_busy`, a busy mount is detached lazily (shutdown must not hang).
pub fn umount(mountpoint: &Path, detach_if_busy: bool) -> Result<()> {
    match nix::mount::umount2(mountpoint, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EINVAL) => bail!("{} is not mounted", mountpoint.display()),
        Err(Errno::EBUSY) if detach_if_busy => {
            warn!("{} is busy: detaching it lazily (its open files will see EIO)", mountpoint.display());
            nix::mount::umount2(mountpoint, MntFlags::MNT_DETACH)?;
            Ok(())
        }
        Err(e) => bail!("umount {}: {e}", mountpoint.display()),
    }
}
