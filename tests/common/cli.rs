//! Running the `erofsd` binary (the one cargo built for this test run) and other tools.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn erofsd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_erofsd"))
}

/// Runs a command, returning its output; panics only if it cannot be started.
pub fn run<I, S>(prog: impl AsRef<OsStr>, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let prog = prog.as_ref();
    let mut cmd = Command::new(prog);
    cmd.args(args).stdin(std::process::Stdio::null());
    let desc = format!("{cmd:?}");
    let t0 = std::time::Instant::now();
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    eprintln!("ran {desc}: {} in {:.2?}", out.status, t0.elapsed());
    out
}

/// Runs a command that must succeed; panics with its stderr otherwise.
pub fn run_ok<I, S>(prog: impl AsRef<OsStr>, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let prog = prog.as_ref().to_owned();
    let out = run(&prog, args);
    assert!(
        out.status.success(),
        "{} failed: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        prog.to_string_lossy(),
        out.status,
        tail(&out.stdout),
        tail(&out.stderr)
    );
    out
}

/// The last 4 KiB of some output, for failure messages.
pub fn tail(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(b);
    let n = s.len();
    if n > 4096 {
        let mut i = n - 4096;
        while !s.is_char_boundary(i) {
            i += 1;
        }
        format!("...{}", &s[i..])
    } else {
        s.into_owned()
    }
}

/// `erofsd build SOURCES... -o OUT EXTRA...`, which must succeed.
pub fn erofsd_build(sources: &[&Path], out: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&OsStr> = vec![OsStr::new("build")];
    args.extend(sources.iter().map(|s| s.as_os_str()));
    args.push(OsStr::new("-o"));
    args.push(out.as_os_str());
    args.extend(extra.iter().map(OsStr::new));
    run_ok(erofsd_bin(), args)
}

/// `erofsd check IMAGE --blob-dir DIR [--write-raw RAW]`, which must succeed.
pub fn erofsd_check(image: &Path, blob_dir: &Path, write_raw: Option<&Path>) -> Output {
    let mut args: Vec<&OsStr> = vec![OsStr::new("check"), image.as_os_str(), OsStr::new("--blob-dir"), blob_dir.as_os_str()];
    if let Some(raw) = write_raw {
        args.push(OsStr::new("--write-raw"));
        args.push(raw.as_os_str());
    }
    run_ok(erofsd_bin(), args)
}

/// Size in bytes of everything under `p` (apparent sizes of regular files).
pub fn tree_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        let md = std::fs::symlink_metadata(&d).unwrap();
        if md.is_dir() {
            for e in std::fs::read_dir(&d).unwrap() {
                stack.push(e.unwrap().path());
            }
        } else if md.is_file() {
            total += md.len();
        }
    }
    total
}
