#!/usr/bin/env bash
# The container images, built with no registry (images/build.sh: static musl binaries
# into the `local` target of images/*/Dockerfile), then run for real: `--version` in each
# image as its own non-root user, with a read-only root filesystem and no network, and
# their OCI labels, user and emptiness (no shell) checked.
#
# The musl build is the slow part: every dependency compiles again for the musl target.
# Measured on 2 busy cores, cold: the operator about 4 minutes, the API and the appliance
# about 10 more; warm, seconds. So that CI (CI=true, a fresh clone: a cold target
# directory) stays within a few minutes, it checks the operator image and the API image
# (which the appliance's tests run: scripts/test runs this check before them) unless
# told otherwise; elsewhere all three. IAF_CHECK_IMAGES="api operator appliance" (any of
# them) chooses; IAF_CHECK_IMAGES=none skips this check.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
source "$IAF_ENV_FILE"

if [ "${CI:-}" = true ]; then default_images="api operator"; else default_images="api operator appliance"; fi
read -r -a components <<<"${IAF_CHECK_IMAGES:-$default_images}"
note "images checked: ${components[*]} (IAF_CHECK_IMAGES chooses)"
if [ "${components[*]}" = none ]; then
    note "IAF_CHECK_IMAGES=none: the images are not built"
    exit 0
fi
docker info >/dev/null 2>&1 || die "Docker does not answer: scripts/engines.sh up docker"

started=$SECONDS
# Through the appliance's own `images build`, as a site with a source tree runs it, with
# the third-party images the appliance runs (up to date here: the tests built them).
# The API image carries the embedding model the tests use (all-MiniLM-L6-v2).
cargo build -q --locked -p iafactory-appliance --bin iafactory
IAF_IMAGE_EMBEDDING_MODEL_DIR="${IAF_IMAGE_EMBEDDING_MODEL_DIR:-${IAF_TEST_EMBEDDING_MODEL_DIR:-}}" \
    "$IAF_ROOT/target/debug/iafactory" images build --source "$IAF_ROOT" "${components[@]}" postgres prometheus redis
note "built ${components[*]} postgres prometheus redis in $((SECONDS - started))s"
for image in iafactory/postgres-pgvector:18 iafactory/prometheus iafactory/redis; do
    docker image ls -q "$image" | grep -q . || die "iafactory images build did not build $image"
done

version="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$IAF_ROOT/Cargo.toml")"
for component in "${components[@]}"; do
    image="iafactory/$component:$version"
    case "$component" in api) binary=iafactory-api ;; operator) binary=iafactory-operator ;; appliance) binary=iafactory ;; esac
    out="$(docker run --rm --read-only --network none --cap-drop ALL \
        --security-opt no-new-privileges "$image" --version)" \
        || die "$image --version failed"
    [ "$out" = "$binary $version" ] || die "$image --version printed '$out', expected '$binary $version'"
    note "$image: $out"

    user="$(docker image inspect -f '{{.Config.User}}' "$image")"
    [ "$user" = "65532:65532" ] || die "$image runs as '$user', expected 65532:65532"
    for label in source version revision licenses; do
        value="$(docker image inspect -f "{{index .Config.Labels \"org.opencontainers.image.$label\"}}" "$image")"
        [ -n "$value" ] && [ "$value" != "<no value>" ] || die "$image has no org.opencontainers.image.$label label"
    done
    [ "$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}}' "$image")" = "$version" ] \
        || die "$image is not labelled with version $version"
    # FROM scratch: the binary, the CA bundle (and the API's model), nothing else.
    container="$(docker create "$image")"
    files="$(docker export "$container" | tar -t | grep -v '/$' | grep -vE '^(\.dockerenv|etc/(hostname|hosts|resolv\.conf|mtab)|proc/.*|sys/.*|dev/.*)$' | sort)"
    docker rm "$container" >/dev/null
    unexpected="$(grep -vE "^(usr/local/bin/$binary|etc/ssl/certs/ca-certificates\.crt|opt/iafactory/models/.*)$" <<<"$files" || true)"
    [ -z "$unexpected" ] || die "$image holds more than its binary and CA bundle: $unexpected"
    grep -qx "usr/local/bin/$binary" <<<"$files" || die "$image has no /usr/local/bin/$binary"
    if [ "$component" = api ] && [ -n "${IAF_TEST_EMBEDDING_MODEL_DIR:-}${IAF_IMAGE_EMBEDDING_MODEL_DIR:-}" ]; then
        grep -qx "opt/iafactory/models/all-MiniLM-L6-v2/config.json" <<<"$files" \
            || die "$image has no embedding model in /opt/iafactory/models/all-MiniLM-L6-v2"
    fi
done

# Redis (the tenants' shared rate-limit store), as the plan runs it: its own non-root
# user, a read-only root filesystem, no capabilities, no network; its healthcheck
# command answers, and nothing is persisted.
redis_image="$(sed -n '/^\[images.redis\]/,/^\[/s/^image *= *"\(.*\)"/\1/p' "$IAF_ROOT/config/iafactory.toml")"
[ "$(docker image inspect -f '{{.Config.User}}' "$redis_image")" = "999:999" ] || die "$redis_image does not run as 999:999"
redis="$(docker run -d --read-only --network none --cap-drop ALL --security-opt no-new-privileges \
    "$redis_image" --port 6379 --protected-mode no --save '' --appendonly no)"
trap 'docker rm -f "$redis" >/dev/null 2>&1' EXIT
for _ in $(seq 50); do
    [ "$(docker exec "$redis" redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ] && break
    sleep 0.1
done
[ "$(docker exec "$redis" redis-cli -h 127.0.0.1 -p 6379 ping)" = PONG ] || die "$redis_image does not answer redis-cli ping"
[ "$(docker exec "$redis" redis-cli config get appendonly | tail -n 1)" = no ] || die "$redis_image persists an append-only file"
note "$redis_image: PONG as 999:999 on a read-only root filesystem"
