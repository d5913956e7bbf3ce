#!/usr/bin/env bash
# Builds iafactory/prometheus:<upstream version> FROM scratch, with no registry: the
# prometheus binary of this machine's Debian package (scripts/engines.sh up prometheus),
# the glibc libraries it links, its classic web UI, and a static busybox for the
# healthcheck's wget. Tagged by the Debian package's upstream version
# (2.42.0+ds-5+deb12u1 → 2.42.0), the appliance's default
# `appliance.monitoring.prometheus.image`. Skips the build when an
# image of the same content exists (label iafactory.dz/content).
#
#   images/prometheus/build.sh [TAG]
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
prometheus="${IAF_TEST_PROMETHEUS:-/usr/bin/prometheus}"
[ -x "$prometheus" ] || die "no prometheus binary at $prometheus: scripts/engines.sh up prometheus"
package_version="$(dpkg-query -W -f '${Version}' prometheus 2>/dev/null)" \
    || die "the prometheus Debian package is not installed: scripts/engines.sh up prometheus"
upstream="${package_version#*:}"
upstream="${upstream%%[+~-]*}"
tag="${1:-iafactory/prometheus:$upstream}"
busybox=/bin/busybox
[ -x "$busybox" ] && file -L "$busybox" | grep -q 'statically linked' \
    || die "$busybox is not a static busybox: scripts/engines.sh up busybox"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

content="$( (echo "$package_version"; sha256sum "$here/Dockerfile" "$here/build.sh" "$busybox" "$prometheus") | sha256sum | cut -c1-16)"
if image_current "$tag" "$content"; then
    exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$context/data"
cp "$prometheus" "$root/bin/prometheus"
# The glibc libraries the binary links, and the loader.
for lib in $(ldd "$prometheus" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
# The classic web UI Debian's build serves from /usr/share/prometheus/web: its templates
# and the JavaScript it links (symlinks into /usr/share/javascript, copied as files);
# of moment-timezone (214 MB) only the one file the pages load.
web=/usr/share/prometheus/web
if [ -d "$web/templates" ]; then
    mkdir -p "$root$web/static"
    cp -rL "$web/templates" "$root$web/"
    for entry in "$web"/static/*; do
        [ "${entry##*/}" = moment-timezone ] || cp -rL "$entry" "$root$web/static/"
    done
    for file in $(grep -ho 'static/moment-timezone/[^"?]*' "$web"/templates/*.html | sort -u); do
        mkdir -p "$root$web/$(dirname "$file")"
        cp -L "$web/$file" "$root$web/$file"
    done
fi
cp "$busybox" "$root/bin/busybox"
printf 'root:x:0:0:root:/:/bin/busybox\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
cp "$here/Dockerfile" "$context/Dockerfile"
echo "LABEL iafactory.dz/content=\"$content\" iafactory.dz/debian-version=\"$package_version\"" >>"$context/Dockerfile"
log "docker build $tag ($(du -sh "$root" | cut -f1))"
DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$context" >/dev/null
note "built $tag ($content)"
