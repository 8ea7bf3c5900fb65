//! Byte-level tests of the RAFS structures: well-formed entries built here, then every field a
//! hostile blob table or chunk table can lie about.

use super::*;

const ID: &str = "c50b7af020566e8d2c411e89d4f0c7a8e734c230850ca79372cf74f315e3df32";

/// A blob table entry: 3 chunks, CI v1 table stored uncompressed at 8192 in a 12288+4096-byte blob.
fn entry() -> Vec<u8> {
    let mut e = vec![0u8; 256];
    e[..64].copy_from_slice(ID.as_bytes());
    e[68..72].copy_from_slice(&(1u32 << 20).to_le_bytes()); // chunk size
    e[72..76].copy_from_slice(&3u32.to_le_bytes()); // chunk count
    e[76..80].copy_from_slice(&3u32.to_le_bytes()); // zstd
    e[84..88].copy_from_slice(&FEATURE_ALIGNED.to_le_bytes());
    e[88..96].copy_from_slice(&(8192u64 + 48 + 4096).to_le_bytes()); // compressed size
    e[96..104].copy_from_slice(&(3 * 4096u64).to_le_bytes()); // uncompressed size
    e[108..112].copy_from_slice(&0u32.to_le_bytes()); // CI uncompressed
    e[112..120].copy_from_slice(&8192u64.to_le_bytes());
    e[120..128].copy_from_slice(&48u64.to_le_bytes());
    e[128..136].copy_from_slice(&48u64.to_le_bytes());
    e
}

fn ci_v1(uoff: u64, usz: u64, coff: u64, csz: u64) -> [u8; 16] {
    let u = uoff | ((usz - 1) & 0xF_FFFF) << 44 | ((usz - 1) >> 20) << 8;
    let c = coff | ((csz - 1) & 0xF_FFFF) << 44 | ((csz - 1) >> 20) << 40;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&u.to_le_bytes());
    b[8..].copy_from_slice(&c.to_le_bytes());
    b
}

fn table(rows: &[[u8; 16]]) -> Vec<u8> {
    rows.concat()
}

fn good_rows() -> Vec<[u8; 16]> {
    vec![ci_v1(0, 4096, 0, 100), ci_v1(4096, 10, 100, 10), ci_v1(8192, 4000, 110, 3000)]
}

#[test]
fn parses_a_blob_entry_and_its_chunks() {
    let b = RafsBlob::parse(&entry(), 0).unwrap();
    assert_eq!((b.chunk_count, b.compressor, b.ci_entry_size()), (3, Compressor::Zstd, 16));
    assert_eq!(b.meta_range(), 8192..8192 + 48 + 4096);
    let chunks = parse_chunk_infos(&b, &table(&good_rows())).unwrap();
    assert_eq!(chunks[0], Chunk { uncompressed: 0..4096, stored: 0..100, compressed: true, crc32c: None, zran: None, digest: None });
    assert_eq!(chunks[1], Chunk { uncompressed: 4096..4106, stored: 100..110, compressed: false, crc32c: None, zran: None, digest: None });
    assert!(chunks[2].compressed);
}

#[test]
fn ci_v1_sizes_use_the_high_bits() {
    let mut e = entry();
    e[96..104].copy_from_slice(&(2u64 << 20).to_le_bytes());
    e[72..76].copy_from_slice(&1u32.to_le_bytes());
    e[120..128].copy_from_slice(&16u64.to_le_bytes());
    e[128..136].copy_from_slice(&16u64.to_le_bytes());
    e[88..96].copy_from_slice(&(8192u64 + 16 + 4096).to_le_bytes());
    let b = RafsBlob::parse(&e, 0).unwrap();
    let c = parse_chunk_infos(&b, &ci_v1(0, 1 << 20, 0, 5000)).unwrap();
    assert_eq!(c[0].uncompressed, 0..1 << 20);
    assert_eq!(c[0].stored, 0..5000);
}

