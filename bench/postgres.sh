#!/usr/bin/env bash
# Storage backends side by side in one run: the local backend (event log
# + its state file), PostgreSQL with one hookgate instance, and PostgreSQL with two
# instances on one database. The database is a throwaway cluster on
# loopback (initdb in a temp dir, fsync and synchronous_commit on, as the
# `postgres` user when run as root).
#
# For each: ingest with wrk (signed 7.5 KB pushes, unique delivery ids,
# 32 connections; two instances get 16 each, at once, and their req/s are
# summed), open-loop latency at RATE req/s (examples/paced.rs, requests
# taken in turn by the instances), and delivery throughput to an http sink
# on loopback (examples/e2e.rs, as fast as possible).
#
#   bench/postgres.sh          # DURATION=10 RATE=2000
#   PIN=1 bench/postgres.sh    # PostgreSQL on core 1, everything else
#                              # (hookgate, wrk, the load examples) on core 0
#   HOOKGATE=PATH bench/postgres.sh   # that binary (no build): A/B runs
#                              # against a copy of an older build
#   bench/postgres.sh soak     # SOAK=180 SOAK_RATE=500: one instance, events
#                              # routed and delivered at a steady rate; the
#                              # tables' sizes every 15 s
#
# Prints one Markdown table. Needs wrk and PostgreSQL's server binaries.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10}
RATE=${RATE:-2000}
BASE=${BASE:-18300}
PG_PORT=$((BASE + 90))
SINK_PORT=$((BASE + 91))
BODY=samples/github/push.json

# PIN=1: the database gets a core of its own, as it has a machine of its
# own in production; hookgate and its load share the other, whichever the
# backend, so that both backends' rows have the same CPU for hookgate.
db_core=() app_core=()
if [ "${PIN:-0}" = 1 ]; then
  db_core=(taskset -c 1) app_core=(taskset -c 0)
fi

command -v wrk >/dev/null || { echo "bench needs wrk: apt-get install wrk" >&2; exit 1; }
bindir=$(pg_config --bindir 2>/dev/null || true)
[ -x "$bindir/initdb" ] || bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bindir/initdb" ] || { echo "bench needs PostgreSQL: apt-get install postgresql" >&2; exit 1; }
. bench/lib.sh
build_release "${HOOKGATE:-}" paced e2e
HOOKGATE=$(realpath "${HOOKGATE:-./target/release/hookgate}")

