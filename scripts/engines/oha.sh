# oha, an HTTP load generator with latency percentiles and a fixed-rate mode, for the
# benchmarks (not needed by the tests).
OHA_VERSION=1.16.0

oha_bin() { echo "$IAF_CACHE/oha-$OHA_VERSION/bin/oha"; }

oha_install() {
    [ -x "$(oha_bin)" ] && return 0
    log "building oha $OHA_VERSION from crates.io into $IAF_CACHE/oha-$OHA_VERSION (a few minutes, once)"
    cargo install --quiet --locked --root "$IAF_CACHE/oha-$OHA_VERSION" "oha@$OHA_VERSION"
}

oha_up() {
    oha_install
    env_set IAF_BENCH_OHA "$(oha_bin)"
}
