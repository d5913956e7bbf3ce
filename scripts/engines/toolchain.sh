# The Rust toolchain pinned in rust-toolchain.toml, with clippy and rustfmt, and
# cargo-nextest. rustup does not auto-install here (RUSTUP_AUTO_INSTALL=0).
toolchain_channel() { sed -n 's/^channel *= *"\(.*\)"/\1/p' "$IAF_ROOT/rust-toolchain.toml"; }

toolchain_install() {
    command -v rustup >/dev/null || die "rustup is missing: this machine kind ships it; install rustup first"
    local channel; channel="$(toolchain_channel)"
    if ! rustup toolchain list | grep -q "^$channel"; then
        log "installing Rust $channel (minimal profile, clippy, rustfmt)"
        rustup toolchain install "$channel" --profile minimal -c clippy -c rustfmt >/dev/null
    fi
    local installed; installed="$(rustup component list --toolchain "$channel" --installed)"
    for component in clippy rustfmt; do
        if ! grep -q "^$component" <<<"$installed"; then
            log "adding $component to Rust $channel"
            rustup component add --toolchain "$channel" "$component" >/dev/null
        fi
    done
    if ! command -v cargo-nextest >/dev/null; then
        log "installing cargo-nextest"
        cargo install --locked cargo-nextest >/dev/null
    fi
}
toolchain_up() { toolchain_install; }
