#!/usr/bin/env bash
# Fetches llama.cpp's tokenizer conformance vectors (vendor/llama.cpp/models/
# ggml-vocab-*.gguf with their .inp/.out pairs) and the real chat templates it
# tests with (models/templates/*.jinja) from the llama-cpp-python source
# package into models/llama-cpp-vocab/ and its templates/ (ignored by git,
# kept between runs). Prints the vocabulary directory. Idempotent: a complete
# copy is not fetched again.
# Usage: scripts/fetch-tokenizer-vectors.sh [PYTHON]   (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "fetch-tokenizer-vectors: $*" >&2; }

version=0.3.36
target=models/llama-cpp-vocab
stamp="$target/.complete-$version-templates"
python=${1:-.venv/bin/python}
if [ ! -f "$stamp" ]; then
  log "downloading the llama-cpp-python $version source package"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # --no-binary for this package only: its build tools (cmake) may come as wheels.
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$work" >&2
  mkdir -p "$target"
  tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work" \
    --wildcards "*/vendor/llama.cpp/models/ggml-vocab-*" "*/vendor/llama.cpp/models/templates/*"
  cp "$work"/llama_cpp_python-"$version"/vendor/llama.cpp/models/ggml-vocab-* "$target"/
  mkdir -p "$target/templates"
  cp "$work"/llama_cpp_python-"$version"/vendor/llama.cpp/models/templates/*.jinja "$target/templates"/
  touch "$stamp"
  log "$(ls "$target" | grep -c '\.inp$') vocabularies with vectors in $target"
fi
echo "$PWD/$target"