#[test]
fn ci_v2_with_crc() {
    let mut e = entry();
    e[84..88].copy_from_slice(&(FEATURE_ALIGNED | FEATURE_CHUNK_INFO_V2).to_le_bytes());
    e[72..76].copy_from_slice(&1u32.to_le_bytes());
    e[120..128].copy_from_slice(&24u64.to_le_bytes());
    e[128..136].copy_from_slice(&24u64.to_le_bytes());
    let b = RafsBlob::parse(&e, 0).unwrap();
    let mut row = [0u8; 24];
    let u: u64 = 1 | (4095u64 << 32) | (0x11u64 << 56); // offset 4096, size 4096, COMPRESSED|HAS_CRC32
    let c: u64 = 7 | (200u64 << 40);
    row[..8].copy_from_slice(&u.to_le_bytes());
    row[8..16].copy_from_slice(&c.to_le_bytes());
    row[16..].copy_from_slice(&0xdead_beefu64.to_le_bytes());
    let got = parse_chunk_infos(&b, &row).unwrap();
    assert_eq!(got[0], Chunk { uncompressed: 4096..8192, stored: 7..207, compressed: true, crc32c: Some(0xdead_beef), zran: None, digest: None });
    // BATCH chunks are refused clearly; a ZRAN chunk in a blob that is not zran is corrupt.
    row[7] = 0x04;
    assert!(matches!(parse_chunk_infos(&b, &row), Err(RafsError::Unsupported(_))));
    row[7] = 0x03;
    let err = parse_chunk_infos(&b, &row).unwrap_err();
    assert!(matches!(err, RafsError::Corrupt(_)) && err.to_string().contains("not zran"), "{err}");
}

