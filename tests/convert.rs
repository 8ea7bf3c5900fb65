//! `erofsd convert` end to end with real tools: Debian's `docker-registry` on loopback (plain
//! HTTP, htpasswd basic auth, bearer tokens from the test token server), images made by
//! `umoci` and pushed by `skopeo`, and the converted image pulled back with
//! `RegistrySource::download_blob`, checked by `erofsd check` and mounted by the host kernel.
//!
//! * The OCI fixture (debootstrap rootfs + two layers of whiteouts/opaque dirs, see
//!   scripts/fixtures/oci.sh) converts to a registry and to a layout with the same manifest;
//!   the manifest follows the contract in docs/registry.md; skopeo inspects and copies it; the
//!   pulled-back image mounts and equals `umoci unpack`.
//! * Sources pushed by skopeo (OCI and docker v2s2, by tag and by digest) convert between
//!   repositories of registries needing basic auth or bearer tokens; big blobs go up in chunks.
//! * Hostile sources (a layer whose digest does not match, a manifest naming a missing blob,
//!   a `../` tar) fail with clear errors and write nothing outside the work and target dirs.
//! * A push interrupted after some blobs is completed by running the command again.
//! * HTTPS registries need `--ca-file` (or `--insecure`) for a test CA.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::compare::{assert_trees_equal, Mtime, Options};
use common::registry::*;
use common::{cli, devtable, env, fixtures, mount::Mount, snapshot};
use erofsd::core::registry::{Credentials, RegistryConfig, RegistrySource};
use erofsd::oci::manifest::{self as m, find_erofsd_layers, BootstrapFormat};
use erofsd::oci::package::extract_bootstrap_file;
use sha2::{Digest, Sha256};

