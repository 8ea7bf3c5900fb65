//! nydus RAFS v6 input through the daemon's own image loader and fill engine (no kernel
//! needed): a partial fill fetches only the chunk it touches, and deterministically mutated
//! blob tables, blob meta headers, chunk infos and zran inflate contexts end as a clear error
//! at load or an error (EIO for the reader) on fill — never a panic, a hang, or a write
//! outside the target file.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use erofs::rafs::{decompress, parse_blob_table, read_blob_meta, Chunk, Compressor, RafsBlob};
use erofsd::core::blob::Blob;
use erofsd::core::fill::{Filler, Target};
use erofsd::core::images::ImageStore;
use erofsd::core::writer::Writer;

/// The nydus fixture images, in the repository (tests/fixtures/nydus).
fn fixtures() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/nydus");
    assert!(p.join("tree.tar.gz").exists(), "nydus fixtures missing at {}", p.display());
    p
}

/// A writable copy of fixture `name` in `dir/img`: (image dir, bootstrap bytes, blob id, blob bytes).
fn copy(name: &str, dir: &Path) -> (PathBuf, Vec<u8>, String, Vec<u8>) {
    let src = fixtures().join(name);
    let img = dir.join("img");
    std::fs::create_dir_all(img.join("blobs")).unwrap();
    let boot = std::fs::read(src.join("image.boot")).unwrap();
    let entry = std::fs::read_dir(src.join("blobs")).unwrap().next().unwrap().unwrap();
    let id = entry.file_name().into_string().unwrap();
    let blob = std::fs::read(entry.path()).unwrap();
    std::fs::write(img.join("image.boot"), &boot).unwrap();
    std::fs::write(img.join("blobs").join(&id), &blob).unwrap();
    (img, boot, id, blob)
}

fn target_for(dir: &Path, blob: &Arc<Blob>) -> (Arc<Target>, std::fs::File) {
    let path = dir.join("cache").join("target");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path).unwrap();
    f.set_len(blob.size()).unwrap();
    let fd: OwnedFd = f.try_clone().unwrap().into();
    (Target::new(blob.clone(), fd), f)
}

fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if e.path() == dir.join("cache") {
                // The fill engine's own output: only ever the one target file.
                let names: Vec<_> = std::fs::read_dir(e.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
                assert_eq!(names, ["target"], "the cache dir holds only the target file");
                continue;
            }
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len()));
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_partial_fill_fetches_only_the_touched_chunk() {
    for name in ["dir-zstd", "dir-lz4_block", "targz-rafs"] {
        let dir = tempfile::tempdir().unwrap();
        let (img, ..) = copy(name, dir.path());
        let image = ImageStore::new().load_dir(&img).unwrap();
        assert_eq!(image.blobs.len(), 1);
        let blob = &image.blobs[0];
        let (target, _f) = target_for(dir.path(), blob);
        let filler = Filler::new(Writer::start(), 4);
        // A 100-byte read in the middle of the third 1 MiB chunk (the random file, stored raw).
        let at = 1982464 + 12345; // chunk 2 starts at 1982464 in all three blobs
        filler.fill(&target, at, 100).await.unwrap();
        let chunk = blob.map.chunk_of((at >> 12) as u32).unwrap().clone();
        assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 1, "{name}: one chunk decoded");
        assert_eq!(blob.stats.requests.load(Ordering::Relaxed), 1, "{name}: one source request");
        assert_eq!(
            blob.stats.stored_bytes.load(Ordering::Relaxed),
            chunk.stored.end - chunk.stored.start,
            "{name}: exactly that chunk's stored bytes"
        );
        assert!(target.is_ready(chunk.uncompressed.start, chunk.uncompressed.end - chunk.uncompressed.start));
        assert!(!target.is_ready(0, 4096));
        // The rest fills with every chunk decoded exactly once more.
        filler.fill(&target, 0, blob.size()).await.unwrap();
        assert!(target.readiness().is_complete());
        assert_eq!(blob.stats.errors.load(Ordering::Relaxed), 0);
        eprintln!(
            "{name}: {} chunks, {} stored bytes for a {}-byte address space",
            blob.stats.groups.load(Ordering::Relaxed),
            blob.stats.stored_bytes.load(Ordering::Relaxed),
            blob.size()
        );
    }
}

