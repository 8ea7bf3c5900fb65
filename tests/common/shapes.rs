//! Seeded random file shapes for the hole tests: runs of data, written zeros and holes (never
//! written, so sparse on disk) of random length and position, at and off page, group and chunk
//! boundaries, in files of random size; plus the fixed shapes that found the fscache hole bug.
//!
//! One generator for the host tests and the guest inputs (kernel-tests/tree-tool includes this
//! file by path, beside `data.rs`), so the seed a failing run prints replays on either side.
//! Every shape's bytes follow from its name and the seed alone: [`Shape::content`] gives them
//! without touching the disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::data::{noise, Rng};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Piece {
    /// Random bytes.
    Data,
    /// Zeros, written.
    Zeros,
    /// Zeros, never written (a hole in the file on disk).
    Hole,
}

#[derive(Clone, Debug)]
pub struct Shape {
    pub name: String,
    pub pieces: Vec<(Piece, u64)>,
    /// Seeds the data pieces.
    pub seed: u64,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

impl Shape {
    pub fn size(&self) -> u64 {
        self.pieces.iter().map(|p| p.1).sum()
    }

    /// (offset, kind, len, data seed) of each piece.
    fn layout(&self) -> impl Iterator<Item = (u64, Piece, u64, u64)> + '_ {
        let mut off = 0;
        self.pieces.iter().enumerate().map(move |(i, &(kind, len))| {
            let at = off;
            off += len;
            (at, kind, len, self.seed.wrapping_add(i as u64 * 0x1_0000_0001))
        })
    }

    pub fn content(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.size() as usize];
        for (at, kind, len, seed) in self.layout() {
            if kind == Piece::Data {
                out[at as usize..(at + len) as usize].copy_from_slice(&noise(len as usize, seed));
            }
        }
        out
    }

    /// Writes the file: data and zeros written, holes left unwritten, the size set last.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let f = File::create(path)?;
        for (at, kind, len, seed) in self.layout() {
            match kind {
                Piece::Data => f.write_all_at(&noise(len as usize, seed), at)?,
                Piece::Zeros => {
                    let zeros = vec![0u8; (len as usize).min(MIB as usize)];
                    let mut done = 0;
                    while done < len {
                        let n = (len - done).min(zeros.len() as u64);
                        f.write_all_at(&zeros[..n as usize], at + done)?;
                        done += n;
                    }
                }
                Piece::Hole => {}
            }
        }
        f.set_len(self.size())?;
        // Fixed, so a manifest of the written tree does not depend on the umask.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o644))
    }

    /// Whether a builder that turns all-zero chunks of `chunk` bytes into holes would leave an
    /// interior hole in this file: a zero chunk with data after it.
    pub fn has_zero_chunk_before_data(&self, chunk: u64) -> bool {
        let c = self.content();
        let zero: Vec<bool> = c.chunks(chunk as usize).map(|b| b.iter().all(|&x| x == 0)).collect();
        match zero.iter().rposition(|z| !z) {
            Some(last) => zero[..last].iter().any(|&z| z),
            None => false,
        }
    }
}

fn shape(name: &str, seed: u64, pieces: &[(Piece, u64)]) -> Shape {
    Shape { name: name.into(), pieces: pieces.to_vec(), seed }
}

/// The shapes the bug was reported with, and the edges around them.
pub fn fixed() -> Vec<Shape> {
    use Piece::*;
    vec![
        shape("data-zeros-data", 1, &[(Data, MIB), (Zeros, MIB), (Data, 300_000)]),
        shape("hole-50m-then-tail", 2, &[(Hole, 50 * MIB), (Data, 9)]),
        shape("hole-at-start", 3, &[(Hole, 2 * MIB), (Data, 123_457)]),
        shape("zeros-at-start", 4, &[(Zeros, MIB), (Data, MIB + 1)]),
        shape("zero-chunks-at-end", 5, &[(Data, 700_001), (Zeros, 3 * MIB)]),
        shape("hole-at-end", 6, &[(Data, MIB + 4095), (Hole, 5 * MIB)]),
        shape("several-zero-runs", 7, &[(Data, 5000), (Zeros, 2 * MIB), (Data, MIB), (Hole, 3 * MIB - 5000), (Data, 77), (Zeros, MIB), (Data, 4096)]),
        shape("only-zeros", 8, &[(Zeros, 3 * MIB + 17)]),
        shape("only-hole", 9, &[(Hole, 4 * MIB + 1)]),
        shape("zero-group-between-data", 10, &[(Data, 256 * KIB), (Zeros, 256 * KIB), (Data, 256 * KIB + 3)]),
        shape("zeros-off-boundaries", 11, &[(Data, 4097), (Zeros, 2 * MIB + 4095), (Data, 1)]),
    ]
}

