#!/usr/bin/env bash
# Install everything the tests need (Mosquitto included) and run them: ruff, pytest, and
# (on a full run) the agent on real arm64 binaries under qemu-user (scripts/test-arm.sh).
# Usage: bash scripts/test.sh [pytest args...]   (with arguments: that pytest run only)
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "== installing mosquitto (Debian package)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mosquitto >/dev/null
fi

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
  echo "== installing nats-server (Debian package; the fleet tests run a 3-node cluster)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nats-server >/dev/null
fi
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "== installing chromium and chromium-driver (Debian packages; the console's browser tests)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
fi
# The registry tests also use a PostgreSQL server: PAODING_TEST_PG (default
# postgresql://postgres@127.0.0.1:5432/postgres), a user allowed to create databases.

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "== installing nodejs and npm (Debian packages; the AsyncAPI parser checks docs/asyncapi.yaml)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
echo "== installing the AsyncAPI parser (npm ci in scripts/asyncapi)"
npm ci --prefix scripts/asyncapi --ignore-scripts --no-audit --no-fund --loglevel=error

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv"
  "$PY" -m venv .venv
fi
echo "== installing paoding-edge with [host,device,test]"
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[host,device,test]'

echo "== ruff"
.venv/bin/ruff check .
echo "== pytest"
.venv/bin/python -m pytest -q "$@"
if [ "$#" -eq 0 ]; then
  start=$(date +%s)
  bash scripts/test-arm.sh
  echo "== ARM test took $(( $(date +%s) - start ))s"
fi
