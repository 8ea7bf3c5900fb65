//! `erofsd daemon`: serve images to the kernel.

use std::path::PathBuf;

use anyhow::Result;

use crate::daemon::config::Config;
use crate::daemon::supervisor;
use crate::daemon::{make_filler, serve, Daemon};
use crate::frontend::{self, FrontendKind};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// TOML file with daemon settings; flags given here win over it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kernel front-end.
    #[arg(long, value_enum)]
    pub frontend: Option<FrontendKind>,
    /// Directory for cache objects and state [default: /var/cache/erofsd].
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Control socket [default: /run/erofsd/api.sock].
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// Cache size limit on disk, e.g. `20GiB` (`[cache] max_size`); least recently used
    /// blobs no mount uses are evicted above it.
    #[arg(long, value_parser = crate::cache::size::parse_size)]
    pub cache_max_size: Option<u64>,
    /// Accepted for old command lines: supervision is the default.
    #[arg(long, hide = true)]
    pub supervise: bool,
    /// Run without the supervisor that holds the kernel channels (/dev/cachefiles, the fanotify
    /// group) across a crash. UNSAFE on the fanotify front-end: if this process dies, the
    /// kernel lets every pending and later read through and unfilled ranges of mounted images
    /// read as zeros, with no error. With cachefiles, a crash fails every mount until remounted.
    #[arg(long)]
    pub unsafe_no_supervisor: bool,
}

/// The opt-out's warning, logged at start by the process that serves.
pub const UNSUPERVISED_WARNING: &str = "--unsafe-no-supervisor: NO SUPERVISOR holds the kernel channels. If this process \
     dies (SIGKILL, OOM kill, panic), the fanotify front-end FAILS OPEN: the kernel allows every pending and later read \
     and unfilled ranges of mounted images read as ZEROS, with no error (with cachefiles, every mount fails until \
     remounted). Do not use this for anything but tests and debugging.";

pub fn resolve_config(args: &Args) -> Result<Config> {
    let mut config = match &args.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(f) = args.frontend {
        config.frontend = f;
    }
    if let Some(d) = &args.cache_dir {
        config.cache_dir = d.clone();
    }
    if let Some(s) = &args.api_socket {
        config.api_socket = s.clone();
    }
    if let Some(m) = args.cache_max_size {
        config.cache.max_size = Some(m);
    }
    Ok(config)
}

/// Unless opted out, this process becomes the supervisor and runs the daemon as its child
/// (which finds the supervisor's socket in its environment and serves). A worker that starts a
/// new supervisor to adopt it (its own died) runs the same command line, so it supervises too.
pub fn run(args: Args) -> Result<()> {
    if args.unsafe_no_supervisor {
        tracing::warn!("{UNSUPERVISED_WARNING}");
    } else {
        supervisor::supervise_unless_worker(|a| a != "--supervise")?;
    }
    raise_nofile_limit();
    let config = resolve_config(&args)?;
    // Layout check (a newer layout is refused, never wiped) and the directory lock, held for
    // the daemon's lifetime so an offline `erofsd cache gc` cannot race it.
    let _cache_lock = crate::cache::open_for_daemon(&config.cache_dir)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("erofsd").build()?;
    rt.block_on(async move {
        // Before the front-end starts: its failover path may reload images pulled by reference.
        crate::core::images::set_registry_settings(config.registry.clone());
        let filler = make_filler(&config);
        let fe = frontend::start(config.frontend, &config, filler.clone())?;
        serve(Daemon::new(config, filler, fe)).await
    })
}

/// One fd per open cache object (cachefiles) or watched blob: lift the soft limit to the hard one.
fn raise_nofile_limit() {
    // SAFETY: get/setrlimit on a valid struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}
