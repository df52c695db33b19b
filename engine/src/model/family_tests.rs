//! Phi-3's fused projections are split the way llama.cpp splits them: a Phi-3 model with
//! fused `attn_qkv` and `[gate | up]` weights computes exactly what the same weights,
//! stored as separate matrices, compute in the Qwen2 graph (same half-split RoPE; zero
//! biases; head width 16 makes the query-side and score-side `1/4` scale bit-identical).

use std::sync::Arc;

use flotilla_gguf::{GgmlType, GgufBuilder, GgufFile};
use half::f16;

use super::{LlamaModel, SequenceInput};
use crate::testing::{FEED_FORWARD, WIDTH, tiny_tokenizer_builder};

const VOCAB: usize = 3 + 256 + 10;
const KV: usize = 32;

/// Q8_0 rows of pseudo-random weights (rows are independent blocks, so concatenating the
/// bytes of two matrices stacks their rows).
fn q8_0_rows(rows: usize, columns: usize, seed: &mut u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..rows * columns / 32 {
        bytes.extend_from_slice(&f16::from_f32(0.02).to_le_bytes());
        for _ in 0..32 {
            *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            bytes.push((*seed >> 56) as u8);
        }
    }
    bytes
}

/// Maps `bytes` as a model file (written to a temporary file, unlinked once mapped).
fn open(bytes: Vec<u8>, name: &str) -> GgufFile {
    let path = std::env::temp_dir().join(format!(
        "flotilla-engine-family-{name}-{}.gguf",
        std::process::id()
    ));
    std::fs::write(&path, bytes).expect("write model");
    let file = GgufFile::open(&path).expect("open model");
    let _ = std::fs::remove_file(&path);
    file
}

fn f32_bytes(values: impl Iterator<Item = f32>) -> Vec<u8> {
    values.flat_map(f32::to_le_bytes).collect()
}

fn build(architecture: &str, fused: bool) -> LlamaModel {
    let mut seed = 7u64;
    let w = WIDTH as u64;
    let ff = FEED_FORWARD as u64;
    let key = |suffix: &str| format!("{architecture}.{suffix}");
    let mut builder = tiny_tokenizer_builder(GgufBuilder::new())
        .metadata_str("general.architecture", architecture)
        .metadata_u32(&key("block_count"), 1)
        .metadata_u32(&key("context_length"), 256)
        .metadata_u32(&key("embedding_length"), WIDTH as u32)
        .metadata_u32(&key("feed_forward_length"), FEED_FORWARD as u32)
        .metadata_u32(&key("attention.head_count"), 4)
        .metadata_u32(&key("attention.head_count_kv"), 2)
        .metadata_f32(&key("attention.layer_norm_rms_epsilon"), 1e-5)
        .tensor(
            "token_embd.weight",
            &[w, VOCAB as u64],
            GgmlType::Q8_0,
            &q8_0_rows(VOCAB, WIDTH, &mut seed),
        )
        .tensor(
            "output_norm.weight",
            &[w],
            GgmlType::F32,
            &f32_bytes((0..WIDTH).map(|_| 1.0)),
        );
    let query = q8_0_rows(WIDTH, WIDTH, &mut seed);
    let key_weights = q8_0_rows(KV, WIDTH, &mut seed);
    let value = q8_0_rows(KV, WIDTH, &mut seed);
    let gate = q8_0_rows(FEED_FORWARD, WIDTH, &mut seed);
    let up = q8_0_rows(FEED_FORWARD, WIDTH, &mut seed);
    let norm = f32_bytes((0..WIDTH).map(|i| 1.0 + i as f32 / 100.0));
    builder = builder
        .tensor("blk.0.attn_norm.weight", &[w], GgmlType::F32, &norm)
        .tensor("blk.0.ffn_norm.weight", &[w], GgmlType::F32, &norm)
        .tensor(
            "blk.0.attn_output.weight",
            &[w, w],
            GgmlType::Q8_0,
            &q8_0_rows(WIDTH, WIDTH, &mut seed),
        )
        .tensor(
            "blk.0.ffn_down.weight",
            &[ff, w],
            GgmlType::Q8_0,
            &q8_0_rows(WIDTH, FEED_FORWARD, &mut seed),
        );
    if fused {
        let qkv = [query, key_weights, value].concat();
        let gate_up = [gate, up].concat();
        builder = builder
            .tensor(
                "blk.0.attn_qkv.weight",
                &[w, (WIDTH + 2 * KV) as u64],
                GgmlType::Q8_0,
                &qkv,
            )
            .tensor(
                "blk.0.ffn_up.weight",
                &[w, 2 * ff],
                GgmlType::Q8_0,
                &gate_up,
            );
    } else {
        let zeros = |length: usize| f32_bytes((0..length).map(|_| 0.0));
        builder = builder
            .tensor("blk.0.attn_q.weight", &[w, w], GgmlType::Q8_0, &query)
            .tensor(
                "blk.0.attn_k.weight",
                &[w, KV as u64],
                GgmlType::Q8_0,
                &key_weights,
            )
            .tensor(
                "blk.0.attn_v.weight",
                &[w, KV as u64],
                GgmlType::Q8_0,
                &value,
            )
            .tensor("blk.0.attn_q.bias", &[w], GgmlType::F32, &zeros(WIDTH))
            .tensor("blk.0.attn_k.bias", &[KV as u64], GgmlType::F32, &zeros(KV))
            .tensor("blk.0.attn_v.bias", &[KV as u64], GgmlType::F32, &zeros(KV))
            .tensor("blk.0.ffn_gate.weight", &[w, ff], GgmlType::Q8_0, &gate)
            .tensor("blk.0.ffn_up.weight", &[w, ff], GgmlType::Q8_0, &up);
    }
    let file = open(builder.build(), architecture);
    LlamaModel::load(Arc::new(file)).expect("load")
}