/// Loads the image in `img` and, if that works, fills the whole blob; returns a description.
/// Panics only if something panicked inside (the point of the test).
async fn load_and_fill(dir: &Path, img: &Path) -> String {
    let image = match ImageStore::new().load_dir(img) {
        Err(e) => return format!("load error: {e:#}"),
        Ok(i) => i,
    };
    let blob = &image.blobs[0];
    let (target, _f) = target_for(dir, blob);
    let filler = Filler::new(Writer::start(), 4);
    let r = tokio::time::timeout(std::time::Duration::from_secs(30), filler.fill(&target, 0, blob.size()))
        .await
        .expect("fill hung");
    match r {
        Ok(()) => "filled".into(),
        Err(e) => format!("fill error: {e}"),
    }
}

const ENTRY: usize = 4096; // the blob table of every fixture starts here

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_mutated_blob_table_and_meta_header_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (img, boot, id, blob) = copy("dir-zstd", dir.path());
    let before = listing(dir.path());
    let meta_header = blob.len() - 4096;
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    // Every byte of the 256-byte blob table entry (two different flips), then the meta header's fields.
    let mut cases: Vec<(bool, usize, u8)> = Vec::new();
    for off in 0..256 {
        cases.push((true, ENTRY + off, if off % 2 == 0 { 0x01 } else { 0x80 }));
    }
    for off in (0..64).chain([4092, 4093, 4094, 4095]) {
        cases.push((false, meta_header + off, 0x04));
    }
    for (in_boot, at, bit) in cases {
        let (mut b, mut d) = (boot.clone(), blob.clone());
        if in_boot {
            b[at] ^= bit;
        } else {
            d[at] ^= bit;
        }
        std::fs::write(img.join("image.boot"), &b).unwrap();
        std::fs::write(img.join("blobs").join(&id), &d).unwrap();
        let got = load_and_fill(dir.path(), &img).await;
        let kind = got.split(':').next().unwrap().to_string();
        *outcomes.entry(kind).or_default() += 1;
        // Bytes the loader reads must be checked: a flip in a checked field is a load error.
        if in_boot && [64, 68, 72, 76, 96, 112, 120, 128].contains(&(at - ENTRY)) {
            assert!(got.starts_with("load error"), "flip at blob entry +{}: {got}", at - ENTRY);
        }
        if !in_boot && (at - meta_header < 40 || at - meta_header >= 4092) {
            assert!(got.starts_with("load error"), "flip at meta header +{}: {got}", at - meta_header);
        }
    }
    eprintln!("outcomes: {outcomes:?}");
    assert!(outcomes.get("load error").copied().unwrap_or(0) > 50);
    // Nothing but the target file (and the inputs) exists or changed size.
    std::fs::write(img.join("image.boot"), &boot).unwrap();
    std::fs::write(img.join("blobs").join(&id), &blob).unwrap();
    assert_eq!(listing(dir.path()), before);
}

