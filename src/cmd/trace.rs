//! `erofsd trace export`: an access trace recorded by the daemon → a file list for
//! `erofsd build --prefetch-list`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::build::prefetchlist::files_of_trace;
use crate::core::trace::{state_trace_path, Trace};
use crate::daemon::config::DEFAULT_CACHE_DIR;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Print the files a trace touched, in first-access order (one path a line).
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// The image the trace was recorded for (directory with image.boot, or a bootstrap file).
    pub image: PathBuf,
    /// Trace file [default: <cache-dir>/state/trace/<image id>.trace].
    #[arg(long)]
    pub trace: Option<PathBuf>,
    /// The daemon's cache directory (where recorded traces are kept).
    #[arg(long, default_value = DEFAULT_CACHE_DIR)]
    pub cache_dir: PathBuf,
    /// Write the list here instead of standard output.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Export(a) => export(a),
    }
}

fn export(a: ExportArgs) -> Result<()> {
    let boot = if a.image.is_dir() { a.image.join("image.boot") } else { a.image.clone() };
    let meta = std::fs::metadata(&boot).with_context(|| format!("bootstrap {}", boot.display()))?;
    if meta.len() > crate::core::images::MAX_BOOTSTRAP {
        anyhow::bail!("bootstrap {} is too large", boot.display());
    }
    let bytes = std::fs::read(&boot).with_context(|| format!("reading {}", boot.display()))?;
    let id = hex::encode(Sha256::digest(&bytes));
    let path = a.trace.unwrap_or_else(|| state_trace_path(&a.cache_dir, &id));
    let trace = Trace::load(&path)?;
    if !trace.image_id.is_empty() && trace.image_id != id {
        anyhow::bail!("trace {} was recorded for image {}, but {} is image {id}", path.display(), trace.image_id, a.image.display());
    }
    let files = files_of_trace(&bytes, &trace)?;
    let mut text = format!("# files of trace {} ({} groups), first access first\n", path.display(), trace.entries.len());
    for f in &files {
        text.push_str(f);
        text.push('\n');
    }
    match &a.output {
        Some(o) => std::fs::write(o, text).with_context(|| format!("writing {}", o.display()))?,
        None => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
        }
    }
    eprintln!("{} file(s) from {} traced group(s)", files.len(), trace.entries.len());
    Ok(())
}
