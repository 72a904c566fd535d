#!/usr/bin/env bash
# Installs a Python tool from PyPI, pinned, into its own virtualenv under the
# target directory; installs Debian's python3-venv first when the machine
# lacks it. Idempotent; prints the path of the tool's binary.
#   ensure-pytool.sh <venv name> <package> <version> <binary> [extra]
# e.g. ensure-pytool.sh moto-venv moto 5.2.5 moto_server server
set -euo pipefail
cd "$(dirname "$0")/../.."
name=$1 package=$2 version=$3 binary=$4 extra=${5:-}
venv=${CARGO_TARGET_DIR:-target}/$name
bin=$venv/bin/$binary
if [ -x "$bin" ] && "$venv/bin/pip" show "$package" 2>/dev/null | grep -q "^Version: $version$"; then
  echo "$bin"; exit 0
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3 python3-venv >/dev/null
fi
rm -rf "$venv"
python3 -m venv "$venv" >&2
spec=$package${extra:+[$extra]}==$version
"$venv/bin/pip" install -q --disable-pip-version-check "$spec" >&2
echo "$bin"
