#!/usr/bin/env python3
"""Produce llama.cpp's embeddings for the engine's embedding parity test.

Usage: llama_cpp_embeddings.py MODEL.gguf POOLING TEXT... > reference.json

POOLING is mean, cls or last. Each text is tokenized as llama-cpp-python's `embed` does it
(its `tokenize` defaults: BOS added when the model wants one, special tokens not parsed);
the tokens are part of the output so that the test embeds exactly the same ones. The
vectors are llama.cpp's pooled `result_norm` (the final hidden states after the output
norm), not normalised.
"""
import json
import sys

import llama_cpp
from llama_cpp import Llama, __version__

POOLING = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}


def main() -> None:
    model_path, pooling, texts = sys.argv[1], sys.argv[2], sys.argv[3:]
    llm = Llama(model_path=model_path, embedding=True, pooling_type=POOLING[pooling],
                n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, verbose=False)
    out = {"producer": f"llama-cpp-python {__version__}", "pooling": pooling, "cases": []}
    for text in texts:
        tokens = llm.tokenize(text.encode("utf-8"))
        # One text per call: each vector is that text's alone.
        vector = llm.embed(text, normalize=False, truncate=False)
        out["cases"].append({"text": text, "tokens": list(map(int, tokens)),
                             "embedding": [float(x) for x in vector]})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