fn run(args: &[&str]) -> Output {
    let out = std::process::Command::new(args[0]).args(&args[1..]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

/// `erofsd convert ARGS... -q`, which must succeed; returns stdout.
fn convert_ok(args: &[&str]) -> String {
    convert_full(args).0
}

/// `erofsd convert ARGS... -q`, which must succeed; returns stdout and stderr.
fn convert_full(args: &[&str]) -> (String, String) {
    let mut a = vec!["convert"];
    a.extend_from_slice(args);
    a.push("-q");
    let t0 = std::time::Instant::now();
    let out = cli::run_ok(cli::erofsd_bin(), &a);
    let s = String::from_utf8(out.stdout).unwrap();
    eprintln!("convert {args:?} took {:.1?}:\n{s}", t0.elapsed());
    (s, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `erofsd convert` that must fail with exit 1 (not a panic, not a hang); returns stderr.
fn convert_err(args: &[&str]) -> String {
    let bin = cli::erofsd_bin();
    let mut a: Vec<&str> = vec!["300", bin.to_str().unwrap(), "convert"];
    a.extend_from_slice(args);
    a.push("-q");
    let out = std::process::Command::new("timeout").args(&a).stdin(std::process::Stdio::null()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_ne!(out.status.code(), Some(124), "convert {args:?} hung");
    assert_eq!(out.status.code(), Some(1), "convert {args:?} should fail with exit 1: {err}");
    assert!(!err.contains("panicked"), "convert {args:?} panicked: {err}");
    eprintln!("convert {args:?} failed as expected: {}", err.trim());
    err
}

/// The value after `key` on the summary line that starts with it.
fn summary_field<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines().find_map(|l| l.strip_prefix(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
}

/// The manifest digest from the summary's last line: `manifest sha256:… (N bytes) -> target`.
fn manifest_digest(out: &str) -> String {
    summary_field(out, "manifest ").split_whitespace().next().unwrap().to_string()
}

/// (written, present) from `blobs written: W (B bytes), already present: P`.
fn written_present(out: &str) -> (usize, usize) {
    let l = summary_field(out, "blobs written: ");
    let w = l.split_whitespace().next().unwrap().parse().unwrap();
    let p = l.rsplit(' ').next().unwrap().parse().unwrap();
    (w, p)
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Checks a converted manifest against the contract (docs/registry.md); returns it parsed.
fn check_contract(manifest: &[u8], source_text: &str, source_digest: &str) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], m::OCI_MANIFEST);
    assert_eq!(v["config"]["mediaType"], m::OCI_CONFIG);
    assert_eq!(v["annotations"][m::ANN_SOURCE_REFERENCE], source_text);
    assert_eq!(v["annotations"][m::ANN_SOURCE_DIGEST], source_digest);
    let layers = v["layers"].as_array().unwrap();
    assert!(layers.len() >= 2, "at least one blob and the bootstrap: {layers:?}");
    let (boot, blobs) = layers.split_last().unwrap();
    for b in blobs {
        assert_eq!(b["mediaType"], m::NYDUS_BLOB);
        assert_eq!(b["annotations"][m::ANN_NYDUS_BLOB], "true");
        assert!(b["annotations"].get(m::ANN_NYDUS_BOOTSTRAP).is_none());
    }
    assert_eq!(boot["mediaType"], m::OCI_LAYER_GZIP);
    assert_eq!(boot["annotations"][m::ANN_NYDUS_BOOTSTRAP], "true");
    assert_eq!(boot["annotations"][m::ANN_NYDUS_FS_VERSION], "6");
    assert_eq!(boot["annotations"][m::ANN_BOOTSTRAP_FORMAT], "erofsd-v1");
    let found = find_erofsd_layers(manifest).unwrap();
    assert_eq!(found.format, BootstrapFormat::ErofsdV1);
    assert_eq!(found.bootstrap.digest, boot["digest"].as_str().unwrap());
    assert_eq!(found.blobs.len(), blobs.len());
    v
}

/// What a puller gets: the image pulled back from the registry, every blob sha256-verified.
struct Pulled {
    dir: PathBuf,
    boot: PathBuf,
    blobs: PathBuf,
}

async fn pull_back(src: &RegistrySource, manifest: &[u8], dir: &Path) -> Pulled {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    let layers = find_erofsd_layers(manifest).unwrap();
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    for d in &layers.blobs {
        let id = &d.digest[7..];
        let n = src.download_blob(id, None, &blobs.join(id)).await.unwrap();
        assert_eq!(n, d.size);
    }
    let tgz = dir.join("boot.tar.gz");
    let n = src.download_blob(&layers.bootstrap.digest[7..], Some(layers.bootstrap.size), &tgz).await.unwrap();
    assert_eq!(n, layers.bootstrap.size);
    let boot = dir.join("image.boot");
    extract_bootstrap_file(&tgz, &boot).unwrap();
    // The bootstrap's device table names exactly the blob layers, in order.
    let tags: Vec<String> = devtable::device_slots(&boot).into_iter().map(|s| s.tag).collect();
    assert_eq!(tags, layers.blob_ids(), "device table vs blob layers");
    // Config: the source's, with diff_ids = blob digests + sha256 of the uncompressed tar.
    let cfg = dir.join("config.json");
    src.download_blob(&v["config"]["digest"].as_str().unwrap()[7..], None, &cfg).await.unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(std::fs::File::open(&tgz).unwrap()), &mut plain).unwrap();
    let mut want: Vec<String> = layers.blobs.iter().map(|d| d.digest.clone()).collect();
    want.push(format!("sha256:{}", sha256_hex(&plain)));
    let got: Vec<String> = cfg["rootfs"]["diff_ids"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect();
    assert_eq!(got, want, "config diff_ids");
    assert_eq!(cfg["rootfs"]["type"], "layers");
    Pulled { dir: dir.to_path_buf(), boot, blobs }
}

impl Pulled {
    /// `erofsd check` (every structure, blob sha256, every group CRC) and raw devices.
    fn check_and_raw(&self) -> Vec<PathBuf> {
        let raw = self.dir.join("raw");
        cli::erofsd_check(&self.boot, &self.blobs, Some(&raw));
        devtable::erofsd_devices(&self.boot, &raw)
    }
}

fn registry_source(reg: &Registry, repo: &str, creds: Credentials) -> RegistrySource {
    let mut cfg = RegistryConfig::new(&reg.url, repo);
    cfg.credentials = creds;
    RegistrySource::new(cfg).unwrap()
}

/// A small two-layer OCI layout made by umoci: layer 1 has a 3 MiB file (a blob bigger than
/// a 1 MiB push chunk), a symlink and small files; layer 2 deletes one of them (whiteout) and
/// adds a file. Returns the layout directory; the image is tagged `t`.
fn small_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("small");
    let l = layout.to_str().unwrap();
    run(&["umoci", "init", "--layout", l]);
    run(&["umoci", "new", "--image", &format!("{l}:t")]);
    let make_tar = |name: &str, entries: &[(&str, &[u8])]| -> PathBuf {
        let p = dir.join(name);
        let mut b = tar::Builder::new(std::fs::File::create(&p).unwrap());
        for (path, data) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            if let Some(target) = path.strip_prefix("link:") {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, target, std::str::from_utf8(data).unwrap()).unwrap();
            } else if path.ends_with('/') {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, path, &[][..]).unwrap();
            } else {
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, *data).unwrap();
            }
        }
        b.finish().unwrap();
        p
    };
    let big = test_bytes(3 << 20, 11);
    let l1 = make_tar("l1.tar", &[("etc/", b""), ("etc/hello", b"hello\n"), ("etc/gone", b"bye\n"), ("data/", b""), ("data/big", &big), ("link:data/big-link", b"big")]);
    let l2 = make_tar("l2.tar", &[("etc/", b""), ("etc/.wh.gone", b""), ("etc/added", b"layer 2\n")]);
    run(&["umoci", "raw", "add-layer", "--image", &format!("{l}:t"), l1.to_str().unwrap()]);
    run(&["umoci", "raw", "add-layer", "--image", &format!("{l}:t"), l2.to_str().unwrap()]);
    layout
}

