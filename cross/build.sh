#!/usr/bin/env bash
# Cross-build a stripped release binary of fieldlink for a Raspberry Pi.
#
#   cross/build.sh aarch64-unknown-linux-gnu        # 64-bit Pi OS (Pi 3/4/5)
#   cross/build.sh armv7-unknown-linux-gnueabihf    # 32-bit Pi OS (Pi 2/3/4)
#   cross/build.sh arm-unknown-linux-gnueabihf      # ARMv6 (Pi Zero/1), std built from source
#
# The route (cross/README.md says why): Debian bookworm's rustc-web/cargo-web 1.96 with the
# target's standard library from libstd-rust-web-dev:<arch> (Multi-Arch: same), or built
# from rust-web-src with -Zbuild-std where Debian ships none; zig (PyPI `ziglang`) as the
# C compiler and linker through cargo-zigbuild (PyPI), which links against an older glibc
# than the build machine's, so the binary runs on Pi OS bullseye (glibc 2.31) and later.
#
# Installs what is missing (apt-get as root; a Python venv for zig), idempotently.
# Environment:
#   FIELDLINK_GLIBC       glibc the binary is linked against (default 2.31: Pi OS bullseye)
#   FIELDLINK_CROSS_VENV  the venv holding zig and cargo-zigbuild (default <target dir>/cross-venv)
#   CARGO_TARGET_DIR      as usual (default ./target)
#   CARGO_BUILD_JOBS      as usual
# Prints the binary's path, size and the highest GLIBC symbol version it needs.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=cross/common.sh
. "$ROOT/cross/common.sh"

if [ $# -ne 1 ]; then
  echo "usage: $0 <target>   (one of: $CROSS_TARGETS)" >&2
  exit 2
fi
cross_target "$1"
cross_install_build_deps

log "building fieldlink for $TRIPLE (glibc $GLIBC_FLOOR${BUILD_STD:+, std built from source})"
start=$(date +%s)
(
  cd "$ROOT"
  cross_env
  # shellcheck disable=SC2086  # BUILD_STD is a list of flags
  cargo-zigbuild build --locked --release -p fieldlink \
    --target "$TRIPLE.$GLIBC_FLOOR" $BUILD_STD
)
took=$(($(date +%s) - start))

BIN="$(cross_bin)"
[ -x "$BIN" ] || die "the build reported success but $BIN is missing"
cross_report "$BIN" "$took"
