#!/usr/bin/env bash
# Installs schemathesis (from PyPI, pinned) into target/schemathesis-venv,
# which the OpenAPI conformance test runs; prints the binary's path.
exec "$(dirname "$0")/ensure-pytool.sh" schemathesis-venv schemathesis 4.32.5 schemathesis
