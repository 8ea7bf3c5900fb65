# nydusd failover as nydus-snapshotter runs it (recover_policy = failover): the snapshotter
# serves --supervisor SOCK (ktest-nydus holder here); after binds it calls sendfd (we send state +
# the /dev/cachefiles fd); the daemon is SIGKILLed during a cold read storm; the same argv is
# started again (it finds the device busy and waits in INIT), then takeover (fd back, `restore`
# written, binds reloaded) → READY, start → RUNNING. Readers must see no error, every byte right.
# The bind's blobs come from a registry, as the snapshotter configures them: `backend_type`
# registry with a `backend_config` naming docker-registry on the guest's loopback (the host
# pushed the bench image's blobs into erofsd/bench), and no blobs beside the bootstrap. The
# successor must rebuild that backend from its saved binds.
# Needs the cachefiles failover support of Linux 6.8+ (or the 6.1.y/6.6.y backports).
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
ROOT=/data/nydus-root-$KTEST_NAME
rm -rf "$ROOT"; mkdir -p "$ROOT/socket/d1" "$ROOT/supervisor" /run
ln -sf /ktest/bin/erofsd /run/nydusd
API=$ROOT/socket/d1/api.sock
SUP=$ROOT/supervisor/d1.sock
req() { ktest-nydus req "$API" "$@"; }
img=$(cat "$ERO_IN/bench-image")
F=$(printf 'nydus-snapshot-%s' 5 | sha256sum | cut -d' ' -f1)

ktest-nydus holder "$SUP" >>"$KTEST_OUT/holder.log" 2>&1 &
holder=$!
REGISTRY_PID=
trap 'kill $holder $REGISTRY_PID 2>/dev/null; cleanup_daemon' EXIT
start_registry
# The snapshotter unpacks the bootstrap layer into the snapshot; the data blobs stay remote.
mkdir -p "$ROOT/snapshots/5/fs/image"
cp "$ERO_IN/$img/image.boot" "$ROOT/snapshots/5/fs/image/image.boot"
BOOT=$ROOT/snapshots/5/fs/image/image.boot
BACKEND='{"host":"127.0.0.1:5000","repo":"erofsd/bench","scheme":"http","timeout":30,"connect_timeout":5,"retry_limit":2}'
start_nydusd() {
    /run/nydusd singleton --fscache "$ROOT/cache" --id d1 --apisock "$API" --log-level info \
        --supervisor "$SUP" >>"$ERO_LOG" 2>&1 &
    DAEMON_PID=$!
}
start_nydusd
ktest-nydus wait-state "$API" RUNNING 5 || { tail -n 20 "$ERO_LOG"; fail "not RUNNING"; }
req PUT /api/v2/blobs "{\"type\":\"bootstrap\",\"id\":\"$F\",\"domain_id\":\"$F\",\"config\":{\"id\":\"$F\",\"backend_type\":\"registry\",\"backend_config\":$BACKEND,\"cache_type\":\"fscache\",\"metadata_path\":\"$BOOT\"}}" \
    || fail "bind failed"
source_of() { req GET /api/v2/blobs | grep -o '"erofsd_blob_source": *"[^"]*"'; }
echo "bind's blob source: $(source_of)"
source_of | grep -q '127.0.0.1:5000' || fail "the bind does not read from the registry"
mkdir -p /mnt/nyfo
mount -t erofs -o "domain_id=$F,fsid=$F" none /mnt/nyfo || fail "mount failed"
req PUT /api/v1/daemon/fuse/sendfd || fail "sendfd failed"
sleep 1
grep -q "sendfd:.*fd kept" "$KTEST_OUT/holder.log" || { cat "$KTEST_OUT/holder.log"; fail "the holder got no fd"; }
drop_caches
ktest-tree readers /mnt/nyfo "$ERO_IN/$img.manifest" --threads 8 >"$KTEST_OUT/readers.txt" 2>&1 &
rd=$!
sleep 2
alive $rd || fail "the readers finished before the kill: nothing was in flight"
kill -KILL "$DAEMON_PID"; wait "$DAEMON_PID" 2>/dev/null || true
echo "killed nydusd $DAEMON_PID"
start_nydusd
ktest-nydus wait-state "$API" INIT 10 || { tail -n 20 "$ERO_LOG"; fail "successor not INIT (did it open the device?)"; }
req PUT /api/v1/daemon/fuse/takeover || { tail -n 20 "$ERO_LOG"; fail "takeover failed"; }
ktest-nydus wait-state "$API" READY 5 || fail "not READY after takeover"
req PUT /api/v1/daemon/start || fail "start failed"
ktest-nydus wait-state "$API" RUNNING 5 || fail "not RUNNING after start"
rc=0; wait $rd || rc=$?
cat "$KTEST_OUT/readers.txt"
grep "restore\|recovered" "$ERO_LOG" | tail -n 5
[ $rc = 0 ] || fail "readers saw errors across the failover"
fm() { req GET /api/v1/metrics | sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }
echo "successor: READs $(fm reads), OPENs $(fm opens), failed $(fm reads_failed)"
[ "$(fm reads)" -gt 0 ] || fail "the successor served no READ: the kill came too late to test anything"
[ "$(fm reads_failed)" = 0 ] || fail "READs failed in the successor"
echo "successor's blob source: $(source_of)"
source_of | grep -q '127.0.0.1:5000' || fail "the successor's bind does not read from the registry"
ktest-tree verify /mnt/nyfo "$ERO_IN/$img.manifest" --xattrs || fail "tree differs after failover"
req DELETE "/api/v2/blobs?domain_id=$F" || fail "unbind of the recovered bind failed"
umount /mnt/nyfo || fail "umount failed"
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || fail "nydusd exited non-zero"
kill "$holder" 2>/dev/null || true
