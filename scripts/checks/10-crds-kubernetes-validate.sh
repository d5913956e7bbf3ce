#!/usr/bin/env bash
# The generated CRDs are valid CustomResourceDefinitions for the Kubernetes versions we
# support (the drift between the YAML and the Rust types is a cargo test in crds/).
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"
source "$IAF_ENV_FILE"
: "${IAF_TEST_KUBERNETES_VALIDATE:?run scripts/engines.sh up kubevalidate}"
shopt -s nullglob
crds=("$IAF_ROOT"/crds/*.yaml)
[ ${#crds[@]} -gt 0 ] || die "no CRD YAML in crds/: run cargo run -p iafactory-crds --bin crdgen"
for version in 1.33.0 1.35.0; do
    note "kubernetes-validate --strict -k $version: ${crds[*]##*/}"
    "$IAF_TEST_KUBERNETES_VALIDATE" --strict -k "$version" "${crds[@]}" >/dev/null
done
