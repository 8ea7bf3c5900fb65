# Helpers sourced by the guest test scripts (busybox sh, run with -eu).

fail() { echo "FAIL: $*"; exit 1; }

# CPUs the guest kernel brought up.
online_cpus() { grep -c '^processor' /proc/cpuinfo; }

# verify_tree DIR: every regular file matches the host-made sha256 manifest, and the set of
# paths (files, dirs, symlinks) equals the host's list, and the symlink points where it should.
verify_tree() {
    dir=$1
    [ -s "$KTEST_IN/manifest.sha256" ] || fail "missing $KTEST_IN/manifest.sha256"
    (cd "$dir" && sha256sum -c -s "$KTEST_IN/manifest.sha256") || {
        (cd "$dir" && sha256sum -c "$KTEST_IN/manifest.sha256" 2>&1 | grep -v ': OK$' | head -n 10)
        fail "sha256 mismatch under $dir"
    }
    (cd "$dir" && find . | sort) >/tmp/paths.guest
    diff "$KTEST_IN/paths.txt" /tmp/paths.guest || fail "path list under $dir differs from the host tree"
    [ "$(readlink "$dir/link-to-small")" = "small.txt" ] || fail "symlink target wrong"
    echo "verified $(wc -l <"$KTEST_IN/manifest.sha256") files byte-exact, $(wc -l </tmp/paths.guest) paths under $dir"
}
