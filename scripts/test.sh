#!/usr/bin/env bash
# The whole test suite, as CI runs it: starts (or finds) Postgres, prepares
# the reference tools and the real model, then runs every test against both
# stores (SQLite and Postgres). Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

FLOTILLA_TEST_DATABASE_URL=$(bash scripts/ensure-postgres.sh)
export FLOTILLA_TEST_DATABASE_URL

model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -x ../shared/fetch-smollm2.sh ] || [ -f ../shared/fetch-smollm2.sh ]; then
  bash ../shared/fetch-smollm2.sh "$model" >&2
fi
if [ -f "$model" ]; then
  export FLOTILLA_TEST_MODEL="$PWD/$model"
else
  echo "test.sh: WARNING: $model is missing; real-model tests will be skipped" >&2
fi

stage() { echo "test.sh: $* (at ${SECONDS}s)" >&2; }

# After the model: ensure-python smoke-tests llama.cpp on it.
stage "reference tools (Python clients, llama.cpp)"
bash scripts/ensure-python.sh
export FLOTILLA_PYTHON="$PWD/.venv/bin/python"
# promtool (Debian's prometheus package) for tests/tests/metrics.rs.
FLOTILLA_PROMTOOL=$(bash scripts/ensure-promtool.sh)
export FLOTILLA_PROMTOOL

stage "models and tokenizer vectors"
# Engine architectures and tokenizers (issue 14): llama.cpp's tokenizer vectors
# and Gemma 3 / Qwen2.5 re-quantized to Q8_0 by llama.cpp, cached under models/.
if [ -f ../shared/fetch-models.sh ]; then
  bash ../shared/fetch-models.sh models gemma-3-270m-Q4_K_M qwen2.5-coder-0.5b-instruct-awq-Q4_K_M >&2
fi
FLOTILLA_TOKENIZER_VECTORS=$(bash scripts/fetch-tokenizer-vectors.sh)
export FLOTILLA_TOKENIZER_VECTORS
FLOTILLA_ARCH_MODELS=$(bash scripts/prepare-arch-models.sh)
export FLOTILLA_ARCH_MODELS

# SmolLM2 re-quantized by llama.cpp into K-quant mixes, for the engine's parity tests.
if [ -n "${FLOTILLA_TEST_MODEL:-}" ]; then
  bash scripts/ensure-quantized.sh "$FLOTILLA_TEST_MODEL"
fi

# End-to-end tests run the real binaries; build them first.
stage "build"
cargo build --workspace --bins
stage "test"
cargo test --workspace "$@"
