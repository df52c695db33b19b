#!/usr/bin/env python3
"""Dequantize raw ggml blocks with the `gguf` package (gguf-py, llama.cpp's own Python
reference for the formats), independently of the engine's Rust code.

Usage: gguf_dequantize.py DIR TYPE...
For each TYPE (a GGMLQuantizationType name such as Q4_K), reads DIR/TYPE.bin (whole blocks)
and writes DIR/TYPE.f32 (little-endian float32, one value per element).
Prints one JSON line naming the gguf version used.
"""
import json
import sys
from importlib.metadata import version
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize


def main() -> None:
    directory = Path(sys.argv[1])
    for name in sys.argv[2:]:
        kind = GGMLQuantizationType[name]
        raw = np.frombuffer((directory / f"{name}.bin").read_bytes(), dtype=np.uint8)
        values = dequantize(raw, kind).astype("<f4", copy=False)
        (directory / f"{name}.f32").write_bytes(values.tobytes())
    print(json.dumps({"producer": f"gguf {version('gguf')}"}))


if __name__ == "__main__":
    main()
