#!/bin/bash
# Build (or reuse) a small QEMU test kernel with cachefiles on-demand + EROFS over fscache.
#
#   kernel-tests/build-kernel.sh VERSION          # VERSION = 6.12 | 6.1; prints a one-line summary
#   kernel-tests/build-kernel.sh --path VERSION   # print where the bzImage for VERSION is (or would be)
#
# Source: Debian's linux-source-VERSION package (/usr/src/linux-source-VERSION.tar.xz).
# Recipe: make tinyconfig; merge config/fragment (+ config/fragment-VERSION); make olddefconfig;
# verify every CONFIG_X=y of the fragments is =y in .config; make -j2 bzImage.
# Cache: $EROFSD_KERNEL_CACHE (default /var/cache/erofsd-kernels), outside the repo:
#   src/<ver>-<pkgver>/       extracted source (read-only; builds use O=)
#   build/<ver>/              object tree
#   Both trees (about 1.7 GB per version) are removed once the bzImage is in out/, because CI
#   machines are short of disk; EROFSD_KEEP_KERNEL_TREES=1 keeps them, so that a developer
#   changing the fragment rebuilds incrementally.
#   out/<ver>-<key>/bzImage   finished kernel; <key> = sha256(fragments + this script + package version)
#   logs/build-<ver>-<key>.log
# A second run with the same key is instant.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${EROFSD_KERNEL_CACHE:-/var/cache/erofsd-kernels}"
JOBS="${KERNEL_JOBS:-2}"

die() { echo "build-kernel: error: $*" >&2; exit 1; }

PATH_ONLY=0
if [ "${1:-}" = "--path" ]; then PATH_ONLY=1; shift; fi
VER="${1:-}"
case "$VER" in
    6.12|6.1) ;;
    *) die "usage: $0 [--path] 6.12|6.1" ;;
esac

TARBALL="/usr/src/linux-source-$VER.tar.xz"
FRAGMENTS=("$HERE/config/fragment")
[ -f "$HERE/config/fragment-$VER" ] && FRAGMENTS+=("$HERE/config/fragment-$VER")

# Package version identifies the source; fall back to the tarball's size+mtime.
PKGVER="$(dpkg-query -W -f='${Version}' "linux-source-$VER" 2>/dev/null || true)"
[ -n "$PKGVER" ] || PKGVER="$(stat -c '%s-%Y' "$TARBALL" 2>/dev/null || echo missing)"

KEY="$( { echo "$VER $PKGVER"; cat "${FRAGMENTS[@]}" "$HERE/build-kernel.sh"; } | sha256sum | cut -c1-16)"
OUT="$CACHE/out/$VER-$KEY"

if [ "$PATH_ONLY" = 1 ]; then echo "$OUT/bzImage"; exit 0; fi

if [ -f "$OUT/bzImage" ]; then
    echo "kernel $VER: cached $OUT/bzImage ($(stat -c %s "$OUT/bzImage") bytes, key $KEY)"
    exit 0
fi

[ -f "$TARBALL" ] || die "$TARBALL not found (apt-get install linux-source-$VER)"
mkdir -p "$CACHE/src" "$CACHE/build" "$CACHE/out" "$CACHE/logs"

# One build per version at a time (run.sh --kernel all may race with a manual build).
exec 9>"$CACHE/$VER.lock"
flock 9
if [ -f "$OUT/bzImage" ]; then
    echo "kernel $VER: cached $OUT/bzImage (built by a concurrent run, key $KEY)"
    exit 0
fi

LOG="$CACHE/logs/build-$VER-$KEY.log"
: >"$LOG"
START=$(date +%s)

SRCDIR="$CACHE/src/$VER-$PKGVER"
SRC="$SRCDIR/linux-source-$VER"
if [ ! -f "$SRCDIR/.extracted" ]; then
    echo "kernel $VER: extracting $TARBALL ..." >&2
    rm -rf "$SRCDIR"
    mkdir -p "$SRCDIR"
    tar -xf "$TARBALL" -C "$SRCDIR" >>"$LOG" 2>&1 || die "extract failed, see $LOG"
    touch "$SRCDIR/.extracted"
fi
[ -d "$SRC" ] || die "expected $SRC after extraction"

BUILD="$CACHE/build/$VER"
mkdir -p "$BUILD"
mk() { make -C "$SRC" O="$BUILD" ARCH=x86_64 "$@" >>"$LOG" 2>&1; }

echo "kernel $VER: configuring (log: $LOG) ..." >&2
mk tinyconfig || die "make tinyconfig failed, see $LOG"
# -m: merge only, olddefconfig below resolves the rest.
(cd "$BUILD" && "$SRC/scripts/kconfig/merge_config.sh" -m -O "$BUILD" "$BUILD/.config" "${FRAGMENTS[@]}") \
    >>"$LOG" 2>&1 || die "merge_config failed, see $LOG"
mk olddefconfig || die "make olddefconfig failed, see $LOG"

# Verify: every option the fragments ask for must have survived dependency resolution.
missing=()
for frag in "${FRAGMENTS[@]}"; do
    while IFS= read -r opt; do
        grep -qx "$opt=y" "$BUILD/.config" || missing+=("$opt")
    done < <(sed -n 's/^\(CONFIG_[A-Za-z0-9_]*\)=y[[:space:]]*$/\1/p' "$frag")
done
if [ "${#missing[@]}" -gt 0 ]; then
    for opt in "${missing[@]}"; do
        echo "build-kernel: $opt wanted =y, .config has: $(grep -E "(^|# )$opt[= ]" "$BUILD/.config" || echo '(absent: unknown symbol or unmet dependency)')" >&2
    done
    die "kernel $VER: ${#missing[@]} required option(s) missing from .config (fix the fragment's dependencies)"
fi

echo "kernel $VER: building bzImage with -j$JOBS ..." >&2
mk -j"$JOBS" bzImage || { tail -n 30 "$LOG" >&2; die "kernel build failed, see $LOG"; }

mkdir -p "$OUT.tmp"
cp "$BUILD/arch/x86/boot/bzImage" "$OUT.tmp/bzImage"
cp "$BUILD/.config" "$OUT.tmp/config"
rm -rf "$OUT"
mv "$OUT.tmp" "$OUT"
if [ "${EROFSD_KEEP_KERNEL_TREES:-0}" != 1 ]; then
    rm -rf "$SRCDIR" "$BUILD"
fi
END=$(date +%s)
echo "kernel $VER: built $OUT/bzImage ($(stat -c %s "$OUT/bzImage") bytes) in $((END - START)) s, key $KEY, log $LOG"
