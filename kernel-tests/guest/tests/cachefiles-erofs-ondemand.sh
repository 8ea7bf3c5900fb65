# (b) EROFS over fscache: the throwaway on-demand daemon (ktest-cachefiles serve) serves
# `mount -t erofs -o fsid=boot1,device=blob1 none MNT` for the host-made image
# (mkfs.erofs --chunksize=65536 --blobdev=blob1); every file must read back byte-exact.
. /ktest/lib.sh
CACHE=/data/cache-ondemand
MNT=/mnt/ondemand
LOG=$KTEST_OUT/daemon.log
rm -rf "$CACHE" /tmp/daemon.ready; mkdir -p "$CACHE" "$MNT"

ktest-cachefiles serve --dir "$CACHE" --tag erofsd-test \
    --object boot1="$KTEST_IN/boot1.img" --object blob1="$KTEST_IN/blob1" \
    --ready-file /tmp/daemon.ready --log "$LOG" &
pid=$!
# On any failure: unmount first (reads would block on a dead daemon), then stop the daemon.
trap 'umount "$MNT" 2>/dev/null; kill -KILL $pid 2>/dev/null' EXIT
i=0
while [ ! -e /tmp/daemon.ready ]; do
    alive $pid || fail "daemon exited before binding"
    i=$((i + 1)); [ $i -lt 100 ] || fail "daemon not ready after 10 s"
    sleep 0.1
done

mount -t erofs -o fsid=boot1,device=blob1 none "$MNT" || fail "fscache mount failed"
verify_tree "$MNT"
umount "$MNT"

kill -TERM $pid
rc=0; wait $pid || rc=$?
trap - EXIT
[ $rc = 0 ] || fail "daemon exited with $rc (see $LOG)"

grep -q '^OPEN .* volume=erofs,boot1 cookie=boot1 ' "$LOG" || fail "no OPEN for the bootstrap cookie"
grep -q '^OPEN .* volume=erofs,boot1 cookie=blob1 ' "$LOG" || fail "no OPEN for the blob cookie"
reads=$(grep -c '^READ .* cookie=blob1 ' "$LOG" || true)
[ "$reads" -gt 0 ] || fail "no READ on the blob: data did not go through the daemon"
grep -q '^CLOSE .* cookie=boot1$' "$LOG" || fail "no CLOSE for the bootstrap after umount"
[ -d "$CACHE/cache/Ierofs,boot1" ] || fail "cache dir lacks cache/Ierofs,boot1"
echo "daemon: $(grep -c '^OPEN' "$LOG") OPEN, $(grep -c '^READ' "$LOG") READ ($reads on blob1), $(grep -c '^CLOSE' "$LOG") CLOSE"
tail -n 1 "$LOG"
