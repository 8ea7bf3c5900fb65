# erofsd serves a 128-layer image (`erofsd build --merge` of 128 layer directories on the host,
# one blob per layer) through /dev/cachefiles: the kernel opens the bootstrap and all 128 blob
# objects at mount, every entry (content and metadata) equals the host-made merged manifest,
# and umount closes every object.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/fs-many

blobs=$(ls "$ERO_IN/many/blobs" | wc -l)
[ "$blobs" = 128 ] || fail "the input image has $blobs blobs, not 128"
ero mount "$ERO_IN/many" /mnt/fs-many --fsid many1 || fail "mount of the 128-layer image failed"
mounted /mnt/fs-many || fail "/mnt/fs-many not in /proc/mounts"
objects=$(metric objects)
[ "$objects" = 129 ] || fail "$objects cachefiles objects open after mount, want 129 (the bootstrap and 128 blobs)"
ktest-tree verify /mnt/fs-many "$ERO_IN/many.manifest" --xattrs || fail "the 128-layer tree differs from the host's merged tree"
[ "$(cat /mnt/fs-many/common.txt)" = "layer 127" ] || fail "common.txt is not the last layer's"

ero status --mounts
reads=$(metric reads); failed=$(metric reads_failed); opens=$(metric opens)
echo "daemon: $opens OPENs, $reads READs, $failed failed"
[ "$opens" -ge 129 ] || fail "only $opens OPENs for 129 objects"
[ "$reads" -ge 128 ] || fail "only $reads READs: not every blob was read through cachefiles"
[ "$failed" = 0 ] || fail "$failed READs failed"
[ "$(metric opens_rejected)" = 0 ] || fail "the daemon rejected an OPEN"

ero umount /mnt/fs-many || fail "umount of the 128-layer image failed"
mounted /mnt/fs-many && fail "/mnt/fs-many still mounted after erofsd umount"
[ "$(metric objects)" = 0 ] || fail "objects left open after umount"
stop_daemon
