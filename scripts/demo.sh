#!/usr/bin/env bash
# Install the host and device parts and run the end-to-end demo:
# prune and tune for two device profiles, deploy over MQTT to two emulated
# agents, print their reports. Usage: bash scripts/demo.sh [--broker mqtt://host:1883]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[host,device]'
exec .venv/bin/paoding-edge demo "$@"
