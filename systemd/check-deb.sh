#!/usr/bin/env bash
# Check a fieldlink .deb: its control data (dpkg-deb --info), its contents and conffiles
# (dpkg-deb --contents / --ctrl-tarfile), and — for a package the host can run — that the
# installed binary passes `fieldlink check` on the installed example configuration,
# unpacked into a throwaway root.
#   bash systemd/check-deb.sh target/debian/fieldlink_<version>-1_amd64.deb
set -euo pipefail
deb=${1:?usage: systemd/check-deb.sh <package.deb>}
[ -f "$deb" ] || { echo "check-deb: no such file: $deb"; exit 1; }
fail() { echo "check-deb: $*"; exit 1; }

info=$(dpkg-deb --info "$deb")
echo "$info" | sed -n 's/^ \(Package\|Version\|Architecture\|Depends\|Installed-Size\):/  \1:/p'
echo "$info" | grep -q '^ Package: fieldlink$' || fail "not the fieldlink package"
arch=$(dpkg-deb --field "$deb" Architecture)

contents=$(dpkg-deb --contents "$deb")
for path in ./usr/bin/fieldlink ./etc/fieldlink/gateway.yaml ./etc/fieldlink/casa.yaml \
    ./usr/lib/sysusers.d/fieldlink.conf ./usr/share/doc/fieldlink/README.md; do
  echo "$contents" | awk '{print $NF}' | grep -qx "$path" || fail "missing $path"
done
echo "$contents" | awk '{print $NF}' | grep -Eq '^\./(usr/)?lib/systemd/system/fieldlink\.service$' \
  || fail "missing the systemd unit"

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
else
  echo "  ($arch package: the binary is checked by cross/verify.sh, not run here)"
fi
echo "check-deb: $deb is fine"
