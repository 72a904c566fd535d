#!/usr/bin/env bash
# A/B of two builds of the audit middleware, side by side in one run: the
# plain demo app, the audited demo app of OLD (a saved release binary) and of
# this checkout, alternating each round under `wrk -t2 -c32`; medians of the
# throughput and of the app's CPU per request. PIN=1 puts wrk and RabbitMQ on
# CPU 0 and the apps on CPU 1, so an app is bound by its own core and the
# throughput ratio is its CPU ratio (no wakeup preemption by wrk).
#   cp target/release/auditline /tmp/auditline-old   # before the change
#   OLD=/tmp/auditline-old ROUNDS=5 DURATION=8 PIN=1 deploy/scripts/bench-middleware-ab.sh
# OLD_ENV / NEW_ENV add settings to one app, and OLD_ARGS / NEW_ARGS demo-app
# options, e.g. to compare one binary with itself:
#   OLD=target/release/auditline NEW_ENV=AUDITLINE_PUBLISHER__COMPRESS=false
#   OLD=target/release/auditline NEW_ARGS='--linger-ms 100'
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
OLD=${OLD:?set OLD to a saved release binary}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8}
cargo build --release --bin auditline >/dev/null
new=$PWD/target/release/auditline
ts=$(date +%s)
work=$(mktemp -d)
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/auditline_bench_ab_$ts RUST_LOG=warn
pin_app=() pin_wrk=()
broker=$(pgrep -f beam.smp | head -n 1 || true)
if [ "${PIN:-0}" = 1 ]; then
  pin_app=(taskset -c 1) pin_wrk=(taskset -c 0)
  [ -n "$broker" ] && taskset -a -p -c 0 "$broker" >/dev/null
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$broker" ] && taskset -a -p -c "0-$(( $(nproc) - 1 ))" "$broker" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "benchab-$ts.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "benchab-$ts.dead" >/dev/null 2>&1 || true
  psql -qX -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS auditline_bench_ab_$ts" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
$new migrate >/dev/null
declare -A port pid
start() { # name binary port [args]
  local name=$1 bin=$2 p=$3 extra= args=; shift 3
  case $name in old) extra=${OLD_ENV:-} args=${OLD_ARGS:-} ;; new) extra=${NEW_ENV:-} args=${NEW_ARGS:-} ;; esac
  # shellcheck disable=SC2086 # lists of VAR=value and of options
  env $extra AUDITLINE_NAMESPACE=benchab-$ts "${pin_app[@]}" "$bin" demo-app --listen "127.0.0.1:$p" "$@" $args >/dev/null &
  pids+=($!); pid[$name]=$!; port[$name]=$p
}
start plain "$new" 18391 --no-audit
start old "$OLD" 18392 --spool-dir "$work/spool-old"
start new "$new" 18393 --spool-dir "$work/spool-new"
sleep 3
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
tick_us=$(awk -v hz="$(getconf CLK_TCK)" 'BEGIN { print 1000000 / hz }')
for name in plain old new; do "${pin_wrk[@]}" wrk -t2 -c32 -d3s "http://127.0.0.1:${port[$name]}/health" >/dev/null; done
declare -A rps cpu bcpu paired
round_plain=1
for round in $(seq "$ROUNDS"); do
  # Plain first, then old and new in turns, so neither always runs last.
  order="plain old new"; [ $((round % 2)) = 0 ] && order="plain new old"
  for name in $order; do
    before=$(cpu_ticks "${pid[$name]}"); broker_before=$([ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
    out=$("${pin_wrk[@]}" wrk -t2 -c32 -d"${DURATION}s" -H 'x-demo-user: alice' -H 'x-session-id: bench' "http://127.0.0.1:${port[$name]}/files/42")
    after=$(cpu_ticks "${pid[$name]}"); broker_after=$([ -n "$broker" ] && cpu_ticks "$broker" || echo 0)
    r=$(echo "$out" | awk '/^Requests\/sec/ { print $2 }')
    n=$(echo "$out" | awk '/requests in/ { print $1 }')
    c=$(awk -v t=$((after - before)) -v u="$tick_us" -v n="$n" 'BEGIN { printf "%.2f", t * u / n }')
    b=$(awk -v t=$((broker_after - broker_before)) -v u="$tick_us" -v n="$n" 'BEGIN { printf "%.2f", t * u / n }')
    echo "[round $round] $name: $r requests/s, app CPU $c us/request, broker CPU $b us/request"
    rps[$name]+="$r "; cpu[$name]+="$c "; bcpu[$name]+="$b "
    [ "$name" = plain ] && round_plain=$r
    [ "$name" != plain ] && paired[$name]+="$(awk -v r="$r" -v p="$round_plain" 'BEGIN { printf "%.4f", r / p }') "
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
p=$(echo "${rps[plain]}" | median); o=$(echo "${rps[old]}" | median); w=$(echo "${rps[new]}" | median)
awk -v p="$p" -v o="$o" -v w="$w" -v cp="$(echo "${cpu[plain]}" | median)" -v co="$(echo "${cpu[old]}" | median)" -v cw="$(echo "${cpu[new]}" | median)" 'BEGIN {
  printf "medians: plain %.0f requests/s; old %.0f (ratio %.3f); new %.0f (ratio %.3f)\n", p, o, o / p, w, w / p
  printf "app CPU per request: plain %.2f us, old %.2f us (+%.2f), new %.2f us (+%.2f)\n", cp, co, co - cp, cw, cw - cp
}'
echo "broker CPU per request: plain $(echo "${bcpu[plain]}" | median) us, old $(echo "${bcpu[old]}" | median) us, new $(echo "${bcpu[new]}" | median) us"

# Each round's ratio to the plain app of the same round: adjacent runs share
# the machine's mood, so these medians are steadier than the ones above.
echo "median of the per-round ratios: old $(echo "${paired[old]}" | median), new $(echo "${paired[new]}" | median)"
