//! Parsing of the binary messages read from /dev/cachefiles (on-demand mode).
//! Layout per include/uapi/linux/cachefiles.h, host-endian (see
//! docs/protocols/cachefiles.md §2). Every length is checked against the
//! bytes actually read: a lying header gives an error, never a panic.

pub const OP_OPEN: u32 = 0;
pub const OP_CLOSE: u32 = 1;
pub const OP_READ: u32 = 2;

/// Header size (`struct cachefiles_msg`).
const HDR: usize = 16;

#[derive(Debug)]
pub struct Msg<'a> {
    pub msg_id: u32,
    pub object_id: u32,
    pub body: Body<'a>,
}

#[derive(Debug)]
pub enum Body<'a> {
    Open { volume_key: &'a [u8], cookie_key: &'a [u8], fd: i32, flags: u32 },
    Close,
    Read { off: u64, len: u64 },
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, String> {
    b.get(off..off + 4)
        .map(|s| u32::from_ne_bytes(s.try_into().unwrap()))
        .ok_or_else(|| format!("message truncated at offset {off}"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, String> {
    b.get(off..off + 8)
        .map(|s| u64::from_ne_bytes(s.try_into().unwrap()))
        .ok_or_else(|| format!("message truncated at offset {off}"))
}

pub fn parse(buf: &[u8]) -> Result<Msg<'_>, String> {
    let msg_id = u32_at(buf, 0)?;
    let opcode = u32_at(buf, 4)?;
    let len = u32_at(buf, 8)? as usize;
    let object_id = u32_at(buf, 12)?;
    if len != buf.len() {
        return Err(format!("header len {len} != bytes read {}", buf.len()));
    }
    let p = &buf[HDR..];
    let body = match opcode {
        OP_OPEN => {
            let vsz = u32_at(p, 0)? as usize;
            let csz = u32_at(p, 4)? as usize;
            let fd = u32_at(p, 8)? as i32;
            let flags = u32_at(p, 12)?;
            let keys = &p[16..];
            if vsz.checked_add(csz) != Some(keys.len()) {
                return Err(format!("OPEN key sizes {vsz}+{csz} != {} payload bytes", keys.len()));
            }
            Body::Open { volume_key: &keys[..vsz], cookie_key: &keys[vsz..], fd, flags }
        }
        OP_CLOSE => Body::Close,
        OP_READ => Body::Read { off: u64_at(p, 0)?, len: u64_at(p, 8)? },
        other => return Err(format!("unknown opcode {other}")),
    };
    Ok(Msg { msg_id, object_id, body })
}

/// Printable form of a key: volume keys carry a trailing NUL, which we strip.
pub fn key_str(k: &[u8]) -> String {
    let k = k.strip_suffix(&[0]).unwrap_or(k);
    String::from_utf8_lossy(k).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_msg(vol: &[u8], cookie: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        let len = 32 + vol.len() + cookie.len();
        for v in [7u32, OP_OPEN, len as u32, 3, vol.len() as u32, cookie.len() as u32, 9, 0] {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        m.extend_from_slice(vol);
        m.extend_from_slice(cookie);
        m
    }

    #[test]
    fn parses_open() {
        let m = open_msg(b"erofs,boot1\0", b"boot1");
        let p = parse(&m).unwrap();
        assert_eq!((p.msg_id, p.object_id), (7, 3));
        match p.body {
            Body::Open { volume_key, cookie_key, fd, .. } => {
                assert_eq!(key_str(volume_key), "erofs,boot1");
                assert_eq!(cookie_key, b"boot1");
                assert_eq!(fd, 9);
            }
            b => panic!("{b:?}"),
        }
    }

    #[test]
    fn rejects_lying_key_sizes() {
        let mut m = open_msg(b"v\0", b"c");
        m[16..20].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(parse(&m).is_err());
        assert!(parse(&m[..10]).is_err());
    }
}
