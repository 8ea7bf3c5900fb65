//! Replays the committed fuzz seed corpus (erofs/fuzz/seeds/) through the same code path as
//! the fuzz target, plus a few thousand deterministic mutations of each seed, so every
//! `cargo test` run exercises the reader on hostile input even where cargo-fuzz cannot run.
//!
//! `EROFS_WRITE_SEEDS=1 cargo test -p erofs --test fuzz_seeds` regenerates the corpus.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use erofs::reader::{CheckStats, Image};
use erofs::tree::*;

fn seeds_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

/// Exactly what the fuzz target does; returns the stats when the image was fully readable.
fn exercise(data: &[u8]) -> Option<CheckStats> {
    let img = Image::open(data).ok()?;
    let mut zeros = |_dev: u16, _off: u64, buf: &mut [u8]| {
        buf.fill(0);
        Ok(())
    };
    img.check_all(64 * 1024, &mut zeros).ok()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One mutation: byte flips, interesting values written at random (mostly metadata) offsets,
/// truncation, or a copied block.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut d = seed.to_vec();
    let hot = d.len().min(64 * 1024);
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(hot);
                d[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            let vals: [&[u8]; 7] = [&[0xff; 8], &[0; 8], &[0x7f, 0xff, 0xff, 0xff], &[1, 0, 0, 0], &[0xfe, 0xff], &[0x00, 0x10], &[0x0c, 0x00]];
            let v = vals[rng.below(vals.len())];
            let n = 1 + rng.below(v.len());
            let i = rng.below(hot.saturating_sub(n));
            d[i..i + n].copy_from_slice(&v[..n]);
        }
        2 => d.truncate(rng.below(d.len())),
        3 => {
            // Fields of the superblock and the first inodes are the most sensitive.
            let i = 1024 + rng.below(hot.saturating_sub(1024 + 4).min(8192));
            let v = rng.next().to_le_bytes();
            let n = 1 + rng.below(4);
            d[i..i + n].copy_from_slice(&v[..n]);
        }
        _ => {
            if d.len() >= 8192 {
                let a = rng.below(d.len() / 4096) * 4096;
                let b = rng.below(d.len() / 4096) * 4096;
                let blk = d[a..a + 4096].to_vec();
                d[b..b + 4096].copy_from_slice(&blk);
            }
        }
    }
    d
}

