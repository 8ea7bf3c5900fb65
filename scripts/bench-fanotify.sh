#!/bin/bash
# Benchmark the fanotify front-end against the same image mounted natively with all blob data
# local (file-backed EROFS, device=<raw address space> from `erofsd check --write-raw`: the limit).
#
#   scripts/bench-fanotify.sh [TREE]      default TREE: the debootstrap rootfs fixture
#
# Env: EROFSD (binary, default target/release/erofsd), BENCH_DIR (scratch, default
# /var/cache/erofsd-test/scratch/bench-fanotify; must be ext4/xfs/btrfs), RANDOM_READS (4000),
# REPS (3), WARM_REPS (7), BUILD_ARGS (extra `erofsd build` flags, e.g. "--group-size 64K"),
# ONLY (space-separated rows to run, e.g. "seq_cold rand_cold" for an A/B of the cold rows;
# default all: seq_cold seq_warm rand_cold rand_warm meta_cold meta_warm seq_cachewarm).
# Every pair of runs is logged on stderr as it finishes.
# Columns: the fastest run of each side, their ratio, and the median of the per-iteration
# ratios (native and fanotify run back to back each iteration).
# Needs root and a 6.14+ kernel. Each cell is the fastest of REPS runs, native and
# fanotify interleaved (the build machines are shared: the minimum is the least disturbed run);
# page caches are dropped before every cold run.
# "cold" for fanotify = empty cache files and dropped page cache: every byte is fetched from the
# blob store (local blobs/ here), decoded, verified and written before the reader goes on.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
bin=${EROFSD:-$repo/target/release/erofsd}
[[ -x $bin ]] || bin=${CARGO_TARGET_DIR:-$repo/target}/release/erofsd
[[ -x $bin ]] || { echo "build first: cargo build --release (or set EROFSD)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "needs root" >&2; exit 1; }
tree=${1:-$("$here/make-fixtures.sh" rootfs)/tree}
work=${BENCH_DIR:-/var/cache/erofsd-test/scratch/bench-fanotify}
nrand=${RANDOM_READS:-4000}
reps=${REPS:-3}
warm_reps=${WARM_REPS:-7}   # warm cells are short and never reach the daemon: more runs, less noise
sock=/run/erofsd-bench-fan.sock

log() { echo "bench: $*" >&2; }

# mount(2) directly: util-linux would set up a loop device (no pre-content hook).
sysmount() { # BOOT MNT DEVICE...
    python3 - "$@" <<'EOF'
import ctypes, os, sys
boot, mnt, devs = sys.argv[1], sys.argv[2], sys.argv[3:]
libc = ctypes.CDLL(None, use_errno=True)
data = ",".join("device=" + d for d in devs).encode()
if libc.mount(boot.encode(), mnt.encode(), b"erofs", 1, data) != 0:
    sys.exit("mount: " + os.strerror(ctypes.get_errno()))
EOF
}
sysumount() { python3 -c 'import ctypes,sys; l=ctypes.CDLL(None); sys.exit(l.umount2(sys.argv[1].encode(), 0))' "$1"; }

drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

cleanup() {
    set +e
    for m in "$work/native" "$work/fan"; do mountpoint -q "$m" 2>/dev/null && sysumount "$m"; done
    [[ -n ${dpid:-} ]] && kill "$dpid" 2>/dev/null && wait "$dpid" 2>/dev/null
    rm -f "$sock"
}
trap cleanup EXIT

mkdir -p "$work"
rm -rf "$work/img" "$work/raw" "$work/cache" "$work/native" "$work/fan"
mkdir -p "$work/native" "$work/fan"
log "building the image of $tree"
# shellcheck disable=SC2086 # BUILD_ARGS is a list of flags
"$bin" build "$tree" -o "$work/img" ${BUILD_ARGS:-} >/dev/null 2>&1
"$bin" check "$work/img" --blob-dir "$work/img/blobs" --write-raw "$work/raw" >/dev/null 2>&1
mapfile -t ids < <(python3 - "$work/img/image.boot" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
sb = d[1024:1152]
n, off = struct.unpack_from("<HH", sb, 86)
for k in range(n):
    s = d[off * 128 + k * 128:][:64]
    print(s.split(b"\0")[0].decode())
EOF
)
raw_devs=(); for id in "${ids[@]}"; do raw_devs+=("$work/raw/$id"); done

# Random-read plan: RANDOM_READS (file, 4K-aligned offset) pairs over files >= 64 KiB, fixed seed.
python3 - "$tree" "$nrand" > "$work/randplan" <<'EOF'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
files = []
for d, _, fs in os.walk(root):
    for f in fs:
        p = os.path.join(d, f)
        if os.path.isfile(p) and not os.path.islink(p) and os.path.getsize(p) >= 65536:
            files.append((os.path.relpath(p, root), os.path.getsize(p)))
files.sort()
r = random.Random(42)
for _ in range(n):
    f, s = r.choice(files)
    print(f"{r.randrange(0, s // 4096) * 4096} {f}")
EOF

seqread() { find "$1" -type f -print0 | xargs -0 -n 64 cat > /dev/null; }
randread() {
    python3 - "$1" "$work/randplan" <<'EOF'
import os, sys
root, plan = sys.argv[1], sys.argv[2]
for line in open(plan):
    off, f = line.rstrip("\n").split(" ", 1)
    fd = os.open(os.path.join(root, f), os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    os.pread(fd, 4096, int(off))
    os.close(fd)
EOF
}
metawalk() { find "$1" -printf '%s %m %u %g %T@\n' > /dev/null; }

timeit() { local t0 t1; t0=$(now); "$@"; t1=$(now); echo "$t1 - $t0" | bc -l; }

start_daemon() {
    rm -f "$sock"
    "$bin" daemon --frontend fanotify --cache-dir "$work/cache" --api-socket "$sock" 2>"$work/daemon.log" &
    dpid=$!
    for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
    "$bin" mount "$work/img" "$work/fan" --api-socket "$sock" >/dev/null
}
stop_daemon() { kill "$dpid"; wait "$dpid" || true; dpid=; }
fresh_fan() { # empty cache, new daemon, mounted
    [[ -n ${dpid:-} ]] && stop_daemon
    rm -rf "$work/cache"
    start_daemon
}

# R: fastest time per (side,name). P: per-iteration fanotify/native ratios per name (each
# iteration runs the two back to back, so a slow spell of the machine hits both: the median of
# these pairs is steadier than the ratio of the minima when the native baseline itself swings).
declare -A R P
LAST=
keep_min() { # KEY SECONDS
    LAST=$2
    if [[ -z ${R[$1]:-} ]] || (($(echo "$2 < ${R[$1]}" | bc -l))); then R[$1]=$2; fi
}
run_native() { # NAME FUNC cold|warm
    sysmount "$work/img/image.boot" "$work/native" "${raw_devs[@]}"
    [[ $3 == warm ]] && $2 "$work/native"
    [[ $3 == cold ]] && drop
    keep_min "native,$1" "$(timeit $2 "$work/native")"
    sysumount "$work/native"
}
run_fan() { # NAME FUNC cold|warm|cachewarm
    fresh_fan
    case $3 in
        warm) $2 "$work/fan" ;;
        cachewarm) seqread "$work/fan"; drop ;;
        cold) drop ;;
    esac
    keep_min "fan,$1" "$(timeit $2 "$work/fan")"
}
both() { # NAME FUNC MODE-NATIVE MODE-FAN
    local n=$reps
    [[ $3 == warm ]] && n=$warm_reps
    local tn
    for ((i = 0; i < n; i++)); do
        run_native "$1" "$2" "$3"; tn=$LAST
        run_fan "$1" "$2" "$4"
        P[$1]+=" $(echo "$LAST / $tn" | bc -l)"
        log "  $1 run $((i + 1))/$n: native $tn s, fanotify $LAST s"
    done
}
wanted() { [[ -z ${ONLY:-} || " $ONLY " == *" $1 "* ]]; }

