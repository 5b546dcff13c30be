#!/usr/bin/env bash
# End-to-end benchmark: signed GitHub pushes → hookgate (fsync per 202) →
# router → dispatcher → an http sink on loopback. Reports the time from
# sending to arrival at the sink (paced at RATE req/s), and the delivery
# throughput when events arrive as fast as hookgate takes them.
#
#   bench/e2e.sh                       # RATE=1000 DURATION=10 (seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-1000}
DURATION=${DURATION:-10}   # not SECONDS: bash counts that up by itself
PORT=${PORT:-18180}
SINK_PORT=$((PORT + 2))
cargo build --release --quiet --example e2e
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
secret="e2e-$(date +%s)"
printf %s "$secret" > "$work/secret"

run() {
  local label=$1 rate=$2 mode=${3:-}
  rm -rf "$work/data"
  cat > "$work/routes.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$((PORT + 1))"
data_dir = "$work/data"
[sources.github]
provider = "github"
secret = { file = "$work/secret" }
[sinks.local]
kind = "http"
url = "http://127.0.0.1:$SINK_PORT/in"
concurrency = 32
retry = ["2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s"]
[[routes]]
name = "all"
to = ["local"]
TOML
  HOOKGATE_LOG=warn ./target/release/hookgate --config "$work/routes.toml" serve 2>"$work/log" &
  local pid=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
  printf '%s: ' "$label"
  ./target/release/examples/e2e "http://127.0.0.1:$PORT/hooks/github" "$secret" "$SINK_PORT" "$rate" "$DURATION" $mode
  echo "  peak RSS $(awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)"
  kill -TERM "$pid"; wait "$pid" || true
}

echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r)"
run "paced at $RATE/s" "$RATE"
run "as fast as possible" 0
# The sink is down while events arrive: deliveries pile up (and the
# breaker opens); when it comes up, the drain rate is the dispatcher's.
run "backlog drained" 0 backlog
