//! Fuzzes the whole read path on one input: open (superblock, device table, erofsd blob
//! table, root inode), then walk every entry and read every xattr, symlink, data map and the
//! first/last bytes of every file. Errors are fine; panics, hangs, and huge allocations are bugs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = erofs::reader::Image::open(data) {
        let mut zeros = |_dev: u16, _off: u64, buf: &mut [u8]| {
            buf.fill(0);
            Ok(())
        };
        let _ = img.check_all(64 * 1024, &mut zeros);
    }
});
