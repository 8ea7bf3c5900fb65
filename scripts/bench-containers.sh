#!/bin/bash
# Container start through a shaped registry: time from `nerdctl run` to the container's first
# line of output, bytes fetched, daemon peak RSS and CPU, for
#   (a) containerd's overlayfs snapshotter, full pull
#   (b) stargz-snapshotter (containerd-stargz-grpc, FUSE, lazy) on an eStargz form of the image
#   (c) nydus-snapshotter (fs_driver fusedev, shared daemon) + erofsd: kernel EROFS via fanotify
#   (d) (c) with the access trace (c) recorded prefetched (fs_prefetch.enable -> erofsd `trace`)
#   (e) nydus-snapshotter + nydusd itself (FUSE) on a RAFS v6 image made by nydus-image
#   (f) erofsd on that same RAFS v6 image (e and f need `scripts/container-deps.sh --with-nydusd`)
# on two images: the debootstrap rootfs fixture (`python3 -c 'import json; ...'`) and the
# pystack fixture (>1 GB Python stack, `python3 -c 'import torch, sklearn, ...'`).
# One cold run per row: a fresh stack (registry, containerd, snapshotter, empty caches) per row,
# the image pushed unshaped, then the registry's traffic shaped on loopback to RATE (tc htb on
# the registry's source port, as scripts/bench-registry.sh) behind toxiproxy adding RTT_MS of
# round trip, page cache dropped, one `nerdctl run --rm --net none`. Prints one table per image
# (markdown) on stdout; progress and logs on stderr.
#
# Usage: scripts/bench-containers.sh
# Env: BENCH_IMAGES (default rootfs,pystack), BENCH_ROWS (default a,b,c,d,e,f), RATE (100mbit),
#   RTT_MS (20), NYDUSD_REF and NYDUS_IMAGE (other nydusd / nydus-image builds for rows e, f),
#   BENCH_KEEP_LOGS (dir for each row's logs: access.trace of row c too), CARGO_TARGET_DIR. Needs root, tc, curl and the container stack
#   (scripts/container-deps.sh); the fixtures are built on first use (scripts/make-fixtures.sh
#   oci pystack: the pystack debootstrap takes several minutes and about 1.5 GB).
# Takes over the root qdisc of `lo` while it runs; refuses to start if one is already set.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
die() { echo "bench-containers: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (containerd, mounts, tc, drop_caches)"
for t in tc curl skopeo umoci ctr-remote containerd runc docker-registry cargo; do
    command -v "$t" >/dev/null || die "needs $t (scripts/container-deps.sh, scripts/ci-deps.sh)"
done
# shellcheck source=versions.env
source "$here/versions.env"
for b in containerd-nydus-grpc nerdctl toxiproxy-server toxiproxy-cli containerd-stargz-grpc; do
    [[ -x $GO_PREFIX/bin/$b ]] || echo "bench-containers: $GO_PREFIX/bin/$b missing: run scripts/container-deps.sh" >&2
done
if tc qdisc show dev lo | grep -q '^qdisc htb'; then
    die "lo already has an htb root qdisc (another benchmark running?): $(tc qdisc show dev lo | head -1)"
fi
trap 'tc qdisc del dev lo root 2>/dev/null || true' EXIT
# Fixtures first, so that their logs do not interleave with the bench's.
fixtures=()
IFS=, read -ra imgs <<<"${BENCH_IMAGES:-rootfs,pystack}"
for i in "${imgs[@]}"; do
    case $i in
        rootfs) fixtures+=(oci) ;;
        pystack) fixtures+=(pystack) ;;
        *) die "unknown image $i (rootfs, pystack)" ;;
    esac
done
"$here/make-fixtures.sh" "${fixtures[@]}" >/dev/null || die "make-fixtures.sh ${fixtures[*]} failed"
cd "$repo"
cargo bench --bench containers
