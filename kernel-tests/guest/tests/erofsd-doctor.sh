# `erofsd doctor` in a guest whose kernel has cachefiles on-demand: the cachefiles front-end is
# reported usable (proven by a throwaway `bind ondemand` in the cache directory), and with a
# daemon holding the device it says so in plain words; so does a second daemon, which must
# refuse to start.
. /ktest/lib.sh
. /ktest/erofsd-lib.sh
mkdir -p "$ERO_CACHE"
erofsd doctor --cache-dir "$ERO_CACHE" | tee "$KTEST_OUT/doctor.txt"
grep -q "^cachefiles front-end: USABLE" "$KTEST_OUT/doctor.txt" || fail "doctor does not find cachefiles usable"
grep -q "on-demand mode works" "$KTEST_OUT/doctor.txt" || fail "doctor did not prove on-demand mode"
# On tmpfs the probe must refuse, with the reason.
erofsd doctor --cache-dir /tmp/doctor-cache >"$KTEST_OUT/doctor-tmpfs.txt" || true
grep -q "tmpfs" "$KTEST_OUT/doctor-tmpfs.txt" || { cat "$KTEST_OUT/doctor-tmpfs.txt"; fail "doctor did not flag a tmpfs cache dir"; }
start_daemon
erofsd doctor --cache-dir "$ERO_CACHE" | tee "$KTEST_OUT/doctor-busy.txt"
# Held by the supervisor and its worker: the serving worker must be named.
grep -q "is held by .*pid $(worker_pid) (erofsd)" "$KTEST_OUT/doctor-busy.txt" || fail "doctor does not name the daemon holding /dev/cachefiles"
# A second daemon must refuse to start, naming the holder (a stray daemon is the usual cause).
rc=0
erofsd daemon --frontend cachefiles --cache-dir "$ERO_CACHE-second" --api-socket /run/erofsd-second.sock \
    >"$KTEST_OUT/second-daemon.txt" 2>&1 || rc=$?
cat "$KTEST_OUT/second-daemon.txt"
[ "$rc" != 0 ] || fail "a second daemon started while /dev/cachefiles was held"
grep -q "Device or resource busy.*it is open in .*pid $(worker_pid) (erofsd)" "$KTEST_OUT/second-daemon.txt" \
    || fail "the second daemon's error does not name the holder"
[ "$(grep -o "Device or resource busy" "$KTEST_OUT/second-daemon.txt" | wc -l)" = 1 ] \
    || fail "the second daemon's error repeats the cause"
rm -rf "$ERO_CACHE-second"
stop_daemon
