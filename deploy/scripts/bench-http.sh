#!/usr/bin/env bash
# HTTP benchmarks, one run:
#  1. the demo app with and without AuditMiddleware, alternating, under wrk:
#     latency at one connection (p50, p99) and throughput at 32 connections;
#  2. the ingest gateway taking 500-event NDJSON posts (events/s confirmed).
# Needs wrk (Debian package `wrk`; installed here if missing).
#   ROUNDS=2 DURATION=8 deploy/scripts/bench-http.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-8}
cargo build --release --bin auditline >/dev/null
bin=$PWD/target/release/auditline
ts=$(date +%s)
work=$(mktemp -d)
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/auditline_bench_http_$ts
export RUST_LOG=warn
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rabbitmqctl -q delete_queue "benchdemo-$ts.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "benchdemo-$ts.dead" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "benchhttp-$ts.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "benchhttp-$ts.dead" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
$bin migrate >/dev/null

# The demo apps publish to a namespace no writer consumes, so the pipeline's
# own work does not weigh on the comparison; the queue is deleted at the end.
AUDITLINE_NAMESPACE=benchdemo-$ts $bin demo-app --listen 127.0.0.1:18091 --no-audit >/dev/null &
pids+=($!); pid_plain=$!
AUDITLINE_NAMESPACE=benchdemo-$ts $bin demo-app --listen 127.0.0.1:18092 --spool-dir "$work/spool-demo" ${DEMO_ARGS:-} >/dev/null &
pids+=($!); pid_audited=$!
AUDITLINE_NAMESPACE=benchhttp-$ts AUDITLINE_INGEST_LISTEN=127.0.0.1:18081 AUDITLINE_WRITER_LISTEN=127.0.0.1:0 \
  AUDITLINE_INGEST__SPOOL_DIR="$work/spool" $bin all &
pids+=($!)
sleep 3

# CPU time (user + system, in clock ticks) a process has used so far.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
broker_pid=$(pgrep -f beam.smp | head -n 1 || true)
tick_us=$(awk -v hz="$(getconf CLK_TCK)" 'BEGIN { print 1000000 / hz }')
# Warm both up; these runs are not counted.
wrk -t2 -c32 -d3s http://127.0.0.1:18091/health >/dev/null
wrk -t2 -c32 -d3s http://127.0.0.1:18092/health >/dev/null
to_us() { awk '{ v = $1; if (v ~ /us$/) { sub(/us$/, "", v); print v } else if (v ~ /ms$/) { sub(/ms$/, "", v); print v * 1000 } else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000000 } }'; }
declare -A lat50 lat99 rps cpu bcpu
for round in $(seq "$ROUNDS"); do
  # Plain first in odd rounds, audited first in even ones: neither always
  # runs after the other (the broker's deferred work, the machine's drift).
  order="plain audited"; [ $((round % 2)) = 0 ] && order="audited plain"
  for subject in $order; do
    port=18091; pid=$pid_plain; [ $subject = audited ] && { port=18092; pid=$pid_audited; }
    url="http://127.0.0.1:$port/files/42"
    out=$(wrk -t1 -c1 -d"${DURATION}s" --latency -H 'x-demo-user: alice' -H 'x-session-id: bench' "$url")
    p50=$(echo "$out" | awk '$1 == "50%" { print $2 }' | to_us)
    p99=$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_us)
    before=$(cpu_ticks "$pid"); broker_before=$( [ -n "$broker_pid" ] && cpu_ticks "$broker_pid" || echo 0)
    out=$(wrk -t2 -c32 -d"${DURATION}s" -H 'x-demo-user: alice' -H 'x-session-id: bench' "$url")
    after=$(cpu_ticks "$pid"); broker_after=$( [ -n "$broker_pid" ] && cpu_ticks "$broker_pid" || echo 0)
    r=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
    total=$(echo "$out" | awk '/requests in/ { print $1 }')
    c=$(awk -v t=$((after - before)) -v u="$tick_us" -v n="$total" 'BEGIN { printf "%.2f", t * u / n }')
    b=$(awk -v t=$((broker_after - broker_before)) -v u="$tick_us" -v n="$total" 'BEGIN { printf "%.2f", t * u / n }')
    echo "[round $round] $subject: 1 connection p50 ${p50} us, p99 ${p99} us; 32 connections ${r} requests/s, app CPU ${c} us/request, broker CPU ${b} us/request"
    lat50[$subject]+="$p50 "; lat99[$subject]+="$p99 "; rps[$subject]+="$r "; cpu[$subject]+="$c "; bcpu[$subject]+="$b "
  done
