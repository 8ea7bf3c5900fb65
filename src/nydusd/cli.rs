//! The nydusd command line, as nydus-snapshotter writes it (`pkg/daemon/command`).
//!
//! Hand-parsed rather than clap: the snapshotter's flag set grows between releases and nydusd
//! accepts flags we have no use for, so unknown flags are logged and ignored instead of being a
//! start failure (a failed start makes the snapshotter start a second daemon).

use std::path::PathBuf;

use anyhow::{bail, Result};

/// The flags both modes take.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Common {
    pub apisock: PathBuf,
    pub log_level: Option<String>,
    pub log_file: Option<PathBuf>,
    /// Accepted, not honoured (documented in docs/nydus.md).
    pub log_rotation_size: Option<u64>,
    pub supervisor: Option<PathBuf>,
    pub id: Option<String>,
    pub upgrade: bool,
    /// Flags we accepted without knowing them (logged once the log is set up).
    pub ignored: Vec<String>,
}

impl Common {
    /// Takes a flag both modes know; false if it is not one.
    fn take(&mut self, flag: &str, value: &str) -> Result<bool> {
        match flag {
            "--apisock" | "-A" => self.apisock = PathBuf::from(value),
            "--log-level" | "-l" => self.log_level = Some(value.into()),
            "--log-file" | "-L" => self.log_file = Some(PathBuf::from(value)),
            "--log-rotation-size" => self.log_rotation_size = Some(parse_num(flag, value)?),
            "--supervisor" => self.supervisor = Some(PathBuf::from(value)),
            "--id" => self.id = Some(value.into()),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// `nydusd singleton …`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Singleton {
    /// `--fscache DIR`: the cache directory (erofsd binds cachefiles to `DIR/cachefiles`).
    pub fscache: PathBuf,
    pub fscache_tag: Option<String>,
    pub fscache_threads: Option<usize>,
    pub common: Common,
}

/// `nydusd fuse …` (nydus-snapshotter's default `fs_driver = "fusedev"`), served by a kernel
/// EROFS mount through the fanotify front-end: never FUSE.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fuse {
    /// `--mountpoint M`: the image's mount (dedicated), or the root under which
    /// `POST /api/v1/mount?mountpoint=/<id>` mounts at `M/<id>` (shared: no `--bootstrap`).
    pub mountpoint: PathBuf,
    /// `--config C`: the nydusd JSON config (backend, cache work dir, `fs_prefetch`).
    pub config: Option<PathBuf>,
    /// `--bootstrap B`: the image a dedicated daemon mounts at start.
    pub bootstrap: Option<PathBuf>,
    pub apisock: PathBuf,
    pub thread_num: Option<usize>,
    /// `--prefetch-files`: accepted; prefetch follows the config's `fs_prefetch` and the
    /// image's own prefetch list (docs/nydus.md).
    pub prefetch_files: Option<String>,
    pub failover_policy: Option<String>,
    pub common: Common,
}

// Parsed once per process: the size of the variants costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Version,
    Help,
    Singleton(Singleton),
    Fuse(Fuse),
}

/// Flags of other nydusd modes or options we do not implement but must not choke on, taking a value.
const VALUE_FLAGS: &[&str] = &[
    "--rlimit-nofile", "--sock", "--virtual-mountpoint", "-D", "--log-rotation-count", "--backend-source",
];

/// Flags both modes take a value for.
const COMMON: &[&str] = &[
    "--apisock", "-A", "--log-level", "-l", "--log-file", "-L", "--log-rotation-size", "--supervisor", "--id",
];
const SINGLETON_ONLY: &[&str] = &["--fscache", "--fscache-tag", "--fscache-threads"];
const FUSE_ONLY: &[&str] = &[
    "--mountpoint", "-M", "--config", "-C", "--bootstrap", "-B", "--thread-num", "--prefetch-files", "--failover-policy",
];

/// One flag of the command line: the flag, its value (`None` for a switch or an unknown flag
/// without one) — unknown flags are collected in `ignored`.
fn flags(it: impl Iterator<Item = String>, known: &[&[&str]], ignored: &mut Vec<String>) -> Result<Vec<(String, Option<String>)>> {
    let mut it = it.peekable();
    let mut out = Vec::new();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if !flag.starts_with('-') {
            bail!("unexpected argument {arg:?}");
        }
        if flag == "--upgrade" {
            out.push((flag, None));
            continue;
        }
        let takes_value = known.iter().any(|k| k.contains(&flag.as_str())) || VALUE_FLAGS.contains(&flag.as_str());
        if !takes_value {
            // An unknown switch: take a following non-flag word as its value.
            if inline.is_none() && it.peek().is_some_and(|n| !n.starts_with('-')) {
                let v = it.next().unwrap();
                ignored.push(format!("{flag} {v}"));
            } else {
                ignored.push(arg.clone());
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => match it.next() {
                Some(v) => v,
                None => bail!("{flag} needs a value"),
            },
        };
        if VALUE_FLAGS.contains(&flag.as_str()) {
            ignored.push(format!("{flag} {value}"));
            continue;
        }
        out.push((flag, Some(value)));
    }
    Ok(out)
}

