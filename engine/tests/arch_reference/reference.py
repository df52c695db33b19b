#!/usr/bin/env python3
"""llama.cpp's outputs for the architecture parity test (reference_architectures.rs).

Usage: reference.py MODEL.gguf PROMPTS.json TOKENS > reference.json

Each prompt is tokenized as the model declares (BOS when the vocabulary adds one) with
special tokens parsed; then greedy decoding by argmax over llama.cpp's raw logits (no
sampler), recording per step the margin between llama.cpp's best and second-best logit
(where two correct engines may part) and the top-5 logits at the first position.
"""
import json
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama, __version__


def last_logits(llm: Llama) -> np.ndarray:
    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).astype(np.float32).copy()


def main() -> None:
    model_path, prompts_path, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
    prompts = json.load(open(prompts_path, encoding="utf-8"))
    llm = Llama(model_path=model_path, n_ctx=512, n_threads=2, n_batch=512,
                logits_all=False, verbose=False, seed=0)
    out = {"producer": f"llama-cpp-python {__version__}", "cases": []}
    for prompt in prompts:
        ids = llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(ids)
        generated, margins, top5 = [], [], None
        for step in range(tokens):
            logits = last_logits(llm)
            if step == 0:
                order = np.argsort(-logits, kind="stable")[:5]
                top5 = [[int(i), float(logits[i])] for i in order]
            token = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            margins.append(round(float(top2[1] - top2[0]), 4))
            generated.append(token)
            llm.eval([token])
        out["cases"].append({"prompt": prompt, "prompt_tokens": list(map(int, ids)),
                             "generated": generated, "top1_margins": margins,
                             "first_top5": top5})
    json.dump(out, sys.stdout, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
