//! ktest-tree: what the erofsd guest tests need to judge a mounted tree.
//!
//!   ktest-tree manifest DIR [--xattrs]            one line per entry, sorted (stdout)
//!   ktest-tree verify DIR MANIFEST [--xattrs]     DIR's manifest must equal MANIFEST
//!   ktest-tree readers DIR MANIFEST [--threads N] [--rounds R]
//!       N threads read every regular file (each thread in its own order, so the same and
//!       different files are read at once) and check each sha256; any error fails
//!   ktest-tree readall DIR [--threads N]          read every regular file, print timing
//!   ktest-tree expect-eio FILE GOOD               reading FILE must fail with EIO, and every
//!       byte returned before the error must equal GOOD's (never wrong bytes)
//!   ktest-tree shapes DIR --set fixed|fixture|random [--seed S] [--files N]
//!       writes the file shapes of tests/common/shapes.rs (data, zero runs, holes)
//!   ktest-tree randread DIR MANIFEST [--seed S]   reads every regular file in random order,
//!       in pieces of random size and offset (4 KiB-aligned and not), and checks each sha256
//!
//! Manifest line (tab-separated): path, type (f d l c b p s), permission bits (octal, with
//! setuid/setgid/sticky), uid, gid, nlink (- for directories), size (files and symlinks),
//! sha256 (files), link target, rdev (major:minor for devices), [xattrs name=hex,...].
//! Paths are escaped: bytes outside printable ASCII, `\` and tab become \xNN.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};

// The tests' generators, by path: the same seed gives the same files here and in the host tests.
#[allow(dead_code)]
#[path = "../../../tests/common/data.rs"]
mod data;
#[allow(dead_code)]
#[path = "../../../tests/common/shapes.rs"]
mod shapes;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let opt = |name: &str, default: usize| -> usize {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let pos: Vec<&String> = {
        let mut v = Vec::new();
        let mut skip = false;
        for a in &args {
            if skip {
                skip = false;
                continue;
            }
            if matches!(a.as_str(), "--threads" | "--rounds" | "--seed" | "--files" | "--set") {
                skip = true;
                continue;
            }
            if !a.starts_with("--") {
                v.push(a);
            }
        }
        v
    };
    let res = match pos.first().map(|s| s.as_str()) {
        Some("manifest") if pos.len() == 2 => manifest(Path::new(pos[1]), flag("--xattrs")).map(|lines| {
            let mut out = io::stdout().lock();
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
            true
        }),
        Some("verify") if pos.len() == 3 => verify(Path::new(pos[1]), Path::new(pos[2]), flag("--xattrs")),
        Some("readers") if pos.len() == 3 => {
            readers(Path::new(pos[1]), Path::new(pos[2]), opt("--threads", 8), opt("--rounds", 1))
        }
        Some("readall") if pos.len() == 2 => readall(Path::new(pos[1]), opt("--threads", 1)),
        Some("expect-eio") if pos.len() == 3 => expect_eio(Path::new(pos[1]), Path::new(pos[2])),
        Some("shapes") if pos.len() == 2 => {
            let set = args.iter().position(|a| a == "--set").and_then(|i| args.get(i + 1)).map(|s| s.as_str());
            let list = match set {
                Some("fixed") => Ok(shapes::fixed()),
                Some("fixture") => Ok(shapes::fixture()),
                Some("random") => Ok(shapes::random(opt("--seed", 1) as u64, opt("--files", 200))),
                _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "shapes: --set fixed|fixture|random")),
            };
            list.and_then(|l| shapes::write_all(Path::new(pos[1]), &l)).map(|()| true)
        }
        Some("randread") if pos.len() == 3 => randread(Path::new(pos[1]), Path::new(pos[2]), opt("--seed", 1) as u64),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "usage: ktest-tree manifest|verify|readers|readall|expect-eio|shapes|randread ... (see source header)",
        )),
    };
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ktest-tree: {e}");
            ExitCode::FAILURE
        }
    }
}

