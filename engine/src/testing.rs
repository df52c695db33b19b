//! Test fixtures other crates use too (feature `testing`): a tiny random Llama
//! (2 layers, width 64, GQA 4:2, a hand-made byte-level BPE vocabulary, no chat template
//! so ChatML is used) as GGUF bytes. It loads and generates in milliseconds; its text is
//! noise, which is all that serving tests need.

use flotilla_gguf::{GgmlType, GgufBuilder};
use half::f16;

pub fn tiny_tokenizer_builder(builder: GgufBuilder) -> GgufBuilder {
    let table = crate::tokenizer::byte_to_char_table();
    let mut tokens: Vec<String> = vec![
        "<|endoftext|>".into(),
        "<|im_start|>".into(),
        "<|im_end|>".into(),
    ];
    tokens.extend(table.iter().map(|c| c.to_string()));
    tokens.extend(
        [
            "he", "ll", "hell", "hello", "Ġw", "Ġwo", "Ġworld", "or", "ld", "Ġ",
        ]
        .map(String::from),
    );
    let mut kinds = vec![3, 3, 3];
    kinds.extend(std::iter::repeat_n(1, tokens.len() - 3));
    builder
        .metadata_str("tokenizer.ggml.model", "gpt2")
        .metadata_str("tokenizer.ggml.pre", "smollm")
        .metadata_str_array("tokenizer.ggml.tokens", &tokens)
        .metadata_i32_array("tokenizer.ggml.token_type", &kinds)
        .metadata_str_array(
            "tokenizer.ggml.merges",
            &[
                "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
            ],
        )
        .metadata_u32("tokenizer.ggml.bos_token_id", 1)
        .metadata_u32("tokenizer.ggml.eos_token_id", 2)
}

pub const WIDTH: usize = 64;
pub const FEED_FORWARD: usize = 128;
pub const LAYERS: usize = 2;

struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u8 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) as u8
    }
}

fn q4_1(rows: usize, columns: usize, noise: &mut Noise) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..rows * columns / 32 {
        bytes.extend_from_slice(&f16::from_f32(0.03).to_le_bytes());
        bytes.extend_from_slice(&f16::from_f32(-0.22).to_le_bytes());
        bytes.extend((0..16).map(|_| noise.next()));
    }
    bytes
}

fn q8_0(rows: usize, columns: usize, noise: &mut Noise) -> Vec<u8> {
    let mut bytes = Vec::new();
    for _ in 0..rows * columns / 32 {
        bytes.extend_from_slice(&f16::from_f32(0.02).to_le_bytes());
        bytes.extend((0..32).map(|_| noise.next()));
    }
    bytes
}

fn ones(length: usize) -> Vec<u8> {
    (0..length).flat_map(|_| 1.0f32.to_le_bytes()).collect()
}

/// The bytes of the tiny model.
pub fn tiny_model_bytes() -> Vec<u8> {
    let builder = tiny_tokenizer_builder(GgufBuilder::new());
    let vocab = 3 + 256 + 10;
    let mut noise = Noise(42);
    let mut builder = builder
        .metadata_str("general.architecture", "llama")
        .metadata_u32("llama.block_count", LAYERS as u32)
        .metadata_u32("llama.context_length", 4096)
        .metadata_u32("llama.embedding_length", WIDTH as u32)
        .metadata_u32("llama.feed_forward_length", FEED_FORWARD as u32)
        .metadata_u32("llama.attention.head_count", 4)
        .metadata_u32("llama.attention.head_count_kv", 2)
        .metadata_f32("llama.rope.freq_base", 10_000.0)
        .metadata_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .tensor(
            "token_embd.weight",
            &[WIDTH as u64, vocab],
            GgmlType::Q8_0,
            &q8_0(vocab as usize, WIDTH, &mut noise),
        )
        .tensor(
            "output_norm.weight",
            &[WIDTH as u64],
            GgmlType::F32,
            &ones(WIDTH),
        );
    let w = WIDTH as u64;
    let kv = 32u64;
    let ff = FEED_FORWARD as u64;
    for layer in 0..LAYERS {
        let name = |part: &str| format!("blk.{layer}.{part}.weight");
        builder = builder
            .tensor(&name("attn_norm"), &[w], GgmlType::F32, &ones(WIDTH))
            .tensor(
                &name("attn_q"),
                &[w, w],
                GgmlType::Q4_1,
                &q4_1(WIDTH, WIDTH, &mut noise),
            )
            .tensor(
                &name("attn_k"),
                &[w, kv],
                GgmlType::Q4_1,
                &q4_1(32, WIDTH, &mut noise),
            )
            .tensor(
                &name("attn_v"),
                &[w, kv],
                GgmlType::Q4_1,
                &q4_1(32, WIDTH, &mut noise),
            )
            .tensor(
                &name("attn_output"),
                &[w, w],
                GgmlType::Q4_1,
                &q4_1(WIDTH, WIDTH, &mut noise),
            )
            .tensor(&name("ffn_norm"), &[w], GgmlType::F32, &ones(WIDTH))
            .tensor(
                &name("ffn_gate"),
                &[w, ff],
                GgmlType::Q4_1,
                &q4_1(FEED_FORWARD, WIDTH, &mut noise),
            )
            .tensor(
                &name("ffn_up"),
                &[w, ff],
                GgmlType::Q4_1,
                &q4_1(FEED_FORWARD, WIDTH, &mut noise),
            )
            .tensor(
                &name("ffn_down"),
                &[ff, w],
                GgmlType::Q8_0,
                &q8_0(WIDTH, FEED_FORWARD, &mut noise),
            );
    }
    builder.build()
}
