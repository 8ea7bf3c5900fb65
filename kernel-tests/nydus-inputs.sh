#!/bin/bash
# Inputs for guest/tests/erofsd-nydus.sh: the nydus RAFS v6 fixture images (built by
# nydus-image, see tests/fixtures/nydus/README.md) copied to OUT/nydus-<name>/, and one
# manifest of the tree they were all built from (`ktest-tree manifest --xattrs`, made here on
# the host from tree.tar.gz unpacked as root with xattrs and numeric owners).
#   nydus-inputs.sh OUT KTEST_TREE
set -euo pipefail
OUT="$1" KTREE="$2"
FIX="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/tests/fixtures/nydus"
[ -f "$FIX/tree.tar.gz" ] || { echo "nydus-inputs: no nydus fixtures at $FIX" >&2; exit 1; }
mkdir -p "$OUT"
for name in dir-zstd dir-lz4_block targz-rafs targz-ref; do
    rm -rf "$OUT/nydus-$name"
    mkdir -p "$OUT/nydus-$name/blobs"
    cp "$FIX/$name/image.boot" "$OUT/nydus-$name/"
    cp "$FIX/$name"/blobs/* "$OUT/nydus-$name/blobs/"
done
tree="$(mktemp -d)"
trap 'rm -rf "$tree"' EXIT
tar --xattrs --xattrs-include='*' --numeric-owner -xpzf "$FIX/tree.tar.gz" -C "$tree"
"$KTREE" manifest "$tree" --xattrs >"$OUT/nydus.manifest"
