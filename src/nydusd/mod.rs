//! erofsd as a drop-in `nydusd` for nydus-snapshotter, in both of its kernel-facing drivers.
//!
//! `erofsd` run through a link named `nydusd` takes nydusd's command line ([`cli`]) and serves the
//! part of nydusd's HTTP API the snapshotter uses ([`api`]):
//! * `fs_driver = "fscache"` (`nydusd singleton`, this module): the snapshotter asks us to
//!   *bind* an image (`PUT /api/v2/blobs`: bootstrap + its blobs under an fsid and domain) and
//!   then mounts `-t erofs -o fsid=…,domain_id=…` by itself; we answer the kernel's cachefiles
//!   requests for it through the cachefiles front-end ([`crate::frontend::cachefiles`]). The
//!   daemon states are in [`state`], failover over the snapshotter's supervisor socket in
//!   [`failover`], the bind list a successor needs in [`persist`].
//! * `fs_driver = "fusedev"` (`nydusd fuse`, [`fuse`]): we mount kernel EROFS where the
//!   snapshotter expects a FUSE mount, served through the fanotify front-end.
//!
//! Users' guide, the contract and the deviations from nydusd: docs/nydus.md.

pub mod api;
pub mod backend;
pub mod cli;
pub mod failover;
pub mod fuse;
pub mod persist;
pub mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tracing::{info, warn};

use crate::core::fill::Filler;
use crate::core::images::{Image, ImageStore};
use crate::daemon::config::Config;
use crate::frontend::cachefiles::{self, CachefilesFrontend};
use backend::BackendRef;
use cli::Singleton;
use persist::BindRecord;
use state::{State, StateCell};

/// Environment switch for machines without cachefiles on-demand (CI hosts, the host tests):
/// the API is served and images are loaded and checked, but nothing is bound to a kernel cache.
/// `GET /api/v1/daemon` says so in `"erofsd_mode": "api-only"`.
pub const API_ONLY_ENV: &str = "EROFSD_NYDUSD_API_ONLY";

/// The text the snapshotter tolerates when it unbinds something already gone.
pub const NOT_FOUND: &str = "blob_cache: cache entry not found";

/// True when argv[0] names us `nydusd`.
pub fn invoked_as_nydusd() -> bool {
    std::env::args_os()
        .next()
        .map(PathBuf::from)
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .is_some_and(|n| n == "nydusd")
}

/// What `--version` prints and `GET /api/v1/daemon` reports as `version.git_commit`.
///
/// The snapshotter compares the two to decide whether the binary on disk is the one running
/// (mismatch + supervisor → hot upgrade). Built with `EROFSD_GIT_COMMIT` set, that commit;
/// otherwise the crate version plus a hash of our executable, so a replaced binary reads as
/// a different commit, as it should.
pub fn git_commit() -> &'static str {
    static COMMIT: OnceLock<String> = OnceLock::new();
    COMMIT.get_or_init(|| {
        if let Some(c) = option_env!("EROFSD_GIT_COMMIT") {
            return c.to_string();
        }
        use sha2::{Digest, Sha256};
        // Streamed: reading the whole executable (~90 MB with debug info) into memory made the
        // first GET /api/v1/daemon the daemon's peak RSS.
        let exe_hash = std::env::current_exe()
            .and_then(std::fs::File::open)
            .and_then(|mut f| {
                let mut h = Sha256::new();
                std::io::copy(&mut f, &mut h)?;
                Ok(hex::encode(&h.finalize()[..6]))
            })
            .unwrap_or_else(|_| "unknown".into());
        format!("erofsd-{}-{exe_hash}", env!("CARGO_PKG_VERSION"))
    })
}

#[derive(Serialize, Clone)]
pub struct VersionInfo {
    pub package_ver: &'static str,
    pub git_commit: &'static str,
    pub build_time: &'static str,
    pub profile: &'static str,
    pub rustc: &'static str,
}

pub fn version_info() -> VersionInfo {
    VersionInfo {
        package_ver: env!("CARGO_PKG_VERSION"),
        git_commit: git_commit(),
        build_time: option_env!("EROFSD_BUILD_TIME").unwrap_or("unknown"),
        profile: if cfg!(debug_assertions) { "debug" } else { "release" },
        rustc: option_env!("EROFSD_RUSTC_VERSION").unwrap_or("unknown"),
    }
}

