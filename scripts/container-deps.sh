#!/bin/bash
# The container stack the container tests and scripts/bench-containers.sh drive: containerd and
# runc (Debian), nydus-snapshotter's containerd-nydus-grpc and nerdctl (built with the machine's
# Go from the Go module proxy), docker-registry, skopeo, umoci, ctr-remote (Debian), toxiproxy
# and stargz-snapshotter's containerd-stargz-grpc (Go). Every version is pinned in
# scripts/versions.env. Idempotent, no stdin; needs root.
# With --with-nydusd, also builds the peer nydusd and nydus-image (nydus-rs from crates.io) for
# scripts/bench-containers.sh row (e): about 10 minutes on 2 cores the first time; CI does not.
# Prints one line per part: name, version, path. Exits non-zero naming what it could not install.
set -euo pipefail
with_nydusd=0
for a in "$@"; do
    case $a in
        --with-nydusd) with_nydusd=1 ;;
        *) echo "usage: $0 [--with-nydusd]" >&2; exit 2 ;;
    esac
done

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

die() { echo "container-deps: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (apt-get, $GO_PREFIX); run: sudo $0"

# ---------------------------------------------------------------- Debian packages
PACKAGES=(containerd runc docker-registry skopeo umoci stargz-snapshotter)
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "container-deps: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q </dev/null >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null >&2 \
        || die "apt-get install ${missing[*]} failed"
    # The tests start containerd with their own root, state and socket; a system containerd
    # that the package's postinst enabled would only compete for /run/containerd.
    if [[ " ${missing[*]} " == *" containerd "* && -d /run/systemd/system ]]; then
        systemctl disable --now containerd.service >&2 || true
    fi
fi

# deb_version PACKAGE PINNED: the installed upstream version, which must start with PINNED.
deb_version() {
    local v
    v=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null) || die "package $1 is not installed"
    v=${v#*:}
    [[ $v == "$2"* ]] || die "package $1 is $v, scripts/versions.env pins $2 (apt-cache policy $1)"
    echo "$v"
}

part() { printf '%-24s %-24s %s\n' "$1" "$2" "$3"; }

part containerd "$(deb_version containerd "$CONTAINERD_VERSION")" "$(command -v containerd)"
part runc "$(deb_version runc "$RUNC_VERSION")" "$(command -v runc)"
part docker-registry "$(deb_version docker-registry "")" "$(command -v docker-registry)"
part skopeo "$(deb_version skopeo "")" "$(command -v skopeo)"
part umoci "$(deb_version umoci "")" "$(command -v umoci)"
part ctr-remote "$(deb_version stargz-snapshotter "$STARGZ_VERSION")" "$(command -v ctr-remote)"

# ---------------------------------------------------------------- Go programs
command -v go >/dev/null || die "go not found: the Go programs (nydus-snapshotter, nerdctl, toxiproxy) are built with the machine's Go"
export GOPATH=$GO_PREFIX GOCACHE=$GO_PREFIX/cache GOFLAGS=-modcacherw
bin=$GO_PREFIX/bin
mkdir -p "$bin"

# built_version BINARY MODULE: the module version the binary was built from (Go build info).
built_version() {
    [[ -x $1 ]] || return 0
    go version -m "$1" 2>/dev/null | awk -v m="$2" '$1 == "mod" && $2 == m { print $3 }'
}

# go_build NAME MODULE VERSION PACKAGE: builds PACKAGE at MODULE@VERSION into $bin/NAME, unless
# the binary there was already built from that version. Built through a throwaway module (not
# `go install pkg@version`, which refuses modules whose go.mod has exclude or replace directives).
go_build() {
    local name=$1 module=$2 version=$3 pkg=$4 out=$bin/$1
    if [[ $(built_version "$out" "$module") != "$version" ]]; then
        echo "container-deps: building $name from $module@$version" >&2
        local work
        work=$(mktemp -d /tmp/container-deps-go.XXXXXX)
        (
            cd "$work"
            go mod init erofsd-container-deps >/dev/null 2>&1
            go get "$pkg@$version" </dev/null >&2
            go build -trimpath -o "$out.tmp" "$pkg" </dev/null >&2
        ) || { rm -rf "$work" "$out.tmp"; die "building $name ($pkg from $module@$version) failed"; }
        rm -rf "$work"
        mv -f "$out.tmp" "$out"
        [[ $(built_version "$out" "$module") == "$version" ]] || die "$out does not report $module $version"
    fi
    part "$name" "$version" "$out"
}

go_build containerd-nydus-grpc "$NYDUS_SNAPSHOTTER_MODULE" "$NYDUS_SNAPSHOTTER_VERSION" \
    "$NYDUS_SNAPSHOTTER_MODULE/cmd/containerd-nydus-grpc"
go_build nerdctl "$NERDCTL_MODULE" "$NERDCTL_VERSION" "$NERDCTL_MODULE/cmd/nerdctl"
go_build toxiproxy-server "$TOXIPROXY_MODULE" "$TOXIPROXY_VERSION" "$TOXIPROXY_MODULE/cmd/server"
go_build toxiproxy-cli "$TOXIPROXY_MODULE" "$TOXIPROXY_VERSION" "$TOXIPROXY_MODULE/cmd/cli"

# stargz-snapshotter's daemon: Debian ships ctr-remote only and the proxy does not serve its
# cmd module, so scripts/stargz-grpc/main.go (a copy of its cmd main over the main module's
# `service` package) is built in a throwaway module that requires the pinned main module.
stargz_bin=$bin/containerd-stargz-grpc
stargz_built() {
    [[ -x $stargz_bin ]] || return 0
    go version -m "$stargz_bin" 2>/dev/null |
        awk -v m="$STARGZ_SNAPSHOTTER_MODULE" '$1 == "dep" && $2 == m { print $3 }'
}
if [[ $(stargz_built) != "$STARGZ_SNAPSHOTTER_VERSION" ]] || ! cmp -s "$here/stargz-grpc/main.go" "$bin/.containerd-stargz-grpc.main.go"; then
    echo "container-deps: building containerd-stargz-grpc over $STARGZ_SNAPSHOTTER_MODULE@$STARGZ_SNAPSHOTTER_VERSION" >&2
    work=$(mktemp -d /tmp/container-deps-go.XXXXXX)
    (
        cd "$work"
        cp "$here/stargz-grpc/main.go" .
        go mod init erofsd-stargz-grpc >/dev/null 2>&1
        go get "$STARGZ_SNAPSHOTTER_MODULE@$STARGZ_SNAPSHOTTER_VERSION" </dev/null >&2
        go mod tidy </dev/null >&2
        go build -trimpath -o "$stargz_bin.tmp" . </dev/null >&2
    ) || { rm -rf "$work" "$stargz_bin.tmp"; die "building containerd-stargz-grpc ($STARGZ_SNAPSHOTTER_MODULE@$STARGZ_SNAPSHOTTER_VERSION) failed"; }
    rm -rf "$work"
    mv -f "$stargz_bin.tmp" "$stargz_bin"
    cp "$here/stargz-grpc/main.go" "$bin/.containerd-stargz-grpc.main.go"
    [[ $(stargz_built) == "$STARGZ_SNAPSHOTTER_VERSION" ]] || die "$stargz_bin does not report $STARGZ_SNAPSHOTTER_MODULE $STARGZ_SNAPSHOTTER_VERSION"
fi
part containerd-stargz-grpc "$STARGZ_SNAPSHOTTER_VERSION" "$stargz_bin"

if ((with_nydusd)); then
    nydusd=$PEER_PREFIX/bin/nydusd
    stamp=$PEER_PREFIX/bin/.nydus-rs-version
    if [[ ! -x $nydusd || ! -x $PEER_PREFIX/bin/nydus-image || $(cat "$stamp" 2>/dev/null) != "$NYDUS_RS_VERSION" ]]; then
        echo "container-deps: building nydusd from nydus-rs $NYDUS_RS_VERSION (crates.io)" >&2
        CARGO_TARGET_DIR=$PEER_PREFIX/target cargo install nydus-rs --version "$NYDUS_RS_VERSION" --locked \
            --bin nydusd --bin nydus-image --root "$PEER_PREFIX" --force </dev/null >&2 || die "building nydusd (nydus-rs $NYDUS_RS_VERSION) failed"
        echo "$NYDUS_RS_VERSION" >"$stamp"
    fi
    part nydusd "nydus-rs $NYDUS_RS_VERSION" "$nydusd"
    part nydus-image "nydus-rs $NYDUS_RS_VERSION" "$PEER_PREFIX/bin/nydus-image"
fi
