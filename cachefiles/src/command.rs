//! Text commands written to /dev/cachefiles, one per `write()`.
//!
//! The kernel cuts everything after the first `\n`, rejects an embedded NUL
//! with `EINVAL` and anything longer than PAGE_SIZE-1 with `EOPNOTSUPP`; it
//! splits the verb at the first whitespace and skips whitespace before the
//! argument. We refuse those cases up front so a bad argument can never turn
//! into a different (truncated) command. No newline is appended: the kernel
//! does not need one.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Longest command the kernel accepts (PAGE_SIZE - 1 on 4 KiB-page kernels,
/// the only ones EROFS-over-fscache supports).
pub const MAX_COMMAND_LEN: usize = 4095;

/// Largest errno a `copen` may carry (`MAX_ERRNO`; the kernel checks
/// `IS_ERR_VALUE`).
pub const MAX_ERRNO: i32 = 4095;

/// The answer to an OPEN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopenResult {
    /// Object size in bytes (parsed by the kernel as a signed long).
    Size(u64),
    /// Fail the OPEN with this positive errno (written as `-errno`).
    Errno(i32),
}

/// Free-space thresholds (`<N>%`, 0 ≤ stop < cull < run < 100, checked by the
/// kernel as a set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Brun,
    Bcull,
    Bstop,
    Frun,
    Fcull,
    Fstop,
}

impl Threshold {
    pub fn verb(self) -> &'static str {
        match self {
            Threshold::Brun => "brun",
            Threshold::Bcull => "bcull",
            Threshold::Bstop => "bstop",
            Threshold::Frun => "frun",
            Threshold::Fcull => "fcull",
            Threshold::Fstop => "fstop",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `dir <abs path>`: cache root (ext4/xfs, not tmpfs).
    Dir(PathBuf),
    /// `tag <name>`.
    Tag(String),
    /// `secctx <ctx>`.
    Secctx(String),
    /// `bind ondemand`.
    BindOndemand,
    /// `copen <msg_id>,<size | -errno>`.
    Copen { msg_id: u32, result: CopenResult },
    /// `restore` (failover, 6.8+ and stable backports).
    Restore,
    /// `cull <name>` relative to the process cwd.
    Cull(String),
    /// `inuse <name>` relative to the process cwd; `EBUSY` = in use.
    Inuse(String),
    /// `brun 10%` etc.
    Threshold(Threshold, u8),
    /// `debug <mask>`.
    Debug(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Argument contains `\n` (the kernel would cut the command there).
    Newline {
        verb: &'static str,
    },
    /// Argument contains NUL (kernel: `EINVAL`).
    Nul {
        verb: &'static str,
    },
    /// Encoded command longer than [`MAX_COMMAND_LEN`] (kernel: `EOPNOTSUPP`).
    TooLong {
        verb: &'static str,
        len: usize,
    },
    EmptyArgument {
        verb: &'static str,
    },
    /// Argument starts with whitespace, which the kernel would silently strip.
    LeadingWhitespace {
        verb: &'static str,
    },
    /// `dir` needs an absolute path.
    RelativeDir(PathBuf),
    /// `cull`/`inuse` take a single file name, no `/`.
    NameHasSlash {
        verb: &'static str,
        name: String,
    },
    /// `copen` size above `i64::MAX` (the kernel parses a signed long).
    SizeTooLarge(u64),
    /// `copen` errno outside 1..=4095.
    BadErrno(i32),
    /// Threshold percentage must be < 100.
    BadPercent {
        verb: &'static str,
        percent: u8,
    },
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use CommandError::*;
        match self {
            Newline { verb } => write!(f, "cachefiles '{verb}' argument contains a newline"),
            Nul { verb } => write!(f, "cachefiles '{verb}' argument contains a NUL byte"),
            TooLong { verb, len } => {
                write!(
                    f,
                    "cachefiles '{verb}' command is {len} bytes, limit is {MAX_COMMAND_LEN}"
                )
            }
            EmptyArgument { verb } => write!(f, "cachefiles '{verb}' needs a non-empty argument"),
            LeadingWhitespace { verb } => {
                write!(f, "cachefiles '{verb}' argument starts with whitespace")
            }
            RelativeDir(p) => write!(f, "cachefiles cache dir must be absolute: {}", p.display()),
            NameHasSlash { verb, name } => {
                write!(
                    f,
                    "cachefiles '{verb}' takes a file name without '/': {name:?}"
                )
            }
            SizeTooLarge(s) => write!(f, "copen size {s} exceeds i64::MAX"),
            BadErrno(e) => write!(f, "copen errno {e} is not in 1..={MAX_ERRNO}"),
            BadPercent { verb, percent } => {
                write!(f, "cachefiles '{verb}' {percent}% must be below 100%")
            }
        }
    }
}

impl std::error::Error for CommandError {}

impl Command {
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Dir(_) => "dir",
            Command::Tag(_) => "tag",
            Command::Secctx(_) => "secctx",
            Command::BindOndemand => "bind",
            Command::Copen { .. } => "copen",
            Command::Restore => "restore",
            Command::Cull(_) => "cull",
            Command::Inuse(_) => "inuse",
            Command::Threshold(t, _) => t.verb(),
            Command::Debug(_) => "debug",
        }
    }

    /// The exact bytes for one `write()`.
    pub fn encode(&self) -> Result<Vec<u8>, CommandError> {
        let verb = self.verb();
        let arg: Vec<u8> = match self {
            Command::Dir(p) => {
                if !p.is_absolute() {
                    return Err(CommandError::RelativeDir(p.clone()));
                }
                free_text(verb, p.as_os_str())?
            }
            Command::Tag(s) | Command::Secctx(s) => free_text(verb, OsStr::new(s))?,
            Command::Cull(name) | Command::Inuse(name) => {
                let a = free_text(verb, OsStr::new(name))?;
                if name.contains('/') {
                    return Err(CommandError::NameHasSlash {
                        verb,
                        name: name.clone(),
                    });
                }
                a
            }
            Command::BindOndemand => b"ondemand".to_vec(),
            Command::Restore => Vec::new(),
            Command::Copen { msg_id, result } => match *result {
                CopenResult::Size(size) => {
                    if size > i64::MAX as u64 {
                        return Err(CommandError::SizeTooLarge(size));
                    }
                    format!("{msg_id},{size}").into_bytes()
                }
                CopenResult::Errno(e) => {
                    if !(1..=MAX_ERRNO).contains(&e) {
                        return Err(CommandError::BadErrno(e));
                    }
                    format!("{msg_id},-{e}").into_bytes()
                }
            },
            Command::Threshold(_, percent) => {
                if *percent >= 100 {
                    return Err(CommandError::BadPercent {
                        verb,
                        percent: *percent,
                    });
                }
                format!("{percent}%").into_bytes()
            }
            Command::Debug(mask) => mask.to_string().into_bytes(),
        };
        let mut out = Vec::with_capacity(verb.len() + 1 + arg.len());
        out.extend_from_slice(verb.as_bytes());
        if !arg.is_empty() {
            out.push(b' ');
            out.extend_from_slice(&arg);
        }
        if out.len() > MAX_COMMAND_LEN {
            return Err(CommandError::TooLong {
                verb,
                len: out.len(),
            });
        }
        Ok(out)
    }

    /// Convenience for `dir`.
    pub fn dir(path: impl AsRef<Path>) -> Command {
        Command::Dir(path.as_ref().to_path_buf())
    }

    /// Convenience for a successful `copen`.
    pub fn copen_size(msg_id: u32, size: u64) -> Command {
        Command::Copen {
            msg_id,
            result: CopenResult::Size(size),
        }
    }

    /// Convenience for a failing `copen` (`errno` positive, e.g. `libc::ENOENT`).
    pub fn copen_errno(msg_id: u32, errno: i32) -> Command {
        Command::Copen {
            msg_id,
            result: CopenResult::Errno(errno),
        }
    }
}

