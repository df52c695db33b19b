#!/usr/bin/env python3
"""Benchmark llama.cpp (via llama-cpp-python) the same way `flotilla-engine bench` measures
itself: identical prompt token ids, thread count, greedy decoding, one warm-up pass.

With SEQUENCES > 1 it also decodes that many sequences together through llama.cpp's batch
API (a second context with n_seq_max = SEQUENCES on the same weights): sequence i's prompt
is the prompt rotated left by i tokens, as in bench.rs; each is prefilled on its own, then
every decode step is one `llama_decode` over a batch holding one token per sequence. An
untimed run over SEQUENCES copies of the prompt first checks that each sequence decodes
the same greedy tokens as the single-sequence run (and warms the batched path up).

Usage: bench_llama_cpp.py MODEL.gguf THREADS GEN_TOKENS TOKENS_JSON [SEQUENCES]
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


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def argmax_at(ctx, index: int, n_vocab: int) -> int:
    pointer = llama_cpp.llama_get_logits_ith(ctx, index)
    if not pointer:
        raise RuntimeError(f"no logits for batch index {index}")
    return int(np.argmax(np.ctypeslib.as_array(pointer, shape=(n_vocab,))))


def fill(batch, entries) -> None:
    """Puts (token, position, sequence id, wants logits) entries into a llama_batch."""
    for index, (token, position, sequence, output) in enumerate(entries):
        batch.token[index] = token
        batch.pos[index] = position
        batch.n_seq_id[index] = 1
        batch.seq_id[index][0] = sequence
        batch.logits[index] = output
    batch.n_tokens = len(entries)


def decode(ctx, batch) -> None:
    status = llama_cpp.llama_decode(ctx, batch)
    if status != 0:
        raise RuntimeError(f"llama_decode of {batch.n_tokens} tokens returned {status}")


def decode_batched(ctx, batch, n_batch: int, n_vocab: int, prompts, gen_tokens: int):
    """Prefills each prompt as its own sequence, one sequence at a time, then decodes
    `gen_tokens` steps of one batch holding every sequence's last token. Returns, per
    sequence, the greedy token after its prompt and one per step, and the steps' seconds."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    tokens = []
    for sequence, prompt in enumerate(prompts):
        for start in range(0, len(prompt), n_batch):
            chunk = prompt[start:start + n_batch]
            fill(batch, [(token, start + offset, sequence, start + offset == len(prompt) - 1)
                         for offset, token in enumerate(chunk)])
            decode(ctx, batch)
        tokens.append([argmax_at(ctx, -1, n_vocab)])
    start = time.perf_counter()
    for step in range(gen_tokens):
        position = len(prompts[0]) + step
        fill(batch, [(sequence_tokens[-1], position, sequence, True)
                     for sequence, sequence_tokens in enumerate(tokens)])
        decode(ctx, batch)
        for sequence, sequence_tokens in enumerate(tokens):
            sequence_tokens.append(argmax_at(ctx, sequence, n_vocab))
    return tokens, time.perf_counter() - start


def measure_batched(llm: Llama, tokens, single_tokens, gen_tokens: int, sequences: int, per_sequence_ctx: int) -> dict:
    if sequences > llama_cpp.llama_max_parallel_sequences():
        raise SystemExit(f"llama.cpp supports at most {llama_cpp.llama_max_parallel_sequences()} sequences")
    # The single-sequence context's parameters (threads, flash attention, batch sizes),
    # with room for every sequence; kv_unified stays llama.cpp's default.
    params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
    params.n_seq_max = sequences
    params.n_ctx = sequences * per_sequence_ctx
    params.n_batch = max(params.n_batch, sequences)
    params.n_ubatch = max(params.n_ubatch, sequences)  # one decode step is one ubatch
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    if not ctx:
        raise RuntimeError(f"llama_init_from_model with n_seq_max={sequences} failed")
    n_batch = params.n_batch
    batch = llama_cpp.llama_batch_init(n_batch, 0, 1)  # one sequence id per token
    try:
        n_vocab = llm.n_vocab()
        check, _ = decode_batched(ctx, batch, n_batch, n_vocab, [tokens] * sequences, gen_tokens)
        prompts = [tokens[index % len(tokens):] + tokens[:index % len(tokens)] for index in range(sequences)]
        timed, seconds = decode_batched(ctx, batch, n_batch, n_vocab, prompts, gen_tokens)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    consistent = timed[0] == single_tokens and all(sequence_tokens == single_tokens for sequence_tokens in check)
    if not consistent:
        print(f"warning: batched greedy tokens differ from the single-sequence run's {single_tokens}: "
              f"identical prompts gave {check}, sequence 0 of the timed run {timed[0]}", file=sys.stderr)
    rate = sequences * gen_tokens / seconds
    return {
        "batched_decode_tokens_per_s": rate,
        "batched_decode_tokens_per_s_per_sequence": rate / sequences,
        "batched_peak_rss_mib": peak_rss_mib(),
        "batched_consistent": consistent,
        "batched_kv_unified": bool(params.kv_unified),
    }


def main() -> None:
    model, threads, gen_tokens, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
    sequences = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    per_sequence_ctx = max(512, len(tokens) + gen_tokens + 16)
    llm = Llama(model_path=model, n_ctx=per_sequence_ctx, n_threads=threads,
                n_threads_batch=threads, n_batch=512, verbose=False)
    llm.eval(tokens[:8])  # warm-up: page in weights, allocate buffers
    llm.reset()
    single_tokens = []
    start = time.perf_counter()
    llm.eval(tokens)
    token = int(np.argmax(last_logits(llm)))
    first = time.perf_counter()
    single_tokens.append(token)
    for _ in range(gen_tokens):
        llm.eval([token])
        token = int(np.argmax(last_logits(llm)))
        single_tokens.append(token)
    end = time.perf_counter()
    figures = {
        "producer": f"llama-cpp-python {llama_cpp.__version__}",
        "prompt_tokens_per_s": len(tokens) / (first - start),
        "decode_tokens_per_s": gen_tokens / (end - first),
        "time_to_first_token_ms": (first - start) * 1000.0,
        "peak_rss_mib": peak_rss_mib(),
        "batched_decode_tokens_per_s": None,
        "batched_decode_tokens_per_s_per_sequence": None,
        "batched_peak_rss_mib": None,
        "batched_consistent": None,
    }
    if sequences > 1:
        figures.update(measure_batched(llm, tokens, single_tokens, gen_tokens, sequences, per_sequence_ctx))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
