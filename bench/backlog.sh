#!/usr/bin/env bash
# A deep backlog (issue #10): what grows with a million deliveries waiting.
#
# One hookgate (local backend), every event routed twice:
#   chat     to an http sink whose port is closed (Slack is down): its
#            deliveries wait, its breaker open
#   archive  by a route whose message template fails for every event
#            (`range` over too many items): each delivery is dead when it
#            is made, so the dead letters grow as fast as the backlog
#            without an attempt
# Signed 7.5 KB pushes with unique ids (wrk -c32) fill it until TARGET
# deliveries wait. Measured: ingest req/s with an empty queue and with the
# backlog (wrk DURATION each), the router's lag behind ingest, peak RSS,
# the daemon's CPU while idle with the backlog (IDLE seconds), how long
# `queue stats`, `queue dead list` and the console's pages take, the
# startup time on the full log, and the drain rate once chat's sink is
# up (examples/sink.rs answering 200; the daemon restarted, so no
# breaker waits).
#
#   bench/backlog.sh                 # TARGET=1000000 DURATION=10 IDLE=30
#   TARGET=100000 bench/backlog.sh   # a quicker look
#   BIN=path/to/hookgate …           # another build (no cargo build)
#   WARM=0 bench/backlog.sh          # no warm-up of memory (see below)
#
# Memory first touched costs a virtual machine's guest about five times
# what memory it has used before costs (the host backs it on first touch:
# 1.9 s of system time a GiB of new page cache here, against 0.35 once
# warm). The log and state files grow the page cache by about 4 KB an
# event, so without a warm-up the fill moves into colder memory as the
# backlog grows, and the backlog's ingest pays a cost the empty queue's
# did not. So the script first writes WARM GiB (default: 5 KB an event
# of TARGET, at most what is available less 2 GiB) to a file in its temp
# dir and deletes it: both phases then grow into memory already touched,
# as every page is on a machine of its own. WARM=0 skips it.
#
# Beside req/s, the daemon's CPU a request (user + system from /proc,
# the router's share included: it routes what came in meanwhile) is the
# steadier figure on a shared machine.
# Disk: about 3.5 GB per million events in a temp dir (removed at the
# end). Prints one Markdown table and the details. Needs wrk and jq.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${TARGET:-1000000}
DURATION=${DURATION:-10}
IDLE=${IDLE:-30}
PORT=${PORT:-18400}
ADMIN=$((PORT + 1))
CHAT_PORT=$((PORT + 2))
SINK_PORT=$((PORT + 3))
BODY=samples/github/push.json

for tool in wrk jq; do
  command -v "$tool" >/dev/null || { echo "bench needs $tool: apt-get install $tool" >&2; exit 1; }
done
. bench/lib.sh
build_release "${BIN:-}" sink
BIN=$(realpath "${BIN:-./target/release/hookgate}")
work=$(mktemp -d "${TMPDIR:-/var/tmp}/hookgate-backlog.XXXXXX")
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
signing_secret backlog

cat > "$work/routes.toml" <<TOML
[server]
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$ADMIN"
data_dir = "$work/data"
[sources.github]
provider = "github"
secret = { file = "$work/secret" }
TOML
backlog_routes "http://127.0.0.1:$CHAT_PORT/ok" "http://127.0.0.1:$SINK_PORT/reject" 32 >> "$work/routes.toml"

