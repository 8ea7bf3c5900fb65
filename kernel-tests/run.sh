#!/bin/bash
# Run the guest kernel tests in QEMU (TCG) on our own test kernels.
#
#   kernel-tests/run.sh [--kernel 6.12|6.1|all] [--suite NAME] [--timeout SECS] [--list]
#
#   --kernel   which kernel(s) to boot (default 6.12); `all` = 6.12 then 6.1
#   --suite    run only tests whose name starts with NAME (a comma-separated list of
#              prefixes is allowed: --suite cachefiles,erofs-loop)
#              (tests are kernel-tests/guest/tests/<name>.sh)
#   --timeout  wall-clock limit per boot in seconds (default 1500; TCG is slow: the 22 guest tests take 6–15 minutes)
#   --list     print the test names and exit
#
# Per kernel: build-kernel.sh VERSION (cached), build guest-bin static, make the test data
# and an ext4 data disk, pack an initramfs, boot, parse `KTEST PASS|FAIL name` markers.
# Ends with `N passed, N failed`; exit status 0 only if nothing failed and something passed.
# Work files (serial log, disk image, results copied out of the guest) stay in
# $KTEST_WORK/<version>-<pid>/ (default /dev/shm/erofsd-ktest with 8 GiB free there, else
# /var/tmp/erofsd-ktest; <version>-latest links to the
# newest) until a later run removes them.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${EROFSD_KERNEL_CACHE:-/var/cache/erofsd-kernels}"
# Default work root: RAM (/dev/shm) when it has room, so the guest's virtio disk is backed by
# memory. On a disk-backed image the host's shared disk made the guest benchmark swing by 2x
# between runs (even the daemon-free "remounted over warm cache files" row: 0.71x to 1.71x);
# from /dev/shm three runs gave native 4.10-4.35 s. Each kernel's image is at most 3 GB, deleted
# when its tests pass.
default_work=/var/tmp/erofsd-ktest
shm_free_kb=$(df --output=avail -k /dev/shm 2>/dev/null | tail -n 1 | tr -d ' ')
if [ "${shm_free_kb:-0}" -ge $((8 * 1024 * 1024)) ] 2>/dev/null; then default_work=/dev/shm/erofsd-ktest; fi
WORKROOT="${KTEST_WORK:-$default_work}"
# One target dir per checkout: cargo keys freshness by package path, and two checkouts sharing
# one dir each found their own build fresh while `release/erofsd` held the other's binary (a
# bench of one commit silently ran the other's daemon).
checkout_key=$(printf '%s' "$(cd "$HERE/.." && pwd -P)" | sha256sum | cut -c1-12)
GUEST_TARGET="${KTEST_TARGET_DIR:-$CACHE/ktest-guest-bin-target/$checkout_key}"
RUST_TARGET=x86_64-unknown-linux-gnu

die() { echo "run.sh: error: $*" >&2; exit 2; }

KERNELS=6.12
SUITE=""
BOOT_TIMEOUT=1500
LIST=0
while [ $# -gt 0 ]; do
    case "$1" in
        --kernel) KERNELS="${2:?--kernel needs a value}"; shift 2 ;;
        --suite) SUITE="${2:?--suite needs a value}"; shift 2 ;;
        --timeout) BOOT_TIMEOUT="${2:?--timeout needs a value}"; shift 2 ;;
        --list) LIST=1; shift ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
# One seed of random file shapes for every kernel of the run (erofsd-inputs.sh, erofsd-holes).
export EROFSD_SHAPES_SEED="${EROFSD_SHAPES_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
echo "== file shapes seed $EROFSD_SHAPES_SEED (replay: EROFSD_SHAPES_SEED=$EROFSD_SHAPES_SEED $0 --suite erofsd-holes)"
case "$KERNELS" in
    all) KERNELS="6.12 6.1" ;;
    6.12|6.1) ;;
    *) die "--kernel must be 6.12, 6.1 or all" ;;
esac

