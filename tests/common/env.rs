//! What a test needs from the machine, and what to do when it is missing.
//!
//! Project rule: a test that needs root or a kernel feature skips with a loud message on a
//! machine without it, but FAILS when the environment variable `CI` is set (CI=true), so a
//! CI run can never pass by skipping.

use std::path::Path;

pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Returns true if the test may go on. Otherwise panics under CI, or prints a loud SKIP.
pub fn require(ok: bool, test: &str, what: &str) -> bool {
    if ok {
        return true;
    }
    if in_ci() {
        panic!("{test}: requires {what}, which this machine lacks (CI is set, so this is a failure)");
    }
    eprintln!("\n*** SKIP {test}: requires {what} (would FAIL under CI=true) ***\n");
    // scripts/test.sh lists skips at the end (libtest hides a passing test's output).
    if let Some(log) = std::env::var_os("EROFSD_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).create(true).open(log) {
            let _ = writeln!(f, "SKIP {test}: requires {what}");
        }
    }
    false
}

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn kernel_has_fs(fs: &str) -> bool {
    std::fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.split_whitespace().last() == Some(fs)))
        .unwrap_or(false)
}

pub fn have_tool(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false)
}

/// Root plus a kernel EROFS that can mount a regular file (file-backed mounts, 6.12+).
pub fn require_erofs_mount(test: &str) -> bool {
    require(is_root(), test, "root (mount(2), device nodes, trusted.* xattrs)")
        && require(kernel_has_fs("erofs"), test, "a kernel with EROFS")
}

pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    tools.iter().all(|t| require(have_tool(t), test, &format!("the `{t}` tool (scripts/ci-deps.sh installs it)")))
}

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}
