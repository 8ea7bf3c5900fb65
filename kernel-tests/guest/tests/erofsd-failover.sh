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
w1=$(children_of "$sup" | head -n 1); [ -n "$w1" ] || fail "no daemon child under the supervisor"
echo "supervisor $sup, daemon $w1"
mkdir -p /mnt/fo
ero mount "$ERO_IN/$img" /mnt/fo --fsid failover1 || fail "mount failed"
wait_for_line "$ERO_LOG" "holding cachefiles" 10 || fail "the supervisor does not hold the device fd"

failover_storm /mnt/fo "$img" "$sup" "$w1"
ero umount /mnt/fo || fail "umount of the recovered mount failed"
stop_daemon
