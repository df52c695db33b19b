#!/usr/bin/env bash
# Creates .venv with the independent reference tools the tests compare
# against: the `blake3` package (digests), the OpenAI, Ollama and gRPC
# client libraries (third-party clients of the inference APIs) and, unless
# FLOTILLA_SKIP_LLAMA_CPP=1,
# `llama-cpp-python` (llama.cpp, built from source: ~10 minutes the first
# time, cached in .venv afterwards). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "ensure-python: $*" >&2; }

if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import blake3' 2>/dev/null; then
  log "installing blake3"
  .venv/bin/pip install --quiet --disable-pip-version-check blake3
fi
# The third-party clients the inference APIs must work with, unchanged:
# OpenAI's and Ollama's Python libraries, gRPC code generated from proto/
# by another language's toolchain (grpcio-tools), and gRPC's own reflection
# client (grpcio-reflection, which speaks v1alpha).
if ! .venv/bin/python -c 'import openai, ollama, grpc_tools, grpc_reflection' 2>/dev/null; then
  log "installing openai, ollama, grpcio-tools, grpcio-reflection"
  .venv/bin/pip install --quiet --disable-pip-version-check 'openai>=1.40' 'ollama>=0.4' \
    'grpcio-tools>=1.60' 'grpcio-reflection>=1.60'
fi
# The orchestration layer users build on a node (issue 17): LangChain with
# its OpenAI, Ollama and Chroma integrations, Chroma itself, and LiteLLM.
# (LiteLLM fetches a price list at import unless told to use its own copy.)
if ! LITELLM_LOCAL_MODEL_COST_MAP=True .venv/bin/python -c \
  'import langchain_openai, langchain_ollama, langchain_chroma, chromadb, litellm' 2>/dev/null; then
  log "installing langchain-openai, langchain-ollama, langchain-chroma, chromadb, litellm"
  .venv/bin/pip install --quiet --disable-pip-version-check 'langchain-core>=0.3' \
    'langchain-openai>=0.3' 'langchain-ollama>=0.3' 'langchain-chroma>=0.2' 'chromadb>=1.0' \
    'litellm>=1.60'
fi
# gguf-py (llama.cpp's Python package for the format): an independent dequantizer the
# engine's weight kernels are tested against (engine/tests/kernel_dequantize.rs).
if ! .venv/bin/python -c 'import gguf.quants' 2>/dev/null; then
  log "installing gguf"
  .venv/bin/pip install --quiet --disable-pip-version-check 'gguf>=0.17'
fi
# A real S3 server for the object store tests (tests/tests/s3.rs): moto's.
if ! .venv/bin/python -c 'import moto.server, flask' 2>/dev/null; then
  log "installing moto[server]"
  .venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5'
fi
if [ "${FLOTILLA_SKIP_LLAMA_CPP:-0}" != 1 ] && ! .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  log "installing llama-cpp-python (builds llama.cpp from source; takes a while)"
  # AMX off: GCC 12 at -O3 drops the stores that fill the AMX tile config
  # on the stack (its _tile_loadconfig claims to read 8 of its 64 bytes),
  # so ldtilecfg faults in every multi-token batch on AMX CPUs (Sapphire
  # Rapids; llama.cpp PR #26954). AVX-512 stays, and the output matches the
  # committed golden files byte for byte. The flags must go in C/CXX_FLAGS
  # (before -march=native); GGML_AMX_* are read only without GGML_NATIVE.
  # --no-cache-dir: a wheel cached from a build with other flags would be
  # reused as it is.
  no_amx="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  CMAKE_ARGS="-DGGML_NATIVE=ON -DCMAKE_C_FLAGS='$no_amx' -DCMAKE_CXX_FLAGS='$no_amx'" \
    .venv/bin/pip install --quiet --disable-pip-version-check --no-cache-dir \
    --no-binary llama-cpp-python 'llama-cpp-python==0.3.*' ||
    log "WARNING: llama-cpp-python did not install; engine reference tests fall back to committed golden files"
fi
# A llama.cpp that crashes is no reference. Built with AMX (see above), it
# segfaulted in llama_decode whenever a batch held more than one token; in
# case another machine finds another way to crash it: when
# FLOTILLA_TEST_MODEL is set, decode a short prompt
# with it, as the reference script does, and if that fails, remove it so
# that the engine's reference tests use the committed golden files (made by
# the same llama.cpp version) instead of failing on the reference itself.
if [ "${FLOTILLA_SKIP_LLAMA_CPP:-0}" != 1 ] && [ -n "${FLOTILLA_TEST_MODEL:-}" ] &&
  .venv/bin/python -c 'import llama_cpp' 2>/dev/null; then
  smoke='import sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=64, n_threads=2, verbose=False)
llm.eval(llm.tokenize(b"The capital of Germany is", add_bos=False, special=True))'
  if ! .venv/bin/python -c "$smoke" "$FLOTILLA_TEST_MODEL" >/dev/null 2>&1; then
    log "WARNING: llama.cpp crashed decoding a prompt of $FLOTILLA_TEST_MODEL on this machine;"
    log "WARNING: uninstalling llama-cpp-python: engine reference tests use the committed golden files"
    .venv/bin/pip uninstall --quiet --yes llama-cpp-python
  fi
fi