/// Parses the arguments after argv[0].
pub fn parse(args: &[String]) -> Result<Invocation> {
    if args.iter().any(|a| a == "--version" || a == "-V") {
        return Ok(Invocation::Version);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Invocation::Help);
    }
    let mut it = args.iter().cloned();
    match it.next().as_deref() {
        Some("singleton") => parse_singleton(it),
        Some("fuse") => parse_fuse(it),
        Some(other) => bail!("nydusd mode {other:?} is not supported by erofsd: `singleton --fscache DIR` (fs_driver = \"fscache\") or `fuse --mountpoint M` (fs_driver = \"fusedev\", served by kernel EROFS through fanotify)"),
        None => bail!("a mode is required: `nydusd singleton --fscache DIR --apisock SOCK` or `nydusd fuse --mountpoint M --apisock SOCK`"),
    }
}

fn parse_singleton(it: impl Iterator<Item = String>) -> Result<Invocation> {
    let mut s = Singleton::default();
    let mut fscache = None;
    let mut ignored = Vec::new();
    for (flag, value) in flags(it, &[COMMON, SINGLETON_ONLY], &mut ignored)? {
        let Some(value) = value else {
            s.common.upgrade = true;
            continue;
        };
        if s.common.take(&flag, &value)? {
            continue;
        }
        match flag.as_str() {
            "--fscache" => fscache = Some(PathBuf::from(value)),
            "--fscache-tag" => s.fscache_tag = Some(value),
            "--fscache-threads" => s.fscache_threads = Some(parse_num(&flag, &value)? as usize),
            _ => ignored.push(format!("{flag} {value}")),
        }
    }
    s.common.ignored = ignored;
    s.fscache = fscache.ok_or_else(|| anyhow::anyhow!("--fscache DIR is required in singleton mode"))?;
    require_apisock(&s.common)?;
    Ok(Invocation::Singleton(s))
}

fn parse_fuse(it: impl Iterator<Item = String>) -> Result<Invocation> {
    let mut f = Fuse::default();
    let mut mountpoint = None;
    let mut ignored = Vec::new();
    for (flag, value) in flags(it, &[COMMON, FUSE_ONLY], &mut ignored)? {
        let Some(value) = value else {
            f.common.upgrade = true;
            continue;
        };
        if f.common.take(&flag, &value)? {
            continue;
        }
        match flag.as_str() {
            "--mountpoint" | "-M" => mountpoint = Some(PathBuf::from(value)),
            "--config" | "-C" => f.config = Some(PathBuf::from(value)),
            "--bootstrap" | "-B" => f.bootstrap = Some(PathBuf::from(value)),
            "--thread-num" => f.thread_num = Some(parse_num(&flag, &value)? as usize),
            "--prefetch-files" => f.prefetch_files = Some(value),
            "--failover-policy" => f.failover_policy = Some(value),
            _ => ignored.push(format!("{flag} {value}")),
        }
    }
    f.common.ignored = ignored;
    f.mountpoint = mountpoint.ok_or_else(|| anyhow::anyhow!("--mountpoint M is required in fuse mode"))?;
    require_apisock(&f.common)?;
    if f.bootstrap.is_some() && f.config.is_none() {
        bail!("--bootstrap needs --config (the nydusd JSON config naming the blob backend)");
    }
    Ok(Invocation::Fuse(f))
}

fn require_apisock(c: &Common) -> Result<()> {
    if c.apisock.as_os_str().is_empty() {
        bail!("--apisock SOCK is required");
    }
    Ok(())
}

fn parse_num(flag: &str, v: &str) -> Result<u64> {
    v.parse().map_err(|_| anyhow::anyhow!("{flag}: {v:?} is not a number"))
}

/// nydusd's log levels, as a tracing filter.
pub fn log_filter(level: Option<&str>) -> String {
    match level.map(str::to_ascii_lowercase).as_deref() {
        Some(l @ ("trace" | "debug" | "info" | "warn" | "error")) => l.to_string(),
        Some("off") => "off".into(),
        _ => "info".into(),
    }
}

pub const HELP: &str = "\
nydusd (erofsd): the nydusd surface nydus-snapshotter uses, served by the kernel's EROFS.

Usage: nydusd singleton --fscache DIR --apisock SOCK [--fscache-tag T] [--fscache-threads N]
                        [--log-level L] [--log-file F] [--log-rotation-size MB]
                        [--supervisor SOCK --id ID] [--upgrade]
         fs_driver = \"fscache\": cachefiles on-demand (Linux 5.19-7.1)
       nydusd fuse --mountpoint M --apisock SOCK [--config C --bootstrap B] [--thread-num N]
                   [--prefetch-files F] [--failover-policy P] [--log-level L] [--log-file F]
                   [--supervisor SOCK --id ID] [--upgrade]
         fs_driver = \"fusedev\": a kernel EROFS mount through fanotify (Linux 6.14+), not FUSE;
         without --bootstrap, POST /api/v1/mount?mountpoint=/ID mounts at M/ID (shared daemon)
       nydusd --version

