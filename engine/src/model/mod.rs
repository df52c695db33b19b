//! The decoder (llama.cpp's `LLM_ARCH_LLAMA` graph and its relatives Qwen2, Gemma 3 and
//! Phi-3): token embedding, `block_count` × (RMSNorm → attention with RoPE and grouped-query
//! heads → residual → RMSNorm → gated MLP → residual), final RMSNorm, tied or separate
//! output head. What differs between families is data in [`LlamaConfig`] (rope style,
//! activation, scales, sliding window) and optional per-layer tensors (biases, q/k norms,
//! post-norms, fused projections), so there is one forward pass, not one per family.
//!
//! Weights stay quantized in the mapped file; activations, norms and attention run in
//! f32, with the KV cache in f16. Several sequences are batched through one forward pass
//! so every weight row is read once per step, not once per sequence.

mod config;
#[cfg(test)]
mod family_tests;
mod kv_cache;
mod layer;
mod ops;
mod weights;

use std::sync::Arc;

use flotilla_gguf::GgufFile;
use half::f16;
use rayon::prelude::*;

pub use config::{Activation, Family, LlamaConfig, RopeStyle};
pub use kv_cache::KvCache;
pub use weights::Matrix;

use crate::EngineError;
use crate::kernels::{ActivationBlock, KernelImpl, quantize_activations};
use layer::with_architecture;
pub(crate) use layer::{GateUpProjection, Layer, QkvProjection};
use ops::{Rope, add_bias, add_in_place, gated_activation, rms_norm, rms_norm_in_place, soft_cap};
use weights::{Activations, MatmulScratch, matmul};

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

/// What [`LlamaModel::decode`] leaves for the head: the residual stream of every new
/// token, how many new tokens each sequence had, and the scratch buffers to reuse.
struct Decoded {
    hidden: Vec<f32>,
    new_tokens: Vec<usize>,
    state: ForwardState,
}

/// The tokens one sequence contributes to a forward pass.
pub struct SequenceInput<'a> {
    pub cache: &'a mut KvCache,
    /// New tokens; their positions continue from `cache.len()`.
    pub tokens: &'a [u32],
}

/// Token `token`'s embedding row into `row` (scaled where the family scales it, as
/// Gemma does): the first step of every forward pass, on the CPU and on a device.
pub(crate) fn embed_token(
    config: &LlamaConfig,
    embedding: &Matrix,
    token: u32,
    row: &mut [f32],
) -> Result<(), EngineError> {
    let token = token as usize;
    if token >= config.vocab_size {
        return Err(EngineError::InvalidRequest(format!(
            "token id {token} is outside the vocabulary of {}",
            config.vocab_size
        )));
    }
    embedding.dequantize_row_into(token, row);
    if let Some(scale) = config.embedding_scale {
        row.iter_mut().for_each(|x| *x *= scale);
    }
    Ok(())
}