/// Rewrites the fixture's blob with a re-compressed, mutated CI table (and fixes the sizes in
/// the blob table and meta header so the mutation reaches the chunk parser).
fn with_ci_table(boot: &[u8], blob: &[u8], f: impl Fn(&mut [u8])) -> (Vec<u8>, Vec<u8>) {
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (ci_off, ci_len) = (u64_at(boot, ENTRY + 112) as usize, u64_at(boot, ENTRY + 120) as usize);
    let mut table = zstd::bulk::decompress(&blob[ci_off..ci_off + ci_len], 1 << 20).unwrap();
    f(&mut table);
    let z = zstd::bulk::compress(&table, 3).unwrap();
    let mut header = blob[ci_off + ci_len..ci_off + ci_len + 4096].to_vec();
    header[24..32].copy_from_slice(&(z.len() as u64).to_le_bytes());
    let mut nb = blob[..ci_off].to_vec();
    nb.extend_from_slice(&z);
    nb.extend_from_slice(&header);
    let mut b = boot.to_vec();
    b[ENTRY + 120..ENTRY + 128].copy_from_slice(&(z.len() as u64).to_le_bytes());
    b[ENTRY + 88..ENTRY + 96].copy_from_slice(&(nb.len() as u64).to_le_bytes());
    (b, nb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_mutated_chunk_infos_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (img, boot, id, blob) = copy("dir-zstd", dir.path());
    let before = listing(dir.path());
    // The unmutated rewrite still serves: the harness itself is sound.
    let (b, d) = with_ci_table(&boot, &blob, |_| {});
    std::fs::write(img.join("image.boot"), &b).unwrap();
    std::fs::write(img.join("blobs").join(&id), &d).unwrap();
    assert_eq!(load_and_fill(dir.path(), &img).await, "filled");

    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    // CI v1 entry: 16 bytes; flip bits in every field region of every entry.
    let bits = [8u32, 20, 43, 52, 64 + 9, 64 + 39, 64 + 44, 64 + 63];
    for entry in 0..38usize {
        for &bit in &bits {
            let (b, d) = with_ci_table(&boot, &blob, |t| t[entry * 16 + bit as usize / 8] ^= 1 << (bit % 8));
            std::fs::write(img.join("image.boot"), &b).unwrap();
            std::fs::write(img.join("blobs").join(&id), &d).unwrap();
            let got = load_and_fill(dir.path(), &img).await;
            *outcomes.entry(got.split(':').next().unwrap().to_string()).or_default() += 1;
        }
    }
    eprintln!("outcomes over {} mutated chunk infos: {outcomes:?}", 38 * bits.len());
    assert!(outcomes.get("load error").copied().unwrap_or(0) > 38 * bits.len() / 3);
    std::fs::write(img.join("image.boot"), &boot).unwrap();
    std::fs::write(img.join("blobs").join(&id), &blob).unwrap();
    assert_eq!(listing(dir.path()), before);
}

/// The chunks of a fixture copy's single blob, parsed straight from its bytes.
fn chunks_of(boot: &[u8], blob: &[u8]) -> (RafsBlob, Vec<Chunk>) {
    let b = parse_blob_table(boot, 1).unwrap().remove(0);
    let chunks = read_blob_meta(&b, &blob[b.meta_range().start as usize..b.meta_range().end as usize]).unwrap().chunks;
    (b, chunks)
}

/// A one-bit change of chunk `c`'s stored bytes that its decoder does not notice: the chunk
/// still decodes to its full length, to different bytes. (stored offset, decoded bytes as
/// altered.)
fn undetected_flip(compressor: Compressor, c: &Chunk, blob: &[u8]) -> Option<(usize, Vec<u8>)> {
    let comp = if c.compressed { compressor } else { Compressor::None };
    let len = (c.uncompressed.end - c.uncompressed.start) as usize;
    let stored = &blob[c.stored.start as usize..c.stored.end as usize];
    let mut good = vec![0u8; len];
    decompress(comp, stored, &mut good).unwrap();
    // From the middle on: past a compressed chunk's frame header and into its literals.
    (stored.len() / 2..stored.len()).step_by(97).find_map(|at| {
        let mut s = stored.to_vec();
        s[at] ^= 0x04;
        let mut out = vec![0u8; len];
        (decompress(comp, &s, &mut out).is_ok() && out != good).then(|| (c.stored.start as usize + at, out))
    })
}

/// One chunk's stored bytes altered so that they still decode (a raw chunk; a zstd or
/// lz4_block chunk changed where its decoder does not notice): its blake3 digest from the
/// bootstrap's chunk table fails the fill (EIO to the reader) and none of its bytes reach the
/// target; every other chunk fills as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_altered_chunk_fails_its_blake3_digest() {
    for (name, raw) in [("dir-zstd", true), ("dir-zstd", false), ("dir-lz4_block", false)] {
        let dir = tempfile::tempdir().unwrap();
        let (img, boot, id, blob) = copy(name, dir.path());
        let (rb, chunks) = chunks_of(&boot, &blob);
        let (k, (at, altered)) = chunks
            .iter()
            .enumerate()
            .filter(|(_, c)| c.compressed != raw)
            .find_map(|(k, c)| undetected_flip(rb.compressor, c, &blob).map(|f| (k, f)))
            .expect("a chunk to alter");
        let c = chunks[k].clone();
        let kind = if raw { "raw" } else { "compressed" };
        let what = format!("{name} chunk {k} ({kind}, stored {:?}, byte {at} changed)", c.stored);
        // The good bytes, from the unaltered image.
        let image = ImageStore::new().load_dir(&img).unwrap();
        let (target, f) = target_for(&dir.path().join("good"), &image.blobs[0]);
        Filler::new(Writer::start(), 4).fill(&target, 0, image.blobs[0].size()).await.unwrap();
        let mut good = vec![0u8; image.blobs[0].size() as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut good, 0).unwrap();
        let range = c.uncompressed.start as usize..c.uncompressed.end as usize;
        assert!(good[range.clone()] != altered[..], "{what}: the change alters the decoded bytes");

        let mut bad = blob.clone();
        bad[at] ^= 0x04;
        std::fs::write(img.join("blobs").join(&id), &bad).unwrap();
        let image = ImageStore::new().load_dir(&img).unwrap();
        let blob = &image.blobs[0];
        let (target, f) = target_for(dir.path(), blob);
        let filler = Filler::new(Writer::start(), 4);
        for (i, ci) in chunks.iter().enumerate() {
            let r = filler.fill(&target, ci.uncompressed.start, ci.uncompressed.end - ci.uncompressed.start).await;
            if i == k {
                let err = r.expect_err(&what).to_string();
                assert!(err.contains("blake3 mismatch (chunk table "), "{what}: {err}");
                assert!(!target.is_ready(ci.uncompressed.start, 4096), "{what}");
            } else {
                r.unwrap_or_else(|e| panic!("{what}: chunk {i}: {e}"));
            }
        }
        assert_eq!(blob.stats.errors.load(Ordering::Relaxed), 1, "{what}");
        let mut got = vec![0u8; blob.size() as usize];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, 0).unwrap();
        assert!(got[range.clone()].iter().all(|&b| b == 0), "{what}: bytes of the failed chunk were written");
        got[range.clone()].copy_from_slice(&good[range]);
        assert!(got == good, "{what}: the other chunks filled differently");
        // Asked again, the chunk fails again (nothing wrong was kept).
        let again = filler.fill(&target, c.uncompressed.start, 100).await.expect_err(&what).to_string();
        assert!(again.contains("blake3 mismatch"), "{what}: {again}");
        eprintln!("{what}: EIO, the other {} chunks filled", chunks.len() - 1);
    }
}

