#!/usr/bin/env bash
# Admin API benchmark over 10 million events spread over 30 days.
#  1. Loads the events through the real pipeline (loadgen -> RabbitMQ -> writer,
#     rollups included) into the database auditline_bench_admin, unless it
#     already holds them (FRESH=1 reloads).
#  2. Times each query RUNS times with curl against `auditline all` and prints
#     p50/p95 per query.
#   EVENTS=10000000 DAYS=30 RUNS=40 deploy/scripts/bench-admin.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
EVENTS=${EVENTS:-10000000}
DAYS=${DAYS:-30}
RUNS=${RUNS:-40}
USERS=${USERS:-1000}
cargo build --release --bin auditline >/dev/null
bin=$PWD/target/release/auditline
ts=$(date +%s)
work=$(mktemp -d)
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/auditline_bench_admin
export AUDITLINE_NAMESPACE=bench-admin-$ts
export AUDITLINE_ADMIN_LISTEN=127.0.0.1:18280 AUDITLINE_INGEST_LISTEN=127.0.0.1:18281 AUDITLINE_WRITER_LISTEN=127.0.0.1:18282
export AUDITLINE_INGEST__SPOOL_DIR=$work/spool
export RUST_LOG=warn
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rabbitmqctl -q delete_queue "$AUDITLINE_NAMESPACE.writer" >/dev/null 2>&1 || true
  rabbitmqctl -q delete_queue "$AUDITLINE_NAMESPACE.dead" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql_q() { psql -qtAX -h 127.0.0.1 -U postgres -d auditline_bench_admin -c "$1"; }

have=$(psql_q "SELECT coalesce(sum(inserted_count), 0) FROM auditline.batches" 2>/dev/null || echo 0)
if [ "${FRESH:-0}" = 1 ] || [ "$have" -lt "$EVENTS" ]; then
  psql -qX -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS auditline_bench_admin" >/dev/null
  $bin migrate >/dev/null
  $bin all >/dev/null & pid=$!
  sleep 2
  echo "loading $EVENTS events over $DAYS days for $USERS users..."
  start=$(date +%s)
  $bin loadgen --events "$EVENTS" --spread-days "$DAYS" --users "$USERS" --per-message 500 --concurrency 4 --stall-secs 120
  echo "stored in $(( $(date +%s) - start )) s"
  # The writer's rollup keeper folds committed batches in behind the writes.
  while [ "$(psql_q "SELECT count(*) FROM auditline.rollup_pending")" -gt 0 ]; do sleep 5; done
  echo "rolled up in $(( $(date +%s) - start )) s"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  psql_q "VACUUM ANALYZE" >/dev/null
fi
echo "events: $(psql_q "SELECT count(*) FROM auditline.events"), table + indexes: $(psql_q "SELECT pg_size_pretty(sum(pg_total_relation_size(c.oid))) FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid WHERE i.inhparent = 'auditline.events'::regclass")"
echo "rollup rows: $(psql_q "SELECT count(*) FROM auditline.rollups") counts, $(psql_q "SELECT count(*) FROM auditline.rollup_latency") histograms"
echo "free-text index: $(psql_q "SELECT count(*) || ' blocks, ' || pg_size_pretty(pg_total_relation_size('auditline.search_blocks')) FROM auditline.search_blocks")"

# The admin service alone: its own audit events (which name the search terms
# in their endpoint) wait in the broker instead of joining the data set, so
# every run searches the same events.
$bin admin >/dev/null & pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:18280/readyz >/dev/null && break; sleep 0.2; done
token=$($bin token create --name bench-admin --scope read 2>/dev/null)
auth="Authorization: Bearer $token"
base=http://127.0.0.1:18280/admin/audit
now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
month=$(date -u -d "-$DAYS days" +%Y-%m-%dT%H:%M:%SZ)
user=user-00042

# Page 100 of a 24-hour search, 100 events a page: walk 99 pages for the cursor.
cursor=
for _ in $(seq 99); do
  cursor=$(curl -sf -H "$auth" "$base/logs?limit=100${cursor:+&cursor=$cursor}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["next_cursor"] or "")')
done

time_query() {
  local name=$1 url=$2 out
  out=$(curl -sf -o /dev/null -w '%{http_code}' -H "$auth" "$url") || true
  [ "$out" = 200 ] || { echo "$name: HTTP $out for $url"; return; }
  for _ in $(seq "$RUNS"); do curl -s -o /dev/null -w '%{time_total}\n' -H "$auth" "$url"; done \
    | sort -g | awk -v name="$name" '{ v[NR] = $1 * 1000 } END { printf "%-44s p50 %7.1f ms   p95 %7.1f ms   (n=%d)\n", name, v[int(NR * 0.5 + 0.5)], v[int(NR * 0.95 + 0.5)], NR }'
}
count() { curl -sf -H "$auth" "$1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["events"]))'; }
echo "matches per first page: user $(count "$base/logs?user_id=$user"), code_exec+5xx $(count "$base/logs?action_type=code_exec&status=5xx"), q=loadgen $(count "$base/logs?q=loadgen"), q=/files/4242 $(count "$base/logs?q=/files/4242")"
time_query "search: one user, last 24 h"              "$base/logs?user_id=$user"
time_query "search: action_type + status class, 24 h" "$base/logs?action_type=code_exec&status=5xx"
time_query "search: free text, common (q=loadgen)"    "$base/logs?q=loadgen"
time_query "search: free text, rare (q=/files/4242)"  "$base/logs?q=/files/4242"
time_query "search: free text, rare, 30 days"          "$base/logs?q=/files/4242&from=$month&to=$now"
rid=$(psql_q "SELECT substr(metadata->>'request_id', 5, 12) FROM auditline.events WHERE occurred_at > now() - interval '12 hours' AND metadata ? 'request_id' LIMIT 1")
time_query "search: free text, 12 chars of a request id" "$base/logs?q=$rid"
# Side by side: the rare term by the plain scan the search used before its
# index (the same SQL without the candidate ranges), timed inside PostgreSQL.
day=$(date -u -d "-1 day" +%Y-%m-%dT%H:%M:%SZ)
for _ in $(seq "$(( (RUNS + 3) / 4 ))"); do
  psql_q "EXPLAIN (ANALYZE, TIMING OFF) SELECT event_id FROM auditline.events WHERE occurred_at >= '$day' AND occurred_at < '$now'
          AND (strpos(lower(endpoint), '/files/4242') > 0 OR strpos(lower(metadata::text), '/files/4242') > 0)
          ORDER BY occurred_at DESC, event_id DESC LIMIT 101" | sed -n 's/Execution Time: \([0-9.]*\) ms/\1/p'
done | sort -g | awk '{ v[NR] = $1 } END { printf "%-44s p50 %7.1f ms   p95 %7.1f ms   (n=%d)\n", "  same rare term, plain scan (SQL only)", v[int(NR * 0.5 + 0.5)], v[int(NR * 0.95 + 0.5)], NR }'
time_query "search: page 100 (keyset cursor)"         "$base/logs?limit=100&cursor=$cursor"
time_query "search: one user, 30 days"                "$base/logs?user_id=$user&from=$month&to=$now"
time_query "user summary: one user, 30 days"          "$base/users/$user?from=$month&to=$now"
time_query "users: all users, 30 days, top 50"        "$base/users?from=$month&to=$now"
time_query "metrics: last 1/5/15 minutes"             "$base/metrics"
