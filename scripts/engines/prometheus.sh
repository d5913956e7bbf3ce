# Prometheus 2.42 and promtool, from Debian. Tests start their own server.
prometheus_install() {
    apt_install prometheus
    # The Debian package starts a system-wide server we do not want listening on :9090.
    if pgrep -x prometheus >/dev/null 2>&1 && [ -f /etc/init.d/prometheus ]; then
        /etc/init.d/prometheus stop >/dev/null 2>&1 || pkill -x prometheus || true
    fi
}

prometheus_up() {
    prometheus_install
    env_set IAF_TEST_PROMETHEUS /usr/bin/prometheus
    env_set IAF_TEST_PROMTOOL /usr/bin/promtool
}
