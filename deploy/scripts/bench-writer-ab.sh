#!/usr/bin/env bash
# A/B of two builds of the writer, side by side in one run: OLD (a saved
# release binary) and this checkout's, each storing EVENTS batched events
# published by this checkout's loadgen, alternating which goes first each
# round (the table grows through the run; a first run, discarded, warms it),
# seals signed in both.
#   cp target/release/auditline /tmp/auditline-old   # before the change
#   OLD=/tmp/auditline-old EVENTS=200000 ROUNDS=5 deploy/scripts/bench-writer-ab.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
OLD=${OLD:?set OLD to a saved release binary}
EVENTS=${EVENTS:-200000}
ROUNDS=${ROUNDS:-5}
CONCURRENCY=${CONCURRENCY:-8}
cargo build --release --bin auditline >/dev/null
new=$PWD/target/release/auditline
run_id=$(date +%s)
db=auditline_bench_writer_ab_$run_id
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export AUDITLINE_NAMESPACE=bench-writer-ab-$run_id
export AUDITLINE_WRITER_LISTEN=127.0.0.1:0
export AUDITLINE_EXPORT_DIR=$(mktemp -d)
export RUST_LOG=warn
AUDITLINE_INTEGRITY__WRITER_KEY=$($new keygen | sed -n 's/^writer_key = "\(.*\)"/\1/p')
export AUDITLINE_INTEGRITY__WRITER_KEY
$new migrate >/dev/null
writer=
stop_writer() { if [ -n "$writer" ]; then kill "$writer" 2>/dev/null; wait "$writer" 2>/dev/null || true; writer=; fi; }
cleanup() {
  stop_writer
  rabbitmqctl -q delete_queue "$AUDITLINE_NAMESPACE.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "$AUDITLINE_NAMESPACE.dead" >/dev/null 2>&1 || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" postgres >/dev/null 2>&1 || true
  rm -rf "$AUDITLINE_EXPORT_DIR"
}
trap cleanup EXIT
rate() { sed -n 's/.*: \([0-9]*\) events\/s committed.*/\1/p' | head -1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# A first, discarded run: the first one into an empty table is always the
# fastest, whichever binary it is.
AUDITLINE_WRITER__PREFETCH_COUNT=100 "$new" writer 2>>/tmp/auditline-bench-writer-ab.log &
writer=$!
sleep 2
echo "[warm-up] $("$new" loadgen --events "$EVENTS" --per-message 100 --concurrency "$CONCURRENCY" | rate) events/s"
ratios=()
for round in $(seq "$ROUNDS"); do
  declare -A r=()
  order="old new"; [ $((round % 2)) -eq 0 ] && order="new old"
  for which in $order; do
    bin=$new; [ "$which" = old ] && bin=$OLD
    stop_writer
    AUDITLINE_WRITER__PREFETCH_COUNT=100 "$bin" writer 2>>/tmp/auditline-bench-writer-ab.log &
    writer=$!
    sleep 2
    r[$which]=$("$new" loadgen --events "$EVENTS" --per-message 100 --concurrency "$CONCURRENCY" | rate)
    echo "[round $round $which] ${r[$which]} events/s"
  done
  ratios+=("$(awk -v n="${r[new]}" -v o="${r[old]}" 'BEGIN { printf "%.3f", n / o }')")
done
stop_writer
echo "writer new/old throughput, per round: ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | median)"
