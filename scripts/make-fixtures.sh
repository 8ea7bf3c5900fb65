#!/bin/bash
# Build (or find cached) test fixtures and print each one's directory.
#
#   scripts/make-fixtures.sh NAME...     NAME: alltypes alltypes-compat rootfs oci badtars | all
#
# Fixtures live OUTSIDE the repo, under $EROFSD_FIXTURE_CACHE (default /var/cache/erofsd-test),
# in NAME-KEY/ where KEY hashes the generator scripts (and the fixtures a fixture is made from),
# so editing a generator rebuilds exactly what depends on it. A finished fixture has a `.done`
# marker; a half-built one (crash, ^C) is thrown away and rebuilt. Concurrent callers (tests
# run in parallel) serialise on a per-fixture lock. Logs go to stderr; stdout is only paths.
#
#   alltypes         NAME-KEY/tree: every file type, xattr, owner, name and size edge (needs root)
#   alltypes-compat  the same with names capped at 200 bytes (mkfs.erofs 1.5 fails on 255)
#   rootfs           NAME-KEY/tree + rootfs.tar: debootstrap bookworm minbase + python3
#   oci              NAME-KEY/{layout,layers/N.tar[.gz],final/rootfs}: see fixtures/oci.sh
#   badtars          NAME-KEY/*.tar: hostile layer tars, see fixtures/badtars.py
#   pystack          NAME-KEY/layout (tag app): a >1 GB Python application stack image, see
#                    fixtures/pystack.sh (scripts/bench-containers.sh only; not in `all`)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
gen=$here/fixtures
cache=${EROFSD_FIXTURE_CACHE:-/var/cache/erofsd-test}
mkdir -p "$cache"

log() { echo "make-fixtures: $*" >&2; }

# key FILE... [-- STRING...]: short hash of files' contents and extra strings.
key() {
    local files=() strings=()
    while (($#)); do
        if [[ $1 == -- ]]; then shift; strings=("$@"); break; fi
        files+=("$1"); shift
    done
    { cat "${files[@]}"; printf '%s\n' "${strings[@]}"; } | sha256sum | cut -c1-16
}

# ensure NAME KEY BUILD_FUNCTION: print the fixture dir, building it under a lock if needed.
ensure() {
    local name=$1 k=$2 fn=$3 dir="$cache/$1-$2"
    if [[ ! -e $dir/.done ]]; then
        exec {lockfd}>"$cache/.lock-$name"
        flock "$lockfd"
        if [[ ! -e $dir/.done ]]; then
            rm -rf "$dir" && mkdir -p "$dir"
            log "building $name in $dir"
            local t0=$SECONDS
            # Checked here, not left to `set -e`: a caller may run us inside a command
            # substitution, where bash ignores errexit, and a failed build must never be marked
            # done (a later caller would trust an empty fixture).
            if ! "$fn" "$dir" >&2; then
                log "building $name failed"
                rm -rf "$dir"
                exit 1
            fi
            touch "$dir/.done"
            log "built $name in $((SECONDS - t0)) s"
        fi
        flock -u "$lockfd"
        exec {lockfd}>&-
    fi
    echo "$dir"
}

need_root() {
    [[ $(id -u) == 0 ]] || { log "fixture $1 needs root (devices, owners, trusted.* xattrs)"; exit 1; }
}

build_alltypes() { need_root alltypes; python3 "$gen/alltypes.py" "$1/tree"; }
build_alltypes_compat() { need_root alltypes-compat; python3 "$gen/alltypes.py" --max-name 200 "$1/tree"; }
build_rootfs() { need_root rootfs; "$gen/rootfs.sh" "$1"; }
build_oci() {
    need_root oci
    local rootfs
    rootfs=$(fixture rootfs) || return 1
    "$gen/oci.sh" "$1" "$rootfs/tree"
}
build_badtars() { python3 "$gen/badtars.py" "$1"; }
build_pystack() { need_root pystack; "$gen/pystack.sh" "$1"; }

fixture() {
    case $1 in
        alltypes) ensure alltypes "$(key "$gen/alltypes.py")" build_alltypes ;;
        alltypes-compat) ensure alltypes-compat "$(key "$gen/alltypes.py")" build_alltypes_compat ;;
        rootfs) ensure rootfs "$(key "$gen/rootfs.sh" -- bookworm minbase python3)" build_rootfs ;;
        oci)
            local rootfs
            rootfs=$(fixture rootfs) || exit 1
            ensure oci "$(key "$gen/oci.sh" -- "$(basename "$rootfs")")" build_oci ;;
        badtars) ensure badtars "$(key "$gen/badtars.py")" build_badtars ;;
        pystack) ensure pystack "$(key "$gen/pystack.sh" -- bookworm)" build_pystack ;;
        *) log "unknown fixture '$1' (alltypes alltypes-compat rootfs oci badtars pystack all)"; exit 2 ;;
    esac
}

(($#)) || { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
for name in "$@"; do
    if [[ $name == all ]]; then
        for n in alltypes alltypes-compat rootfs oci badtars; do fixture "$n"; done
    else
        fixture "$name"
    fi
done
