//! Facts about the running kernel that both front-ends' probes and `erofsd doctor` need.

use std::io::Read;
use std::path::{Path, PathBuf};

/// A kernel config option's state, from /proc/config.gz or /boot/config-$(uname -r).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigState {
    Yes,
    Module,
    No,
    /// No kernel config is readable here.
    Unknown,
}

pub fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed struct; release is NUL-terminated.
    unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut u) != 0 {
            return "unknown".into();
        }
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    }
}

/// (major, minor) of the running kernel, if parseable.
pub fn kernel_version() -> Option<(u32, u32)> {
    let r = kernel_release();
    let mut it = r.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// The kernel config text, if this system exposes it.
pub fn kernel_config() -> Option<(String, PathBuf)> {
    let gz = Path::new("/proc/config.gz");
    if let Ok(f) = std::fs::File::open(gz) {
        let mut s = String::new();
        if flate2::read::GzDecoder::new(f).read_to_string(&mut s).is_ok() {
            return Some((s, gz.into()));
        }
    }
    let boot = PathBuf::from(format!("/boot/config-{}", kernel_release()));
    std::fs::read_to_string(&boot).ok().map(|s| (s, boot))
}

pub fn config_option(config: Option<&str>, name: &str) -> ConfigState {
    let Some(text) = config else { return ConfigState::Unknown };
    for line in text.lines() {
        if let Some(v) = line.strip_prefix(name).and_then(|r| r.strip_prefix('=')) {
            return match v {
                "y" => ConfigState::Yes,
                "m" => ConfigState::Module,
                _ => ConfigState::No,
            };
        }
    }
    ConfigState::No
}

/// EROFS is built in or loaded (listed in /proc/filesystems).
pub fn erofs_registered() -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some("erofs")))
        .unwrap_or(false)
}
