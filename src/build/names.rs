//! Validation of names and paths taken from untrusted sources (tar entries, link targets).

use anyhow::{bail, Result};

/// Longest entry path accepted (Linux PATH_MAX). Also bounds tree depth (≤ 2048), which
/// keeps every recursive walk over the tree shallow.
pub const MAX_PATH: usize = 4096;
/// Longest name of a directory entry (EROFS and Linux NAME_MAX).
pub const MAX_NAME: usize = 255;
/// Deepest directory nesting accepted from a directory source.
pub const MAX_DEPTH: usize = MAX_PATH / 2;

/// Splits an archive entry path into its components. `""`, `.` and `./` name the root.
/// Rejects absolute paths, `..` components, NUL bytes, over-long names and paths.
pub fn split_path(raw: &[u8]) -> Result<Vec<Vec<u8>>> {
    if raw.contains(&0) {
        bail!("path contains a NUL byte");
    }
    if raw.len() > MAX_PATH {
        bail!("path is {} bytes long (limit {MAX_PATH})", raw.len());
    }
    if raw.first() == Some(&b'/') {
        bail!("absolute path (layer entries must be relative to the root)");
    }
    let mut out = Vec::new();
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => bail!("path has a `..` component"),
            name => {
                check_name(name)?;
                out.push(name.to_vec());
            }
        }
    }
    Ok(out)
}

/// A single directory entry name.
pub fn check_name(name: &[u8]) -> Result<()> {
    if name.is_empty() || name == b"." || name == b".." {
        bail!("invalid name {:?}", String::from_utf8_lossy(name));
    }
    if name.len() > MAX_NAME {
        bail!("name is {} bytes long (limit {MAX_NAME})", name.len());
    }
    if name.contains(&0) || name.contains(&b'/') {
        bail!("name contains a NUL byte or a slash");
    }
    Ok(())
}

/// A symlink target, for a symlink inside a directory `parent_depth` levels below the root.
/// Absolute targets are normal in root filesystems and are kept as they are; a relative
/// target must not climb above the root (`../` more times than it descends).
pub fn check_symlink_target(parent_depth: usize, target: &[u8]) -> Result<()> {
    if target.is_empty() {
        bail!("empty symlink target");
    }
    if target.contains(&0) {
        bail!("symlink target contains a NUL byte");
    }
    if target.len() >= MAX_PATH {
        bail!("symlink target is {} bytes long (limit {})", target.len(), MAX_PATH - 1);
    }
    if target[0] == b'/' {
        return Ok(());
    }
    let mut depth = parent_depth as isize;
    for comp in target.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                depth -= 1;
                if depth < 0 {
                    bail!("symlink target {:?} climbs above the root", String::from_utf8_lossy(target));
                }
            }
            _ => depth += 1,
        }
    }
    Ok(())
}

/// Shows a path for error messages.
pub fn show(comps: &[Vec<u8>]) -> String {
    if comps.is_empty() {
        return "/".into();
    }
    let mut s = String::new();
    for c in comps {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(split_path(b"./a/b/").unwrap(), vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(split_path(b"./").unwrap(), Vec::<Vec<u8>>::new());
        assert_eq!(split_path(b"a//./b").unwrap().len(), 2);
        assert!(split_path(b"/etc/passwd").is_err());
        assert!(split_path(b"a/../../b").is_err());
        assert!(split_path(b"a\0b").is_err());
        assert!(split_path(&[b'x'; 256]).is_err());
        assert!(split_path(&[b'x'; 255]).is_ok());
    }

    #[test]
    fn symlinks() {
        assert!(check_symlink_target(0, b"/usr/bin/env").is_ok());
        assert!(check_symlink_target(1, b"../lib/x").is_ok());
        assert!(check_symlink_target(1, b"../../etc").is_err());
        assert!(check_symlink_target(0, b"a/../../x").is_err());
        assert!(check_symlink_target(0, b"").is_err());
    }
}
