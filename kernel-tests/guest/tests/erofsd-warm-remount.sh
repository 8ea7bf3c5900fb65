# Unmount and mount again over the warm cache (and restart the daemon in between): data read
# before is served by the kernel from the cache files: zero READs reach the daemon.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/warm
ero mount "$ERO_IN/gen" /mnt/warm --fsid warm1 || fail "mount failed"
ktest-tree verify /mnt/warm "$ERO_IN/gen.manifest" --xattrs || fail "cold read differs"
cold=$(metric reads)
echo "cold pass: $cold READs"
[ "$cold" -gt 0 ] || fail "cold pass made no READ"
ero umount /mnt/warm || fail "umount failed"
ero mount "$ERO_IN/gen" /mnt/warm --fsid warm1 || fail "remount failed"
ktest-tree verify /mnt/warm "$ERO_IN/gen.manifest" --xattrs || fail "warm read differs"
warm=$(( $(metric reads) - cold ))
echo "warm pass after remount: $warm READs"
[ "$warm" = 0 ] || fail "$warm READs for data already in the cache"
ero umount /mnt/warm || fail "umount failed"
stop_daemon

# A new daemon over the same cache directory: still nothing to fetch.
restart_daemon
ero mount "$ERO_IN/gen" /mnt/warm --fsid warm1 || fail "mount after daemon restart failed"
ktest-tree verify /mnt/warm "$ERO_IN/gen.manifest" --xattrs || fail "read after restart differs"
r=$(metric reads)
echo "after daemon restart: $r READs"
[ "$r" = 0 ] || fail "$r READs after a daemon restart over a warm cache"
ero umount /mnt/warm
stop_daemon
