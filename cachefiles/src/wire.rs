//! Binary messages the kernel hands us through `read()` on /dev/cachefiles
//! (`include/uapi/linux/cachefiles.h`).
//!
//! One `read()` returns exactly one message; [`parse_message`] takes exactly
//! those bytes. All integers are host-endian and the buffer may be unaligned,
//! so fields are decoded with `from_ne_bytes` on copied slices, never by
//! casting pointers. Nothing here trusts a length field before checking it
//! against the bytes actually present, and no allocation is larger than the
//! (≤ 1024-byte) buffer we were given.

use std::fmt;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// `sizeof(struct cachefiles_msg)`: msg_id, opcode, len, object_id.
pub const HEADER_LEN: usize = 16;
/// `sizeof(struct cachefiles_open)` without the trailing key bytes.
pub const OPEN_FIXED_LEN: usize = 16;
/// `sizeof(struct cachefiles_read)`: off, len.
pub const READ_PAYLOAD_LEN: usize = 16;
/// `CACHEFILES_MSG_MAX_SIZE`: no message is longer, so a read buffer of this
/// size never gets `EMSGSIZE`.
pub const MSG_MAX_SIZE: usize = 1024;

/// `enum cachefiles_opcode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Opcode {
    Open,
    Close,
    Read,
}

impl Opcode {
    pub const OPEN: u32 = 0;
    pub const CLOSE: u32 = 1;
    pub const READ: u32 = 2;

    pub fn from_u32(v: u32) -> Option<Opcode> {
        match v {
            Self::OPEN => Some(Opcode::Open),
            Self::CLOSE => Some(Opcode::Close),
            Self::READ => Some(Opcode::Read),
            _ => None,
        }
    }

    pub fn as_u32(self) -> u32 {
        match self {
            Opcode::Open => Self::OPEN,
            Opcode::Close => Self::CLOSE,
            Opcode::Read => Self::READ,
        }
    }
}

/// The fixed 16-byte header, with the opcode kept raw so that errors about
/// unknown opcodes can still report the msg_id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub msg_id: u32,
    pub opcode: u32,
    /// Total message length including this header.
    pub len: u32,
    pub object_id: u32,
}

impl Header {
    /// Decodes the header alone; only checks that 16 bytes are present.
    pub fn parse(buf: &[u8]) -> Result<Header, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::Short { got: buf.len() });
        }
        Ok(Header {
            msg_id: u32_at(buf, 0),
            opcode: u32_at(buf, 4),
            len: u32_at(buf, 8),
            object_id: u32_at(buf, 12),
        })
    }
}

/// OPEN: the kernel looked up a cache object and wants its size via `copen`.
///
/// `F` is the anon fd: the raw number the kernel wrote (`u32`) straight out of
/// the parser, or an [`OwnedFd`] once the device layer has claimed it.
#[derive(Debug, PartialEq, Eq)]
pub struct OpenRequest<F> {
    pub msg_id: u32,
    pub object_id: u32,
    /// Volume key without its trailing NUL (for EROFS `erofs,<fsid|domain>`).
    pub volume_key: Vec<u8>,
    /// Cookie key bytes as sent (binary, no NUL).
    pub cookie_key: Vec<u8>,
    /// `cachefiles_open.flags`; always 0 so far, kept for forward compatibility.
    pub flags: u32,
    /// Anon fd already installed in the reader's fd table (write + ioctl only).
    pub fd: F,
}

/// READ: fill `[off, off+len)` of the object, then complete `msg_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    pub msg_id: u32,
    pub object_id: u32,
    pub off: u64,
    pub len: u64,
}

/// CLOSE: the object is gone; close its anon fds. Needs no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseRequest {
    pub msg_id: u32,
    pub object_id: u32,
}

/// One decoded request. `Message<u32>` comes from [`parse_message`];
/// `Message` (= `Message<OwnedFd>`) from the device, which owns the OPEN fd.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<F = OwnedFd> {
    Open(OpenRequest<F>),
    Read(ReadRequest),
    Close(CloseRequest),
}

impl<F> Message<F> {
    pub fn msg_id(&self) -> u32 {
        match self {
            Message::Open(o) => o.msg_id,
            Message::Read(r) => r.msg_id,
            Message::Close(c) => c.msg_id,
        }
    }

    pub fn object_id(&self) -> u32 {
        match self {
            Message::Open(o) => o.object_id,
            Message::Read(r) => r.object_id,
            Message::Close(c) => c.object_id,
        }
    }

