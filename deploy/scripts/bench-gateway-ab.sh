#!/usr/bin/env bash
# The ingest gateway of this checkout (NEW) beside another build (OLD),
# alternating in one run: events/s answered 202 under wrk, for large posts
# (500 events, 8 connections) and small ones (10 events, 64 connections).
# Each run has a spool directory of its own, and a run in which any posted
# event went to the spool (a 202 not confirmed by the broker) fails the
# benchmark. No writer runs; the namespace's queues are deleted at the end.
#   OLD=/tmp/auditline-old ROUNDS=5 DURATION=8 deploy/scripts/bench-gateway-ab.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
: "${OLD:?set OLD to the auditline binary to compare with}"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
cargo build --release --bin auditline >/dev/null
new=$PWD/target/release/auditline
ts=$(date +%s)
work=$(mktemp -d)
db=auditline_bench_gwab_$ts
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export AUDITLINE_NAMESPACE=benchgwab-$ts
export AUDITLINE_INGEST_LISTEN=127.0.0.1:18084
export AUDITLINE_INGEST__SPOOL_DIR=$work/spool
export RUST_LOG=warn
gateway=
stop_gateway() { if [ -n "$gateway" ]; then kill "$gateway" 2>/dev/null; wait "$gateway" 2>/dev/null || true; gateway=; fi; }
cleanup() {
  stop_gateway
  rabbitmqctl -q delete_queue "benchgwab-$ts.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "benchgwab-$ts.dead" >/dev/null 2>&1 || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
$new migrate >/dev/null
token=$($new token create --name bench-gwab --scope publish --service bench 2>/dev/null)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
line() { printf '{"occurred_at":"%s","session_id":"s-%d","user_id":"user-%d","client_ip":"10.0.0.%d","action_type":"data","endpoint":"/datasets/%d/rows","route":"/datasets/{id}/rows","http_method":"GET","status_code":200,"success":true,"response_time_ms":12.5,"metadata":{"rows":%d}}\n' \
  "$now" $(($1 % 50)) $(($1 % 100)) $(($1 % 250)) "$1" "$1"; }
for n in 500 10; do
  for i in $(seq "$n"); do line "$i"; done > "$work/body-$n.ndjson"
  cat > "$work/post-$n.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
wrk.headers["Authorization"] = "Bearer $token"
local f = io.open("$work/body-$n.ndjson", "rb")
wrk.body = f:read("*a")
f:close()
LUA
done
start_gateway() {
  rm -rf "$work/spool"; mkdir -p "$work/spool"
  "$1" ingest >/dev/null 2>>"$work/gateway.log" &
  gateway=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18084/healthz >/dev/null && return; sleep 0.05; done
  echo "the gateway did not start"; cat "$work/gateway.log"; exit 1
}
# events/s of 2xx answers (non-2xx are counted by wrk and refused here).
post() {
  local n=$1 connections=$2 out
  out=$(wrk -t2 -c"$connections" -d"${DURATION}s" -s "$work/post-$n.lua" http://127.0.0.1:18084/v1/events)
  if grep -q 'Non-2xx' <<<"$out"; then echo "non-2xx answers: $out" >&2; exit 1; fi
  awk -v n="$n" '/^Requests\/sec/ { printf "%.0f", $2 * n }' <<<"$out"
}
spooled() { curl -s http://127.0.0.1:18084/metrics | awk '$1 == "auditline_ingest_events_spooled_total" { print $2 }'; }
run() {
  start_gateway "$1"
  local a b s
  a=$(post 500 8); b=$(post 10 64); s=$(spooled)
  stop_gateway
  if [ "${s:-0}" != "0" ]; then echo "$1: $s posted events went to the spool; the figures would not be confirmed events" >&2; exit 1; fi
  echo "$a $b"
}
large=(); small=()
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then o=$(run "$OLD"); n=$(run "$new"); else n=$(run "$new"); o=$(run "$OLD"); fi
  read -r ol os <<<"$o"; read -r nl ns <<<"$n"
  rl=$(awk -v a="$nl" -v b="$ol" 'BEGIN { printf "%.3f", a / b }')
  rs=$(awk -v a="$ns" -v b="$os" 'BEGIN { printf "%.3f", a / b }')
  echo "[round $round] 500-event posts: old $ol, new $nl events/s (new/old $rl); 10-event posts x64: old $os, new $ns events/s (new/old $rs)"
  large+=("$rl"); small+=("$rs")
done
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
echo "new/old median: 500-event posts $(median "${large[@]}"), 10-event posts $(median "${small[@]}")"
