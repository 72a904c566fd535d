#!/usr/bin/env bash
# Installs moto's S3-compatible server (from PyPI, pinned) into
# target/moto-venv, which the tests of S3 export destinations write to;
# prints the server binary's path.
exec "$(dirname "$0")/ensure-pytool.sh" moto-venv moto 5.2.5 moto_server server
