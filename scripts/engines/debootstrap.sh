# debootstrap, to build Debian-based images without a registry.
debootstrap_install() { apt_install debootstrap; }
debootstrap_up() {
    debootstrap_install
    local mirror
    mirror="$(grep -rhoE '^(deb|URIs:) *(\[[^]]*\] *)?https?://[^ ]+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | grep '/debian$' | head -n 1 || true)"
    env_set IAF_DEBIAN_MIRROR "${mirror:-http://deb.debian.org/debian}"
}
