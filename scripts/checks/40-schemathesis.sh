#!/usr/bin/env bash
# The API's contract, held by a fuzzer and a generated client (issue #26):
#   1. builds the API (debug) and starts it on a fresh database of the test PostgreSQL,
#      with the offline embedding model, and registers a tenant and its admin;
#   2. Schemathesis (pinned in scripts/engines/schemathesis.sh) fuzzes every public
#      operation of its /openapi.json as that admin: fixed seed, a 2-minute budget, all
#      four phases (examples, coverage, fuzzing, and stateful, which chains the ids one
#      operation creates into the next). Checks: not_a_server_error,
#      status_code_conformance, content_type_conformance, response_schema_conformance.
#      Any finding fails the check; there is no baseline of accepted findings.
#   3. openapi-python-client generates a Python client from the same document, and a
#      script signs in, creates a knowledge base and lists the knowledge bases with it.
#
# Not fuzzed: /internal/* (the operator's API, on the internal listener, with its own
# token), and /ws (a WebSocket: not in the document). /api/auth/logout and
# /api/auth/password end the session they are called with, which would turn the rest
# of the run into 401s: they get their own short run at the end, with their own token.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
source "$IAF_ROOT/scripts/engines/schemathesis.sh"
source "$IAF_ENV_FILE"
: "${IAF_TEST_SCHEMATHESIS:?run scripts/engines.sh up schemathesis}"
: "${IAF_TEST_OPENAPI_PYTHON_CLIENT:?run scripts/engines.sh up schemathesis}"
: "${IAF_TEST_SCHEMATHESIS_PYTHON:?run scripts/engines.sh up schemathesis}"
: "${IAF_TEST_DATABASE_URL:?run scripts/engines.sh up postgres}"
: "${IAF_TEST_EMBEDDING_MODEL_DIR:?run scripts/engines.sh up minilm}"

SEED="${IAF_SCHEMATHESIS_SEED:-20261206}"
BUDGET_SECONDS="${IAF_SCHEMATHESIS_SECONDS:-120}"

