//! `erofsd`: one binary, one subcommand per job.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "erofsd", version, about = "Lazy-loading EROFS images served by the kernel")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `erofsd=debug`.
    #[arg(long, global = true, default_value = "info", env = "EROFSD_LOG")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image (bootstrap + blobs) from a directory or OCI layer tars.
    Build(erofsd::cmd::build::Args),
    /// Convert an OCI image (registry or oci:DIR) into an erofsd image, pushed or written.
    Convert(erofsd::cmd::convert::Args),
    /// Print an image's superblock, blobs and tree.
    Inspect(erofsd::cmd::inspect::Args),
    /// Verify an image's every structure and, with blobs, every group.
    Check(erofsd::cmd::check::Args),
    /// Serve images to the kernel through cachefiles or fanotify.
    Daemon(erofsd::cmd::daemon::Args),
    /// Ask the running daemon to mount an image.
    Mount(erofsd::cmd::mount::MountArgs),
    /// Ask the running daemon to unmount an image it serves.
    Umount(erofsd::cmd::mount::UmountArgs),
    /// Show the running daemon's state, mounts or metrics.
    Status(erofsd::cmd::status::Args),
    /// Which kernel front-ends this machine supports, and what is missing.
    Doctor(erofsd::cmd::doctor::Args),
    /// Access traces the daemon records: export one as a file list for `build --prefetch-list`.
    Trace(erofsd::cmd::trace::Args),
    /// List the blob cache or evict from it (`erofsd cache ls`, `erofsd cache gc`).
    Cache(erofsd::cmd::cache::Args),
}

fn main() -> ExitCode {
    // A `nydusd` link: nydus-snapshotter's command line and API (src/nydusd, docs/nydus.md).
    if erofsd::nydusd::invoked_as_nydusd() {
        return erofsd::nydusd::main();
    }
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&cli.log))
        .with_writer(std::io::stderr)
        // Colours only on a terminal: daemon logs usually go to files and journals.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Build(args) => erofsd::cmd::build::run(args),
        Command::Convert(args) => erofsd::cmd::convert::run(args),
        Command::Inspect(args) => erofsd::cmd::inspect::run(args),
        Command::Check(args) => erofsd::cmd::check::run(args),
        Command::Daemon(args) => erofsd::cmd::daemon::run(args),
        Command::Mount(args) => erofsd::cmd::mount::mount(args),
        Command::Umount(args) => erofsd::cmd::mount::umount(args),
        Command::Status(args) => erofsd::cmd::status::run(args),
        Command::Doctor(args) => erofsd::cmd::doctor::run(args),
        Command::Trace(args) => erofsd::cmd::trace::run(args),
        Command::Cache(args) => erofsd::cmd::cache::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("erofsd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

