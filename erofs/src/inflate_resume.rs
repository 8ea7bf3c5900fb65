//! Raw DEFLATE decoding resumed in the middle of a gzip stream.
//!
//! nydus "zran" images keep an original gzip layer as the data blob and index it with resume
//! points: at a DEFLATE block boundary the decoder state is just (a) the bit position inside
//! the current input byte and (b) the last 32 KiB of output, which later blocks may copy
//! from. Given those, zlib can start decoding there: `inflatePrime` pushes the leftover bits
//! of the partly consumed byte, `inflateSetDictionary` presets the window. Neither is offered
//! by the pure-Rust inflaters, hence this small safe wrapper over zlib (`libz-sys`).
//!
//! What is and is not checked here: DEFLATE has no checksum of its own; the gzip CRC32 covers a
//! whole member, which a resumed decode never sees from the start. A decode that succeeds
//! proves only that the input is a well-formed DEFLATE stream from that point on (wrong
//! windows or bit positions almost always end in a data error, but not provably). Callers
//! check what they can (a chunk CRC32C, the digest of the index they trusted).

use std::os::raw::{c_int, c_uint};
use std::ptr;

use libz_sys as z;

/// Largest DEFLATE window (and so the largest useful preset dictionary).
pub const WINDOW_SIZE: usize = 32 * 1024;

/// Why a resumed decode failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InflateError(pub String);

fn err(msg: impl Into<String>) -> InflateError {
    InflateError(msg.into())
}

/// Where to resume: the bits of the byte before the input that are still unread (0–7, the
/// byte's top bits) and the output window preceding this point (at most [`WINDOW_SIZE`]).
#[derive(Clone, Copy, Debug)]
pub struct ResumePoint<'a> {
    pub bits: u8,
    pub byte: u8,
    pub window: &'a [u8],
}

// zlib allocates through these; the C allocator keeps sizes for us.
unsafe extern "C" fn zalloc(_opaque: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    libc::calloc(items as libc::size_t, size as libc::size_t)
}
unsafe extern "C" fn zfree(_opaque: z::voidpf, p: z::voidpf) {
    libc::free(p)
}

/// A raw-DEFLATE decoder that is restarted at resume points and then reads forward.
///
/// Between [`RawInflater::resume`] and the next resume, every call must pass the same `input`:
/// the compressed bytes from the resume point on. The decoder remembers how much of it it has
/// consumed; zlib keeps no pointer into it between calls.
/// A zlib stream with no input, no output and our allocator, ready for an `inflateInit2_`
/// (boxed: zlib's state points back at the stream and refuses a moved one).
fn empty_stream() -> Box<z::z_stream> {
    Box::new(z::z_stream {
        next_in: ptr::null_mut(),
        avail_in: 0,
        total_in: 0,
        next_out: ptr::null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: ptr::null_mut(),
        state: ptr::null_mut(),
        zalloc,
        zfree,
        opaque: ptr::null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    })
}

pub struct RawInflater {
    // Boxed: zlib's state points back at the stream and refuses a moved one.
    strm: Box<z::z_stream>,
    consumed: usize,
    produced: u64,
    /// The last inflate call ended a gzip member; the next read steps into the next one.
    member_ended: bool,
}

// The stream owns its zlib state exclusively; nothing in it is tied to a thread.
unsafe impl Send for RawInflater {}

impl RawInflater {
    pub fn new() -> Result<RawInflater, InflateError> {
        let mut strm = empty_stream();
        // Negative window bits: raw DEFLATE, no zlib/gzip wrapper expected.
        let ret = unsafe {
            z::inflateInit2_(&mut *strm, -15, z::zlibVersion(), std::mem::size_of::<z::z_stream>() as c_int)
        };
        if ret != z::Z_OK {
            return Err(err(format!("zlib inflateInit2 failed ({ret})")));
        }
        Ok(RawInflater { strm, consumed: 0, produced: 0, member_ended: false })
    }

    /// Restarts decoding at `at`; the next reads take input from the start of their `input`.
    pub fn resume(&mut self, at: &ResumePoint) -> Result<(), InflateError> {
        if at.bits > 7 {
            return Err(err(format!("resume point with {} leftover bits (at most 7)", at.bits)));
        }
        if at.window.len() > WINDOW_SIZE {
            return Err(err(format!("resume window of {} bytes (at most {WINDOW_SIZE})", at.window.len())));
        }
        self.consumed = 0;
        self.produced = 0;
        self.member_ended = false;
        unsafe {
            if z::inflateReset(&mut *self.strm) != z::Z_OK {
                return Err(err("zlib inflateReset failed"));
            }
            if at.bits > 0 && z::inflatePrime(&mut *self.strm, at.bits as c_int, (at.byte >> (8 - at.bits)) as c_int) != z::Z_OK {
                return Err(err("zlib inflatePrime failed"));
            }
            if !at.window.is_empty()
                && z::inflateSetDictionary(&mut *self.strm, at.window.as_ptr(), at.window.len() as c_uint) != z::Z_OK
            {
                return Err(err("zlib inflateSetDictionary failed"));
            }
        }
        Ok(())
    }

