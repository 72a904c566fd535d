#!/usr/bin/env bash
# Export benchmark: ROWS events (default 2,000,000) exported by `auditline admin`.
#  1. Loads the rows with SQL straight into auditline.events of the database
#     auditline_bench_export, unless it holds them already (FRESH=1 reloads);
#     the export path is what is measured, not ingestion.
#  2. For each format/compression: one streamed GET /admin/audit/export into
#     /dev/null (rows/s, MB/s), then one export job (POST, poll until done);
#     the admin process's peak RSS (VmHWM) is read after each, from a fresh
#     process per case so that each peak is the case's own.
#   ROWS=2000000 deploy/scripts/bench-export.sh
#   CASES="csv:zstd" picks format:compression cases.
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
ROWS=${ROWS:-2000000}
cargo build --release --bin auditline >/dev/null
bin=$PWD/target/release/auditline
work=$(mktemp -d)
db=auditline_bench_export
export AUDITLINE_DATABASE_URL=postgres://postgres@127.0.0.1:5432/$db
export AUDITLINE_NAMESPACE=bench-export
export AUDITLINE_ADMIN_LISTEN=127.0.0.1:18380
export AUDITLINE_INGEST__SPOOL_DIR=$work/spool
export AUDITLINE_EXPORT_DIR=$work/exports
export RUST_LOG=warn
pid=
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
psql_q() { psql -qtAX -h 127.0.0.1 -U postgres -d $db -c "$1"; }

have=$(psql_q "SELECT count(*) FROM auditline.events WHERE service = 'bench'" 2>/dev/null || echo 0)
if [ "${FRESH:-0}" = 1 ] || [ "$have" -ne "$ROWS" ]; then
  psql -qX -h 127.0.0.1 -U postgres -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null
  psql -qX -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE $db" >/dev/null
  $bin migrate >/dev/null
  echo "loading $ROWS rows..."
  start=$(date +%s)
  # Spread over the 24 hours before the start of the current hour, with the
  # shapes of real events (a metadata object with a request id, sizes, times).
  psql_q "SELECT auditline.ensure_partition(d::date) FROM generate_series(now() - interval '2 days', now(), interval '1 day') AS d" >/dev/null
  psql_q "INSERT INTO auditline.events (event_id, occurred_at, received_at, batch_id, service,
            session_id, user_id, client_ip, action_type, endpoint, route, http_method, request_size,
            response_size, response_time_ms, status_code, success, metadata)
          SELECT gen_random_uuid(),
                 date_trunc('hour', now()) - interval '24 hours' + n * (interval '24 hours' / $ROWS),
                 now(), '00000000-0000-0000-0000-000000000001', 'bench', 'sess-' || (n % 5000),
                 'user-' || lpad((n % 1000)::text, 5, '0'), ('10.0.' || (n % 250) || '.' || (n % 200))::inet,
                 (ARRAY['file','code_exec','admin','auth','data','other'])[1 + n % 6],
                 '/files/' || n, '/files/{id}', (ARRAY['GET','PUT','DELETE'])[1 + n % 3],
                 n % 4096, n % 65536, (n % 800) + 0.5, (ARRAY[200,200,201,404,500])[1 + n % 5],
                 n % 5 < 3, jsonb_build_object('request_id', md5(n::text), 'user_agent', 'bench/1')
          FROM generate_series(1, $ROWS) AS n"
  psql_q "VACUUM ANALYZE auditline.events"
  echo "loaded in $(( $(date +%s) - start )) s"
fi
token=$($bin token create --name bench-export --scope export 2>/dev/null)
auth="Authorization: Bearer $token"
from=$(psql_q "SELECT to_char(min(occurred_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM auditline.events")
to=$(psql_q "SELECT to_char(max(occurred_at) AT TIME ZONE 'UTC' + interval '1 second', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM auditline.events")
url=http://$AUDITLINE_ADMIN_LISTEN

start_admin() {
  $bin admin >/dev/null & pid=$!
  for _ in $(seq 100); do curl -fs "$url/healthz" >/dev/null && return; sleep 0.1; done
  echo "admin did not start" >&2; exit 1
}
stop_admin() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
peak_mb() { awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status"; }

printf '%-14s %-8s %12s %10s %10s %12s | %-10s %10s %12s\n' format compression "rows/s" "MB/s" "out MB" "peak RSS MB" "job s" "job rows/s" "peak RSS MB"
CASES=${CASES:-"csv:zstd csv:none ndjson:zstd ndjson:none json:zstd"}
for case in $CASES; do
  set -- ${case/:/ }
  format=$1 compression=$2
  start_admin
  t0=$(date +%s.%N)
  bytes=$(curl -fsS -H "$auth" "$url/admin/audit/export?from=$from&to=$to&format=$format&compression=$compression" | wc -c)
  t1=$(date +%s.%N)
  stream_peak=$(peak_mb)
  stop_admin
  start_admin
  j0=$(date +%s.%N)
  id=$(curl -fsS -H "$auth" -H 'Content-Type: application/json' -X POST "$url/admin/audit/exports" \
    -d "{\"format\":\"$format\",\"compression\":\"$compression\",\"filters\":{\"from\":\"$from\",\"to\":\"$to\"}}" |
    sed -E 's/.*"id":"([^"]+)".*/\1/')
  while :; do
    state=$(curl -fsS -H "$auth" "$url/admin/audit/exports/$id" | sed -E 's/.*"state":"([^"]+)".*/\1/')
    [ "$state" = done ] && break
    [ "$state" = failed ] && { echo "job failed" >&2; exit 1; }
    sleep 0.2
  done
  j1=$(date +%s.%N)
  job_peak=$(peak_mb)
  stop_admin
  awk -v r="$ROWS" -v b="$bytes" -v t0="$t0" -v t1="$t1" -v p="$stream_peak" -v j0="$j0" -v j1="$j1" -v jp="$job_peak" \
      -v f="$format" -v c="$compression" 'BEGIN {
    printf "%-14s %-8s %12.0f %10.1f %10.1f %12s | %-10.1f %10.0f %12s\n", f, c, r / (t1 - t0), b / 1048576 / (t1 - t0), b / 1048576, p, j1 - j0, r / (j1 - j0), jp }'
done
