#!/usr/bin/env bash
# Prepares the models of the engine's architecture parity test
# (engine/tests/reference_architectures.rs): re-quantizes Gemma 3 270M and
# Qwen2.5-Coder 0.5B (Q4_K_M, fetched into models/ by scripts/test.sh with
# ../shared/fetch-models.sh) into Q8_0 with llama.cpp itself
# (engine/tests/arch_reference/requantize.py), into models/requantized/
# (ignored by git, kept between runs; llama.cpp's log in requantize.log);
# and writes small synthetic Phi-3 and Llama 3.1 models (seeded random
# weights, real tokenizers from llama.cpp's vocabulary files fetched by
# scripts/fetch-tokenizer-vectors.sh) with
# engine/tests/arch_reference/synthesize.py into models/synthetic/.
# Prints the models directory. Needs .venv with llama-cpp-python and gguf
# (scripts/ensure-python.sh). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "prepare-arch-models: $*" >&2; }

python=${FLOTILLA_PYTHON:-.venv/bin/python}
models="gemma-3-270m-Q4_K_M qwen2.5-coder-0.5b-instruct-awq-Q4_K_M"
mkdir -p models/requantized
for model in $models; do
  source="models/$model.gguf"
  target="models/requantized/${model%-Q4_K_M}-Q8_0.gguf"
  if [ ! -f "$source" ]; then
    log "WARNING: $source is missing; its parity test cannot run"
    continue
  fi
  if [ ! -f "$target" ] || [ "$source" -nt "$target" ]; then
    log "re-quantizing $source into $target with llama.cpp"
    # A failure leaves no target; the parity test then fails and names the file.
    "$python" engine/tests/arch_reference/requantize.py "$source" "$target" Q8_0 \
      >>models/requantized/requantize.log 2>&1 ||
      log "WARNING: llama.cpp could not re-quantize $source (see models/requantized/requantize.log)"
  fi
done

# Architectures with no real model small enough to fetch (Phi-3-mini is 2 GB):
# synthetic files, remade when the script that writes them changes.
vocab=models/llama-cpp-vocab
synthesize=engine/tests/arch_reference/synthesize.py
mkdir -p models/synthetic
for spec in phi3:phi-3 llama3:llama-bpe; do
  architecture=${spec%%:*}
  source="$vocab/ggml-vocab-${spec#*:}.gguf"
  target="models/synthetic/$architecture-synthetic-Q8_0.gguf"
  if [ ! -f "$source" ]; then
    log "WARNING: $source is missing (scripts/fetch-tokenizer-vectors.sh); its parity test cannot run"
    continue
  fi
  if [ ! -f "$target" ] || [ "$synthesize" -nt "$target" ]; then
    log "writing $target"
    "$python" "$synthesize" "$architecture" "$source" "$target" ||
      log "WARNING: could not write $target"
  fi
done
echo "$PWD/models"
