#!/usr/bin/env bash
# Install Home Assistant core for the interop harness (tests/src/homeassistant.rs) into a
# venv: ${FIELDLINK_HA_VENV:-/opt/fieldlink-ha}, with the packages of requirements.txt
# beside this script, constrained by HA's own homeassistant/package_constraints.txt.
#
# Idempotent: a venv installed from the same requirements.txt is left as it is (a stamp
# file holds the list's checksum); a changed list or a broken venv is installed anew.
# Needs Python 3.11 (Debian bookworm's python3.11; python3.11-venv is installed with
# apt-get when its ensurepip is missing) and PyPI.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${FIELDLINK_HA_VENV:-/opt/fieldlink-ha}"
requirements="$here/requirements.txt"
stamp="$venv/.fieldlink-ha-installed"
start=$(date +%s)

want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
  && "$venv/bin/hass" --version >/dev/null 2>&1; then
  echo "Home Assistant $("$venv/bin/hass" --version) already installed in $venv"
  exit 0
fi

# Python 3.11: FIELDLINK_HA_PYTHON, else the system's, else whichever is on PATH.
python="${FIELDLINK_HA_PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3.11 ]; then
    python=/usr/bin/python3.11
  else
    python="$(command -v python3.11 || true)"
  fi
fi
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "$@" >/dev/null
}
if [ -z "$python" ]; then
  apt_install python3.11 python3.11-venv
  python=/usr/bin/python3.11
fi
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  apt_install python3.11-venv
fi

echo "Installing Home Assistant into $venv with $("$python" --version)"
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check --no-input -q)

# HA's constraints come inside its wheel: fetch the wheel alone, read them, then install
# the wheel and the rest under them.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ha="$(grep -E '^homeassistant==' "$requirements")"
"${pip[@]}" download --no-deps --only-binary=:all: -d "$work" "$ha"
wheel="$(ls "$work"/homeassistant-*.whl)"
"$venv/bin/python" - "$wheel" "$work/constraints.txt" <<'EOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    open(sys.argv[2], "wb").write(z.read("homeassistant/package_constraints.txt"))
EOF
grep -v -E '^homeassistant==' "$requirements" > "$work/requirements.txt"
"${pip[@]}" install -c "$work/constraints.txt" "$wheel" -r "$work/requirements.txt"

# What HA's startup imports; a missing one sends it into recovery mode (no MQTT).
"$venv/bin/python" -c 'import homeassistant, paho.mqtt, hass_frontend, sqlalchemy, fnv_hash_fast, PIL, janus, psutil_home_assistant, securetar, numpy, turbojpeg, hass_nabucasa'
echo "$want" > "$stamp"
echo "Home Assistant $("$venv/bin/hass" --version) installed in $venv ($(du -sh "$venv" | cut -f1)) in $(($(date +%s) - start))s"