/// nydusd's `--version` layout (the snapshotter matches `Git Commit:\s*(.+)`).
pub fn version_text() -> String {
    let v = version_info();
    format!(
        "Version: \t{}\nGit Commit: \t{}\nBuild Time: \t{}\nProfile: \t{}\nRustc: \t\t{}\n",
        v.package_ver, v.git_commit, v.build_time, v.profile, v.rustc
    )
}

/// One bound bootstrap: `<domain>/<fsid>` plus `<domain>/<blob>` for each of its blobs.
#[derive(Clone)]
pub struct Bind {
    pub domain_id: String,
    pub fsid: String,
    pub metadata_path: PathBuf,
    pub image: Arc<Image>,
    /// Where its blobs come from (the entry's backend), kept for a successor.
    pub backend: Option<BackendRef>,
    /// Its registry source, when it has one (credential renewal reaches it through this).
    pub registry: Option<Arc<crate::core::registry::RegistrySource>>,
}

/// Registry sources built while a successor reloads binds, by (domain, fsid).
type Rebuilt = Mutex<BTreeMap<(String, String), Arc<crate::core::registry::RegistrySource>>>;

impl Bind {
    /// The registry key standing in for a mountpoint (the snapshotter mounts, not us).
    fn key(domain: &str, fsid: &str) -> PathBuf {
        PathBuf::from(format!("nydusd-bind:{domain}/{fsid}"))
    }

    fn from_key(key: &Path) -> Option<(String, String)> {
        let s = key.to_str()?.strip_prefix("nydusd-bind:")?;
        let (d, f) = s.split_once('/')?;
        Some((d.into(), f.into()))
    }
}

pub struct NydusDaemon {
    pub opts: Singleton,
    pub config: Config,
    pub filler: Filler,
    pub images: ImageStore,
    pub state: StateCell,
    pub api_only: bool,
    frontend: Mutex<Option<Arc<CachefilesFrontend>>>,
    binds: Mutex<BTreeMap<(String, String), Bind>>,
    /// Serialises bind/unbind/takeover (each is a read-modify-write of the front-end state).
    ops: tokio::sync::Mutex<()>,
    pub exit: tokio::sync::Notify,
}

impl NydusDaemon {
    fn new(opts: Singleton, config: Config, filler: Filler, api_only: bool) -> Arc<NydusDaemon> {
        Arc::new(NydusDaemon {
            opts,
            config,
            filler,
            images: ImageStore::new(),
            state: StateCell::default(),
            api_only,
            frontend: Mutex::new(None),
            binds: Mutex::new(BTreeMap::new()),
            ops: tokio::sync::Mutex::new(()),
            exit: tokio::sync::Notify::new(),
        })
    }

    fn frontend(&self) -> Option<Arc<CachefilesFrontend>> {
        self.frontend.lock().expect("frontend").clone()
    }

    /// Installs a started front-end and adopts the binds it recovered (failover), with their
    /// backends from the saved `records`.
    fn set_frontend(&self, fe: Arc<CachefilesFrontend>, records: &[BindRecord], rebuilt: Rebuilt) {
        use crate::frontend::Frontend;
        let mut rebuilt = rebuilt.into_inner().expect("rebuilt sources");
        let mut binds = self.binds.lock().expect("binds");
        for (info, image) in fe.recovered() {
            if let Some((d, f)) = Bind::from_key(&info.mountpoint) {
                let backend = records.iter().find(|r| r.domain_id == d && r.id == f).and_then(|r| r.backend.clone());
                let registry = rebuilt.remove(&(d.clone(), f.clone()));
                binds.insert((d.clone(), f.clone()), Bind { domain_id: d, fsid: f, metadata_path: info.image.clone(), image, backend, registry });
            }
        }
        *self.frontend.lock().expect("frontend") = Some(fe);
    }

    fn state_path(&self) -> PathBuf {
        persist::path(&self.config.cache_dir)
    }

