//! scripts/install.sh into a staging root: install, upgrade and uninstall put and remove what
//! they should, keep an admin's changed config, and never touch the cache and state directory.

mod common;

use std::path::Path;

use common::{cli, snapshot};

fn install_sh(args: &[&str], root: &Path) -> std::process::Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh");
    let mut all: Vec<std::ffi::OsString> = args.iter().map(|a| a.into()).collect();
    all.push("--destdir".into());
    all.push(root.into());
    cli::run_ok(&script, all)
}

#[test]
fn install_upgrade_uninstall_keep_config_changes_and_never_touch_the_cache() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let bin = cli::erofsd_bin();
    let bin = bin.to_str().unwrap();

    // A cache with data and state, as a running system would have.
    let cache = r.join("var/cache/erofsd");
    for (p, data) in [("blobs/aa", &b"cached blob bytes"[..]), ("state/cachefiles-mounts.json", b"[]"), ("layout-version", b"1\n")] {
        std::fs::create_dir_all(cache.join(p).parent().unwrap()).unwrap();
        std::fs::write(cache.join(p), data).unwrap();
    }
    let cache_before = snapshot::snapshot(&cache, None);

    install_sh(&["install", "--bin", bin], r);
    let installed = r.join("usr/local/bin/erofsd");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(bin).unwrap());
    assert_eq!(std::fs::read_link(r.join("usr/local/lib/erofsd/nydusd")).unwrap(), Path::new("../../bin/erofsd"));
    assert!(r.join("usr/local/lib/erofsd/nydusd").exists(), "the nydusd link resolves");
    let unit = std::fs::read_to_string(r.join("etc/systemd/system/erofsd.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/local/bin/erofsd daemon --config /etc/erofsd/config.toml"), "{unit}");
    assert!(unit.contains("Before=containerd.service"));
    // The supervisor holds the kernel channels: no unproven FD store, no opt-out.
    let directives: Vec<&str> = unit.lines().filter(|l| !l.starts_with('#')).collect();
    assert!(!directives.iter().any(|l| l.starts_with("FileDescriptorStoreMax=") || l.contains("--unsafe")), "{unit}");
    assert!(!unit.contains('@'), "every placeholder substituted:\n{unit}");
    let conf = r.join("etc/erofsd/config.toml");
    // The shipped config is valid for the daemon (every key commented: the defaults).
    let parsed = erofsd::daemon::config::Config::from_file(&conf).unwrap();
    assert_eq!(parsed.cache_dir, Path::new(erofsd::daemon::config::DEFAULT_CACHE_DIR));
    assert!(r.join("usr/local/share/doc/erofsd/docs/design.md").is_file());

    // Upgrade with an admin-changed config: the change is kept, the new default goes beside it.
    let mine = "frontend = \"fanotify\"\n";
    std::fs::write(&conf, mine).unwrap();
    install_sh(&["install", "--bin", bin], r);
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), mine);
    assert!(r.join("etc/erofsd/config.toml.new").is_file());

    // Uninstall, even with --purge: binary, link, unit and docs go; the changed config stays.
    install_sh(&["uninstall", "--purge"], r);
    assert!(!installed.exists() && !r.join("usr/local/lib/erofsd/nydusd").exists());
    assert!(!r.join("etc/systemd/system/erofsd.service").exists());
    assert!(!r.join("usr/local/share/doc/erofsd").exists());
    assert_eq!(std::fs::read_to_string(&conf).unwrap(), mine);

    // An unchanged config is removed by --purge only.
    install_sh(&["install", "--bin", bin], r);
    std::fs::remove_file(&conf).unwrap();
    install_sh(&["install", "--bin", bin], r);
    install_sh(&["uninstall"], r);
    assert!(conf.is_file(), "plain uninstall keeps the config");
    install_sh(&["uninstall", "--purge"], r);
    assert!(!conf.exists(), "purge removes an unchanged config");

    // Through all of it, the cache and state were never touched.
    let d = snapshot::diff(&cache_before, &snapshot::snapshot(&cache, None));
    assert!(d.is_empty(), "install/uninstall touched the cache: {d:?}");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let test = "the_unit_passes_systemd_analyze_verify";
    if !common::env::require_tools(test, &["systemd-analyze"]) {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    install_sh(&["install", "--bin", cli::erofsd_bin().to_str().unwrap()], root.path());
    let unit = root.path().join("etc/systemd/system/erofsd.service");
    // verify checks ExecStart's binary exists: point it at the staged one.
    let text = std::fs::read_to_string(&unit).unwrap().replace("/usr/local/bin/erofsd", cli::erofsd_bin().to_str().unwrap());
    let check = root.path().join("erofsd.service");
    std::fs::write(&check, text).unwrap();
    let out = cli::run("systemd-analyze", ["verify".as_ref(), check.as_os_str()]);
    let err = String::from_utf8_lossy(&out.stderr);
    // Only complaints about this unit count (the machine's other units may be odd).
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("erofsd.service")).collect();
    assert!(out.status.success() || ours.is_empty(), "systemd-analyze verify:\n{err}");
    assert!(ours.is_empty(), "systemd-analyze verify complains:\n{}", ours.join("\n"));
}