    pub fn opcode(&self) -> Opcode {
        match self {
            Message::Open(_) => Opcode::Open,
            Message::Read(_) => Opcode::Read,
            Message::Close(_) => Opcode::Close,
        }
    }
}

impl Message<u32> {
    /// Takes ownership of the anon fd number carried by an OPEN.
    ///
    /// # Safety
    /// The message must have come from a `read()` on /dev/cachefiles in this
    /// process (so the kernel installed that fd for us), and nothing else may
    /// own or close that fd number.
    pub unsafe fn claim_fd(self) -> Message<OwnedFd> {
        match self {
            Message::Open(o) => Message::Open(OpenRequest {
                msg_id: o.msg_id,
                object_id: o.object_id,
                volume_key: o.volume_key,
                cookie_key: o.cookie_key,
                flags: o.flags,
                // parse_message guarantees fd <= i32::MAX.
                fd: OwnedFd::from_raw_fd(o.fd as RawFd),
            }),
            Message::Read(r) => Message::Read(r),
            Message::Close(c) => Message::Close(c),
        }
    }
}

/// Why a buffer is not a well-formed cachefiles message. Every case is the
/// kernel (or whoever wrote the bytes) disagreeing with the ABI we know, so the
/// daemon should log it and answer what it can (see the device layer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the 16-byte header.
    Short {
        got: usize,
    },
    /// More bytes than `CACHEFILES_MSG_MAX_SIZE`, or a header claiming so.
    TooLong {
        len: usize,
    },
    /// Header `len` differs from what `read()` returned.
    LengthMismatch {
        header_len: u32,
        read: usize,
    },
    UnknownOpcode {
        opcode: u32,
    },
    /// OPEN payload shorter than its 16 fixed bytes.
    OpenTooShort {
        payload_len: usize,
    },
    /// OPEN key sizes add up to more than the payload holds.
    OpenKeysOverflow {
        volume_key_size: u32,
        cookie_key_size: u32,
        available: usize,
    },
    /// OPEN has bytes after the keys (len ≠ 32 + key sizes).
    OpenTrailingBytes {
        extra: usize,
    },
    /// Volume key size 0 or its last byte is not NUL.
    VolumeKeyMissingNul,
    /// A NUL inside the volume key before its terminator.
    VolumeKeyInteriorNul {
        at: usize,
    },
    /// The fd field does not fit a non-negative `int`.
    OpenBadFd {
        fd: u32,
    },
    /// READ payload is not exactly 16 bytes.
    ReadPayloadLength {
        payload_len: usize,
    },
    /// READ `off + len` wraps around u64.
    ReadRangeOverflow {
        off: u64,
        len: u64,
    },
    /// CLOSE carries payload bytes (it has none).
    ClosePayload {
        payload_len: usize,
    },
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ParseError::*;
        match self {
            Short { got } => write!(f, "cachefiles message too short: {got} bytes, header needs {HEADER_LEN}"),
            TooLong { len } => write!(f, "cachefiles message length {len} exceeds maximum {MSG_MAX_SIZE}"),
            LengthMismatch { header_len, read } => {
                write!(f, "cachefiles message header says {header_len} bytes but read() returned {read}")
            }
            UnknownOpcode { opcode } => write!(f, "unknown cachefiles opcode {opcode}"),
            OpenTooShort { payload_len } => {
                write!(f, "OPEN payload is {payload_len} bytes, needs at least {OPEN_FIXED_LEN}")
            }
            OpenKeysOverflow { volume_key_size, cookie_key_size, available } => write!(
                f,
                "OPEN key sizes (volume {volume_key_size} + cookie {cookie_key_size}) exceed the {available} key bytes present"
            ),
            OpenTrailingBytes { extra } => write!(f, "OPEN has {extra} unexpected bytes after its keys"),
            VolumeKeyMissingNul => write!(f, "OPEN volume key is not NUL-terminated"),
            VolumeKeyInteriorNul { at } => write!(f, "OPEN volume key contains a NUL at byte {at}"),
            OpenBadFd { fd } => write!(f, "OPEN carries invalid fd {fd}"),
            ReadPayloadLength { payload_len } => {
                write!(f, "READ payload is {payload_len} bytes, expected {READ_PAYLOAD_LEN}")
            }
            ReadRangeOverflow { off, len } => write!(f, "READ range off={off} len={len} overflows"),
            ClosePayload { payload_len } => write!(f, "CLOSE carries {payload_len} unexpected payload bytes"),
        }
    }
}

