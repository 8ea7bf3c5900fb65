# Helpers for the erofsd guest tests (sourced after /ktest/lib.sh; busybox sh, -eu).
#
# The real erofsd binary (built static by run.sh) serves images built by `erofsd build` on the
# host (inputs in $KTEST_IN/erofsd, see kernel-tests/erofsd-inputs.sh) through the cachefiles
# front-end. Each test runs its own daemon with its own cache directory on the ext4 data disk
# (cachefiles refuses tmpfs), and stops it before it ends.

ERO_IN=$KTEST_IN/erofsd
ERO_SOCK=/run/erofsd-$KTEST_NAME.sock
ERO_CACHE=/data/erofsd-cache/$KTEST_NAME
ERO_LOG=$KTEST_OUT/daemon.log
DAEMON_PID=

# start_daemon [daemon flags...]: fresh cache dir, daemon in the background, wait for its API.
start_daemon() {
    rm -rf "$ERO_CACHE"; mkdir -p "$ERO_CACHE" /run
    EROFSD_LOG=${EROFSD_LOG:-info} erofsd daemon --frontend cachefiles --cache-dir "$ERO_CACHE" \
        --api-socket "$ERO_SOCK" "$@" >>"$ERO_LOG" 2>&1 &
    DAEMON_PID=$!
    wait_api
}

# worker_pid: the process that serves. DAEMON_PID is its supervisor (`erofsd daemon` always
# runs one, unless --unsafe-no-supervisor).
# The guest kernel has no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN): scan for the
# supervisor's child instead.
worker_pid() {
    set -- $(children_of "$DAEMON_PID")
    echo "${1:-$DAEMON_PID}"
}

# Restart with the same cache dir (warm cache).
restart_daemon() {
    EROFSD_LOG=${EROFSD_LOG:-info} erofsd daemon --frontend cachefiles --cache-dir "$ERO_CACHE" \
        --api-socket "$ERO_SOCK" "$@" >>"$ERO_LOG" 2>&1 &
    DAEMON_PID=$!
    wait_api
}

wait_api() {
    i=0
    until erofsd status --api-socket "$ERO_SOCK" >/dev/null 2>&1; do
        alive "$DAEMON_PID" || { tail -n 20 "$ERO_LOG"; fail "erofsd daemon exited at start"; }
        i=$((i + 1)); [ $i -lt 300 ] || { tail -n 20 "$ERO_LOG"; fail "erofsd daemon not answering after 30 s"; }
        sleep 0.1
    done
}

# stop_daemon: SIGTERM; the daemon unmounts what it serves and must exit 0.
stop_daemon() {
    kill -TERM "$DAEMON_PID"
    rc=0; wait "$DAEMON_PID" || rc=$?
    [ "$rc" = 0 ] || { tail -n 20 "$ERO_LOG"; fail "erofsd daemon exited with $rc"; }
}

ero() { erofsd "$@" --api-socket "$ERO_SOCK"; }

# metric NAME: a front-end counter from GET /api/v1/metrics.
metric() {
    erofsd status --metrics --api-socket "$ERO_SOCK" >/tmp/metrics.json || fail "metrics API failed"
    v=$(sed -n "s/^    \"$1\": \([0-9]*\),\{0,1\}\$/\1/p" /tmp/metrics.json | head -n 1)
    [ -n "$v" ] || { cat /tmp/metrics.json; fail "no metric $1"; }
    echo "$v"
}

