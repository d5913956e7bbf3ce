#!/usr/bin/env bash
# Installs (idempotently) and starts the real engines the tests and the demo use, and
# records their addresses in $IAF_RUN/env (default /tmp/iafactory-engines/env).
#
#   scripts/engines.sh up [ENGINE...]     start these (default: all, benchmark tools too)
#   scripts/engines.sh install [ENGINE...] install only
#   scripts/engines.sh list
#
# Then: source /tmp/iafactory-engines/env
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"
for f in "$IAF_ROOT"/scripts/engines/*.sh; do source "$f"; done

all_engines() {
    for f in "$IAF_ROOT"/scripts/engines/*.sh; do basename "$f" .sh; done
}

action="${1:-up}"; shift || true
engines=("$@")
[ ${#engines[@]} -eq 0 ] && mapfile -t engines < <(all_engines)
case "$action" in
    list) all_engines ;;
    up|install)
        for engine in "${engines[@]}"; do
            fn="${engine//-/_}_$action"
            declare -F "$fn" >/dev/null || die "unknown engine '$engine' (see: scripts/engines.sh list)"
            "$fn"
        done
        log "engines ready: ${engines[*]} (exports in $IAF_ENV_FILE)" ;;
    *) die "usage: scripts/engines.sh up|install|list [ENGINE...]" ;;
esac
