# Zero runs and holes through cachefiles: EROFS over fscache zero-fills the rest of a read that
# starts in an interior hole (a hole with data after it), so an image that has them would read
# the data after them as zeros. Every image here must read right, byte for byte:
#   shapes-zstd, shapes-lz4, shapes-none  `erofsd build` of the fixed and seeded random shapes
#                                          (tests/common/shapes.rs; the seed is in run.sh's output)
#   shapes-conv                            the same tree through `erofsd convert` (umoci layer)
#   old-holes                              the interior-hole fixture of the previous builder
#                                          (served through the daemon's zero-extent bootstrap)
# read in random order first (ktest-tree randread: shuffled pieces of random size, cold page
# cache), then sequentially (ktest-tree readers), and for shapes-zstd and old-holes with dd bs=1M.
# A mkfs.erofs --blobdev image of the shapes is refused by `erofsd mount` (no erofsd blob table;
# erofs-utils 1.5 stores zero chunks as data, so it has no interior hole of its own).
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon

check_image() { # NAME MOUNT_SOURCE MANIFEST [dd]
    name=$1 src=$2 man=$3 dd=${4:-} mnt=/mnt/holes-$1
    mkdir -p "$mnt"
    ero mount "$src" "$mnt" || fail "$name: mount failed"
    drop_caches
    ktest-tree randread "$mnt" "$man" --seed "$(cat "$ERO_IN/shapes.seed")" || fail "$name: random-order reads differ from the source"
    drop_caches
    ktest-tree readers "$mnt" "$man" --threads 2 || fail "$name: sequential reads differ from the source"
    n=0
    if [ -n "$dd" ]; then
        drop_caches
        while IFS="$(printf '\t')" read -r path type _ _ _ _ size sha _; do
            [ "$type" = f ] || continue
            got=$(dd if="$mnt/$path" bs=1M 2>/dev/null | sha256sum | cut -d' ' -f1)
            [ "$got" = "$sha" ] || fail "$name: dd bs=1M of $path gives sha256 $got, want $sha (size $size)"
            n=$((n + 1))
        done <"$man"
    fi
    echo "$name: every file equal by randread and readers${dd:+, $n by dd bs=1M}"
    ero umount "$mnt" || fail "$name: umount failed"
}

check_image shapes-zstd "$ERO_IN/shapes-zstd" "$ERO_IN/shapes.manifest" dd
check_image shapes-lz4 "$ERO_IN/shapes-lz4" "$ERO_IN/shapes.manifest"
check_image shapes-none "$ERO_IN/shapes-none" "$ERO_IN/shapes.manifest"
[ -d "$ERO_IN/shapes-conv" ] || fail "no converted shapes layout among the inputs (the host lacked umoci)"
check_image shapes-conv "oci:$ERO_IN/shapes-conv:conv" "$ERO_IN/shapes.manifest"
erofsd check "$ERO_IN/old-holes" >/tmp/old-holes.check 2>&1 || { cat /tmp/old-holes.check; fail "erofsd check of the old fixture failed"; }
grep -q "interior holes" /tmp/old-holes.check || { cat /tmp/old-holes.check; fail "erofsd check did not report the old fixture's interior holes"; }
check_image old-holes "$ERO_IN/old-holes" "$ERO_IN/old-holes.manifest" dd
grep -q "point at a zero extent" "$ERO_LOG" || fail "the daemon did not say it redirected the old fixture's interior holes"

# mkfs.erofs --blobdev: refused (not an erofsd image), and nothing is left mounted.
mkdir -p /mnt/holes-mkfs
if ero mount "$ERO_IN/shapes-mkfs" /mnt/holes-mkfs >/tmp/mkfs-mount.log 2>&1; then
    fail "erofsd mount served a mkfs.erofs --blobdev image it has no blob table for"
fi
grep -q "no erofsd blob table" /tmp/mkfs-mount.log || { cat /tmp/mkfs-mount.log; fail "the refusal does not say why"; }
mounted /mnt/holes-mkfs && fail "a refused mount is left mounted"

reads=$(metric reads); failed=$(metric reads_failed)
echo "daemon: $reads READs, $failed failed"
[ "$reads" -gt 0 ] || fail "no READ reached the daemon"
[ "$failed" = 0 ] || fail "$failed READs failed"
stop_daemon
