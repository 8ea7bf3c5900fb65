//! nydus RAFS v6 input through the daemon's own image loader and fill engine (no kernel
//! needed): a partial fill fetches only the chunk it touches, and deterministically mutated
//! blob tables, blob meta headers and chunk infos end as a clear error at load or an error
//! (EIO for the reader) on fill — never a panic, a hang, or a write outside the target file.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use erofsd::core::blob::Blob;
use erofsd::core::fill::{Filler, Target};
use erofsd::core::images::ImageStore;
use erofsd::core::writer::Writer;

fn fixtures() -> PathBuf {
    let p = std::env::var_os("EROFSD_NYDUS_FIXTURES").map(PathBuf::from).unwrap_or_else(|| "/work/shared/fixtures/nydus".into());
    assert!(p.join("tree.tar.gz").exists(), "nydus fixtures missing at {} (set EROFSD_NYDUS_FIXTURES)", p.display());
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

#[test]
fn nydus_zran_image_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("targz-ref");
    let err = ImageStore::new().load_dir(&src).err().expect("targz-ref must not load yet");
    let msg = format!("{err:#}");
    assert!(msg.contains("not supported yet") && msg.contains("zran"), "{msg}");
    drop(dir);
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
