#!/bin/bash
# Install, upgrade or uninstall erofsd on this machine (or into a staging root).
#
#   scripts/install.sh install   [--bin PATH] [--prefix /usr/local] [--destdir DIR] [--no-systemd]
#   scripts/install.sh uninstall [--prefix /usr/local] [--destdir DIR] [--purge]
#
# install (also the upgrade: run it again with a new binary) puts
#   PREFIX/bin/erofsd                 the binary (--bin, default target/release/erofsd)
#   PREFIX/lib/erofsd/nydusd          symlink to it: the nydusd command line for nydus-snapshotter
#   /etc/erofsd/config.toml           the default settings, all commented out. A config the admin
#                                     changed is never overwritten: the new default goes beside
#                                     it as config.toml.new
#   /etc/systemd/system/erofsd.service   the unit (ordered before containerd.service)
#   PREFIX/share/doc/erofsd/          README.md and docs/
# uninstall removes the binary, the symlink, the unit and the docs; the config stays unless
# --purge and the admin never changed it.
#
# Neither ever touches the cache and state directory (/var/cache/erofsd by default): it holds
# data that snapshotter metadata elsewhere depends on (a wiped data directory under surviving
# metadata breaks every later pull), so only an admin removes it, by hand, after stopping
# every container that uses it. Nothing here starts, stops or enables the service either.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

action=${1:-}
[[ $action == install || $action == uninstall ]] || { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
bin="${CARGO_TARGET_DIR:-$repo/target}/release/erofsd" prefix=/usr/local destdir="" systemd=true purge=false
while (($#)); do
    case $1 in
        --bin) bin=$2; shift ;;
        --prefix) prefix=$2; shift ;;
        --destdir) destdir=$2; shift ;;
        --no-systemd) systemd=false ;;
        --purge) purge=true ;;
        *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

bindir=$prefix/bin libdir=$prefix/lib/erofsd docdir=$prefix/share/doc/erofsd
sysconfdir=/etc unitdir=/etc/systemd/system
D() { echo "$destdir$1"; }
say() { echo "install.sh: $*"; }

# Writes $1 atomically from stdin (temp file in the same directory, then rename).
put() {
    local dest=$1 mode=$2 tmp
    mkdir -p "$(dirname "$dest")"
    tmp=$(mktemp "$(dirname "$dest")/.install.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$dest"
}

shipped_config() { cat "$repo/scripts/packaging/config.toml"; }

if [[ $action == install ]]; then
    [[ -x $bin ]] || { echo "install.sh: no binary at $bin (cargo build --release, or --bin PATH)" >&2; exit 1; }
    "$bin" --version >/dev/null || { echo "install.sh: $bin does not run" >&2; exit 1; }
    put "$(D "$bindir/erofsd")" 0755 <"$bin"
    mkdir -p "$(D "$libdir")"
    ln -sfn "../../bin/erofsd" "$(D "$libdir/nydusd")"
    say "installed $bindir/erofsd ($("$bin" --version | head -1)) and $libdir/nydusd"

    conf=$(D "$sysconfdir/erofsd/config.toml")
    if [[ ! -e $conf ]]; then
        shipped_config | put "$conf" 0644
        say "installed $sysconfdir/erofsd/config.toml"
    elif shipped_config | cmp -s - "$conf"; then
        shipped_config | put "$conf" 0644
    else
        shipped_config | put "$conf.new" 0644
        say "kept your $sysconfdir/erofsd/config.toml; the new default is config.toml.new"
    fi

    if $systemd; then
        sed -e "s|@BINDIR@|$bindir|g" -e "s|@SYSCONFDIR@|$sysconfdir|g" -e "s|@DOCDIR@|$docdir|g" \
            "$repo/scripts/packaging/erofsd.service" | put "$(D "$unitdir/erofsd.service")" 0644
        say "installed $unitdir/erofsd.service (enable with: systemctl daemon-reload && systemctl enable --now erofsd)"
    fi
    mkdir -p "$(D "$docdir")"
    cp "$repo/README.md" "$(D "$docdir/README.md")"
    rm -rf "$(D "$docdir/docs")"
    cp -r "$repo/docs" "$(D "$docdir/docs")"
    say "cache and state stay where the config says (default /var/cache/erofsd); not touched"
else
    rm -f "$(D "$bindir/erofsd")" "$(D "$libdir/nydusd")" "$(D "$unitdir/erofsd.service")"
    rmdir "$(D "$libdir")" 2>/dev/null || true
    rm -rf "$(D "$docdir")"
    conf=$(D "$sysconfdir/erofsd/config.toml")
    rm -f "$conf.new"
    if [[ -e $conf ]]; then
        if $purge && shipped_config | cmp -s - "$conf"; then
            rm -f "$conf"
            rmdir "$(D "$sysconfdir/erofsd")" 2>/dev/null || true
        else
            say "kept $sysconfdir/erofsd/config.toml$($purge && echo ' (you changed it)')"
        fi
    fi
    say "removed erofsd; the cache and state directory (default /var/cache/erofsd) was not touched"
fi
