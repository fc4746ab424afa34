#!/usr/bin/env bash
# The reference peers of `cargo bench -p fieldlink --bench modbus_server`: mbpoll (apt) and
# pymodbus 3.8.6 in a venv at /opt/fieldlink-pymodbus (override: FIELDLINK_PYMODBUS_VENV).
set -euo pipefail
venv="${FIELDLINK_PYMODBUS_VENV:-/opt/fieldlink-pymodbus}"
if ! command -v mbpoll >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mbpoll >/dev/null
fi
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q pymodbus==3.8.6
"$venv/bin/python" -c 'import pymodbus; print("pymodbus", pymodbus.__version__)'
