# Redis from Debian, for the rate limiter shared across API replicas.
REDIS_PORT="${IAF_REDIS_PORT:-56379}"

redis_install() { apt_install redis-server; }

redis_up() {
    redis_install
    if ! port_open "$REDIS_PORT"; then
        log "starting Redis on 127.0.0.1:$REDIS_PORT"
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes --save '' \
            --logfile "$IAF_RUN/redis.log" --pidfile "$IAF_RUN/redis.pid"
        wait_for "Redis" 30 redis-cli -p "$REDIS_PORT" ping
    fi
    env_set IAF_TEST_REDIS_URL "redis://127.0.0.1:$REDIS_PORT"
}