# --- select tests -------------------------------------------------------------------------
TESTS=()
for f in "$HERE"/guest/tests/*.sh; do
    name="$(basename "$f" .sh)"
    if [ -z "$SUITE" ]; then TESTS+=("$name"); continue; fi
    IFS=, read -ra prefixes <<<"$SUITE"
    for pre in "${prefixes[@]}"; do
        if [[ "$name" == "$pre"* ]]; then TESTS+=("$name"); break; fi
    done
done
[ "${#TESTS[@]}" -gt 0 ] || die "no test matches --suite '$SUITE' (try --list)"
if [ "$LIST" = 1 ]; then printf '%s\n' "${TESTS[@]}"; exit 0; fi

for tool in qemu-system-x86_64 busybox mkfs.erofs mkfs.ext4 debugfs cpio gzip cargo; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ -x /bin/busybox ] && file -L /bin/busybox | grep -q 'statically linked' \
    || die "/bin/busybox must be busybox-static"

# --- guest binaries: static, so the initramfs needs no libraries ----------------------------
# No musl target is installed offline; glibc with crt-static works for std programs.
# No debug info: it made the static erofsd 92 MB (initramfs size, guest memory, disk); symbol
# names stay, so a guest panic still prints a readable backtrace.
export CARGO_PROFILE_RELEASE_DEBUG=0
echo "== building guest binaries (static, $RUST_TARGET)"
( cd "$HERE/guest-bin" &&
  CARGO_TARGET_DIR="$GUEST_TARGET" RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --quiet --target "$RUST_TARGET" ) || die "guest-bin build failed"
GUEST_BIN_DIR="$GUEST_TARGET/$RUST_TARGET/release"
GUEST_BINS=(ktest-cachefiles ktest-nydus)
for b in "${GUEST_BINS[@]}"; do
    file "$GUEST_BIN_DIR/$b" | grep -q 'static' || die "$b is not statically linked"
done
# The real daemon and the tree checker for the erofsd-* tests (static too; both also run on
# the host: erofsd builds the images, ktest-tree writes the expected manifests).
echo "== building erofsd and ktest-tree (static, release)"
( cd "$HERE/.." &&
  CARGO_TARGET_DIR="$GUEST_TARGET" RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --quiet --target "$RUST_TARGET" --bin erofsd ) || die "erofsd build failed"
( cd "$HERE/tree-tool" &&
  CARGO_TARGET_DIR="$GUEST_TARGET" RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --release --quiet --target "$RUST_TARGET" ) || die "ktest-tree build failed"
EROFSD_BINS=(erofsd ktest-tree)
for b in "${EROFSD_BINS[@]}"; do
    file "$GUEST_BIN_DIR/$b" | grep -q 'static' || die "$b is not statically linked"
done

# --- test data (shared by all kernels of this run) -----------------------------------------
# A tree with edge cases for chunked EROFS: empty, sub-page, page-sized, chunk-sized and
# chunk-crossing files, a multi-MiB file, a sparse file, many small files, deep dirs, a symlink.
make_inputs() {
    local in="$1" tree="$2"
    rm -rf "$in" "$tree"; mkdir -p "$in" "$tree"
    (
        cd "$tree"
        : >empty
        echo "hello erofs" >small.txt
        head -c 4096 /dev/urandom >page.bin
        head -c 4097 /dev/urandom >page-plus-one.bin
        head -c 65536 /dev/urandom >chunk.bin
        head -c 65636 /dev/urandom >chunk-plus.bin
        head -c $((3 * 1024 * 1024 + 123)) /dev/urandom >big.bin
        truncate -s 1M sparse.bin
        mkdir -p dir/a/b/c dir/many
        echo "deep" >dir/a/b/c/deep.txt
        for i in $(seq -w 0 99); do head -c $((10#$i * 37 + 1)) /dev/urandom >"dir/many/file-$i"; done
        ln -s small.txt link-to-small
    )
    mkfs.erofs --chunksize=65536 --blobdev="$in/blob1" "$in/boot1.img" "$tree" >"$in/mkfs.log" 2>&1 \
        || { cat "$in/mkfs.log"; die "mkfs.erofs failed"; }
    (cd "$tree" && find . -type f | LC_ALL=C sort | xargs sha256sum) >"$in/manifest.sha256"
    (cd "$tree" && find . | LC_ALL=C sort) >"$in/paths.txt"
    # Images built by erofsd itself, with manifests (see erofsd-inputs.sh).
    "$HERE/erofsd-inputs.sh" "$in/erofsd" "$GUEST_BIN_DIR/erofsd" "$GUEST_BIN_DIR/ktest-tree" "$tree" \
        || die "erofsd test inputs failed"
    # nydus RAFS v6 fixture images for erofsd-nydus (see nydus-inputs.sh).
    "$HERE/nydus-inputs.sh" "$in/erofsd" "$GUEST_BIN_DIR/ktest-tree" || die "nydus test inputs failed"
}

# --- one boot -----------------------------------------------------------------------------
TOTAL_PASS=0
TOTAL_FAIL=0
SUMMARY=()

run_kernel() {
    # One work dir per invocation: several run.sh may run at once (other engineers, CI).
    local ver="$1" work="$WORKROOT/$1-$$"
    echo "== kernel $ver"
    local t0=$SECONDS
    "$HERE/build-kernel.sh" "$ver" || { record_all_fail "$ver" "kernel build failed"; return; }
    local kernel; kernel="$("$HERE/build-kernel.sh" --path "$ver")"
    echo "   kernel step: $((SECONDS - t0)) s"

    rm -rf "$work"; mkdir -p "$work"; ln -sfn "$(basename "$work")" "$WORKROOT/$ver-latest"
    mkdir -p "$work/data/in" "$work/data/cache" "$work/data/results" "$work/initramfs"
    make_inputs "$work/data/in" "$work/tree"

    # Data disk: inputs in, results out; the cachefiles cache dir must be on ext4.
    local disk="$work/disk.img"
    # Room for the inputs plus the cache files the tests fill (each image may be cached twice;
    # each test removes its cache at exit, see erofsd-lib.sh cleanup_daemon). The file is
    # sparse: unused room costs nothing.
    local disk_mb=$(( $(du -sm "$work/data" | cut -f1) * 3 + 1024 ))
    mkfs.ext4 -q -F -L ktest -d "$work/data" "$disk" "${disk_mb}M" >/dev/null || die "mkfs.ext4 failed"
    # The inputs now live in the disk image; CI machines are short of disk.
    rm -rf "$work/data"

    # Initramfs: busybox-static + /init + tests + guest binaries.
    local root="$work/initramfs"
    mkdir -p "$root/bin" "$root/dev" "$root/ktest/bin" "$root/ktest/tests"
    cp /bin/busybox "$root/bin/busybox"
    cp "$HERE/guest/init" "$root/init"; chmod 755 "$root/init"
    cp "$HERE/guest/lib.sh" "$root/ktest/lib.sh"
    for t in "${TESTS[@]}"; do cp "$HERE/guest/tests/$t.sh" "$root/ktest/tests/"; done
    printf '%s\n' "${TESTS[@]}" >"$root/ktest/tests.list"
    for b in "${GUEST_BINS[@]}" "${EROFSD_BINS[@]}"; do cp "$GUEST_BIN_DIR/$b" "$root/ktest/bin/"; done
    cp "$HERE/guest/erofsd-lib.sh" "$root/ktest/erofsd-lib.sh"
    mknod "$root/dev/console" c 5 1 2>/dev/null || true
    (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/initrd.gz"
    rm -rf "$root"

    local log="$work/serial.log" rc=0
    echo "   booting (log: $log, timeout ${BOOT_TIMEOUT}s) ..."
    local b0=$SECONDS
    # Two vCPUs, each on its own host thread (multi-threaded TCG); the kernel is SMP (fragment).
    timeout -k 10 "$BOOT_TIMEOUT" qemu-system-x86_64 -m 2048 -smp 2 -accel tcg,thread=multi -nographic -no-reboot \
        -kernel "$kernel" -initrd "$work/initrd.gz" \
        -append "console=ttyS0 panic=-1 quiet ktest.timeout=$((BOOT_TIMEOUT - 30))" \
        -drive "file=$disk,format=raw,if=virtio" </dev/null >"$log" 2>&1 || rc=$?
    local boot_secs=$((SECONDS - b0))
    # Drop CRs and the terminal escapes SeaBIOS/the console emit, so markers start lines.
    sed -E $'s/\r//g; s/\x1b(\\[[0-9;?]*[A-Za-z]|c)//g' "$log" >"$log.tmp" && mv "$log.tmp" "$log"

    # Copy the guest's results back out of the ext4 image (best effort, for inspection).
    debugfs -R "rdump /results $work" "$disk" >/dev/null 2>&1 || true

    local pass=0 fail=0 line
    for t in "${TESTS[@]}"; do
        if line="$(grep -m1 -E "^KTEST PASS $t( |\$)" "$log")"; then
            pass=$((pass + 1)); echo "   $ver: $line"
        elif line="$(grep -m1 -E "^KTEST FAIL $t( |\$)" "$log")"; then
            fail=$((fail + 1)); echo "   $ver: $line"
        else
            fail=$((fail + 1)); echo "   $ver: KTEST FAIL $t (no result: guest crashed, hung or timed out)"
        fi
    done
    local boot_ok=1
    if ! grep -q '^KTEST DONE' "$log"; then
        boot_ok=0
        fail=$((fail + 1))
        if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            echo "   $ver: KTEST FAIL guest-boot (qemu killed after ${BOOT_TIMEOUT}s)"
        else
            echo "   $ver: KTEST FAIL guest-boot (guest ended without KTEST DONE, qemu exit $rc)"
        fi
    fi
    if [ "$fail" -gt 0 ]; then
        echo "   ---- serial log tail ($log) ----"
        tail -n 40 "$log" | sed 's/^/   | /'
        echo "   ----"
    else
        # All passed: the serial log and results/ tell the story; the 3 GB disk image is only
        # worth keeping when something failed (debugfs can then read the guest's cache files).
        rm -f "$disk" "$work/initrd.gz"
    fi
    # Guest uptime when /init started: the kernel's own boot time under TCG.
    local up; up="$(sed -n 's/^.*KTEST BOOT .*uptime=\([0-9.]*\)s.*/\1/p' "$log" | head -n 1)"
    echo "   kernel boot ${up:-?} s (guest uptime at /init), qemu wall time ${boot_secs} s (qemu exit $rc)"
    SUMMARY+=("kernel $ver: $pass passed, $fail failed, kernel boot ${up:-?} s, qemu wall ${boot_secs} s")
    TOTAL_PASS=$((TOTAL_PASS + pass))
    TOTAL_FAIL=$((TOTAL_FAIL + fail))
}

record_all_fail() {
    echo "   $1: KTEST FAIL all (${2})"
    SUMMARY+=("kernel $1: 0 passed, ${#TESTS[@]} failed ($2)")
    TOTAL_FAIL=$((TOTAL_FAIL + ${#TESTS[@]}))
}

# Drop work dirs of earlier runs that have ended (VERSION-PID, PID no longer alive).
mkdir -p "$WORKROOT"
for d in "$WORKROOT"/*-[0-9]*; do
    [ -d "$d" ] && [ ! -L "$d" ] || continue
    pid="${d##*-}"
    kill -0 "$pid" 2>/dev/null || rm -rf "$d"
done

for v in $KERNELS; do run_kernel "$v"; done

echo "== summary"
printf '   %s\n' "${SUMMARY[@]}"
echo "$TOTAL_PASS passed, $TOTAL_FAIL failed"
[ "$TOTAL_FAIL" = 0 ] && [ "$TOTAL_PASS" -gt 0 ]
