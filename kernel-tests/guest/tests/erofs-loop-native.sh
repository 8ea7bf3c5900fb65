# (c) Native EROFS: the same host-made image (bootstrap + external blob device) mounted from
# loop devices reads back byte-exact.
. /ktest/lib.sh
MNT=/mnt/native
mkdir -p "$MNT"
L1=$(losetup -f); losetup -r "$L1" "$KTEST_IN/boot1.img"
L2=$(losetup -f); losetup -r "$L2" "$KTEST_IN/blob1"
echo "bootstrap on $L1, blob on $L2"
mount -t erofs -o ro,device="$L2" "$L1" "$MNT" || fail "native erofs mount failed"
verify_tree "$MNT"
umount "$MNT"
losetup -d "$L1"; losetup -d "$L2"
