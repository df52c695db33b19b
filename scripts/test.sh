#!/usr/bin/env bash
# The whole test suite, as CI runs it: starts (or finds) Postgres, prepares
# the reference tools and the real model, then runs every test against both
# stores (SQLite and Postgres). Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

FLOTILLA_TEST_DATABASE_URL=$(bash scripts/ensure-postgres.sh)
export FLOTILLA_TEST_DATABASE_URL

stage() { echo "test.sh: $* (at ${SECONDS}s)" >&2; }

stage "test inputs (models, reference tools)"
bash scripts/prepare-test-inputs.sh

model=models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$model" ]; then
  export FLOTILLA_TEST_MODEL="$PWD/$model"
else
  echo "test.sh: WARNING: $model is missing; real-model tests will be skipped" >&2
fi
export FLOTILLA_PYTHON="$PWD/.venv/bin/python"
# promtool (Debian's prometheus package) for tests/tests/metrics.rs.
FLOTILLA_PROMTOOL=$(bash scripts/ensure-promtool.sh)
export FLOTILLA_PROMTOOL
# A Vulkan adapter (Mesa's lavapipe where there is no GPU) for the GPU path's
# tests, which fail without one.
bash scripts/ensure-vulkan.sh
# Each prints its directory, at once when prepare-test-inputs made it.
FLOTILLA_TOKENIZER_VECTORS=$(bash scripts/fetch-tokenizer-vectors.sh)
export FLOTILLA_TOKENIZER_VECTORS
FLOTILLA_ARCH_MODELS=$(bash scripts/prepare-arch-models.sh)
export FLOTILLA_ARCH_MODELS

# End-to-end tests run the real binaries; build them first.
stage "build"
cargo build --workspace --bins
stage "test"
cargo test --workspace "$@"
