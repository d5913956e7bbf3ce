#!/usr/bin/env bash
# Builds iafactory/redis:<upstream version> FROM scratch, with no registry: redis-server
# and redis-cli from this machine's Debian redis-server package (scripts/engines.sh up
# redis) and the glibc libraries they link. Tagged by the package's upstream version
# (5:7.0.15-1~deb12u10 → 7.0.15), the platform config's `images.redis`. Skips the build
# when an image of the same content exists (label iafactory.dz/content); the build
# itself takes a few seconds (about 13 MB).
#
#   images/redis/build.sh [TAG]     prints the tag
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
server=/usr/bin/redis-server
cli=/usr/bin/redis-cli
package_version="$(dpkg-query -W -f '${Version}' redis-server 2>/dev/null)" && [ -x "$server" ] && [ -x "$cli" ] \
    || die "the redis-server Debian package is not installed: scripts/engines.sh up redis"
upstream="${package_version#*:}"
upstream="${upstream%%[+~-]*}"
tag="${1:-iafactory/redis:$upstream}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

content="$( (echo "$package_version"; sha256sum "$here/Dockerfile" "$here/build.sh" "$server" "$cli") | sha256sum | cut -c1-16)"
if image_current "$tag" "$content"; then
    echo "$tag"
    exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/etc"
cp -L "$server" "$root/usr/local/bin/redis-server"
cp -L "$cli" "$root/usr/local/bin/redis-cli"
# The glibc libraries both link, and the loader.
for lib in $( (ldd "$server"; ldd "$cli") | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
printf 'root:x:0:0:root:/:/nonexistent\nredis:x:999:999:Redis:/nonexistent:/nonexistent\n' >"$root/etc/passwd"
printf 'root:x:0:\nredis:x:999:\n' >"$root/etc/group"
cp "$here/Dockerfile" "$context/Dockerfile"
echo "LABEL iafactory.dz/content=\"$content\" iafactory.dz/debian-version=\"$package_version\"" >>"$context/Dockerfile"
log "docker build $tag ($(du -sh "$root" | cut -f1))"
DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$context" >/dev/null
note "built $tag ($content)"
echo "$tag"
