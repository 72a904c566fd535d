#!/usr/bin/env bash
# The whole test suite: brings up PostgreSQL and RabbitMQ if needed, then runs
# every test of the workspace against them. Each test makes its own database
# and broker namespace, so the suite runs in parallel and leaves nothing behind.
# Extra arguments go to `cargo test` (e.g. a test name filter).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
# The OpenAPI conformance test runs schemathesis against the real service.
SCHEMATHESIS=$(deploy/scripts/ensure-schemathesis.sh)
export SCHEMATHESIS
log=$(mktemp)
moto_log=$(mktemp)
moto_pid=
trap 'rm -f "$log" "$moto_log"; [ -z "$moto_pid" ] || kill "$moto_pid" 2>/dev/null || true' EXIT
# The deploy assets are checked with promtool, and a real Prometheus scrapes
# the services in one test: Debian's prometheus package.
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
apt_install() {
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}
if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
  apt_install prometheus
fi
# The dashboard's browser test drives Debian's Chromium with playwright-core
# (from npm, pinned by tests/browser/package-lock.json; it downloads no browser).
command -v chromium >/dev/null || apt_install chromium
command -v node >/dev/null || apt_install nodejs npm
npm ci --prefix tests/browser --no-audit --no-fund --silent >/dev/null
# S3 export destinations are tested against a real S3-compatible server:
# moto's server mode, on a free port, for the length of the run (each test
# makes its own bucket).
moto=$(deploy/scripts/ensure-moto.sh)
moto_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$moto" -H 127.0.0.1 -p "$moto_port" >"$moto_log" 2>&1 &
moto_pid=$!
for _ in $(seq 100); do
  python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/')" 2>/dev/null && break
  sleep 0.1
done
python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$moto_port/')" 2>/dev/null \
  || { echo "the S3 test server did not start:"; cat "$moto_log"; exit 1; }
export TEST_S3_ENDPOINT=http://127.0.0.1:$moto_port
status=0
# The client library stays light: without its default features it builds
# without actix-web, prometheus, sqlx or figment.
if [ $# -eq 0 ]; then
  heavy=$(cargo tree -p auditline-client --no-default-features -e normal --prefix none \
    | grep -E '^(sqlx|figment|prometheus|actix-web) ' || true)
  if [ -n "$heavy" ]; then
    echo "auditline-client --no-default-features depends on: $heavy"; status=1
  fi
  cargo check -q -p auditline-client --no-default-features || status=$?
fi
started=$(date +%s)
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped", p, f, s }' "$log"
echo " in $(( $(date +%s) - started )) s (build included)"
# A short run of each fuzz target (event and query parsing), unless a test
# filter was given.
if [ "$status" -eq 0 ] && [ $# -eq 0 ]; then
  deploy/scripts/fuzz.sh "${FUZZ_SECONDS:-20}" || status=$?
fi
exit "$status"
