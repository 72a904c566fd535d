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
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --all-targets "$@" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
