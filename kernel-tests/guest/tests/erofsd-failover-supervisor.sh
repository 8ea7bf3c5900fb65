# Failover when the supervisor itself is SIGKILLed: the daemon sees EOF on its supervisor
# socket, starts a new supervisor that adopts it (`GET /api/v1/daemon` names it as the holder)
# and parks /dev/cachefiles with it again. A SIGKILL of the daemon during a cold read storm is
# then survived as in erofsd-failover: the new supervisor restarts it, `restore`, zero reader
# errors, every byte right. A SIGTERM to the new supervisor stops both cleanly.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
img=$(cat "$ERO_IN/bench-image")
start_daemon --supervise
sup=$DAEMON_PID
w1=$(children_of "$sup" | head -n 1); [ -n "$w1" ] || fail "no daemon child under the supervisor"
mkdir -p /mnt/fos
ero mount "$ERO_IN/$img" /mnt/fos --fsid fosup1 || fail "mount failed"

holder() { erofsd status --api-socket "$ERO_SOCK" | sed -n 's/^  "holder_pid": \([0-9]*\),\{0,1\}$/\1/p'; }
[ "$(holder)" = "$sup" ] || fail "the daemon does not name its supervisor $sup as holder"

kill -KILL "$sup"
wait "$sup" 2>/dev/null || true
i=0
while :; do
    sup2=$(holder)
    [ -n "$sup2" ] && [ "$sup2" != "$sup" ] && break
    i=$((i + 1)); [ $i -lt 100 ] || fail "no new supervisor 10 s after the kill"
    sleep 0.1
done
echo "supervisor $sup killed; daemon $w1 started supervisor $sup2"
# The daemon names the new supervisor as soon as it has started it; the supervisor says it
# adopted the daemon once it runs. Until then a SIGTERM (cleanup_daemon on a failure here)
# kills it before it blocks signals, and the daemon starts yet another one.
wait_for_line "$ERO_LOG" "guarding the running daemon (pid $w1)" 20 || fail "the new supervisor did not adopt $w1 within 20 s"
alive "$sup2" || fail "new supervisor $sup2 is not running"
[ "$(holder)" = "$sup2" ] || fail "the daemon now names $(holder) as holder, not the supervisor $sup2 it started"
DAEMON_PID=$sup2 # for cleanup_daemon on failure (SIGTERM works on a non-child)

failover_storm /mnt/fos "$img" "$sup2" "$w1"
w2=$FO_NEW
ero umount /mnt/fos || fail "umount of the recovered mount failed"

kill -TERM "$sup2"
i=0
while alive "$sup2" || alive "$w2"; do
    i=$((i + 1)); [ $i -lt 200 ] || fail "supervisor $sup2 / daemon $w2 still running 20 s after SIGTERM"
    sleep 0.1
done
DAEMON_PID=
echo "supervisor $sup2 and daemon $w2 stopped"
