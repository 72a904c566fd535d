#!/usr/bin/env bash
# Live-stream benchmark: CLIENTS websocket clients with mixed filters (one
# service each; some also one action type or only failures) and one client
# that never reads, while RATE events/s flow through the real pipeline
# (gateway -> RabbitMQ -> writer -> <ns>.live -> admin). The services run as
# separate processes so the admin's CPU can be read on its own.
#   CLIENTS=500 RATE=2000 SECONDS=20 deploy/scripts/bench-stream.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
CLIENTS=${CLIENTS:-500}
RATE=${RATE:-2000}
SECONDS_RUN=${SECONDS:-20}
cargo build --release --bin auditline --example stream_bench >/dev/null
bin=$PWD/target/release/auditline
ts=$(date +%s)
work=$(mktemp -d)
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/auditline_bench_stream_$ts
export AUDITLINE_NAMESPACE=bench-stream-$ts
export AUDITLINE_ADMIN_LISTEN=127.0.0.1:18380 AUDITLINE_INGEST_LISTEN=127.0.0.1:18381 AUDITLINE_WRITER_LISTEN=127.0.0.1:18382
export AUDITLINE_INGEST__SPOOL_DIR=$work/spool
export AUDITLINE_STREAM__MAX_CLIENTS=$((CLIENTS + 10))
export RUST_LOG=warn
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rabbitmqctl -q delete_queue "$AUDITLINE_NAMESPACE.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "$AUDITLINE_NAMESPACE.dead" >/dev/null 2>&1 || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS auditline_bench_stream_$ts" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql -q -h 127.0.0.1 -U postgres -c "CREATE DATABASE auditline_bench_stream_$ts" >/dev/null
$bin migrate >/dev/null
$bin writer & pids+=($!)
$bin ingest & pids+=($!)
$bin admin & pids+=($!); admin_pid=$!
sleep 3
read_token=$($bin token create --name bench-stream --scope read 2>/dev/null)
publish_tokens=$(for i in $(seq 0 9); do $bin token create --name "bench-svc-$i" --scope publish --service "svc-$i" 2>/dev/null; done | paste -sd, -)
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
before=$(cpu_ticks "$admin_pid"); start=$(date +%s.%N)
target/release/examples/stream_bench 18380 18381 "$read_token" "$publish_tokens" "$CLIENTS" "$RATE" "$SECONDS_RUN"
after=$(cpu_ticks "$admin_pid"); end=$(date +%s.%N)
awk -v t=$((after - before)) -v hz="$hz" -v s="$start" -v e="$end" 'BEGIN {
  printf "admin process CPU: %.1f%% of one core over the run (%.1f s CPU in %.1f s, connecting included)\n", 100 * t / hz / (e - s), t / hz, e - s }'