#[test]
fn hostile_blob_entries_are_refused() {
    type Mutation = Box<dyn Fn(&mut Vec<u8>)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("id not hex", Box::new(|e| e[3] = b'Z')),
        ("index", Box::new(|e| e[64] = 5)),
        ("chunk size not pow2", Box::new(|e| e[68..72].copy_from_slice(&12345u32.to_le_bytes()))),
        ("chunk size huge", Box::new(|e| e[68..72].copy_from_slice(&(1u32 << 30).to_le_bytes()))),
        ("compressor", Box::new(|e| e[76] = 9)),
        ("uncompressed unaligned", Box::new(|e| e[96] = 1)),
        ("chunk count vs CI size", Box::new(|e| e[72] = 200)),
        ("CI past blob", Box::new(|e| e[112..120].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("CI huge", Box::new(|e| {
            e[72..76].copy_from_slice(&u32::MAX.to_le_bytes());
            e[128..136].copy_from_slice(&(u32::MAX as u64 * 16).to_le_bytes());
        })),
        ("raw CI sizes differ", Box::new(|e| e[120] = 40)),
    ];
    for (what, f) in cases {
        let mut e = entry();
        f(&mut e);
        let r = RafsBlob::parse(&e, 0);
        assert!(matches!(r, Err(RafsError::Corrupt(_))), "{what}: {r:?}");
    }
    let mut e = entry();
    e[96..104].copy_from_slice(&(1u64 << 44).to_le_bytes());
    assert!(matches!(RafsBlob::parse(&e, 0), Err(RafsError::Unsupported(_))), "16 TiB address space");
    let mut e = entry();
    e[84..88].copy_from_slice(&(FEATURE_ZRAN | FEATURE_ALIGNED).to_le_bytes());
    let err = RafsBlob::parse(&e, 0).unwrap_err();
    assert!(err.to_string().contains("not supported yet: ") && err.to_string().contains("zran"), "{err}");
}

#[test]
fn hostile_chunk_infos_are_refused() {
    let b = RafsBlob::parse(&entry(), 0).unwrap();
    let bad: Vec<(&str, [u8; 16])> = vec![
        ("unaligned offset", ci_v1(100, 10, 0, 10)),
        ("past address space", ci_v1(8192, 8192, 110, 100)),
        ("stored past data", ci_v1(8192, 4000, 8000, 1000)),
    ];
    for (what, row) in bad {
        let mut rows = good_rows();
        rows[2] = row;
        assert!(parse_chunk_infos(&b, &table(&rows)).is_err(), "{what}");
    }
    let mut rows = good_rows();
    rows[1] = ci_v1(0, 10, 100, 10); // overlaps chunk 0
    assert!(parse_chunk_infos(&b, &table(&rows)).is_err());
    let mut rows = good_rows();
    rows[1] = ci_v1(4096, 10, 0, 10); // stored before chunk 0 ends
    assert!(parse_chunk_infos(&b, &table(&rows)).is_err());
    assert!(parse_chunk_infos(&b, &table(&good_rows())[..40]).is_err(), "short table");
    // Deterministic bit flips of a good table never panic.
    let good = table(&good_rows());
    for i in 0..good.len() * 8 {
        let mut t = good.clone();
        t[i / 8] ^= 1 << (i % 8);
        let _ = parse_chunk_infos(&b, &t);
    }
}

#[test]
fn meta_header_must_match_the_table() {
    let b = RafsBlob::parse(&entry(), 0).unwrap();
    let mut h = vec![0u8; 4096];
    h[..4].copy_from_slice(&META_MAGIC.to_le_bytes());
    h[4092..].copy_from_slice(&META_MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&b.features.to_le_bytes());
    h[12..16].copy_from_slice(&3u32.to_le_bytes());
    h[16..24].copy_from_slice(&8192u64.to_le_bytes());
    h[24..32].copy_from_slice(&48u64.to_le_bytes());
    h[32..40].copy_from_slice(&48u64.to_le_bytes());
    check_meta_header(&b, &h).unwrap();
    for off in [0usize, 4, 8, 12, 16, 24, 32, 4092] {
        let mut m = h.clone();
        m[off] ^= 0x40;
        assert!(check_meta_header(&b, &m).is_err(), "flip at {off}");
    }
    assert!(check_meta_header(&b, &h[..4095]).is_err());
}

#[test]
fn chunks_decode_and_verify() {
    let plain: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let z = zstd::bulk::compress(&plain, 3).unwrap();
    let c = Chunk { uncompressed: 0..5000, stored: 0..z.len() as u64, compressed: true, crc32c: Some(crc32c(&plain)), zran: None, digest: None };
    let mut out = vec![0u8; 5000];
    decode_chunk(Compressor::Zstd, &c, &z, &mut out).unwrap();
    assert_eq!(out, plain);
    let l = lz4_flex::block::compress(&plain);
    let cl = Chunk { stored: 0..l.len() as u64, ..c.clone() };
    decode_chunk(Compressor::Lz4Block, &cl, &l, &mut out).unwrap();
    assert_eq!(out, plain);
    // A wrong CRC, a short frame or garbage is an error, never wrong bytes.
    let bad_crc = Chunk { crc32c: Some(1), ..c.clone() };
    assert!(decode_chunk(Compressor::Zstd, &bad_crc, &z, &mut out).unwrap_err().contains("CRC32C"));
    let mut g = l.clone();
    g.truncate(g.len() / 2);
    let cg = Chunk { stored: 0..g.len() as u64, ..c.clone() };
    assert!(decode_chunk(Compressor::Lz4Block, &cg, &g, &mut out).is_err());
    let mut short = vec![0u8; 4000];
    assert!(decode_chunk(Compressor::Zstd, &Chunk { uncompressed: 0..4000, ..c.clone() }, &z, &mut short).is_err());
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    // Chunk-table digests in either algorithm; a wrong one names its algorithm.
    use sha2::Digest;
    let b3 = Chunk { digest: Some(ChunkDigest::Blake3(*blake3::hash(&plain).as_bytes())), ..c.clone() };
    let s2 = Chunk { digest: Some(ChunkDigest::Sha256(sha2::Sha256::digest(&plain).into())), ..c.clone() };
    for (chunk, algo) in [(&b3, "blake3"), (&s2, "sha256")] {
        decode_chunk(Compressor::Zstd, chunk, &z, &mut out).unwrap();
        let mut wrong = *chunk.digest.as_ref().unwrap();
        match &mut wrong {
            ChunkDigest::Blake3(d) | ChunkDigest::Sha256(d) => d[31] ^= 1,
        }
        let lying = Chunk { digest: Some(wrong), ..c.clone() };
        let err = decode_chunk(Compressor::Zstd, &lying, &z, &mut out).unwrap_err();
        assert!(err.starts_with(&format!("{algo} mismatch (chunk table ")), "{err}");
    }
    // The same bytes under the other algorithm's label do not verify.
    let relabelled = Chunk { digest: Some(ChunkDigest::Sha256(*b3.digest.unwrap().bytes())), ..c.clone() };
    assert!(verify_chunk(&relabelled, &plain).unwrap_err().contains("sha256 mismatch"));
    assert_eq!(blake3::hash(b"").to_hex().as_str(), "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262");
}

/// The nydus fixture images, in the repository (tests/fixtures/nydus, see its README).
pub(crate) fn fixture_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/nydus");
    assert!(dir.join("tree.tar.gz").exists(), "nydus fixtures missing at {}", dir.display());
    dir
}