fn escape(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if (0x20..0x7f).contains(&b) && b != b'\\' {
            s.push(b as char);
        } else {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1] == b'x' {
            if let Ok(v) = u8::from_str_radix(&s[i + 2..i + 4], 16) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn sha256_file(path: &Path) -> io::Result<(String, u64)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&h.finalize()), total))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn xattrs(path: &Path) -> io::Result<String> {
    let c = CString::new(path.as_os_str().as_bytes())?;
    let mut names = vec![0u8; 65536];
    // SAFETY: valid C string and buffer.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOTSUP) {
            return Ok(String::new());
        }
        return Err(e);
    }
    let mut list: Vec<String> = Vec::new();
    for name in names[..n as usize].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cn = CString::new(name)?;
        let mut val = vec![0u8; 65536];
        // SAFETY: valid C strings and buffer.
        let m = unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        if m < 0 {
            return Err(io::Error::last_os_error());
        }
        list.push(format!("{}={}", escape(name), hex(&val[..m as usize])));
    }
    list.sort();
    Ok(list.join(","))
}

fn entry_line(root: &Path, rel: &Path, with_xattrs: bool) -> io::Result<String> {
    let full = root.join(rel);
    let md = std::fs::symlink_metadata(&full)?;
    let ft = md.file_type();
    let t = if ft.is_file() {
        "f"
    } else if ft.is_dir() {
        "d"
    } else if ft.is_symlink() {
        "l"
    } else if ft.is_char_device() {
        "c"
    } else if ft.is_block_device() {
        "b"
    } else if ft.is_fifo() {
        "p"
    } else {
        "s"
    };
    let nlink = if ft.is_dir() { "-".to_string() } else { md.nlink().to_string() };
    let size = if ft.is_file() || ft.is_symlink() { md.size().to_string() } else { "-".into() };
    let sha = if ft.is_file() {
        let (sha, n) = sha256_file(&full)?;
        if n != md.size() {
            return Err(io::Error::other(format!("{}: read {n} bytes, size says {}", full.display(), md.size())));
        }
        sha
    } else {
        "-".into()
    };
    let link = if ft.is_symlink() { escape(std::fs::read_link(&full)?.as_os_str().as_bytes()) } else { "-".into() };
    let rdev = if ft.is_char_device() || ft.is_block_device() {
        let r = md.rdev();
        format!("{}:{}", libc::major(r), libc::minor(r))
    } else {
        "-".into()
    };
    let mut line = format!(
        "{}\t{t}\t{:o}\t{}\t{}\t{nlink}\t{size}\t{sha}\t{link}\t{rdev}",
        escape(rel.as_os_str().as_bytes()),
        md.mode() & 0o7777,
        md.uid(),
        md.gid()
    );
    if with_xattrs {
        line.push('\t');
        line.push_str(&xattrs(&full)?);
    }
    Ok(line)
}

fn walk(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))?.map(|e| e.map(|e| e.file_name())).collect::<Result<_, _>>()?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for n in names {
        let child = rel.join(&n);
        out.push(child.clone());
        if std::fs::symlink_metadata(root.join(&child))?.is_dir() {
            walk(root, &child, out)?;
        }
    }
    Ok(())
}

fn manifest(root: &Path, with_xattrs: bool) -> io::Result<Vec<String>> {
    let mut paths = vec![PathBuf::from(".")];
    walk(root, Path::new("."), &mut paths)?;
    let mut lines = Vec::with_capacity(paths.len());
    for p in paths {
        lines.push(entry_line(root, &p, with_xattrs)?);
    }
    Ok(lines)
}