    /// Writes the bind list with backends for a successor. Not while INIT: the predecessor's
    /// list is still to be taken over.
    fn persist(&self) -> Result<()> {
        if self.state.get() == State::Init {
            return Ok(());
        }
        let records: Vec<BindRecord> = self
            .binds()
            .into_iter()
            .map(|b| BindRecord { domain_id: b.domain_id, id: b.fsid, metadata_path: b.metadata_path, image_id: b.image.id.clone(), backend: b.backend })
            .collect();
        persist::save(&self.state_path(), &records)
    }

    /// Reloads a saved bind's image through its saved backend (`blobs/` beside the bootstrap
    /// when it has none), refusing a bootstrap that changed since it was bound.
    fn reload(images: &ImageStore, path: &Path, image_id: &str, rec: Option<&BindRecord>, rebuilt: &Rebuilt) -> Result<Arc<Image>> {
        let built = match rec.and_then(|r| r.backend.as_ref()) {
            Some(b) => b.build(path).with_context(|| format!("the saved {} backend", b.describe()))?,
            None => None,
        };
        let image = match &built {
            Some(b) => images.load(path, b.source.clone())?,
            None => images.load_dir(path)?,
        };
        if image.id != image_id {
            bail!("bootstrap {} changed since it was bound", path.display());
        }
        if let (Some(r), Some(reg)) = (rec, built.and_then(|b| b.registry)) {
            rebuilt.lock().expect("rebuilt sources").insert((r.domain_id.clone(), r.id.clone()), reg);
        }
        Ok(image)
    }

