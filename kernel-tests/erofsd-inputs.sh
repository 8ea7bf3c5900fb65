#!/bin/bash
# Host-side inputs for the erofsd guest tests (guest/tests/erofsd-*.sh), called by run.sh:
#
#   erofsd-inputs.sh OUT EROFSD KTEST_TREE GEN_TREE
#
# OUT gets one directory per image made by `erofsd build` (image.boot + blobs/), a manifest per
# image made on the host by `ktest-tree manifest --xattrs` (the guest compares its mount against
# it: path, type, mode, uid, gid, nlink, size, sha256, link target, rdev, xattrs), and for the
# benchmark the raw blob address spaces (`erofsd check --write-raw`) for a native loop mount.
#
#   gen/        run.sh's generated edge-case tree, 64K chunks and groups
#   alltypes/   every file type, owner, mode, name and xattr edge (scripts/make-fixtures.sh)
#   rootfs/     debootstrap bookworm rootfs (make-fixtures.sh rootfs), when it can be had
#   l1/ l2/     two merged two-layer images sharing their first layer's blob (domain test)
#   many/       128 layers merged, one blob each (erofsd-many-layers)
#   one/ corrupt/   one 2 MiB file (also as one-data.bin); corrupt/ has bytes flipped mid-blob
# Images with the same blob id share one Blob in the daemon (content addressing), so tests never
# mount a damaged copy next to its intact original.
#   missing/    gen/'s bootstrap with no blobs
#   shapes-zstd/ shapes-lz4/ shapes-none/   the fixed and seeded random file shapes
#               (tests/common/shapes.rs) by `erofsd build`; shapes-conv/ the same by
#               `erofsd convert` (one umoci layer); shapes-mkfs/ by mkfs.erofs --blobdev (with
#               interior holes); shapes.manifest, shapes.seed ($EROFSD_SHAPES_SEED replays one)
#   old-holes/  tests/fixtures/interior-holes: the previous builder's interior holes
#   oci-conv/   the oci fixture converted by `erofsd convert` into an OCI layout (tag conv)
#   registry/   the same conversion pushed into a docker-registry's storage, with the registry
#               binary and its libraries (erofsd-failover-registry)
set -euo pipefail
OUT=$1 EROFSD=$2 KTREE=$3 GEN=$4
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
rm -rf "$OUT"; mkdir -p "$OUT"
scratch="$OUT/../erofsd-scratch"; rm -rf "$scratch"; mkdir -p "$scratch"

image() { # NAME SRC... [-- build options]
    local name=$1; shift
    local srcs=() opts=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do srcs+=("$1"); shift; done
    [ "${1:-}" = -- ] && { shift; opts=("$@"); }
    "$EROFSD" --log warn build "${opts[@]}" "${srcs[@]}" -o "$OUT/$name" >"$OUT/$name.build.log"
}
manifest() { "$KTREE" manifest "$1" --xattrs >"$2"; }

