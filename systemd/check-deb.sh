#!/usr/bin/env bash
# Check a fieldlink .deb: its control data (dpkg-deb --info), its contents and conffiles
# (dpkg-deb --contents / --ctrl-tarfile), and — for a package the host can run — that the
# installed binary passes `fieldlink check` on the installed example configuration,
# unpacked into a throwaway root.
# With --install (as root, amd64): also installs it for real with dpkg into a throwaway
# Debian bookworm (debootstrap, with systemd, as on Raspberry Pi OS) and checks the user,
# the permissions, `check` as the service user, that an upgrade keeps an edited conffile,
# and that purge removes the state directory.
#   bash systemd/check-deb.sh [--install] target/debian/fieldlink_<version>-1_amd64.deb
set -euo pipefail
install=0
if [ "${1:-}" = "--install" ]; then install=1; shift; fi
deb=${1:?usage: systemd/check-deb.sh [--install] <package.deb>}
[ -f "$deb" ] || { echo "check-deb: no such file: $deb"; exit 1; }
fail() { echo "check-deb: $*"; exit 1; }

info=$(dpkg-deb --info "$deb")
echo "$info" | sed -n 's/^ \(Package\|Version\|Architecture\|Depends\|Installed-Size\):/  \1:/p'
echo "$info" | grep -q '^ Package: fieldlink$' || fail "not the fieldlink package"
arch=$(dpkg-deb --field "$deb" Architecture)

contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/fieldlink ./etc/fieldlink/gateway.yaml ./etc/fieldlink/casa.yaml \
    ./usr/lib/sysusers.d/fieldlink.conf ./usr/share/doc/fieldlink/README.md \
    ./usr/share/fieldlink/schema/gateway.json ./usr/share/fieldlink/schema/mapping.json \
    ./usr/share/fieldlink/schema/profile.json; do
  echo "$contents" | awk '{print $NF}' | grep -qx "$path" || fail "missing $path"
done
echo "$contents" | awk '{print $NF}' | grep -Eq '^\./(usr/)?lib/systemd/system/fieldlink\.service$' \
  || fail "missing the systemd unit"
profiles=$(echo "$contents" | awk '{print $NF}' | grep -E '^\./usr/share/fieldlink/profiles/[^/]+\.yaml$' || true)
[ -n "$profiles" ] || fail "no device profiles under /usr/share/fieldlink/profiles"
echo "  profiles: $(echo "$profiles" | wc -l) under /usr/share/fieldlink/profiles"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$tmp" ./conffiles ./postinst ./postrm 2>/dev/null \
  || dpkg-deb --control "$deb" "$tmp"
for c in /etc/fieldlink/gateway.yaml /etc/fieldlink/casa.yaml; do
  grep -qx "$c" "$tmp/conffiles" || fail "$c is not a conffile (an upgrade would overwrite it)"
done
grep -q 'systemd-sysusers\|adduser' "$tmp/postinst" || fail "postinst does not create the user"
echo "  conffiles: $(tr '\n' ' ' < "$tmp/conffiles")"

root="$tmp/root"
mkdir -p "$root"
dpkg-deb --extract "$deb" "$root"
if [ "$arch" = "$(dpkg --print-architecture)" ]; then
  "$root/usr/bin/fieldlink" --version
  "$root/usr/bin/fieldlink" check --config "$root/etc/fieldlink/gateway.yaml" \
    || fail "fieldlink check failed on the installed example"
  # The installed profiles are the ones compiled in, byte for byte, and no other.
  for f in "$root"/usr/share/fieldlink/profiles/*.yaml; do
    name=$(basename "$f" .yaml)
    "$root/usr/bin/fieldlink" profiles show "$name" | cmp -s - "$f" \
      || fail "installed profile $name differs from the binary's"
  done
  listed=$("$root/usr/bin/fieldlink" profiles | tail -n +2 | awk '{print $1}' | sort)
  installed=$(ls "$root"/usr/share/fieldlink/profiles/ | sed 's/\.yaml$//' | sort)
  [ "$listed" = "$installed" ] || fail "fieldlink profiles lists other profiles than the package installs"
else
  echo "  ($arch package: the binary is checked by cross/verify.sh, not run here)"
fi
if [ "$install" = 1 ]; then
  [ "$arch" = "$(dpkg --print-architecture)" ] || fail "--install needs a package of this machine's architecture"
  [ "$(id -u)" = 0 ] || fail "--install needs root (debootstrap, chroot)"
  if ! command -v debootstrap >/dev/null 2>&1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
  fi
  sys="$tmp/bookworm"
  echo "  debootstrap bookworm (minbase + systemd) ..."
  debootstrap --variant=minbase --include=systemd bookworm "$sys" http://deb.debian.org/debian >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log"; fail "debootstrap failed"; }
  cp "$deb" "$sys/tmp/fieldlink.deb"
  inside() { chroot "$sys" /bin/sh -c "$1"; }
  inside "dpkg -i /tmp/fieldlink.deb" >/dev/null || fail "dpkg -i failed"
  inside "id -nG fieldlink" | grep -qw dialout || fail "the fieldlink user is not in dialout"
  inside "id -nG fieldlink" | grep -qw gpio || fail "the fieldlink user is not in gpio"
  [ "$(inside 'stat -c %U /var/lib/fieldlink')" = fieldlink ] || fail "/var/lib/fieldlink is not the user's"
  inside "su -s /bin/sh fieldlink -c 'fieldlink check --config /etc/fieldlink/gateway.yaml'" >/dev/null \
    || fail "the service user cannot check the installed configuration"
  inside "echo '# edited' >> /etc/fieldlink/gateway.yaml"
  inside "dpkg -i --force-confold /tmp/fieldlink.deb" >/dev/null || fail "reinstall failed"
  inside "tail -1 /etc/fieldlink/gateway.yaml" | grep -qx '# edited' || fail "an upgrade overwrote an edited conffile"
  inside "dpkg --purge fieldlink" >/dev/null || fail "purge failed"
  inside "test ! -e /var/lib/fieldlink" || fail "purge left /var/lib/fieldlink"
  echo "  installed, checked as the service user, upgraded (conffile kept) and purged in a bookworm chroot"
fi
echo "check-deb: $deb is fine"
