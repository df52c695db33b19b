//! The Llama-family decoder (llama.cpp's `LLM_ARCH_LLAMA` graph): token embedding,
//! `block_count` × (RMSNorm → attention with RoPE and grouped-query heads → residual →
//! RMSNorm → SwiGLU MLP → residual), final RMSNorm, tied or separate output head.
//!
//! llama.cpp's converter permutes the Q and K weights so that the "normal" RoPE style
//! (rotating adjacent element pairs) applies; we therefore rotate pairs `(2i, 2i+1)`.
//! Weights stay quantized in the mapped file; activations, norms and attention run in
//! f32, with the KV cache in f16. Several sequences are batched through one forward pass
//! so every weight row is read once per step, not once per sequence.

mod config;
mod kv_cache;
mod weights;

use std::sync::Arc;

use flotilla_gguf::GgufFile;
use half::f16;
use rayon::prelude::*;

pub use config::LlamaConfig;
pub use kv_cache::KvCache;
pub use weights::Matrix;

use crate::EngineError;
use crate::kernels::{ActivationBlock, KernelImpl, quantize_activations};
use weights::{Activations, MatmulScratch, matmul};

struct Layer {
    attention_norm: Vec<f32>,
    query: Matrix,
    key: Matrix,
    value: Matrix,
    attention_output: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// A loaded model: configuration plus weights borrowed from the mapped file.
pub struct LlamaModel {
    config: LlamaConfig,
    file: Arc<GgufFile>,
    token_embedding: Matrix,
    layers: Vec<Layer>,
    output_norm: Vec<f32>,
    output: Matrix,
    /// Per-dimension-pair divisors of the RoPE angle (Llama 3.1's `rope_freqs`), or ones.
    rope_frequency_factors: Vec<f32>,
    /// Whether the output head reuses the token embedding.
    tied_output: bool,
    kernel: KernelImpl,
}

/// Borrowed views of one layer's weights (for other executors, e.g. the burn graph).
pub struct LayerWeights<'a> {
    pub attention_norm: &'a [f32],
    pub query: &'a Matrix,
    pub key: &'a Matrix,
    pub value: &'a Matrix,
    pub attention_output: &'a Matrix,
    pub ffn_norm: &'a [f32],
    pub gate: &'a Matrix,
    pub up: &'a Matrix,
    pub down: &'a Matrix,
}

/// Borrowed views of all weights.
pub struct ModelWeights<'a> {
    pub token_embedding: &'a Matrix,
    pub layers: Vec<LayerWeights<'a>>,
    pub output_norm: &'a [f32],
    pub output: &'a Matrix,
}

/// The tokens one sequence contributes to a forward pass.
pub struct SequenceInput<'a> {
    pub cache: &'a mut KvCache,
    /// New tokens; their positions continue from `cache.len()`.
    pub tokens: &'a [u32],
}

impl LlamaModel {
    /// Builds the model from an opened GGUF file.
    pub fn load(file: Arc<GgufFile>) -> Result<LlamaModel, EngineError> {
        let config = LlamaConfig::from_header(file.header())?;
        let d = config.embedding_length;
        let kv = config.kv_dim();
        let ff = config.feed_forward_length;
        let vector = |name: &str| Matrix::load(&file, name, d, 1).map(|matrix| matrix.to_vec());
        let token_embedding = Matrix::load(&file, "token_embd.weight", d, config.vocab_size)?;
        // Grown one layer at a time: `block_count` comes from the file and is only trusted once
        // every layer's tensors have been found.
        let mut layers = Vec::new();
        for index in 0..config.block_count {
            let name = |part: &str| format!("blk.{index}.{part}.weight");
            layers.push(Layer {
                attention_norm: vector(&name("attn_norm"))?,
                query: Matrix::load(&file, &name("attn_q"), d, d)?,
                key: Matrix::load(&file, &name("attn_k"), d, kv)?,
                value: Matrix::load(&file, &name("attn_v"), d, kv)?,
                attention_output: Matrix::load(&file, &name("attn_output"), d, d)?,
                ffn_norm: vector(&name("ffn_norm"))?,
                gate: Matrix::load(&file, &name("ffn_gate"), d, ff)?,
                up: Matrix::load(&file, &name("ffn_up"), d, ff)?,
                down: Matrix::load(&file, &name("ffn_down"), ff, d)?,
            });
        }
        let tied_output = file.header().tensor("output.weight").is_none();
        let output = match file.header().tensor("output.weight") {
            Some(_) => Matrix::load(&file, "output.weight", d, config.vocab_size)?,
            None => token_embedding.clone(),
        };
        let pairs = config.rope_dimension_count / 2;
        let rope_frequency_factors = match file.header().tensor("rope_freqs.weight") {
            Some(_) => Matrix::load(&file, "rope_freqs.weight", pairs, 1)?.to_vec(),
            None => vec![1.0; pairs],
        };
        Ok(LlamaModel {
            output_norm: vector("output_norm.weight")?,
            config,
            file,
            token_embedding,
            layers,
            output,
            rope_frequency_factors,
            tied_output,
            kernel: KernelImpl::detect(),
        })
    }

