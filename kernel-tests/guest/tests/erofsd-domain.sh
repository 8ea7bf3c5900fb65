# Shared domain: two images (l1, l2) whose first layer is the same blob, mounted with one
# domain_id, share that blob's cache object (one OPEN for it); both trees read back exact; one
# stays readable after the other is unmounted.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/dom-l1 /mnt/dom-l2
ero mount "$ERO_IN/l1" /mnt/dom-l1 --domain-id dom1 || fail "mount l1 in domain dom1 failed"
ero mount "$ERO_IN/l2" /mnt/dom-l2 --domain-id dom1 || fail "mount l2 in domain dom1 failed"
grep " /mnt/dom-l1 erofs " /proc/mounts | grep -q "domain_id=dom1" || fail "mount options lack domain_id=dom1"
ktest-tree verify /mnt/dom-l1 "$ERO_IN/l1.manifest" --xattrs || fail "l1 differs"
ktest-tree verify /mnt/dom-l2 "$ERO_IN/l2.manifest" --xattrs || fail "l2 differs"
blobs=$(cat "$ERO_IN/l-blob-count")
opens=$(metric opens)
echo "OPENs: $opens (2 bootstraps + $blobs distinct blobs)"
[ "$opens" = $((2 + blobs)) ] || fail "expected $((2 + blobs)) OPENs (shared blob opened once), saw $opens"
[ -d "$ERO_CACHE/cachefiles/cache/Ierofs,dom1" ] || fail "no shared volume Ierofs,dom1"
ero umount /mnt/dom-l1 || fail "umount l1 failed"
drop_caches
ktest-tree verify /mnt/dom-l2 "$ERO_IN/l2.manifest" --xattrs || fail "l2 unreadable after l1 left the domain"
[ "$(metric reads_failed)" = 0 ] || fail "READs failed"
ero umount /mnt/dom-l2 || fail "umount l2 failed"
stop_daemon
