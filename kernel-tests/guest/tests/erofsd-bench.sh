# Benchmark, same boot: the bench image (debootstrap rootfs when available) read in full,
# single-threaded, through erofsd (cold cache) vs natively mounted with all blob data local
# (loop devices over `erofsd check --write-raw` output: the limit); then warm re-reads; READ
# round-trip latency (message read -> READ_COMPLETE ioctl) from the daemon's metrics.
# Targets: cold within 1.5x of native, warm equal. Correctness is asserted; ratios are printed.
# The cold erofsd rows are the same tree built twice, with zstd groups (the default) and with
# lz4 groups (the cheaper decode: under TCG the daemon's fill is bound by emulated CPU, though
# the pass as a whole also waits on READ round trips and the emulated disk; docs/cachefiles.md).
# The cold rows are the best of $REPS alternating native/lz4/zstd passes (each erofsd pass on a
# fresh fsid, so a cold cache): on the SMP guest one pass swung by 3x between boots (2 vCPUs
# and QEMU's I/O thread share the host's 2 cores), in either row, and within one boot the
# same pass took 4.0-8.7 s (native) and 6.4-10.2 s (erofsd). The first pass of each side is
# also the slowest (TCG translates the code paths it runs for the first time), so with 3
# passes the best was a best of 2. Every pass is printed.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
img=$(cat "$ERO_IN/bench-image")
raw="$ERO_IN/$img-raw"
mkdir -p /mnt/bn-native /mnt/bn-erofsd /mnt/bn-lz4
secs() { sed -n 's/.* secs=\([0-9.]*\) .*/\1/p'; }
REPS=5
fastest() { echo $1 | tr ' ' '\n' | sort -n | head -n 1; }   # of a list of pass times
# CPU accounting per pass, in ticks of USER_HZ (100 on x86): the whole guest's busy time
# (/proc/stat: all but idle and iowait) and the daemon's user and system time (all threads).
# Under TCG the cold ratio is a question of emulated CPU, so the table shows where it goes.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
daemon_ticks() { awk '{ print $14, $15 }' "/proc/$(worker_pid)/stat"; }
cs() { awk "BEGIN { printf \"%.2f\", ($1) / 100 }"; }   # ticks -> CPU-s

# Native: bootstrap and each blob's raw address space on loop devices, in device-table order.
lb=$(losetup -f); losetup -r "$lb" "$ERO_IN/$img/image.boot"
opts=ro
for id in $(cat "$raw.order"); do
    [ -f "$raw/$id" ] || fail "no raw address space for blob $id"
    l=$(losetup -f); losetup -r "$l" "$raw/$id"; opts="$opts,device=$l"
done
mount -t erofs -o "$opts" "$lb" /mnt/bn-native || fail "native mount failed"

start_daemon
# Every cold pass starts from the same disk: the cache files of earlier passes that are no
# longer mounted are evicted first. Without that the data disk filled pass by pass (to about
# 90 % by round 5), and the daemon's writes, which allocate on ext4 under the inode lock the
# reader's reads also take, got slower with it: in every boot rounds 3-5 were slower than
# rounds 1-2 (up to 1.6x) while native did not slow down, and evicting between rounds made
# the rounds even (docs/cachefiles.md, "Conclusions that shaped the design").
evict_unused() { erofsd cache gc --max-size 0 --api-socket "$ERO_SOCK" >/dev/null || fail "cache gc failed"; }
# One cold erofsd pass over image $1 mounted at $2 with fsid $3: appends its seconds to
# the variable named $4 and its CPU (guest busy / daemon user+sys) to cpu_all.
cold_pass() {
    evict_unused
    ero mount "$1" "$2" --fsid "$3" || fail "erofsd mount of $1 failed"
    before=$(metric reads); before_bytes=$(metric read_bytes); before_pref=$(metric prefetches)
    drop_caches
    set -- "$@" $(daemon_ticks) $(busy_ticks)
    t=$(ktest-tree readall "$2" | tee -a "$KTEST_OUT/bench.txt" | secs)
    eval "$4=\"\$$4 $t\""
    b3=$(busy_ticks); du=$5 ds=$6 b2=$7; set -- $(daemon_ticks)
    cpu_all="$cpu_all /$(cs "$b3 - $b2")/$(cs "$1 - $du")+$(cs "$2 - $ds")"
}
n_all=""; e_all=""; l_all=""; cpu_all=""
for r in $(seq 1 $REPS); do
    drop_caches
    b0=$(busy_ticks)
    n_all="$n_all $(ktest-tree readall /mnt/bn-native | tee -a "$KTEST_OUT/bench.txt" | secs)"
    b1=$(busy_ticks)
    cpu_all="$cpu_all | $(cs "$b1 - $b0")"
    [ "$r" -gt 1 ] && { ero umount /mnt/bn-lz4 || fail "erofsd umount failed"; }
    cold_pass "$ERO_IN/$img-lz4" /mnt/bn-lz4 "benchlz4-$r" l_all
    [ "$r" -gt 1 ] && { ero umount /mnt/bn-erofsd || fail "erofsd umount failed"; }
    # zstd last, so the READ counts below and the warm rows are its own.
    cold_pass "$ERO_IN/$img" /mnt/bn-erofsd "bench$r" e_all
