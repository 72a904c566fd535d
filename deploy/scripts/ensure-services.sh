#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ answer on 127.0.0.1: starts installed
# servers, or installs them from Debian's packages first. Idempotent.
set -euo pipefail

PG_PORT=${PG_PORT:-5432}
AMQP_PORT=${AMQP_PORT:-5672}

log() { printf 'ensure-services: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; exit 1
  fi
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2 tries=${3:-120}
  for _ in $(seq "$tries"); do
    port_open "$port" && return 0
    sleep 1
  done
  log "$what did not open port $port"; return 1
}

apt_updated=
apt_install() {
  if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_postgres() {
  if port_open "$PG_PORT"; then return 0; fi
  local installed_now=
  if [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
    log "installing PostgreSQL from Debian's packages"
    apt_install postgresql postgresql-client
    installed_now=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -n "$installed_now" ]; then
    # A fresh cluster asks for passwords on TCP; the local development and test
    # setup uses trust on the loopback interface only, as the design assumes.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
  fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port "$PG_PORT" PostgreSQL 60
}

ensure_rabbitmq() {
  if port_open "$AMQP_PORT"; then return 0; fi
  if ! command -v rabbitmq-server >/dev/null && [ ! -x /usr/sbin/rabbitmq-server ]; then
    log "installing RabbitMQ from Debian's packages"
    apt_install rabbitmq-server
  fi
  log "starting RabbitMQ"
  as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  wait_port "$AMQP_PORT" RabbitMQ 180
}

ensure_postgres
ensure_rabbitmq
if ! command -v cargo >/dev/null; then
  log "cargo is not installed: install a Rust toolchain (1.89 or newer) first"; exit 1
fi
log "PostgreSQL on :$PG_PORT and RabbitMQ on :$AMQP_PORT are up"
