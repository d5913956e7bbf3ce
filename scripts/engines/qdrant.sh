# Qdrant for tests: no Qdrant server binary can be installed here, so
# tests/qdrant-testserver serves Qdrant's gRPC API over Qdrant's own engine
# (the qdrant-edge crate). qdrant-edge needs Rust 1.96, newer than the workspace's
# toolchain: the test server is its own workspace with its own rust-toolchain.toml.
#
# Builds it once (release: the engine does the vector maths, and the benchmark uses
# it), cached under $IAF_CACHE keyed by a hash of its sources, manifest and lockfile.
# Each test starts its own server from IAF_TEST_QDRANT_SERVER, on a free port, with
# its own storage.
QDRANT_TESTSERVER_DIR="$IAF_ROOT/tests/qdrant-testserver"

qdrant_toolchain() { sed -n 's/^channel *= *"\(.*\)"/\1/p' "$QDRANT_TESTSERVER_DIR/rust-toolchain.toml"; }

qdrant_sources_hash() {
    (cd "$QDRANT_TESTSERVER_DIR" && find src Cargo.toml Cargo.lock rust-toolchain.toml -type f -print0 \
        | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

qdrant_server_bin() { echo "$IAF_CACHE/qdrant-testserver-$(qdrant_sources_hash)/qdrant-testserver"; }

qdrant_install() {
    local channel; channel="$(qdrant_toolchain)"
    if ! rustup toolchain list | grep -q "^$channel"; then
        log "installing Rust $channel (minimal profile) for tests/qdrant-testserver: qdrant-edge needs it"
        rustup toolchain install "$channel" --profile minimal >/dev/null
    fi
    local bin; bin="$(qdrant_server_bin)"
    if [ ! -x "$bin" ]; then
        log "building tests/qdrant-testserver (Qdrant's engine, qdrant-edge; about 25 minutes cold on 2 busy cores, qdrant-edge being 300k lines; cached afterwards)"
        # A target directory of its own, kept between source changes: a rebuild after
        # editing the glue recompiles the glue only.
        CARGO_TARGET_DIR="$IAF_CACHE/qdrant-testserver-target" \
            cargo "+$channel" build --release --locked \
            --manifest-path "$QDRANT_TESTSERVER_DIR/Cargo.toml" >&2 \
            || die "building tests/qdrant-testserver failed"
        mkdir -p "$(dirname "$bin")"
        cp "$IAF_CACHE/qdrant-testserver-target/release/qdrant-testserver" "$bin.tmp" && mv "$bin.tmp" "$bin"
    fi
    # Only the current build is used; older ones are 50 MB each.
    local old
    for old in "$IAF_CACHE"/qdrant-testserver-*/; do
        old="${old%/}"
        [ "$old" = "$(dirname "$bin")" ] || [ "$old" = "$IAF_CACHE/qdrant-testserver-target" ] || rm -rf "$old"
    done
    # CI builds each source once: its 1.6 GB of intermediate artefacts only take disk.
    if [ "${CI:-}" = true ] && [ -d "$IAF_CACHE/qdrant-testserver-target" ]; then
        note "CI: removing the test server's build directory (kept elsewhere for fast rebuilds)"
        rm -rf "$IAF_CACHE/qdrant-testserver-target"
    fi
}

qdrant_up() {
    qdrant_install
    env_set IAF_TEST_QDRANT_SERVER "$(qdrant_server_bin)"
}
