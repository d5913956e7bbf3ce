# The Docker Engine from Debian (Engine 20.10, API 1.41). No image can be pulled here:
# every image the tests use is built locally.
docker_install() {
    apt_install docker.io iptables
}

docker_up() {
    docker_install
    if ! docker info >/dev/null 2>&1; then
        log "starting dockerd"
        nohup dockerd >"$IAF_RUN/dockerd.log" 2>&1 &
        echo $! >"$IAF_RUN/dockerd.pid"
        wait_for "dockerd" 60 docker info
    fi
}
