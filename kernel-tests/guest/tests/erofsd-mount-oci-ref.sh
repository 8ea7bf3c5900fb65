# `erofsd mount oci:DIR:tag`: an image converted by `erofsd convert` into an OCI layout is
# mounted by reference through cachefiles. The daemon pulls the bootstrap layer out of the
# layout into its cache (images/<manifest>/image.boot + source.json) and serves the blobs from
# the layout's blobs/sha256/. Every entry must equal `umoci unpack` of the source image (three
# layers with whiteouts and opaque directories, merged by convert).
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
[ -d "$ERO_IN/oci-conv" ] || fail "no converted OCI layout among the inputs (the host lacked the oci fixture: debootstrap + umoci)"
start_daemon
mkdir -p /mnt/fs-ociref
ero mount "oci:$ERO_IN/oci-conv:conv" /mnt/fs-ociref || fail "mount by oci: reference failed"
ktest-tree verify /mnt/fs-ociref "$ERO_IN/oci-conv.manifest" --xattrs || fail "the mount differs from umoci unpack of the source"
ls "$ERO_CACHE"/images/*/source.json >/dev/null 2>&1 || fail "no pulled image record under $ERO_CACHE/images"
reads=$(metric reads); failed=$(metric reads_failed)
echo "daemon: $reads READs, $failed failed"
[ "$reads" -gt 0 ] || fail "no READ reached the daemon"
[ "$failed" = 0 ] || fail "$failed READs failed"
ero umount /mnt/fs-ociref || fail "umount failed"
stop_daemon
