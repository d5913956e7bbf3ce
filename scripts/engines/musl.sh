# The musl target, for static binaries in FROM-scratch images.
musl_install() {
    apt_install musl-tools
    if ! rustup target list --installed | grep -qx x86_64-unknown-linux-musl; then
        log "adding the Rust target x86_64-unknown-linux-musl"
        rustup target add x86_64-unknown-linux-musl >/dev/null
    fi
}
musl_up() { musl_install; }