done
# Medians over the rounds: one slow or fast round on a shared machine does
# not move them.
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
pl=$(echo "${lat50[plain]}" | median); au=$(echo "${lat50[audited]}" | median)
pl99=$(echo "${lat99[plain]}" | median); au99=$(echo "${lat99[audited]}" | median)
rp=$(echo "${rps[plain]}" | median); ra=$(echo "${rps[audited]}" | median)
cp=$(echo "${cpu[plain]}" | median); ca=$(echo "${cpu[audited]}" | median)
bp=$(echo "${bcpu[plain]}" | median); ba=$(echo "${bcpu[audited]}" | median)
# The throughput ratio of each round (the two runs of a round are back to back).
ratios=$(paste -d' ' <(echo "${rps[plain]}" | tr ' ' '\n' | grep -v '^$') <(echo "${rps[audited]}" | tr ' ' '\n' | grep -v '^$') | awk '{ printf "%.3f ", $2 / $1 }')
paired=$(echo "$ratios" | median)
awk -v paired="$paired" -v pl="$pl" -v au="$au" -v pl99="$pl99" -v au99="$au99" -v rp="$rp" -v ra="$ra" -v cp="$cp" -v ca="$ca" -v bp="$bp" -v ba="$ba" -v ratios="$ratios" 'BEGIN {
  printf "middleware (medians of the rounds): p50 %.1f -> %.1f us (added %.1f us), p99 %.1f -> %.1f us\n", pl, au, au - pl, pl99, au99
  printf "throughput %.0f -> %.0f requests/s (ratio of the medians %.3f)\n", rp, ra, ra / rp
  printf "throughput ratio, median of the rounds: %.3f (per round: %s)\n", paired, ratios
  printf "app process CPU per request: %.2f -> %.2f us (added %.2f us, incl. the background publisher)\n", cp, ca, ca - cp
  printf "RabbitMQ CPU per request (same cores): %.2f -> %.2f us\n", bp, ba }'

# The gateway: 500-event NDJSON bodies, publish token for service "bench".
token=$($bin token create --name bench-http --scope publish --service bench 2>/dev/null)
body="$work/body.ndjson"
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
for i in $(seq 500); do
  printf '{"occurred_at":"%s","session_id":"s-%d","user_id":"user-%d","client_ip":"10.0.0.%d","action_type":"data","endpoint":"/datasets/%d/rows","route":"/datasets/{id}/rows","http_method":"GET","status_code":200,"success":true,"response_time_ms":12.5,"metadata":{"rows":%d}}\n' \
    "$now" $((i % 50)) $((i % 100)) $((i % 250)) "$i" "$i"
done > "$body"
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-ndjson"
wrk.headers["Authorization"] = "Bearer $token"
local f = io.open("$body", "rb")
wrk.body = f:read("*a")
f:close()
LUA
out=$(wrk -t2 -c8 -d"${DURATION}s" --latency -s "$work/post.lua" http://127.0.0.1:18081/v1/events)
r=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
non2xx=$(echo "$out" | awk '/Non-2xx/ { print $NF }')
p50=$(echo "$out" | awk '$1 == "50%" { print $2 }')
echo "gateway: $r posts/s of 500 events = $(awk -v r="$r" 'BEGIN { printf "%.0f", r * 500 }') events/s accepted (p50 $p50 per post, non-2xx: ${non2xx:-0})"