    /// `PUT /api/v1/config?id=/<snapshot id>` with `registry_auth`: the snapshotter renewed a
    /// credential. Every bind of that snapshot (fsid = sha256("nydus-snapshot-" + id), or the
    /// fsid itself) gets it: its live registry source, and its saved backend. Returns how many.
    pub async fn renew_auth(&self, id: &str, auth: &str) -> Result<usize> {
        let creds = backend::parse_auth(auth)?;
        let _op = self.ops.lock().await;
        let id = id.trim_start_matches('/');
        let fsid = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(format!("nydus-snapshot-{id}")))
        };
        let mut n = 0;
        for b in self.binds.lock().expect("binds").values_mut().filter(|b| b.fsid == fsid || b.fsid == id) {
            let Some(backend) = b.backend.as_mut().filter(|x| x.kind == "registry") else { continue };
            if let Some(obj) = backend.config.as_object_mut() {
                obj.insert("auth".into(), auth.into());
            } else {
                backend.config = serde_json::json!({"auth": auth});
            }
            if let Some(reg) = &b.registry {
                reg.set_credentials(creds.clone());
            }
            n += 1;
        }
        if n > 0 {
            self.persist().context("saving the renewed credentials")?;
        }
        Ok(n)
    }

    pub fn binds(&self) -> Vec<Bind> {
        self.binds.lock().expect("binds").values().cloned().collect()
    }

    /// `PUT /api/v2/blobs` with a bootstrap entry.
    /// `config` is the entry's `config` (or `config_v2`) object: its backend names the blob source.
    pub async fn bind(&self, fsid: &str, domain_id: &str, metadata_path: &Path, config: &serde_json::Value) -> Result<()> {
        let _op = self.ops.lock().await;
        cachefiles::registry::check_name("id", fsid)?;
        cachefiles::registry::check_name("domain_id", domain_id)?;
        let backend = BackendRef::from_entry(config);
        let built = match &backend {
            Some(b) => b.build(metadata_path)?,
            None => None,
        };
        let image = match &built {
            Some(b) => self.images.load(metadata_path, b.source.clone()),
            None => self.images.load_dir(metadata_path),
        }
        .with_context(|| format!("loading bootstrap {}", metadata_path.display()))?;
        let k = (domain_id.to_string(), fsid.to_string());
        if let Some(b) = self.binds.lock().expect("binds").get(&k) {
            // The snapshotter may repeat a bind (retry after a timeout): same image, no-op.
            if b.image.id == image.id {
                return Ok(());
            }
            bail!("blob_cache: entry {domain_id}/{fsid} already exists with a different bootstrap");
        }
        if !self.api_only {
            let Some(fe) = self.frontend() else {
                bail!("daemon is {}: no cachefiles device yet (takeover first)", self.state.get().name());
            };
            fe.bind(Bind::key(domain_id, fsid), fsid, Some(domain_id), image.clone(), metadata_path.to_path_buf())?;
        }
        info!(
            "bound {domain_id}/{fsid} ({} blob(s)) from {}; blobs from {}",
            image.blobs.len(),
            metadata_path.display(),
            image.blobs.first().map(|b| b.source.describe()).unwrap_or_else(|| "nowhere (no blobs)".into())
        );
        self.binds.lock().expect("binds").insert(
            k.clone(),
            Bind {
                domain_id: domain_id.into(),
                fsid: fsid.into(),
                metadata_path: metadata_path.into(),
                image,
                backend,
                registry: built.and_then(|b| b.registry),
            },
        );
        if let Err(e) = self.persist() {
            // A bind a successor could not re-adopt with its source is refused now.
            self.binds.lock().expect("binds").remove(&k);
            if let Some(fe) = self.frontend() {
                let _ = fe.unbind(&Bind::key(domain_id, fsid));
            }
            return Err(e.context("saving the bind list"));
        }
        Ok(())
    }

    /// `DELETE /api/v2/blobs?domain_id=D[&blob_id=B]`: drops one bind, or every bind in D.
    /// Objects the kernel already opened stay served (the snapshotter unbinds before umount).
    pub async fn unbind(&self, domain_id: &str, fsid: Option<&str>) -> Result<usize> {
        let _op = self.ops.lock().await;
        let gone: Vec<Bind> = {
            let binds = self.binds.lock().expect("binds");
            binds.values().filter(|b| b.domain_id == domain_id && fsid.is_none_or(|f| b.fsid == f)).cloned().collect()
        };
        if gone.is_empty() {
            bail!("{NOT_FOUND}: {domain_id}/{}", fsid.unwrap_or("*"));
        }
        for b in &gone {
            if let Some(fe) = self.frontend() {
                fe.unbind(&Bind::key(&b.domain_id, &b.fsid))?;
            }
            self.binds.lock().expect("binds").remove(&(b.domain_id.clone(), b.fsid.clone()));
            info!("unbound {}/{}", b.domain_id, b.fsid);
        }
        if let Err(e) = self.persist() {
            warn!("saving the bind list after unbind: {e:#}");
        }
        Ok(gone.len())
    }

    /// `DELETE /api/v2/blobs?blob_id=B`: culls B's cache objects in every domain (the
    /// bootstrap's after its umount, or a layer blob at the snapshotter's cache GC). Objects in
    /// use are kept (the kernel refuses the cull); that is not an error.
    pub async fn cull(&self, blob_id: &str) -> Result<usize> {
        let Some(fe) = self.frontend() else { return Ok(0) };
        let cache_dir = self.config.cache_dir.clone();
        let id = blob_id.to_string();
        tokio::task::spawn_blocking(move || -> Result<usize> {
            let ev = Evictor(fe.as_ref());
            let entries = crate::cache::gc::listing(&cache_dir, &ev, false)?;
            let mut culled = 0;
            for e in entries.iter().filter(|e| e.blob_id() == Some(id.as_str()) || e.name.ends_with(&id)) {
                match crate::frontend::Frontend::cache_evict(fe.as_ref(), &cache_dir, e) {
                    Ok(true) => culled += 1,
                    Ok(false) => info!("cull {}: in use, kept", e.path.display()),
                    Err(err) => warn!("cull {}: {err:#}", e.path.display()),
                }
            }
            Ok(culled)
        })
        .await?
    }

    /// State bytes for `sendfd`.
    fn failover_state(&self) -> Vec<u8> {
        let binds: Vec<serde_json::Value> = self
            .binds()
            .iter()
            .map(|b| serde_json::json!({"domain_id": b.domain_id, "id": b.fsid, "metadata_path": b.metadata_path, "image_id": b.image.id}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"erofsd_failover": 1, "binds": binds})).unwrap_or_default()
    }

    /// `PUT /api/v1/daemon/fuse/sendfd`.
    pub async fn sendfd(&self) -> Result<()> {
        let Some(sup) = self.opts.common.supervisor.clone() else { bail!("no --supervisor socket was given") };
        let state = self.failover_state();
        let fe = self.frontend();
        tokio::task::spawn_blocking(move || -> Result<()> {
            match fe {
                Some(fe) => failover::send(&sup, &state, fe.device_fd()),
                // api-only: a stand-in fd so the supervisor protocol is still exercised.
                None => {
                    let null = std::fs::File::open("/dev/null")?;
                    failover::send(&sup, &state, std::os::fd::AsFd::as_fd(&null))
                }
            }
        })
        .await?
    }

    /// `PUT /api/v1/daemon/fuse/takeover`: take the device back, reload the binds, READY.
    pub async fn takeover(&self) -> Result<()> {
        let _op = self.ops.lock().await;
        if self.state.get() != State::Init {
            bail!("takeover in state {}: only a daemon started for failover/upgrade (INIT) takes over", self.state.get().name());
        }
        let Some(sup) = self.opts.common.supervisor.clone() else { bail!("no --supervisor socket was given") };
        let (state, fd) = tokio::task::spawn_blocking(move || failover::receive(&sup)).await??;
        info!("takeover: {} bytes of state and the device fd from the supervisor", state.len());
        // The predecessor's backends (a missing or unreadable list: binds fall back to blobs/
        // beside their bootstraps, and say so).
        let records = persist::load::<BindRecord>(&self.state_path()).unwrap_or_else(|e| {
            warn!("takeover: {e:#}; binds are re-adopted without their backends");
            Vec::new()
        });
        if !self.api_only {
            crate::daemon::supervisor::fd_store().lock().expect("fd store").inherit(cachefiles::FD_NAME, fd);
            // Sees the inherited device: reloads the state file's binds through their saved
            // backends, then writes `restore`.
            let rebuilt = Rebuilt::default();
            let loader = |s: &cachefiles::registry::Saved, images: &ImageStore| -> Result<Arc<Image>> {
                let rec = Bind::from_key(&s.mountpoint).and_then(|(d, f)| records.iter().find(|r| r.domain_id == d && r.id == f));
                Self::reload(images, &s.image, &s.image_id, rec, &rebuilt)
            };
            let fe = cachefiles::start_cachefiles_with(&self.config, self.filler.clone(), Some(&loader))?;
            self.set_frontend(fe, &records, rebuilt);
        } else if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&state) {
            // api-only: the bytes name the binds; the saved list adds their backends.
            for b in v["binds"].as_array().into_iter().flatten() {
                let (Some(d), Some(f), Some(p), Some(id)) =
                    (b["domain_id"].as_str(), b["id"].as_str(), b["metadata_path"].as_str(), b["image_id"].as_str())
                else {
                    continue;
                };
                let rec = records.iter().find(|r| r.domain_id == d && r.id == f);
                let rebuilt = Rebuilt::default();
                match Self::reload(&self.images, Path::new(p), id, rec, &rebuilt) {
                    Ok(image) => {
                        let registry = rebuilt.into_inner().expect("rebuilt sources").into_values().next();
                        self.binds.lock().expect("binds").insert(
                            (d.into(), f.into()),
                            Bind {
                                domain_id: d.into(),
                                fsid: f.into(),
                                metadata_path: p.into(),
                                image,
                                backend: rec.and_then(|r| r.backend.clone()),
                                registry,
                            },
                        );
                    }
                    Err(e) => warn!("takeover: cannot re-adopt {d}/{f}: {e:#}"),
                }
            }
        }
        self.state.set(State::Ready);
        // Serving the re-adopted binds matters more than the list: a failure is only logged.
        if let Err(e) = self.persist() {
            warn!("takeover: saving the re-adopted bind list: {e:#} (a further failover would lose their backends)");
        }
        info!("takeover: {} bind(s) re-adopted", self.binds.lock().expect("binds").len());
        Ok(())
    }
}