    /// Borrowed views of every weight.
    pub fn weights(&self) -> ModelWeights<'_> {
        ModelWeights {
            token_embedding: &self.token_embedding,
            layers: self
                .layers
                .iter()
                .map(|layer| LayerWeights {
                    attention_norm: &layer.attention_norm,
                    query: &layer.query,
                    key: &layer.key,
                    value: &layer.value,
                    attention_output: &layer.attention_output,
                    ffn_norm: &layer.ffn_norm,
                    gate: &layer.gate,
                    up: &layer.up,
                    down: &layer.down,
                })
                .collect(),
            output_norm: &self.output_norm,
            output: &self.output,
        }
    }

    /// Uses a specific kernel implementation (tests compare scalar and SIMD).
    pub fn with_kernel(mut self, kernel: KernelImpl) -> LlamaModel {
        self.kernel = kernel;
        self
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The mapped model file (for the tokenizer and chat template metadata).
    pub fn file(&self) -> &Arc<GgufFile> {
        &self.file
    }

    /// Bytes of weights the model reads (resident once touched; they stay quantized).
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|layer| {
                [
                    &layer.query,
                    &layer.key,
                    &layer.value,
                    &layer.attention_output,
                    &layer.gate,
                    &layer.up,
                    &layer.down,
                ]
                .iter()
                .map(|matrix| matrix.byte_size())
                .sum::<usize>()
            })
            .sum();
        let output = if self.tied_output {
            0
        } else {
            self.output.byte_size()
        };
        layers + self.token_embedding.byte_size() + output
    }

    /// An empty KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.block_count, self.config.kv_dim())
    }

    /// Runs the new tokens of every sequence through the decoder in one batched pass,
    /// appends their keys and values to the caches and returns, per sequence, the logits
    /// after its last new token. Must run inside the rayon pool that should do the work.
    pub fn forward(
        &self,
        sequences: &mut [SequenceInput<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let config = &self.config;
        let d = config.embedding_length;
        let kv_dim = config.kv_dim();
        let mut token_meta = Vec::new(); // (sequence index, position)
        let mut hidden = Vec::new();
        let mut row = vec![0.0f32; d];
        for (sequence_index, sequence) in sequences.iter().enumerate() {
            if sequence.tokens.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "a sequence in the batch has no new tokens".into(),
                ));
            }
            for (offset, &token) in sequence.tokens.iter().enumerate() {
                let token = token as usize;
                if token >= config.vocab_size {
                    return Err(EngineError::InvalidRequest(format!(
                        "token id {token} is outside the vocabulary of {}",
                        config.vocab_size
                    )));
                }
                self.token_embedding.dequantize_row_into(token, &mut row);
                hidden.extend_from_slice(&row);
                token_meta.push((sequence_index, sequence.cache.len() + offset));
            }
        }
        let tokens = token_meta.len();
        let mut state = ForwardState::new(config, tokens);

        for (layer_index, layer) in self.layers.iter().enumerate() {
            rms_norm(
                &hidden,
                &layer.attention_norm,
                config.rms_norm_epsilon,
                &mut state.normed,
            );
            state.quantize_normed(d);
            let input = Activations {
                values: &state.normed,
                blocks: &state.blocks,
                columns: d,
            };
            matmul(
                self.kernel,
                &layer.query,
                &input,
                &mut state.scratch,
                &mut state.query,
            );
            matmul(
                self.kernel,
                &layer.key,
                &input,
                &mut state.scratch,
                &mut state.key,
            );
            matmul(
                self.kernel,
                &layer.value,
                &input,
                &mut state.scratch,
                &mut state.value,
            );
            for (token, &(_, position)) in token_meta.iter().enumerate() {
                self.rope(&mut state.query[token * d..(token + 1) * d], position);
                self.rope(
                    &mut state.key[token * kv_dim..(token + 1) * kv_dim],
                    position,
                );
            }
            for (token, &(sequence_index, _)) in token_meta.iter().enumerate() {
                sequences[sequence_index].cache.append(
                    layer_index,
                    &state.key[token * kv_dim..(token + 1) * kv_dim],
                    &state.value[token * kv_dim..(token + 1) * kv_dim],
                );
            }
            self.attention(layer_index, sequences, &token_meta, &mut state);
            quantize_rows(&state.attention, d, &mut state.blocks);
            let input = Activations {
                values: &state.attention,
                blocks: &state.blocks,
                columns: d,
            };
            matmul(
                self.kernel,
                &layer.attention_output,
                &input,
                &mut state.scratch,
                &mut state.projected,
            );
            add_in_place(&mut hidden, &state.projected);

            rms_norm(
                &hidden,
                &layer.ffn_norm,
                config.rms_norm_epsilon,
                &mut state.normed,
            );
            state.quantize_normed(d);
            let input = Activations {
                values: &state.normed,
                blocks: &state.blocks,
                columns: d,
            };
            matmul(
                self.kernel,
                &layer.gate,
                &input,
                &mut state.scratch,
                &mut state.gate,
            );
            matmul(
                self.kernel,
                &layer.up,
                &input,
                &mut state.scratch,
                &mut state.up,
            );
            for (gate, &up) in state.gate.iter_mut().zip(&state.up) {
                *gate = *gate / (1.0 + (-*gate).exp()) * up;
            }
            let ff = config.feed_forward_length;
            quantize_rows(&state.gate, ff, &mut state.blocks);
            let input = Activations {
                values: &state.gate,
                blocks: &state.blocks,
                columns: ff,
            };
            matmul(
                self.kernel,
                &layer.down,
                &input,
                &mut state.scratch,
                &mut state.projected,
            );
            add_in_place(&mut hidden, &state.projected);
        }
        let mut new_tokens = vec![0usize; sequences.len()];
        for &(sequence_index, _) in &token_meta {
            new_tokens[sequence_index] += 1;
        }
        for (sequence, &count) in sequences.iter_mut().zip(&new_tokens) {
            sequence.cache.commit(count);
        }

        // Only the last token of each sequence needs logits.
        let mut last_hidden = Vec::with_capacity(sequences.len() * d);
        let mut end = 0;
        for &count in &new_tokens {
            end += count;
            last_hidden.extend_from_slice(&hidden[(end - 1) * d..end * d]);
        }
        let mut normed = vec![0.0; last_hidden.len()];
        rms_norm(
            &last_hidden,
            &self.output_norm,
            config.rms_norm_epsilon,
            &mut normed,
        );
        let mut blocks = Vec::new();
        quantize_rows(&normed, d, &mut blocks);
        let mut logits = vec![0.0; sequences.len() * config.vocab_size];
        let input = Activations {
            values: &normed,
            blocks: &blocks,
            columns: d,
        };
        matmul(
            self.kernel,
            &self.output,
            &input,
            &mut state.scratch,
            &mut logits,
        );
        Ok(logits
            .chunks_exact(config.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Rotates adjacent pairs of every head by position-dependent angles (ggml's
    /// `rope_f32` in normal mode, computed the same way for numerical agreement).
    fn rope(&self, vector: &mut [f32], position: usize) {
        let config = &self.config;
        let theta_scale = config
            .rope_freq_base
            .powf(-2.0 / config.rope_dimension_count as f32);
        for head in vector.chunks_exact_mut(config.head_dim) {
            let mut theta = position as f32 * config.rope_freq_scale;
            for (pair, factor) in self.rope_frequency_factors.iter().enumerate() {
                let angle = theta / factor;
                let (sin, cos) = angle.sin_cos();
                let x0 = head[2 * pair];
                let x1 = head[2 * pair + 1];
                head[2 * pair] = x0 * cos - x1 * sin;
                head[2 * pair + 1] = x0 * sin + x1 * cos;
                theta *= theta_scale;
            }
        }
    }

    /// Causal grouped-query attention of every new token over its sequence's cache.
    fn attention(
        &self,
        layer: usize,
        sequences: &[SequenceInput<'_>],
        token_meta: &[(usize, usize)],
        state: &mut ForwardState,
    ) {
        let config = &self.config;
        let head_dim = config.head_dim;
        let heads = config.head_count;
        let group = heads / config.head_count_kv;
        let kv_dim = config.kv_dim();
        let scale = 1.0 / (head_dim as f32).sqrt();
        let query = &state.query;
        let kernel = self.kernel;
        state
            .attention
            .par_chunks_mut(head_dim)
            .enumerate()
            .for_each(|(index, output)| {
                let token = index / heads;
                let head = index % heads;
                let (sequence_index, position) = token_meta[token];
                let (keys, values) = sequences[sequence_index].cache.layer(layer);
                let kv_head = head / group;
                let q: Vec<f32> = query[index * head_dim..(index + 1) * head_dim]
                    .iter()
                    .map(|&x| f16::from_f32(x).to_f32())
                    .collect();
                let visible = position + 1;
                let mut scores = Vec::with_capacity(visible);
                for cached in 0..visible {
                    let key = &keys[cached * kv_dim + kv_head * head_dim..][..head_dim];
                    let dot = kernel.dot_f16_f32(key, &q);
                    scores.push(dot * scale);
                }
                let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut total = 0.0f64;
                for score in &mut scores {
                    *score = (*score - max).exp();
                    total += f64::from(*score);
                }
                let inverse = (1.0 / total) as f32;
                output.fill(0.0);
                for (cached, &weight) in scores.iter().enumerate() {
                    let value = &values[cached * kv_dim + kv_head * head_dim..][..head_dim];
                    // llama.cpp multiplies the f16 V cache by f16-converted probabilities.
                    let weight = f16::from_f32(weight * inverse).to_f32();
                    kernel.add_scaled_f16(output, weight, value);
                }
            });
    }
}

/// Buffers reused across the layers of one forward pass.
struct ForwardState {
    normed: Vec<f32>,
    blocks: Vec<ActivationBlock>,
    query: Vec<f32>,
    key: Vec<f32>,
    value: Vec<f32>,
    attention: Vec<f32>,
    projected: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    scratch: MatmulScratch,
}

impl ForwardState {
    fn new(config: &LlamaConfig, tokens: usize) -> ForwardState {
        let d = config.embedding_length;
        let kv = config.kv_dim();
        let ff = config.feed_forward_length;
        ForwardState {
            normed: vec![0.0; tokens * d],
            blocks: Vec::new(),
            query: vec![0.0; tokens * d],
            key: vec![0.0; tokens * kv],
            value: vec![0.0; tokens * kv],
            attention: vec![0.0; tokens * d],
            projected: vec![0.0; tokens * d],
            gate: vec![0.0; tokens * ff],
            up: vec![0.0; tokens * ff],
            scratch: MatmulScratch::default(),
        }
    }

    fn quantize_normed(&mut self, columns: usize) {
        quantize_rows(&self.normed, columns, &mut self.blocks);
    }
}

fn quantize_rows(values: &[f32], columns: usize, blocks: &mut Vec<ActivationBlock>) {
    blocks.clear();
    let mut row_blocks = Vec::new();
    for row in values.chunks_exact(columns) {
        if columns.is_multiple_of(crate::kernels::BLOCK) {
            quantize_activations(row, &mut row_blocks);
            blocks.extend_from_slice(&row_blocks);
        }
    }
}

/// RMSNorm per token, accumulating the sum of squares in f64 as ggml does.
fn rms_norm(input: &[f32], weight: &[f32], epsilon: f32, output: &mut [f32]) {
    let d = weight.len();
    for (row, out) in input.chunks_exact(d).zip(output.chunks_exact_mut(d)) {
        let sum: f64 = row.iter().map(|&x| f64::from(x * x)).sum();
        let mean = (sum / d as f64) as f32;
        let scale = 1.0 / (mean + epsilon).sqrt();
        for ((o, &x), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = x * scale * w;
        }
    }
}

fn add_in_place(target: &mut [f32], addend: &[f32]) {
    for (t, a) in target.iter_mut().zip(addend) {
        *t += a;
    }
}