#[test]
fn real_fixture_blob_tables_parse() {
    let dir = fixture_dir();
    for (name, comp) in [("dir-zstd", Compressor::Zstd), ("dir-lz4_block", Compressor::Lz4Block), ("targz-rafs", Compressor::Zstd)] {
        let boot = std::fs::read(dir.join(name).join("image.boot")).unwrap();
        assert!(is_rafs_v6(&boot));
        let t = parse_blob_table(&boot, 1).unwrap();
        assert_eq!((t.len(), t[0].compressor, t[0].chunk_count), (1, comp, 38), "{name}");
        let (_, _, blob, chunks) = fixture_blob(&dir, name);
        let mut out = Vec::new();
        for c in &chunks {
            out.resize((c.uncompressed.end - c.uncompressed.start) as usize, 0);
            decode_chunk(comp, c, &blob[c.stored.start as usize..c.stored.end as usize], &mut out).unwrap();
        }
        assert!(parse_blob_table(&boot, 2).is_err(), "slot count mismatch");
    }
}

/// A fixture's blob: (bootstrap, its blob table entry, the blob file, the parsed chunks).
fn fixture_blob(dir: &std::path::Path, name: &str) -> (Vec<u8>, RafsBlob, Vec<u8>, Vec<Chunk>) {
    let boot = std::fs::read(dir.join(name).join("image.boot")).unwrap();
    let b = parse_blob_table(&boot, 1).unwrap().remove(0);
    let blob = std::fs::read(dir.join(name).join("blobs").join(&b.id)).unwrap();
    let chunks = read_blob_meta(&b, &blob[b.meta_range().start as usize..b.meta_range().end as usize]).unwrap().chunks;
    (boot, b, blob, chunks)
}

/// The chunk indices the bootstrap's chunk table lists for blob `index`.
fn listed_chunks(boot: &[u8], index: u32) -> std::collections::BTreeSet<u32> {
    let ext = &boot[EXT_SB_OFFSET..EXT_SB_OFFSET + 256];
    let (off, size) = (u64_at(ext, 24) as usize, u64_at(ext, 32) as usize);
    let records = boot[off..off + size].chunks_exact(CHUNK_RECORD_SIZE as usize);
    records.filter(|r| u32_at(r, 32) == index).map(|r| u32_at(r, 72)).collect()
}