struct Evictor<'a>(&'a CachefilesFrontend);

impl crate::cache::gc::Evictor for Evictor<'_> {
    fn in_use(&self, _e: &crate::cache::CacheEntry) -> bool {
        // cull decides atomically (EBUSY); listing need not ask.
        false
    }
    fn evict(&self, e: &crate::cache::CacheEntry) -> Result<bool> {
        crate::frontend::Frontend::cache_evict(self.0, Path::new(""), e)
    }
}

/// Entry point when invoked as `nydusd`.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let inv = match cli::parse(&args) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("nydusd (erofsd): error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match inv {
        cli::Invocation::Version => {
            print!("{}", version_text());
            return ExitCode::SUCCESS;
        }
        cli::Invocation::Help => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        cli::Invocation::Singleton(s) => match init_log(s.common.log_level.as_deref(), s.common.log_file.as_deref()) {
            Ok(()) => run(s),
            Err(e) => Err(e),
        },
        cli::Invocation::Fuse(f) => match init_log(f.common.log_level.as_deref(), f.common.log_file.as_deref()) {
            Ok(()) => run_fuse(f),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nydusd (erofsd): error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fuse mode runs supervised, like `erofsd daemon`: the process the snapshotter starts holds
/// the kernel channels and the API connections, its child serves ([`fuse`]).
fn run_fuse(opts: cli::Fuse) -> Result<()> {
    crate::daemon::supervisor::supervise_unless_worker(|_| true)?;
    fuse::run(opts)
}

fn init_log(level: Option<&str>, file: Option<&Path>) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::new(cli::log_filter(level));
    match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening log file {}", path.display()))?;
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(Mutex::new(file)).with_ansi(false).init();
        }
        None => tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init(),
    }
    Ok(())
}

