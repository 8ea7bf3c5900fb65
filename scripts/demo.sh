#!/usr/bin/env bash
# The main job on an embedded default: build a demo image, serve it through the best kernel
# front-end this machine has (`erofsd daemon --frontend auto`), mount it, show that a first read
# fetches only what it touches, then read everything back and compare it with the source.
#
#   sudo scripts/demo.sh            (needs root: mount(2), fanotify or /dev/cachefiles)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it mounts a filesystem and talks to the kernel)" >&2; exit 1; }

cargo build --release --quiet
BIN=$PWD/target/release/erofsd
# The cache must live on ext4/xfs (cachefiles refuses tmpfs; fanotify cannot mark tmpfs files).
WORK=$(mktemp -d /var/tmp/erofsd-demo.XXXXXX)
DAEMON_PID=
cleanup() {
    mountpoint -q "$WORK/mnt" 2>/dev/null && "$BIN" umount "$WORK/mnt" --api-socket "$WORK/api.sock" >/dev/null 2>&1 || true
    [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
    mountpoint -q "$WORK/mnt" 2>/dev/null && umount -l "$WORK/mnt" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== 1. a demo tree: this repository's sources and docs, plus 64 MiB of generated data"
mkdir -p "$WORK/tree" "$WORK/mnt"
git ls-files -z | xargs -0 cp --parents -t "$WORK/tree"
python3 - "$WORK/tree/big.bin" <<'PY'
import random, sys
r = random.Random(42)
with open(sys.argv[1], "wb") as f:
    for _ in range(64):
        f.write(r.randbytes(1 << 20))
PY
du -sh "$WORK/tree"

echo "== 2. erofsd build (zstd groups, sha256-named blobs)"
"$BIN" build "$WORK/tree" -o "$WORK/image"
ls -l "$WORK/image" "$WORK/image/blobs"

# Under its supervisor, as always: a crash of the serving process costs readers a wait, never
# zeros (tests/fanotify_crash.rs runs this very command line and kills the worker mid-read).
echo "== 3. erofsd daemon --frontend auto"
"$BIN" daemon --frontend auto --cache-dir "$WORK/cache" --api-socket "$WORK/api.sock" 2>"$WORK/daemon.log" &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S "$WORK/api.sock" ] && break; sleep 0.1; done
[ -S "$WORK/api.sock" ] || { echo "daemon did not start:"; cat "$WORK/daemon.log"; exit 1; }
grep -o 'serving with the [a-z]* front-end' "$WORK/daemon.log" || true

echo "== 4. erofsd mount"
"$BIN" mount "$WORK/image" "$WORK/mnt" --api-socket "$WORK/api.sock"

metrics() { python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(b["stored_bytes"] for b in m["blobs"].values()))'; }
fetched() { "$BIN" status --metrics --api-socket "$WORK/api.sock" | metrics; }

echo "== 5. a first read touches 4 KiB of big.bin"
head -c 4096 "$WORK/mnt/big.bin" | sha256sum | cut -c1-16
echo "   stored bytes fetched so far: $(fetched) of $(du -b "$WORK/image/blobs" | cut -f1) in the image"

echo "== 6. read everything and compare with the source"
diff -r "$WORK/tree" "$WORK/mnt" && echo "   identical: $(find "$WORK/mnt" | wc -l) entries"
echo "   stored bytes fetched: $(fetched)"

echo "== 7. erofsd umount"
"$BIN" umount "$WORK/mnt" --api-socket "$WORK/api.sock"
echo "demo: OK"
