#!/usr/bin/env bash
# Check a cross-built fieldlink under qemu-user (cross/build.sh TARGET first).
#
#   cross/verify.sh aarch64-unknown-linux-gnu
#
# 1. `fieldlink --version` runs;
# 2. `fieldlink check` accepts the shipped mappings (mappings/gateway.yaml);
# 3. `fieldlink demo` runs on a loopback port and the host's own `fieldlink watch` sees
#    values move (readings from the simulated devices, through the emulated binary's
#    embedded broker);
# 4. the driver crate's unit tests (Modbus codec in every word order, read planner, RTU
#    framing and CRC, UART parsers, backoff, GPIO) are built for the target and run under
#    qemu (CARGO_TARGET_<TRIPLE>_RUNNER): byte order and word size are where a port breaks.
# qemu-user-static (Debian) runs the target's binaries with the target's loader and libc
# from libc6:<arch> (multiarch, under / itself: `-L /`); no binfmt registration is needed.
# Exits non-zero, saying which step failed, on any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=cross/common.sh
. "$ROOT/cross/common.sh"

if [ $# -ne 1 ]; then
  echo "usage: $0 <target>   (one of: $CROSS_TARGETS)" >&2
  exit 2
fi
cross_target "$1"
BIN="$(cross_bin)"
[ -x "$BIN" ] || die "no cross-built binary at $BIN: run cross/build.sh $TRIPLE first"
cross_install_build_deps
_apt_install qemu-user-static
command -v "$QEMU" >/dev/null || die "$QEMU is missing (package qemu-user-static)"
RUN=("$QEMU" -L /)

# Logs of this run (demo, watch, tests), kept for a look after a failure.
WORK="$TARGET_DIR/cross-verify/$TRIPLE"
rm -rf "$WORK"
mkdir -p "$WORK"
DEMO_PID=""
cleanup() {
  if [ -n "$DEMO_PID" ] && kill -0 "$DEMO_PID" 2>/dev/null; then
    kill "$DEMO_PID" 2>/dev/null || true
    wait "$DEMO_PID" 2>/dev/null || true
  fi
}
trap cleanup EXIT

fail() {
  echo "cross verify ($TRIPLE): FAILED: $*  (logs in $WORK)" >&2
  exit 1
}
pass() { echo "cross verify ($TRIPLE): ok: $*"; }

start=$(date +%s)

# 1. --version
log "fieldlink --version under $QEMU"
file -b "$BIN" | grep -q "ELF" || fail "$BIN is not an ELF file"
version="$("${RUN[@]}" "$BIN" --version 2>&1)" || fail "--version: $version"
case "$version" in
  "fieldlink "[0-9]*) pass "--version: $version" ;;
  *) fail "--version printed '$version'" ;;
esac

# 2. check on the shipped mappings
log "fieldlink check -c mappings/gateway.yaml under $QEMU"
if out="$(cd "$ROOT" && "${RUN[@]}" "$BIN" check -c mappings/gateway.yaml 2>&1)"; then
  pass "check: $(echo "$out" | tail -n 1)"
else
  echo "$out" >&2
  fail "check on mappings/gateway.yaml exited non-zero"
fi

# 3. demo under qemu, watched by the host's own build
log "host fieldlink (the machine's toolchain) for watch"
(
  cd "$ROOT"
  env -u RUSTC -u RUSTDOC cargo build --locked -q -p fieldlink --bin fieldlink
) || fail "cannot build the host fieldlink for watch"
HOST_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/fieldlink"
[ -x "$HOST_BIN" ] || fail "host build missing at $HOST_BIN"

log "fieldlink demo --listen 127.0.0.1:0 under $QEMU"
"${RUN[@]}" "$BIN" demo --listen 127.0.0.1:0 >"$WORK/demo.log" 2>&1 &
DEMO_PID=$!
port=""
for _ in $(seq 1 120); do
  port="$(sed -n 's/.*embedded broker at [^ ]*:\([0-9][0-9]*\)\..*/\1/p' "$WORK/demo.log" | head -n 1)"
  [ -n "$port" ] && break
  kill -0 "$DEMO_PID" 2>/dev/null || {
    cat "$WORK/demo.log" >&2
    fail "demo exited before its broker listened"
  }
  sleep 0.5
