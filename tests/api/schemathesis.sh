#!/usr/bin/env bash
# The admin API against its own OpenAPI document (/api/openapi.json):
# schemathesis generates requests from it, and every answer must be no
# 5xx, a status the document lists, and a body its schema accepts.
#
#   tests/api/schemathesis.sh [HOOKGATE_BINARY]
#
# Runs the daemon on the shipped routes.toml (--dev secrets, a temp data
# directory, free loopback ports), sends it a few signed samples so that
# searches find events and deliveries, and stops it after. Needs
# schemathesis (`pip install schemathesis`; `st` on PATH or ST=path).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/hookgate}
st=${ST:-st}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen=$(port) admin=$(port)
sed -e "s|^listen = .*|listen = \"127.0.0.1:$listen\"|" \
    -e "s|^admin_listen = .*|admin_listen = \"127.0.0.1:$admin\"|" \
    -e "s|^data_dir = .*|data_dir = \"$work/data\"|" routes.toml > "$work/routes.toml"
cp -r templates "$work/" 2>/dev/null || true
[ -f routes.test.toml ] && cp routes.test.toml "$work/"
HOOKGATE_LOG=warn "$bin" --config "$work/routes.toml" serve --dev 2>"$work/log" &
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$admin/healthz" >/dev/null && break
  sleep 0.1
done
for event in push pull_request issues; do
  "$bin" --config "$work/routes.toml" send --dev github "$event" >/dev/null
done
"$st" run "http://127.0.0.1:$admin/api/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "${EXAMPLES:-30}" \
  --header "X-Hookgate-CSRF: 1" \
  --request-timeout 10 \
  --no-color
echo "schemathesis: the daemon's log had $(grep -c . "$work/log" || true) lines; errors:"
grep -i '"level":"ERROR"\| ERROR ' "$work/log" || echo "(none)"