fn run(opts: Singleton) -> Result<()> {
    for f in &opts.common.ignored {
        warn!("nydusd flag ignored: {f}");
    }
    if opts.fscache_tag.is_some() {
        warn!("--fscache-tag ignored: the cache tag is {}", cachefiles::CACHE_TAG);
    }
    let api_only = std::env::var_os(API_ONLY_ENV).is_some_and(|v| v == "1");
    let config = Config {
        frontend: crate::frontend::FrontendKind::Cachefiles,
        cache_dir: opts.fscache.clone(),
        api_socket: opts.common.apisock.clone(),
        ..Config::default()
    };
    // The cache-directory lock; a hot-upgrade successor runs beside its predecessor (which
    // holds the lock until `exit`), so it goes without.
    let _cache_lock = if api_only || opts.common.upgrade { None } else { Some(crate::cache::open_for_daemon(&config.cache_dir)?) };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("nydusd").build()?;
    rt.block_on(async move {
        let filler = crate::daemon::make_filler(&config);
        let daemon = NydusDaemon::new(opts, config, filler, api_only);
        if api_only {
            warn!("{API_ONLY_ENV}=1: API-ONLY MODE, nothing is bound to /dev/cachefiles; mounts will not be served");
            daemon.state.set(if daemon.opts.common.upgrade { State::Init } else { State::Running });
            daemon.persist()?;
        } else if daemon.opts.common.upgrade {
            // Hot upgrade: the old daemon still holds the device; wait for takeover.
            info!("--upgrade: waiting for takeover (INIT)");
            daemon.state.set(State::Init);
        } else {
            match cachefiles::start_cachefiles(&daemon.config, daemon.filler.clone()) {
                Ok(fe) => {
                    // A fresh device: nothing was recovered, the old bind list is void.
                    daemon.set_frontend(fe, &[], Rebuilt::default());
                    daemon.state.set(State::Running);
                    daemon.persist()?;
                }
                // Failover start: the dead daemon's device is still open (the supervisor holds
                // it), so the device cannot be bound again; the snapshotter will send takeover.
                Err(e) if daemon.opts.common.supervisor.is_some() => {
                    warn!("cachefiles: {e:#}; waiting for takeover from the supervisor (INIT)");
                    daemon.state.set(State::Init);
                }
                Err(e) => return Err(e),
            }
        }
        let listener = crate::daemon::api::bind(&daemon.config.api_socket)?;
        info!(
            "nydusd (erofsd {}) {} on {}; cache {}",
            env!("CARGO_PKG_VERSION"),
            daemon.state.get().name(),
            daemon.config.api_socket.display(),
            daemon.config.cache_dir.display()
        );
        let api = tokio::spawn(api::serve(listener, daemon.clone()));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: exiting"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: exiting"),
            _ = daemon.exit.notified() => info!("exit requested over the API"),
        }
        api.abort();
        // No front-end shutdown: the snapshotter owns the mounts, and on `exit` (hot upgrade)
        // a successor already serves the device and the state file we would otherwise rewrite.
        let _ = std::fs::remove_file(&daemon.config.api_socket);
        Ok(())
    })
}