# registry_storage LAYOUT: the oci fixture converted by `erofsd convert` and pushed into a real
# Debian `docker-registry` started here on loopback, and the bench image's blobs pushed as they
# are into repository erofsd/bench (what nydus-snapshotter's registry backend reads); the
# registry's storage directory becomes registry/storage/. Inside the guest the same registry runs
# over it (erofsd-failover-registry, erofsd-nydusd-failover), so blobs come by HTTP range
# requests as in production. The registry binary goes along with
# the dynamic loader and libc it needs (the guest has no /lib).
registry_storage() {
    local reg="$OUT/registry" port rpid lib
    if ! command -v docker-registry >/dev/null; then
        echo "erofsd-inputs: no docker-registry on the host; erofsd-failover-registry will fail" >&2
        return 0
    fi
    mkdir -p "$reg/bin" "$reg/storage"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
        "$reg/storage" "$port" >"$scratch/registry.yml"
    docker-registry serve "$scratch/registry.yml" >"$scratch/registry.log" 2>&1 &
    rpid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
    if ! "$EROFSD" --log warn convert -q "oci:$1:l3" "http://127.0.0.1:$port/erofsd/rootfs:conv" >"$OUT/registry-push.log" 2>&1; then
        kill "$rpid"; wait "$rpid" || true
        cat "$OUT/registry-push.log" "$scratch/registry.log" >&2
        echo "erofsd-inputs: pushing to the host registry failed" >&2
        return 1
    fi
    local blob id loc
    for blob in "$OUT/$BENCH/blobs/"*; do
        id=$(basename "$blob")
        loc=$(curl -sf -X POST -D - -o /dev/null "http://127.0.0.1:$port/v2/erofsd/bench/blobs/uploads/" \
            | sed -n 's/^location: *//Ip' | tr -d '\r')
        case $loc in /*) loc="http://127.0.0.1:$port$loc" ;; esac
        case $loc in *\?*) loc="$loc&" ;; *) loc="$loc?" ;; esac
        curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @"$blob" \
            "${loc}digest=sha256:$id" >/dev/null || { kill "$rpid"; echo "erofsd-inputs: pushing blob $id failed" >&2; return 1; }
    done
    kill "$rpid"; wait "$rpid" || true
    cp "$(command -v docker-registry)" "$reg/bin/"
    for lib in $(ldd "$(command -v docker-registry)" | grep -o '/[^ ]*'); do cp -L "$lib" "$reg/bin/"; done
}

image gen "$GEN" -- --chunk-size 64K --group-size 64K
manifest "$GEN" "$OUT/gen.manifest"

fixtures="$("$REPO/scripts/make-fixtures.sh" alltypes)"
image alltypes "$fixtures/tree"
manifest "$fixtures/tree" "$OUT/alltypes.manifest"

# The rootfs needs debootstrap once (cached); without it the tests use alltypes and say so.
if rootfs="$("$REPO/scripts/make-fixtures.sh" rootfs 2>"$scratch/rootfs.log")" && [ -d "$rootfs/tree" ]; then
    image rootfs "$rootfs/tree"
    manifest "$rootfs/tree" "$OUT/rootfs.manifest"
else
    echo "erofsd-inputs: no debootstrap rootfs (see $scratch/rootfs.log); guest tests use alltypes" >&2
fi
BENCH=rootfs; [ -d "$OUT/rootfs" ] || BENCH=alltypes
"$EROFSD" --log warn check "$OUT/$BENCH" --write-raw "$OUT/$BENCH-raw" >"$OUT/$BENCH-raw.log"
echo "$BENCH" >"$OUT/bench-image"
# The same tree with uncompressed groups: the benchmark's measure of what zstd decoding costs.
image "$BENCH-plain" "$([ "$BENCH" = rootfs ] && echo "$rootfs/tree" || echo "$fixtures/tree")" -- --compress none
# And with lz4 groups: the cheaper decode, benchmarked against zstd in the same passes.
image "$BENCH-lz4" "$([ "$BENCH" = rootfs ] && echo "$rootfs/tree" || echo "$fixtures/tree")" -- --compress lz4
# Blob ids in device-table order, for the native mount's device= options.
awk '/^device [0-9]+: blob /{print $4}' "$OUT/$BENCH.build.log" >"$OUT/$BENCH-raw.order"
[ -s "$OUT/$BENCH-raw.order" ] || { echo "erofsd-inputs: no blob order for $BENCH" >&2; exit 1; }

# Two images sharing a layer blob.
mkdir -p "$scratch/la/base" "$scratch/lb" "$scratch/lc"
head -c $((6 * 1024 * 1024 + 5)) /dev/urandom >"$scratch/la/base/shared.bin"
seq 1 20000 >"$scratch/la/base/numbers.txt"
head -c 700000 /dev/urandom >"$scratch/lb/only-b.bin"
head -c 900000 /dev/urandom >"$scratch/lc/only-c.bin"
image l1 "$scratch/la" "$scratch/lb" -- --merge
image l2 "$scratch/la" "$scratch/lc" -- --merge
mkdir -p "$scratch/m1" "$scratch/m2"
cp -a "$scratch/la/." "$scratch/lb/." "$scratch/m1/"
cp -a "$scratch/la/." "$scratch/lc/." "$scratch/m2/"
manifest "$scratch/m1" "$OUT/l1.manifest"
manifest "$scratch/m2" "$OUT/l2.manifest"
b1=$(ls "$OUT/l1/blobs") b2=$(ls "$OUT/l2/blobs")
shared=$(printf '%s\n%s\n' "$b1" "$b2" | sort | uniq -d | wc -l)
[ "$shared" = 1 ] || { echo "erofsd-inputs: l1 and l2 should share exactly one blob" >&2; exit 1; }
printf '%s\n' "$b1" "$b2" | sort -u | wc -l >"$OUT/l-blob-count"

# 128 layers merged into one image, one blob per layer (erofsd-many-layers): every layer has a
# file of its own past the inline size (so its blob holds data), overrides common.txt, and every
# 8th replaces over/every8.bin; many.manifest is of the layers copied in order into one tree.
mkdir -p "$scratch/many-merged"
layers=()
for i in $(seq -w 0 127); do
    l="$scratch/many/l$i"; mkdir -p "$l/own" "$l/over"
    head -c $((3000 + 10#$i * 37)) /dev/urandom >"$l/own/layer-$i.bin"
    echo "layer $i" >"$l/common.txt"
    [ $((10#$i % 8)) != 0 ] || head -c $((5000 + 10#$i)) /dev/urandom >"$l/over/every8.bin"
    layers+=("$l")
    cp -a "$l/." "$scratch/many-merged/"
done
image many "${layers[@]}" -- --merge
manifest "$scratch/many-merged" "$OUT/many.manifest"
n=$(ls "$OUT/many/blobs" | wc -l)
[ "$n" = 128 ] || { echo "erofsd-inputs: the 128-layer image has $n blobs" >&2; exit 1; }

# One file, and the same image with a corrupted group.
mkdir -p "$scratch/one"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$scratch/one/data.bin"
image one "$scratch/one" -- --chunk-size 64K --group-size 64K
manifest "$scratch/one" "$OUT/one.manifest"
cp "$scratch/one/data.bin" "$OUT/one-data.bin"   # reference bytes, outside any image
cp -a "$OUT/one" "$OUT/corrupt"
blob="$OUT/corrupt/blobs/$(ls "$OUT/corrupt/blobs")"
size=$(stat -c %s "$blob")
printf '\xff\x00\xff\x00' | dd of="$blob" bs=1 seek=$((size / 2)) conv=notrunc status=none

# An image converted by `erofsd convert` into an OCI layout, mounted by `oci:` reference
# (erofsd-mount-oci-ref): the oci fixture (the rootfs in 3 umoci layers, whiteouts and opaque
# dirs) and `umoci unpack` of it as the expected tree.
if oci="$("$REPO/scripts/make-fixtures.sh" oci 2>"$scratch/oci.log")" && [ -d "$oci/layout" ]; then
    "$EROFSD" --log warn convert -q "oci:$oci/layout:l3" "oci:$OUT/oci-conv:conv" >"$OUT/oci-conv.log"
    manifest "$oci/final/rootfs" "$OUT/oci-conv.manifest"
    registry_storage "$oci/layout"
else
    echo "erofsd-inputs: no oci fixture (see $scratch/oci.log); erofsd-mount-oci-ref will fail" >&2
fi

# File shapes: zero runs and holes at and off page, group and chunk boundaries (erofsd-holes).
seed=${EROFSD_SHAPES_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
echo "$seed" >"$OUT/shapes.seed"
echo "erofsd-inputs: file shapes seed $seed (replay: EROFSD_SHAPES_SEED=$seed kernel-tests/run.sh --suite erofsd-holes)"
"$KTREE" shapes "$scratch/shapes/fixed" --set fixed
"$KTREE" shapes "$scratch/shapes/random" --set random --seed "$seed" --files 150
manifest "$scratch/shapes" "$OUT/shapes.manifest"
for c in zstd lz4 none; do image "shapes-$c" "$scratch/shapes" -- --compress "$c"; done
umoci init --layout "$scratch/shapes-oci"
umoci new --image "$scratch/shapes-oci:s"
umoci unpack --image "$scratch/shapes-oci:s" "$scratch/shapes-bundle" >/dev/null
cp -a "$scratch/shapes/." "$scratch/shapes-bundle/rootfs/"
umoci repack --image "$scratch/shapes-oci:s" "$scratch/shapes-bundle" >/dev/null
"$EROFSD" --log warn convert -q "oci:$scratch/shapes-oci:s" "oci:$OUT/shapes-conv:conv" >"$OUT/shapes-conv.log"
mkdir -p "$OUT/shapes-mkfs"
mkfs.erofs --chunksize=1048576 --blobdev="$OUT/shapes-mkfs/blob" "$OUT/shapes-mkfs/image.boot" "$scratch/shapes" \
    >"$OUT/shapes-mkfs.log" 2>&1 || { cat "$OUT/shapes-mkfs.log"; echo "erofsd-inputs: mkfs.erofs of the shapes failed" >&2; exit 1; }
cp -a "$REPO/tests/fixtures/interior-holes" "$OUT/old-holes"
"$KTREE" shapes "$scratch/old-holes" --set fixture
manifest "$scratch/old-holes" "$OUT/old-holes.manifest"

mkdir -p "$OUT/missing/blobs"
cp "$OUT/gen/image.boot" "$OUT/missing/image.boot"
rm -rf "$scratch"