/// The blake3 fixtures (nydus-image's default digest): the bootstrap's chunk table gives every
/// chunk of the blob a blake3 digest, every chunk decodes to bytes matching it, and one
/// changed byte of decoded data is a "blake3 mismatch".
#[test]
fn real_fixture_blake3_digests_verify_every_chunk() {
    let dir = fixture_dir();
    for name in ["dir-zstd", "dir-lz4_block", "targz-rafs"] {
        let (boot, b, blob, mut chunks) = fixture_blob(&dir, name);
        let flags = u64_at(&boot, EXT_SB_OFFSET) & (FLAG_HASH_BLAKE3 | FLAG_HASH_SHA256);
        assert_eq!((flags, b.digest_algo), (FLAG_HASH_BLAKE3, DIGEST_ALGO_BLAKE3), "{name}: a blake3 image");
        let listed = listed_chunks(&boot, b.index);
        let n = apply_chunk_digests(&boot, &b, &mut chunks).unwrap();
        let (l, c) = (listed.len(), chunks.len());
        assert!(n > 0 && n == l && n == c, "{name}: {n} digests, {l} chunks listed, {c} chunks");
        let mut out = Vec::new();
        let mut raw = 0;
        for (i, c) in chunks.iter().enumerate() {
            assert!(matches!(c.digest, Some(ChunkDigest::Blake3(_))), "{name} chunk {i}: {:?}", c.digest);
            out.resize((c.uncompressed.end - c.uncompressed.start) as usize, 0);
            decode_chunk(b.compressor, c, &blob[c.stored.start as usize..c.stored.end as usize], &mut out).unwrap();
            raw += usize::from(!c.compressed);
            let at = (i * 4099) % out.len();
            out[at] ^= 0x20;
            let err = verify_chunk(c, &out).unwrap_err();
            assert!(err.starts_with("blake3 mismatch (chunk table "), "{name} chunk {i}: {err}");
        }
        eprintln!("{name}: {n} chunks verified against their blake3 digests ({raw} stored raw)");
        // A lying digest in the chunk table (its first record): that chunk, and only it, fails.
        let off = u64_at(&boot, EXT_SB_OFFSET + 24) as usize;
        let lied = u32_at(&boot, off + 72) as usize;
        let mut bb = boot.clone();
        bb[off + 7] ^= 1;
        let mut cs = fixture_blob(&dir, name).3;
        assert_eq!(apply_chunk_digests(&bb, &b, &mut cs).unwrap(), n);
        for (i, c) in cs.iter().enumerate() {
            out.resize((c.uncompressed.end - c.uncompressed.start) as usize, 0);
            let r = decode_chunk(b.compressor, c, &blob[c.stored.start as usize..c.stored.end as usize], &mut out);
            assert_eq!(r.is_err(), i == lied, "{name} chunk {i}: {r:?}");
            assert!(r.map_or_else(|e| e.starts_with("blake3 mismatch"), |_| true));
        }
    }
}

/// The digest algorithm needs the ext superblock flags and the blob's `digest_algo` to agree;
/// otherwise nothing is attached (and nothing refused). Relabelling a blake3 image as sha256
/// in both places attaches digests that every good chunk then fails: why a guess is not made.
#[test]
fn digest_algorithm_needs_flags_and_blob_table_to_agree() {
    let dir = fixture_dir();
    let (boot, b, blob, chunks) = fixture_blob(&dir, "dir-zstd");
    let with = |flags: u64, algo: u32| {
        let mut bb = boot.clone();
        let f = u64_at(&bb, EXT_SB_OFFSET) & !(FLAG_HASH_BLAKE3 | FLAG_HASH_SHA256) | flags;
        bb[EXT_SB_OFFSET..EXT_SB_OFFSET + 8].copy_from_slice(&f.to_le_bytes());
        let mut cs = chunks.clone();
        let n = apply_chunk_digests(&bb, &RafsBlob { digest_algo: algo, ..b.clone() }, &mut cs).unwrap();
        (n, cs)
    };
    assert_eq!(with(FLAG_HASH_BLAKE3, DIGEST_ALGO_BLAKE3).0, 38);
    for (flags, algo, what) in [
        (FLAG_HASH_SHA256, DIGEST_ALGO_BLAKE3, "flags sha256, blob blake3"),
        (FLAG_HASH_BLAKE3, DIGEST_ALGO_SHA256, "flags blake3, blob sha256"),
        (FLAG_HASH_BLAKE3 | FLAG_HASH_SHA256, DIGEST_ALGO_BLAKE3, "both flags"),
        (0, DIGEST_ALGO_BLAKE3, "neither flag"),
        (FLAG_HASH_BLAKE3, 7, "unknown digest_algo"),
    ] {
        let (n, cs) = with(flags, algo);
        assert_eq!(n, 0, "{what}");
        assert!(cs.iter().all(|c| c.digest.is_none()), "{what}");
    }
    let (n, cs) = with(FLAG_HASH_SHA256, DIGEST_ALGO_SHA256);
    assert_eq!(n, 38);
    let c = &cs[0];
    let mut out = vec![0u8; (c.uncompressed.end - c.uncompressed.start) as usize];
    let stored = &blob[c.stored.start as usize..c.stored.end as usize];
    let err = decode_chunk(b.compressor, c, stored, &mut out).unwrap_err();
    assert!(err.starts_with("sha256 mismatch"), "{err}");
}
