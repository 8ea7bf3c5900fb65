# erofsd invoked as `nydusd` (a symlink) with nydus-snapshotter's command line, driven with the
# snapshotter's exact call sequence (pkg/daemon, pkg/filesystem; docs/protocols/nydus-compat.md
# Part B): start, wait RUNNING, hold an idle liveness connection, PUT /api/v2/blobs (the
# snapshotter's fscache BlobCacheEntry), mount -t erofs -o domain_id=…,fsid=… by ourselves,
# byte-exact read, metrics with underlying_files, DELETE (unbind) before umount, umount, DELETE
# ?blob_id (cull), the tolerated not-found text on a second unbind; then a shared domain.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
ROOT=/data/nydus-root-$KTEST_NAME
rm -rf "$ROOT"; mkdir -p "$ROOT/socket/d1" "$ROOT/logs/d1" /run
ln -sf /ktest/bin/erofsd /run/nydusd
API=$ROOT/socket/d1/api.sock
req() { ktest-nydus req "$API" "$@"; }
fscache_id() { printf 'nydus-snapshot-%s' "$1" | sha256sum | cut -d' ' -f1; }
body() { # FSID DOMAIN BOOTSTRAP WORKDIR
    printf '{"type":"bootstrap","id":"%s","domain_id":"%s","config":{"id":"%s","backend_type":"registry","backend_config":{"host":"registry.example","repo":"library/app","scheme":"https","timeout":5,"connect_timeout":5,"retry_limit":2},"cache_type":"fscache","cache_config":{"work_dir":"%s"},"prefetch_config":{"enable":false,"threads_count":4,"merging_size":0,"bandwidth_rate":0,"prefetch_all":false},"metadata_path":"%s"}}' \
        "$1" "$2" "$1" "$4" "$3"
}

commit=$(/run/nydusd --version | sed -n 's/^Git Commit:[[:space:]]*//p')
[ -n "$commit" ] || fail "--version has no Git Commit line"
/run/nydusd singleton --fscache "$ROOT/cache" --id d1 --apisock "$API" --log-level info \
    --log-file "$ROOT/logs/d1/nydusd.log" >>"$ERO_LOG" 2>&1 &
DAEMON_PID=$!
i=0; until [ -S "$API" ]; do i=$((i + 1)); [ $i -lt 100 ] || fail "api.sock not there after 10 s"; sleep 0.1; done
ktest-nydus wait-state "$API" RUNNING 2 || { tail -n 20 "$ROOT/logs/d1/nydusd.log"; fail "not RUNNING within 2 s"; }
ktest-nydus watch "$API" /run/watch-$KTEST_NAME &
watch=$!
req GET /api/v1/daemon | grep -q "\"git_commit\":\"$commit\"" || fail "API git_commit differs from --version's $commit"

snap=11
F=$(fscache_id $snap)
work=$ROOT/snapshots/$snap/fs
mnt=/mnt/ny-snap-$snap   # under /mnt: cleanup_daemon unmounts it if the test fails
mkdir -p "$work" "$mnt"
req PUT /api/v2/blobs "$(body "$F" "$F" "$ERO_IN/gen/image.boot" "$work")" || fail "PUT /api/v2/blobs failed"
ktest-nydus wait-state "$API" RUNNING 2 || fail "not RUNNING before mount"
mount -t erofs -o "domain_id=$F,fsid=$F" none "$mnt" || fail "mount -t erofs -o domain_id=$F,fsid=$F failed"
drop_caches
ktest-tree verify "$mnt" "$ERO_IN/gen.manifest" --xattrs || fail "gen differs through the nydusd bind"
m=$(req GET "/api/v1/metrics/blobcache?id=%2F$F") || fail "metrics/blobcache failed"
echo "$m" | grep -q '"underlying_files":\["' || fail "underlying_files empty: $m"
req PUT "/api/v1/config?id=%2F$snap" '{"registry_auth":"dXNlcjpwYXNz"}' || fail "PUT /api/v1/config failed"
# unmount: DELETE before umount (open objects stay served), umount, cull the bootstrap.
req DELETE "/api/v2/blobs?domain_id=$F" || fail "unbind failed"
ktest-tree verify "$mnt" "$ERO_IN/gen.manifest" --xattrs || fail "mount unreadable after unbind (open objects must stay served)"
umount "$mnt" || fail "umount failed"
req DELETE "/api/v2/blobs?blob_id=$F" || fail "cull of the bootstrap object failed"
out=$(req DELETE "/api/v2/blobs?domain_id=$F") && fail "second unbind succeeded: $out"
echo "$out" | grep -q "blob_cache: cache entry not found" || fail "second unbind lacks the not-found text: $out"

# Shared domain: two snapshots, one domain, unbound and unmounted one at a time.
F1=$(fscache_id 21); F2=$(fscache_id 22)
for f in "$F1" "$F2"; do mkdir -p "/mnt/ny-$f"; done
req PUT /api/v2/blobs "$(body "$F1" shared "$ERO_IN/l1/image.boot" "$work")" || fail "bind l1 failed"
req PUT /api/v2/blobs "$(body "$F2" shared "$ERO_IN/l2/image.boot" "$work")" || fail "bind l2 failed"
mount -t erofs -o "domain_id=shared,fsid=$F1" none "/mnt/ny-$F1" || fail "mount l1 failed"
mount -t erofs -o "domain_id=shared,fsid=$F2" none "/mnt/ny-$F2" || fail "mount l2 failed"
ktest-tree verify "/mnt/ny-$F1" "$ERO_IN/l1.manifest" --xattrs || fail "l1 differs"
req DELETE "/api/v2/blobs?domain_id=shared&blob_id=$F1" || fail "unbind l1 failed"
umount "/mnt/ny-$F1" || fail "umount l1 failed"
drop_caches
ktest-tree verify "/mnt/ny-$F2" "$ERO_IN/l2.manifest" --xattrs || fail "l2 unreadable after l1 left the domain"
req DELETE "/api/v2/blobs?domain_id=shared&blob_id=$F2" || fail "unbind l2 failed"
umount "/mnt/ny-$F2" || fail "umount l2 failed"
req DELETE "/api/v2/blobs?blob_id=$F1" || fail "cull l1 bootstrap failed"
[ ! -e /run/watch-$KTEST_NAME ] || fail "the idle liveness connection was closed: $(cat /run/watch-$KTEST_NAME)"
kill -TERM "$DAEMON_PID"; wait "$DAEMON_PID" || fail "nydusd exited non-zero on SIGTERM"
wait $watch
grep -q HUP /run/watch-$KTEST_NAME || fail "no hang-up seen on the liveness connection after exit"
