#!/bin/bash
# Install everything the tests need, from the Debian package registry only. Idempotent:
# installs only what is missing, and runs `apt-get update` at most once, only if it must.
# Needs root. Safe to run with no stdin (CI).
set -euo pipefail

PACKAGES=(
    # reference EROFS tools, OCI tools, a local registry
    erofs-utils umoci skopeo docker-registry
    # QEMU guest tests: emulator, initramfs, test-kernel sources and their build deps
    qemu-system-x86 busybox-static cpio linux-source-6.12 linux-source-6.1
    build-essential bc flex bison libelf-dev libssl-dev kmod
    # fixtures: debootstrap rootfs, xattrs and capabilities, copying with xattrs
    debootstrap attr libcap2-bin rsync python3 e2fsprogs util-linux
    # compression and measurement
    zstd gzip tar time pkg-config curl
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "ci-deps: missing packages (${missing[*]}) and not root; run: sudo $0" >&2
        exit 1
    fi
    echo "ci-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
else
    echo "ci-deps: all ${#PACKAGES[@]} packages present" >&2
fi

# The Rust toolchain comes with the machine (rustup is not a package registry); fail clearly.
if ! command -v cargo >/dev/null; then
    echo "ci-deps: cargo not found; install a Rust toolchain (rust-version in Cargo.toml)" >&2
    exit 1
fi
# cargo-nextest is optional (scripts/test.sh falls back to cargo test); crates.io is allowed.
if ! cargo nextest --version >/dev/null 2>&1 && [[ ${EROFSD_INSTALL_NEXTEST:-0} == 1 ]]; then
    cargo install --locked cargo-nextest </dev/null
fi

# Kernel features the host tests use (they FAIL under CI=true when these are missing).
for fs in erofs overlay; do
    grep -qw "$fs" /proc/filesystems || modprobe "$fs" 2>/dev/null || echo "ci-deps: warning: kernel lacks $fs" >&2
done

# The container stack (containerd, runc, nydus-snapshotter, nerdctl, ...), pinned in versions.env.
"$(dirname "$0")/container-deps.sh"
