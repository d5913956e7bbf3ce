# A real browser for the console's journeys: Debian's chromium, driven by playwright-core
# (the library only: it downloads no browser). The npm dependencies are installed from
# tests/browser/package-lock.json with `npm ci`, into a cache directory keyed by the
# lockfile's hash, then linked into tests/browser/node_modules.
browser_lock_hash() {
    sha256sum "$IAF_ROOT/tests/browser/package-lock.json" | cut -c1-16
}

browser_install() {
    apt_install chromium fonts-dejavu-core
    local dir; dir="$IAF_CACHE/browser-npm-$(browser_lock_hash)"
    if [ ! -f "$dir/.complete" ]; then
        log "installing the browser tests' npm dependencies (npm ci) into $dir"
        rm -rf "$dir" && mkdir -p "$dir"
        cp "$IAF_ROOT/tests/browser/package.json" "$IAF_ROOT/tests/browser/package-lock.json" "$dir/"
        (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
        touch "$dir/.complete"
    fi
    local link="$IAF_ROOT/tests/browser/node_modules"
    if [ "$(readlink "$link" 2>/dev/null)" != "$dir/node_modules" ]; then
        rm -rf "$link"
        ln -s "$dir/node_modules" "$link"
    fi
}

browser_up() {
    browser_install
    env_set IAF_TEST_CHROMIUM /usr/bin/chromium
    env_set IAF_TEST_NODE "$(command -v node)"
}
