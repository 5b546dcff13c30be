#!/usr/bin/env bash
# Ingest benchmark: signed 7.5 KB GitHub pushes, unique delivery ids, 32
# connections on loopback, fsync before every 202. Runs hookgate with group
# commit on and off, and (when Node is present) the @octokit/webhooks peer
# with and without an fsync per event, side by side in one run. Then the
# latency at a fixed offered rate (RATE, open loop: examples/paced.rs).
#
#   bench/ingest.sh            # DURATION=10s CONNECTIONS=32 THREADS=2 RATE=5000
#
# Prints one Markdown table and the paced line. Needs wrk (Debian package `wrk`).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
RATE=${RATE:-5000}
PORT=${PORT:-18080}
BODY=samples/github/push.json

command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin hookgate --example paced
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
signing_secret bench-secret

# run_wrk NAME PID -> one table row
run_wrk() {
  local name=$1 pid=$2
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s bench/github_push.lua "http://127.0.0.1:$PORT/hooks/github" \
    -- "$BODY" "$sig" "run$RANDOM$RANDOM" > "$work/wrk.out"
  local rps p50 p99 non2xx
  read -r rps p50 p99 non2xx < <(wrk_figures "$work/wrk.out")
  printf '| %s | %s | %s | %s | %s MiB | %s |\n' "$name" "$rps" "$p50" "$p99" "$(peak_rss_mib "$pid")" "$non2xx"
}

# start_hookgate GROUP_COMMIT -> sets $pid
start_hookgate() {
  local group_commit=$1
  local dir="$work/hg-$group_commit-$RANDOM"
  mkdir -p "$dir"
  cat > "$dir/routes.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$((PORT + 1))"
data_dir = "$dir/data"
group_commit = $group_commit
[sources.github]
provider = "github"
secret = { file = "$work/secret" }
TOML
  HOOKGATE_LOG=warn ./target/release/hookgate --config "$dir/routes.toml" serve 2>"$dir/log" &
  pid=$!
  wait_port "$PORT"
}

hookgate_row() {
  start_hookgate "$2"
  run_wrk "$1" "$pid"
  kill -TERM "$pid"; wait "$pid" || true
}

paced_line() {
  start_hookgate true
  # Let the first log segments be prepared before the clock starts.
  sleep 1
  printf 'hookgate, group commit, open loop: '
  ./target/release/examples/paced "http://127.0.0.1:$PORT/hooks/github" "$secret" "$RATE" "${DURATION%s}"
  echo "  peak RSS $(peak_rss_mib "$pid") MiB"
  kill -TERM "$pid"; wait "$pid" || true
}

node_row() {
  local name=$1 fsync=$2
  SECRET_FILE="$work/secret" PORT=$PORT FSYNC=$fsync LOG_FILE="$work/node-events.log" \
    node bench/node/server.mjs &
  local pid=$!
  wait_port "$PORT"
  run_wrk "$name" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r); wrk -t$THREADS -c$CONNECTIONS -d$DURATION, body $(wc -c < "$BODY") bytes"
echo
echo "| server | req/s | p50 | p99 | peak RSS | non-2xx |"
echo "|---|---|---|---|---|---|"
hookgate_row "hookgate, fsync per 202, group commit" true
hookgate_row "hookgate, fsync per 202, no group commit" false
if [ -z "${SKIP_NODE:-}" ] && command -v node >/dev/null && { [ -d bench/node/node_modules ] || (cd bench/node && npm install --silent --no-audit --no-fund >/dev/null 2>&1); }; then
  node_row "node @octokit/webhooks-methods, verify only" 0
  node_row "node @octokit/webhooks-methods, fsync per event" 1
else
  echo "(node peer skipped: node or npm install unavailable)"
fi
echo
paced_line
