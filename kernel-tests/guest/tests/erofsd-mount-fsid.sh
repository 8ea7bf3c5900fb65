# erofsd serves images built by `erofsd build` through /dev/cachefiles: mounted with fsid=
# (explicit, and the default image id), every entry's content and metadata (type, mode, owner,
# nlink, size, sha256, link target, rdev, xattrs) must equal the host-made manifest.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/fs-alltypes /mnt/fs-gen /mnt/fs-rootfs

ero mount "$ERO_IN/alltypes" /mnt/fs-alltypes --fsid alltypes1 || fail "mount of alltypes failed"
mounted /mnt/fs-alltypes || fail "/mnt/fs-alltypes not in /proc/mounts"
grep " /mnt/fs-alltypes erofs " /proc/mounts | grep -q "fsid=alltypes1" || fail "mount options lack fsid=alltypes1"
ktest-tree verify /mnt/fs-alltypes "$ERO_IN/alltypes.manifest" --xattrs || fail "alltypes differs from the host tree"

ero mount "$ERO_IN/gen" /mnt/fs-gen || fail "mount of gen (default fsid) failed"
ktest-tree verify /mnt/fs-gen "$ERO_IN/gen.manifest" --xattrs || fail "gen differs from the host tree"

if [ -d "$ERO_IN/rootfs" ]; then
    ero mount "$ERO_IN/rootfs" /mnt/fs-rootfs --fsid rootfs1 || fail "mount of rootfs failed"
    ktest-tree verify /mnt/fs-rootfs "$ERO_IN/rootfs.manifest" --xattrs || fail "rootfs differs from the host tree"
    ero umount /mnt/fs-rootfs || fail "umount rootfs failed"
else
    echo "NOTE: no debootstrap rootfs among the inputs; alltypes and gen only"
fi

ero status --mounts
reads=$(metric reads); failed=$(metric reads_failed); opens=$(metric opens)
echo "daemon: $opens OPENs, $reads READs, $failed failed"
[ "$reads" -gt 0 ] || fail "no READ reached the daemon: data did not come through cachefiles"
[ "$failed" = 0 ] || fail "$failed READs failed"
[ "$(metric opens_rejected)" = 0 ] || fail "the daemon rejected an OPEN"

ero umount /mnt/fs-alltypes || fail "umount alltypes failed"
ero umount /mnt/fs-gen || fail "umount gen failed"
mounted /mnt/fs-alltypes && fail "alltypes still mounted after erofsd umount"
[ "$(metric closes)" -gt 0 ] || fail "no CLOSE after umount"
[ "$(metric objects)" = 0 ] || fail "objects left open after every umount"
[ -d "$ERO_CACHE/cachefiles/cache/Ierofs,alltypes1" ] || fail "no cache volume Ierofs,alltypes1"
stop_daemon
