#!/usr/bin/env bash
# Install everything the tests need (Mosquitto included) and run them: ruff, pytest, and
# (on a full run) the agent on real arm64 binaries under qemu-user (scripts/test-arm.sh).
# Usage: bash scripts/test.sh [pytest args...]   (with arguments: that pytest run only)
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
UPDATED=""
# need "why" command... -- package...: install the Debian packages when a command is missing
need() {
  local why=$1; shift; local cmds=() missing=""
  while [ "$1" != "--" ]; do cmds+=("$1"); shift; done; shift
  for c in "${cmds[@]}"; do
    command -v "$c" >/dev/null 2>&1 || [ -x "/usr/sbin/$c" ] || missing=1
  done
  [ -n "$missing" ] || return 0
  echo "== installing $* (Debian packages; $why)"
  [ -n "$UPDATED" ] || { $SUDO apt-get update -qq; UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}
need "the broker tests" mosquitto -- mosquitto
need "the fleet tests run a 3-node cluster" nats-server -- nats-server
need "the console's browser tests" chromium chromedriver -- chromium chromium-driver
need "the AsyncAPI parser checks docs/asyncapi.yaml" node npm -- nodejs npm
# The registry tests also use a PostgreSQL server: PAODING_TEST_PG (default
# postgresql://postgres@127.0.0.1:5432/postgres), a user allowed to create databases.

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
