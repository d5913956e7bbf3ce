#!/usr/bin/env bash
# Builds the IAFactory images from binaries compiled here, with no registry: each
# binary is compiled static (musl), stripped, and copied with a CA bundle into the
# `local` target of its images/<name>/Dockerfile (FROM scratch).
#
#   images/build.sh [--release] [api] [operator] [appliance] [prometheus]    (default: all)
#
# `prometheus` is the appliance's monitoring image, from the Debian package
# (images/prometheus/build.sh), not from this workspace.
#
# Tags iafactory/<name>:<workspace version>. The debug profile (the default) compiles
# faster; --release is what you ship. IAF_IMAGE_EMBEDDING_MODEL_DIR, when set, is put
# in the API image at /opt/iafactory/models/all-MiniLM-L6-v2 (the platform config's
# api.embedding_model_dir).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$IAF_ROOT"

profile=dev
components=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        api | operator | appliance) components+=("$arg") ;;
        prometheus) with_prometheus=1 ;;
        *) die "unknown argument $arg (expected --release, api, operator, appliance or prometheus)" ;;
    esac
done
if [ ${#components[@]} -eq 0 ] && [ -z "${with_prometheus:-}" ]; then
    components=(api operator appliance)
    with_prometheus=1
fi
if [ -n "${with_prometheus:-}" ]; then
    "$IAF_ROOT/images/prometheus/build.sh"
fi
[ ${#components[@]} -gt 0 ] || exit 0

target=x86_64-unknown-linux-musl
rustup target list --installed | grep -qx "$target" \
    || die "the Rust target $target is missing: scripts/engines.sh up musl"
command -v docker >/dev/null || die "docker is missing: scripts/engines.sh up docker"
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[ -f "$ca_bundle" ] || die "$ca_bundle is missing: apt-get install ca-certificates"

# Without buildx, a recent docker client refuses BuildKit: use the classic builder (the
# local target comes first in each Dockerfile, so it needs no base image).
docker buildx version >/dev/null 2>&1 || export DOCKER_BUILDKIT=0

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' Cargo.toml)"
revision="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

package_of() { case "$1" in api) echo iafactory-api ;; operator) echo iafactory-operator ;; appliance) echo iafactory-appliance ;; esac; }
binary_of() { case "$1" in api) echo iafactory-api ;; operator) echo iafactory-operator ;; appliance) echo iafactory ;; esac; }

cargo_args=()
for component in "${components[@]}"; do
    cargo_args+=(-p "$(package_of "$component")" --bin "$(binary_of "$component")")
done
log "compiling ${components[*]} for $target ($profile profile)"
started=$SECONDS
cargo build --locked --target "$target" --profile "$profile" "${cargo_args[@]}"
note "compiled in $((SECONDS - started))s"

target_dir="${CARGO_TARGET_DIR:-$IAF_ROOT/target}"
profile_dir=$([ "$profile" = dev ] && echo debug || echo "$profile")
for component in "${components[@]}"; do
    binary="$(binary_of "$component")"
    built="$target_dir/$target/$profile_dir/$binary"
    # Static: no interpreter, no shared library.
    if readelf -l "$built" 2>/dev/null | grep -q 'INTERP'; then
        die "$built is dynamically linked"
    fi
    context="$(mktemp -d)"
    mkdir -p "$context/models"
    cp "$built" "$context/$binary"
    strip "$context/$binary"
    cp "$ca_bundle" "$context/ca-certificates.crt"
    if [ "$component" = api ] && [ -n "${IAF_IMAGE_EMBEDDING_MODEL_DIR:-}" ]; then
        cp -r "$IAF_IMAGE_EMBEDDING_MODEL_DIR" "$context/models/all-MiniLM-L6-v2"
    fi
    tag="iafactory/$component:$version"
    log "docker build $tag ($(du -h "$context/$binary" | cut -f1) binary)"
    docker build --quiet --target local \
        --build-arg "VERSION=$version" --build-arg "REVISION=$revision" \
        -f "images/$component/Dockerfile" -t "$tag" "$context" >/dev/null
    rm -rf "$context"
done
