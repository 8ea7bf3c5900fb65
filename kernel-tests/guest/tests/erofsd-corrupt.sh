# A corrupted group (bytes flipped inside the stored blob) fails its CRC: the reader gets EIO,
# and every byte it got before the error is right. The daemon keeps serving other images.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
start_daemon
mkdir -p /mnt/cr-good /mnt/cr-bad
ero mount "$ERO_IN/corrupt" /mnt/cr-bad --fsid cr-bad || fail "mount corrupt failed"
ktest-tree expect-eio /mnt/cr-bad/data.bin "$ERO_IN/one-data.bin" || fail "corrupted data did not give EIO"
# Again: a failed group is never cached as if it were good.
ktest-tree expect-eio /mnt/cr-bad/data.bin "$ERO_IN/one-data.bin" || fail "second read of corrupted data did not give EIO"
[ "$(metric reads_failed)" -gt 0 ] || fail "no failed READ counted"
grep -qE "CRC32 mismatch|zstd frame does not decode|decoded to" "$ERO_LOG" || fail "the daemon log does not name the verification failure"
ero mount "$ERO_IN/gen" /mnt/cr-good --fsid cr-good || fail "mount of a good image failed"
ktest-tree verify /mnt/cr-good "$ERO_IN/gen.manifest" --xattrs || fail "good image differs"
ero umount /mnt/cr-bad; ero umount /mnt/cr-good
stop_daemon
