#!/usr/bin/env python3
"""Produce llama.cpp's reference outputs for the engine's correctness test.

Usage: llama_cpp_reference.py MODEL.gguf CASES.json > golden.json

CASES.json: {"tokenize": [text, ...], "greedy": [{"prompt": text, "tokens": n}, ...]}
Prompts are tokenized with special tokens parsed and without BOS (SmolLM2 adds none).
Output: tokenizations, greedy continuations (argmax of llama.cpp's logits, so no sampler
is involved), and the top-5 logits at the first generated position, and per step the logit margin between
llama.cpp's best and second-best token (a near tie is where two correct engines may part).
"""
import hashlib
import json
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama, __version__


def last_logits(llm: Llama) -> np.ndarray:
    """Logits of the last evaluated token, read straight from the llama.cpp context."""
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def main() -> None:
    model_path, cases_path = sys.argv[1], sys.argv[2]
    cases = json.load(open(cases_path, encoding="utf-8"))
    llm = Llama(model_path=model_path, n_ctx=512, n_threads=2, n_batch=512,
                logits_all=False, verbose=False, seed=0)
    sha = hashlib.sha256(open(model_path, "rb").read()).hexdigest()
    out = {"producer": f"llama-cpp-python {__version__}", "model_sha256": sha,
           "tokenize": [], "greedy": []}
    for text in cases["tokenize"]:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        out["tokenize"].append({"text": text, "tokens": list(map(int, ids))})
    for case in cases["greedy"]:
        prompt = llm.tokenize(case["prompt"].encode("utf-8"), add_bos=False, special=True)
        llm.reset()
        llm.eval(prompt)
        generated, margins, top5 = [], [], None
        for step in range(case["tokens"]):
            logits = last_logits(llm)
            if step == 0:
                order = np.argsort(-logits, kind="stable")[:5]
                top5 = [[int(i), float(logits[i])] for i in order]
            token = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            margins.append(round(float(top2[1] - top2[0]), 4))
            generated.append(token)
            llm.eval([token])
        out["greedy"].append({"prompt": case["prompt"], "prompt_tokens": list(map(int, prompt)),
                              "generated": generated,
                              "top1_margins": margins, "first_top5": top5})
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
