#!/usr/bin/env bash
# The Helm chart: `helm lint --strict`, then `helm template` (CRDs included) with each
# value set of charts/iafactory-operator/ci/ (defaults, monitoring on, HA, air-gapped
# registry override), every rendered object checked by `kubernetes-validate --strict`
# for each Kubernetes version we support. ServiceMonitor and PrometheusRule instances are
# custom resources the validator skips (with a warning); tests/tests/chart.rs checks
# their content, the RBAC, CRD and appVersion drift, and that wrong values are refused.
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
source "$IAF_ENV_FILE"
: "${IAF_TEST_HELM:?run scripts/engines.sh up helm}"
: "${IAF_TEST_KUBERNETES_VALIDATE:?run scripts/engines.sh up kubevalidate}"

chart="$IAF_ROOT/charts/iafactory-operator"
kube_versions=(1.30.0 1.35.0)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

# helm logs each symlink it follows (files/ links config/); that is expected.
quiet_helm() { "$IAF_TEST_HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

shopt -s nullglob
value_sets=("$chart"/ci/*-values.yaml)
[ ${#value_sets[@]} -ge 4 ] || die "expected the value sets in $chart/ci/"

for values in "${value_sets[@]}"; do
    name="$(basename "$values" -values.yaml)"
    note "helm lint --strict ($name)"
    quiet_helm lint --strict --quiet -f "$values" "$chart" >"$out/$name.lint" \
        || { cat "$out/$name.lint" >&2; die "helm lint failed for $name"; }
    for version in "${kube_versions[@]}"; do
        note "helm template --kube-version $version | kubernetes-validate --strict -k $version ($name)"
        rendered="$out/$name.$version.yaml"
        quiet_helm template iafactory "$chart" --namespace iafactory-system --include-crds \
            --kube-version "$version" -f "$values" >"$rendered"
        [ -s "$rendered" ] || die "helm template rendered nothing for $name"
        "$IAF_TEST_KUBERNETES_VALIDATE" --strict -k "$version" "$rendered" >"$rendered.log" 2>&1 \
            || { cat "$rendered.log" >&2; die "kubernetes-validate $version failed for $name"; }
        # Everything but the Prometheus Operator's kinds must have been validated.
        if grep -E "^WARN" "$rendered.log" | grep -vE "kind (ServiceMonitor|PrometheusRule) with api version monitoring.coreos.com/v1" >&2; then
            die "kubernetes-validate skipped an object it should know for $name ($version)"
        fi
    done
done
note "validated ${#value_sets[@]} value sets for Kubernetes ${kube_versions[*]}"

# The packaged chart stands alone: helm package follows the files/ links into config/,
# and renders exactly what the source tree renders, without the tests and value sets.
note "helm package: the archive renders like the source tree"
quiet_helm package "$chart" --destination "$out/package" >/dev/null
archive=("$out"/package/iafactory-operator-*.tgz)
if tar -tzf "${archive[0]}" | grep -E '/(ci|files/prometheus/tests)/' >&2; then
    die "the packaged chart holds the value sets or the promtool tests"
fi
monitoring="$chart/ci/monitoring-values.yaml"
(cd "$out" && quiet_helm template iafactory "${archive[0]}" --namespace iafactory-system --include-crds -f "$monitoring") >"$out/from-archive.yaml"
quiet_helm template iafactory "$chart" --namespace iafactory-system --include-crds -f "$monitoring" >"$out/from-tree.yaml"
diff -u "$out/from-tree.yaml" "$out/from-archive.yaml" >&2 || die "the packaged chart renders differently"
