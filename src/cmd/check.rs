//! `erofsd check`: verify an image's structures and, with its blobs, every group.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::build::check::{check, CheckPaths};
use super::print_report;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A bootstrap file or an image directory (holding image.boot and blobs/).
    pub image: PathBuf,
    /// Directory holding the blobs (default: blobs/ next to the bootstrap).
    #[arg(long)]
    pub blob_dir: Option<PathBuf>,
    /// Write each blob's uncompressed address space to DIR/<blob-id> (for `device=` mounts
    /// without the daemon).
    #[arg(long, value_name = "DIR")]
    pub write_raw: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    let mut out = String::new();
    let paths = CheckPaths::resolve(&args.image, args.blob_dir.as_deref());
    let r = check(&paths, args.write_raw.as_deref())?;
    outln!(out, 
        "{}: {} inodes ({} directories, {} regular-file entries, {} bytes), {} chunks, {} holes, {} xattrs",
        paths.bootstrap.display(),
        r.inodes,
        r.dirs,
        r.files,
        r.file_bytes,
        r.chunks,
        r.holes,
        r.xattrs
    );
    outln!(out, "blobs: {} in the table, {} verified ({} groups)", r.blobs, r.blobs_verified, r.groups_verified);
    for p in &r.raw_written {
        outln!(out, "raw device: {}", p.display());
    }
    if let Some(first) = r.interior_holes.first() {
        outln!(
            out,
            "note: {} file(s) have interior holes (a hole with data after it), first /{} at byte {}: safe through the \
             fanotify door and on block devices; EROFS over fscache (kernels 5.19-7.1) would read the data after them \
             as zeros, so erofsd's cachefiles door serves them through a zero extent",
            r.interior_holes.len(),
            String::from_utf8_lossy(&first.path),
            first.first_offset
        );
        for h in r.interior_holes.iter().take(20) {
            outln!(out, "interior holes: /{}: {} chunk(s) of {} bytes, first at byte {}", String::from_utf8_lossy(&h.path), h.chunks, 1u64 << h.chunk_bits, h.first_offset);
        }
        if r.interior_holes.len() > 20 {
            outln!(out, "interior holes: ... and {} more file(s)", r.interior_holes.len() - 20);
        }
    }
    for n in &r.notes {
        outln!(out, "note: {n}");
    }
    for p in &r.problems {
        outln!(out, "PROBLEM: {p}");
    }
    if !r.problems.is_empty() {
        print_report(&out);
        bail!("{} problem(s) found", r.problems.len());
    }
    outln!(out, "OK");
    print_report(&out);
    Ok(())
}
