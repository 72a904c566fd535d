#!/usr/bin/env bash
# The ingest gateway's throughput while its spool replays a backlog, beside
# its throughput with an empty spool, alternating in one run. Each round:
#   1. empty spool: wrk posts 500-event NDJSON bodies for DURATION seconds;
#   2. the gateway is restarted on a spool holding BACKLOG events (what an
#      outage left) and wrk posts the same for DURATION seconds while it
#      replays.
# Prints events/s for each, the ratio, and how many posted events went to the
# spool during the replay (new posts are published straight to the broker).
# No writer runs: the namespace's queues are deleted at the end.
#   ROUNDS=3 DURATION=8 BACKLOG=300000 deploy/scripts/bench-gateway-replay.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
BACKLOG=${BACKLOG:-300000}
cargo build --release --bin auditline >/dev/null
bin=$PWD/target/release/auditline
ts=$(date +%s)
work=$(mktemp -d)
db=auditline_bench_replay_$ts
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export AUDITLINE_NAMESPACE=benchreplay-$ts
export AUDITLINE_INGEST_LISTEN=127.0.0.1:18083
export AUDITLINE_INGEST__SPOOL_DIR=$work/spool
export RUST_LOG=warn
gateway=
stop_gateway() { if [ -n "$gateway" ]; then kill "$gateway" 2>/dev/null; wait "$gateway" 2>/dev/null || true; gateway=; fi; }
cleanup() {
  stop_gateway
  rabbitmqctl -q delete_queue "benchreplay-$ts.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "benchreplay-$ts.dead" >/dev/null 2>&1 || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" postgres >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
$bin migrate >/dev/null
token=$($bin token create --name bench-replay --scope publish --service bench 2>/dev/null)
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
line() { printf '{"occurred_at":"%s","service":"bench","session_id":"s-%d","user_id":"user-%d","client_ip":"10.0.0.%d","action_type":"data","endpoint":"/datasets/%d/rows","route":"/datasets/{id}/rows","http_method":"GET","status_code":200,"success":true,"response_time_ms":12.5,"metadata":{"rows":%d}}\n' \
  "$now" $(($1 % 50)) $(($1 % 100)) $(($1 % 250)) "$1" "$1"; }
for i in $(seq 500); do line "$i"; done | sed 's/"service":"bench",//' > "$work/body.ndjson"
# The backlog: segments of at most 40,000 events, as the spool writes them.
python3 - "$work/backlog" "$BACKLOG" "$now" <<'PY'
import json, os, sys, uuid
out, n, now = sys.argv[1], int(sys.argv[2]), sys.argv[3]
os.makedirs(out, exist_ok=True)
seg, i = 1, 0
while i < n:
    with open(os.path.join(out, "segment-%012d.ndjson" % seg), "w") as f:
        for j in range(i, min(n, i + 40000)):
            f.write(json.dumps({"event_id": str(uuid.uuid4()), "occurred_at": now, "service": "bench",
                "session_id": "s-%d" % (j % 50), "user_id": "user-%d" % (j % 100), "action_type": "data",
                "endpoint": "/datasets/%d/rows" % j, "http_method": "GET", "status_code": 200,
                "success": True, "metadata": {"rows": j}}, separators=(",", ":")) + "\n")
    i += 40000
    seg += 1
PY
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
wrk.headers["Authorization"] = "Bearer $token"
local f = io.open("$work/body.ndjson", "rb")
wrk.body = f:read("*a")
f:close()
LUA
start_gateway() {
  $bin ingest >/dev/null 2>>"$work/gateway.log" &
  gateway=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:18083/healthz >/dev/null && return; sleep 0.05; done
  echo "the gateway did not start"; cat "$work/gateway.log"; exit 1
}
metric() { curl -s http://127.0.0.1:18083/metrics | awk -v m="$1" '$1 == m { print $2 }'; }
post() { wrk -t2 -c8 -d"${DURATION}s" -s "$work/post.lua" http://127.0.0.1:18083/v1/events | awk '/^Requests\/sec/ { printf "%.0f", $2 * 500 }'; }
ratios=()
for round in $(seq "$ROUNDS"); do
  rm -rf "$work/spool"; mkdir -p "$work/spool"
  start_gateway
  plain=$(post)
  stop_gateway
  rm -rf "$work/spool"; cp -r "$work/backlog" "$work/spool"
  start_gateway
  replaying=$(post)
  spooled=$(metric auditline_ingest_events_spooled_total)
  left=$(ls "$work/spool" | grep -c '^segment-' || true)
  stop_gateway
  echo "[round $round] empty spool: $plain events/s; replaying $BACKLOG: $replaying events/s (posted events spooled: ${spooled:-0}; segments left when wrk ended: $left)"
  ratios+=("$(awk -v a="$replaying" -v b="$plain" 'BEGIN { printf "%.3f", a / b }')")
done
echo "gateway throughput during a replay / with an empty spool, per round: ${ratios[*]}"
