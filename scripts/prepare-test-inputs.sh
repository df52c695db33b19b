#!/usr/bin/env bash
# What the tests read besides the code, made or fetched once and cached:
# the SmolLM2 model, the reference tools in .venv (the Python clients and
# llama.cpp, built from source), Gemma 3 and Qwen2.5 with their llama.cpp
# re-quantizations, llama.cpp's tokenizer vectors and SmolLM2's K-quant
# variants. Idempotent: a second run finds everything and returns at once.
#
# scripts/test.sh runs it; CI also starts it in the background while the
# build checks run (.ci/run), since most of it is downloading and compiling
# C++ that need not wait for Rust. It installs nothing with apt, so it
# cannot collide with a step that does.
set -euo pipefail
cd "$(dirname "$0")/.."
stage() { echo "prepare-test-inputs: $* (at ${SECONDS}s)" >&2; }

model=models/SmolLM2-135M-Instruct.Q4_1.gguf
stage "SmolLM2"
if [ -f ../shared/fetch-smollm2.sh ]; then
  bash ../shared/fetch-smollm2.sh "$model" >&2
fi

# After the model: ensure-python smoke-tests llama.cpp on it.
stage "reference tools (Python clients, llama.cpp)"
if [ -f "$model" ]; then
  FLOTILLA_TEST_MODEL="$PWD/$model" bash scripts/ensure-python.sh
else
  bash scripts/ensure-python.sh
fi

stage "models and tokenizer vectors"
# Engine architectures and tokenizers (issue 14): llama.cpp's tokenizer vectors
# and Gemma 3 / Qwen2.5 re-quantized to Q8_0 by llama.cpp, cached under models/.
if [ -f ../shared/fetch-models.sh ]; then
  bash ../shared/fetch-models.sh models gemma-3-270m-Q4_K_M qwen2.5-coder-0.5b-instruct-awq-Q4_K_M >&2
fi
bash scripts/fetch-tokenizer-vectors.sh >/dev/null
bash scripts/prepare-arch-models.sh >/dev/null

# SmolLM2 re-quantized by llama.cpp into K-quant mixes, for the engine's parity tests.
if [ -f "$model" ]; then
  bash scripts/ensure-quantized.sh "$PWD/$model"
fi
stage "done"
