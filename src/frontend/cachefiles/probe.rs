//! Can this machine run the cachefiles front-end? Answers in plain words.
//!
//! The kernel has no flag for on-demand support: `bind ondemand` failing with EINVAL is the only
//! proof of a missing `CONFIG_CACHEFILES_ONDEMAND`, so when the device is free the probe binds a
//! throwaway cache in a temporary directory and closes it again. `CONFIG_EROFS_FS_ONDEMAND` can
//! only be read from the kernel config (when the distribution ships it) or learned by mounting.

use std::path::Path;

use cachefiles::{Command, Device, DEVICE_PATH};

use crate::frontend::kernel::{config_option, erofs_registered, kernel_config, ConfigState};
use crate::frontend::Support;

/// `pid 74 (erofsd), pid 80 (cachefilesd)`: holders as [`holders_of`] lists them, for messages.
pub fn describe_holders(holders: &[(u32, String)]) -> String {
    holders.iter().map(|(pid, comm)| format!("pid {pid} ({comm})")).collect::<Vec<_>>().join(", ")
}

/// Processes holding `path` open (pid, command name), found through /proc/*/fd.
pub fn holders_of(path: &Path) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else { return out };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else { continue };
        if fds.flatten().any(|fd| std::fs::read_link(fd.path()).map(|t| t == path).unwrap_or(false)) {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default().trim().to_string();
            out.push((pid, comm));
        }
    }
    out
}

/// The on-demand proof: bind a throwaway cache in a temporary directory under `base`.
/// `Ok(())` = on-demand mode works.
fn try_bind(dev: Device, base: &Path) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix(".erofsd-probe-")
        .tempdir_in(base)
        .map_err(|e| format!("cannot create a probe directory in {}: {e}", base.display()))?;
    let r = dev
        .send(&Command::dir(dir.path()))
        .and_then(|_| dev.send(&Command::Tag("erofsd-probe".into())))
        .and_then(|_| dev.send(&Command::BindOndemand));
    // Unbind (close) before the directory is removed.
    drop(dev);
    r.map_err(|e| {
        if e.errno() == Some(libc::EINVAL) {
            "`bind ondemand` was refused (EINVAL): the kernel lacks CONFIG_CACHEFILES_ONDEMAND".to_string()
        } else {
            e.to_string()
        }
    })
}

/// True if `dir` is on a filesystem cachefiles refuses (tmpfs, ramfs).
pub fn on_tmpfs(dir: &Path) -> bool {
    nix::sys::statfs::statfs(dir)
        .map(|st| matches!(st.filesystem_type().0, 0x0102_1994 | 0x8584_58f6))
        .unwrap_or(false)
}

/// [`probe_in`] with the default cache directory.
pub fn probe() -> Support {
    probe_in(Path::new(crate::daemon::config::DEFAULT_CACHE_DIR))
}

