#!/usr/bin/env bash
# Re-quantizes the SmolLM2 test model with llama.cpp itself (llama-cpp-python's
# llama_model_quantize, allow_requantize) into the K-quant mixes people deploy, for
# the engine's parity tests (engine/tests/reference_llama_cpp.rs). The files are
# made next to the source model, skipped when present (a few seconds each for this
# 135M model), and never committed (models/ and *.gguf are ignored).
# Usage: scripts/ensure-quantized.sh SOURCE.gguf  (prints nothing on stdout)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "ensure-quantized: $*" >&2; }

source_model=${1:?usage: ensure-quantized.sh SOURCE.gguf}
python=.venv/bin/python
if ! "$python" -c 'import llama_cpp' 2>/dev/null; then
  log "WARNING: no llama-cpp-python in .venv; K-quant variants not made"
  exit 0
fi
stem=${source_model%.*.gguf}
for variant in Q2_K Q3_K_M Q4_K_M Q5_K_M Q6_K Q8_0; do
  target="$stem.$variant.gguf"
  [ -s "$target" ] && continue
  log "quantizing $source_model -> $target"
  quantize_log=$(mktemp)
  # llama.cpp logs every tensor; keep that out of CI output unless it fails.
  if ! "$python" - "$source_model" "$target" "$variant" 2>"$quantize_log" <<'PY'
import ctypes
import os
import sys

import llama_cpp

source, target, variant = sys.argv[1:4]
params = llama_cpp.llama_model_quantize_default_params()
params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{variant}")
params.allow_requantize = True
params.nthread = 2
partial = target + ".part"
status = llama_cpp.llama_model_quantize(source.encode(), partial.encode(), ctypes.byref(params))
if status != 0:
    sys.exit(f"llama_model_quantize({variant}) failed with status {status}")
os.replace(partial, target)
PY
  then
    tail -n 20 "$quantize_log" >&2
    rm -f "$quantize_log"
    log "quantizing to $variant failed"
    exit 1
  fi
  rm -f "$quantize_log"
done
