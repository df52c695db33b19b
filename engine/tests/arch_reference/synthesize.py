#!/usr/bin/env python3
"""Small synthetic GGUF models for the architecture parity test (reference_architectures.rs).

Usage: synthesize.py {phi3,llama3} VOCAB.gguf OUT.gguf

Phi-3 and Llama 3.1 have no real model small enough to fetch in CI (Phi-3-mini is 2 GB,
Llama 3.2 1B over 1 GB), so this writes files with their architectures' exact metadata
and tensor layout, the real tokenizer copied from one of llama.cpp's vocabulary files
(`ggml-vocab-phi-3.gguf`, `ggml-vocab-llama-bpe.gguf`: every `tokenizer.*` key), and
seeded random weights: 2 layers, 4 query heads sharing 2 key/value heads, Q8_0 matrices
and F32 norms. The same arguments always give the same bytes.

- phi3: llama.cpp's `LLM_ARCH_PHI3` as `convert_hf_to_gguf.py` writes Phi-3-mini: fused
  `attn_qkv` (rows `[query | key | value]`), fused `ffn_up` of `2 * feed_forward_length`
  rows (`[gate | up]`), NEOX rope, and a declared sliding window shorter than the long
  prompt (llama.cpp ignores Phi-3's window; so must the engine).
- llama3: `LLM_ARCH_LLAMA` as Llama 3.1 declares its rope scaling: rope base 500,000 and a
  `rope_freqs.weight` tensor of per-pair divisors, computed with Llama 3.1's formula
  (factor 8, low/high frequency factors 1 and 4). Its original context is scaled down
  from 8,192 to 256 positions, so that the divided pairs are ones that turn within the
  test's prompts; with 8,192 only pairs that barely move in 500 positions are divided,
  and a wrong application would go unseen.

Random weights are scaled like a trained model's activations: attention scores with a
spread of a few units (so attention depends on content and position), residual branches
of the embeddings' size, and peaked logits of a real model's range (so that the test's
absolute tolerances and near-tie margin, made for real models, mean the same here).
"""
import math
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import quantize

SEED = 20240514

# Llama 3.1's rope scaling (its config.json `rope_scaling`), but for the original context.
LLAMA3_FACTOR = 8.0
LLAMA3_LOW_FREQ_FACTOR = 1.0
LLAMA3_HIGH_FREQ_FACTOR = 4.0
LLAMA3_ORIGINAL_CONTEXT = 256


def llama3_rope_factors(base: float, head_dim: int, original_context: int) -> np.ndarray:
    """Llama 3.1's per-pair angle divisors, as convert_hf_to_gguf.py computes them."""
    low_freq_wavelen = original_context / LLAMA3_LOW_FREQ_FACTOR
    high_freq_wavelen = original_context / LLAMA3_HIGH_FREQ_FACTOR
    factors = []
    for pair in range(head_dim // 2):
        freq = 1.0 / (base ** (2 * pair / head_dim))
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(LLAMA3_FACTOR)
        else:
            smooth = (original_context / wavelen - LLAMA3_LOW_FREQ_FACTOR) / (
                LLAMA3_HIGH_FREQ_FACTOR - LLAMA3_LOW_FREQ_FACTOR)
            factors.append(1 / ((1 - smooth) / LLAMA3_FACTOR + smooth))
    return np.array(factors, dtype=np.float32)


class Weights:
    """Seeded random tensors, written as llama.cpp names and shapes them."""

    def __init__(self, writer: GGUFWriter, seed: int):
        self.writer = writer
        self.rng = np.random.default_rng(seed)

    def matrix(self, name: str, rows: int, columns: int, std: float) -> None:
        """A Q8_0 `rows × columns` matrix of normal values."""
        self.add_q8_0(name, self.rng.standard_normal((rows, columns), dtype=np.float32) * std)

    def add_q8_0(self, name: str, values: np.ndarray) -> None:
        """Writes a `rows × columns` array as Q8_0 (GGUF shape `[columns, rows]`)."""
        quantized = quantize(values.astype(np.float32), GGMLQuantizationType.Q8_0)
        self.writer.add_tensor(name, quantized, raw_dtype=GGMLQuantizationType.Q8_0)

    def norm(self, name: str, width: int) -> None:
        """An F32 RMSNorm weight near one."""
        values = 1.0 + 0.1 * self.rng.standard_normal(width, dtype=np.float32)
        self.writer.add_tensor(name, values.astype(np.float32))


def copy_tokenizer(vocab_path: str, writer: GGUFWriter) -> int:
    """Copies every `tokenizer.*` key of a llama.cpp vocabulary file; returns its size."""
    reader = GGUFReader(vocab_path)
    vocab_size = 0
    for field in reader.fields.values():
        if not field.name.startswith("tokenizer."):
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), main_type, sub_type)
        if field.name == "tokenizer.ggml.tokens":
            vocab_size = len(field.data)
    if vocab_size == 0:
        sys.exit(f"{vocab_path} has no tokenizer.ggml.tokens")
    return vocab_size