See docs/nydus.md.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn snapshotter_command_line() {
        let inv = parse(&args(
            "singleton --fscache /r/cache --fscache-threads 4 --upgrade --id d35 --apisock /r/socket/d35/api.sock \
             --log-level info --log-rotation-size 100 --supervisor /r/supervisor/d35.sock --log-file /r/logs/d35/nydusd.log",
        ))
        .unwrap();
        let Invocation::Singleton(s) = inv else { panic!("not singleton") };
        assert_eq!(s.fscache, PathBuf::from("/r/cache"));
        assert_eq!(s.fscache_threads, Some(4));
        assert!(s.common.upgrade);
        assert_eq!(s.common.id.as_deref(), Some("d35"));
        assert_eq!(s.common.apisock, PathBuf::from("/r/socket/d35/api.sock"));
        assert_eq!(s.common.log_level.as_deref(), Some("info"));
        assert_eq!(s.common.log_rotation_size, Some(100));
        assert_eq!(s.common.supervisor, Some(PathBuf::from("/r/supervisor/d35.sock")));
        assert_eq!(s.common.log_file, Some(PathBuf::from("/r/logs/d35/nydusd.log")));
        assert!(s.common.ignored.is_empty());
    }

    #[test]
    fn unknown_flags_are_ignored_and_required_ones_checked() {
        let Invocation::Singleton(s) =
            parse(&args("singleton --fscache=/c --apisock /a --frob --thread-num 4 --new-flag x")).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.fscache, PathBuf::from("/c"));
        assert_eq!(s.common.ignored, vec!["--frob", "--thread-num 4", "--new-flag x"]);
        assert!(parse(&args("singleton --apisock /a")).unwrap_err().to_string().contains("--fscache"));
        assert!(parse(&args("singleton --fscache /c")).unwrap_err().to_string().contains("--apisock"));
        assert!(parse(&args("fuse --fscache /c --apisock /a")).is_err());
        assert!(parse(&args("blockdev --apisock /a")).is_err());
        assert!(parse(&args("singleton --fscache")).is_err());
        assert!(parse(&args("singleton --fscache /c --apisock /a --fscache-threads x")).is_err());
        assert_eq!(parse(&args("--version")).unwrap(), Invocation::Version);
        assert_eq!(parse(&args("singleton -V")).unwrap(), Invocation::Version);
    }

    #[test]
    fn fuse_command_lines_of_both_daemon_modes() {
        // Dedicated, as BuildDaemonCommand writes it with failover configured.
        let Invocation::Fuse(f) = parse(&args(
            "fuse --mountpoint /r/mnt/d1 --thread-num 4 --config /r/config/d1/config.json --bootstrap /r/snapshots/9/fs/image/image.boot \
             --supervisor /r/supervisor/d1.sock --id d1 --prefetch-files /usr/bin/python3 --log-level info --apisock /r/socket/d1/api.sock \
             --log-file /r/logs/d1/nydusd.log --failover-policy resend",
        ))
        .unwrap() else {
            panic!("not fuse")
        };
        assert_eq!(f.mountpoint, PathBuf::from("/r/mnt/d1"));
        assert_eq!(f.thread_num, Some(4));
        assert_eq!(f.config, Some(PathBuf::from("/r/config/d1/config.json")));
        assert_eq!(f.bootstrap, Some(PathBuf::from("/r/snapshots/9/fs/image/image.boot")));
        assert_eq!(f.common.supervisor, Some(PathBuf::from("/r/supervisor/d1.sock")));
        assert_eq!(f.common.id.as_deref(), Some("d1"));
        assert_eq!(f.prefetch_files.as_deref(), Some("/usr/bin/python3"));
        assert_eq!(f.failover_policy.as_deref(), Some("resend"));
        assert_eq!(f.common.apisock, PathBuf::from("/r/socket/d1/api.sock"));
        assert!(!f.common.upgrade && f.common.ignored.is_empty());
        // Shared: no config, no bootstrap.
        let Invocation::Fuse(f) = parse(&args("fuse --mountpoint /r/mnt --apisock /r/socket/s/api.sock --upgrade --backend-source x")).unwrap()
        else {
            panic!("not fuse")
        };
        assert!(f.bootstrap.is_none() && f.config.is_none() && f.common.upgrade);
        assert_eq!(f.common.ignored, vec!["--backend-source x"]);
        assert!(parse(&args("fuse --apisock /a")).unwrap_err().to_string().contains("--mountpoint"));
        assert!(parse(&args("fuse --mountpoint /m --apisock /a --bootstrap /b")).unwrap_err().to_string().contains("--config"));
        // A singleton-only flag in fuse mode is an unknown one (ignored), not an error.
        let Invocation::Fuse(f) = parse(&args("fuse --mountpoint /m --apisock /a --fscache /c")).unwrap() else { panic!() };
        assert_eq!(f.common.ignored, vec!["--fscache /c"]);
    }
}
