# Failover of an image mounted by registry reference: Debian's docker-registry runs on the
# guest's loopback over storage the host pushed with `erofsd convert` (erofsd-inputs.sh), and
# `erofsd mount http://127.0.0.1:5000/erofsd/rootfs:conv` pulls only the bootstrap; every data
# byte comes by HTTP range request. The daemon (under --supervise) is SIGKILLed during a cold
# read storm; its successor must rebuild the registry source from the saved registration (the
# pulled image's source.json), answer the re-sent OPENs and go on fetching from the registry.
# Zero reader errors, every entry equal to `umoci unpack` of the source image.
# Needs the cachefiles failover support of Linux 6.8+ (or the 6.1.y/6.6.y backports).
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
REGISTRY_PID=
trap 'kill $REGISTRY_PID 2>/dev/null; cleanup_daemon' EXIT
start_registry

start_daemon --supervise
sup=$DAEMON_PID
w1=$(children_of "$sup" | head -n 1); [ -n "$w1" ] || fail "no daemon child under the supervisor"
mkdir -p /mnt/forg
ero mount http://127.0.0.1:5000/erofsd/rootfs:conv /mnt/forg || fail "mount by registry reference failed"
src=$(cat "$ERO_CACHE"/images/*/source.json 2>/dev/null | tr -d ' \n') || fail "no pulled image record under $ERO_CACHE/images"
echo "pulled image source: $src"
case $src in *127.0.0.1:5000*) ;; *) fail "the pulled image does not name the registry as its blob source" ;; esac
drop_caches

failover_storm /mnt/forg oci-conv "$sup" "$w1"
ero umount /mnt/forg || fail "umount of the recovered mount failed"
stop_daemon