done
[ -n "$port" ] || {
  cat "$WORK/demo.log" >&2
  fail "demo printed no broker port within 60 s"
}
pass "demo's broker listens on 127.0.0.1:$port"

# Retained values arrive at once; live ones only while the emulated gateway polls.
WANT=80
if ! timeout 60 "$HOST_BIN" watch --host 127.0.0.1 --port "$port" --count "$WANT" \
  >"$WORK/watch.out" 2>"$WORK/watch.err"; then
  cat "$WORK/watch.err" "$WORK/demo.log" >&2
  fail "host watch did not see $WANT messages within 60 s ($(wc -l <"$WORK/watch.out") seen)"
fi
# A topic seen with two different payloads is a value that moved during the watch.
moved="$(awk '{ t = $1; $1 = ""; if (t in seen && seen[t] != $0) m[t] = 1; seen[t] = $0 }
  END { n = 0; for (t in m) n++; print n }' "$WORK/watch.out")"
topics="$(awk '{ print $1 }' "$WORK/watch.out" | sort -u | wc -l)"
[ "$moved" -gt 0 ] || {
  cat "$WORK/watch.out" >&2
  fail "watch saw $WANT messages on $topics topics but no value changed"
}
online="$(sed -n 's|^fieldlink/[^ ]*/\([^/ ]*\)/availability online$|\1|p' "$WORK/watch.out" | sort -u | tr '\n' ' ')"
offline="$(sed -n 's|^fieldlink/[^ ]*/\([^/ ]*\)/availability offline$|\1|p' "$WORK/watch.out" | sort -u | tr '\n' ' ')"
[ -n "$online" ] || fail "no device of the demo came online"
# The serial ones (RTU room sensor, UART CO2 sensor) cannot open their pseudo-terminals
# under qemu-user (no TCGETS2 ioctl, see step 4), so they stay offline here.
pass "devices online: $online${offline:+; offline: $offline(serial devices cannot open a port under qemu-user)}"
pass "host watch saw $WANT messages on $topics topics, $moved of them changing; e.g. $(grep '^casa/' "$WORK/watch.out" | head -n 1)"

kill -INT "$DEMO_PID"
rc=0
for _ in $(seq 1 40); do
  kill -0 "$DEMO_PID" 2>/dev/null || break
  sleep 0.5
done
if kill -0 "$DEMO_PID" 2>/dev/null; then
  fail "demo did not stop within 20 s of SIGINT"
fi
wait "$DEMO_PID" || rc=$?
DEMO_PID=""
[ "$rc" -eq 0 ] || {
  tail -n 20 "$WORK/demo.log" >&2
  fail "demo exited with $rc after SIGINT"
}
pass "demo stopped cleanly on SIGINT"

# 4. the driver crate's tests, built for the target, run under qemu
log "cargo test -p fieldlink-drivers --target $TRIPLE under $QEMU"
if ! (
  cd "$ROOT"
  cross_env
  export "CARGO_TARGET_${TRIPLE_ENV}_RUNNER=$QEMU -L /"
  # --lib: the unit tests. Not tests/rtu.rs: it opens a pseudo-terminal as a serial
  # port, and serialport's open uses the TCGETS2 ioctl, which bookworm's qemu-user 7.2
  # does not emulate: "Function not implemented". Not doctests.
  # shellcheck disable=SC2086  # BUILD_STD is a list of flags
  cargo-zigbuild test --locked -p fieldlink-drivers --lib \
    --target "$TRIPLE.$GLIBC_FLOOR" $BUILD_STD
) >"$WORK/test.log" 2>&1; then
  tail -n 60 "$WORK/test.log" >&2
  fail "the driver tests failed to build or failed under $QEMU (see above)"
fi
grep -E '^(running|test result)' "$WORK/test.log"
grep -q '^test result: ok' "$WORK/test.log" || fail "no driver test ran"
pass "driver tests under $QEMU: $(grep -c '^test result: ok' "$WORK/test.log") suites ok, $(awk '/^test result: ok/ { n += $4 } END { print n }' "$WORK/test.log") tests passed"

echo "cross verify ($TRIPLE): all checks passed in $(($(date +%s) - start))s"
