#!/bin/sh
# Builds every fuzz target, then runs each for SECONDS (default 30) from
# its seed corpus in fuzz/corpus/TARGET (new finds land there too, and are
# not committed). An input that panics, runs out of memory (2 GiB) or takes
# longer than 10 s is a crash: the run stops at the first one, prints the
# reproducer's path and base64, and exits non-zero. Make it a regression
# test beside the code, and add the input as corpus/TARGET/seed-regress-*.
# Runs use -seed=$FUZZ_SEED (default 1), so a CI failure replays here.
#
# Usage: fuzz/run.sh [SECONDS]
#        fuzz/run.sh --within TOTAL   (CI: build, then share what is left of
#                                      TOTAL seconds among the targets, 5 to
#                                      30 s each)
# Nightly and cargo-fuzz required; on the shared machines wrap it:
# flock /tmp/hookgate-cargo.lock fuzz/run.sh 20
set -eu
started=$(date +%s)
secs=${1:-30}
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$(cd .. && pwd)/fuzz-target}"
# A cold build takes about 6.5 min on 2 cores (16 codegen units instead of
# cargo-fuzz's 1 measured no faster), a warm one seconds.
cargo +nightly fuzz build
targets=$(cargo +nightly fuzz list)
if [ "$secs" = --within ]; then
    total=${2:?--within needs a number of seconds}
    left=$((total - ($(date +%s) - started)))
    # About 4 s per target go to starting and stopping it.
    secs=$((left / $(echo "$targets" | wc -l) - 4))
    [ "$secs" -gt 30 ] && secs=30
    [ "$secs" -lt 5 ] && secs=5
    echo "fuzz: built in $(($(date +%s) - started))s; ${secs}s per target"
fi
mkdir -p "$CARGO_TARGET_DIR"
stamp="$CARGO_TARGET_DIR/fuzz-run-started"
for target in $targets; do
    echo "== $target: ${secs}s"
    mkdir -p "corpus/$target" "artifacts/$target"
    touch "$stamp"
    if ! cargo +nightly fuzz run "$target" -- \
        -max_total_time="$secs" -max_len=65536 -rss_limit_mb=2048 -timeout=10 -seed="${FUZZ_SEED:-1}" \
        -print_final_stats=1; then
        echo "fuzz: $target FAILED; reproducer(s), run one with" >&2
        echo "  cargo +nightly fuzz run $target PATH   (from fuzz/):" >&2
        find "$PWD/artifacts/$target" -type f -newer "$stamp" | while read -r f; do
            echo "  $f" >&2
            echo "  base64: $(base64 -w0 "$f" | head -c 8192)" >&2
        done
        exit 1
    fi
done
echo "fuzz: every target ran ${secs}s without a crash ($(($(date +%s) - started))s in all)"