wanted seq_cold && { log "cold sequential read"; both seq_cold seqread cold cold; }
wanted seq_warm && { log "warm sequential read"; both seq_warm seqread warm warm; }
wanted rand_cold && { log "cold 4K random read"; both rand_cold randread cold cold; }
wanted rand_warm && { log "warm 4K random read"; both rand_warm randread warm warm; }
wanted meta_cold && { log "cold metadata walk"; both meta_cold metawalk cold cold; }
wanted meta_warm && { log "warm metadata walk"; both meta_warm metawalk warm warm; }
wanted seq_cachewarm && {
    log "page-cold read, all data already in the cache files (mark removed)"
    both seq_cachewarm seqread cold cachewarm
}
stop_daemon

median() { tr ' ' '\n' | grep . | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
printf '\n%-58s %10s %10s %8s %8s\n' "best of $reps cold / $warm_reps warm ($(du -sh --apparent-size "$tree" | cut -f1) tree, $nrand random 4K reads)" "native s" "fanotify s" "ratio" "median"
for k in seq_cold:"cold sequential read (all files)" seq_warm:"warm sequential read" \
         rand_cold:"cold 4K random read" rand_warm:"warm 4K random read" \
         meta_cold:"cold metadata walk (find + stat)" meta_warm:"warm metadata walk" \
         seq_cachewarm:"page-cold read, data in cache (no mark)"; do
    n=${k%%:*}; label=${k#*:}
    wanted "$n" || continue
    printf '%-58s %10.3f %10.3f %7.2fx %7.2fx\n' "$label" "${R[native,$n]}" "${R[fan,$n]}" \
        "$(echo "${R[fan,$n]} / ${R[native,$n]}" | bc -l)" "$(median <<<"${P[$n]}")"
done