# latency NAME: a READ latency percentile (p50, p90, p99, max, samples) in microseconds.
latency() {
    erofsd status --metrics --api-socket "$ERO_SOCK" >/tmp/metrics.json || fail "metrics API failed"
    sed -n "s/^      \"$1\": \([0-9]*\),\{0,1\}\$/\1/p" /tmp/metrics.json | tail -n 1
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

mounted() { grep -q " $1 erofs " /proc/mounts; }

# children_of PID: pids whose parent is PID (busybox here has no pgrep).
children_of() {
    parent=$1
    for st in /proc/[0-9]*/stat; do
        line=$(cat "$st" 2>/dev/null) || continue
        set -- $line
        if [ "${4:-}" = "$parent" ]; then echo "$1"; fi
    done
    return 0
}

# failover_storm MNT IMG SUP W1: 8 readers over image IMG mounted at MNT; after 2 s, SIGKILL of
# the daemon W1, then supervisor SUP must start a new daemon (left in $FO_NEW). The readers must
# finish with zero errors, the new daemon must have served READs without a failure and still
# list MNT, and the tree must verify. MNT stays mounted.
failover_storm() {
    fo_mnt=$1 fo_img=$2 fo_sup=$3 fo_old=$4
    ktest-tree readers "$fo_mnt" "$ERO_IN/$fo_img.manifest" --threads 8 >"$KTEST_OUT/readers.txt" 2>&1 &
    fo_rd=$!
    sleep 2
    fo_before=$(metric reads)
    echo "READs before the kill: $fo_before"
    [ "$fo_before" -gt 0 ] || fail "no READ in flight yet; the storm did not start"
    kill -KILL "$fo_old"
    echo "killed daemon $fo_old"
    i=0
    while :; do
        # The killed daemon may linger as a zombie child of SUP until it is reaped.
        FO_NEW=$(children_of "$fo_sup" | grep -vx "$fo_old" | head -n 1) || true
        [ -n "$FO_NEW" ] && break
        i=$((i + 1)); [ $i -lt 200 ] || fail "supervisor $fo_sup started no new daemon 20 s after the kill"
        sleep 0.1
    done
    echo "supervisor $fo_sup started the new daemon $FO_NEW"
    wait_api
    fo_rc=0; wait $fo_rd || fo_rc=$?
    cat "$KTEST_OUT/readers.txt"
    grep "restore\|recovered\|took /dev/cachefiles" "$ERO_LOG" | tail -n 5
    [ $fo_rc = 0 ] || fail "readers saw errors across the failover"
    fo_after=$(metric reads)
    echo "READs served by the new daemon: $fo_after, OPENs re-answered: $(metric opens), failed: $(metric reads_failed)"
    [ "$fo_after" -gt 0 ] || fail "the new daemon served no READ: the kill came too late to test anything"
    [ "$(metric reads_failed)" = 0 ] || fail "READs failed in the new daemon"
    ero status --mounts | grep -q "$fo_mnt" || fail "the new daemon does not list the recovered mount"
    ktest-tree verify "$fo_mnt" "$ERO_IN/$fo_img.manifest" --xattrs || fail "tree differs after failover"
}

# start_registry: Debian's docker-registry on 127.0.0.1:5000 over the storage the host filled
# (erofsd-inputs.sh: erofsd/rootfs:conv and the bench image's blobs in erofsd/bench); its pid in
# REGISTRY_PID (the caller's EXIT trap kills it). Brings up the loopback interface first.
start_registry() {
    reg_dir=$ERO_IN/registry
    [ -x "$reg_dir/bin/docker-registry" ] || fail "no registry among the inputs (the host lacked docker-registry or the oci fixture)"
    ifconfig lo 127.0.0.1 up || fail "cannot bring up the loopback interface"
    printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:5000\n' \
        "$reg_dir/storage" >/tmp/registry.yml
    "$reg_dir/bin/ld-linux-x86-64.so.2" --library-path "$reg_dir/bin" "$reg_dir/bin/docker-registry" serve /tmp/registry.yml \
        >"$KTEST_OUT/registry.log" 2>&1 &
    REGISTRY_PID=$!
    i=0
    until wget -q -O /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null; do
        alive $REGISTRY_PID || { cat "$KTEST_OUT/registry.log"; fail "docker-registry exited at start"; }
        i=$((i + 1)); [ $i -lt 300 ] || fail "docker-registry not answering after 30 s"
        sleep 0.1
    done
}

# On any exit (a failed test included) leave no daemon or mount behind for the next test.
cleanup_daemon() {
    if [ -n "$DAEMON_PID" ] && alive "$DAEMON_PID"; then
        kill -TERM "$DAEMON_PID" 2>/dev/null
        i=0
        while alive "$DAEMON_PID" && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
        kill -KILL "$DAEMON_PID" 2>/dev/null || true
    fi
    for m in $(grep " erofs " /proc/mounts | cut -d' ' -f2 | grep '^/mnt/'); do umount -l "$m" 2>/dev/null || true; done
    # Free this test's cache files: the data disk holds every test's, and cachefiles refuses
    # to write (ENOBUFS) once the disk is below its 3 % free-space stop threshold.
    rm -rf "$ERO_CACHE" "/data/nydus-root-$KTEST_NAME" 2>/dev/null || true
}
trap cleanup_daemon EXIT
