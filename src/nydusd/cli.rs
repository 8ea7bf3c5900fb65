//! The nydusd command line, as nydus-snapshotter writes it (`pkg/daemon/command`).
//!
//! Hand-parsed rather than clap: the snapshotter's flag set grows between releases and nydusd
//! accepts flags we have no use for, so unknown flags are logged and ignored instead of being a
//! start failure (a failed start makes the snapshotter start a second daemon).

use std::path::PathBuf;

use anyhow::{bail, Result};

/// `nydusd singleton …`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Singleton {
    /// `--fscache DIR`: the cache directory (erofsd binds cachefiles to `DIR/cachefiles`).
    pub fscache: PathBuf,
    pub fscache_tag: Option<String>,
    pub fscache_threads: Option<usize>,
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

// Parsed once per process: the size of the `Singleton` variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    Version,
    Help,
    Singleton(Singleton),
}

/// Flags of other nydusd modes or options we do not implement but must not choke on, taking a value.
const VALUE_FLAGS: &[&str] = &[
    "--config", "-C", "--bootstrap", "-B", "--mountpoint", "-M", "--thread-num", "--prefetch-files",
    "--failover-policy", "--rlimit-nofile", "--sock", "--virtual-mountpoint", "-D", "--log-rotation-count",
];

/// Parses the arguments after argv[0].
pub fn parse(args: &[String]) -> Result<Invocation> {
    if args.iter().any(|a| a == "--version" || a == "-V") {
        return Ok(Invocation::Version);
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        return Ok(Invocation::Help);
    }
    let mut it = args.iter().peekable();
    match it.next().map(String::as_str) {
        Some("singleton") => {}
        Some(other) => bail!("nydusd mode {other:?} is not supported by erofsd: only `singleton --fscache DIR` (nydus-snapshotter fs_driver = \"fscache\")"),
        None => bail!("a mode is required: erofsd implements `nydusd singleton --fscache DIR --apisock SOCK`"),
    }
    let mut s = Singleton::default();
    let mut fscache = None;
    let mut apisock = None;
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        if !flag.starts_with('-') {
            bail!("unexpected argument {arg:?}");
        }
        if flag == "--upgrade" {
            s.upgrade = true;
            continue;
        }
        let known = [
            "--fscache", "--fscache-tag", "--fscache-threads", "--apisock", "-A", "--log-level", "-l", "--log-file", "-L",
            "--log-rotation-size", "--supervisor", "--id",
        ];
        let takes_value = known.contains(&flag.as_str()) || VALUE_FLAGS.contains(&flag.as_str());
        if !takes_value {
            // An unknown switch: take a following non-flag word as its value.
            if inline.is_none() && it.peek().is_some_and(|n| !n.starts_with('-')) {
                let v = it.next().unwrap();
                s.ignored.push(format!("{flag} {v}"));
            } else {
                s.ignored.push(arg.clone());
            }
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => match it.next() {
                Some(v) => v.clone(),
                None => bail!("{flag} needs a value"),
            },
        };
        match flag.as_str() {
            "--fscache" => fscache = Some(PathBuf::from(value)),
            "--fscache-tag" => s.fscache_tag = Some(value),
            "--fscache-threads" => s.fscache_threads = Some(parse_num(&flag, &value)? as usize),
            "--apisock" | "-A" => apisock = Some(PathBuf::from(value)),
            "--log-level" | "-l" => s.log_level = Some(value),
            "--log-file" | "-L" => s.log_file = Some(PathBuf::from(value)),
            "--log-rotation-size" => s.log_rotation_size = Some(parse_num(&flag, &value)?),
            "--supervisor" => s.supervisor = Some(PathBuf::from(value)),
            "--id" => s.id = Some(value),
            _ => s.ignored.push(format!("{flag} {value}")),
        }
    }
    s.fscache = fscache.ok_or_else(|| anyhow::anyhow!("--fscache DIR is required (erofsd implements the fscache singleton only)"))?;
    s.apisock = apisock.ok_or_else(|| anyhow::anyhow!("--apisock SOCK is required"))?;
    Ok(Invocation::Singleton(s))
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
nydusd (erofsd): the nydusd surface nydus-snapshotter uses with fs_driver = \"fscache\".

Usage: nydusd singleton --fscache DIR --apisock SOCK [--fscache-tag T] [--fscache-threads N]
                        [--log-level L] [--log-file F] [--log-rotation-size MB]
                        [--supervisor SOCK --id ID] [--upgrade]
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
        assert!(s.upgrade);
        assert_eq!(s.id.as_deref(), Some("d35"));
        assert_eq!(s.apisock, PathBuf::from("/r/socket/d35/api.sock"));
        assert_eq!(s.log_level.as_deref(), Some("info"));
        assert_eq!(s.log_rotation_size, Some(100));
        assert_eq!(s.supervisor, Some(PathBuf::from("/r/supervisor/d35.sock")));
        assert_eq!(s.log_file, Some(PathBuf::from("/r/logs/d35/nydusd.log")));
        assert!(s.ignored.is_empty());
    }

    #[test]
    fn unknown_flags_are_ignored_and_required_ones_checked() {
        let Invocation::Singleton(s) =
            parse(&args("singleton --fscache=/c --apisock /a --frob --thread-num 4 --new-flag x")).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.fscache, PathBuf::from("/c"));
        assert_eq!(s.ignored, vec!["--frob", "--thread-num 4", "--new-flag x"]);
        assert!(parse(&args("singleton --apisock /a")).unwrap_err().to_string().contains("--fscache"));
        assert!(parse(&args("singleton --fscache /c")).unwrap_err().to_string().contains("--apisock"));
        assert!(parse(&args("fuse --fscache /c --apisock /a")).is_err());
        assert!(parse(&args("singleton --fscache")).is_err());
        assert!(parse(&args("singleton --fscache /c --apisock /a --fscache-threads x")).is_err());
        assert_eq!(parse(&args("--version")).unwrap(), Invocation::Version);
        assert_eq!(parse(&args("singleton -V")).unwrap(), Invocation::Version);
    }
}
