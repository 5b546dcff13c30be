#!/usr/bin/env bash
# Ingest benchmark: signed 7.5 KB GitHub pushes, unique delivery ids, 32
# connections on loopback, fsync before every 202. Runs hookgate with group
# commit on and off, and (when Node is present) the @octokit/webhooks peer
# with and without an fsync per event, side by side in one run. Then the
# latency at a fixed offered rate (RATE, open loop: examples/paced.rs).
#
#   bench/ingest.sh            # DURATION=10s CONNECTIONS=32 THREADS=2 RATE=5000
#   PIN=1 bench/ingest.sh      # per core: ROUNDS=2 SERVER_CPU=1 WRK_CPU=0
#   BIN=path/to/hookgate …     # another build of the daemon (an older commit)
#   ROUTES=1 READ_PAYLOAD=1 …  # hookgate routing as it ingests (bench/backlog.sh's routes)
#
# Prints one Markdown table and the paced line. Needs wrk (Debian package `wrk`).
#
# PIN=1 measures per core instead (issue #10): each server pinned to
# SERVER_CPU (`taskset`), wrk to WRK_CPU, hookgate (group commit) and the
# Node peer (verify only) alternating A B A B … for ROUNDS rounds, with the
# server's CPU time per request (utime + stime from /proc/PID/stat over the
# run) and its voluntary context switches per request (a thread blocking:
# hand-offs between threads, waits for the disk); then one unpinned pair,
# for the ratio on shared cores. Check `uptime` first: another busy process
# on the machine makes these figures noise (bench/callgrind.sh does not move).
#
# Memory: hookgate's log grows the page cache by about 3.5 KB a request
# (its frames, and the zeros each segment is prepared with); Node's peer
# writes nothing. A virtual machine's guest pays about five times more for
# memory it touches first than for memory it has used before (1.9 s of
# system time a GiB of new page cache here, against 0.35 once warm), so
# each round used to run in colder memory than the last (session 19's
# rounds: 43.8, 51.1, 54.5 µs a request). Each hookgate's data dir is now
# deleted when its row is done, and WARM GiB (default 2) are written to a
# file and deleted before the first row, so every row grows into memory
# already touched, as on a machine of its own. WARM=0 skips that.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
PIN=${PIN:-}
BIN=${BIN:-./target/release/hookgate}
ROUNDS=${ROUNDS:-2}
SERVER_CPU=${SERVER_CPU:-1}
WRK_CPU=${WRK_CPU:-0}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
RATE=${RATE:-5000}
PORT=${PORT:-18080}
BODY=samples/github/push.json

