//! Can this machine run the fanotify front-end? Checked by doing, not by reading versions:
//! a `FAN_CLASS_PRE_CONTENT` group is created and a `FAN_PRE_ACCESS` mark is put on a file
//! in the cache directory (the mark is what fails on tmpfs or a pre-6.14 kernel).

use std::path::Path;

use fanotify::{Group, Target};

use crate::frontend::kernel::{erofs_registered, kernel_release, kernel_version};
use crate::frontend::Support;

/// Probes with a scratch file in `cache_dir` (created if missing, removed afterwards).
pub fn probe_in(cache_dir: &Path) -> Support {
    let mut details = Vec::new();
    let mut usable = true;
    let ver = kernel_version();
    details.push(format!("kernel {}", kernel_release()));

    if nix::unistd::geteuid().is_root() {
        details.push("running as root".into());
    } else {
        usable = false;
        details.push("not root: fanotify pre-content groups and mounting need CAP_SYS_ADMIN".into());
    }

    let erofs = erofs_registered();
    let file_backed = matches!(ver, Some(v) if v >= (6, 12));
    if erofs && file_backed {
        details.push("EROFS file-backed mounts available (erofs in /proc/filesystems, kernel >= 6.12)".into());
    } else {
        usable = false;
        if !erofs {
            details.push("EROFS missing from /proc/filesystems (CONFIG_EROFS_FS; try `modprobe erofs`)".into());
        }
        if !file_backed {
            details.push("kernel older than 6.12: no file-backed EROFS mounts (CONFIG_EROFS_FS_BACKED_BY_FILE)".into());
        }
    }

    match try_mark(cache_dir) {
        Ok(()) => details.push(format!(
            "fanotify pre-content usable: FAN_PRE_ACCESS mark accepted on a file in {}",
            cache_dir.display()
        )),
        Err(e) => {
            usable = false;
            details.push(format!("fanotify pre-content not usable in {}: {e}", cache_dir.display()));
        }
    }
    Support { usable, details }
}

/// Probes in the default cache directory.
pub fn probe() -> Support {
    probe_in(Path::new(crate::daemon::config::DEFAULT_CACHE_DIR))
}

fn try_mark(cache_dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(cache_dir).map_err(|e| format!("creating {}: {e}", cache_dir.display()))?;
    let group = Group::pre_content(false).map_err(|e| e.to_string())?;
    let file = tempfile::Builder::new()
        .prefix(".fanotify-probe-")
        .tempfile_in(cache_dir)
        .map_err(|e| format!("creating a probe file in {}: {e}", cache_dir.display()))?;
    group.add_pre_access(Target::Path(file.path())).map_err(|e| e.to_string())?;
    // The mark dies with the group; the file with its guard.
    Ok(())
}
