#!/usr/bin/env python3
"""An exact reference for the device graph: a llama-family GGUF decoded in float64 with
numpy, weights dequantized by the `gguf` package (llama.cpp's own Python reader), no
quantized activations and no f16 cache.

llama.cpp and the engine's CPU kernels quantize activations to 8 bits before each product
and keep keys and values in f16; the device graph (engine/src/device) computes in f32.
On SmolLM2 those two numerics differ by up to about a logit, enough for greedy paths to
part where the top two are that close, so the CPU engine cannot be the device graph's
exact reference there. This is: f32 against f64 differs by far less.

Usage: f64_reference.py MODEL.gguf GOLDEN.json CASES STEPS > reference.json
Takes the first CASES prompts' tokens from GOLDEN.json (llama.cpp's tokenization, the
`greedy` cases of golden-*.json), decodes STEPS greedy tokens, and records per step the
chosen token, the margin to the second best and the top-5 logits.
"""
import json
import sys
from importlib.metadata import version

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def field(reader, name, default=None):
    item = reader.fields.get(name)
    if item is None:
        return default
    value = item.parts[item.data[0]]
    if item.types and item.types[0].name == "STRING":
        return bytes(value).decode()
    return value.tolist()[0]


class Model:
    def __init__(self, path):
        reader = GGUFReader(path)
        arch = field(reader, "general.architecture")
        if arch not in ("llama",):
            raise SystemExit(f"f64_reference.py covers the llama family only, not {arch}")
        self.layers = field(reader, f"{arch}.block_count")
        self.heads = field(reader, f"{arch}.attention.head_count")
        self.kv_heads = field(reader, f"{arch}.attention.head_count_kv")
        self.width = field(reader, f"{arch}.embedding_length")
        self.eps = field(reader, f"{arch}.attention.layer_norm_rms_epsilon")
        self.base = field(reader, f"{arch}.rope.freq_base", 10000.0)
        self.head_dim = self.width // self.heads
        self.weights = {}
        for tensor in reader.tensors:
            values = dequantize(tensor.data, tensor.tensor_type).astype(np.float64)
            shape = tuple(reversed([int(x) for x in tensor.shape]))
            self.weights[tensor.name] = values.reshape(shape)
        self.embedding = self.weights["token_embd.weight"]
        self.output = self.weights.get("output.weight", self.embedding)

    def norm(self, x, weight):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * weight

    def rope(self, x, position):
        """llama.cpp's NORM rope: adjacent pairs."""
        pairs = np.arange(self.head_dim // 2)
        theta = position * self.base ** (-2.0 * pairs / self.head_dim)
        cos, sin = np.cos(theta), np.sin(theta)
        first, second = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = first * cos - second * sin
        out[..., 1::2] = first * sin + second * cos
        return out

    def step(self, token, position, cache):
        """One token through every layer; returns the logits."""
        w = self.weights
        x = self.embedding[token].copy()
        group = self.heads // self.kv_heads
        for layer in range(self.layers):
            p = f"blk.{layer}."
            h = self.norm(x, w[p + "attn_norm.weight"])
            q = (w[p + "attn_q.weight"] @ h).reshape(self.heads, self.head_dim)
            k = (w[p + "attn_k.weight"] @ h).reshape(self.kv_heads, self.head_dim)
            v = (w[p + "attn_v.weight"] @ h).reshape(self.kv_heads, self.head_dim)
            q, k = self.rope(q, position), self.rope(k, position)
            keys, values = cache.setdefault(layer, ([], []))
            keys.append(k)
            values.append(v)
            ks = np.repeat(np.stack(keys), group, axis=1)  # [positions, heads, dim]
            vs = np.repeat(np.stack(values), group, axis=1)
            scores = np.einsum("hd,phd->hp", q, ks) / np.sqrt(self.head_dim)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            attended = np.einsum("hp,phd->hd", scores, vs).reshape(self.width)
            x = x + w[p + "attn_output.weight"] @ attended
            h = self.norm(x, w[p + "ffn_norm.weight"])
            gate, up = w[p + "ffn_gate.weight"] @ h, w[p + "ffn_up.weight"] @ h
            x = x + w[p + "ffn_down.weight"] @ (gate / (1.0 + np.exp(-gate)) * up)
        return self.output @ self.norm(x, w["output_norm.weight"])


def main() -> None:
    model_path, golden_path, cases, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    model = Model(model_path)
    golden = json.load(open(golden_path, encoding="utf-8"))
    out = {"producer": f"numpy {np.__version__} float64, gguf {version('gguf')}", "cases": []}
    for case in golden["greedy"][:cases]:
        tokens = list(case["prompt_tokens"])
        cache = {}
        for position, token in enumerate(tokens):
            logits = model.step(token, position, cache)
        record = []
        for _ in range(steps):
            order = np.argsort(-logits, kind="stable")
            chosen = int(order[0])
            record.append({"token": chosen,
                           "margin": round(float(logits[order[0]] - logits[order[1]]), 5),
                           "top5": [[int(i), round(float(logits[i]), 5)] for i in order[:5]]})
            logits = model.step(chosen, len(tokens), cache)
            tokens.append(chosen)
        out["cases"].append({"prompt_tokens": case["prompt_tokens"], "steps": record})
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
