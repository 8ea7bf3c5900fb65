//! Byte-level tests: gzip streams made here with flate2, resume points found here with zlib's
//! `Z_BLOCK` walk (bit position + the previous 32 KiB of output at every block boundary), then
//! [`RawInflater`] restarted at each point must reproduce the original bytes.

use std::io::Write;

use super::*;

/// Mixed data: runs of text (long matches), pseudo-random bytes (stored/literal blocks) and
/// zeros, so the encoder emits many blocks of different kinds.
fn sample(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).max(1);
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let words: [&[u8]; 6] = [b"erofs ", b"chunk ", b"gzip ", b"window ", b"resume\n", b"zran "];
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let r = next();
        let len = (r >> 8) as usize % 20000;
        match r % 4 {
            0 => (0..len / 6).for_each(|_| out.extend_from_slice(words[next() as usize % 6])),
            1 => (0..len / 4).for_each(|_| out.push(next() as u8)),
            // Skewed letters: literals the encoder Huffman-codes (not stored), so blocks end
            // at arbitrary bit positions.
            2 => (0..len).for_each(|_| out.push(b'a' + (next() % 7 + next() % 17) as u8)),
            _ => out.extend(std::iter::repeat_n(0u8, len / 4)),
        }
    }
    out.truncate(n);
    out
}

