#!/bin/bash
# Lazy start through a registry shaped to 100 Mbit/s, against a full pull (issue 5 benchmark).
#
# One run, as root, on the same machine and image:
#   full pull   skopeo copy (registry -> OCI layout) + umoci unpack (the untar, whiteouts
#               applied) + the workload in a chroot of the unpacked rootfs
#   erofsd      erofsd mount <reference> (fanotify front-end, empty cache) + the same workload
#               in a chroot of the mount
# The image is the `oci` fixture (a debootstrap rootfs in 3 layers, made by umoci), pushed as is
# with skopeo and converted with `erofsd convert`. Only traffic from the registry's port is
# shaped (HTB on lo, u32 match on the source port), so nothing else on the machine is slowed.
#
# Printed: time to the workload's end, bytes moved over the wire, and read amplification =
# data the daemon filled (uncompressed, whole groups) / data the workload brought into the page
# cache (fincore over every file of the mount after the run).
#
# Usage: scripts/bench-registry.sh     Env: RATE (default 100mbit), WORKLOAD (default
#   "python3 -c 'import json'"), CONVERT_ARGS (extra `erofsd convert` flags, e.g.
#   "--group-size 64K"), EROFSD (binary, default target/release/erofsd).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
RATE=${RATE:-100mbit}
WORKLOAD=${WORKLOAD:-"python3 -c 'import json'"}
CONVERT_ARGS=${CONVERT_ARGS:-}
bin=${EROFSD:-${CARGO_TARGET_DIR:-$repo/target}/release/erofsd}
[[ -x $bin ]] || { echo "build first: cargo build --release (or set EROFSD)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "bench-registry: needs root (tc, mounts, chroot)" >&2; exit 1; }
for t in docker-registry skopeo umoci tc fincore python3; do
    command -v $t >/dev/null || { echo "bench-registry: needs $t (scripts/ci-deps.sh installs it)" >&2; exit 1; }
done

oci=$("$repo/scripts/make-fixtures.sh" oci | tail -1)
work=$(mktemp -d /var/tmp/erofsd-bench-registry.XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
reg=127.0.0.1:$port
pids=()
cleanup() {
    set +e
    tc qdisc del dev lo root 2>/dev/null
    [[ -S $work/api.sock ]] && "$bin" umount "$work/mnt" --api-socket "$work/api.sock" >/dev/null 2>&1
    umount -l "$work/mnt" 2>/dev/null
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/registry.yml" <<EOF
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: $reg, secret: bench}
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done

echo "bench-registry: pushing the source image and the converted one (unshaped)" >&2
skopeo copy -q --dest-tls-verify=false "oci:$oci/layout:l3" "docker://$reg/bench/src:l3"
"$bin" convert -q $CONVERT_ARGS "oci:$oci/layout:l3" "http://$reg/bench/erofsd:l3"
layers_bytes=$(skopeo inspect --raw --tls-verify=false "docker://$reg/bench/src:l3" |
    python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')
erofsd_bytes=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/erofsd/manifests/l3" |
    python3 -c 'import json,sys; print(sum(l["size"] for l in json.load(sys.stdin)["layers"]))')

shape() {
    tc qdisc add dev lo root handle 1: htb default 99
    tc class add dev lo parent 1: classid 1:1 htb rate "$RATE" ceil "$RATE"
    tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport "$port" 0xffff flowid 1:1
}
shape
# What the shaping gives: one whole-blob download.
big=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/src/manifests/l3" |
    python3 -c 'import json,sys; l=max(json.load(sys.stdin)["layers"], key=lambda l: l["size"]); print(l["digest"], l["size"])')
read -r big_digest big_size <<<"$big"
t0=$(date +%s.%N)
curl -sf -o /dev/null "http://$reg/v2/bench/src/blobs/$big_digest"
link=$(python3 -c "print(f'{$big_size*8/($(date +%s.%N)-$t0)/1e6:.1f}')")

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2-$1:.2f}')"; }
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }

echo "bench-registry: full pull" >&2
drop
t0=$(now)
skopeo copy -q --src-tls-verify=false "docker://$reg/bench/src:l3" "oci:$work/pull:l3"
t_copy=$(now)
umoci unpack --image "$work/pull:l3" "$work/bundle" >/dev/null
t_unpack=$(now)
chroot "$work/bundle/rootfs" /bin/sh -c "$WORKLOAD" >/dev/null
t_full=$(now)

echo "bench-registry: erofsd" >&2
mkdir -p "$work/mnt"
"$bin" daemon --frontend fanotify --cache-dir "$work/cache" --api-socket "$work/api.sock" >"$work/daemon.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [[ -S $work/api.sock ]] && break; sleep 0.05; done
drop
t0e=$(now)
"$bin" mount "http://$reg/bench/erofsd:l3" "$work/mnt" --api-socket "$work/api.sock" >/dev/null
t_mount=$(now)
chroot "$work/mnt" /bin/sh -c "$WORKLOAD" >/dev/null
t_lazy=$(now)

metrics=$("$bin" status --metrics --api-socket "$work/api.sock")
read -r stored filled_groups <<<"$(python3 -c '
import json,sys
m=json.loads(sys.argv[1])
print(sum(b["stored_bytes"] for b in m["blobs"].values()), sum(b["groups"] for b in m["blobs"].values()))' "$metrics")"
filled=$(du -B1 -s "$work/cache/blobs" | cut -f1)
resident=$(find "$work/mnt" -xdev -type f -print0 | xargs -0 fincore -b -n -o RES 2>/dev/null | awk '{s+=$1} END {print s+0}')
boot_bytes=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/erofsd/manifests/l3" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][-1]["size"])')

python3 - "$RATE" "$link" "$t0" "$t_copy" "$t_unpack" "$t_full" "$t0e" "$t_mount" "$t_lazy" \
    "$layers_bytes" "$erofsd_bytes" "$stored" "$filled" "$resident" "$boot_bytes" "$filled_groups" "$WORKLOAD" <<'EOF'
import sys
rate, link = sys.argv[1], sys.argv[2]
t0, tc, tu, tf, e0, em, el = map(float, sys.argv[3:10])
layers, erofsd, stored, filled, resident, boot, groups = map(int, sys.argv[10:17])
workload = sys.argv[17]
mb = lambda b: f"{b/1e6:,.1f} MB"
full, lazy = tf - t0, el - e0
print(f"\nerofsd registry benchmark: workload `{workload}`, registry on loopback shaped to {rate} (measured {link} Mbit/s)\n")
print(f"| path | to workload done | steps | bytes over the wire |")
print(f"|---|---|---|---|")
print(f"| full pull | {full:.2f} s | copy {tc-t0:.2f} s + unpack {tu-tc:.2f} s + run {tf-tu:.2f} s | {mb(layers)} (all layers) |")
print(f"| erofsd | {lazy:.2f} s | mount {em-e0:.2f} s + run {el-em:.2f} s | {mb(stored + boot)} ({mb(boot)} bootstrap + {mb(stored)} blob ranges) |")
print()
print(f"first read sooner: {full/lazy:.1f}x (target >= 10x)")
print(f"read amplification: daemon filled {mb(filled)} ({groups} groups) for {mb(resident)} the workload brought into the page cache = {filled/max(resident,1):.2f}x (target <= 1.5x)")
print(f"image: {mb(layers)} as OCI layers, {mb(erofsd)} as erofsd blobs + bootstrap; fetched {100*(stored+boot)/erofsd:.1f}% of it")
EOF
