#!/bin/bash
# Run every test: the one command the README gives.
#
#   scripts/test.sh [--deps] [--no-qemu] [--no-fuzz] [-- CARGO_TEST_ARGS...]
#
#   --deps     install missing packages first (scripts/ci-deps.sh); implied when CI=true
#   --no-qemu  skip the QEMU guest tests (kernel-tests/run.sh); refused when CI=true
#   --no-fuzz  skip the bounded fuzz run (scripts/fuzz-erofs.sh); refused when CI=true
#
# Steps: deps, fixtures (scripts/make-fixtures.sh all; cached under /var/cache/erofsd-test),
# release build, `cargo test --workspace --release --no-fail-fast` (host kernel tests need
# root; under CI=true a test that cannot run FAILS instead of skipping), then
# kernel-tests/run.sh and scripts/fuzz-erofs.sh when they exist.
# Ends with one line `N passed, N failed` (tests, plus guest tests, plus 1 per fuzz run) and
# exits non-zero if anything failed or nothing ran.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
ci=false
[[ ${CI:-} && ${CI:-} != false && ${CI:-} != 0 ]] && ci=true
deps=$ci qemu=true fuzz=true
cargo_args=()
while (($#)); do
    case $1 in
        --deps) deps=true ;;
        --no-qemu) qemu=false ;;
        --no-fuzz) fuzz=false ;;
        --) shift; cargo_args=("$@"); break ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if $ci && { ! $qemu || ! $fuzz; }; then
    echo "test.sh: --no-qemu/--no-fuzz are not allowed when CI is set" >&2
    exit 2
fi

passed=0 failed=0 skipped=0
failures=()
log=$(mktemp -d /tmp/erofsd-test-log.XXXXXX)
# Tests append a line here when they skip (libtest hides a passing test's output).
export EROFSD_SKIP_LOG=$log/skips
: >"$EROFSD_SKIP_LOG"
step() { echo; echo "=== $* ==="; }
fail_step() { failed=$((failed + 1)); failures+=("$1"); echo "test.sh: FAILED: $1" >&2; }
# Free disk where the run writes: the clone's target/, /tmp, and the fixture and kernel caches.
# A run from a fresh machine peaks near $need_gib GiB (measured: 2.7 GiB target, 2 GiB fixtures,
# 1.5 GiB guest binaries, 3.4 GiB per kernel build before its trees are removed, test data);
# when less is free, say so first, so that a later "No space left on device" is not a mystery.
need_gib=12
disk_report() {
    mkdir -p /var/cache 2>/dev/null
    df -h --output=target,size,used,avail "$repo" /tmp /var/cache 2>/dev/null | awk '!seen[$0]++'
}

step "disk"
disk_report
avail_gib=$(( $(df --output=avail -k "$repo" | tail -1) / 1048576 ))
if ((avail_gib < need_gib)); then
    echo "test.sh: WARNING: only $avail_gib GiB free under $repo; a run from a fresh machine needs about $need_gib GiB" >&2
fi

if $deps; then
    step "dependencies (scripts/ci-deps.sh)"
    scripts/ci-deps.sh || { fail_step "scripts/ci-deps.sh"; }
fi

step "fixtures (scripts/make-fixtures.sh all)"
if [[ $(id -u) == 0 ]]; then
    scripts/make-fixtures.sh all >/dev/null || fail_step "fixtures"
elif $ci; then
    fail_step "fixtures need root (CI is set)"
else
    echo "test.sh: not root: fixtures that need root will be skipped by the tests (loudly)" >&2
fi

step "release build"
if ! cargo build --workspace --release --all-targets; then
    fail_step "cargo build --release"
    echo "$passed passed, $failed failed"
    exit 1
fi

step "cargo test --workspace --release"
cargo test --workspace --release --no-fail-fast "${cargo_args[@]}" 2>&1 | tee "$log/cargo-test.log"
rc=${PIPESTATUS[0]}
# `test result: ok. 12 passed; 0 failed; 0 ignored; ...` once per test binary.
while read -r p f; do
    passed=$((passed + p)); failed=$((failed + f))
done < <(sed -nE 's/^test result: [A-Za-z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$log/cargo-test.log")
skipped=$(wc -l <"$EROFSD_SKIP_LOG")
mapfile -t failed_tests < <(sed -nE 's/^test (.*) \.\.\. FAILED$/\1/p' "$log/cargo-test.log")
failures+=("${failed_tests[@]/#/cargo test: }")
if ((rc != 0)) && ! grep -q '^test result: FAILED' "$log/cargo-test.log"; then
    fail_step "cargo test exited $rc without a failing test (build error or crash?)"
fi

if $qemu; then
    if [[ -x kernel-tests/run.sh ]]; then
        step "QEMU guest tests (kernel-tests/run.sh --kernel all)"
        kernel-tests/run.sh --kernel all 2>&1 | tee "$log/qemu.log"
        rc=${PIPESTATUS[0]}
        summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$log/qemu.log" | tail -1)
        if [[ $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed ]]; then
            passed=$((passed + BASH_REMATCH[1])); failed=$((failed + BASH_REMATCH[2]))
            if ((BASH_REMATCH[2] > 0)); then
                mapfile -t guest_failed < <(grep -oE '[0-9.]+: KTEST FAIL [^ ]+' "$log/qemu.log" | sort -u)
                failures+=("${guest_failed[@]/#/kernel-tests }")
            fi
            ((rc != 0 && BASH_REMATCH[2] == 0)) && fail_step "kernel-tests/run.sh exited $rc"
        else
            fail_step "kernel-tests/run.sh (exit $rc, no summary line)"
        fi
    else
        echo "test.sh: kernel-tests/run.sh not present yet" >&2
        $ci && fail_step "kernel-tests/run.sh missing"
    fi
fi

if $fuzz; then
    if [[ -x scripts/fuzz-erofs.sh ]]; then
        step "bounded fuzz (scripts/fuzz-erofs.sh)"
        if scripts/fuzz-erofs.sh; then passed=$((passed + 1)); else fail_step "scripts/fuzz-erofs.sh"; fi
    else
        echo "test.sh: scripts/fuzz-erofs.sh not present yet" >&2
    fi
fi

step "disk at the end"
disk_report

echo
if ((skipped)); then
    echo "test.sh: $skipped test(s) SKIPPED for lack of root or kernel features (they fail under CI=true):"
    sed 's/^/  /' "$EROFSD_SKIP_LOG"
fi
if ((${#failures[@]})); then
    echo "test.sh: failures:"
    printf '  %s\n' "${failures[@]}"
fi
echo "logs: $log"
echo "$passed passed, $failed failed"
((failed == 0 && passed > 0))
