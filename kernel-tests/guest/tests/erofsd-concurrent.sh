# 8 concurrent readers on a cold cache, over the same files (even readers share one order) and
# different files (odd readers shuffle), on two mounts at once; every byte checked by sha256.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
# The readers must really run at once: the test kernel is SMP and QEMU gives it two vCPUs.
cpus=$(online_cpus)
[ "$cpus" -ge 2 ] || fail "the guest has $cpus CPU online: concurrent readers would take turns"
start_daemon
mkdir -p /mnt/cc-a /mnt/cc-b
ero mount "$ERO_IN/alltypes" /mnt/cc-a --fsid conc-a || fail "mount alltypes failed"
ero mount "$ERO_IN/l1" /mnt/cc-b --fsid conc-b || fail "mount l1 failed"
ktest-tree readers /mnt/cc-b "$ERO_IN/l1.manifest" --threads 8 --rounds 2 >"$KTEST_OUT/readers-b.txt" 2>&1 &
pb=$!
ktest-tree readers /mnt/cc-a "$ERO_IN/alltypes.manifest" --threads 8 || fail "readers on alltypes saw errors"
rc=0; wait $pb || rc=$?
cat "$KTEST_OUT/readers-b.txt"
[ $rc = 0 ] || fail "readers on l1 saw errors"
reads=$(metric reads)
echo "READs: $reads, failed: $(metric reads_failed), p50 $(latency p50) us, p99 $(latency p99) us"
[ "$(metric reads_failed)" = 0 ] || fail "READs failed"
stop_daemon
