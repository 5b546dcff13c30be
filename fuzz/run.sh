#!/bin/sh
# Builds every fuzz target, then runs each for SECONDS (default 30) from
# its seed corpus in fuzz/corpus/TARGET (new finds land there too, and are
# not committed). Stops at the first crash, whose input libFuzzer saves
# under fuzz/artifacts/TARGET/: make it a regression test.
#
# Usage: fuzz/run.sh [SECONDS]   (nightly and cargo-fuzz required; on the
# shared machines wrap it: flock /tmp/hookgate-cargo.lock fuzz/run.sh 20)
set -eu
secs=${1:-30}
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(cd .. && pwd)/fuzz-target}"
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
    echo "== $target: ${secs}s"
    mkdir -p "corpus/$target"
    cargo +nightly fuzz run "$target" -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
done
echo "fuzz: every target ran ${secs}s without a crash"
