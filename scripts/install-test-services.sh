#!/usr/bin/env bash
# Installs the services the test suite runs against, when they are missing:
#   - redis-server, from the system's Debian packages (built with TLS there);
#   - openssl, which makes the TLS tests' certificates;
#   - moto (a CloudFront-compatible server), into a virtualenv at .venv/.
# Idempotent: when all are present it only checks and returns.
# The tests start their own redis-server and moto_server instances on free
# loopback ports, so no system-wide Redis service is left running.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo_root/.venv"

# The versions of moto the suite is known to work with (older 5.x answer ListDistributions without the origins the S3
# helpers look for); override with MOTO_SPEC.
moto_spec="${MOTO_SPEC:-moto[server]>=5.2.5,<6}"

as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo -n "$@"
  else
    echo "install-test-services: need root to run: $*" >&2
    return 1
  fi
}

# Stops the Redis service a Debian package install may have started on 6379.
stop_system_redis() {
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
  elif command -v service >/dev/null 2>&1; then
    as_root service redis-server stop >/dev/null 2>&1 || true
  fi
  local pidfile=/run/redis/redis-server.pid
  if [ -f "$pidfile" ]; then
    local pid
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      as_root kill "$pid" 2>/dev/null || true
    fi
  fi
}

apt_updated=false

# apt-get install, quietly; the log is shown only on failure.
apt_install() {
  local log status=0
  log="$(mktemp)"
  export DEBIAN_FRONTEND=noninteractive
  {
    { [ "$apt_updated" = true ] || as_root apt-get update -qq; } &&
      apt_updated=true &&
      as_root apt-get install -y -qq --no-install-recommends "$@"
  } >"$log" 2>&1 || status=$?
  [ "$status" -eq 0 ] || cat "$log" >&2
  rm -f "$log"
  return "$status"
}

install_redis() {
  if command -v redis-server >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-services: redis-server is missing and apt-get is not available; install Redis and retry" >&2
    return 1
  fi
  echo "install-test-services: installing redis-server (apt-get)"
  apt_install redis-server
  stop_system_redis
  command -v redis-server >/dev/null 2>&1 || {
    echo "install-test-services: redis-server still not on PATH after install" >&2
    return 1
  }
}

# openssl makes the certificates of the TLS tests (a test authority, server and client certificates).
install_openssl() {
  if command -v openssl >/dev/null 2>&1; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-test-services: openssl is missing and apt-get is not available; install it and retry" >&2
    return 1
  fi
  echo "install-test-services: installing openssl (apt-get)"
  apt_install openssl
}

install_moto() {
  if [ -x "$venv/bin/moto_server" ] && moto_fits; then
    return 0
  fi
  echo "install-test-services: installing moto into .venv (pip)"
  if [ -e "$venv" ] && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
    rm -rf "$venv" # left broken by an interrupted install or a removed Python
  fi
  if [ ! -e "$venv" ] && ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian's own python3 keeps venv in a separate package.
    rm -rf "$venv"
    if command -v apt-get >/dev/null 2>&1; then
      echo "install-test-services: installing python3-venv (apt-get)"
      apt_install python3-venv
    fi
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$moto_spec"
  [ -x "$venv/bin/moto_server" ] || {
    echo "install-test-services: .venv/bin/moto_server missing after install" >&2
    return 1
  }
}

# True when the moto in .venv satisfies $moto_spec (an older one is upgraded in place).
moto_fits() {
  "$venv/bin/python" - "$moto_spec" >/dev/null 2>&1 <<'PY'
import sys
from importlib.metadata import version
from pip._vendor.packaging.requirements import Requirement
sys.exit(0 if Requirement(sys.argv[1]).specifier.contains(version("moto"), prereleases=True) else 1)
PY
}

install_redis
install_openssl
install_moto
