#!/usr/bin/env bash
# Runs Auditline on this machine: brings up PostgreSQL and RabbitMQ if needed,
# builds the release binary, migrates, and runs every service in one process.
# Extra arguments go to `auditline all` (e.g. --config auditline.toml).
set -euo pipefail
cd "$(dirname "$0")/../.."
deploy/scripts/ensure-services.sh
cargo build --release --bin auditline
target/release/auditline migrate
exec target/release/auditline all "$@"