done
ktest-tree verify /mnt/bn-lz4 "$ERO_IN/$img.manifest" --xattrs || fail "erofsd tree (lz4 groups) differs"
ero umount /mnt/bn-lz4
n_cold=$(fastest "$n_all"); e_cold=$(fastest "$e_all"); l_cold=$(fastest "$l_all")
# The last cold pass's READs; the warm re-reads follow their own cold pass.
reads=$(( $(metric reads) - before )); rbytes=$(( $(metric read_bytes) - before_bytes ))
pref=$(( $(metric prefetches) - before_pref ))
# Warm rows: the best of 3 alternating re-reads (one warm pass of each swung from 0.77x to
# 1.49x of the other between boots). The erofsd pages are warm from its last cold pass; the
# erofsd passes may have pushed the native pages out, so one native re-read puts them back first.
ktest-tree readall /mnt/bn-native >/dev/null
ew_all=""; nw_all=""; before_warm=$(metric reads)
for r in 1 2 3; do
    ew_all="$ew_all $(ktest-tree readall /mnt/bn-erofsd | tee -a "$KTEST_OUT/bench.txt" | secs)"
    nw_all="$nw_all $(ktest-tree readall /mnt/bn-native | tee -a "$KTEST_OUT/bench.txt" | secs)"
done
e_warm=$(fastest "$ew_all"); n_warm=$(fastest "$nw_all")
# A warm erofsd pass should never reach the daemon; READs here mean its pages were evicted.
warm_reads=$(( $(metric reads) - before_warm ))
p50=$(latency p50); p90=$(latency p90); p99=$(latency p99); pmax=$(latency max)
# The same tree with uncompressed groups (what decompression costs under TCG).
mkdir -p /mnt/bn-plain
evict_unused
ero mount "$ERO_IN/$img-plain" /mnt/bn-plain --fsid bench-plain || fail "erofsd mount of the uncompressed image failed"
drop_caches
p_cold=$(ktest-tree readall /mnt/bn-plain | tee -a "$KTEST_OUT/bench.txt" | secs)
ero umount /mnt/bn-plain
# Cache files warm, page cache cold: remount (no READ may reach the daemon).
before_remount=$(metric reads)
ero umount /mnt/bn-erofsd
ero mount "$ERO_IN/$img" /mnt/bn-erofsd --fsid "bench$REPS" || fail "erofsd remount failed"
drop_caches
e_cached=$(ktest-tree readall /mnt/bn-erofsd | tee -a "$KTEST_OUT/bench.txt" | secs)
extra=$(( $(metric reads) - before_remount ))
ktest-tree verify /mnt/bn-erofsd "$ERO_IN/$img.manifest" --xattrs || fail "erofsd tree differs"
ero umount /mnt/bn-erofsd
stop_daemon
umount /mnt/bn-native
for l in $(losetup -a | grep -o '^/dev/loop[0-9]*'); do losetup -d "$l" 2>/dev/null || true; done

ratio() { awk "BEGIN { printf \"%.2f\", $1 / $2 }"; }
# Median of the per-pass ratios (erofsd pass r / native pass r, run back to back): less
# sensitive than the ratio of the fastest runs to one lucky pass on either side.
median_ratio() {   # of the erofsd passes $1 against the native passes
    awk -v n="$n_all" -v e="$1" 'BEGIN {
        k = split(n, a, " "); split(e, b, " ")
        for (i = 1; i <= k; i++) { r = b[i] / a[i]; for (j = i; j > 1 && q[j - 1] > r; j--) q[j] = q[j - 1]; q[j] = r }
        printf "%.2f", (k % 2) ? q[(k + 1) / 2] : (q[k / 2] + q[k / 2 + 1]) / 2 }'
}
{
echo "BENCH image=$img kernel=$KTEST_KVER (QEMU TCG, $(online_cpus) vCPUs online; single-threaded full read of every regular file)"
echo "BENCH | case (cold: best of $REPS alternating passes) | seconds | vs native cold |"
echo "BENCH | native EROFS, loop devices, cold       | $n_cold | 1.00 |"
echo "BENCH | erofsd cachefiles, cold cache (zstd)   | $e_cold | $(ratio "$e_cold" "$n_cold") (median of pass pairs $(median_ratio "$e_all")) |"
echo "BENCH | erofsd, cold, lz4-group image          | $l_cold | $(ratio "$l_cold" "$n_cold") (median of pass pairs $(median_ratio "$l_all")) |"
echo "BENCH | erofsd, cold, uncompressed-group image (1 pass) | $p_cold | $(ratio "$p_cold" "$n_cold") |"
echo "BENCH | native EROFS, warm page cache (best of 3) | $n_warm | $(ratio "$n_warm" "$n_cold") |"
echo "BENCH | erofsd, warm page cache (best of 3)    | $e_warm | $(ratio "$e_warm" "$n_cold") (vs native warm $(ratio "$e_warm" "$n_warm")) |"
echo "BENCH | erofsd, remounted over warm cache files | $e_cached | $(ratio "$e_cached" "$n_cold") |"
echo "BENCH | READs (last cold pass): $reads, $rbytes bytes, $pref prefetches; READ round trip us: p50 $p50, p90 $p90, p99 $p99, max $pmax |"
echo "BENCH | cold passes in order, native:$n_all; erofsd lz4:$l_all; erofsd zstd:$e_all |"
echo "BENCH | warm passes in order, native:$nw_all; erofsd:$ew_all; READs during them: $warm_reads |"
echo "BENCH | CPU-s per round, native guest | lz4 guest / daemon user+sys | zstd guest / daemon user+sys:$cpu_all |"
echo "BENCH | READs after remount over warm cache: $extra |"
} | tee "$KTEST_OUT/table.txt"
[ "$extra" = 0 ] || fail "$extra READs after remount over a warm cache"
[ "$warm_reads" = 0 ] || fail "$warm_reads READs during the warm re-reads (the daemon must be out of the path)"
awk "BEGIN { exit !($e_cold <= 1.5 * $n_cold) }" || echo "BENCH NOTE: cold target (1.5x native) missed with zstd groups"
awk "BEGIN { exit !($l_cold <= 1.5 * $n_cold) }" || echo "BENCH NOTE: cold target (1.5x native) missed with lz4 groups"
