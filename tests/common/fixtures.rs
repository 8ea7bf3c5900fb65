//! Test fixtures, built and cached outside the repo by `scripts/make-fixtures.sh`.

use std::path::PathBuf;
use std::process::Command;

use super::env::repo_root;

/// Directory of fixture `name` (alltypes, alltypes-compat, rootfs, oci, badtars), building it
/// first if the cache does not hold the current version. Building `rootfs` takes minutes.
pub fn fixture(name: &str) -> PathBuf {
    let script = repo_root().join("scripts/make-fixtures.sh");
    let out = Command::new(&script)
        .arg(name)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(out.status.success(), "make-fixtures.sh {name} failed ({})", out.status);
    let dir = String::from_utf8(out.stdout).expect("fixture path is UTF-8");
    let dir = PathBuf::from(dir.trim().lines().last().expect("make-fixtures.sh printed a path"));
    assert!(dir.join(".done").exists(), "fixture {name} at {} is incomplete", dir.display());
    dir
}

/// The nydus RAFS v6 fixture images, in the repository (tests/fixtures/nydus, see its README).
pub fn nydus() -> PathBuf {
    let dir = repo_root().join("tests/fixtures/nydus");
    assert!(dir.join("tree.tar.gz").exists(), "nydus fixtures missing at {}", dir.display());
    dir
}

/// Scratch directory for one test: on the same disk as the fixtures (not tmpfs: images of the
/// rootfs are hundreds of MB), removed when dropped. EROFSD_SCRATCH overrides the base.
pub fn scratch(test: &str) -> tempfile::TempDir {
    let base = match std::env::var_os("EROFSD_SCRATCH") {
        Some(b) => PathBuf::from(b),
        None => PathBuf::from(std::env::var_os("EROFSD_FIXTURE_CACHE").unwrap_or_else(|| "/var/cache/erofsd-test".into()))
            .join("scratch"),
    };
    std::fs::create_dir_all(&base).expect("create scratch base");
    tempfile::Builder::new().prefix(&format!("{test}-")).tempdir_in(&base).expect("scratch dir")
}