fn needs_tools(test: &str) -> bool {
    require_registry(test) && env::require_tools(test, &["umoci", "skopeo"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rootfs_layout_to_registry_and_layout_mounts_as_umoci_unpack() {
    let test = "rootfs_layout_to_registry_and_layout_mounts_as_umoci_unpack";
    if !needs_tools(test) || !env::require_erofs_mount(test) {
        return;
    }
    let oci = fixtures::fixture("oci");
    let s = fixtures::scratch("convert-rootfs");
    let reg = Registry::start("", None);
    let source = format!("oci:{}:l3", oci.join("layout").display());
    let target = format!("http://{}/erofsd/rootfs:conv", reg.host_port());
    let out = convert_ok(&[&source, &target]);
    let digest = manifest_digest(&out);

    // The source manifest digest, from the layout's index.json (independently of our code).
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(oci.join("layout/index.json")).unwrap()).unwrap();
    let src_digest = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == "l3")
        .unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();

    let src = registry_source(&reg, "erofsd/rootfs", Credentials::Anonymous);
    let fetched = src.fetch_manifest("conv").await.unwrap();
    assert_eq!(fetched.media_type, m::OCI_MANIFEST);
    assert_eq!(fetched.digest, digest);
    let v = check_contract(&fetched.bytes, &source, &src_digest);
    let layers = v["layers"].as_array().unwrap();
    assert!((2..=4).contains(&layers.len()), "3 source layers -> at most 3 blobs + bootstrap: {}", layers.len());

    // Pulled back, verified, mounted: the tree umoci unpacks from the source.
    let pulled = pull_back(&src, &fetched.bytes, &s.path().join("pulled")).await;
    let devices = pulled.check_and_raw();
    let mnt = Mount::erofs(&pulled.boot, &devices).unwrap();
    let opts = Options { mtime: Mtime::Seconds, root_meta: false, ..Options::default() };
    let r = assert_trees_equal(&oci.join("final/rootfs"), mnt.path(), &opts);
    assert!(r.regular_files > 5000, "{}", r.summary());
    drop(mnt);

    // skopeo accepts the pushed image and copies it to a layout.
    let name = format!("docker://{}/erofsd/rootfs:conv", reg.host_port());
    let inspect = run(&["skopeo", "inspect", "--tls-verify=false", &name]);
    let iv: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(iv["Digest"], digest.as_str());
    assert_eq!(iv["Layers"].as_array().unwrap().len(), layers.len());
    let copy = s.path().join("skopeo-copy");
    run(&["skopeo", "copy", "--quiet", "--src-tls-verify=false", &name, &format!("oci:{}:c", copy.display())]);
    let copied: serde_json::Value = serde_json::from_slice(&std::fs::read(copy.join("index.json")).unwrap()).unwrap();
    assert_eq!(copied["manifests"][0]["digest"], digest.as_str(), "skopeo copied the manifest byte for byte");

    // The same conversion into a layout: the same manifest (conversion is deterministic), and
    // skopeo copies it from there too.
    let lay = s.path().join("converted");
    let out2 = convert_ok(&[&source, &format!("oci:{}:conv", lay.display())]);
    assert_eq!(manifest_digest(&out2), digest);
    let manifest_file = lay.join("blobs/sha256").join(&digest[7..]);
    assert_eq!(std::fs::read(&manifest_file).unwrap(), fetched.bytes);
    for l in layers {
        let d = l["digest"].as_str().unwrap();
        let bytes = std::fs::read(lay.join("blobs/sha256").join(&d[7..])).unwrap();
        assert_eq!((bytes.len() as u64, format!("sha256:{}", sha256_hex(&bytes))), (l["size"].as_u64().unwrap(), d.to_string()));
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.path()).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".erofsd-convert")).collect();
    assert!(leftovers.is_empty(), "work directory left behind: {leftovers:?}");
    run(&["skopeo", "copy", "--quiet", &format!("oci:{}:conv", lay.display()), &format!("oci:{}:c2", s.path().join("copy2").display())]);

    // A push killed (SIGKILL) while the big blob is going up and the smallest one has arrived,
    // then run again: the rerun completes it with the same manifest, skipping what arrived.
    let killed = format!("http://{}/erofsd/killed:conv", reg.host_port());
    let killed_src = registry_source(&reg, "erofsd/killed", Credentials::Anonymous);
    let smallest = layers.iter().min_by_key(|l| l["size"].as_u64().unwrap()).unwrap()["digest"].as_str().unwrap()[7..].to_string();
    let uploads = reg.log.parent().unwrap().join("storage/docker/registry/v2/repositories/erofsd/killed/_uploads");
    // A killed run cannot remove its work directory: keep it in the scratch directory.
    let work = s.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut child = std::process::Command::new(cli::erofsd_bin())
        .args(["convert", &source, &killed, "-q", "--work-dir", work.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        // An upload session exists from its POST until its blob is complete.
        let uploading = std::fs::read_dir(&uploads).map(|mut d| d.next().is_some()).unwrap_or(false);
        if uploading && killed_src.blob_exists(&smallest).await.unwrap().is_some() {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "convert finished before it could be interrupted");
        assert!(std::time::Instant::now() < deadline, "no upload started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    assert!(!child.wait().unwrap().success());
    assert!(killed_src.fetch_manifest("conv").await.is_err(), "no manifest after the kill");
    assert_eq!(std::fs::read_dir(&work).unwrap().count(), 1, "the killed run's work directory is left");
    let out3 = convert_ok(&[&source, &killed]);
    assert_eq!(manifest_digest(&out3), digest);
    let (written, present) = written_present(&out3);
    assert!(written >= 1 && present >= 1 && written + present == layers.len() + 1, "{written} written, {present} present");
    assert_eq!(killed_src.fetch_manifest("conv").await.unwrap().bytes, fetched.bytes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pushed_sources_by_tag_and_digest_with_basic_auth() {
    let test = "skopeo_pushed_sources_by_tag_and_digest_with_basic_auth";
    if !needs_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    write_htpasswd(&htpasswd, "alice", "s3cret");
    let reg = Registry::start(&format!("auth:\n  htpasswd:\n    realm: erofsd-test\n    path: {}\n", htpasswd.display()), None);
    let layout = small_layout(dir.path());
    let creds = Credentials::basic("alice", "s3cret");
    let docker_config = dir.path().join("config.json");
    write_docker_config(&docker_config, &reg.host_port(), "alice", "s3cret");
    let dc = docker_config.to_str().unwrap();
    let host = reg.host_port();
    // (tag, skopeo flags, the source's layer media type)
    // (skopeo 1.9 does not recompress gzip layers to zstd; tar+zstd sources are covered by the
    // hand-made layout in hostile_sources_fail_cleanly_and_write_nothing.)
    let variants: [(&str, &[&str], &str); 2] = [
        ("oci", &["--format", "oci"], m::OCI_LAYER_GZIP),
        ("v2s2", &["--format", "v2s2"], m::DOCKER_LAYER_GZIP),
    ];
    for (format, flags, layer_type) in variants {
        let mut cmd = vec!["skopeo", "copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "alice:s3cret"];
        cmd.extend_from_slice(flags);
        let (from, to) = (format!("oci:{}:t", layout.display()), format!("docker://{host}/erofsd/src:{format}"));
        cmd.extend_from_slice(&[&from, &to]);
        run(&cmd);
        let src = registry_source(&reg, "erofsd/src", creds.clone());
        let sm = src.fetch_manifest(format).await.unwrap();
        let sv: serde_json::Value = serde_json::from_slice(&sm.bytes).unwrap();
        assert_eq!(sv["layers"][0]["mediaType"], layer_type, "skopeo wrote the layer type this case is about");
        let src_digest = sm.digest;
        // By tag, pushing big blobs in 1 MiB PATCH chunks.
        let by_tag = format!("http://{host}/erofsd/src:{format}");
        let (out, log) = convert_full(&[
            &by_tag, &format!("http://{host}/erofsd/dst-{format}:t"), "--docker-config", dc, "--push-chunk-size", "1M",
            "--log", "erofsd::core::registry=debug",
        ]);
        assert!(log.matches("PATCH ").count() >= 2, "a blob over 1 MiB goes up in PATCH chunks:\n{log}");
        let dst = registry_source(&reg, &format!("erofsd/dst-{format}"), creds.clone());
        let got = dst.fetch_manifest("t").await.unwrap();
        assert_eq!(got.digest, manifest_digest(&out));
        check_contract(&got.bytes, &by_tag, &src_digest);
        let pulled = pull_back(&dst, &got.bytes, &dir.path().join(format!("pulled-{format}"))).await;
        pulled.check_and_raw();
        assert!(
            std::fs::read_dir(&pulled.blobs).unwrap().flatten().any(|e| e.metadata().unwrap().len() > 1 << 20),
            "a blob over the 1 MiB chunk size went up in chunks"
        );
        // By digest.
        let by_digest = format!("http://{host}/erofsd/src@{src_digest}");
        let out = convert_ok(&[&by_digest, &format!("http://{host}/erofsd/dst-{format}:d"), "--docker-config", dc]);
        let got = dst.fetch_manifest("d").await.unwrap();
        assert_eq!(got.digest, manifest_digest(&out));
        check_contract(&got.bytes, &by_digest, &src_digest);
        // Without credentials: a clear permission error, nothing pushed.
        let e = convert_err(&[&by_tag, &format!("http://{host}/erofsd/nocreds:x"), "--docker-config", dir.path().join("none.json").to_str().unwrap()]);
        assert!(e.contains("credentials") || e.contains("ermission"), "{e}");
    }
    assert!(!reg.log_text().contains("s3cret"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_token_registry_as_source_and_target() {
    let test = "bearer_token_registry_as_source_and_target";
    if !needs_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(TokenPolicy { exp_offset: 300, expires_in: 300, require_basic: None }).await;
    let reg = Registry::start(&tokens.auth_yaml(), None);
    let layout = small_layout(dir.path());
    let host = reg.host_port();
    run(&["skopeo", "copy", "--quiet", "--dest-tls-verify=false", &format!("oci:{}:t", layout.display()), &format!("docker://{host}/erofsd/src:t")]);
    let before = tokens.issued();
    let out = convert_ok(&[&format!("http://{host}/erofsd/src:t"), &format!("http://{host}/erofsd/dst:t")]);
    assert!(tokens.issued() > before, "tokens were fetched");
    let dst = registry_source(&reg, "erofsd/dst", Credentials::Anonymous);
    let got = dst.fetch_manifest("t").await.unwrap();
    assert_eq!(got.digest, manifest_digest(&out));
    let pulled = pull_back(&dst, &got.bytes, &dir.path().join("pulled")).await;
    pulled.check_and_raw();
}

/// A hand-made OCI layout (no tool would write a broken one): `layers` are layer blobs, plain
/// tars unless given as `(media type, bytes)` by [`raw_layout_typed`]; returns the layout dir
/// and the layer digests.
fn raw_layout(dir: &Path, layers: &[Vec<u8>]) -> (PathBuf, Vec<String>) {
    let typed: Vec<(&str, Vec<u8>)> = layers.iter().map(|l| (m::OCI_LAYER_TAR, l.clone())).collect();
    raw_layout_typed(dir, &typed)
}

fn raw_layout_typed(dir: &Path, layers: &[(&str, Vec<u8>)]) -> (PathBuf, Vec<String>) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> (String, usize) {
        let h = sha256_hex(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        (format!("sha256:{h}"), b.len())
    };
    let digests: Vec<(String, usize, &str)> = layers.iter().map(|(t, l)| { let (d, n) = put(l); (d, n, *t) }).collect();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": digests.iter().map(|d| d.0.clone()).collect::<Vec<_>>()},
    });
    let (cd, cs) = put(&serde_json::to_vec(&config).unwrap());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": m::OCI_MANIFEST,
        "config": {"mediaType": m::OCI_CONFIG, "digest": cd, "size": cs},
        "layers": digests.iter().map(|(d, s, t)| serde_json::json!({"mediaType": t, "digest": d, "size": s})).collect::<Vec<_>>(),
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest).unwrap());
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [
        {"mediaType": m::OCI_MANIFEST, "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": "t"}}]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    (dir.to_path_buf(), digests.into_iter().map(|d| d.0).collect())
}

fn ok_tar() -> Vec<u8> {
    ok_tar_named("ok/file")
}

fn ok_tar_named(name: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(6);
    b.append_data(&mut h, name, &b"hello\n"[..]).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sources_fail_cleanly_and_write_nothing() {
    let test = "hostile_sources_fail_cleanly_and_write_nothing";
    let bad = fixtures::fixture("badtars");
    let s = tempfile::tempdir().unwrap();
    let dotdot = std::fs::read(bad.join("dotdot.tar")).unwrap();
    let good = ok_tar();
    // (case, layers, how to break the layout, words the error must contain)
    type Breaker = fn(&Path, &[String]);
    let flip: Breaker = |l, d| {
        let p = l.join("blobs/sha256").join(&d[0][7..]);
        let mut b = std::fs::read(&p).unwrap();
        b[100] ^= 0x20;
        std::fs::write(p, b).unwrap();
    };
    let remove: Breaker = |l, d| std::fs::remove_file(l.join("blobs/sha256").join(&d[1][7..])).unwrap();
    let nothing: Breaker = |_, _| {};
    type Case<'a> = (&'a str, Vec<Vec<u8>>, Breaker, &'a [&'a str]);
    let cases: Vec<Case> = vec![
        ("digest-mismatch", vec![good.clone(), good.clone()], flip, &["does not match"]),
        ("missing-blob", vec![good.clone(), dotdot.clone()], remove, &["missing"]),
        ("dotdot-tar", vec![good.clone(), dotdot.clone()], nothing, &["../evil-dotdot", ".."]),
    ];
    // Control: the same harness with nothing broken converts (a tar+zstd and a plain tar layer).
    let zst = zstd::encode_all(&good[..], 3).unwrap();
    let (layout, _) = raw_layout_typed(&s.path().join("control/src"), &[(m::OCI_LAYER_ZSTD, zst), (m::OCI_LAYER_TAR, ok_tar_named("ok/second"))]);
    let out = convert_ok(&[&format!("oci:{}:t", layout.display()), &format!("oci:{}:t", s.path().join("control/target").display())]);
    assert_eq!(written_present(&out).1, 0);
    assert_eq!(summary_field(&out, "source ").split(": ").last().unwrap().split(' ').next().unwrap(), "2", "2 layers: {out}");
    for (case, layers, breaker, words) in cases {
        let root = s.path().join(case);
        let (layout, digests) = raw_layout(&root.join("src"), &layers);
        breaker(&layout, &digests);
        let work = root.join("work");
        std::fs::create_dir_all(&work).unwrap();
        let target = root.join("target");
        let before = snapshot::snapshot(s.path(), None);
        let e = convert_err(&[
            &format!("oci:{}:t", layout.display()),
            &format!("oci:{}:t", target.display()),
            "--work-dir",
            work.to_str().unwrap(),
        ]);
        for w in words {
            assert!(e.contains(w), "{case}: error should mention {w:?}: {e}");
        }
        let d = snapshot::diff(&before, &snapshot::snapshot(s.path(), None));
        assert!(d.is_empty(), "{case}: wrote something: {d:?}");
        assert!(!target.exists(), "{case}: target created");
        assert!(!Path::new("/tmp/erofsd-evil").exists() && !root.join("evil-dotdot").exists());
    }

    // Registry sources: a layer whose stored bytes were altered, and a manifest whose layer was
    // deleted. Nothing may reach the target repository.
    if !needs_tools(test) {
        return;
    }
    let reg = Registry::start("", None);
    let host = reg.host_port();
    let layout = small_layout(s.path());
    for tag in ["corrupt", "missing"] {
        run(&["skopeo", "copy", "--quiet", "--dest-tls-verify=false", &format!("oci:{}:t", layout.display()), &format!("docker://{host}/erofsd/{tag}:t")]);
    }
    let src = registry_source(&reg, "erofsd/corrupt", Credentials::Anonymous);
    let mv: serde_json::Value = serde_json::from_slice(&src.fetch_manifest("t").await.unwrap().bytes).unwrap();
    let layer0 = mv["layers"][0]["digest"].as_str().unwrap()[7..].to_string();
    // The registry's filesystem storage sits next to its log (tests/common/registry.rs).
    let data = reg.log.parent().unwrap().join(format!("storage/docker/registry/v2/blobs/sha256/{}/{layer0}/data", &layer0[..2]));
    let mut b = std::fs::read(&data).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&data, b).unwrap();
    let e = convert_err(&[&format!("http://{host}/erofsd/corrupt:t"), &format!("http://{host}/erofsd/out:corrupt")]);
    assert!(e.contains("content has sha256"), "{e}");
    // Deleting the blob from the second repository removes only that repository's link to it.
    let del = push_client(None).delete(format!("{}/v2/erofsd/missing/blobs/sha256:{layer0}", reg.url)).send().await.unwrap();
    assert_eq!(del.status().as_u16(), 202, "delete blob");
    let e = convert_err(&[&format!("http://{host}/erofsd/missing:t"), &format!("http://{host}/erofsd/out:missing")]);
    assert!(e.contains("404") || e.to_lowercase().contains("not found"), "{e}");
    let out = registry_source(&reg, "erofsd/out", Credentials::Anonymous);
    for t in ["corrupt", "missing"] {
        assert!(out.fetch_manifest(t).await.is_err(), "a manifest was pushed for {t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_push_is_completed_by_a_rerun() {
    let test = "interrupted_push_is_completed_by_a_rerun";
    if !needs_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start("", None);
    let host = reg.host_port();
    let layout = small_layout(dir.path());
    let source = format!("oci:{}:t", layout.display());
    let target = format!("http://{host}/erofsd/resume:t");
    let out = convert_ok(&[&source, &target]);
    let digest = manifest_digest(&out);
    let (written, present) = written_present(&out);
    assert_eq!(present, 0);
    // The state a push interrupted before its manifest leaves, with one blob not up yet: the
    // manifest and one blob layer deleted (the registry allows deletes).
    let src = registry_source(&reg, "erofsd/resume", Credentials::Anonymous);
    let manifest = src.fetch_manifest("t").await.unwrap();
    let layers = find_erofsd_layers(&manifest.bytes).unwrap();
    let client = push_client(None);
    let gone = &layers.blobs[0].digest;
    for url in [format!("{}/v2/erofsd/resume/manifests/{digest}", reg.url), format!("{}/v2/erofsd/resume/blobs/{gone}", reg.url)] {
        assert_eq!(client.delete(&url).send().await.unwrap().status().as_u16(), 202, "DELETE {url}");
    }
    assert!(src.fetch_manifest("t").await.is_err());
    assert_eq!(src.blob_exists(&gone[7..]).await.unwrap(), None);
    let out2 = convert_ok(&[&source, &target]);
    assert_eq!(manifest_digest(&out2), digest, "the rerun builds the same image");
    assert_eq!(written_present(&out2), (1, written - 1), "only the missing blob goes up again");
    let again = src.fetch_manifest("t").await.unwrap();
    assert_eq!(again.digest, digest);
    pull_back(&src, &again.bytes, &dir.path().join("pulled")).await.check_and_raw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_needs_the_ca_file_or_insecure() {
    let test = "tls_registry_needs_the_ca_file_or_insecure";
    if !needs_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tls = make_tls();
    let reg = Registry::start("", Some(&tls));
    let host = reg.host_port();
    let layout = small_layout(dir.path());
    run(&["skopeo", "copy", "--quiet", "--dest-tls-verify=false", &format!("oci:{}:t", layout.display()), &format!("docker://{host}/erofsd/src:t")]);
    let ca = tls.ca_pem.to_str().unwrap();
    // HTTPS is the default for a reference without a scheme.
    let e = convert_err(&[&format!("{host}/erofsd/src:t"), &format!("{host}/erofsd/dst:t")]);
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let out = convert_ok(&[&format!("{host}/erofsd/src:t"), &format!("{host}/erofsd/dst:t"), "--ca-file", ca]);
    let out2 = convert_ok(&[&format!("{host}/erofsd/src:t"), &format!("https://{host}/erofsd/dst:t2"), "--insecure"]);
    assert_eq!(manifest_digest(&out), manifest_digest(&out2));
    let mut cfg = RegistryConfig::new(&reg.url, "erofsd/dst");
    cfg.transport.extra_ca_files = vec![tls.ca_pem.clone()];
    let dst = RegistrySource::new(cfg).unwrap();
    let got = dst.fetch_manifest("t").await.unwrap();
    assert_eq!(got.digest, manifest_digest(&out));
    pull_back(&dst, &got.bytes, &dir.path().join("pulled")).await.check_and_raw();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_sources_resolve_to_the_host_platform() {
    let test = "index_sources_resolve_to_the_host_platform";
    if !needs_tools(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = Registry::start("", None);
    let host = reg.host_port();
    let layout = small_layout(dir.path());
    run(&["skopeo", "copy", "--quiet", "--dest-tls-verify=false", &format!("oci:{}:t", layout.display()), &format!("docker://{host}/erofsd/multi:single")]);
    let src = registry_source(&reg, "erofsd/multi", Credentials::Anonymous);
    let single = src.fetch_manifest("single").await.unwrap();
    // An index naming the image for two platforms (the registry checks that what it names
    // exists, so both entries point at the one manifest we have).
    let entry = |arch: &str| serde_json::json!({"mediaType": m::OCI_MANIFEST, "digest": single.digest, "size": single.bytes.len(), "platform": {"os": "linux", "architecture": arch}});
    let client = push_client(None);
    let (_, arch) = m::host_platform(); // amd64 on x86_64
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": m::OCI_INDEX, "manifests": [entry("riscv64"), entry(arch)]});
    push_manifest(&client, &reg.url, "erofsd/multi", "index", m::OCI_INDEX, &serde_json::to_vec(&index).unwrap(), None).await;
    let source = format!("http://{host}/erofsd/multi:index");
    let out = convert_ok(&[&source, &format!("http://{host}/erofsd/multi-conv:t")]);
    let dst = registry_source(&reg, "erofsd/multi-conv", Credentials::Anonymous);
    let got = dst.fetch_manifest("t").await.unwrap();
    assert_eq!(got.digest, manifest_digest(&out));
    // The source digest recorded is the platform manifest's, not the index's.
    check_contract(&got.bytes, &source, &single.digest);
    // An index without the host's platform is a clear error.
    let other = serde_json::json!({"schemaVersion": 2, "mediaType": m::OCI_INDEX, "manifests": [entry("riscv64"), entry("s390x")]});
    push_manifest(&client, &reg.url, "erofsd/multi", "other", m::OCI_INDEX, &serde_json::to_vec(&other).unwrap(), None).await;
    let e = convert_err(&[&format!("http://{host}/erofsd/multi:other"), &format!("http://{host}/erofsd/multi-conv:other")]);
    assert!(e.contains(&format!("linux/{arch}")) && e.contains("linux/riscv64, linux/s390x"), "{e}");
}
