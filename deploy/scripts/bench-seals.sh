#!/usr/bin/env bash
# The cost of signed seals and of verify's checks, measured side by side in
# one run with one binary:
#  1. writer throughput (batched loadgen) with `integrity.writer_key` unset
#     and set, alternating (unsigned, signed, unsigned, signed, ...);
#  2. `auditline verify` over what was loaded (VERIFY_EVENTS over 3 days),
#     without and with writer keys to check the signatures against,
#     alternating.
# Prints every run, then the signed/unsigned ratios (medians of the rounds).
#   EVENTS=300000 ROUNDS=4 VERIFY_EVENTS=1000000 [PARTS="writer verify"] deploy/scripts/bench-seals.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
EVENTS=${EVENTS:-300000}
ROUNDS=${ROUNDS:-3}
VERIFY_EVENTS=${VERIFY_EVENTS:-1000000}
CONCURRENCY=${CONCURRENCY:-8}
cargo build --release --bin auditline >/dev/null
bin=target/release/auditline
run_id=$(date +%s)
db=auditline_bench_seals_$run_id
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export AUDITLINE_NAMESPACE=bench-seals-$run_id
export AUDITLINE_WRITER_LISTEN=127.0.0.1:0
export AUDITLINE_EXPORT_DIR=$(mktemp -d)
export RUST_LOG=warn
key=$($bin keygen | sed -n 's/^writer_key = "\(.*\)"/\1/p')
$bin migrate >/dev/null
writer=
stop_writer() { if [ -n "$writer" ]; then kill "$writer" 2>/dev/null; wait "$writer" 2>/dev/null || true; writer=; fi; }
cleanup() {
  stop_writer
  for ns in "bench-seals-$run_id" "bench-seals-verify-$run_id"; do
    rabbitmqctl -q delete_queue "$ns.writer" >/dev/null 2>&1 || true
    rabbitmqctl -q delete_queue "$ns.dead" >/dev/null 2>&1 || true
  done
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" postgres >/dev/null 2>&1 || true
  rm -rf "$AUDITLINE_EXPORT_DIR"
}
trap cleanup EXIT
start_writer() {
  stop_writer
  if [ "$1" = signed ]; then
    AUDITLINE_INTEGRITY__WRITER_KEY=$key AUDITLINE_WRITER__PREFETCH_COUNT=100 $bin writer 2>>/tmp/auditline-bench-seals.log &
  else
    AUDITLINE_WRITER__PREFETCH_COUNT=100 $bin writer 2>>/tmp/auditline-bench-seals.log &
  fi
  writer=$!
  sleep 2
}
rate() { sed -n 's/.*: \([0-9]*\) events\/s committed.*/\1/p' | head -1; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

PARTS=${PARTS:-writer verify}
ratios=()
for round in $(seq "$ROUNDS"); do
  [[ " $PARTS " == *" writer "* ]] || break
  declare -A r=()
  # The table grows with every run: alternate which goes first.
  order="unsigned signed"; [ $((round % 2)) -eq 0 ] && order="signed unsigned"
  for mode in $order; do
    start_writer $mode
    out=$($bin loadgen --events "$EVENTS" --per-message 100 --concurrency "$CONCURRENCY")
    r[$mode]=$(echo "$out" | rate)
    echo "[writer round $round $mode] ${r[$mode]} events/s"
  done
  ratios+=("$(awk -v s="${r[signed]}" -v u="${r[unsigned]}" 'BEGIN { printf "%.3f", s / u }')")
done
stop_writer
[ ${#ratios[@]} -eq 0 ] || echo "writer signed/unsigned throughput, per round: ${ratios[*]}; median $(printf '%s\n' "${ratios[@]}" | median)"

[[ " $PARTS " == *" verify "* ]] || exit 0
# Verify: a fresh database and namespace loaded with VERIFY_EVENTS over 3
# days, every seal signed.
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db" postgres >/dev/null
export AUDITLINE_NAMESPACE=bench-seals-verify-$run_id
$bin migrate >/dev/null
start_writer signed
$bin loadgen --events "$VERIFY_EVENTS" --spread-days 3 --users 1000 --per-message 500 --concurrency "$CONCURRENCY" >/tmp/auditline-bench-load.txt
head -1 /tmp/auditline-bench-load.txt
stop_writer
AUDITLINE_INTEGRITY__WRITER_KEY=$key $bin checkpoint
vratios=()
for round in $(seq "$ROUNDS"); do
  declare -A t=()
  order="unchecked checked"; [ $((round % 2)) -eq 0 ] && order="checked unchecked"
  for mode in $order; do
    start=$(date +%s.%N)
    if [ $mode = checked ]; then
      AUDITLINE_INTEGRITY__WRITER_KEY=$key $bin verify --json > /tmp/auditline-bench-verify.json || { cat /tmp/auditline-bench-verify.json; exit 1; }
    else
      $bin verify --json > /tmp/auditline-bench-verify.json || { cat /tmp/auditline-bench-verify.json; exit 1; }
    fi
    t[$mode]=$(echo "$(date +%s.%N) - $start" | bc)
    rows=$(sed -n 's/^  "rows": \([0-9]*\),/\1/p' /tmp/auditline-bench-verify.json)
    seals=$(sed -n 's/^  "seals": \([0-9]*\),/\1/p' /tmp/auditline-bench-verify.json)
    echo "[verify round $round $mode] $rows rows, $seals seals in ${t[$mode]} s"
  done
  vratios+=("$(awk -v c="${t[checked]}" -v u="${t[unchecked]}" 'BEGIN { printf "%.3f", c / u }')")
done
echo "verify time with/without seal signature checks, per round: ${vratios[*]}; median $(printf '%s\n' "${vratios[@]}" | median)"
