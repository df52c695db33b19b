#!/usr/bin/env python3
"""Benchmark llama.cpp (via llama-cpp-python) the same way `flotilla-engine bench` measures
itself: identical prompt token ids, thread count, greedy decoding, one warm-up pass.

Usage: bench_llama_cpp.py MODEL.gguf THREADS GEN_TOKENS TOKENS_JSON
Prints one JSON object.
"""
import json
import resource
import sys
import time

import numpy as np
import llama_cpp
from llama_cpp import Llama


def last_logits(llm: Llama) -> np.ndarray:
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),))


def main() -> None:
    model, threads, gen_tokens, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    llm = Llama(model_path=model, n_ctx=max(512, len(tokens) + gen_tokens + 16), n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=False)
    llm.eval(tokens[:8])  # warm-up: page in weights, allocate buffers
    llm.reset()
    start = time.perf_counter()
    llm.eval(tokens)
    token = int(np.argmax(last_logits(llm)))
    first = time.perf_counter()
    for _ in range(gen_tokens):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
    end = time.perf_counter()
    print(json.dumps({
        "producer": f"llama-cpp-python {llama_cpp.__version__}",
        "prompt_tokens_per_s": len(tokens) / (first - start),
        "decode_tokens_per_s": gen_tokens / (end - first),
        "time_to_first_token_ms": (first - start) * 1000.0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }))


if __name__ == "__main__":
    main()
