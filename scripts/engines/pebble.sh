# Pebble, Let's Encrypt's ACME test server, and its DNS/challenge companion. Tests start
# their own instances (ports and config are per test); this installs the binaries.
pebble_install() { apt_install pebble; }

pebble_up() {
    pebble_install
    env_set IAF_TEST_PEBBLE /usr/bin/pebble
    env_set IAF_TEST_PEBBLE_CHALLTESTSRV /usr/bin/pebble-challtestsrv
}