#[test]
fn phi3_fused_projections_equal_separate_ones() {
    let phi3 = build("phi3", true);
    let qwen2 = build("qwen2", false);
    let tokens = [5u32, 40, 77, 3, 120, 9];
    let mut phi3_cache = phi3.new_cache();
    let mut qwen2_cache = qwen2.new_cache();
    let phi3_logits = phi3
        .forward(&mut [SequenceInput {
            cache: &mut phi3_cache,
            tokens: &tokens,
        }])
        .expect("phi3 forward");
    let qwen2_logits = qwen2
        .forward(&mut [SequenceInput {
            cache: &mut qwen2_cache,
            tokens: &tokens,
        }])
        .expect("qwen2 forward");
    assert_eq!(phi3_logits, qwen2_logits);
    assert!(phi3_logits[0].iter().any(|&logit| logit != 0.0));
}

#[test]
fn gemma3_without_its_norms_is_refused_naming_the_tensor() {
    let mut model = tiny_tokenizer_builder(GgufBuilder::new())
        .metadata_str("general.architecture", "gemma3")
        .metadata_u32("gemma3.block_count", 1)
        .metadata_u32("gemma3.embedding_length", WIDTH as u32)
        .metadata_u32("gemma3.feed_forward_length", FEED_FORWARD as u32)
        .metadata_u32("gemma3.attention.head_count", 4);
    let mut seed = 1;
    let w = WIDTH as u64;
    for (name, rows, columns) in [
        ("token_embd.weight", VOCAB, WIDTH),
        ("blk.0.attn_q.weight", WIDTH, WIDTH),
        ("blk.0.attn_k.weight", WIDTH, WIDTH),
        ("blk.0.attn_v.weight", WIDTH, WIDTH),
        ("blk.0.attn_output.weight", WIDTH, WIDTH),
        ("blk.0.ffn_gate.weight", FEED_FORWARD, WIDTH),
        ("blk.0.ffn_up.weight", FEED_FORWARD, WIDTH),
        ("blk.0.ffn_down.weight", WIDTH, FEED_FORWARD),
    ] {
        model = model.tensor(
            name,
            &[columns as u64, rows as u64],
            GgmlType::Q8_0,
            &q8_0_rows(rows, columns, &mut seed),
        );
    }
    let norm = f32_bytes((0..WIDTH).map(|_| 1.0));
    for name in [
        "output_norm.weight",
        "blk.0.attn_norm.weight",
        "blk.0.ffn_norm.weight",
    ] {
        model = model.tensor(name, &[w], GgmlType::F32, &norm);
    }
    let file = open(model.build(), "gemma3-refused");
    let error = LlamaModel::load(Arc::new(file))
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("blk.0.attn_q_norm.weight") && error.contains("gemma3"),
        "{error}"
    );
}
