# Schemathesis: fuzzes the API from its own /openapi.json (scripts/checks/40-schemathesis.sh).
# openapi-python-client, in the same venv, generates a client from that document, which
# the same check then calls against the running API.
SCHEMATHESIS_VERSION=4.32.5
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
# What the generated client imports besides httpx and attrs (which come with the above).
PYTHON_DATEUTIL_VERSION=2.9.0.post0

schemathesis_dir() {
    echo "$IAF_CACHE/schemathesis-$SCHEMATHESIS_VERSION-opc-$OPENAPI_PYTHON_CLIENT_VERSION-dateutil-$PYTHON_DATEUTIL_VERSION"
}

schemathesis_install() {
    apt_install python3-venv
    local dir; dir="$(schemathesis_dir)"
    [ -f "$dir/.complete" ] && [ -x "$dir/bin/st" ] && [ -x "$dir/bin/openapi-python-client" ] \
        && return 0
    log "installing schemathesis $SCHEMATHESIS_VERSION and openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION" \
        "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION" "python-dateutil==$PYTHON_DATEUTIL_VERSION"
    touch "$dir/.complete"
}

schemathesis_up() {
    schemathesis_install
    env_set IAF_TEST_SCHEMATHESIS "$(schemathesis_dir)/bin/st"
    env_set IAF_TEST_OPENAPI_PYTHON_CLIENT "$(schemathesis_dir)/bin/openapi-python-client"
    env_set IAF_TEST_SCHEMATHESIS_PYTHON "$(schemathesis_dir)/bin/python"
}