/// Probes with `cache_dir` as the cache directory the daemon would use (the throwaway bind
/// happens inside it, so a tmpfs cache directory is reported too).
pub fn probe_in(cache_dir: &Path) -> Support {
    let mut details = Vec::new();
    let mut usable = true;
    let config = kernel_config();
    let cfg = config.as_ref().map(|(s, _)| s.as_str());

    let dev_path = Path::new(DEVICE_PATH);
    if !dev_path.exists() {
        usable = false;
        details.push(format!(
            "{DEVICE_PATH} is missing: the kernel has no cachefiles (CONFIG_CACHEFILES), or the module is not loaded (modprobe cachefiles)"
        ));
    } else {
        match Device::open() {
            Ok(dev) => match std::fs::create_dir_all(cache_dir).map_err(|e| format!("cannot create cache directory {}: {e}", cache_dir.display())).and_then(|_| {
                if on_tmpfs(cache_dir) {
                    Err(format!("cache directory {} is on tmpfs/ramfs, which cachefiles refuses: use ext4 or xfs (--cache-dir)", cache_dir.display()))
                } else {
                    try_bind(dev, cache_dir)
                }
            }) {
                Ok(()) => details.push(format!("{DEVICE_PATH} is free and on-demand mode works (CONFIG_CACHEFILES_ONDEMAND)")),
                Err(e) => {
                    usable = false;
                    details.push(e);
                }
            },
            Err(e) if e.errno() == Some(libc::EBUSY) => {
                let holders = holders_of(dev_path);
                let who = if holders.is_empty() {
                    "another process".to_string()
                } else {
                    describe_holders(&holders)
                };
                let ours = holders.iter().any(|(_, c)| c.starts_with("erofsd"));
                details.push(format!(
                    "{DEVICE_PATH} is held by {who}: only one daemon per host can use it{}",
                    if ours { " (an erofsd daemon is already running)" } else { "; stop cachefilesd or the other daemon" }
                ));
                if !ours {
                    usable = false;
                }
                details.push("on-demand support cannot be probed while the device is held".into());
            }
            Err(e) => {
                usable = false;
                details.push(e.to_string());
            }
        }
    }
    match config_option(cfg, "CONFIG_CACHEFILES_ONDEMAND") {
        ConfigState::No => details.push("kernel config: CONFIG_CACHEFILES_ONDEMAND is not set".into()),
        ConfigState::Yes | ConfigState::Module => details.push("kernel config: CONFIG_CACHEFILES_ONDEMAND=y".into()),
        ConfigState::Unknown => {}
    }
    if erofs_registered() {
        details.push("EROFS is registered in /proc/filesystems".into());
    } else {
        usable = false;
        details.push("EROFS is not in /proc/filesystems: the kernel lacks CONFIG_EROFS_FS or the module is not loaded (modprobe erofs)".into());
    }
    match config_option(cfg, "CONFIG_EROFS_FS_ONDEMAND") {
        ConfigState::Yes => details.push("kernel config: CONFIG_EROFS_FS_ONDEMAND=y (fsid= mounts work)".into()),
        ConfigState::No => {
            usable = false;
            details.push("kernel config: CONFIG_EROFS_FS_ONDEMAND is not set: EROFS cannot mount over fscache (fsid=); rebuild erofs.ko with it".into());
        }
        ConfigState::Module => {}
        ConfigState::Unknown => details.push(
            "no kernel config readable (/proc/config.gz, /boot/config-*): CONFIG_EROFS_FS_ONDEMAND is only proven by a mount".into(),
        ),
    }
    if dev_path.exists() {
        details.push(HOLE_BUG.into());
    }
    Support { usable, details }
}

/// What doctor says of the fscache hole bug on a cachefiles kernel. It is not probed (that
/// takes a mount served by a daemon); no kernel with EROFS over fscache is known to be free of it.
pub const HOLE_BUG: &str = "EROFS over fscache zero-fills the rest of a read that starts in an interior hole \
(a hole with data after it): every kernel with the cachefiles door is taken to have this bug (5.19-7.1; read in the \
6.1 and 6.12 sources, no fix known). erofsd's builder writes no interior holes, and this door serves other images' \
interior holes through a zero extent, so readers get the right bytes; `erofsd check` lists them";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_options_parse() {
        let cfg = "CONFIG_A=y\nCONFIG_AB=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n";
        assert_eq!(config_option(Some(cfg), "CONFIG_A"), ConfigState::Yes);
        assert_eq!(config_option(Some(cfg), "CONFIG_AB"), ConfigState::Module);
        assert_eq!(config_option(Some(cfg), "CONFIG_C"), ConfigState::No);
        assert_eq!(config_option(Some(cfg), "CONFIG_D"), ConfigState::No);
        assert_eq!(config_option(None, "CONFIG_A"), ConfigState::Unknown);
    }

    #[test]
    fn probe_on_this_host_explains_itself() {
        // The build host has no /dev/cachefiles; the probe must say so, not fail.
        let s = probe();
        assert!(!s.details.is_empty());
        if !Path::new(DEVICE_PATH).exists() {
            assert!(!s.usable);
            assert!(s.details[0].contains("missing"), "{:?}", s.details);
        }
    }
}
