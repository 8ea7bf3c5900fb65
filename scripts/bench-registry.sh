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
    for sock in "$work"/api-*.sock; do [[ -S $sock ]] && "$bin" umount "$work/mnt" --api-socket "$sock" >/dev/null 2>&1; done
    umount -l "$work/mnt" 2>/dev/null
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
    rm -rf "$work"
}
trap cleanup EXIT
[[ ${KEEP:-} ]] && trap 'echo "bench-registry: kept $work" >&2; tc qdisc del dev lo root 2>/dev/null; for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done' EXIT

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
"$bin" convert -q $CONVERT_ARGS "oci:$oci/layout:l3" "http://$reg/bench/erofsd:l3" >&2
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

# lazy_run TAG NAME [MOUNT_ARGS...]: a fresh daemon with an empty data cache ($work/cache-NAME;
# its state/ may be seeded) mounts bench/erofsd:TAG and runs the workload.
# Prints "seconds-to-mount seconds-total wire-bytes filled-bytes groups resident-bytes".
lazy_run() {
    local tag=$1 name=$2 cache=$work/cache-$2 sock=$work/api-$2.sock
    shift 2
    mkdir -p "$work/mnt"
    "$bin" daemon --frontend fanotify --cache-dir "$cache" --api-socket "$sock" >"$work/daemon-$name.log" 2>&1 &
    local pid=$!
    pids+=($pid)
    for _ in $(seq 200); do [[ -S $sock ]] && break; sleep 0.05; done
    drop
    local t0 tm tl
    t0=$(now)
    "$bin" mount "http://$reg/bench/erofsd:$tag" "$work/mnt" --api-socket "$sock" "$@" >/dev/null
    tm=$(now)
    chroot "$work/mnt" /bin/sh -c "$WORKLOAD" >/dev/null
    tl=$(now)
    local stored groups prefetched filled resident boot
    read -r stored groups prefetched <<<"$("$bin" status --metrics --api-socket "$sock" | tee "$work/metrics-$name.json" | python3 -c '
import json,sys
m=json.load(sys.stdin)
b=m["blobs"].values()
print(sum(x["stored_bytes"] for x in b), sum(x["groups"] for x in b), sum(x.get("prefetch_groups", 0) for x in b))')"
    filled=$(du -B1 -s "$cache/blobs" | cut -f1)
    resident=$(find "$work/mnt" -xdev -type f -print0 | xargs -0 fincore -b -n -o RES 2>/dev/null | awk '{s+=$1} END {print s+0}')
    boot=$(curl -sf -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/bench/erofsd/manifests/$tag" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][-1]["size"])')
    # Unmount (saves the access trace), stop.
    "$bin" umount "$work/mnt" --api-socket "$sock" >/dev/null
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "$(python3 -c "print($tm-$t0)") $(python3 -c "print($tl-$t0)") $((stored + boot)) $filled $groups $resident $prefetched"
}

echo "bench-registry: erofsd" >&2
lazy_run l3 plain >"$work/run-plain"

# A node that ran the image before and lost its data cache but kept the daemon's state: the
# access trace recorded by the first run is prefetched at mount (`--prefetch trace`), behind
# on-demand reads.
echo "bench-registry: erofsd, prefetching the recorded trace" >&2
mkdir -p "$work/cache-trace/state"
cp -r "$work/cache-plain/state/trace" "$work/cache-trace/state/"
lazy_run l3 trace --prefetch trace >"$work/run-trace"

python3 - "$RATE" "$link" "$t0" "$t_copy" "$t_unpack" "$t_full" "$layers_bytes" "$erofsd_bytes" "$WORKLOAD" \
    "$(cat "$work/run-plain")" "$(cat "$work/run-trace")" <<'EOF'
import sys
rate, link = sys.argv[1], sys.argv[2]
t0, tc, tu, tf = map(float, sys.argv[3:7])
layers, erofsd = int(sys.argv[7]), int(sys.argv[8])
workload = sys.argv[9]
runs = [("erofsd", sys.argv[10]), ("erofsd, recorded trace prefetched", sys.argv[11])]
mb = lambda b: f"{b/1e6:,.1f} MB"
full = tf - t0
print(f"\nerofsd registry benchmark: workload `{workload}`, registry on loopback shaped to {rate} (measured {link} Mbit/s)\n")
print("| path | to workload done | steps | over the wire | sooner (target >= 10x) | filled / read (target <= 1.5x) |")
print("|---|---|---|---|---|---|")
print(f"| full pull | {full:.2f} s | copy {tc-t0:.2f} s + unpack {tu-tc:.2f} s + run {tf-tu:.2f} s | {mb(layers)} | 1x | |")
for name, r in runs:
    tm, tl, wire, filled, groups, resident, prefetched = r.split()
    tm, tl, wire, filled, groups, resident, prefetched = float(tm), float(tl), int(wire), int(filled), int(groups), int(resident), int(prefetched)
    print(f"| {name} | {tl:.2f} s | mount {tm:.2f} s + run {tl-tm:.2f} s | {mb(wire)} ({100*wire/erofsd:.1f} %) | {full/tl:.1f}x "
          f"| {mb(filled)} ({groups} groups{f', {prefetched} prefetched' if prefetched else ''}) / {mb(resident)} = {filled/max(resident,1):.2f}x |")
print(f"\nimage: {mb(layers)} as OCI layers, {mb(erofsd)} as erofsd blobs + bootstrap; 'read' = pages of the mount's files in the page cache after the run (fincore)")
EOF
