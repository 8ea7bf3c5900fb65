//! zran blob meta: a well-formed synthetic table built here, every field a hostile one can
//! lie about, and the real `targz-ref` fixture decoded chunk by chunk against its gzip layer.

use super::super::*;
use super::*;

const ID: &str = "48a5bcfeb1a2871d4401c6a0568b54cdec38c36116f811f2e62b397bd46c8eb0";
const GZ_SIZE: u64 = 100_000;
const ENTRIES: usize = 3 * 24;
const CTX: usize = ENTRIES; // context array right after the entries
const DICTS: usize = CTX + 2 * CONTEXT_SIZE;
const TABLE: usize = DICTS + WINDOW_SIZE;

fn entry() -> Vec<u8> {
    let mut e = vec![0u8; 256];
    e[..64].copy_from_slice(ID.as_bytes());
    e[68..72].copy_from_slice(&(1u32 << 20).to_le_bytes());
    e[72..76].copy_from_slice(&3u32.to_le_bytes());
    e[76..80].copy_from_slice(&2u32.to_le_bytes()); // gzip
    e[80..84].copy_from_slice(&1u32.to_le_bytes());
    let f = FEATURE_ALIGNED | FEATURE_CHUNK_INFO_V2 | FEATURE_ZRAN | FEATURE_SEPARATE | FEATURE_CAP_TAR_TOC;
    e[84..88].copy_from_slice(&f.to_le_bytes());
    e[88..96].copy_from_slice(&GZ_SIZE.to_le_bytes());
    e[96..104].copy_from_slice(&(3 * 4096u64).to_le_bytes());
    e[108..112].copy_from_slice(&0u32.to_le_bytes()); // CI stored uncompressed
    e[120..128].copy_from_slice(&(TABLE as u64).to_le_bytes());
    e[128..136].copy_from_slice(&(TABLE as u64).to_le_bytes());
    e[168..200].copy_from_slice(&[7u8; 32]);
    e[200..208].copy_from_slice(&(TABLE as u64 + 4096).to_le_bytes());
    e
}

fn ci(uoff: u64, usz: u64, coff: u64, csz: u64, ctx: u32, off: u32) -> [u8; 24] {
    let mut r = [0u8; 24];
    r[..8].copy_from_slice(&((uoff >> 12) | (usz - 1) << 32 | 0x03u64 << 56).to_le_bytes());
    r[8..16].copy_from_slice(&(coff | csz << 40).to_le_bytes());
    r[16..].copy_from_slice(&((ctx as u64) << 32 | off as u64).to_le_bytes());
    r
}

#[allow(clippy::too_many_arguments)]
fn context(inoff: u64, outoff: u64, dict_off: u64, in_len: u32, out_len: u32, dict: u32, byte: u8, bits: u8) -> [u8; 40] {
    let mut c = [0u8; 40];
    c[..8].copy_from_slice(&inoff.to_le_bytes());
    c[8..16].copy_from_slice(&outoff.to_le_bytes());
    c[16..24].copy_from_slice(&dict_off.to_le_bytes());
    c[24..28].copy_from_slice(&in_len.to_le_bytes());
    c[28..32].copy_from_slice(&out_len.to_le_bytes());
    c[32..36].copy_from_slice(&dict.to_le_bytes());
    c[36] = byte;
    c[37] = bits;
    c
}