fn verify(root: &Path, expected: &Path, with_xattrs: bool) -> io::Result<bool> {
    let want: Vec<String> = std::fs::read_to_string(expected)?.lines().map(str::to_string).collect();
    let got = manifest(root, with_xattrs)?;
    if got == want {
        let files = want.iter().filter(|l| l.split('\t').nth(1) == Some("f")).count();
        println!("verified {} entries ({files} regular files) under {}: content and metadata match", want.len(), root.display());
        return Ok(true);
    }
    println!("MISMATCH under {} ({} entries expected, {} found); first differences:", root.display(), want.len(), got.len());
    let (mut i, mut j, mut shown) = (0, 0, 0);
    while (i < want.len() || j < got.len()) && shown < 12 {
        match (want.get(i), got.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) => {
                let (pa, pb) = (a.split('\t').next(), b.split('\t').next());
                if pa == pb {
                    println!("  expected {a}\n  found    {b}");
                    i += 1;
                    j += 1;
                } else if pa < pb {
                    println!("  missing  {a}");
                    i += 1;
                } else {
                    println!("  extra    {b}");
                    j += 1;
                }
                shown += 1;
            }
            (Some(a), None) => {
                println!("  missing  {a}");
                i += 1;
                shown += 1;
            }
            (None, Some(b)) => {
                println!("  extra    {b}");
                j += 1;
                shown += 1;
            }
            (None, None) => break,
        }
    }
    Ok(false)
}

fn regular_files(manifest: &Path) -> io::Result<Vec<(PathBuf, String, u64)>> {
    let text = std::fs::read_to_string(manifest)?;
    let mut out = Vec::new();
    for l in text.lines() {
        let f: Vec<&str> = l.split('\t').collect();
        if f.len() >= 8 && f[1] == "f" {
            let p = PathBuf::from(OsStr::from_bytes(&unescape(f[0])));
            out.push((p, f[7].to_string(), f[6].parse().unwrap_or(0)));
        }
    }
    Ok(out)
}

/// Every regular file of MANIFEST read in a random order of pieces (random sizes, offsets on
/// and off page boundaries) through one fd each; the assembled bytes must hash to the manifest.
fn randread(root: &Path, manifest: &Path, seed: u64) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut rng = data::Rng::new(seed);
    let files = regular_files(manifest)?;
    let (mut ok, mut pieces, mut bytes) = (true, 0u64, 0u64);
    for (rel, sha, size) in &files {
        let f = File::open(root.join(rel))?;
        let mut buf = vec![0u8; *size as usize];
        let cuts = shapes::random_pieces(&mut rng, *size);
        for &(at, len) in &cuts {
            f.read_exact_at(&mut buf[at as usize..(at + len) as usize], at)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {len} bytes at {at}: {e}", rel.display())))?;
        }
        pieces += cuts.len() as u64;
        bytes += size;
        let got = hex(&Sha256::digest(&buf));
        if &got != sha {
            let zeros = buf.iter().filter(|&&b| b == 0).count();
            eprintln!("randread: {}: sha256 {got} != {sha} ({zeros} zero bytes of {size})", rel.display());
            ok = false;
        }
    }
    println!("randread: {} files, {pieces} pieces, {bytes} bytes, seed {seed}: {}", files.len(), if ok { "all equal" } else { "MISMATCH" });
    Ok(ok)
}