#[test]
fn seed_corpus_replays_and_mutations_never_panic() {
    if std::env::var_os("EROFS_WRITE_SEEDS").is_some() {
        write_seeds();
    }
    let mut seeds: Vec<PathBuf> = std::fs::read_dir(seeds_dir()).expect("seed dir").map(|e| e.unwrap().path()).collect();
    seeds.sort();
    assert!(seeds.len() >= 6, "seed corpus too small: {seeds:?}");
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let start = Instant::now();
    let mut mutants = 0;
    for path in &seeds {
        let data = std::fs::read(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let stats = exercise(&data);
        if name.starts_with("ok-") {
            let st = stats.unwrap_or_else(|| panic!("{name}: valid seed no longer reads cleanly"));
            assert!(st.entries >= 5, "{name}: {st:?}");
        }
        for _ in 0..1500 {
            let m = mutate(&data, &mut rng);
            let t = Instant::now();
            exercise(&m);
            assert!(t.elapsed() < Duration::from_secs(5), "{name}: one mutant took {:?}", t.elapsed());
            mutants += 1;
        }
    }
    eprintln!("{} seeds, {mutants} mutants in {:?}", seeds.len(), start.elapsed());
}

/// A small tree touching every structure the reader parses.
fn seed_tree() -> (Tree, Blobs) {
    let mut t = Tree::new(meta(0o755));
    let mut blobs = Blobs::new(2);
    let r = Tree::ROOT;
    t.node_mut(r).xattrs.push(xattr("user.root", b"r"));
    add(&mut t, r, b"inline", inline_file(b"small inline file\n"));
    add(&mut t, r, b"plain", inline_file(&pattern(1, 5000)));
    let mut data = pattern(2, 3 * CHUNK as usize + 100);
    data[CHUNK as usize..2 * CHUNK as usize].fill(0);
    let f = blobs.file(&data, |i| 1 + (i % 2) as u16);
    add(&mut t, r, b"chunked", f);
    let h = add(&mut t, r, b"hard", inline_file(b"h"));
    let d = add(&mut t, r, b"dir", dir());
    link(&mut t, d, b"hard2", h);
    for i in 0..120 {
        let mut n = inline_file(b"");
        n.xattrs.push(xattr("security.capability", &[1; 20]));
        if i % 7 == 0 {
            n.xattrs.push(xattr("user.own", format!("{i}").as_bytes()));
        }
        add(&mut t, d, format!("entry-{i:03}-padding-padding").as_bytes(), n);
    }
    add(&mut t, r, b"symlink", node(Kind::Symlink { target: b"inline".to_vec() }, 0o777));
    let mut slow = node(Kind::Symlink { target: vec![b'y'; 4000] }, 0o777);
    slow.xattrs.push(xattr("trusted.big", &[2; 300]));
    add(&mut t, r, b"slow", slow);
    add(&mut t, r, b"chr", node(Kind::CharDev { major: 1, minor: 3 }, 0o666));
    add(&mut t, r, b"fifo", node(Kind::Fifo, 0o644));
    let mut owned = inline_file(b"o");
    owned.meta.uid = 70_000;
    owned.meta.mtime = 5;
    add(&mut t, r, b"owned", owned);
    let mut deep = r;
    for i in 0..5 {
        deep = add(&mut t, deep, format!("d{i}").as_bytes(), dir());
    }
    (t, blobs)
}

fn write_seeds() {
    let out = seeds_dir();
    std::fs::create_dir_all(&out).unwrap();
    let (tree, blobs) = seed_tree();
    let boot = write(&tree, &blobs.records(), BUILD_TIME);
    write_file(&out.join("ok-erofsd.boot"), &boot);
    let mut empty = Tree::new(meta(0o755));
    add(&mut empty, Tree::ROOT, b"a", inline_file(b"a"));
    add(&mut empty, Tree::ROOT, b"b", dir());
    add(&mut empty, Tree::ROOT, b"c", node(Kind::Symlink { target: b"a".to_vec() }, 0o777));
    add(&mut empty, Tree::ROOT, b"d", inline_file(b"d"));
    write_file(&out.join("ok-tiny.boot"), &write(&empty, &[], BUILD_TIME));
    for (i, cut) in [1100usize, 1300, 4096, 6000, boot.len() - 4096].into_iter().enumerate() {
        write_file(&out.join(format!("bad-truncated-{i}.boot")), &boot[..cut]);
    }
    let mut rng = Rng(42);
    for i in 0..4 {
        write_file(&out.join(format!("bad-mangled-{i}.boot")), &mutate(&boot, &mut rng));
    }
    std::fs::copy(nydus_fixtures().join("dir-zstd/image.boot"), out.join("ok-nydus-rafs6.boot")).unwrap();
    // An image from mkfs.erofs (erofs-utils 1.5) with a blob device.
    if have_tool("mkfs.erofs") {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        write_file(&src.join("file"), &pattern(3, 10_000));
        write_file(&src.join("sub/small"), b"x");
        write_file(&src.join("sub/other"), b"y");
        std::os::unix::fs::symlink("file", src.join("link")).unwrap();
        let img = tmp.path().join("img");
        run(std::process::Command::new("mkfs.erofs")
            .arg("--chunksize=4096")
            .arg(format!("--blobdev={}", tmp.path().join("blob").display()))
            .arg("-T0")
            .arg(&img)
            .arg(&src));
        std::fs::copy(&img, out.join("ok-mkfs-blobdev.img")).unwrap();
    }
}