/// Checks a user-supplied argument: non-empty, no newline/NUL, no leading
/// whitespace.
fn free_text(verb: &'static str, s: &OsStr) -> Result<Vec<u8>, CommandError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(CommandError::EmptyArgument { verb });
    }
    if b.contains(&b'\n') {
        return Err(CommandError::Newline { verb });
    }
    if b.contains(&0) {
        return Err(CommandError::Nul { verb });
    }
    if b[0].is_ascii_whitespace() {
        return Err(CommandError::LeadingWhitespace { verb });
    }
    Ok(b.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(c: Command) -> String {
        String::from_utf8(c.encode().unwrap()).unwrap()
    }

    #[test]
    fn formats_every_command() {
        assert_eq!(
            enc(Command::dir("/var/cache/erofsd")),
            "dir /var/cache/erofsd"
        );
        assert_eq!(
            enc(Command::dir("/path with space")),
            "dir /path with space"
        );
        assert_eq!(enc(Command::Tag("erofsd".into())), "tag erofsd");
        assert_eq!(
            enc(Command::Secctx("system_u:system_r:x_t".into())),
            "secctx system_u:system_r:x_t"
        );
        assert_eq!(enc(Command::BindOndemand), "bind ondemand");
        assert_eq!(enc(Command::copen_size(7, 1_048_576)), "copen 7,1048576");
        assert_eq!(enc(Command::copen_size(0, 0)), "copen 0,0");
        assert_eq!(
            enc(Command::copen_size(u32::MAX, i64::MAX as u64)),
            "copen 4294967295,9223372036854775807"
        );
        assert_eq!(enc(Command::copen_errno(9, libc::ENOENT)), "copen 9,-2");
        assert_eq!(enc(Command::copen_errno(9, 4095)), "copen 9,-4095");
        assert_eq!(enc(Command::Restore), "restore");
        assert_eq!(enc(Command::Cull("Dabc".into())), "cull Dabc");
        assert_eq!(enc(Command::Inuse("Dabc".into())), "inuse Dabc");
        assert_eq!(enc(Command::Threshold(Threshold::Brun, 10)), "brun 10%");
        assert_eq!(enc(Command::Threshold(Threshold::Bcull, 7)), "bcull 7%");
        assert_eq!(enc(Command::Threshold(Threshold::Bstop, 0)), "bstop 0%");
        assert_eq!(enc(Command::Threshold(Threshold::Frun, 99)), "frun 99%");
        assert_eq!(enc(Command::Threshold(Threshold::Fcull, 5)), "fcull 5%");
        assert_eq!(enc(Command::Threshold(Threshold::Fstop, 1)), "fstop 1%");
        assert_eq!(enc(Command::Debug(0x7)), "debug 7");
    }

    #[test]
    fn copen_is_plain_decimal() {
        // A leading zero would be read as octal by kstrto*(…, 0).
        for (id, size) in [(10u32, 8u64), (8, 10), (1, 4096), (100, 1 << 40)] {
            let s = enc(Command::copen_size(id, size));
            let (i, sz) = s.strip_prefix("copen ").unwrap().split_once(',').unwrap();
            assert!(!i.starts_with('0') && !sz.starts_with('0'), "{s}");
            assert_eq!(
                (i.parse::<u32>().unwrap(), sz.parse::<u64>().unwrap()),
                (id, size)
            );
        }
    }

    #[test]
    fn rejects_bad_arguments() {
        use CommandError::*;
        assert_eq!(
            Command::dir("relative/dir").encode(),
            Err(RelativeDir("relative/dir".into()))
        );
        assert_eq!(
            Command::dir("/a\nbind").encode(),
            Err(Newline { verb: "dir" })
        );
        assert_eq!(Command::dir("/a\0b").encode(), Err(Nul { verb: "dir" }));
        assert_eq!(
            Command::Tag(String::new()).encode(),
            Err(EmptyArgument { verb: "tag" })
        );
        assert_eq!(
            Command::Tag(" x".into()).encode(),
            Err(LeadingWhitespace { verb: "tag" })
        );
        assert_eq!(
            Command::Tag("x\ny".into()).encode(),
            Err(Newline { verb: "tag" })
        );
        assert_eq!(
            Command::Cull("a/b".into()).encode(),
            Err(NameHasSlash {
                verb: "cull",
                name: "a/b".into()
            })
        );
        assert_eq!(
            Command::Inuse("".into()).encode(),
            Err(EmptyArgument { verb: "inuse" })
        );
        assert_eq!(
            Command::copen_size(1, i64::MAX as u64 + 1).encode(),
            Err(SizeTooLarge(i64::MAX as u64 + 1))
        );
        assert_eq!(Command::copen_errno(1, 0).encode(), Err(BadErrno(0)));
        assert_eq!(Command::copen_errno(1, -2).encode(), Err(BadErrno(-2)));
        assert_eq!(Command::copen_errno(1, 4096).encode(), Err(BadErrno(4096)));
        assert_eq!(
            Command::Threshold(Threshold::Frun, 100).encode(),
            Err(BadPercent {
                verb: "frun",
                percent: 100
            })
        );
    }

    #[test]
    fn length_limit() {
        // "dir " + "/" + n bytes
        let ok = format!("/{}", "a".repeat(MAX_COMMAND_LEN - 5));
        assert_eq!(Command::dir(&ok).encode().unwrap().len(), MAX_COMMAND_LEN);
        let long = format!("/{}", "a".repeat(MAX_COMMAND_LEN - 4));
        assert_eq!(
            Command::dir(&long).encode(),
            Err(CommandError::TooLong {
                verb: "dir",
                len: 4096
            })
        );
        assert!(CommandError::TooLong {
            verb: "dir",
            len: 4096
        }
        .to_string()
        .contains("4095"));
    }

    #[test]
    fn non_utf8_dir_is_fine() {
        use std::os::unix::ffi::OsStrExt;
        let p = PathBuf::from(OsStr::from_bytes(b"/cache/\xff"));
        assert_eq!(Command::Dir(p).encode().unwrap(), b"dir /cache/\xff");
    }
}
