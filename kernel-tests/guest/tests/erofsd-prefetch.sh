# Background prefetch of whole blobs over cachefiles (erofsd mount --prefetch blobs): once it is
# done every range is in the cache files, so reading the whole tree sends no READ to the daemon,
# and the data is exact.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/pf
ero mount "$ERO_IN/gen" /mnt/pf --fsid pf1 --prefetch blobs || fail "mount failed"
i=0
until erofsd status --metrics --api-socket "$ERO_SOCK" >/tmp/pf.json && grep -q '"done": true' /tmp/pf.json; do
    i=$((i + 1))
    [ $i -lt 1200 ] || { cat /tmp/pf.json; fail "prefetch not done after 120 s"; }
    sleep 0.1
done
grep -q '"errors": 0' /tmp/pf.json || { cat /tmp/pf.json; fail "prefetch errors"; }
grep '"prefetch_groups"' /tmp/pf.json | head -n 3
before=$(metric reads)
ktest-tree verify /mnt/pf "$ERO_IN/gen.manifest" --xattrs || fail "tree differs after prefetch"
during=$(( $(metric reads) - before ))
echo "prefetch done after $((i / 10)) s; READs before the read pass: $before, during it: $during"
[ "$during" = 0 ] || fail "$during READs reached the daemon for data the prefetch had filled"
ero umount /mnt/pf || fail "umount failed"
stop_daemon
