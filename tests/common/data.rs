//! Test data generators, shared by tests/common and tests/build_common (which includes this
//! file by path: the build tests do not pull in all of `common`).

/// Deterministic pseudo-random (incompressible) bytes.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
