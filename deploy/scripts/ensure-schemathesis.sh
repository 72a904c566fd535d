#!/usr/bin/env bash
# Installs schemathesis (from PyPI, pinned) into target/schemathesis-venv,
# which the OpenAPI conformance test runs. Installs Debian's python3-venv
# first when the machine lacks it. Idempotent; prints the binary's path.
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=4.32.5
venv=${CARGO_TARGET_DIR:-target}/schemathesis-venv
bin=$venv/bin/schemathesis
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$VERSION"; then
  echo "$bin"; exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-venv >/dev/null
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
"$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION" >&2
echo "$bin"
