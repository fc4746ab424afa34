#!/usr/bin/env bash
# Check the unit: `systemd-analyze verify` (with a built binary in place of
# /usr/bin/fieldlink, which only the package installs) and the exposure score of
# `systemd-analyze security --offline=yes`, which must stay at 2.0 or better.
#   bash systemd/check.sh [path/to/fieldlink]     (default: target/debug/fieldlink)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/fieldlink}")
[ -x "$bin" ] || { echo "systemd/check.sh: no binary at $bin (cargo build -p fieldlink)"; exit 1; }
command -v systemd-analyze >/dev/null || { echo "systemd/check.sh: systemd-analyze is missing (package systemd)"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/bin/fieldlink#$bin#g" systemd/fieldlink.service > "$tmp/fieldlink.service"
out=$(systemd-analyze verify "$tmp/fieldlink.service" 2>&1 || true)
if [ -n "$out" ]; then
  echo "$out"
  echo "systemd/check.sh: systemd-analyze verify reported problems"
  exit 1
fi
score=$(systemd-analyze security --offline=yes "$tmp/fieldlink.service" 2>/dev/null \
  | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { echo "systemd/check.sh: no exposure score"; exit 1; }
if awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }'; then
  echo "fieldlink.service: verify clean, exposure level $score (at most 2.0)"
else
  echo "fieldlink.service: exposure level $score is above 2.0"
  exit 1
fi