// ---- zran (targz-ref): the original gzip layer as data blob, its index in a meta blob ----

const GZ_ID: &str = "48a5bcfeb1a2871d4401c6a0568b54cdec38c36116f811f2e62b397bd46c8eb0";

/// A writable copy of `targz-ref` in `dir/img`: (image dir, bootstrap, meta blob id, meta blob).
fn copy_zran(dir: &Path) -> (PathBuf, Vec<u8>, String, Vec<u8>) {
    let src = fixtures().join("targz-ref");
    let img = dir.join("img");
    std::fs::create_dir_all(img.join("blobs")).unwrap();
    let boot = std::fs::read(src.join("image.boot")).unwrap();
    std::fs::write(img.join("image.boot"), &boot).unwrap();
    let mut meta = None;
    for e in std::fs::read_dir(src.join("blobs")).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        let bytes = std::fs::read(e.path()).unwrap();
        std::fs::write(img.join("blobs").join(&name), &bytes).unwrap();
        if name != GZ_ID {
            meta = Some((name, bytes));
        }
    }
    let (id, bytes) = meta.expect("targz-ref has a meta blob");
    (img, boot, id, bytes)
}

/// The whole uncompressed tar stream of the gzip layer, and the address space a correct
/// serve of `targz-ref` must produce (each chunk's bytes at its offset, zeros between).
fn zran_expected(blob: &Blob) -> Vec<u8> {
    use std::io::Read;
    let gz = std::fs::read(fixtures().join("targz-ref/blobs").join(GZ_ID)).unwrap();
    let mut tar = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..]).read_to_end(&mut tar).unwrap();
    let z = blob.zran.as_ref().expect("a zran blob");
    let mut space = vec![0u8; blob.size() as usize];
    for g in 0..blob.map.group_count() {
        let Some(c) = blob.map.chunk_of(g) else { continue };
        let r = c.zran.unwrap();
        let at = (z.contexts()[r.context as usize].out_offset + r.offset as u64) as usize;
        let len = (c.uncompressed.end - c.uncompressed.start) as usize;
        space[c.uncompressed.start as usize..c.uncompressed.end as usize].copy_from_slice(&tar[at..at + len]);
    }
    space
}