/// (table, header): 3 chunks over 2 contexts; context 1 has a full window and 3 leftover bits.
fn meta() -> (Vec<u8>, Vec<u8>) {
    let mut t = Vec::new();
    t.extend(ci(0, 4096, 20, 3000, 0, 0));
    t.extend(ci(4096, 4000, 3020, 2000, 0, 10_000));
    t.extend(ci(8192, 4096, 40_000, 3000, 1, 500));
    t.extend(context(20, 0, 0, 40_000, 50_000, 0, 0, 0));
    t.extend(context(39_000, 49_000, 0, 50_000, 60_000, WINDOW_SIZE as u32, 0xAB, 3));
    t.extend((0..WINDOW_SIZE).map(|i| i as u8));
    assert_eq!(t.len(), TABLE);
    let mut h = vec![0u8; 4096];
    h[..4].copy_from_slice(&0xB10B_B10Bu32.to_le_bytes());
    h[4092..].copy_from_slice(&0xB10B_B10Bu32.to_le_bytes());
    h[4..8].copy_from_slice(&u32_at(&entry(), 84).to_le_bytes());
    h[12..16].copy_from_slice(&3u32.to_le_bytes());
    h[24..32].copy_from_slice(&(TABLE as u64).to_le_bytes());
    h[32..40].copy_from_slice(&(TABLE as u64).to_le_bytes());
    h[40..48].copy_from_slice(&(CTX as u64).to_le_bytes());
    h[48..56].copy_from_slice(&((TABLE - CTX) as u64).to_le_bytes());
    h[56..60].copy_from_slice(&2u32.to_le_bytes());
    (t, h)
}

#[test]
fn parses_contexts_and_resolves_chunks() {
    let b = RafsBlob::parse(&entry(), 0).unwrap();
    assert!(b.is_zran());
    assert_eq!(b.meta_blob(), Some(("07".repeat(32), TABLE as u64 + 4096)));
    assert_eq!(b.data_end(), GZ_SIZE);
    let (t, h) = meta();
    check_meta_header(&b, &h).unwrap();
    let m = parse_blob_meta(&b, &h, &t).unwrap();
    let z = m.zran.as_ref().unwrap();
    assert_eq!(z.contexts().len(), 2);
    assert_eq!(m.chunks[0].zran, Some(ZranRef { context: 0, offset: 0, input_start: 20 }));
    assert_eq!(m.chunks[2].zran, Some(ZranRef { context: 1, offset: 500, input_start: 39_000 }));
    assert_eq!((m.chunks[1].fetch_start(), m.chunks[1].stored.clone()), (20, 3020..5020));
    let p = z.resume_point(1).unwrap();
    assert_eq!((p.bits, p.byte, p.window.len(), p.window[5]), (3, 0xAB, WINDOW_SIZE, 5));
    assert!(z.resume_point(0).unwrap().window.is_empty());
    assert!(z.resume_point(2).is_none());
    // The map fetches a zran chunk from its context's start, also behind a leading hole.
    let map = crate::blob::GroupMap::chunked(b.uncompressed_size, m.chunks.clone()).unwrap();
    assert_eq!(map.stored_range(1), 20..5020);
    assert_eq!(map.span(1, 2), 20..43_000);
    // Plain parsing refuses a zran blob (it needs the contexts).
    assert!(parse_chunk_infos(&b, &t).is_err());
}

type Mutation = Box<dyn Fn(&mut Vec<u8>, &mut Vec<u8>)>;

fn set_ctx(t: &mut [u8], i: usize, field: usize, v: &[u8]) {
    t[CTX + i * CONTEXT_SIZE + field..CTX + i * CONTEXT_SIZE + field + v.len()].copy_from_slice(v);
}

