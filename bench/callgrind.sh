#!/usr/bin/env bash
# Instructions per request: the figure that does not move with the load on
# the machine. The release daemon runs under `valgrind --tool=callgrind`;
# WARMUP signed 7.5 KB GitHub pushes are sent, counters are dumped (startup
# and warm-up), then COUNT more (examples/burst.rs, CONCURRENCY connections,
# each waiting for its answer; every answer must be a 202), counters dumped
# again, then the daemon is stopped (shutdown). The bench config has no
# routes: each event is also read back by the router and indexed.
#
#   bench/callgrind.sh          # COUNT=2000 CONCURRENCY=1 WARMUP=200
#   BIN=path/to/hookgate bench/callgrind.sh   # another build (not rebuilt)
#   ROUTES=1 bench/callgrind.sh   # with routing (bench/backlog.sh's routes)
#   ROUTES=1 FILL=1000000 bench/callgrind.sh   # on a deep backlog
#
# FILL=N: before valgrind, the daemon runs natively on the same config and
# data and takes N pushes (32 connections), waits until the router has
# routed them all, and stops; then the count runs on that data. With
# ROUTES=1 that is N deliveries waiting and N dead letters: what the
# router's and the writer's work per request costs with a deep backlog,
# without the machine's noise (bench/backlog.sh's req/s moves with the
# host's load and its memory; see there).
# Prints instructions (Ir, user space only: the kernel's share, syscalls
# and context switches, is not counted) for startup, per request and for
# shutdown. With one connection every request is its own batch (its own
# sync); CONCURRENCY=8 shows what batching shares. Valgrind runs SHA-256 in
# software (reported apart) and serialises the threads, so the figure
# compares builds, not machines. Valgrind's fair scheduler (`--fair-sched`):
# with its default one, a thread spinning at startup sometimes starved the
# rest and the daemon never listened (session 12). KEEP=DIR keeps the callgrind files (callgrind_annotate reads them).
set -euo pipefail
cd "$(dirname "$0")/.."

COUNT=${COUNT:-2000}
CONCURRENCY=${CONCURRENCY:-1}
WARMUP=${WARMUP:-200}
PORT=${PORT:-18090}
BODY=samples/github/push.json

command -v valgrind >/dev/null || { echo "bench needs valgrind: apt-get install valgrind" >&2; exit 1; }
. bench/lib.sh
build_release "${BIN:-}" burst
BIN=${BIN:-./target/release/hookgate}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
signing_secret bench-secret

cat > "$work/routes.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$((PORT + 1))"
data_dir = "$work/data"
[sources.github]
provider = "github"
secret = { file = "$work/secret" }
TOML
# ROUTES=1: bench/backlog.sh's routes, so routing is counted too: each
# event to an http sink whose port is closed (it waits; its breaker opens)
# and by a route whose template fails (a dead letter at routing).
if [ -n "${ROUTES:-}" ]; then
  backlog_routes "http://127.0.0.1:9/closed" "http://127.0.0.1:9/reject" >> "$work/routes.toml"
fi
(exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && { echo "port $PORT is taken (another bench?): set PORT" >&2; exit 1; }
FILL=${FILL:-0}
if [ "$FILL" -gt 0 ]; then
  HOOKGATE_LOG=warn "$BIN" --config "$work/routes.toml" serve 2>"$work/fill.log" &
  pid=$!
  wait_port "$PORT"
  ./target/release/examples/burst "http://127.0.0.1:$PORT/hooks/github" "$secret" "$FILL" 32 >/dev/null
  until [ "$(curl -sf "http://127.0.0.1:$((PORT + 1))/api/queue/stats" | jq .inbox)" = 0 ]; do sleep 0.5; done
  filled=$(curl -sf "http://127.0.0.1:$((PORT + 1))/api/queue/stats" | jq -c '{deliveries, dead}')
  kill -TERM "$pid"; wait "$pid" || true
fi
HOOKGATE_LOG=warn valgrind --tool=callgrind --fair-sched=yes --callgrind-out-file="$work/cg.out" \
  "$BIN" --config "$work/routes.toml" serve 2>"$work/log" &
pid=$!
for _ in $(seq 600); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 1; done
wait_port "$PORT"

burst() { ./target/release/examples/burst "http://127.0.0.1:$PORT/hooks/github" "$secret" "$1" "$CONCURRENCY" >/dev/null; }
# Ir of the newest dump (callgrind writes cg.out.1, cg.out.2, … per dump).
dumped() { awk '/^(summary|totals):/ {print $2; exit}' "$(ls -v "$work"/cg.out.* | tail -1)"; }

burst "$WARMUP"
callgrind_control -d startup "$pid" >/dev/null 2>&1
startup=$(dumped)
started=$(date +%s)
burst "$COUNT"
took=$(($(date +%s) - started))
callgrind_control -d requests "$pid" >/dev/null 2>&1
requests=$(dumped)
# SHA-256 apart: valgrind emulates no SHA extensions, so sha2 runs its
# software rounds here (about 10× what SHA-NI costs) and they would drown
# every other change.
sha=$(callgrind_annotate --auto=no --threshold=100 "$(ls -v "$work"/cg.out.* | tail -1)" 2>/dev/null |
  awk '/:sha2::sha256::compress256/ {gsub(",", "", $1); s += $1} END {print s + 0}')
kill -TERM "$pid"; wait "$pid" || true
shutdown=$(awk '/^(summary|totals):/ {print $2; exit}' "$work/cg.out")

if [ "$BIN" = ./target/release/hookgate ]; then
  build="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+changes')"
else
  build=$BIN
fi
[ "$FILL" = 0 ] || echo "on $FILL events taken before (${ROUTES:+routed: }$filled)"
echo "Ir (user space) $build: startup and $WARMUP warm-up requests $startup; $COUNT requests over $CONCURRENCY connection(s) (${took} s under valgrind) $requests, $((requests / COUNT)) per request, **$(((requests - sha) / COUNT)) per request without SHA-256's rounds** ($((sha / COUNT))); shutdown $shutdown"
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/cg.out* "$KEEP"/; fi