/// A partial fill decodes only the touched chunk, fetching the gzip bytes from its context's
/// start to its end; the full fill equals the layer's tar stream placed chunk by chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_zran_fills_byte_exact_and_partially() {
    let dir = tempfile::tempdir().unwrap();
    let (img, ..) = copy_zran(dir.path());
    let image = ImageStore::new().load_dir(&img).unwrap();
    assert_eq!(image.blobs.len(), 1, "one device: the gzip layer (the meta blob is not a device)");
    let blob = &image.blobs[0];
    assert_eq!(blob.id, GZ_ID);
    let want = zran_expected(blob);
    let (target, f) = target_for(dir.path(), blob);
    let filler = Filler::new(Writer::start(), 4);
    // Inside chunk 15 (a 1 MiB chunk of the random file, 31 KiB into inflate context 1).
    let at = 1187840 + 12345;
    filler.fill(&target, at, 100).await.unwrap();
    let chunk = blob.map.chunk_of((at >> 12) as u32).unwrap().clone();
    assert_eq!(chunk.zran.map(|z| z.context), Some(1));
    assert_eq!(blob.stats.groups.load(Ordering::Relaxed), 1, "one chunk decoded");
    assert_eq!(blob.stats.requests.load(Ordering::Relaxed), 1, "one source request");
    assert_eq!(blob.stats.stored_bytes.load(Ordering::Relaxed), chunk.stored.end - chunk.fetch_start(), "context start to chunk end");
    let mut got = vec![0u8; 100];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, at).unwrap();
    assert!(got == want[at as usize..at as usize + 100], "partial fill bytes");
    filler.fill(&target, 0, blob.size()).await.unwrap();
    assert!(target.readiness().is_complete());
    assert_eq!(blob.stats.errors.load(Ordering::Relaxed), 0);
    let mut all = vec![0u8; blob.size() as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut all, 0).unwrap();
    assert!(all == want, "the filled address space differs from the layer's tar stream");
    eprintln!(
        "zran: {} chunks, {} requests, {} gzip bytes fetched for a {}-byte layer",
        blob.stats.groups.load(Ordering::Relaxed),
        blob.stats.requests.load(Ordering::Relaxed),
        blob.stats.stored_bytes.load(Ordering::Relaxed),
        std::fs::metadata(img.join("blobs").join(GZ_ID)).unwrap().len()
    );
}

