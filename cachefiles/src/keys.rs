//! What the OPEN keys mean when EROFS is the fscache client
//! (`fs/erofs/fscache.c`):
//!
//! | object | volume key | cookie key |
//! |---|---|---|
//! | bootstrap | `erofs,<domain_id>` if set, else `erofs,<fsid>` | `<fsid>` |
//! | blob (extra device) | same volume | `device=` value or the slot's tag |
//!
//! The protocol alone cannot tell a bootstrap cookie from a blob cookie when a
//! domain is used; the daemon knows which fsids it mounted, hence
//! [`ErofsKeys::is_bootstrap_of`].

use std::fmt;

/// Every EROFS volume key starts with this.
pub const EROFS_VOLUME_PREFIX: &[u8] = b"erofs,";

/// Which key a [`KeyError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Volume,
    Cookie,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Volume => "volume key",
            Which::Cookie => "cookie key",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// The volume key does not start with `erofs,`: another fscache client.
    NotErofs,
    /// Nothing after `erofs,`, or an empty cookie key.
    Empty(Which),
    NotUtf8(Which),
    /// A NUL or other control character: EROFS names come from mount options
    /// and on-disk tags that are C strings, so this is not something we made.
    ControlChar(Which),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::NotErofs => write!(f, "volume key does not start with \"erofs,\""),
            KeyError::Empty(w) => write!(f, "EROFS {w} is empty"),
            KeyError::NotUtf8(w) => write!(f, "EROFS {w} is not UTF-8"),
            KeyError::ControlChar(w) => write!(f, "EROFS {w} contains a control character"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The EROFS names behind an OPEN's keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErofsKeys {
    /// `fsid` of the mount, or its `domain_id` when one was given.
    pub volume: String,
    /// The bootstrap's fsid, or a blob's device tag / `device=` value.
    pub cookie: String,
}

impl ErofsKeys {
    /// `volume_key` as carried by [`crate::OpenRequest`] (trailing NUL already removed).
    pub fn parse(volume_key: &[u8], cookie_key: &[u8]) -> Result<ErofsKeys, KeyError> {
        Ok(ErofsKeys {
            volume: parse_volume_key(volume_key)?,
            cookie: parse_cookie_key(cookie_key)?,
        })
    }

    /// True if this OPEN is for the bootstrap of the mount with `fsid`.
    /// (Blob tags and fsids share one namespace per domain: never let them collide.)
    pub fn is_bootstrap_of(&self, fsid: &str) -> bool {
        self.cookie == fsid
    }
}

/// `erofs,<name>` → `<name>` (the fsid, or the domain_id).
pub fn parse_volume_key(key: &[u8]) -> Result<String, KeyError> {
    let name = key
        .strip_prefix(EROFS_VOLUME_PREFIX)
        .ok_or(KeyError::NotErofs)?;
    text(name, Which::Volume)
}

/// The cookie key as a name (fsid or blob tag).
pub fn parse_cookie_key(key: &[u8]) -> Result<String, KeyError> {
    text(key, Which::Cookie)
}

fn text(bytes: &[u8], which: Which) -> Result<String, KeyError> {
    if bytes.is_empty() {
        return Err(KeyError::Empty(which));
    }
    let s = std::str::from_utf8(bytes).map_err(|_| KeyError::NotUtf8(which))?;
    if s.chars().any(char::is_control) {
        return Err(KeyError::ControlChar(which));
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_keys_without_domain() {
        let k = ErofsKeys::parse(b"erofs,img-0123", b"img-0123").unwrap();
        assert_eq!(k.volume, "img-0123");
        assert_eq!(k.cookie, "img-0123");
        assert!(k.is_bootstrap_of("img-0123"));
    }

    #[test]
    fn blob_keys_in_domain() {
        let tag = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let k = ErofsKeys::parse(b"erofs,shared", tag.as_bytes()).unwrap();
        assert_eq!(k.volume, "shared");
        assert_eq!(k.cookie, tag);
        assert!(!k.is_bootstrap_of("img-0123"));
    }

    #[test]
    fn rejects_foreign_and_bad_keys() {
        assert_eq!(parse_volume_key(b"nfs,abc"), Err(KeyError::NotErofs));
        assert_eq!(parse_volume_key(b"erofs"), Err(KeyError::NotErofs));
        assert_eq!(
            parse_volume_key(b"erofs,"),
            Err(KeyError::Empty(Which::Volume))
        );
        assert_eq!(
            parse_volume_key(b"erofs,\xff"),
            Err(KeyError::NotUtf8(Which::Volume))
        );
        assert_eq!(
            parse_volume_key(b"erofs,a\nb"),
            Err(KeyError::ControlChar(Which::Volume))
        );
        assert_eq!(parse_cookie_key(b""), Err(KeyError::Empty(Which::Cookie)));
        assert_eq!(
            parse_cookie_key(b"ab\0"),
            Err(KeyError::ControlChar(Which::Cookie))
        );
        assert_eq!(
            parse_cookie_key(&[0xc3]),
            Err(KeyError::NotUtf8(Which::Cookie))
        );
        assert_eq!(
            ErofsKeys::parse(b"erofs,x", b"").unwrap_err().to_string(),
            "EROFS cookie key is empty"
        );
    }
}
