# Shared by the bench scripts (sourced): the release build, the signing
# secret, waiting for a port, peak RSS, and reading wrk's figures.
# signing_secret expects $work and $BODY.

# build_release BIN EXAMPLE... -> the release examples, and the daemon
# unless BIN (another build the caller was given) is set
build_release() {
  local bin=$1 args=() example
  shift
  for example in "$@"; do args+=(--example "$example"); done
  [ -n "$bin" ] || args+=(--bin hookgate)
  cargo build --release --quiet "${args[@]}"
}

# signing_secret PREFIX -> $secret (also in $work/secret) and $sig, the
# GitHub signature of $BODY
signing_secret() {
  secret="$1-$(date +%s)"
  printf %s "$secret" > "$work/secret"
  sig="sha256=$(openssl dgst -sha256 -hmac "$secret" -r < "$BODY" | cut -d' ' -f1)"
}

wait_port() {
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listening on $1" >&2; return 1
}

peak_rss_mib() { awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/$1/status"; }

# wrk_figures FILE -> "req/s p50 p99 non-2xx" of wrk's --latency output
wrk_figures() {
  awk '/Requests\/sec/ {rps = sprintf("%.0f", $2)} $1 == "50%" {p50 = $2} $1 == "99%" {p99 = $2}
       /Non-2xx/ {non = $5} END {print rps, p50, p99, non + 0}' "$1"
}

# cpu_ticks PID -> user + system time so far, in clock ticks (/proc/PID/stat
# fields 14 and 15; the name in field 2 may hold spaces, so count after it)
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }

# ctx_switches PID -> voluntary context switches of its live threads so far
# (waits: a thread handing work to another and blocking; the involuntary
# ones count what else runs on the core)
ctx_switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {n += $2} END {print n + 0}'; }

# wrk_requests FILE -> how many requests wrk completed
wrk_requests() { awk '/requests in/ {print $1}' "$1"; }

# backlog_routes CHAT_URL ARCHIVE_URL [CHAT_CONCURRENCY] -> the sinks and
# routes of bench/backlog.sh (TOML): each event to an http sink `chat`
# (it waits while its URL is down), and by a route whose template fails
# to `archive` (a dead letter at routing). bench/callgrind.sh ROUTES=1
# counts the same routing. Neither route reads the payload, so routing
# never parses it (src/route/reads.rs); READ_PAYLOAD=1 gives `chat` a
# `when` on the payload, which every push passes, to count the parse too.
backlog_routes() {
  cat <<TOML
[sinks.chat]
kind = "http"
url = "$1"
${3:+concurrency = $3}
[sinks.archive]
kind = "http"
url = "$2"
[[routes]]
name = "chat"
to = ["chat"]
${READ_PAYLOAD:+when = \"payload.ref is defined\"}
[[routes]]
name = "archive"
to = ["archive"]
message = "{{ range(1000000) }}"
TOML
}