/// Rewrites `targz-ref`'s meta blob with a mutated blob meta table and header (re-compressed,
/// re-hashed, renamed, and the bootstrap's blob entry pointed at it) so the mutation gets past
/// the digest check and reaches the zran parser. Returns the bootstrap to write.
fn with_zran_meta(img: &Path, boot: &[u8], meta_id: &str, meta: &[u8], f: impl Fn(&mut Vec<u8>, &mut [u8])) -> Vec<u8> {
    use sha2::Digest;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let ci_len = u64_at(boot, ENTRY + 120) as usize;
    let mut table = zstd::bulk::decompress(&meta[..ci_len], 1 << 20).unwrap();
    let mut header = meta[ci_len..ci_len + 4096].to_vec();
    f(&mut table, &mut header);
    let z = zstd::bulk::compress(&table, 3).unwrap();
    header[24..32].copy_from_slice(&(z.len() as u64).to_le_bytes());
    let nm = [z.clone(), header].concat();
    let id = hex::encode(sha2::Sha256::digest(&nm));
    for e in std::fs::read_dir(img.join("blobs")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != GZ_ID {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    std::fs::write(img.join("blobs").join(&id), &nm).unwrap();
    let mut b = boot.to_vec();
    b[ENTRY + 120..ENTRY + 128].copy_from_slice(&(z.len() as u64).to_le_bytes());
    b[ENTRY + 168..ENTRY + 200].copy_from_slice(&hex::decode(&id).unwrap());
    b[ENTRY + 200..ENTRY + 208].copy_from_slice(&(nm.len() as u64).to_le_bytes());
    let _ = meta_id;
    b
}

/// Restores the unmutated meta blob (and only it) beside the gzip layer.
fn restore_zran(img: &Path, boot: &[u8], meta_id: &str, meta: &[u8]) {
    for e in std::fs::read_dir(img.join("blobs")).unwrap() {
        let e = e.unwrap();
        if e.file_name() != GZ_ID {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    std::fs::write(img.join("blobs").join(meta_id), meta).unwrap();
    std::fs::write(img.join("image.boot"), boot).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_zran_malformed_meta_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (img, boot, meta_id, meta) = copy_zran(dir.path());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let ci_len = u64_at(&boot, ENTRY + 120) as usize;
    let header = &meta[ci_len..ci_len + 4096];
    let (zoff, zcount) = (u64_at(header, 40) as usize, u32::from_le_bytes(header[56..60].try_into().unwrap()) as usize);
    assert_eq!(zcount, 10);
    let ctx = move |i: usize, field: usize| zoff + i * 40 + field;
    // The unmutated rewrite still serves: the harness itself is sound.
    let b = with_zran_meta(&img, &boot, &meta_id, &meta, |_, _| {});
    std::fs::write(img.join("image.boot"), &b).unwrap();
    assert_eq!(load_and_fill(dir.path(), &img).await, "filled");

    type Mutation = Box<dyn Fn(&mut Vec<u8>, &mut [u8])>;
    let put = |t: &mut [u8], at: usize, v: &[u8]| t[at..at + v.len()].copy_from_slice(v);
    // Detectable at load: each must be a load error naming the problem.
    let at_load: Vec<(&str, &str, Mutation)> = vec![
        ("context index out of range", "out of range", Box::new(move |t, _| put(t, 5 * 24 + 20, &99u32.to_le_bytes()))),
        ("in_offset past the blob", "past the", Box::new(move |t, _| put(t, ctx(9, 0), &5_000_000u64.to_le_bytes()))),
        ("in_len past the blob", "past the", Box::new(move |t, _| put(t, ctx(9, 24), &1_000_000u32.to_le_bytes()))),
        ("in_len huge", "over", Box::new(move |t, _| put(t, ctx(3, 24), &u32::MAX.to_le_bytes()))),
        ("dict_offset past the table", "outside", Box::new(move |t, _| put(t, ctx(2, 16), &300_000u64.to_le_bytes()))),
        ("dict_size over 32 KiB", "outside", Box::new(move |t, _| put(t, ctx(2, 32), &40_000u32.to_le_bytes()))),
        ("dict_size huge", "outside", Box::new(move |t, _| put(t, ctx(9, 32), &u32::MAX.to_le_bytes()))),
        ("out_len shorter than its chunks", "output bytes", Box::new(move |t, _| put(t, ctx(0, 28), &100u32.to_le_bytes()))),
        ("chunk offset past its context", "output bytes", Box::new(move |t, _| put(t, 3 * 24 + 16, &0xFFFF_0000u32.to_le_bytes()))),
        ("ctx_bits 8", "leftover bits", Box::new(move |t, _| t[ctx(3, 37)] = 8)),
        ("ctx_bits 200", "leftover bits", Box::new(move |t, _| t[ctx(5, 37)] = 200)),
        ("context count huge", "does not fit", Box::new(|_, h| h[56..60].copy_from_slice(&u32::MAX.to_le_bytes()))),
        ("context table size huge", "overflows", Box::new(|_, h| h[48..56].copy_from_slice(&u64::MAX.to_le_bytes()))),
        ("context table inside the chunk entries", "outside", Box::new(|_, h| h[40..48].copy_from_slice(&100u64.to_le_bytes()))),
        ("contexts out of stream order", "not after", Box::new(move |t, _| put(t, ctx(4, 0), &100u64.to_le_bytes()))),
        ("chunk outside its context's input", "outside the context's input", Box::new(move |t, _| put(t, 15 * 24 + 20, &2u32.to_le_bytes()))),
    ];
    for (what, says, f) in at_load {
        let b = with_zran_meta(&img, &boot, &meta_id, &meta, f);
        std::fs::write(img.join("image.boot"), &b).unwrap();
        let got = load_and_fill(dir.path(), &img).await;
        assert!(got.starts_with("load error") && got.contains(says), "{what}: {got}");
    }
    // Only visible when decoding: a fill error (EIO to the reader), never a panic or hang.
    let at_fill: Vec<(&str, Mutation)> = vec![
        ("context start moved by a byte", Box::new(move |t, _| {
            let v = u64_at(t, ctx(1, 0)) + 1;
            put(t, ctx(1, 0), &v.to_le_bytes())
        })),
        ("leftover bits changed", Box::new(move |t, _| t[ctx(3, 37)] = (t[ctx(3, 37)] + 3) % 8)),
    ];
    for (what, f) in at_fill {
        let b = with_zran_meta(&img, &boot, &meta_id, &meta, f);
        std::fs::write(img.join("image.boot"), &b).unwrap();
        let got = load_and_fill(dir.path(), &img).await;
        assert!(got.starts_with("fill error") && (got.contains("inflate context") || got.contains("sha256 mismatch")), "{what}: {got}");
    }
    // Every bit region of every context: load error, fill error or (a field decoding does not
    // depend on) filled — each filled chunk matched its sha256 — and nothing panics.
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..zcount {
        for field in [0usize, 8, 16, 24, 28, 32, 37] {
            let b = with_zran_meta(&img, &boot, &meta_id, &meta, move |t, _| t[ctx(i, field)] ^= 0x41);
            std::fs::write(img.join("image.boot"), &b).unwrap();
            let got = load_and_fill(dir.path(), &img).await;
            *outcomes.entry(got.split(':').next().unwrap().to_string()).or_default() += 1;
        }
    }
    eprintln!("outcomes over mutated zran contexts: {outcomes:?}");
    assert!(outcomes.get("load error").copied().unwrap_or(0) > zcount * 3);

    // The meta blob is checked against its id; a missing one is a load error.
    restore_zran(&img, &boot, &meta_id, &meta);
    let mut tampered = meta.clone();
    tampered[100] ^= 1;
    std::fs::write(img.join("blobs").join(&meta_id), &tampered).unwrap();
    let got = load_and_fill(dir.path(), &img).await;
    assert!(got.starts_with("load error") && got.contains("has sha256"), "{got}");
    std::fs::remove_file(img.join("blobs").join(&meta_id)).unwrap();
    let got = load_and_fill(dir.path(), &img).await;
    assert!(got.starts_with("load error") && got.contains("meta blob"), "{got}");
    restore_zran(&img, &boot, &meta_id, &meta);
    assert_eq!(load_and_fill(dir.path(), &img).await, "filled");

    // A window changed (context 4: its chunk copies much from the bytes before it): the
    // inflate succeeds, but the chunk's bytes no longer match the sha256 the bootstrap's
    // chunk table gives them.
    let b = with_zran_meta(&img, &boot, &meta_id, &meta, move |t, _| {
        let dicts = zoff + zcount * 40;
        let d1 = dicts + u64_at(t, ctx(4, 16)) as usize;
        for i in 0..32768 {
            t[d1 + i] = t[d1 + i].wrapping_add(1);
        }
    });
    std::fs::write(img.join("image.boot"), &b).unwrap();
    let got = load_and_fill(dir.path(), &img).await;
    assert!(got.starts_with("fill error") && (got.contains("sha256 mismatch") || got.contains("inflate context")), "{got}");
    // A lying digest in the bootstrap's chunk table: that chunk fails to fill.
    restore_zran(&img, &boot, &meta_id, &meta);
    let mut b = boot.clone();
    let table = u64_at(&boot, 1176) as usize;
    b[table + 5] ^= 1;
    std::fs::write(img.join("image.boot"), &b).unwrap();
    let got = load_and_fill(dir.path(), &img).await;
    assert!(got.starts_with("fill error") && got.contains("sha256 mismatch"), "{got}");
    restore_zran(&img, &boot, &meta_id, &meta);
}

/// A gzip layer cut short (the registry or disk lost its tail): chunks there fail to fill
/// (EIO), never hang or panic; earlier chunks still serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_zran_truncated_layer_fails_the_fill() {
    let dir = tempfile::tempdir().unwrap();
    let (img, ..) = copy_zran(dir.path());
    let gz = std::fs::read(img.join("blobs").join(GZ_ID)).unwrap();
    std::fs::write(img.join("blobs").join(GZ_ID), &gz[..3_000_000]).unwrap();
    let image = ImageStore::new().load_dir(&img).unwrap();
    let blob = &image.blobs[0];
    let (target, _f) = target_for(dir.path(), blob);
    let filler = Filler::new(Writer::start(), 4);
    filler.fill(&target, 0, 4096).await.unwrap();
    let err = filler.fill(&target, 0, blob.size()).await.unwrap_err().to_string();
    assert!(blob.stats.errors.load(Ordering::Relaxed) > 0, "{err}");
}

/// The layout nydusify pushes puts a 512-byte tar header after each section (HAS_TAR_HEADER):
/// the same chunks, with the blob meta 512 bytes later. Served from that layout, the address
/// space is byte-identical to the plain layout's; a chunk reaching into the tar header is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nydus_tar_header_layout_serves_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (img, boot, id, blob) = copy("dir-zstd", dir.path());
    let fill_all = |img: PathBuf, sub: &'static str| {
        let dir = dir.path().join(sub);
        async move {
            std::fs::create_dir_all(&dir).unwrap();
            let image = ImageStore::new().load_dir(&img).unwrap();
            let (target, f) = target_for(&dir, &image.blobs[0]);
            Filler::new(Writer::start(), 4).fill(&target, 0, image.blobs[0].size()).await.unwrap();
            let mut out = vec![0u8; image.blobs[0].size() as usize];
            std::os::unix::fs::FileExt::read_exact_at(&f, &mut out, 0).unwrap();
            out
        }
    };
    let plain = fill_all(img.clone(), "plain").await;

    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let ci_off = u64_at(&boot, ENTRY + 112) as usize;
    let mut tar_hdr = [0u8; 512];
    tar_hdr[..10].copy_from_slice(b"image.blob");
    let mut nb = blob[..ci_off].to_vec();
    nb.extend_from_slice(&tar_hdr);
    nb.extend_from_slice(&blob[ci_off..]);
    let mut b = boot.clone();
    let features = u32::from_le_bytes(b[ENTRY + 84..ENTRY + 88].try_into().unwrap()) | 0x1000_0000;
    b[ENTRY + 84..ENTRY + 88].copy_from_slice(&features.to_le_bytes());
    b[ENTRY + 88..ENTRY + 96].copy_from_slice(&(nb.len() as u64).to_le_bytes());
    b[ENTRY + 112..ENTRY + 120].copy_from_slice(&(ci_off as u64 + 512).to_le_bytes());
    let h = nb.len() - 4096;
    nb[h + 4..h + 8].copy_from_slice(&features.to_le_bytes());
    nb[h + 16..h + 24].copy_from_slice(&(ci_off as u64 + 512).to_le_bytes());
    std::fs::write(img.join("image.boot"), &b).unwrap();
    std::fs::write(img.join("blobs").join(&id), &nb).unwrap();
    let tarred = fill_all(img.clone(), "tar").await;
    assert!(tarred == plain, "tar-header layout serves different bytes");

    // The feature bit on the plain layout: the last chunk now reaches into where the tar
    // header must be, and the image is refused at load.
    let mut b2 = boot.clone();
    b2[ENTRY + 84..ENTRY + 88].copy_from_slice(&features.to_le_bytes());
    let mut d2 = blob.clone();
    let h2 = d2.len() - 4096;
    d2[h2 + 4..h2 + 8].copy_from_slice(&features.to_le_bytes());
    std::fs::write(img.join("image.boot"), &b2).unwrap();
    std::fs::write(img.join("blobs").join(&id), &d2).unwrap();
    let err = format!("{:#}", ImageStore::new().load_dir(&img).err().expect("refused"));
    assert!(err.contains("past the data area"), "{err}");
}