port_free() {
  ! (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null || { echo "port $1 is taken (another bench?): set PORT" >&2; exit 1; }
}
command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install wrk" >&2; exit 1; }
cargo build --release --quiet --bin hookgate --example paced
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
. bench/lib.sh
signing_secret bench-secret

# Prefixes for the server's and wrk's commands (empty unless pinned).
server_on=()
wrk_on=()

# run_wrk NAME PID -> one table row
run_wrk() {
  local name=$1 pid=$2
  "${wrk_on[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s bench/github_push.lua "http://127.0.0.1:$PORT/hooks/github" \
    -- "$BODY" "$sig" "run$RANDOM$RANDOM" > "$work/wrk.out"
  local rps p50 p99 non2xx
  read -r rps p50 p99 non2xx < <(wrk_figures "$work/wrk.out")
  printf '| %s | %s | %s | %s | %s MiB | %s |\n' "$name" "$rps" "$p50" "$p99" "$(peak_rss_mib "$pid")" "$non2xx"
}

# warm_memory: WARM GiB written to a file and deleted (see the top)
warm_memory() {
  local gib=${WARM:-2} t0
  [ "$gib" -gt 0 ] || { echo "(memory not warmed: WARM=0)"; return; }
  t0=$(date +%s.%N)
  dd if=/dev/zero of="$work/warm" bs=1M count=$((gib * 1024)) status=none
  rm -f "$work/warm"
  echo "(warmed $gib GiB of memory in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-4) s)"
}

# stop_hookgate: SIGTERM, then its data dir goes (it is not read again)
stop_hookgate() {
  kill -TERM "$pid"; wait "$pid" || true
  rm -rf "$dir"
}

# start_hookgate GROUP_COMMIT -> sets $pid and $dir
start_hookgate() {
  local group_commit=$1
  dir="$work/hg-$group_commit-$RANDOM"
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
  # ROUTES=1: bench/backlog.sh's routes (a sink whose port is closed, a
  # template that fails), so routing and its state writes share the
  # machine with ingest; READ_PAYLOAD=1 adds a payload read.
  if [ -n "${ROUTES:-}" ]; then
    backlog_routes "http://127.0.0.1:9/closed" "http://127.0.0.1:9/reject" >> "$dir/routes.toml"
  fi
  port_free "$PORT"
  HOOKGATE_LOG=warn "${server_on[@]}" "$BIN" --config "$dir/routes.toml" serve 2>"$dir/log" &
  pid=$!
  wait_port "$PORT"
}

hookgate_row() {
  start_hookgate "$2"
  run_wrk "$1" "$pid"
  stop_hookgate
}

paced_line() {
  start_hookgate true
  # Let the first log segments be prepared before the clock starts.
  sleep 1
  printf 'hookgate, group commit, open loop: '
  ./target/release/examples/paced "http://127.0.0.1:$PORT/hooks/github" "$secret" "$RATE" "${DURATION%s}"
  echo "  peak RSS $(peak_rss_mib "$pid") MiB"
  stop_hookgate
}

# start_node FSYNC -> sets $pid
start_node() {
  local fsync=$1
  port_free "$PORT"
  SECRET_FILE="$work/secret" PORT=$PORT FSYNC=$fsync LOG_FILE="$work/node-events.log" \
    "${server_on[@]}" node bench/node/server.mjs &
  pid=$!
  wait_port "$PORT"
}

have_node() {
  [ -z "${SKIP_NODE:-}" ] && command -v node >/dev/null && { [ -d bench/node/node_modules ] || (cd bench/node && npm install --silent --no-audit --no-fund >/dev/null 2>&1); }
}

node_row() {
  local name=$1 fsync=$2
  start_node "$fsync"
  run_wrk "$name" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# per_core_row NAME PID -> one row of the pinned table: wrk's figures and
# the server's CPU time and voluntary context switches per request over the run
per_core_row() {
  local name=$1 pid=$2 ticks0 ctx0 ticks1 ctx1 n rps p50 p99 non2xx
  ticks0=$(cpu_ticks "$pid"); ctx0=$(ctx_switches "$pid")
  "${wrk_on[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
    -s bench/github_push.lua "http://127.0.0.1:$PORT/hooks/github" \
    -- "$BODY" "$sig" "run$RANDOM$RANDOM" > "$work/wrk.out"
  ticks1=$(cpu_ticks "$pid"); ctx1=$(ctx_switches "$pid")
  n=$(wrk_requests "$work/wrk.out")
  read -r rps p50 p99 non2xx < <(wrk_figures "$work/wrk.out")
  printf '| %s | %s | %s | %s | %.1f µs | %.2f | %s MiB | %s |\n' "$name" "$rps" "$p50" "$p99" \
    "$(echo "($ticks1 - $ticks0) * 1000000 / $(getconf CLK_TCK) / $n" | bc -l)" \
    "$(echo "($ctx1 - $ctx0) / $n" | bc -l)" "$(peak_rss_mib "$pid")" "$non2xx"
  echo "$rps" >> "$work/rps-${name%%,*}"
}

# The pinned A B A B run, then one unpinned pair; prints both ratios.
# One hookgate row, then one Node row (as `server_on` and `wrk_on` say).
per_core_pair() {
  start_hookgate true
  per_core_row "hookgate, fsync per 202" "$pid"
  stop_hookgate
  start_node 0
  per_core_row "node, verify only" "$pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

per_core() {
  have_node || { echo "PIN=1 needs the Node peer (node and npm)" >&2; exit 1; }
  echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg); wrk -t$THREADS -c$CONNECTIONS -d$DURATION, body $(wc -c < "$BODY") bytes"
  warm_memory
  echo
  echo "Each server pinned to CPU $SERVER_CPU, wrk to CPU $WRK_CPU:"
  echo
  echo "| server | req/s | p50 | p99 | server CPU per request | voluntary context switches per request | peak RSS | non-2xx |"
  echo "|---|---|---|---|---|---|---|---|"
  server_on=(taskset -c "$SERVER_CPU")
  wrk_on=(taskset -c "$WRK_CPU")
  for _ in $(seq "$ROUNDS"); do
    per_core_pair
  done
  echo
  echo "Pinned, hookgate / Node per round: $(paste -d/ "$work/rps-hookgate" "$work/rps-node" | awk -F/ '{printf "%s%.2f×", sep, $1 / $2; sep = ", "}')"
  server_on=()
  wrk_on=()
  rm -f "$work"/rps-*
  echo
  echo "Unpinned (both on all $(nproc) cores):"
  echo
  echo "| server | req/s | p50 | p99 | server CPU per request | voluntary context switches per request | peak RSS | non-2xx |"
  echo "|---|---|---|---|---|---|---|---|"
  per_core_pair
  echo
  echo "Unpinned, hookgate / Node: $(paste -d/ "$work/rps-hookgate" "$work/rps-node" | awk -F/ '{printf "%.2f×", $1 / $2}')"
}

if [ -n "$PIN" ]; then per_core; exit; fi
echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r); wrk -t$THREADS -c$CONNECTIONS -d$DURATION, body $(wc -c < "$BODY") bytes"
warm_memory
echo
echo "| server | req/s | p50 | p99 | peak RSS | non-2xx |"
echo "|---|---|---|---|---|---|"
hookgate_row "hookgate, fsync per 202, group commit" true
hookgate_row "hookgate, fsync per 202, no group commit" false
if have_node; then
  node_row "node @octokit/webhooks-methods, verify only" 0
  node_row "node @octokit/webhooks-methods, fsync per event" 1
else
  echo "(node peer skipped: node or npm install unavailable)"
fi
echo
paced_line
