#!/bin/sh
# Bounded fuzz run of the erofs reader (open + walk + read everything on hostile images).
#
#   scripts/fuzz-erofs.sh [SECONDS]        default 60
#
# Uses cargo-fuzz (libFuzzer + AddressSanitizer). Only a stable toolchain exists on our
# machines, so RUSTC_BOOTSTRAP=1 lets it pass the nightly-only -Zsanitizer flags; that works
# with stable rustc 1.95 (checked). Starts from the committed seeds in erofs/fuzz/seeds (which
# `cargo test -p erofs` also replays) and keeps its growing corpus in erofs/fuzz/corpus/
# (not committed). A crash leaves erofs/fuzz/artifacts/reader/crash-*; reproduce it with
#   cd erofs/fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run reader artifacts/reader/crash-...
# then add the file to erofs/fuzz/seeds/ (named bad-*) once fixed.
set -eu
secs=${1:-60}
cd "$(dirname "$0")/../erofs/fuzz"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
mkdir -p corpus/reader
exec cargo fuzz run reader corpus/reader seeds -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=1024
