# Cache eviction through cachefiles: `erofsd cache ls` lists the kernel's cache objects,
# `erofsd cache gc` culls (inuse/cull on /dev/cachefiles) only objects no mount has open,
# empties the graveyard, and a culled blob is fetched again, byte-exact.
# (A new object is an unlinked tmpfile until the kernel commits it at withdrawal, so objects
# appear in the listing from the first umount on.)
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/cull
objects() { grep -c '"kind": "cachefiles-object"' "$1" || true; }

ero mount "$ERO_IN/gen" /mnt/cull --fsid cull1 || fail "mount failed"
ktest-tree verify /mnt/cull "$ERO_IN/gen.manifest" --xattrs || fail "cold read differs"
echo "cold pass: $(metric reads) READs"
ero umount /mnt/cull || fail "umount failed"
ero cache ls --json >/tmp/ls0.json || fail "cache ls failed"
n=$(objects /tmp/ls0.json)
echo "unmounted: $n cache object(s)"
[ "$n" -ge 2 ] || { cat /tmp/ls0.json; find "$ERO_CACHE" | head -30; fail "expected the bootstrap and blob objects, got $n"; }
grep -q '"in_use": true' /tmp/ls0.json && { cat /tmp/ls0.json; fail "objects of an unmounted image listed in use"; }

# Warm remount: the same objects, now open: all in use, and gc with limit 0 takes none.
ero mount "$ERO_IN/gen" /mnt/cull --fsid cull1 || fail "warm mount failed"
ktest-tree verify /mnt/cull "$ERO_IN/gen.manifest" --xattrs || fail "warm read differs"
ero cache ls --json >/tmp/ls1.json || fail "cache ls failed"
busy=$(grep -c '"in_use": true' /tmp/ls1.json || true)
echo "mounted: $(objects /tmp/ls1.json) object(s), $busy in use"
ero cache ls || fail "cache ls (text) failed"
[ "$busy" = "$n" ] || { cat /tmp/ls1.json; fail "objects of a mounted image not all in use ($busy of $n)"; }
ero cache gc --max-size 0 --json >/tmp/gc1.json || { cat /tmp/gc1.json; fail "cache gc failed"; }
grep -q '"evicted": \[\]' /tmp/gc1.json || { cat /tmp/gc1.json; fail "gc evicted objects of a mounted image"; }
drop_caches
ktest-tree verify /mnt/cull "$ERO_IN/gen.manifest" --xattrs || fail "read after gc differs"
ero umount /mnt/cull || fail "umount failed"

# Unmounted: every object is culled (retried: the kernel may let go of them a moment later).
i=0
while :; do
    ero cache gc --max-size 0 --json >/tmp/gc2.json || { cat /tmp/gc2.json; fail "cache gc failed"; }
    ero cache ls --json >/tmp/ls2.json || fail "cache ls failed"
    left=$(objects /tmp/ls2.json)
    [ "$left" = 0 ] && break
    i=$((i + 1))
    [ $i -lt 20 ] || { cat /tmp/gc2.json /tmp/ls2.json; fail "$left object(s) left after gc of an unmounted image"; }
    sleep 0.5
done
echo "unmounted: all $n object(s) culled after $((i + 1)) pass(es)"
[ -z "$(ls -A "$ERO_CACHE/cachefiles/graveyard" 2>/dev/null)" ] || { ls -la "$ERO_CACHE/cachefiles/graveyard"; fail "graveyard not emptied"; }

# Mounted again: the culled data is fetched again and byte-exact.
before=$(metric reads)
ero mount "$ERO_IN/gen" /mnt/cull --fsid cull1 || fail "mount after cull failed"
drop_caches
ktest-tree verify /mnt/cull "$ERO_IN/gen.manifest" --xattrs || fail "read after cull differs"
again=$(( $(metric reads) - before ))
echo "after cull: $again READs"
[ "$again" -gt 0 ] || fail "no READ after the cache was culled (served from where?)"
ero umount /mnt/cull || fail "umount failed"
stop_daemon

# The daemon's size limit: with 64 KiB, an umount leaves nothing cached (both objects are larger
# and no longer in use); the next mount is served byte-exact again.
restart_daemon --cache-max-size 64K
ero mount "$ERO_IN/gen" /mnt/cull --fsid cull1 || fail "mount under a size limit failed"
ktest-tree verify /mnt/cull "$ERO_IN/gen.manifest" --xattrs || fail "read under a size limit differs"
ero umount /mnt/cull || fail "umount failed"
i=0
while :; do
    ero cache ls --json >/tmp/ls3.json || fail "cache ls failed"
    left=$(objects /tmp/ls3.json)
    [ "$left" = 0 ] && break
    i=$((i + 1))
    [ $i -lt 40 ] || { cat /tmp/ls3.json; tail -n 20 "$ERO_LOG"; fail "size limit: $left object(s) still cached"; }
    sleep 0.5
done
echo "size limit 64K: cache emptied $((i / 2)) s after umount"
grep -q "cache gc: evicted" "$ERO_LOG" || fail "no eviction logged"
ero mount "$ERO_IN/gen" /mnt/cull --fsid cull1 || fail "mount after eviction failed"
ktest-tree verify /mnt/cull "$ERO_IN/gen.manifest" --xattrs || fail "read after eviction differs"
ero umount /mnt/cull || fail "umount failed"
stop_daemon