impl std::error::Error for ParseError {}

fn u32_at(buf: &[u8], off: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[off..off + 4]);
    u32::from_ne_bytes(b)
}

fn u64_at(buf: &[u8], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[off..off + 8]);
    u64::from_ne_bytes(b)
}

/// Parses exactly the bytes one `read()` on /dev/cachefiles returned.
///
/// The fd of an OPEN is returned as the raw number; see [`Message::claim_fd`].
pub fn parse_message(buf: &[u8]) -> Result<Message<u32>, ParseError> {
    if buf.len() > MSG_MAX_SIZE {
        return Err(ParseError::TooLong { len: buf.len() });
    }
    let h = Header::parse(buf)?;
    if h.len as usize > MSG_MAX_SIZE {
        return Err(ParseError::TooLong {
            len: h.len as usize,
        });
    }
    if h.len as usize != buf.len() {
        return Err(ParseError::LengthMismatch {
            header_len: h.len,
            read: buf.len(),
        });
    }
    let payload = &buf[HEADER_LEN..];
    match Opcode::from_u32(h.opcode) {
        None => Err(ParseError::UnknownOpcode { opcode: h.opcode }),
        Some(Opcode::Open) => parse_open(&h, payload).map(Message::Open),
        Some(Opcode::Read) => {
            if payload.len() != READ_PAYLOAD_LEN {
                return Err(ParseError::ReadPayloadLength {
                    payload_len: payload.len(),
                });
            }
            let off = u64_at(payload, 0);
            let len = u64_at(payload, 8);
            if off.checked_add(len).is_none() {
                return Err(ParseError::ReadRangeOverflow { off, len });
            }
            Ok(Message::Read(ReadRequest {
                msg_id: h.msg_id,
                object_id: h.object_id,
                off,
                len,
            }))
        }
        Some(Opcode::Close) => {
            if !payload.is_empty() {
                return Err(ParseError::ClosePayload {
                    payload_len: payload.len(),
                });
            }
            Ok(Message::Close(CloseRequest {
                msg_id: h.msg_id,
                object_id: h.object_id,
            }))
        }
    }
}

fn parse_open(h: &Header, payload: &[u8]) -> Result<OpenRequest<u32>, ParseError> {
    if payload.len() < OPEN_FIXED_LEN {
        return Err(ParseError::OpenTooShort {
            payload_len: payload.len(),
        });
    }
    let volume_key_size = u32_at(payload, 0);
    let cookie_key_size = u32_at(payload, 4);
    let fd = u32_at(payload, 8);
    let flags = u32_at(payload, 12);
    let keys = &payload[OPEN_FIXED_LEN..];

    // u64 sum: two u32 sizes cannot wrap it, so a lying header cannot sneak
    // past the bound check.
    let wanted = volume_key_size as u64 + cookie_key_size as u64;
    if wanted > keys.len() as u64 {
        return Err(ParseError::OpenKeysOverflow {
            volume_key_size,
            cookie_key_size,
            available: keys.len(),
        });
    }
    let wanted = wanted as usize;
    if wanted < keys.len() {
        return Err(ParseError::OpenTrailingBytes {
            extra: keys.len() - wanted,
        });
    }
    let (vol, cookie) = keys.split_at(volume_key_size as usize);
    let vol = match vol.split_last() {
        Some((0, rest)) => rest,
        _ => return Err(ParseError::VolumeKeyMissingNul),
    };
    if let Some(at) = vol.iter().position(|&b| b == 0) {
        return Err(ParseError::VolumeKeyInteriorNul { at });
    }
    if fd > i32::MAX as u32 {
        return Err(ParseError::OpenBadFd { fd });
    }
    Ok(OpenRequest {
        msg_id: h.msg_id,
        object_id: h.object_id,
        volume_key: vol.to_vec(),
        cookie_key: cookie.to_vec(),
        flags,
        fd,
    })
}

/// Test and fixture helpers: build messages the way the kernel lays them out.
/// Public so the daemon's tests can feed fake devices.
pub mod build {
    use super::*;

