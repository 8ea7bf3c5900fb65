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

# alive PID: running, not a zombie. (`kill -0` succeeds on a zombie, and PID 1 here reaps no
# orphans, so a dead daemon whose parent died stays a zombie for the rest of the boot.)
alive() { [ -r "/proc/$1/stat" ] && ! grep -q ') Z ' "/proc/$1/stat" 2>/dev/null; }

# wait_for_line FILE PATTERN SECS: until FILE has a line matching PATTERN (grep BRE), at most
# SECS seconds. For lines another process writes after an event the test has already seen
# (a new supervisor says it adopted the daemon after the daemon already names it as holder).
wait_for_line() {
    wl_i=0
    until grep -q "$2" "$1" 2>/dev/null; do
        wl_i=$((wl_i + 1)); [ $wl_i -lt $(($3 * 10)) ] || return 1
        sleep 0.1
    done
}