impl LlamaModel {
    /// Builds the model from an opened GGUF file, or says why this engine cannot serve it
    /// (architecture, missing tensor or unsupported type named).
    pub fn load(file: Arc<GgufFile>) -> Result<LlamaModel, EngineError> {
        let config = LlamaConfig::from_header(file.header())?;
        let architecture = config.architecture.clone();
        let context = with_architecture(&architecture);
        let d = config.embedding_length;
        let vector = |name: &str| Matrix::load(&file, name, d, 1).map(|matrix| matrix.to_vec());
        let token_embedding =
            Matrix::load(&file, "token_embd.weight", d, config.vocab_size).map_err(&context)?;
        for unsupported in [
            "rope_factors_long.weight",
            "output.bias",
            "output_norm.bias",
        ] {
            if file.header().tensor(unsupported).is_some() {
                return Err(context(EngineError::Unsupported(format!(
                    "tensor {unsupported} is not implemented"
                ))));
            }
        }
        // Grown one layer at a time: `block_count` comes from the file and is only trusted once
        // every layer's tensors have been found.
        let mut layers = Vec::new();
        for index in 0..config.block_count {
            layers.push(Layer::load(&file, &config, index).map_err(&context)?);
        }
        let tied_output = file.header().tensor("output.weight").is_none();
        let output = match file.header().tensor("output.weight") {
            Some(_) => {
                Matrix::load(&file, "output.weight", d, config.vocab_size).map_err(&context)?
            }
            None => token_embedding.clone(),
        };
        let pairs = config.rope_dimension_count / 2;
        let rope_frequency_factors = match file.header().tensor("rope_freqs.weight") {
            Some(_) => Matrix::load(&file, "rope_freqs.weight", pairs, 1)
                .map_err(&context)?
                .to_vec(),
            None => vec![1.0; pairs],
        };
        Ok(LlamaModel {
            output_norm: vector("output_norm.weight").map_err(&context)?,
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

    /// The decoder layers, for other executors of the same graph (the device graph).
    pub(crate) fn layers(&self) -> &[Layer] {
        &self.layers
    }

    pub(crate) fn token_embedding(&self) -> &Matrix {
        &self.token_embedding
    }

    /// The output head (the token embedding itself when the file ties them).
    pub(crate) fn output(&self) -> &Matrix {
        &self.output
    }

    pub(crate) fn output_norm(&self) -> &[f32] {
        &self.output_norm
    }

    /// Per-pair divisors of the RoPE angle (ones unless the file has `rope_freqs`).
    pub(crate) fn rope_frequency_factors(&self) -> &[f32] {
        &self.rope_frequency_factors
    }

    /// Uses a specific kernel implementation (tests compare scalar and SIMD).
    pub fn with_kernel(mut self, kernel: KernelImpl) -> LlamaModel {
        self.kernel = kernel;
        self
    }

    /// The kernel implementation the forward pass uses.
    pub fn kernel(&self) -> KernelImpl {
        self.kernel
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
        let layers: usize = self.layers.iter().map(Layer::byte_size).sum();
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
        let epsilon = config.rms_norm_epsilon;
        let Decoded {
            hidden,
            new_tokens,
            mut state,
        } = self.decode(sequences)?;

        // Only the last token of each sequence needs logits.
        let mut last_hidden = Vec::with_capacity(sequences.len() * d);
        let mut end = 0;
        for &count in &new_tokens {
            end += count;
            last_hidden.extend_from_slice(&hidden[(end - 1) * d..end * d]);
        }
        let mut normed = vec![0.0; last_hidden.len()];
        rms_norm(&last_hidden, &self.output_norm, epsilon, &mut normed);
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
        if let Some(cap) = config.final_logit_softcap {
            soft_cap(&mut logits, cap);
        }
        Ok(logits
            .chunks_exact(config.vocab_size)
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// Runs the new tokens of every sequence through the decoder like [`Self::forward`],
    /// but returns, per sequence, the hidden state of every new token after the output
    /// norm (llama.cpp's `result_norm`, what its embeddings pool), row after row
    /// (`tokens × embedding_length`), instead of the logits. The output head is not run.
    pub fn forward_hidden(
        &self,
        sequences: &mut [SequenceInput<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let d = self.config.embedding_length;
        let Decoded {
            hidden, new_tokens, ..
        } = self.decode(sequences)?;
        let mut normed = vec![0.0; hidden.len()];
        rms_norm(
            &hidden,
            &self.output_norm,
            self.config.rms_norm_epsilon,
            &mut normed,
        );
        let mut rows = Vec::with_capacity(new_tokens.len());
        let mut start = 0;
        for count in new_tokens {
            rows.push(normed[start * d..(start + count) * d].to_vec());
            start += count;
        }
        Ok(rows)
    }

    /// The layer loop shared by [`Self::forward`] and [`Self::forward_hidden`]: embeds
    /// the new tokens, runs every layer, appends to and commits the caches, and returns
    /// the residual stream of every new token (before the output norm), in batch order.
    fn decode(&self, sequences: &mut [SequenceInput<'_>]) -> Result<Decoded, EngineError> {
        let config = &self.config;
        let d = config.embedding_length;
        let q_dim = config.query_dim();
        let kv_dim = config.kv_dim();
        let ff = config.feed_forward_length;
        let mut token_meta = Vec::new(); // (sequence index, position)
        let mut hidden = Vec::new();
        let mut row = vec![0.0f32; d];
        for (sequence_index, sequence) in sequences.iter().enumerate() {
            if sequence.tokens.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "a sequence in the batch has no new tokens".into(),
                ));
            }
            if !sequence.cache.is_on_host() {
                return Err(EngineError::InvalidRequest(
                    "a device cache cannot be decoded by the CPU kernels".into(),
                ));
            }
            for (offset, &token) in sequence.tokens.iter().enumerate() {
                embed_token(config, &self.token_embedding, token, &mut row)?;
                hidden.extend_from_slice(&row);
                token_meta.push((sequence_index, sequence.cache.len() + offset));
            }
        }
        let tokens = token_meta.len();
        let mut state = ForwardState::new(config, tokens);
        let epsilon = config.rms_norm_epsilon;

        for (layer_index, layer) in self.layers.iter().enumerate() {
            rms_norm(&hidden, &layer.attention_norm, epsilon, &mut state.normed);
            state.quantize_normed(d);
            let input = Activations {
                values: &state.normed,
                blocks: &state.blocks,
                columns: d,
            };
            match &layer.qkv {
                QkvProjection::Separate { query, key, value } => {
                    matmul(
                        self.kernel,
                        query,
                        &input,
                        &mut state.scratch,
                        &mut state.query,
                    );
                    matmul(self.kernel, key, &input, &mut state.scratch, &mut state.key);
                    matmul(
                        self.kernel,
                        value,
                        &input,
                        &mut state.scratch,
                        &mut state.value,
                    );
                }
                QkvProjection::Fused(fused) => {
                    let width = q_dim + 2 * kv_dim;
                    state.fused.resize(tokens * width, 0.0);
                    matmul(
                        self.kernel,
                        fused,
                        &input,
                        &mut state.scratch,
                        &mut state.fused,
                    );
                    for (token, row) in state.fused.chunks_exact(width).enumerate() {
                        state.query[token * q_dim..][..q_dim].copy_from_slice(&row[..q_dim]);
                        state.key[token * kv_dim..][..kv_dim]
                            .copy_from_slice(&row[q_dim..q_dim + kv_dim]);
                        state.value[token * kv_dim..][..kv_dim]
                            .copy_from_slice(&row[q_dim + kv_dim..]);
                    }
                }
            }
            for (values, bias) in [
                (&mut state.query, &layer.query_bias),
                (&mut state.key, &layer.key_bias),
                (&mut state.value, &layer.value_bias),
            ] {
                if let Some(bias) = bias {
                    add_bias(values, bias);
                }
            }
            if let Some(norm) = &layer.query_norm {
                rms_norm_in_place(&mut state.query, norm, epsilon);
            }
            if let Some(norm) = &layer.key_norm {
                rms_norm_in_place(&mut state.key, norm, epsilon);
            }
            let (freq_base, freq_scale) = config.layer_rope(layer_index);
            let rope = Rope {
                style: config.rope_style,
                dimensions: config.rope_dimension_count,
                head_dim: config.head_dim,
                freq_base,
                freq_scale,
                factors: &self.rope_frequency_factors,
            };
            for (token, &(_, position)) in token_meta.iter().enumerate() {
                rope.apply(
                    &mut state.query[token * q_dim..(token + 1) * q_dim],
                    position,
                );
                rope.apply(
                    &mut state.key[token * kv_dim..(token + 1) * kv_dim],
                    position,
                );
            }
            if config.scale_query {
                state
                    .query
                    .iter_mut()
                    .for_each(|x| *x *= config.attention_scale);
            }
            for (token, &(sequence_index, _)) in token_meta.iter().enumerate() {
                sequences[sequence_index].cache.append(
                    layer_index,
                    &state.key[token * kv_dim..(token + 1) * kv_dim],
                    &state.value[token * kv_dim..(token + 1) * kv_dim],
                );
            }
            self.attention(layer_index, sequences, &token_meta, &mut state);
            quantize_rows(&state.attention, q_dim, &mut state.blocks);
            let input = Activations {
                values: &state.attention,
                blocks: &state.blocks,
                columns: q_dim,
            };
            matmul(
                self.kernel,
                &layer.attention_output,
                &input,
                &mut state.scratch,
                &mut state.projected,
            );
            if let Some(norm) = &layer.post_attention_norm {
                rms_norm_in_place(&mut state.projected, norm, epsilon);
            }
            add_in_place(&mut hidden, &state.projected);

            rms_norm(&hidden, &layer.ffn_norm, epsilon, &mut state.normed);
            state.quantize_normed(d);
            let input = Activations {
                values: &state.normed,
                blocks: &state.blocks,
                columns: d,
            };
            match &layer.gate_up {
                GateUpProjection::Separate { gate, up } => {
                    matmul(
                        self.kernel,
                        gate,
                        &input,
                        &mut state.scratch,
                        &mut state.gate,
                    );
                    matmul(self.kernel, up, &input, &mut state.scratch, &mut state.up);
                }
                GateUpProjection::Fused(fused) => {
                    state.fused.resize(tokens * 2 * ff, 0.0);
                    matmul(
                        self.kernel,
                        fused,
                        &input,
                        &mut state.scratch,
                        &mut state.fused,
                    );
                    for (token, row) in state.fused.chunks_exact(2 * ff).enumerate() {
                        state.gate[token * ff..][..ff].copy_from_slice(&row[..ff]);
                        state.up[token * ff..][..ff].copy_from_slice(&row[ff..]);
                    }
                }
            }
            gated_activation(config.activation, &mut state.gate, &state.up);
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
            if let Some(norm) = &layer.post_ffn_norm {
                rms_norm_in_place(&mut state.projected, norm, epsilon);
            }
            add_in_place(&mut hidden, &state.projected);
        }
        let mut new_tokens = vec![0usize; sequences.len()];
        for &(sequence_index, _) in &token_meta {
            new_tokens[sequence_index] += 1;
        }
        for (sequence, &count) in sequences.iter_mut().zip(&new_tokens) {
            sequence.cache.commit(count);
        }
        Ok(Decoded {
            hidden,
            new_tokens,
            state,
        })
    }

    /// Causal grouped-query attention of every new token over its sequence's cache (the
    /// last `sliding_window` positions only, on sliding-window layers).
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
        // Gemma and Phi-3 scaled the query already.
        let scale = if config.scale_query {
            1.0
        } else {
            config.attention_scale
        };
        let window = config.sliding_window.filter(|_| config.is_sliding(layer));
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
                let visible_end = position + 1;
                // llama.cpp masks a cached position when it is `window` or more behind.
                let visible_start = window.map_or(0, |window| visible_end.saturating_sub(window));
                let mut scores = Vec::with_capacity(visible_end - visible_start);
                for cached in visible_start..visible_end {
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
                for (offset, &weight) in scores.iter().enumerate() {
                    let cached = visible_start + offset;
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
    /// Output of a fused projection (Phi-3) before it is split.
    fused: Vec<f32>,
    scratch: MatmulScratch,
}

impl ForwardState {
    fn new(config: &LlamaConfig, tokens: usize) -> ForwardState {
        let d = config.embedding_length;
        let q = config.query_dim();
        let kv = config.kv_dim();
        let ff = config.feed_forward_length;
        ForwardState {
            normed: vec![0.0; tokens * d],
            blocks: Vec::new(),
            query: vec![0.0; tokens * q],
            key: vec![0.0; tokens * kv],
            value: vec![0.0; tokens * kv],
            attention: vec![0.0; tokens * q],
            projected: vec![0.0; tokens * d],
            gate: vec![0.0; tokens * ff],
            up: vec![0.0; tokens * ff],
            fused: Vec::new(),
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
