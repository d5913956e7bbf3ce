#!/usr/bin/env bash
# The monitoring assets, with the real promtool (Prometheus 2.42):
#   - `promtool check rules` on config/prometheus/*rules*.yml;
#   - `promtool test rules` on config/prometheus/tests/*.test.yml: each alert fires in one
#     case and stays silent in another (checked below: no alert goes untested);
#   - every Grafana panel query of config/grafana/dashboards/*.json, its variables
#     replaced by sample values, goes through promtool's PromQL parser as a recording
#     rule, so a typo in a dashboard fails here.
# tests/tests/monitoring.rs checks that every metric they name is exported.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
source "$IAF_ENV_FILE"
: "${IAF_TEST_PROMTOOL:?run scripts/engines.sh up prometheus}"

rules_dir="$IAF_ROOT/config/prometheus"
dashboards_dir="$IAF_ROOT/config/grafana/dashboards"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
shopt -s nullglob

rules=("$rules_dir"/*rules*.yml)
tests=("$rules_dir"/tests/*.test.yml)
dashboards=("$dashboards_dir"/*.json)
[ ${#rules[@]} -gt 0 ] || die "no rules in $rules_dir"
[ ${#tests[@]} -gt 0 ] || die "no rule tests in $rules_dir/tests"
[ ${#dashboards[@]} -gt 0 ] || die "no dashboards in $dashboards_dir"

note "promtool check rules: ${rules[*]##*/}"
"$IAF_TEST_PROMTOOL" check rules "${rules[@]}" >"$out/check.log" 2>&1 \
    || { cat "$out/check.log" >&2; die "promtool check rules failed"; }

note "promtool test rules: ${tests[*]##*/}"
(cd "$rules_dir/tests" && "$IAF_TEST_PROMTOOL" test rules "${tests[@]##*/}") >"$out/test.log" 2>&1 \
    || { cat "$out/test.log" >&2; die "promtool test rules failed"; }

# Every alert has a test that fires it (exp_alerts with labels) and one where it is
# silent (exp_alerts: []).
python3 - "${rules[@]}" -- "${tests[@]}" <<'PY'
import re, sys
args = sys.argv[1:]
split = args.index("--")
alerts = set()
for path in args[:split]:
    alerts |= set(re.findall(r"^\s*-\s*alert:\s*(\S+)", open(path).read(), re.M))
fires, silent = set(), set()
for path in args[split + 1:]:
    text = open(path).read()
    for block in re.split(r"\n\s*- eval_time:", text)[1:]:
        name = re.search(r"alertname:\s*(\S+)", block).group(1)
        (silent if re.search(r"exp_alerts:\s*\[\s*\]", block) else fires).add(name)
missing = sorted(a for a in alerts if a not in fires or a not in silent)
if missing:
    sys.exit("alerts without both a firing and a silent test: " + ", ".join(missing))
print(f"    {len(alerts)} alerts, each with a firing and a silent test", file=sys.stderr)
PY

note "PromQL of every dashboard panel: ${dashboards[*]##*/}"
python3 - "$out/dashboards.rules.yml" "${dashboards[@]}" <<'PY'
import json, sys
# Sample values for the dashboards' variables.
subst = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
         "$namespace": ".*", "$tenant": ".*", "$datasource": "prometheus"}
rules = []
for path in sys.argv[2:]:
    board = json.load(open(path))
    before = len(rules)
    def walk(panels):
        for panel in panels:
            yield panel
            yield from walk(panel.get("panels", []))
    for panel in walk(board["panels"]):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            if not expr:
                continue
            for var, value in subst.items():
                expr = expr.replace(var, value)
            if "$" in expr:
                sys.exit(f"{path}: panel {panel['title']!r} uses an unknown variable: {expr}")
            rules.append({"record": f"dashboard:panel_{len(rules)}", "expr": expr})
    if len(rules) == before:
        sys.exit(f"{path}: no queries")
with open(sys.argv[1], "w") as f:
    json.dump({"groups": [{"name": "dashboards", "rules": rules}]}, f)
print(f"    {len(rules)} panel queries", file=sys.stderr)
PY
"$IAF_TEST_PROMTOOL" check rules "$out/dashboards.rules.yml" >"$out/dashboards.log" 2>&1 \
    || { cat "$out/dashboards.log" >&2; die "a dashboard query does not parse"; }