    /// Output bytes produced since the last resume.
    pub fn produced(&self) -> u64 {
        self.produced
    }

    /// Input bytes consumed since the last resume.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Decodes and discards the next `n` output bytes.
    pub fn skip(&mut self, input: &[u8], mut n: u64) -> Result<(), InflateError> {
        let mut scratch = [0u8; 16 * 1024];
        while n > 0 {
            let k = n.min(scratch.len() as u64) as usize;
            self.read_exact(input, &mut scratch[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Decodes exactly `out.len()` bytes. A gzip member ending on the way (a multi-member
    /// layer) is stepped over: its 8-byte trailer and the next member's header are skipped.
    pub fn read_exact(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), InflateError> {
        let mut filled = 0usize;
        while filled < out.len() {
            if self.member_ended {
                self.next_member(input)?;
                self.member_ended = false;
            }
            let rest = input
                .get(self.consumed..)
                .ok_or_else(|| err("input shorter than what was already consumed (input changed between calls)"))?;
            let avail_in = rest.len().min(c_uint::MAX as usize) as c_uint;
            let avail_out = (out.len() - filled).min(c_uint::MAX as usize) as c_uint;
            self.strm.next_in = rest.as_ptr() as *mut u8;
            self.strm.avail_in = avail_in;
            self.strm.next_out = out[filled..].as_mut_ptr();
            self.strm.avail_out = avail_out;
            let ret = unsafe { z::inflate(&mut *self.strm, z::Z_NO_FLUSH) };
            let used = (avail_in - self.strm.avail_in) as usize;
            let got = (avail_out - self.strm.avail_out) as usize;
            let msg = self.zlib_msg();
            self.strm.next_in = ptr::null_mut();
            self.strm.avail_in = 0;
            self.strm.next_out = ptr::null_mut();
            self.strm.avail_out = 0;
            self.consumed += used;
            self.produced += got as u64;
            filled += got;
            match ret {
                z::Z_OK => {}
                z::Z_STREAM_END => self.member_ended = true,
                z::Z_BUF_ERROR if used == 0 && got == 0 => {
                    return Err(err(format!(
                        "compressed input ({} bytes) ends {} bytes into the output",
                        input.len(),
                        self.produced
                    )))
                }
                z::Z_BUF_ERROR => {}
                z::Z_DATA_ERROR => return Err(err(format!("corrupt deflate data after {} output bytes: {msg}", self.produced))),
                z::Z_MEM_ERROR => return Err(err("zlib out of memory")),
                other => return Err(err(format!("zlib inflate failed ({other}): {msg}"))),
            }
        }
        Ok(())
    }

    fn zlib_msg(&self) -> String {
        if self.strm.msg.is_null() {
            return "no message".into();
        }
        unsafe { std::ffi::CStr::from_ptr(self.strm.msg) }.to_string_lossy().into_owned()
    }

    /// After a member's last block: skip its trailer and the next member's header, then
    /// continue with a fresh raw decoder (members never refer back to earlier ones).
    fn next_member(&mut self, input: &[u8]) -> Result<(), InflateError> {
        let after_trailer = self.consumed + 8;
        let rest = input
            .get(after_trailer..)
            .filter(|r| !r.is_empty())
            .ok_or_else(|| err(format!("gzip stream ends {} bytes into the output", self.produced)))?;
        let header = gzip_header_len(rest)?;
        self.consumed = after_trailer + header;
        if unsafe { z::inflateReset(&mut *self.strm) } != z::Z_OK {
            return Err(err("zlib inflateReset failed"));
        }
        Ok(())
    }
}

impl Drop for RawInflater {
    fn drop(&mut self) {
        unsafe { z::inflateEnd(&mut *self.strm) };
    }
}

/// Length of the gzip member header at the start of `b` (RFC 1952 §2.3).
pub fn gzip_header_len(b: &[u8]) -> Result<usize, InflateError> {
    const FHCRC: u8 = 0x02;
    const FEXTRA: u8 = 0x04;
    const FNAME: u8 = 0x08;
    const FCOMMENT: u8 = 0x10;
    let short = || err("gzip member header truncated");
    if b.len() < 10 {
        return Err(short());
    }
    if b[0] != 0x1f || b[1] != 0x8b || b[2] != 8 {
        return Err(err("next gzip member has a bad header (magic or method)"));
    }
    let flags = b[3];
    if flags & 0xE0 != 0 {
        return Err(err("gzip member header with reserved flags"));
    }
    let mut at = 10usize;
    if flags & FEXTRA != 0 {
        let xlen = b.get(at..at + 2).ok_or_else(short)?;
        at += 2 + u16::from_le_bytes([xlen[0], xlen[1]]) as usize;
    }
    for bit in [FNAME, FCOMMENT] {
        if flags & bit != 0 {
            let nul = b.get(at..).and_then(|r| r.iter().position(|&c| c == 0)).ok_or_else(short)?;
            at += nul + 1;
        }
    }
    if flags & FHCRC != 0 {
        at += 2;
    }
    if at > b.len() {
        return Err(short());
    }
    Ok(at)
}

#[cfg(test)]
mod tests;
