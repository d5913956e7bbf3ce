# kubernetes-validate: offline OpenAPI schemas for Kubernetes 1.25 to 1.37.
KUBERNETES_VALIDATE_VERSION=1.35.0

kubevalidate_dir() { echo "$IAF_CACHE/kubernetes-validate-$KUBERNETES_VALIDATE_VERSION"; }

kubevalidate_install() {
    local dir; dir="$(kubevalidate_dir)"
    [ -x "$dir/bin/kubernetes-validate" ] && return 0
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $dir"
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
}

kubevalidate_up() {
    kubevalidate_install
    env_set IAF_TEST_KUBERNETES_VALIDATE "$(kubevalidate_dir)/bin/kubernetes-validate"
}
