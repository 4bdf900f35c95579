#!/usr/bin/env bash
# Package dist/ocpp-appliance as dist/ocpp-appliance_<version>_<arch>.deb with dpkg-deb:
# the executable, the systemd units, the default config (a conffile), the man page and
# the maintainer scripts in packaging/debian/.
#
#   bash packaging/build-deb.sh          # builds dist/ocpp-appliance first if missing
#
# Run it where the executable was built (build/build.sh, on the target architecture):
# the package takes the executable's architecture (amd64 or arm64), the commit it
# reports, and this machine's glibc as the minimum libc6.
# Environment: DEB_VERSION (default: appliance.__version__), DEB_MAINTAINER.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
binary=dist/ocpp-appliance
[[ -x $binary ]] || bash build/build.sh

version=${DEB_VERSION:-$(sed -n 's/^__version__ = "\(.*\)"/\1/p' appliance/__init__.py)}
maintainer=${DEB_MAINTAINER:-"ocpp-appliance maintainers <maintainers@ocpp-appliance.invalid>"}
# ELF e_machine (2 bytes at offset 18) names the architecture; no binutils needed
case $(od -An -tu2 -j18 -N2 "$binary" | tr -d ' ') in
    62) arch=amd64 ;;
    183) arch=arm64 ;;
    40) arch=armhf ;;
    *) echo "build-deb.sh: $binary: unknown ELF machine" >&2; exit 1 ;;
esac

# The bundled runtime links against the build machine's glibc: package where you built.
glibc=$(getconf GNU_LIBC_VERSION | cut -d' ' -f2)

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/ocpp-appliance
doc=$pkg/usr/share/doc/ocpp-appliance

install -D -m 0755 "$binary" "$pkg/usr/bin/ocpp-appliance"
# /lib, not /usr/lib: where bookworm's systemd and debhelper put units
install -D -m 0644 packaging/ocpp-appliance.service "$pkg/lib/systemd/system/ocpp-appliance.service"
# the template of a big site's processes (ocpp-appliance@1, @2, …) and HAProxy's sample
install -m 0644 packaging/ocpp-appliance@.service "$pkg/lib/systemd/system/ocpp-appliance@.service"
install -D -m 0644 packaging/appliance.toml "$pkg/etc/ocpp-appliance/appliance.toml"
install -d -m 0755 "$pkg/usr/share/man/man1" "$doc" "$pkg/usr/share/lintian/overrides"
gzip -9n < packaging/ocpp-appliance.1 > "$pkg/usr/share/man/man1/ocpp-appliance.1.gz"
install -m 0644 packaging/debian/copyright "$doc/copyright"
install -D -m 0644 packaging/haproxy.cfg "$doc/examples/haproxy.cfg"
install -m 0644 packaging/debian/lintian-overrides "$pkg/usr/share/lintian/overrides/ocpp-appliance"
# the commit the executable was built from (the checkout may have moved on since)
commit=$("$binary" --version 2>/dev/null | sed -n 's/.*(commit \(.*\))$/\1/p')
[[ -n $commit ]] || commit=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
when=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}")
{
    printf 'ocpp-appliance (%s) unstable; urgency=medium\n\n' "$version"
    printf '  * Built from commit %s.\n\n' "$commit"
    printf ' -- %s  %s\n' "$maintainer" "$when"
} | gzip -9n > "$doc/changelog.gz"

install -d -m 0755 "$pkg/DEBIAN"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$pkg/DEBIAN/"
install -m 0644 packaging/debian/conffiles "$pkg/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
sed -e "s|@VERSION@|$version|" -e "s|@ARCH@|$arch|" -e "s|@MAINTAINER@|$maintainer|" \
    -e "s|@SIZE@|$size|" -e "s|@GLIBC@|$glibc|" packaging/debian/control.in > "$pkg/DEBIAN/control"
(cd "$pkg" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | sort -z | xargs -0 md5sum) \
    > "$pkg/DEBIAN/md5sums"
chmod 0644 "$pkg/DEBIAN/md5sums"

deb=dist/ocpp-appliance_${version}_${arch}.deb
# files owned by root whoever builds; xz like Debian's own packages
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "== $deb ($(du -h "$deb" | cut -f1))"

if command -v lintian >/dev/null; then
    # errors fail the build; warnings and notes are shown
    lintian --tag-display-limit 0 "$deb" || { echo "build-deb.sh: lintian errors" >&2; exit 1; }
fi