fn readers(root: &Path, manifest: &Path, threads: usize, rounds: usize) -> io::Result<bool> {
    let files = Arc::new(regular_files(manifest)?);
    if files.is_empty() {
        return Err(io::Error::other("manifest lists no regular files"));
    }
    let errors = Arc::new(AtomicU64::new(0));
    let mismatches = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let reads = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for t in 0..threads.max(1) {
        let (files, errors, mismatches, bytes, reads) =
            (files.clone(), errors.clone(), mismatches.clone(), bytes.clone(), reads.clone());
        let root = root.to_path_buf();
        hs.push(std::thread::spawn(move || {
            // Each thread its own order: even threads share one order (same files at once),
            // odd threads a shuffled one (different files at once).
            let mut order: Vec<usize> = (0..files.len()).collect();
            if t % 2 == 1 {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ t as u64;
                for i in (1..order.len()).rev() {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    order.swap(i, (x % (i as u64 + 1)) as usize);
                }
            }
            for _ in 0..rounds {
                for &i in &order {
                    let (p, sha, size) = &files[i];
                    match sha256_file(&root.join(p)) {
                        Ok((got, n)) => {
                            reads.fetch_add(1, Ordering::Relaxed);
                            bytes.fetch_add(n, Ordering::Relaxed);
                            // Count every mismatch; print the first 10.
                            if (&got != sha || n != *size) && mismatches.fetch_add(1, Ordering::Relaxed) < 10 {
                                eprintln!("reader {t}: WRONG BYTES in {} ({n} bytes)", p.display());
                            }
                        }
                        Err(e) => {
                            if errors.fetch_add(1, Ordering::Relaxed) < 10 {
                                eprintln!("reader {t}: {}: {e}", p.display());
                            }
                        }
                    }
                }
            }
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let (e, m) = (errors.load(Ordering::Relaxed), mismatches.load(Ordering::Relaxed));
    println!(
        "readers: {} threads x {rounds} round(s): {} files read, {} bytes, {e} errors, {m} wrong-content, {secs:.2}s",
        threads,
        reads.load(Ordering::Relaxed),
        bytes.load(Ordering::Relaxed)
    );
    Ok(e == 0 && m == 0)
}

fn readall(root: &Path, threads: usize) -> io::Result<bool> {
    let mut paths = Vec::new();
    walk(root, Path::new("."), &mut paths)?;
    let files: Vec<PathBuf> = paths
        .into_iter()
        .filter(|p| std::fs::symlink_metadata(root.join(p)).map(|m| m.is_file()).unwrap_or(false))
        .collect();
    let files = Arc::new(files);
    let next = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let mut hs = Vec::new();
    for _ in 0..threads.max(1) {
        let (files, next, bytes, errors, root) = (files.clone(), next.clone(), bytes.clone(), errors.clone(), root.to_path_buf());
        hs.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(p) = files.get(i) else { break };
                let r = (|| -> io::Result<u64> {
                    let mut f = File::open(root.join(p))?;
                    let mut n = 0u64;
                    loop {
                        match f.read(&mut buf)? {
                            0 => return Ok(n),
                            k => n += k as u64,
                        }
                    }
                })();
                match r {
                    Ok(n) => {
                        bytes.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!("{}: {e}", p.display());
                    }
                }
            }
        }));
    }
    for h in hs {
        let _ = h.join();
    }
    let secs = t0.elapsed().as_secs_f64();
    let b = bytes.load(Ordering::Relaxed);
    println!(
        "readall files={} bytes={b} secs={secs:.3} mbps={:.1} errors={}",
        files.len(),
        b as f64 / 1e6 / secs.max(1e-9),
        errors.load(Ordering::Relaxed)
    );
    Ok(errors.load(Ordering::Relaxed) == 0)
}

fn expect_eio(path: &Path, good: &Path) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let mut f = File::open(path)?;
    let reference = File::open(good)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        match f.read(&mut buf) {
            Ok(0) => {
                println!("{}: read {total} bytes without an error (expected EIO)", path.display());
                return Ok(false);
            }
            Ok(n) => {
                reference.read_exact_at(&mut want[..n], total)?;
                if buf[..n] != want[..n] {
                    println!("{}: WRONG BYTES at {total}..{}", path.display(), total + n as u64);
                    return Ok(false);
                }
                total += n as u64
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                println!("{}: EIO after {total} good bytes, as expected", path.display());
                return Ok(true);
            }
            Err(e) => {
                println!("{}: failed with {e} after {total} bytes (expected EIO)", path.display());
                return Ok(false);
            }
        }
    }
}
