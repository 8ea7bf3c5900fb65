# erofsd serves nydus RAFS v6 images (built by nydus-image: dir-zstd, dir-lz4_block,
# targz-rafs, and targz-ref = zran: the original gzip layer as data blob; inputs from
# kernel-tests/nydus-inputs.sh) through /dev/cachefiles: each mounted
# with an fsid must equal the source tree's host-made manifest (type, mode, owner, nlink,
# size, sha256, link target, rdev, xattrs), with every READ answered.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
[ -f "$ERO_IN/nydus.manifest" ] || fail "no nydus inputs (kernel-tests/nydus-inputs.sh found no fixtures)"
start_daemon
for name in dir-zstd dir-lz4_block targz-rafs targz-ref; do
    mkdir -p "/mnt/nydus-$name"
    ero mount "$ERO_IN/nydus-$name" "/mnt/nydus-$name" --fsid "nydus-$name" || fail "mount of nydus $name failed"
    mounted "/mnt/nydus-$name" || fail "/mnt/nydus-$name not in /proc/mounts"
    drop_caches
    ktest-tree verify "/mnt/nydus-$name" "$ERO_IN/nydus.manifest" --xattrs || fail "nydus $name differs from the source tree"
done
ero status --mounts
reads=$(metric reads); failed=$(metric reads_failed)
echo "daemon: $reads READs, $failed failed"
[ "$reads" -gt 0 ] || fail "no READ reached the daemon: data did not come through cachefiles"
[ "$failed" = 0 ] || fail "$failed READs failed"
[ "$(metric opens_rejected)" = 0 ] || fail "the daemon rejected an OPEN"
for name in dir-zstd dir-lz4_block targz-rafs targz-ref; do
    ero umount "/mnt/nydus-$name" || fail "umount nydus $name failed"
done
[ "$(metric objects)" = 0 ] || fail "objects left open after every umount"
stop_daemon