def common_metadata(writer: GGUFWriter, shape: dict, context: int) -> None:
    writer.add_name(f"synthetic {writer.arch} (seeded random weights, parity tests only)")
    writer.add_context_length(context)
    writer.add_embedding_length(shape["width"])
    writer.add_feed_forward_length(shape["ff"])
    writer.add_block_count(shape["layers"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(shape["width"] // shape["heads"])
    writer.add_file_type(LlamaFileType.MOSTLY_Q8_0)


def layer_scales(shape: dict) -> dict:
    """Standard deviations that keep every activation at a trained model's scale."""
    width, ff = shape["width"], shape["ff"]
    return {
        # Scores q·k/sqrt(head_dim) of spread ~2.5 for unit-RMS inputs.
        "query_key": math.sqrt(2.5 / width),
        "value": 1.0 / math.sqrt(width),
        "output": 1.0 / math.sqrt(width),
        "gate_up": 1.5 / math.sqrt(width),
        "down": 1.5 / math.sqrt(ff),
    }


def output_layers(weights: Weights, shape: dict, vocab_size: int) -> None:
    width = shape["width"]
    weights.matrix("token_embd.weight", vocab_size, width, 1.0)
    weights.norm("output_norm.weight", width)
    # Output rows of log-normal norms, as a trained head favours some tokens over others:
    # the logits are peaked (top logits 14-28; llama.cpp's top-2 margin has a median of ~2
    # and is under 0.05 at under 1% of greedy steps), where rows of equal norm give
    # near-Gaussian logits (median margin 0.8, under 0.05 at 7% of steps: near ties
    # everywhere, so greedy paths part on rounding).
    rows = weights.rng.standard_normal((vocab_size, width), dtype=np.float32)
    norms = np.exp(0.5 * weights.rng.standard_normal((vocab_size, 1), dtype=np.float32))
    weights.add_q8_0("output.weight", rows * norms * (1.6 / math.sqrt(width)))


def write_phi3(vocab: str, out: str) -> None:
    shape = {"width": 256, "ff": 512, "layers": 2, "heads": 4, "kv_heads": 2}
    writer = GGUFWriter(out, "phi3")
    common_metadata(writer, shape, context=4096)
    writer.add_rope_scaling_orig_ctx_len(4096)
    writer.add_rope_freq_base(10000.0)
    writer.add_sliding_window(128)
    vocab_size = copy_tokenizer(vocab, writer)
    weights = Weights(writer, SEED)
    output_layers(weights, shape, vocab_size)
    width, ff = shape["width"], shape["ff"]
    kv_width = width // shape["heads"] * shape["kv_heads"]
    scale = layer_scales(shape)
    for layer in range(shape["layers"]):
        block = f"blk.{layer}"
        weights.norm(f"{block}.attn_norm.weight", width)
        # Query and key rows share one scale, value rows have theirs: a fused matrix whose
        # sections are confused computes visibly different attention.
        weights.add_q8_0(f"{block}.attn_qkv.weight", np.concatenate([
            weights.rng.standard_normal((width + kv_width, width), dtype=np.float32)
            * scale["query_key"],
            weights.rng.standard_normal((kv_width, width), dtype=np.float32) * scale["value"],
        ]))
        weights.matrix(f"{block}.attn_output.weight", width, width, scale["output"])
        weights.norm(f"{block}.ffn_norm.weight", width)
        weights.matrix(f"{block}.ffn_up.weight", 2 * ff, width, scale["gate_up"])
        weights.matrix(f"{block}.ffn_down.weight", width, ff, scale["down"])
    finish(writer)


def write_llama3(vocab: str, out: str) -> None:
    shape = {"width": 128, "ff": 384, "layers": 2, "heads": 4, "kv_heads": 2}
    base = 500000.0
    head_dim = shape["width"] // shape["heads"]
    writer = GGUFWriter(out, "llama")
    # Llama 3.1 declares its scaled context (131,072 = 16 × 8,192); and no rope.scaling.*
    # keys: convert_hf_to_gguf.py writes the "llama3" scaling as rope_freqs.weight alone.
    common_metadata(writer, shape, context=16 * LLAMA3_ORIGINAL_CONTEXT)
    writer.add_rope_freq_base(base)
    vocab_size = copy_tokenizer(vocab, writer)
    writer.add_vocab_size(vocab_size)
    weights = Weights(writer, SEED + 1)
    output_layers(weights, shape, vocab_size)
    writer.add_tensor("rope_freqs.weight",
                      llama3_rope_factors(base, head_dim, LLAMA3_ORIGINAL_CONTEXT))
    width, ff = shape["width"], shape["ff"]
    kv_width = head_dim * shape["kv_heads"]
    scale = layer_scales(shape)
    for layer in range(shape["layers"]):
        block = f"blk.{layer}"
        weights.norm(f"{block}.attn_norm.weight", width)
        weights.matrix(f"{block}.attn_q.weight", width, width, scale["query_key"])
        weights.matrix(f"{block}.attn_k.weight", kv_width, width, scale["query_key"])
        weights.matrix(f"{block}.attn_v.weight", kv_width, width, scale["value"])
        weights.matrix(f"{block}.attn_output.weight", width, width, scale["output"])
        weights.norm(f"{block}.ffn_norm.weight", width)
        weights.matrix(f"{block}.ffn_gate.weight", ff, width, scale["gate_up"])
        weights.matrix(f"{block}.ffn_up.weight", ff, width, scale["gate_up"])
        weights.matrix(f"{block}.ffn_down.weight", width, ff, scale["down"])
    finish(writer)


def finish(writer: GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in ("phi3", "llama3"):
        sys.exit(__doc__)
    architecture, vocab, out = sys.argv[1:]
    # Written beside the target and renamed, so an interrupted run leaves no model.
    partial = out + ".part"
    {"phi3": write_phi3, "llama3": write_llama3}[architecture](vocab, partial)
    os.replace(partial, out)


if __name__ == "__main__":
    main()
