# Shared by cross/build.sh and cross/verify.sh (sourced, not run).
# shellcheck shell=bash disable=SC2034  # variables set here are used by the sourcing scripts

CROSS_TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf arm-unknown-linux-gnueabihf"
# Pinned so that a CI run builds with what was measured (cross/README.md).
ZIGLANG_VERSION="0.17.1"
CARGO_ZIGBUILD_VERSION="0.24.1"
# Keep the Pi's binary small (README, "Cross-compiling for the Raspberry Pi").
MAX_BYTES=$((15 * 1000 * 1000))

log() { echo "== cross: $*"; }
die() {
  echo "cross: error: $*" >&2
  exit 1
}

# cross_target TRIPLE: sets TRIPLE, DEB_ARCH (the Debian architecture whose libc the
# binary runs on under qemu), QEMU (the qemu-user binary), BUILD_STD (extra cargo flags
# when Debian ships no standard library for the target) and GLIBC_FLOOR.
cross_target() {
  TRIPLE="$1"
  BUILD_STD=""
  case "$TRIPLE" in
    aarch64-unknown-linux-gnu)
      DEB_ARCH=arm64 QEMU=qemu-aarch64-static ;;
    armv7-unknown-linux-gnueabihf)
      # Debian's armhf is ARMv7 + VFPv3-D16 + Thumb-2: libstd-rust-web-dev:armhf ships
      # exactly this target's std, so no build-std is needed.
      DEB_ARCH=armhf QEMU=qemu-arm-static ;;
    arm-unknown-linux-gnueabihf)
      # ARMv6 + VFPv2 (Pi Zero/1): no Debian std for it, so std is built from
      # rust-web-src. Unwinding std because the release profile keeps panic = "unwind".
      DEB_ARCH=armhf QEMU=qemu-arm-static
      BUILD_STD="-Zbuild-std=std,panic_unwind" ;;
    *)
      die "unknown target '$TRIPLE' (known: $CROSS_TARGETS)" ;;
  esac
  GLIBC_FLOOR="${FIELDLINK_GLIBC:-2.31}"
  TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
  VENV="${FIELDLINK_CROSS_VENV:-$TARGET_DIR/cross-venv}"
  # CARGO_TARGET_<TRIPLE>_RUNNER and friends.
  TRIPLE_ENV="$(echo "$TRIPLE" | tr 'a-z-' 'A-Z_')"
}

# The Debian packages the build needs; only missing ones are installed.
_missing_pkgs() {
  local p missing=()
  for p in "$@"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
      missing+=("$p")
    fi
  done
  echo "${missing[@]:-}"
}

_apt_install() {
  local missing
  missing="$(_missing_pkgs "$@")"
  [ -z "$missing" ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    die "missing Debian packages: $missing (run this script as root, or: sudo dpkg --add-architecture $DEB_ARCH && sudo apt-get update && sudo apt-get install $missing)"
  fi
  if ! dpkg --print-foreign-architectures | grep -qx "$DEB_ARCH" \
    && [ "$(dpkg --print-architecture)" != "$DEB_ARCH" ]; then
    log "adding the Debian architecture $DEB_ARCH"
    dpkg --add-architecture "$DEB_ARCH"
  fi
  log "installing $missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # shellcheck disable=SC2086  # a list of package names
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

cross_install_build_deps() {
  command -v dpkg-query >/dev/null || die "this route needs a Debian (bookworm) machine"
  # rustc-web/cargo-web: bookworm-security's Rust 1.96 (the machine's rustup toolchain
  # cannot fetch other targets here); libstd-rust-web-dev:<arch>: that target's std;
  # libc6:<arch>: the target's loader and libc, for qemu in verify.sh.
  local pkgs=(rustc-web cargo-web "libc6:$DEB_ARCH" python3-venv binutils file)
  if [ -n "$BUILD_STD" ]; then
    pkgs+=(rust-web-src)
  else
    pkgs+=("libstd-rust-web-dev:$DEB_ARCH")
  fi
  _apt_install "${pkgs[@]}"
  [ -x /usr/bin/rustc ] || die "/usr/bin/rustc (rustc-web) is missing"
  if [ -n "$BUILD_STD" ] && [ ! -f /usr/lib/rustlib/src/rust/library/Cargo.lock ]; then
    die "rust-web-src is installed but /usr/lib/rustlib/src/rust/library is incomplete"
  fi
  if ! "$VENV/bin/python3" - "$ZIGLANG_VERSION" "$CARGO_ZIGBUILD_VERSION" 2>/dev/null <<'PY'; then
import sys
from importlib.metadata import version
sys.exit(0 if (version("ziglang"), version("cargo-zigbuild")) == tuple(sys.argv[1:]) else 1)
PY
    log "installing ziglang $ZIGLANG_VERSION and cargo-zigbuild $CARGO_ZIGBUILD_VERSION into $VENV"
    mkdir -p "$(dirname "$VENV")"
    [ -x "$VENV/bin/pip" ] || /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
      "ziglang==$ZIGLANG_VERSION" "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION"
  fi
}

# Debian's cargo and rustc ahead of rustup's proxies; zig and cargo-zigbuild from the venv.
cross_env() {
  export PATH="$VENV/bin:/usr/bin:$PATH"
  export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
  unset RUSTUP_TOOLCHAIN
  export CARGO_TARGET_DIR="$TARGET_DIR"
  if [ -n "$BUILD_STD" ]; then
    # -Zbuild-std on a stable compiler.
    export RUSTC_BOOTSTRAP=1
  fi
}

cross_bin() { echo "$TARGET_DIR/$TRIPLE/release/fieldlink"; }

# cross_max_glibc FILE: the highest GLIBC_x.y among the versions the ELF file needs.
# (readelf reads any architecture's ELF; objdump would need the target's binutils.)
cross_max_glibc() {
  readelf --version-info --wide "$1" | grep -o 'GLIBC_[0-9][0-9.]*' | sort -u -V | tail -n 1
}

# cross_report BIN SECONDS: size, glibc, needed libraries; fails past the limits.
cross_report() {
  local bin="$1" took="$2" bytes glibc needed
  bytes=$(stat -c %s "$bin")
  glibc="$(cross_max_glibc "$bin")"
  needed="$(readelf --dynamic --wide "$bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p' | tr '\n' ' ')"
  echo "binary:     $bin"
  echo "            $(file -b "$bin" | cut -d, -f1-2)"
  echo "size:       $bytes bytes ($(awk -v b="$bytes" 'BEGIN{printf "%.1f MB, %.1f MiB", b/1e6, b/1048576}'))"
  echo "max glibc:  ${glibc:-none}  (linked against glibc $GLIBC_FLOOR)"
  echo "needs:      $needed"
  echo "build time: ${took}s"
  if readelf --sections --wide "$bin" | grep -q '\.symtab'; then
    die "$bin is not stripped"
  fi
  [ "$bytes" -le "$MAX_BYTES" ] || die "$bin is $bytes bytes, over the $MAX_BYTES limit"
  if [ -n "$glibc" ] && [ "$(printf '%s\n' "${glibc#GLIBC_}" "$GLIBC_FLOOR" | sort -V | tail -n 1)" != "$GLIBC_FLOOR" ]; then
    die "$bin needs $glibc, newer than the glibc $GLIBC_FLOOR it was meant for"
  fi
}