work="$(mktemp -d)"
database="iaf_schemathesis_$$"
api_pid=""
cleanup() {
    [ -n "$api_pid" ] && kill "$api_pid" 2>/dev/null && wait "$api_pid" 2>/dev/null
    "$IAF_TEST_PG_BIN/psql" -q "$IAF_TEST_DATABASE_URL" \
        -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >/dev/null 2>&1 || true
    [ -n "${IAF_KEEP_WORK:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

note "building the API (debug)"
(cd "$IAF_ROOT" && cargo build -q -p iafactory-api --bin iafactory-api)
api_bin="$IAF_ROOT/target/debug/iafactory-api"

"$IAF_TEST_PG_BIN/psql" -q "$IAF_TEST_DATABASE_URL" -c "CREATE DATABASE $database" >/dev/null
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"

note "starting the API on $base (database $database)"
IAF_DATABASE_URL="${IAF_TEST_DATABASE_URL%/*}/$database" \
IAF_DATABASE_APP_PASSWORD=app-password-for-tests \
IAF_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')" \
IAF_LISTEN="127.0.0.1:$port" \
IAF_INTERNAL_LISTEN="127.0.0.1:0" \
IAF_EMBEDDING_MODEL_DIR="$IAF_TEST_EMBEDDING_MODEL_DIR" \
IAF_RATE_LIMIT__PER_IP_PER_MINUTE=1000000 \
IAF_RATE_LIMIT__PER_IP_PER_HOUR=1000000 \
IAF_RATE_LIMIT__PER_IP_CEILING_PER_MINUTE=1000000 \
IAF_RATE_LIMIT__PER_USER_PER_MINUTE=1000000 \
IAF_WORKFLOW_AGENT_RETRIES=0 \
IAF_WORKFLOW_AGENT_TIMEOUT_SECONDS=5 \
IAF_LLM_TIMEOUT_SECONDS=5 \
IAF_WORKFLOW_SCHEDULER_TICK_SECONDS=0 \
IAF_LOG=warn \
    "$api_bin" serve >"$work/api.log" 2>&1 &
api_pid=$!
wait_for "the API" 120 curl -fsS "$base/readyz"

# register SLUG: a new tenant and its admin; prints the admin's token.
register() {
    curl -fsS "$base/api/auth/register" -H 'Content-Type: application/json' \
        -d "{\"tenant_name\":\"Schemathesis $1\",\"tenant_slug\":\"$1\",\"email\":\"admin@$1.dz\",\"password\":\"correct horse battery\"}" \
        | jq -er .data.access_token
}
token="$(register fuzz)"

curl -fsS "$base/openapi.json" >"$work/openapi.json"
operations="$(jq '[.paths | to_entries[] | select(.key | startswith("/internal/") | not) | .value | keys[]] | length' "$work/openapi.json")"

checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance
# fuzz NAME SECONDS TOKEN ARGS...: one Schemathesis run; its report lands in $work/NAME.
fuzz() {
    local name="$1" seconds="$2" bearer="$3"; shift 3
    local started=$SECONDS status=0
    # One worker: with more, CPython 3.11.7's ast.parse, which Hypothesis calls from
    # several threads, fails now and then ("AST constructor recursion depth mismatch").
    # From $work: Schemathesis keeps its example cache in ./.schemathesis.
    (cd "$work" && "$IAF_TEST_SCHEMATHESIS" run "$work/openapi.json" --url "$base" \
        --header "Authorization: Bearer $bearer" \
        --checks "$checks" \
        --phases examples,coverage,fuzzing,stateful \
        --seed "$SEED" --max-time "$seconds" \
        --workers 1 \
        --request-timeout 20 --no-color \
        --suppress-health-check all \
        --report ndjson --report-dir "$work/$name" \
        "$@") >"$work/$name.log" 2>&1 || status=$?
    local took=$((SECONDS - started))
    local cases
    cases="$(grep -A1 '^Test cases:' "$work/$name.log" | tail -n1 | sed 's/^ *//')"
    note "$name: ${took}s; $(grep -A2 '^API Operations:' "$work/$name.log" | tail -n2 | tr -s ' \n' ' '); test cases: $cases"
    if [ "$status" -ne 0 ]; then
        cat "$work/$name.log" >&2
        tail -n 50 "$work/api.log" >&2
        die "schemathesis found problems in the API's contract ($name); see above"
    fi
}

note "schemathesis $SCHEMATHESIS_VERSION: $operations public operations, seed $SEED, ${BUDGET_SECONDS}s"
fuzz main "$BUDGET_SECONDS" "$token" \
    --exclude-path-regex '^/(internal/|api/auth/(logout|password)$)'
fuzz sessions 20 "$(register sessions)" \
    --include-path-regex '^/api/auth/(logout|password)$'

note "a generated client (openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION)"
(cd "$work" && "$IAF_TEST_OPENAPI_PYTHON_CLIENT" generate --path openapi.json \
    --output-path client --meta none >"$work/generate.log" 2>&1) \
    || { cat "$work/generate.log" >&2; die "openapi-python-client could not generate a client"; }
# The generator skips an operation it cannot describe (a parameter in the wrong place,
# an undeclared path parameter) with a warning and carries on: that is a defect too.
if grep -q '^WARNING' "$work/generate.log"; then
    cat "$work/generate.log" >&2
    die "openapi-python-client skipped operations of the document; see above"
fi
"$IAF_TEST_SCHEMATHESIS_PYTHON" - "$work" "$base" <<'PY' || die "the generated client failed against the API"
import sys
work, base = sys.argv[1:]
sys.path.insert(0, work)
from client import AuthenticatedClient, Client
from client.api.auth import login
from client.api.knowledge_bases import create_knowledge_base, list_knowledge_bases
from client.models import CreateKnowledgeBase, Language, LoginRequest

signed_in = login.sync_detailed(
    client=Client(base_url=base),
    body=LoginRequest(email="admin@fuzz.dz", password="correct horse battery"),
)
assert signed_in.status_code == 200, signed_in
token = signed_in.parsed.data.access_token
api = AuthenticatedClient(base_url=base, token=token)
created = create_knowledge_base.sync_detailed(
    client=api, body=CreateKnowledgeBase(name="generated-client", languages=[Language("ar"), Language("fr")])
)
assert created.status_code == 201, created
kb = created.parsed.data
listed = list_knowledge_bases.sync_detailed(client=api, limit=100, sort="name", order="asc")
assert listed.status_code == 200, listed
names = [k.name for k in listed.parsed.data]
assert "generated-client" in names, names
assert any(k.id == kb.id for k in listed.parsed.data)
print(f"    generated client: signed in, created {kb.id}, listed {listed.parsed.meta.total} knowledge bases", file=sys.stderr)
PY
