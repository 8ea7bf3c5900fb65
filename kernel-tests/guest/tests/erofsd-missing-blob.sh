# A missing blob is a clear error (at mount, or EIO at read if it vanishes later), and the
# daemon keeps serving its other images. (Blobs are shared by id across images, so the damaged
# images are mounted while no intact image with the same blob is.)
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/mb-ok /mnt/mb-missing /mnt/mb-gone
if ero mount "$ERO_IN/missing" /mnt/mb-missing --fsid mb-missing >"$KTEST_OUT/missing.txt" 2>&1; then
    fail "an image without its blob mounted"
fi
cat "$KTEST_OUT/missing.txt"
grep -q "not available" "$KTEST_OUT/missing.txt" || fail "the error does not say the blob is not available"
mounted /mnt/mb-missing && fail "failed mount left a mount behind"

# A blob that becomes unreadable after mount (truncated; a removed file would still be served
# through the daemon's open fd): reads of its data fail with EIO, never hang.
rm -rf /data/mb-gone; cp -a "$ERO_IN/one" /data/mb-gone
ero mount /data/mb-gone /mnt/mb-gone --fsid mb-gone || fail "mount of the copy failed"
for b in /data/mb-gone/blobs/*; do : >"$b"; done
ktest-tree expect-eio /mnt/mb-gone/data.bin "$ERO_IN/one-data.bin" || fail "reading data of a vanished blob did not give EIO"
[ "$(metric reads_failed)" -gt 0 ] || fail "no failed READ counted"
alive "$DAEMON_PID" || fail "daemon died"

# The daemon still serves other images.
ero mount "$ERO_IN/gen" /mnt/mb-ok --fsid mb-ok || fail "mount of a good image failed after the errors"
ktest-tree verify /mnt/mb-ok "$ERO_IN/gen.manifest" --xattrs || fail "the good image does not read right"
ero umount /mnt/mb-gone
ero umount /mnt/mb-ok
stop_daemon
