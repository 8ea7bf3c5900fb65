#!/bin/bash
# Builder benchmark on the debootstrap rootfs fixture, all in one run, page cache warm:
#   erofsd build --compress zstd, erofsd build --compress none,
#   mkfs.erofs --chunksize=1048576 --blobdev (erofs-utils 1.5: the uncompressed reference).
# Prints one row per tool/mode: best wall time of $RUNS runs, MB/s of source file data
# (MB = 10^6 bytes), peak RSS (/usr/bin/time -v), bootstrap and blob sizes; then the targets.
#
#   scripts/bench-build.sh [SOURCE_TREE]        (default: the rootfs fixture)
#   RUNS=3 EROFSD=path/to/erofsd THREADS=N scripts/bench-build.sh
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
runs=${RUNS:-3}
src=${1:-$("$repo/scripts/make-fixtures.sh" rootfs)/tree}
if [[ -z ${EROFSD:-} ]]; then
    (cd "$repo" && cargo build --release -q --bin erofsd)
    EROFSD=${CARGO_TARGET_DIR:-$repo/target}/release/erofsd
fi
threads=()
[[ -n ${THREADS:-} ]] && threads=(--threads "$THREADS")
work=$(mktemp -d "${EROFSD_SCRATCH:-/var/cache/erofsd-test/scratch}/bench.XXXXXX" 2>/dev/null || mktemp -d)
trap 'rm -rf "$work"' EXIT

src_bytes=$(find "$src" -type f -printf '%s\n' | awk '{s+=$1} END {print s+0}')
entries=$(find "$src" | wc -l)
# Warm the page cache: read every file once (twice would not change anything).
find "$src" -type f -print0 | xargs -0 cat >/dev/null 2>&1 || true

# run NAME CMD...: best-of-$runs; sets best_s, best_rss_kb, boot_bytes, blob_bytes.
measure() {
    local name=$1; shift
    best_s="" best_rss_kb=0
    for ((i = 1; i <= runs; i++)); do
        rm -rf "$work/out" && mkdir -p "$work/out"
        local t0 t1 s rss
        t0=$(date +%s.%N)
        /usr/bin/time -v -o "$work/time.txt" "$@" >"$work/cmd.log" 2>&1 || { echo "bench: $name failed:" >&2; tail -20 "$work/cmd.log" >&2; exit 1; }
        t1=$(date +%s.%N)
        s=$(echo "$t1 - $t0" | bc -l)
        rss=$(sed -nE 's/.*Maximum resident set size \(kbytes\): ([0-9]+)/\1/p' "$work/time.txt")
        if [[ -z $best_s ]] || (($(echo "$s < $best_s" | bc -l))); then best_s=$s; fi
        ((rss > best_rss_kb)) && best_rss_kb=$rss   # peak over all runs
    done
    boot_bytes=$(stat -c %s "$work/out/image.boot" 2>/dev/null || stat -c %s "$work/out/image.erofs")
    blob_bytes=$(find "$work/out" -type f ! -name 'image.*' -printf '%s\n' | awk '{s+=$1} END {print s+0}')
}

rows=()
row() { # tool mode target_mbs
    local mbs; mbs=$(echo "$src_bytes / 1000000 / $best_s" | bc -l)
    local rss_mib; rss_mib=$(echo "$best_rss_kb / 1024" | bc -l)
    local verdict=""
    if [[ -n $3 ]]; then
        if (($(echo "$mbs >= $3" | bc -l))) && (($(echo "$rss_mib < 64" | bc -l))); then verdict="meets"; else verdict="MISSES"; fi
        verdict="$verdict (>= $3 MB/s, < 64 MiB)"
    fi
    rows+=("$(printf '%-11s %-6s %8.2f %9.1f %9.1f %12d %12d  %s' "$1" "$2" "$best_s" "$mbs" "$rss_mib" "$boot_bytes" "$blob_bytes" "$verdict")")
}

echo "source: $src ($entries entries, $src_bytes bytes of file data), best of $runs, page cache warm"
echo "erofsd: $EROFSD (threads: ${THREADS:-default, one per CPU}; $(nproc) CPUs)"

measure "erofsd zstd" "$EROFSD" build "$src" -o "$work/out" --compress zstd "${threads[@]}"
row erofsd zstd 95
measure "erofsd none" "$EROFSD" build "$src" -o "$work/out" --compress none "${threads[@]}"
row erofsd none 180
measure "mkfs.erofs" mkfs.erofs --chunksize=1048576 --blobdev="$work/out/blob" "$work/out/image.erofs" "$src"
row mkfs.erofs blobdev ""

echo
printf '%-11s %-6s %8s %9s %9s %12s %12s  %s\n' tool mode seconds "MB/s" "RSS MiB" "boot bytes" "blob bytes" "target"
printf '%s\n' "${rows[@]}"
