//! `erofsd doctor`: which kernel front-ends this machine supports, and what is missing.

use crate::frontend::kernel::{config_option, erofs_registered, kernel_config, kernel_release, ConfigState};
use crate::frontend::{cachefiles, fanotify, Support};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    /// The cache directory the daemon would use (cachefiles is probed there; not tmpfs).
    #[arg(long, default_value = crate::daemon::config::DEFAULT_CACHE_DIR)]
    pub cache_dir: std::path::PathBuf,
}

fn io_uring_state() -> String {
    match io_uring::IoUring::new(2) {
        Ok(_) => "io_uring: available (fills are batched through one ring)".into(),
        Err(e) => format!("io_uring: unavailable ({e}); fills fall back to pwrite (slower, same results)"),
    }
}

/// The one crash the fanotify front-end cannot cover (docs/fanotify.md, "No silent zeros").
pub const FANOTIFY_CGROUP_KILL: &str = "crash safety: `erofsd daemon` runs a supervisor that keeps the group open \
     across a crash of the serving process, or of the supervisor; NOT covered: both killed together (a cgroup kill: \
     `systemctl kill -s KILL erofsd`, an OOM kill of the whole cgroup, `kill -9` of both pids). The group then closes, the kernel \
     allows every read, and unfilled ranges of mounted images read as zeros (the kernel has no fail-closed group)";

pub fn run(args: Args) -> anyhow::Result<()> {
    let release = kernel_release();
    let config = kernel_config();
    let cfg = config.as_ref().map(|(s, _)| s.as_str());
    let mut general = vec![format!("kernel {release}")];
    match &config {
        Some((_, path)) => general.push(format!("kernel config read from {}", path.display())),
        None => general.push("no kernel config readable (/proc/config.gz, /boot/config-*): options are judged by probing".into()),
    }
    general.push(if erofs_registered() { "EROFS: registered".into() } else { "EROFS: not in /proc/filesystems".into() });
    for opt in ["CONFIG_EROFS_FS_ONDEMAND", "CONFIG_EROFS_FS_BACKED_BY_FILE", "CONFIG_CACHEFILES_ONDEMAND", "CONFIG_FANOTIFY_ACCESS_PERMISSIONS"] {
        let st = match config_option(cfg, opt) {
            ConfigState::Yes => "y",
            ConfigState::Module => "m",
            ConfigState::No => "not set",
            ConfigState::Unknown => continue,
        };
        general.push(format!("{opt}: {st}"));
    }
    general.push(io_uring_state());
    let mut fan = fanotify::probe();
    fan.details.push(FANOTIFY_CGROUP_KILL.into());
    let cf = cachefiles::probe::probe_in(&args.cache_dir);
    let driver = snapshotter_driver(fan.usable, cf.usable);
    if args.json {
        let j = serde_json::json!({ "kernel": release, "general": general, "fanotify": fan, "cachefiles": cf, "nydus_snapshotter_fs_driver": driver });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(());
    }
    println!("erofsd doctor");
    for g in &general {
        println!("  {g}");
    }
    let show = |name: &str, s: &Support| {
        println!("{name}: {}", if s.usable { "USABLE" } else { "NOT USABLE" });
        for d in &s.details {
            println!("  - {d}");
        }
    };
    show("fanotify front-end", &fan);
    show("cachefiles front-end", &cf);
    let pick = if fan.usable {
        "fanotify"
    } else if cf.usable {
        "cachefiles"
    } else {
        "none: no front-end can run on this kernel"
    };
    println!("--frontend auto would use: {pick}");
    println!("nydus-snapshotter with erofsd as nydusd: {driver}");
    Ok(())
}

/// Which `fs_driver` nydus-snapshotter should run with erofsd as its `nydusd` (README,
/// "Containers with nydus-snapshotter").
fn snapshotter_driver(fanotify: bool, cachefiles: bool) -> &'static str {
    match (fanotify, cachefiles) {
        (true, _) => "fs_driver = \"fusedev\" (its default): erofsd answers `nydusd fuse` with a kernel EROFS mount through fanotify, no FUSE",
        (false, true) => "fs_driver = \"fscache\": the snapshotter mounts EROFS over cachefiles, erofsd serves it",
        (false, false) => "neither driver can be served on this kernel (fusedev needs the fanotify front-end, fscache the cachefiles one)",
    }
}
