#!/usr/bin/env bash
# Pipeline benchmark: the writer beside the bare publish → consume → COPY loop,
# measured in one run, alternating (bare, writer, bare, writer) so drift on a
# shared machine hits both. Prints every run and the writer/bare ratios.
#   EVENTS=300000 SINGLE_EVENTS=60000 ROUNDS=2 deploy/scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
EVENTS=${EVENTS:-300000}
SINGLE_EVENTS=${SINGLE_EVENTS:-60000}
ROUNDS=${ROUNDS:-2}
CONCURRENCY=${CONCURRENCY:-8}
SINGLE_CONCURRENCY=${SINGLE_CONCURRENCY:-32}
cargo build --release --bin auditline >/dev/null
bin=target/release/auditline
run_id=$(date +%s)
export AUDITLINE_DATABASE_URL=${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/auditline_bench_$run_id}
export AUDITLINE_NAMESPACE=bench-$run_id
export AUDITLINE_WRITER_LISTEN=127.0.0.1:0
export RUST_LOG=warn
$bin migrate >/dev/null
writer=
stop_writer() { if [ -n "$writer" ]; then kill "$writer" 2>/dev/null; wait "$writer" 2>/dev/null || true; writer=; fi; }
trap stop_writer EXIT
# Both sides get the same prefetch: twice the flush size, in messages.
start_writer() {
  stop_writer
  AUDITLINE_WRITER__PREFETCH_COUNT=$1 $bin writer 2>>/tmp/auditline-bench-writer.log &
  writer=$!
  sleep 2
}

rate() { sed -n 's/.*: \([0-9]*\) events\/s committed.*/\1/p'; }
declare -A sum
for mode in batched single; do
  if [ $mode = batched ]; then args=(--events "$EVENTS" --per-message 100 --concurrency "$CONCURRENCY"); start_writer 100
  else args=(--events "$SINGLE_EVENTS" --per-message 1 --concurrency "$SINGLE_CONCURRENCY"); start_writer 10000; fi
  for round in $(seq "$ROUNDS"); do
    for subject in bare writer; do
      extra=(); [ $subject = bare ] && extra=(--bare)
      out=$($bin loadgen "${args[@]}" "${extra[@]}")
      echo "[$mode round $round] $out" | tr '\n' ' '; echo
      r=$(echo "$out" | head -1 | rate)
      sum[$mode-$subject]=$(( ${sum[$mode-$subject]:-0} + r ))
    done
  done
  awk -v w="${sum[$mode-writer]}" -v b="${sum[$mode-bare]}" -v n="$ROUNDS" -v m="$mode" \
    'BEGIN { printf "%s: writer %.0f events/s, bare loop %.0f events/s, ratio %.2f\n", m, w/n, b/n, w/b }'
done