work=$(mktemp -d)
chmod 755 "$work"
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)
stop_all() {
  kill $(jobs -p) 2>/dev/null || true
  "${as_pg[@]}" "$bindir/pg_ctl" stop -m immediate -D "$work/pg" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap stop_all EXIT

mkdir -p "$work/pg"
[ ${#as_pg[@]} -gt 0 ] && chown postgres: "$work/pg"
"${as_pg[@]}" "$bindir/initdb" -D "$work/pg" -A trust -U postgres >/dev/null
"${db_core[@]}" "${as_pg[@]}" "$bindir/pg_ctl" start -w -D "$work/pg" -l "$work/pg/server.log" \
  -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$work/pg -c max_connections=200" >/dev/null
psql_pg() { "${as_pg[@]}" psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres "$@"; }

# A fresh cluster has no WAL segments to reuse: every 16 MiB of WAL it
# creates and zero-fills a new one while commits wait, a stall of 20-150 ms
# every ~2 s at 2,000 events/s (session 8: p99 at 2,000/s 19-74 ms cold
# against 11-12 ms warm, the stalls 1.9 s apart). A server that has run a
# while recycles its old segments at each checkpoint instead, so the bench
# measures that: 1 GiB of WAL (max_wal_size) written and checkpointed
# before the first row.
psql_pg -c "SET synchronous_commit = off" \
  -c "CREATE TABLE warm AS SELECT repeat('x', 2000) AS x FROM generate_series(1, 500000)" \
  -c "DROP TABLE warm" -c CHECKPOINT

signing_secret pg-bench

# start NAME PORT QUEUE_TOML ROUTED -> appends the pid to $pids. ROUTED:
# "yes" for the route to the sink (else ingest alone: a sink that is not
# up yet would open its breaker and stall the delivery measurement).
start() {
  local name=$1 port=$2 queue=$3 routed=$4
  local dir="$work/$name"
  rm -rf "$dir"
  mkdir -p "$dir"
  local route=""
  [ "$routed" = yes ] && route='[[routes]]
name = "all"
to = ["local"]'
  cat > "$dir/routes.toml" <<TOML
$queue
[server]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 1))"
data_dir = "$dir/data"
[sources.github]
provider = "github"
secret = { file = "$work/secret" }
[sinks.local]
kind = "http"
url = "http://127.0.0.1:$SINK_PORT/in"
concurrency = 32
retry = ["2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s", "2s"]
$route
TOML
  HOOKGATE_LOG=warn "${app_core[@]}" "$HOOKGATE" --config "$dir/routes.toml" serve 2>"$dir/log" &
  pids+=($!)
  wait_port "$port"
}

# wrk_sum PORTS... -> "req/s p50 p99" (req/s summed; latencies of the first)
wrk_sum() {
  local conns=$((32 / $#)) wrks=() port
  for port in "$@"; do
    "${app_core[@]}" wrk -t1 -c"$conns" -d"${DURATION}s" --latency -s bench/github_push.lua \
      "http://127.0.0.1:$port/hooks/github" -- "$BODY" "$sig" "w$port$RANDOM" > "$work/wrk.$port" &
    wrks+=($!)
  done
  wait "${wrks[@]}"
  local total=0 p50="" p99="" non2xx=0 rps a50 a99 non
  for port in "$@"; do
    read -r rps a50 a99 non < <(wrk_figures "$work/wrk.$port")
    total=$((total + rps)) non2xx=$((non2xx + non))
    [ -n "$p50" ] || p50=$a50 p99=$a99
  done
  echo "$total | $p50 | $p99 | $non2xx"
}

# instances NAME QUEUE_TOML N ROUTED -> fresh database and data dirs, N
# instances started; sets $ports, $list (their URLs, comma-separated), $pids
instances() {
  local name=$1 queue=$2 n=$3 routed=$4 i
  psql_pg -c "DROP DATABASE IF EXISTS bench" -c "CREATE DATABASE bench" >/dev/null 2>&1
  pids=() ports=()
  local urls=()
  for i in $(seq "$n"); do
    local port=$((BASE + 10 * i))
    start "$name-$i" "$port" "$queue" "$routed"
    ports+=("$port")
    urls+=("http://127.0.0.1:$port/hooks/github")
  done
  list=$(IFS=,; echo "${urls[*]}")
}

stop_instances() {
  kill -TERM "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
}

# row NAME QUEUE_TOML N -> one table row (N instances)
row() {
  local name=$1 queue=$2 n=$3
  local ingest paced e2e rss=""
  instances "$name" "$queue" "$n" no
  ingest=$(wrk_sum "${ports[@]}")
  paced=$("${app_core[@]}" ./target/release/examples/paced "$list" "$secret" "$RATE" "$DURATION")
  for p in "${pids[@]}"; do rss+="$(peak_rss_mib "$p") "; done
  stop_instances
  instances "$name" "$queue" "$n" yes
  e2e=$("${app_core[@]}" ./target/release/examples/e2e "$list" "$secret" "$SINK_PORT" 0 "$DURATION")
  stop_instances
  local p50 p99 delivered
  p50=$(sed -n 's/.*p50 \([0-9.]*\) ms, p90.*/\1/p' <<<"$paced")
  p99=$(sed -n 's/.*p99 \([0-9.]*\) ms, p99.9.*/\1/p' <<<"$paced")
  delivered=$(sed -n 's/.*(\([0-9]*\)\/s from first to last arrival.*/\1/p' <<<"$e2e")
  echo "| $name | $ingest | $p50 ms | $p99 ms | $delivered | ${rss% } MiB |"
  echo "$name paced: $paced" >> "$work/details"
  echo "$name e2e: $e2e" >> "$work/details"
}

pg_queue="[queue]
backend = \"postgres\"
url = { env = \"HOOKGATE_BENCH_DB\" }
pool_size = 16"
export HOOKGATE_BENCH_DB="host=127.0.0.1 port=$PG_PORT user=postgres dbname=bench sslmode=disable"

soak() {
  local seconds=${SOAK:-180} rate=${SOAK_RATE:-500}
  instances soak "$pg_queue" 1 yes
  echo "Soak: $rate events/s for $seconds s, routed to an http sink on loopback and delivered; sizes in MiB (pg_total_relation_size)"
  echo
  echo "| after | events | inbox | deliveries (pending+dead) | seen (dedupe keys) | WAL since start |"
  echo "|---|---|---|---|---|---|"
  local lsn0
  lsn0=$(psql_pg -d bench -At -c "SELECT pg_current_wal_lsn()")
  ./target/release/examples/e2e "$list" "$secret" "$SINK_PORT" "$rate" "$seconds" > "$work/soak.e2e" &
  local load=$! t
  for t in $(seq 15 15 "$seconds"); do
    sleep 15
    psql_pg -d bench -At -F ' | ' -c "SELECT '$t s',
      round((SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
       WHERE i.inhparent = 'hookgate_events'::regclass) / 1048576.0, 1),
      round(pg_total_relation_size('hookgate_inbox') / 1048576.0, 1),
      round(pg_total_relation_size('hookgate_deliveries') / 1048576.0, 1),
      round(pg_total_relation_size('hookgate_seen') / 1048576.0, 1),
      round(pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0') / 1048576.0, 0)" | sed 's/^/| /; s/$/ |/'
  done
  wait "$load" || true
  echo
  echo "e2e: $(cat "$work/soak.e2e")"
  psql_pg -d bench -At -c "SELECT 'autovacuum runs: inbox ' || autovacuum_count || ', ' FROM pg_stat_user_tables WHERE relname = 'hookgate_inbox'" -c "SELECT 'deliveries ' || autovacuum_count FROM pg_stat_user_tables WHERE relname = 'hookgate_deliveries'" | tr -d '\n'
  echo
  stop_instances
}

if [ "${1:-}" = soak ]; then
  soak
  exit 0
fi

echo "Machine: $(nproc) cores$([ "${PIN:-0}" = 1 ] && echo ', PostgreSQL on core 1, the rest on core 0'), $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r); PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on loopback, fsync on; wrk -c32 -d${DURATION}s; open loop at $RATE req/s"
echo
echo "| backend | ingest req/s (wrk) | wrk p50 | wrk p99 | non-2xx | p50 at $RATE/s | p99 at $RATE/s | delivered/s (e2e) | peak RSS (ingest) |"
echo "|---|---|---|---|---|---|---|---|---|"
row "local" "" 1
row "postgres, 1 instance" "$pg_queue" 1
row "postgres, 2 instances" "$pg_queue" 2
echo
cat "$work/details"
