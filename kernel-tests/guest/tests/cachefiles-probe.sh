# (a) /dev/cachefiles exists and a minimal on-demand session works:
# open, `dir /data/cache`, `tag erofsd-test`, `bind ondemand` (plus documented error codes).
. /ktest/lib.sh
[ -c /dev/cachefiles ] || fail "/dev/cachefiles missing (CONFIG_CACHEFILES / devtmpfs)"
mkdir -p /data/cache
ktest-cachefiles probe --dir /data/cache --tag erofsd-test