#[test]
fn hostile_zran_tables_are_refused() {
    let b = RafsBlob::parse(&entry(), 0).unwrap();
    let cases: Vec<(&str, &str, Mutation)> = vec![
        ("context index out of range", "out of range", Box::new(|t, _| t[2 * 24 + 20] = 5)),
        ("context index huge", "out of range", Box::new(|t, _| t[2 * 24 + 16..2 * 24 + 24].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("in_offset past the blob", "past the", Box::new(|t, _| set_ctx(t, 1, 0, &99_000u64.to_le_bytes()))),
        ("in_offset overflows", "past the", Box::new(|t, _| set_ctx(t, 1, 0, &u64::MAX.to_le_bytes()))),
        ("in_len past the blob", "past the", Box::new(|t, _| set_ctx(t, 1, 24, &70_000u32.to_le_bytes()))),
        ("in_len huge", "over", Box::new(|t, _| set_ctx(t, 1, 24, &u32::MAX.to_le_bytes()))),
        ("in_len zero", "empty", Box::new(|t, _| set_ctx(t, 0, 24, &0u32.to_le_bytes()))),
        ("out_len zero", "empty", Box::new(|t, _| set_ctx(t, 0, 28, &0u32.to_le_bytes()))),
        ("dict_offset past the table", "outside", Box::new(|t, _| set_ctx(t, 1, 16, &1u64.to_le_bytes()))),
        ("dict_offset overflows", "outside", Box::new(|t, _| set_ctx(t, 1, 16, &u64::MAX.to_le_bytes()))),
        ("dict_size over 32 KiB", "outside", Box::new(|t, _| set_ctx(t, 0, 32, &(WINDOW_SIZE as u32 + 1).to_le_bytes()))),
        ("dict_size huge", "outside", Box::new(|t, _| set_ctx(t, 0, 32, &u32::MAX.to_le_bytes()))),
        ("ctx_bits 8", "leftover bits", Box::new(|t, _| set_ctx(t, 1, 37, &[8]))),
        ("ctx_bits 255", "leftover bits", Box::new(|t, _| set_ctx(t, 1, 37, &[255]))),
        ("out_len too small for the chunk", "output bytes", Box::new(|t, _| set_ctx(t, 0, 28, &13_999u32.to_le_bytes()))),
        ("chunk offset past the output", "output bytes", Box::new(|t, _| t[24 + 16..24 + 20].copy_from_slice(&u32::MAX.to_le_bytes()))),
        ("chunk before its context's input", "outside the context's input", Box::new(|t, _| set_ctx(t, 0, 0, &21u64.to_le_bytes()))),
        ("chunk after its context's input", "outside the context's input", Box::new(|t, _| set_ctx(t, 0, 24, &4000u32.to_le_bytes()))),
        ("contexts out of stream order", "not after", Box::new(|t, _| set_ctx(t, 1, 0, &10u64.to_le_bytes()))),
        ("context output out of order", "not after", Box::new(|t, _| set_ctx(t, 1, 8, &0u64.to_le_bytes()))),
        ("chunk without the zran flag", "without the zran", Box::new(|t, _| t[7] = 0x01)),
        ("header count huge", "does not fit", Box::new(|_, h| h[56..60].copy_from_slice(&u32::MAX.to_le_bytes()))),
        ("header count zero", "does not fit", Box::new(|_, h| h[56..60].copy_from_slice(&0u32.to_le_bytes()))),
        ("header offset inside the entries", "outside", Box::new(|_, h| h[40..48].copy_from_slice(&24u64.to_le_bytes()))),
        ("header size past the table", "outside", Box::new(|_, h| h[48..56].copy_from_slice(&(TABLE as u64).to_le_bytes()))),
        ("header offset+size overflows", "overflows", Box::new(|_, h| h[48..56].copy_from_slice(&u64::MAX.to_le_bytes()))),
    ];
    for (what, says, f) in cases {
        let (mut t, mut h) = meta();
        f(&mut t, &mut h);
        let err = parse_blob_meta(&b, &h, &t).unwrap_err();
        assert!(matches!(err, RafsError::Corrupt(_)) && err.to_string().contains(says), "{what}: {err}");
    }
    // Chunks must not go back to an earlier context (decoding runs only forward).
    let (mut t, h) = meta();
    set_ctx(&mut t, 1, 0, &25u64.to_le_bytes());
    t[..24].copy_from_slice(&ci(0, 4096, 25, 2990, 1, 0));
    let err = parse_blob_meta(&b, &h, &t).unwrap_err().to_string();
    assert!(err.contains("after chunk 0 used context 1"), "{err}");
    // Every single-byte change of the header fields and the context array: no panic.
    let (t0, h0) = meta();
    for at in (40..60).map(|i| (false, i)).chain((CTX..DICTS).map(|i| (true, i))) {
        for bit in [0x01u8, 0x80] {
            let (mut t, mut h) = (t0.clone(), h0.clone());
            if at.0 { t[at.1] ^= bit } else { h[at.1] ^= bit }
            let _ = parse_blob_meta(&b, &h, &t);
        }
    }
}

/// A corruption applied to a copy of a good image.
type Corrupt = Box<dyn Fn(&mut Vec<u8>)>;

#[test]
fn hostile_zran_blob_entries_are_refused() {
    let cases: Vec<(&str, bool, Corrupt)> = vec![
        ("zran without separate meta", true, Box::new(|e| e[84] &= !(FEATURE_SEPARATE as u8))),
        ("separate meta without zran", true, Box::new(|e| e[84] &= !(FEATURE_ZRAN as u8))),
        ("zran with zstd chunks", false, Box::new(|e| e[76] = 3)),
        ("zran with v1 chunk infos", false, Box::new(|e| e[84] &= !(FEATURE_CHUNK_INFO_V2 as u8))),
        ("no meta digest", false, Box::new(|e| e[168..200].fill(0))),
        ("meta blob huge", false, Box::new(|e| e[200..208].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("meta past the meta blob", false, Box::new(|e| e[200..208].copy_from_slice(&(TABLE as u64).to_le_bytes()))),
        ("CI table without contexts", false, Box::new(|e| {
            e[120..128].copy_from_slice(&72u64.to_le_bytes());
            e[128..136].copy_from_slice(&72u64.to_le_bytes());
        })),
        ("CI table huge", false, Box::new(|e| {
            e[120..128].copy_from_slice(&(1u64 << 40).to_le_bytes());
            e[128..136].copy_from_slice(&(1u64 << 40).to_le_bytes());
        })),
    ];
    for (what, unsupported, f) in cases {
        let mut e = entry();
        f(&mut e);
        let r = RafsBlob::parse(&e, 0);
        if unsupported {
            assert!(matches!(r, Err(RafsError::Unsupported(_))), "{what}: {r:?}");
        } else {
            assert!(matches!(r, Err(RafsError::Corrupt(_))), "{what}: {r:?}");
        }
    }
    let mut e = entry();
    e[76] = 2;
    e[84..88].copy_from_slice(&(FEATURE_ALIGNED).to_le_bytes());
    assert!(matches!(RafsBlob::parse(&e, 0), Err(RafsError::Unsupported(_))), "gzip chunks outside zran");
}

/// The real `targz-ref` image: every chunk decoded from its context through
/// [`crate::inflate_resume`] equals the same bytes of the whole layer inflated from its start.
#[test]
fn real_targz_ref_fixture_decodes() {
    use std::io::Read;
    let dir = crate::rafs::tests::fixture_dir();
    let img = dir.join("targz-ref");
    let boot = std::fs::read(img.join("image.boot")).unwrap();
    let t = parse_blob_table(&boot, 1).unwrap();
    let b = &t[0];
    let (meta_id, meta_size) = b.meta_blob().unwrap();
    let meta = std::fs::read(img.join("blobs").join(&meta_id)).unwrap();
    assert_eq!(meta.len() as u64, meta_size);
    let parsed = read_blob_meta(b, &meta[b.meta_range().start as usize..b.meta_range().end as usize]).unwrap();
    let z = parsed.zran.unwrap();
    assert_eq!((parsed.chunks.len(), z.contexts().len()), (38, 10));
    let gz = std::fs::read(img.join("blobs").join(&b.id)).unwrap();
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
    let mut inf = crate::inflate_resume::RawInflater::new().unwrap();
    for (i, c) in parsed.chunks.iter().enumerate() {
        let r = c.zran.unwrap();
        let ctx = z.contexts()[r.context as usize];
        inf.resume(&z.resume_point(r.context).unwrap()).unwrap();
        let input = &gz[ctx.input().start as usize..ctx.input().end as usize];
        let mut out = vec![0u8; (c.uncompressed.end - c.uncompressed.start) as usize];
        inf.skip(input, r.offset as u64).unwrap();
        inf.read_exact(input, &mut out).unwrap();
        let at = (ctx.out_offset + r.offset as u64) as usize;
        assert!(out == tar[at..at + out.len()], "chunk {i}");
    }
}

/// The bootstrap's chunk table gives every targz-ref chunk a sha256 that its decoded bytes
/// match; a lying table is refused at load or caught on decode.
#[test]
fn chunk_table_digests_verify_zran_chunks() {
    let dir = crate::rafs::tests::fixture_dir();
    let img = dir.join("targz-ref");
    let boot = std::fs::read(img.join("image.boot")).unwrap();
    let b = parse_blob_table(&boot, 1).unwrap().remove(0);
    let meta = std::fs::read(img.join("blobs").join(b.meta_blob().unwrap().0)).unwrap();
    let parsed = read_blob_meta(&b, &meta[b.meta_range().start as usize..b.meta_range().end as usize]).unwrap();
    let mut chunks = parsed.chunks.clone();
    assert_eq!(apply_chunk_digests(&boot, &b, &mut chunks).unwrap(), 38);
    let z = parsed.zran.unwrap();
    let gz = std::fs::read(img.join("blobs").join(&b.id)).unwrap();
    let mut inf = crate::inflate_resume::RawInflater::new().unwrap();
    for c in &chunks {
        let r = c.zran.unwrap();
        let ctx = z.contexts()[r.context as usize];
        inf.resume(&z.resume_point(r.context).unwrap()).unwrap();
        let input = &gz[ctx.input().start as usize..ctx.input().end as usize];
        let mut out = vec![0u8; (c.uncompressed.end - c.uncompressed.start) as usize];
        inf.skip(input, r.offset as u64).unwrap();
        inf.read_exact(input, &mut out).unwrap();
        verify_chunk(c, &out).unwrap();
        out[0] ^= 1;
        assert!(verify_chunk(c, &out).unwrap_err().contains("sha256 mismatch"));
    }
    // Hostile chunk tables.
    let (off, size) = (u64_at(&boot, 1176) as usize, u64_at(&boot, 1184) as usize);
    let cases: Vec<(&str, Corrupt)> = vec![
        ("CI index out of range", Box::new(move |b| b[off + 72..off + 76].copy_from_slice(&38u32.to_le_bytes()))),
        ("size differs from the blob meta", Box::new(move |b| b[off + 44] ^= 1)),
        ("offset differs from the blob meta", Box::new(move |b| b[off + 57] ^= 1)),
        ("table past the bootstrap", Box::new(move |b| b[1184..1192].copy_from_slice(&(size as u64 + 4096).to_le_bytes()))),
        ("table not whole records", Box::new(move |b| b[1184..1192].copy_from_slice(&(size as u64 - 1).to_le_bytes()))),
        ("offset overflows", Box::new(move |b| b[1176..1184].copy_from_slice(&u64::MAX.to_le_bytes()))),
    ];
    for (what, f) in cases {
        let mut bb = boot.clone();
        f(&mut bb);
        let mut cs = parsed.chunks.clone();
        assert!(matches!(apply_chunk_digests(&bb, &b, &mut cs), Err(RafsError::Corrupt(_))), "{what}");
    }
    // A record repeated with another digest.
    let mut bb = boot.clone();
    let (r0, r1) = (off, off + 80);
    let first: Vec<u8> = bb[r0 + 32..r0 + 80].to_vec();
    bb[r1 + 32..r1 + 80].copy_from_slice(&first);
    let mut cs = parsed.chunks.clone();
    let err = apply_chunk_digests(&bb, &b, &mut cs).unwrap_err().to_string();
    assert!(err.contains("twice"), "{err}");
    // Every digest attached is a sha256 (the blake3 fixtures: rafs/tests.rs).
    assert!(chunks.iter().all(|c| matches!(c.digest, Some(ChunkDigest::Sha256(_)))));
}