    pub fn header(msg_id: u32, opcode: u32, len: u32, object_id: u32) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN);
        for x in [msg_id, opcode, len, object_id] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v
    }

    /// OPEN with a NUL appended to `volume_key` (as the kernel does).
    pub fn open(
        msg_id: u32,
        object_id: u32,
        volume_key: &[u8],
        cookie_key: &[u8],
        fd: u32,
    ) -> Vec<u8> {
        let vks = volume_key.len() + 1;
        let len = HEADER_LEN + OPEN_FIXED_LEN + vks + cookie_key.len();
        let mut v = header(msg_id, Opcode::OPEN, len as u32, object_id);
        for x in [vks as u32, cookie_key.len() as u32, fd, 0] {
            v.extend_from_slice(&x.to_ne_bytes());
        }
        v.extend_from_slice(volume_key);
        v.push(0);
        v.extend_from_slice(cookie_key);
        v
    }

    pub fn read(msg_id: u32, object_id: u32, off: u64, len: u64) -> Vec<u8> {
        let mut v = header(
            msg_id,
            Opcode::READ,
            (HEADER_LEN + READ_PAYLOAD_LEN) as u32,
            object_id,
        );
        v.extend_from_slice(&off.to_ne_bytes());
        v.extend_from_slice(&len.to_ne_bytes());
        v
    }

    pub fn close(msg_id: u32, object_id: u32) -> Vec<u8> {
        header(msg_id, Opcode::CLOSE, HEADER_LEN as u32, object_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Hand-written little-endian bytes, exactly as an x86-64/arm64 kernel
    // lays them out; the builders above are checked against these.
    #[cfg(target_endian = "little")]
    const OPEN_BOOTSTRAP: &[u8] = &[
        0x07, 0, 0, 0, // msg_id 7
        0, 0, 0, 0, // opcode OPEN
        0x38, 0, 0, 0, // len 56 = 16 + 16 + 13 + 11
        0x2a, 0, 0, 0, // object_id 42
        0x0d, 0, 0, 0, // volume_key_size 13 ("erofs,image1" + NUL)
        0x0b, 0, 0, 0, // cookie_key_size 11 ("image1-boot")
        0x05, 0, 0, 0, // fd 5
        0, 0, 0, 0, // flags
        b'e', b'r', b'o', b'f', b's', b',', b'i', b'm', b'a', b'g', b'e', b'1', 0, //
        b'i', b'm', b'a', b'g', b'e', b'1', b'-', b'b', b'o', b'o', b't',
    ];

    #[cfg(target_endian = "little")]
    const READ_MSG: &[u8] = &[
        0x09, 0, 0, 0, // msg_id 9
        0x02, 0, 0, 0, // opcode READ
        0x20, 0, 0, 0, // len 32
        0x2a, 0, 0, 0, // object_id 42
        0x00, 0x10, 0, 0, 0, 0, 0, 0, // off 4096
        0x00, 0x00, 0x02, 0, 0, 0, 0, 0, // len 128 KiB
    ];

    #[cfg(target_endian = "little")]
    const CLOSE_MSG: &[u8] = &[
        0x0b, 0, 0, 0, // msg_id 11
        0x01, 0, 0, 0, // opcode CLOSE
        0x10, 0, 0, 0, // len 16
        0x2a, 0, 0, 0, // object_id 42
    ];

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_open_bytes() {
        let m = parse_message(OPEN_BOOTSTRAP).unwrap();
        assert_eq!(
            m,
            Message::Open(OpenRequest {
                msg_id: 7,
                object_id: 42,
                volume_key: b"erofs,image1".to_vec(),
                cookie_key: b"image1-boot".to_vec(),
                flags: 0,
                fd: 5,
            })
        );
        assert_eq!(m.opcode(), Opcode::Open);
        assert_eq!(m.msg_id(), 7);
        assert_eq!(m.object_id(), 42);
        assert_eq!(
            build::open(7, 42, b"erofs,image1", b"image1-boot", 5),
            OPEN_BOOTSTRAP
        );
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_read_bytes() {
        let m = parse_message(READ_MSG).unwrap();
        assert_eq!(
            m,
            Message::Read(ReadRequest {
                msg_id: 9,
                object_id: 42,
                off: 4096,
                len: 128 * 1024
            })
        );
        assert_eq!(build::read(9, 42, 4096, 128 * 1024), READ_MSG);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn parses_close_bytes() {
        let m = parse_message(CLOSE_MSG).unwrap();
        assert_eq!(
            m,
            Message::Close(CloseRequest {
                msg_id: 11,
                object_id: 42
            })
        );
        assert_eq!(m.opcode(), Opcode::Close);
        assert_eq!(build::close(11, 42), CLOSE_MSG);
    }

    #[test]
    fn parses_from_unaligned_buffer() {
        let msg = build::read(1, 2, 8192, 4096);
        let mut backing = vec![0xffu8; msg.len() + 1];
        backing[1..].copy_from_slice(&msg);
        let m = parse_message(&backing[1..]).unwrap();
        assert_eq!(
            m,
            Message::Read(ReadRequest {
                msg_id: 1,
                object_id: 2,
                off: 8192,
                len: 4096
            })
        );
    }

    #[test]
    fn open_with_binary_cookie_and_max_size() {
        // A 64-char sha256 hex tag, as an EROFS device slot carries it.
        let tag = [b'a'; 64];
        let m = parse_message(&build::open(1, 1, b"erofs,dom", &tag, 9)).unwrap();
        let Message::Open(o) = m else {
            panic!("not open")
        };
        assert_eq!(o.cookie_key, tag);
        // Binary cookie keys may contain NUL; only the volume key is a C string.
        let m = parse_message(&build::open(1, 1, b"v", &[0, 1, 0, 255], 3)).unwrap();
        let Message::Open(o) = m else {
            panic!("not open")
        };
        assert_eq!(o.cookie_key, [0, 1, 0, 255]);
        // Exactly MSG_MAX_SIZE bytes is fine.
        let cookie = vec![b'x'; MSG_MAX_SIZE - 32 - 2];
        let msg = build::open(1, 1, b"v", &cookie, 3);
        assert_eq!(msg.len(), MSG_MAX_SIZE);
        assert!(parse_message(&msg).is_ok());
    }

    #[test]
    fn empty_volume_key_with_nul_is_accepted() {
        let m = parse_message(&build::open(1, 1, b"", b"c", 3)).unwrap();
        let Message::Open(o) = m else {
            panic!("not open")
        };
        assert!(o.volume_key.is_empty());
    }

    #[test]
    fn short_buffers() {
        let close = build::close(11, 42);
        for n in 0..HEADER_LEN {
            assert_eq!(
                parse_message(&close[..n]),
                Err(ParseError::Short { got: n })
            );
        }
    }

    #[test]
    fn len_field_disagrees_with_read() {
        let mut m = build::close(1, 1);
        m[8..12].copy_from_slice(&20u32.to_ne_bytes());
        assert_eq!(
            parse_message(&m),
            Err(ParseError::LengthMismatch {
                header_len: 20,
                read: 16
            })
        );
        let mut m = build::read(1, 1, 0, 4096);
        m[8..12].copy_from_slice(&16u32.to_ne_bytes());
        assert_eq!(
            parse_message(&m),
            Err(ParseError::LengthMismatch {
                header_len: 16,
                read: 32
            })
        );
    }

    #[test]
    fn too_long() {
        let mut m = build::close(1, 1);
        m[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(
            parse_message(&m),
            Err(ParseError::TooLong {
                len: u32::MAX as usize
            })
        );
        let mut m = build::close(1, 1);
        m[8..12].copy_from_slice(&1025u32.to_ne_bytes());
        assert_eq!(parse_message(&m), Err(ParseError::TooLong { len: 1025 }));
        let big = vec![0u8; MSG_MAX_SIZE + 1];
        assert_eq!(
            parse_message(&big),
            Err(ParseError::TooLong {
                len: MSG_MAX_SIZE + 1
            })
        );
    }

    #[test]
    fn unknown_opcode() {
        let m = build::header(3, 3, 16, 1);
        assert_eq!(
            parse_message(&m),
            Err(ParseError::UnknownOpcode { opcode: 3 })
        );
        let m = build::header(3, u32::MAX, 16, 1);
        assert_eq!(
            parse_message(&m),
            Err(ParseError::UnknownOpcode { opcode: u32::MAX })
        );
        // The header is still readable for error reporting.
        assert_eq!(Header::parse(&m).unwrap().msg_id, 3);
    }

    #[test]
    fn open_payload_too_short() {
        for payload in 0..OPEN_FIXED_LEN {
            let mut m = build::header(1, Opcode::OPEN, (HEADER_LEN + payload) as u32, 1);
            m.resize(HEADER_LEN + payload, 0);
            assert_eq!(
                parse_message(&m),
                Err(ParseError::OpenTooShort {
                    payload_len: payload
                })
            );
        }
    }

    fn open_with_sizes(vks: u32, cks: u32, keys: &[u8]) -> Vec<u8> {
        let len = (HEADER_LEN + OPEN_FIXED_LEN + keys.len()) as u32;
        let mut m = build::header(1, Opcode::OPEN, len, 1);
        for x in [vks, cks, 4, 0] {
            m.extend_from_slice(&x.to_ne_bytes());
        }
        m.extend_from_slice(keys);
        m
    }

    #[test]
    fn open_key_sizes_overflow() {
        let m = open_with_sizes(4, 2, b"abc\0d");
        assert_eq!(
            parse_message(&m),
            Err(ParseError::OpenKeysOverflow {
                volume_key_size: 4,
                cookie_key_size: 2,
                available: 5
            })
        );
        // Sizes whose u32 sum wraps must not slip through.
        let m = open_with_sizes(u32::MAX, 2, b"a\0b");
        assert_eq!(
            parse_message(&m),
            Err(ParseError::OpenKeysOverflow {
                volume_key_size: u32::MAX,
                cookie_key_size: 2,
                available: 3
            })
        );
        let m = open_with_sizes(1, u32::MAX, b"\0b");
        assert!(matches!(
            parse_message(&m),
            Err(ParseError::OpenKeysOverflow { .. })
        ));
    }

    #[test]
    fn open_trailing_bytes() {
        let m = open_with_sizes(2, 1, b"a\0bXY");
        assert_eq!(
            parse_message(&m),
            Err(ParseError::OpenTrailingBytes { extra: 2 })
        );
    }

    #[test]
    fn volume_key_missing_nul() {
        let m = open_with_sizes(3, 1, b"abcd");
        assert_eq!(parse_message(&m), Err(ParseError::VolumeKeyMissingNul));
        let m = open_with_sizes(0, 1, b"d");
        assert_eq!(parse_message(&m), Err(ParseError::VolumeKeyMissingNul));
    }

    #[test]
    fn volume_key_interior_nul() {
        let m = open_with_sizes(4, 1, b"a\0c\0d");
        assert_eq!(
            parse_message(&m),
            Err(ParseError::VolumeKeyInteriorNul { at: 1 })
        );
    }

    #[test]
    fn open_negative_fd() {
        let mut m = build::open(1, 1, b"v", b"c", 0);
        m[24..28].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(
            parse_message(&m),
            Err(ParseError::OpenBadFd { fd: u32::MAX })
        );
    }

    #[test]
    fn read_payload_wrong_size() {
        let mut m = build::read(1, 1, 0, 4096);
        m.truncate(HEADER_LEN + 8);
        m[8..12].copy_from_slice(&((HEADER_LEN + 8) as u32).to_ne_bytes());
        assert_eq!(
            parse_message(&m),
            Err(ParseError::ReadPayloadLength { payload_len: 8 })
        );
        let m = build::header(1, Opcode::READ, 16, 1);
        assert_eq!(
            parse_message(&m),
            Err(ParseError::ReadPayloadLength { payload_len: 0 })
        );
        let mut m = build::read(1, 1, 0, 4096);
        m.extend_from_slice(&[0; 4]);
        m[8..12].copy_from_slice(&36u32.to_ne_bytes());
        assert_eq!(
            parse_message(&m),
            Err(ParseError::ReadPayloadLength { payload_len: 20 })
        );
    }

    #[test]
    fn read_range_overflow() {
        let m = build::read(1, 1, u64::MAX - 10, 4096);
        assert_eq!(
            parse_message(&m),
            Err(ParseError::ReadRangeOverflow {
                off: u64::MAX - 10,
                len: 4096
            })
        );
    }

    #[test]
    fn close_with_payload() {
        let mut m = build::close(1, 1);
        m.extend_from_slice(&[0; 4]);
        m[8..12].copy_from_slice(&20u32.to_ne_bytes());
        assert_eq!(
            parse_message(&m),
            Err(ParseError::ClosePayload { payload_len: 4 })
        );
    }

    #[test]
    fn errors_display() {
        let e = ParseError::OpenKeysOverflow {
            volume_key_size: 1,
            cookie_key_size: 2,
            available: 0,
        };
        assert!(e.to_string().contains("exceed"));
    }

    #[test]
    fn claim_fd_moves_fd_into_owned() {
        use std::os::fd::{AsRawFd, IntoRawFd};
        let f = std::fs::File::open("/dev/null").unwrap().into_raw_fd();
        let m = parse_message(&build::open(1, 2, b"v", b"c", f as u32)).unwrap();
        let owned = unsafe { m.claim_fd() };
        let Message::Open(o) = owned else {
            panic!("not open")
        };
        assert_eq!(o.fd.as_raw_fd(), f);
        // Dropping `o` closes it.
    }
}
