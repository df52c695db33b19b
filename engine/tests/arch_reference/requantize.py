#!/usr/bin/env python3
"""Re-quantize a GGUF model with llama.cpp itself (llama_model_quantize, allow_requantize).

Usage: requantize.py SOURCE.gguf TARGET.gguf TYPE     (TYPE: a LLAMA_FTYPE_MOSTLY_* suffix, e.g. Q8_0)

Writes TARGET atomically (via TARGET.part), so an interrupted run leaves no half file.
"""
import ctypes
import os
import sys

import llama_cpp


def main() -> None:
    source, target, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    params.allow_requantize = True
    partial = target + ".part"
    status = llama_cpp.llama_model_quantize(
        source.encode(), partial.encode(), ctypes.byref(params)
    )
    if status != 0:
        sys.exit(f"llama_model_quantize failed with status {status}")
    os.replace(partial, target)


if __name__ == "__main__":
    main()
