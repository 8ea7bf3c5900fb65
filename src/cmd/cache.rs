//! `erofsd cache ls|gc`: the blob cache, through the running daemon or, without one, directly
//! on the cache directory (under its lock, so a daemon starting meanwhile waits).

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use hyper::Method;

use crate::cache::gc::{GcReport, GcRequest, Offline};
use crate::cache::size::{format_size, parse_size};
use crate::cache::{DirLock, Listing};
use crate::daemon::client::call_json;
use crate::daemon::config::{Config, DEFAULT_API_SOCKET};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub command: Sub,
}

#[derive(clap::Args, Debug)]
pub struct Common {
    /// The daemon's control socket, asked first [default: from --config, else /run/erofsd/api.sock].
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Cache directory to use when no daemon answers [default: from --config, else /var/cache/erofsd].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Daemon TOML config (for cache_dir and [cache] max_size when no daemon answers).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug)]
pub enum Sub {
    /// List cached blobs: size on disk, ready bytes, last use, in use by a mount.
    Ls {
        #[command(flatten)]
        common: Common,
        /// Print JSON (the API's `GET /api/v1/cache` answer).
        #[arg(long)]
        json: bool,
    },
    /// Evict least recently used blobs no mount uses until the cache fits in a size.
    Gc {
        #[command(flatten)]
        common: Common,
        /// Size to get under, e.g. `10GiB` (`0`: every unused blob) [default: [cache] max_size].
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        /// Report what would be evicted without evicting.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON (the API's `POST /api/v1/cache/gc` answer).
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match args.command {
        Sub::Ls { common, json } => {
            let socket = common.socket()?;
            let listing = match daemon_answers(&socket) {
                true => rt.block_on(call_json::<Listing>(&socket, Method::GET, "/api/v1/cache", None::<&()>))?,
                false => offline_listing(&common)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
            } else {
                print_listing(&listing);
            }
        }
        Sub::Gc { common, max_size, dry_run, json } => {
            let req = GcRequest { max_size, dry_run };
            let socket = common.socket()?;
            let report = match daemon_answers(&socket) {
                true => rt.block_on(call_json::<GcReport>(&socket, Method::POST, "/api/v1/cache/gc", Some(&req)))?,
                false => offline_gc(&common, req)?,
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_report(&report);
            }
            if !report.errors.is_empty() {
                bail!("{} eviction(s) failed: {}", report.errors.len(), report.errors.join("; "));
            }
        }
    }
    Ok(())
}

impl Common {
    /// `--api-socket`, else the config file's, else the default.
    fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.api_socket {
            return Ok(s.clone());
        }
        Ok(match &self.config {
            Some(p) => Config::from_file(p)?.api_socket,
            None => DEFAULT_API_SOCKET.into(),
        })
    }
}

fn daemon_answers(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

fn offline_config(common: &Common) -> Result<Config> {
    let mut c = match &common.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(d) = &common.cache_dir {
        c.cache_dir = d.clone();
    }
    if !c.cache_dir.is_dir() {
        bail!("no daemon answers at {} and cache directory {} does not exist", common.socket()?.display(), c.cache_dir.display());
    }
    Ok(c)
}

/// The lock, or a clear reason why a daemon seems to hold the directory but did not answer.
fn offline_lock(common: &Common, dir: &Path) -> Result<DirLock> {
    crate::cache::check_layout(dir)?;
    match DirLock::try_take(dir)? {
        Some(l) => Ok(l),
        None => bail!(
            "cache directory {} is locked by a running erofsd, but no daemon answers at {}: pass its --api-socket",
            dir.display(),
            common.socket()?.display()
        ),
    }
}

fn offline_listing(common: &Common) -> Result<Listing> {
    let c = offline_config(common)?;
    let _lock = offline_lock(common, &c.cache_dir)?;
    let entries = crate::cache::gc::listing(&c.cache_dir, &Offline::new(&c.cache_dir), false)?;
    Ok(Listing {
        cache_dir: c.cache_dir.clone(),
        daemon: false,
        max_size: c.cache.max_size,
        disk_bytes: entries.iter().map(|e| e.disk_bytes).sum(),
        entries,
    })
}

fn offline_gc(common: &Common, req: GcRequest) -> Result<GcReport> {
    let c = offline_config(common)?;
    let Some(max) = req.max_size.or(c.cache.max_size) else {
        bail!("no size limit: pass --max-size (0 evicts every blob no mount uses) or a --config with [cache] max_size");
    };
    let _lock = offline_lock(common, &c.cache_dir)?;
    crate::cache::gc::run(&c.cache_dir, &Offline::new(&c.cache_dir), max, req.dry_run)
}

fn age(last_use: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let s = (now - last_use).max(0);
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn print_listing(l: &Listing) {
    let mut out = String::new();
    outln!(
        out,
        "cache {} ({}): {} on disk{}",
        l.cache_dir.display(),
        if l.daemon { "daemon running" } else { "no daemon" },
        format_size(l.disk_bytes),
        l.max_size.map(|m| format!(", limit {}", format_size(m))).unwrap_or_default()
    );
    outln!(out, "{:<18} {:>10} {:>10} {:>10} {:>10}  {:<6} name", "kind", "size", "on disk", "ready", "last use", "in use");
    let mut entries = l.entries.clone();
    entries.sort_by_key(|e| std::cmp::Reverse(e.last_use));
    for e in &entries {
        let kind = serde_json::to_value(e.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        outln!(
            out,
            "{:<18} {:>10} {:>10} {:>10} {:>10}  {:<6} {}",
            kind,
            format_size(e.size),
            format_size(e.disk_bytes),
            format_size(e.ready_bytes),
            age(e.last_use),
            if e.in_use { "yes" } else { "no" },
            e.name
        );
    }
    super::print_report(&out);
}

fn print_report(r: &GcReport) {
    let mut out = String::new();
    outln!(
        out,
        "{} {} entr{} ({}); {} -> {} on disk, limit {}; {} in use kept",
        if r.dry_run { "would evict" } else { "evicted" },
        r.evicted.len(),
        if r.evicted.len() == 1 { "y" } else { "ies" },
        format_size(r.evicted.iter().map(|e| e.disk_bytes).sum()),
        format_size(r.disk_bytes_before),
        format_size(r.disk_bytes_after),
        format_size(r.max_size),
        r.in_use
    );
    for e in &r.evicted {
        outln!(out, "  {} {} ({}, last use {})", if r.dry_run { "would evict" } else { "evicted" }, e.name, format_size(e.disk_bytes), age(e.last_use));
    }
    if r.graveyard_reaped > 0 {
        outln!(out, "  removed {} culled object(s) from the cachefiles graveyard", r.graveyard_reaped);
    }
    for e in &r.errors {
        outln!(out, "  error: {e}");
    }
    super::print_report(&out);
}
