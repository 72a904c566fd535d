#!/usr/bin/env bash
# Runs Auditline on this machine: brings up PostgreSQL and RabbitMQ if needed,
# builds the release binary, migrates, and runs every service in one process.
#   deploy/scripts/run.sh            the services
#   deploy/scripts/run.sh --demo     plus the demo app on :8090, audited and
#                                    calling itself 5 times a second, so real
#                                    traffic flows through the whole system
# Other arguments go to `auditline all` (e.g. --config auditline.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
demo=
args=()
for a in "$@"; do
  if [ "$a" = --demo ]; then demo=1; else args+=("$a"); fi
done
deploy/scripts/ensure-services.sh
cargo build --release --bin auditline
target/release/auditline migrate
if [ -n "$demo" ]; then
  target/release/auditline demo-app --traffic 5 &
  demo_pid=$!
  trap 'kill $demo_pid 2>/dev/null || true' EXIT
  target/release/auditline all "${args[@]}"
else
  exec target/release/auditline all "${args[@]}"
fi
