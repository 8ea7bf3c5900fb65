//! Kernel mounts for the tests, always undone: a `Mount` unmounts in `Drop`, so a failing
//! assertion (a panic) still leaves the machine clean.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

pub struct Mount {
    target: PathBuf,
    // Dropped after `Drop::drop` has unmounted: removes the (then empty) mount point.
    _dir: tempfile::TempDir,
}

impl Mount {
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// EROFS, file-backed (a regular file as source: kernel 6.12+; util-linux `mount` would set
    /// up a loop device and then refuse regular files as `device=`). `devices` in device-id order.
    pub fn erofs(boot: &Path, devices: &[PathBuf]) -> Result<Mount, String> {
        let data = devices.iter().map(|d| format!("device={}", d.display())).collect::<Vec<_>>().join(",");
        Self::mount_fs(boot, "erofs", &data)
    }

    /// Read-only overlayfs of `lowers`, topmost first (no upperdir: the stack cannot change).
    pub fn overlay(lowers: &[&Path]) -> Result<Mount, String> {
        let lower = lowers.iter().map(|l| l.display().to_string()).collect::<Vec<_>>().join(":");
        Self::mount_fs(Path::new("overlay"), "overlay", &format!("lowerdir={lower}"))
    }

    fn mount_fs(source: &Path, fstype: &str, data: &str) -> Result<Mount, String> {
        let dir = tempfile::Builder::new().prefix("erofsd-mnt-").tempdir().map_err(|e| e.to_string())?;
        let target = dir.path().to_path_buf();
        mount(Some(source), &target, Some(fstype), MsFlags::MS_RDONLY, Some(data))
            .map_err(|e| format!("mount -t {fstype} {} on {} -o {data}: {e}", source.display(), target.display()))?;
        eprintln!("mounted {fstype} {} on {}", source.display(), target.display());
        Ok(Mount { target, _dir: dir })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.target, MntFlags::empty()) {
            // Busy (a reader still open in a leaked thread)? Detach rather than leave it.
            eprintln!("umount {}: {e}; detaching", self.target.display());
            let _ = umount2(&self.target, MntFlags::MNT_DETACH);
        }
    }
}
