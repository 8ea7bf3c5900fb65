# Failover: `erofsd daemon --supervise` parks the /dev/cachefiles fd with the supervisor. The
# daemon is SIGKILLed during a cold read storm (8 readers); the supervisor restarts it, hands
# the fd back, the new daemon writes `restore` and answers the re-sent OPENs from its saved
# registrations. Every reader must finish with zero errors and every byte right.
# Needs the cachefiles failover support of Linux 6.8+ (or the 6.1.y/6.6.y backports).
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
img=$(cat "$ERO_IN/bench-image")
start_daemon --supervise
sup=$DAEMON_PID
worker() { children_of "$sup" | head -n 1; }
w1=$(worker); [ -n "$w1" ] || fail "no daemon child under the supervisor"
echo "supervisor $sup, daemon $w1"
mkdir -p /mnt/fo
ero mount "$ERO_IN/$img" /mnt/fo --fsid failover1 || fail "mount failed"
grep -q "holding cachefiles" "$ERO_LOG" || fail "the supervisor does not hold the device fd"

ktest-tree readers /mnt/fo "$ERO_IN/$img.manifest" --threads 8 >"$KTEST_OUT/readers.txt" 2>&1 &
rd=$!
sleep 2
before=$(metric reads)
echo "READs before the kill: $before"
[ "$before" -gt 0 ] || fail "no READ in flight yet; the storm did not start"
kill -KILL "$w1"
echo "killed daemon $w1"
i=0
while :; do
    w2=$(worker)
    [ -n "$w2" ] && [ "$w2" != "$w1" ] && break
    i=$((i + 1)); [ $i -lt 200 ] || fail "no new daemon 20 s after the kill"
    sleep 0.1
done
echo "new daemon $w2"
wait_api
rc=0; wait $rd || rc=$?
cat "$KTEST_OUT/readers.txt"
grep "restore\|recovered\|took /dev/cachefiles" "$ERO_LOG" | tail -n 5
[ $rc = 0 ] || fail "readers saw errors across the failover"
after=$(metric reads)
echo "READs served by the new daemon: $after, OPENs re-answered: $(metric opens), failed: $(metric reads_failed)"
[ "$after" -gt 0 ] || fail "the new daemon served no READ: the kill came too late to test anything"
[ "$(metric reads_failed)" = 0 ] || fail "READs failed in the new daemon"
ero status --mounts | grep -q /mnt/fo || fail "the new daemon does not list the recovered mount"
ktest-tree verify /mnt/fo "$ERO_IN/$img.manifest" --xattrs || fail "tree differs after failover"
ero umount /mnt/fo || fail "umount of the recovered mount failed"
stop_daemon