start_daemon() {
  HOOKGATE_LOG=warn "$BIN" --config "$work/routes.toml" serve 2>>"$work/log" &
  pid=$!
}
ready() { curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null; }
stats() { curl -sf "http://127.0.0.1:$ADMIN/api/queue/stats"; }
stat() { stats | jq -r ".$1"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

# ingest SECONDS TAG -> "req/s µs" (every answer must be a 202): req/s, and
# the daemon's CPU µs a request until the router has routed them all;
# counts the requests in $work/sent
ingest() {
  local t0 rps p50 p99 non n
  t0=$(cpu_ticks "$pid")
  wrk -t2 -c32 -d"$1s" --latency -s bench/github_push.lua "http://127.0.0.1:$PORT/hooks/github" \
    -- "$BODY" "$sig" "$2$RANDOM$RANDOM" > "$work/wrk.$2"
  read -r rps p50 p99 non < <(wrk_figures "$work/wrk.$2")
  [ "$non" = 0 ] || { echo "wrk ($2): $non answers were not 202" >&2; cat "$work/wrk.$2" >&2; exit 1; }
  n=$(wrk_requests "$work/wrk.$2")
  echo $(($(cat "$work/sent") + n)) > "$work/sent"
  routed > "$work/lag.$2"
  echo "$rps $(awk -v t="$(($(cpu_ticks "$pid") - t0))" -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN {printf "%.1f", t / hz / n * 1e6}')"
}

# routed -> waits until the router has routed every accepted event; prints the wait
routed() {
  local t0 n
  t0=$(now)
  while n=$(stat inbox) && [ "$n" != 0 ]; do sleep 0.2; done
  secs "$t0" "$(now)"
}

# timed CMD... -> seconds the command took (its output in $work/timed)
timed() {
  local t0
  t0=$(now)
  "$@" > "$work/timed"
  secs "$t0" "$(now)"
}

# WARM GiB written and deleted (see the top): free memory the guest has
# touched before.
avail_gib=$(awk '/MemAvailable/ {printf "%d", $2 / 1048576 - 2}' /proc/meminfo)
WARM=${WARM:-$(( (TARGET * 5 + 1048575) / 1048576 ))}
[ "$WARM" -le "$avail_gib" ] || WARM=$avail_gib
if [ "$WARM" -gt 0 ]; then
  t0=$(now)
  dd if=/dev/zero of="$work/warm" bs=1M count=$((WARM * 1024)) status=none
  rm -f "$work/warm"
  warmed="warmed $WARM GiB of memory in $(secs "$t0" "$(now)") s"
else
  warmed="memory not warmed (WARM=0)"
fi

echo 0 > "$work/sent"
start_daemon
wait_port "$PORT"

echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(uname -r); disk: $(df -h "$work" | awk 'NR == 2 {print $1}'); target $TARGET deliveries waiting; $warmed" | tee "$work/details"

read -r empty empty_cpu < <(ingest "$DURATION" empty)
echo "empty queue: $empty req/s, $empty_cpu µs of CPU a request" | tee -a "$work/details"

# Fill in chunks of 20 s until TARGET events are in: each makes one
# delivery that waits (chat) and one that dies (archive).
filled=$(now)
while [ "$(cat "$work/sent")" -lt "$TARGET" ]; do
  read -r rate rate_cpu < <(ingest 20 fill)
  s=$(stats)
  echo "  fill: $rate req/s, $rate_cpu µs a request; waiting $(jq .deliveries <<<"$s"), dead $(jq .dead <<<"$s"), not yet routed $(jq .inbox <<<"$s"), RSS $(awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status)" | tee -a "$work/details"
done
lag=$(cat "$work/lag.fill")
echo "filled in $(secs "$filled" "$(now)") s; router done $lag s after the last chunk" | tee -a "$work/details"

read -r full full_cpu < <(ingest "$DURATION" full)
echo "with the backlog: $full req/s, $full_cpu µs of CPU a request; router done $(cat "$work/lag.full") s after" | tee -a "$work/details"

waiting=$(stat deliveries)
dead=$(stat dead)
echo "$waiting deliveries waiting (chat), $dead dead letters (archive)" | tee -a "$work/details"
sleep 5
t0=$(cpu_ticks "$pid")
sleep "$IDLE"
idle=$(awk -v t="$(($(cpu_ticks "$pid") - t0))" -v hz="$(getconf CLK_TCK)" -v s="$IDLE" 'BEGIN {printf "%.1f", 100 * t / hz / s}')
echo "idle CPU over $IDLE s: $idle %" | tee -a "$work/details"

t_stats=$(timed "$BIN" --config "$work/routes.toml" queue stats)
t_dead=$(timed "$BIN" --config "$work/routes.toml" queue dead list)
listed=$(grep -c . "$work/timed" || true)
t_api=$(timed curl -sf "http://127.0.0.1:$ADMIN/api/dead?limit=50")
t_sink_page=$(timed curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/sinks")
t_dead_page=$(timed curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/dead")
t_events_page=$(timed curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/")
echo "queue stats $t_stats s; queue dead list $t_dead s ($listed lines); /api/dead?limit=50 $t_api s; console /sinks $t_sink_page s, /dead $t_dead_page s, / $t_events_page s" | tee -a "$work/details"
rss=$(peak_rss_mib "$pid")
echo "peak RSS $rss MiB" | tee -a "$work/details"

kill -TERM "$pid"
wait "$pid" || true
disk=$(du -sh "$work/data" | cut -f1)
echo "on disk: $(du -sh "$work/data/log" | cut -f1) log, $(du -sh "$work/data/state" | cut -f1) state" | tee -a "$work/details"

# The chat sink comes back; a restart reads the full log back.
./target/release/examples/sink "$CHAT_PORT" > "$work/chat.out" &
chat=$!
wait_port "$CHAT_PORT"
t0=$(now)
start_daemon
until ready; do sleep 0.05; done
startup=$(secs "$t0" "$(now)")
echo "startup with $disk on disk: $startup s to /readyz 200, RSS then $(awk '/VmRSS/ {printf "%.0f", $2/1024}' /proc/$pid/status) MiB" | tee -a "$work/details"
t0=$(now)
while left=$(stat deliveries) && [ "$left" != 0 ]; do sleep 0.2; done
took=$(secs "$t0" "$(now)")
drain=$(awk -v n="$waiting" -v s="$took" 'BEGIN {printf "%.0f", n / s}')
echo "drained $waiting in $took s: $drain/s; RSS after $(peak_rss_mib "$pid") MiB peak" | tee -a "$work/details"
kill -TERM "$pid" "$chat"
wait "$pid" || true
wait "$chat" || true
echo "chat sink: $(cat "$work/chat.out")" >> "$work/details"

echo
echo "| deliveries waiting | dead letters | ingest empty | ingest with backlog | ratio | CPU a request empty / backlog | peak RSS | router behind ingest | idle CPU | \`queue stats\` | \`queue dead list\` | startup | drain when back |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
echo "| $waiting | $dead | $empty | $full | $(awk -v a="$full" -v b="$empty" 'BEGIN {printf "%.2f×", a / b}') | $empty_cpu / $full_cpu µs | $rss MiB | $lag s | $idle % | $t_stats s | $t_dead s | $startup s ($disk) | $drain/s |"
echo
cat "$work/details"
