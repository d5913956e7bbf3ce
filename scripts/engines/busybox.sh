# busybox (static) from Debian: the appliance tests' stand-in containers are built from
# it, FROM scratch, where the real component is not what a test is about.
busybox_install() { apt_install busybox-static; }

busybox_up() {
    busybox_install
    env_set IAF_TEST_BUSYBOX /bin/busybox
}