fn gzip(data: &[u8], name: Option<&str>) -> Vec<u8> {
    let mut b = flate2::GzBuilder::new();
    if let Some(n) = name {
        b = b.filename(n).comment("a comment").extra(vec![1, 2, 3]);
    }
    let mut e = b.write(Vec::new(), flate2::Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

struct Point {
    in_off: usize,
    out_off: usize,
    bits: u8,
    byte: u8,
    window: Vec<u8>,
}

/// Walks one gzip member block by block and records a resume point at every block boundary.
fn points(gz: &[u8], plain_len: usize) -> Vec<Point> {
    let mut out = vec![0u8; plain_len];
    let mut strm = empty_stream();
    strm.next_in = gz.as_ptr() as *mut u8;
    strm.avail_in = gz.len() as c_uint;
    strm.next_out = out.as_mut_ptr();
    strm.avail_out = out.len() as c_uint;
    // 31 = gzip wrapper, 32 KiB window.
    assert_eq!(unsafe { z::inflateInit2_(&mut *strm, 31, z::zlibVersion(), std::mem::size_of::<z::z_stream>() as c_int) }, z::Z_OK);
    let mut pts = Vec::new();
    loop {
        let ret = unsafe { z::inflate(&mut *strm, z::Z_BLOCK) };
        if ret == z::Z_STREAM_END {
            break;
        }
        assert_eq!(ret, z::Z_OK);
        let dt = strm.data_type;
        if dt & 128 != 0 && dt & 64 == 0 {
            let (i, o) = (strm.total_in as usize, strm.total_out as usize);
            let bits = (dt & 7) as u8;
            pts.push(Point { in_off: i, out_off: o, bits, byte: if bits > 0 { gz[i - 1] } else { 0 }, window: out[o.saturating_sub(WINDOW_SIZE)..o].to_vec() });
        }
    }
    assert_eq!(strm.total_out as usize, plain_len);
    unsafe { z::inflateEnd(&mut *strm) };
    pts
}

fn at(p: &Point) -> ResumePoint<'_> {
    ResumePoint { bits: p.bits, byte: p.byte, window: &p.window }
}

#[test]
fn resumes_at_every_block_boundary() {
    let plain = sample(900_000, 7);
    let gz = gzip(&plain, None);
    let pts = points(&gz, plain.len());
    assert!(pts.len() > 5, "{} block boundaries", pts.len());
    assert!(pts.iter().any(|p| p.bits != 0), "some boundaries fall inside a byte");
    assert!(pts.iter().any(|p| p.window.len() == WINDOW_SIZE && p.out_off > 0));
    let mut inf = RawInflater::new().unwrap();
    for p in &pts {
        let input = &gz[p.in_off..];
        inf.resume(&at(p)).unwrap();
        let rest = plain.len() - p.out_off;
        // A piece a little way in, then (after skipping) the tail: what a chunk read does.
        let skip = (rest / 3) as u64;
        let mut a = vec![0u8; rest.min(5000 + skip as usize) - skip as usize];
        inf.skip(input, skip).unwrap();
        inf.read_exact(input, &mut a).unwrap();
        let from = p.out_off + skip as usize;
        assert_eq!(a, plain[from..from + a.len()], "resume at in {} out {} bits {}", p.in_off, p.out_off, p.bits);
        let done = p.out_off + skip as usize + a.len();
        let mut b = vec![0u8; plain.len() - done];
        inf.read_exact(input, &mut b).unwrap();
        assert_eq!(b, plain[done..]);
        assert_eq!(inf.produced(), (plain.len() - p.out_off) as u64);
    }
}

#[test]
fn crosses_into_the_next_gzip_member() {
    let (one, two) = (sample(200_000, 1), sample(150_000, 2));
    let (g1, g2) = (gzip(&one, None), gzip(&two, Some("second.tar")));
    let stream: Vec<u8> = [g1.clone(), g2].concat();
    let whole: Vec<u8> = [one.clone(), two].concat();
    let pts = points(&g1, one.len());
    let p = &pts[pts.len() / 2];
    let mut inf = RawInflater::new().unwrap();
    inf.resume(&at(p)).unwrap();
    let mut got = vec![0u8; whole.len() - p.out_off];
    inf.read_exact(&stream[p.in_off..], &mut got).unwrap();
    assert_eq!(got, whole[p.out_off..]);
    // Asking past the last member is an error, not a hang.
    let mut more = [0u8; 1];
    let e = inf.read_exact(&stream[p.in_off..], &mut more).unwrap_err();
    assert!(e.0.contains("ends"), "{e}");
}

#[test]
fn truncated_input_is_an_error() {
    let plain = sample(300_000, 3);
    let gz = gzip(&plain, None);
    let pts = points(&gz, plain.len());
    let p = &pts[1];
    let mut inf = RawInflater::new().unwrap();
    inf.resume(&at(p)).unwrap();
    let cut = &gz[p.in_off..p.in_off + 1000];
    let mut out = vec![0u8; plain.len() - p.out_off];
    let e = inf.read_exact(cut, &mut out).unwrap_err();
    assert!(e.0.contains("ends"), "{e}");
    // Empty input, too.
    inf.resume(&at(p)).unwrap();
    assert!(inf.read_exact(&[], &mut out[..10]).is_err());
}

#[test]
fn bad_resume_points_are_refused() {
    let mut inf = RawInflater::new().unwrap();
    let e = inf.resume(&ResumePoint { bits: 8, byte: 0, window: &[] }).unwrap_err();
    assert!(e.0.contains("leftover bits"), "{e}");
    let big = vec![0u8; WINDOW_SIZE + 1];
    let e = inf.resume(&ResumePoint { bits: 0, byte: 0, window: &big }).unwrap_err();
    assert!(e.0.contains("window"), "{e}");
}

#[test]
fn garbage_never_panics() {
    let plain = sample(200_000, 4);
    let gz = gzip(&plain, None);
    let pts = points(&gz, plain.len());
    let mut inf = RawInflater::new().unwrap();
    let mut errors = 0;
    for (k, p) in pts.iter().enumerate() {
        // Flip a byte near the resume point, and also resume with the wrong bit count.
        let mut input = gz[p.in_off..].to_vec();
        let i = (k * 37) % input.len().min(64);
        input[i] ^= 0x5a;
        for bits in [p.bits, (p.bits + 3) % 8] {
            inf.resume(&ResumePoint { bits, byte: p.byte, window: &p.window }).unwrap();
            let mut out = vec![0u8; plain.len() - p.out_off];
            match inf.read_exact(&input, &mut out) {
                Err(_) => errors += 1,
                Ok(()) => assert_ne!(out, plain[p.out_off..], "a corrupted stream decoded to the original"),
            }
        }
    }
    assert!(errors > 0);
}

#[test]
fn gzip_header_lengths() {
    let plain = b"x".repeat(100);
    assert_eq!(gzip_header_len(&gzip(&plain, None)).unwrap(), 10);
    // FEXTRA (2 + 3) + FNAME ("n.tar\0") + FCOMMENT ("a comment\0").
    assert_eq!(gzip_header_len(&gzip(&plain, Some("n.tar"))).unwrap(), 10 + 5 + 6 + 10);
    let mut h = gzip(&plain, None);
    h[3] |= 0x02; // FHCRC
    assert_eq!(gzip_header_len(&h).unwrap(), 12);
    h[3] = 0x20;
    assert!(gzip_header_len(&h).unwrap_err().0.contains("reserved"));
    assert!(gzip_header_len(&h[..5]).unwrap_err().0.contains("truncated"));
    let named = gzip(&plain, Some("n.tar"));
    assert!(gzip_header_len(&named[..14]).unwrap_err().0.contains("truncated"));
    assert!(gzip_header_len(b"PK\x03\x04xxxxxxxx").unwrap_err().0.contains("magic"));
}

