//! `erofsd check`: verify an image's structures and, with its blobs, every group.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::build::check::{check, CheckPaths};

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
    let paths = CheckPaths::resolve(&args.image, args.blob_dir.as_deref());
    let r = check(&paths, args.write_raw.as_deref())?;
    println!(
        "{}: {} inodes ({} directories, {} regular files, {} bytes), {} chunks, {} holes, {} xattrs",
        paths.bootstrap.display(),
        r.inodes,
        r.dirs,
        r.files,
        r.file_bytes,
        r.chunks,
        r.holes,
        r.xattrs
    );
    println!("blobs: {} in the table, {} verified ({} groups)", r.blobs, r.blobs_verified, r.groups_verified);
    for p in &r.raw_written {
        println!("raw device: {}", p.display());
    }
    for n in &r.notes {
        println!("note: {n}");
    }
    for p in &r.problems {
        println!("PROBLEM: {p}");
    }
    if !r.problems.is_empty() {
        bail!("{} problem(s) found", r.problems.len());
    }
    println!("OK");
    Ok(())
}