/// The small shapes of the interior-hole fixture (tests/fixtures/interior-holes), built with
/// 64 KiB chunks by the builder that still wrote interior holes.
pub fn fixture() -> Vec<Shape> {
    use Piece::*;
    vec![
        shape("data-zeros-data", 21, &[(Data, 64 * KIB), (Zeros, 128 * KIB), (Data, 30_000)]),
        shape("hole-then-tail", 22, &[(Hole, MIB), (Data, 9)]),
        shape("hole-at-start", 23, &[(Hole, 64 * KIB), (Data, 5000)]),
        shape("several-zero-runs", 24, &[(Data, 100), (Zeros, 192 * KIB), (Data, 4096), (Hole, 70_000), (Data, 12_345)]),
        shape("trailing-zeros", 25, &[(Data, 70_000), (Zeros, 200_000)]),
    ]
}

/// A length near one of the boundaries a reader, a group or a chunk has.
fn length(r: &mut Rng, max_units: u64) -> u64 {
    let unit = [1, 4 * KIB, 64 * KIB, 256 * KIB, MIB][r.below(5) as usize];
    let base = unit * (1 + r.below(max_units));
    let jitter = match r.below(4) {
        0 => 0,
        1 => r.below(4096),
        2 => 1,
        _ => 0u64.wrapping_sub(1),
    };
    base.wrapping_add(jitter).clamp(1, 64 * MIB)
}

/// `n` random shapes from `seed`, named `r<seed>-<i>`.
pub fn random(seed: u64, n: usize) -> Vec<Shape> {
    let mut r = Rng::new(seed);
    (0..n)
        .map(|i| {
            let npieces = 1 + r.below(7);
            let mut pieces = Vec::new();
            let mut total = 0;
            for _ in 0..npieces {
                let kind = [Piece::Data, Piece::Zeros, Piece::Hole][r.below(3) as usize];
                // Data stays small (the images stay small); zeros and holes may be long.
                let len = match kind {
                    Piece::Data => length(&mut r, 2).min(200 * KIB),
                    _ if r.chance(1, 40) => length(&mut r, 12),
                    _ if r.chance(1, 2) => length(&mut r, 1).min(512 * KIB),
                    _ => length(&mut r, 3),
                };
                if total + len > 16 * MIB {
                    break;
                }
                total += len;
                pieces.push((kind, len));
            }
            if pieces.is_empty() {
                pieces.push((Piece::Data, 1 + r.below(10_000)));
            }
            Shape { name: format!("r{seed}-{i}"), pieces, seed: seed.wrapping_mul(1000).wrapping_add(i as u64) }
        })
        .collect()
}

/// `size` bytes cut into pieces of random length (page multiples, odd lengths, powers of two
/// from 4 KiB to 1 MiB), in shuffled order, as `(offset, len)`: how the tests read a file in
/// random order (the host tests, and `ktest-tree randread` in the guests).
pub fn random_pieces(r: &mut Rng, size: u64) -> Vec<(u64, u64)> {
    let mut pieces = Vec::new();
    let mut at = 0u64;
    while at < size {
        let len = match r.below(3) {
            0 => 4096 * (1 + r.below(64)),
            1 => 1 + r.below(300_000),
            _ => 1 << (12 + r.below(9)),
        };
        let len = len.min(size - at);
        pieces.push((at, len));
        at += len;
    }
    for i in (1..pieces.len()).rev() {
        pieces.swap(i, r.below(i as u64 + 1) as usize);
    }
    pieces
}

/// Writes each shape as `dir/<name>`.
pub fn write_all(dir: &Path, shapes: &[Shape]) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for s in shapes {
        s.write(&dir.join(&s.name))?;
    }
    Ok(())
}

/// The seed to use: `$EROFSD_SHAPES_SEED` when set (to replay a failure), else one drawn from
/// the clock. Printed either way.
pub fn seed_from_env() -> u64 {
    let seed = match std::env::var("EROFSD_SHAPES_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("EROFSD_SHAPES_SEED={s:?} is not a number")),
        Err(_) => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64 % 1_000_000_007).unwrap_or(1),
    };
    eprintln!("file shapes: seed {seed} (replay with EROFSD_SHAPES_SEED={seed})");
    seed
}
