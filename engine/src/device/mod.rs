//! The decoder on a burn device (feature `burn`; feature `gpu` adds burn's wgpu backend,
//! so Vulkan, Metal and DX12 GPUs): the same graph as [`crate::model`], for every family
//! it serves, with a device-resident KV cache and the same batched forward contract, so
//! the [`crate::Scheduler`] drives it exactly as it drives the CPU kernels.
//!
//! What stays on the host: the token embedding lookup (one row per new token, read from
//! the mapped file), the RoPE angle tables and attention masks (small, built per pass),
//! and the logits, read back once per pass. Everything else (weights, activations, keys
//! and values) is device memory. Weights stay quantized there (see [`matrix`]).
//!
//! Numerics: activations, attention and the KV cache are f32 here, where the CPU path
//! quantizes activations to 8 bits and keeps K/V in f16 as llama.cpp does; the two agree
//! to the tolerance the parity tests state, not bit for bit.
//!
//! On the `flex` backend (burn's pure-Rust CPU) the graph runs without a GPU, which is
//! how its tests check it everywhere; `tests/gpu.rs` checks it on a real wgpu adapter
//! (Mesa's lavapipe in CI).

#[cfg(feature = "gpu")]
mod kernel;
mod matrix;
mod select;

use burn::tensor::activation::{gelu_approximate, silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::EngineError;
use crate::model::{
    Activation, GateUpProjection, KvCache, LlamaConfig, LlamaModel, QkvProjection, RopeStyle,
    SequenceInput,
};
use matrix::DeviceMatrix;
#[cfg(feature = "gpu")]
pub(crate) use select::wgpu_adapters;
pub(crate) use select::{guarded, place, upload};

/// Positions a new device cache has room for before it grows (it doubles).
const INITIAL_CACHE_POSITIONS: usize = 256;

/// A 1-D weight as a `[1, length]` row that broadcasts over tokens.
fn row(values: &[f32], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
}

fn optional_row(values: &Option<Vec<f32>>, device: &Device) -> Option<Tensor<2>> {
    values.as_deref().map(|values| row(values, device))
}

enum Projections {
    Separate(Vec<DeviceMatrix>),
    /// One matrix whose output columns are the parts side by side, with their widths.
    Fused(DeviceMatrix, Vec<usize>),
}

impl Projections {
    /// The parts' outputs, `[tokens, width]` each.
    fn apply(&self, input: Tensor<2>) -> Vec<Tensor<2>> {
        match self {
            Projections::Separate(matrices) => matrices
                .iter()
                .map(|matrix| matrix.apply(input.clone()))
                .collect(),
            Projections::Fused(matrix, widths) => {
                let output = matrix.apply(input);
                let mut start = 0;
                widths
                    .iter()
                    .map(|&width| {
                        let part = output.clone().narrow(1, start, width);
                        start += width;
                        part
                    })
                    .collect()
            }
        }
    }

    fn byte_size(&self) -> usize {
        match self {
            Projections::Separate(matrices) => matrices.iter().map(DeviceMatrix::byte_size).sum(),
            Projections::Fused(matrix, _) => matrix.byte_size(),
        }
    }
}

struct DeviceLayer {
    attention_norm: Tensor<2>,
    /// Query, key and value.
    qkv: Projections,
    biases: [Option<Tensor<2>>; 3],
    query_norm: Option<Tensor<2>>,
    key_norm: Option<Tensor<2>>,
    attention_output: DeviceMatrix,
    post_attention_norm: Option<Tensor<2>>,
    ffn_norm: Tensor<2>,
    /// Gate and up.
    gate_up: Projections,
    down: DeviceMatrix,
    post_ffn_norm: Option<Tensor<2>>,
}

/// A model's weights on a burn device, ready to decode.
pub struct DeviceModel {
    device: Device,
    description: String,
    config: LlamaConfig,
    token_embedding: crate::model::Matrix,
    layers: Vec<DeviceLayer>,
    output_norm: Tensor<2>,
    output: DeviceMatrix,
    rope_frequency_factors: Vec<f32>,
    weight_bytes: usize,
}

impl std::fmt::Debug for DeviceModel {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DeviceModel")
            .field("device", &self.description)
            .field("weight_bytes", &self.weight_bytes)
            .finish_non_exhaustive()
    }
}

/// Keys and values of one sequence in device memory: per layer, `[capacity, kv_dim]`
/// each, of which the first `KvCache::len()` positions are valid.
#[derive(Clone)]
pub(crate) struct DeviceCache {
    /// `None` only while a layer's entry is being replaced (so the update can run in
    /// place: the backend writes into a buffer nothing else holds).
    layers: Vec<Option<(Tensor<2>, Tensor<2>)>>,
    capacity: usize,
    kv_dim: usize,
}

impl std::fmt::Debug for DeviceCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DeviceCache")
            .field("capacity", &self.capacity)
            .field("kv_dim", &self.kv_dim)
            .finish()
    }
}

impl DeviceCache {
    pub(crate) fn byte_size(&self) -> usize {
        self.layers.len() * 2 * self.capacity * self.kv_dim * 4
    }

    /// Grows every layer (doubling) so that `positions` fit.
    fn reserve(&mut self, positions: usize, device: &Device) {
        if positions <= self.capacity {
            return;
        }
        let capacity = positions.next_power_of_two().max(INITIAL_CACHE_POSITIONS);
        let extra = capacity - self.capacity;
        let kv_dim = self.kv_dim;
        for entry in &mut self.layers {
            let grow = |tensor: Option<Tensor<2>>| {
                let zeros = Tensor::<2>::zeros([extra, kv_dim], device);
                match tensor {
                    Some(tensor) => Tensor::cat(vec![tensor, zeros], 0),
                    None => zeros,
                }
            };
            let (keys, values) = entry
                .take()
                .map_or((None, None), |(k, v)| (Some(k), Some(v)));
            *entry = Some((grow(keys), grow(values)));
        }
        self.capacity = capacity;
    }

    /// Writes `keys` and `values` (`[tokens, kv_dim]`) of `layer` at `position`, and
    /// returns the layer's first `position + tokens` keys and values.
    fn store(
        &mut self,
        layer: usize,
        position: usize,
        keys: Tensor<2>,
        values: Tensor<2>,
    ) -> Result<(Tensor<2>, Tensor<2>), EngineError> {
        let tokens = keys.dims()[0];
        let end = position + tokens;
        let (cached_keys, cached_values) = self.layers[layer].take().ok_or_else(|| {
            EngineError::InvalidRequest("a device cache was left half-written".into())
        })?;
        let cached_keys = cached_keys.slice_assign([position..end, 0..self.kv_dim], keys);
        let cached_values = cached_values.slice_assign([position..end, 0..self.kv_dim], values);
        let visible = (
            cached_keys.clone().narrow(0, 0, end),
            cached_values.clone().narrow(0, 0, end),
        );
        self.layers[layer] = Some((cached_keys, cached_values));
        Ok(visible)
    }
}

impl DeviceModel {
    /// Uploads every weight of `model` to `device` (`description` names it in reports).
    pub(crate) fn upload(
        model: &LlamaModel,
        device: Device,
        description: String,
    ) -> Result<DeviceModel, EngineError> {
        let config = model.config().clone();
        let q_dim = config.query_dim();
        let kv_dim = config.kv_dim();
        let ff = config.feed_forward_length;
        let upload = |matrix: &crate::model::Matrix| DeviceMatrix::upload(matrix, &device);
        let layers: Vec<DeviceLayer> = model
            .layers()
            .iter()
            .map(|layer| DeviceLayer {
                attention_norm: row(&layer.attention_norm, &device),
                qkv: match &layer.qkv {
                    QkvProjection::Separate { query, key, value } => {
                        Projections::Separate(vec![upload(query), upload(key), upload(value)])
                    }
                    QkvProjection::Fused(fused) => {
                        Projections::Fused(upload(fused), vec![q_dim, kv_dim, kv_dim])
                    }
                },
                biases: [
                    optional_row(&layer.query_bias, &device),
                    optional_row(&layer.key_bias, &device),
                    optional_row(&layer.value_bias, &device),
                ],
                query_norm: optional_row(&layer.query_norm, &device),
                key_norm: optional_row(&layer.key_norm, &device),
                attention_output: upload(&layer.attention_output),
                post_attention_norm: optional_row(&layer.post_attention_norm, &device),
                ffn_norm: row(&layer.ffn_norm, &device),
                gate_up: match &layer.gate_up {
                    GateUpProjection::Separate { gate, up } => {
                        Projections::Separate(vec![upload(gate), upload(up)])
                    }
                    GateUpProjection::Fused(fused) => {
                        Projections::Fused(upload(fused), vec![ff, ff])
                    }
                },
                down: upload(&layer.down),
                post_ffn_norm: optional_row(&layer.post_ffn_norm, &device),
            })
            .collect();
        let output = upload(model.output());
        let weight_bytes = layers
            .iter()
            .map(|layer| {
                layer.qkv.byte_size()
                    + layer.attention_output.byte_size()
                    + layer.gate_up.byte_size()
                    + layer.down.byte_size()
            })
            .sum::<usize>()
            + output.byte_size();
        Ok(DeviceModel {
            output_norm: row(model.output_norm(), &device),
            token_embedding: model.token_embedding().clone(),
            rope_frequency_factors: model.rope_frequency_factors().to_vec(),
            layers,
            output,
            config,
            device,
            description,
            weight_bytes,
        })
    }

    /// The device, as reports name it ("Vulkan llvmpipe (LLVM 15.0.6, 256 bits)").
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Device bytes the weights occupy.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// An empty cache for one sequence, in this device's memory.
    pub(crate) fn new_cache(&self) -> KvCache {
        KvCache::on_device(DeviceCache {
            layers: vec![None; self.config.block_count],
            capacity: 0,
            kv_dim: self.config.kv_dim(),
        })
    }

    /// As [`LlamaModel::forward`]: the logits after each sequence's last new token.
    pub(crate) fn forward(
        &self,
        sequences: &mut [SequenceInput<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let (hidden, new_tokens) = self.decode(sequences)?;
        let mut end = 0;
        let last: Vec<Tensor<2>> = new_tokens
            .iter()
            .map(|&count| {
                end += count;
                hidden.clone().narrow(0, end - 1, 1)
            })
            .collect();
        let normed = self.rms_norm(Tensor::cat(last, 0), &self.output_norm);
        let mut logits = self.output.apply(normed);
        if let Some(cap) = self.config.final_logit_softcap {
            logits = logits.div_scalar(cap).tanh().mul_scalar(cap);
        }
        let values = read(logits)?;
        Ok(values
            .chunks_exact(self.output.rows())
            .map(<[f32]>::to_vec)
            .collect())
    }

    /// As [`LlamaModel::forward_hidden`]: every new token's hidden state after the
    /// output norm, per sequence.
    pub(crate) fn forward_hidden(
        &self,
        sequences: &mut [SequenceInput<'_>],
    ) -> Result<Vec<Vec<f32>>, EngineError> {
        let d = self.config.embedding_length;
        let (hidden, new_tokens) = self.decode(sequences)?;
        let values = read(self.rms_norm(hidden, &self.output_norm))?;
        let mut start = 0;
        Ok(new_tokens
            .into_iter()
            .map(|count| {
                let rows = values[start * d..(start + count) * d].to_vec();
                start += count;
                rows
            })
            .collect())
    }

    /// Embeds the new tokens, runs every layer (storing keys and values in the caches)
    /// and commits the caches; returns the residual stream of every new token and how
    /// many each sequence had.
    fn decode(
        &self,
        sequences: &mut [SequenceInput<'_>],
    ) -> Result<(Tensor<2>, Vec<usize>), EngineError> {
        let config = &self.config;
        let d = config.embedding_length;
        let mut embedded = Vec::new();
        let mut positions = Vec::new();
        let mut row = vec![0.0f32; d];
        for sequence in sequences.iter_mut() {
            if sequence.tokens.is_empty() {
                return Err(EngineError::InvalidRequest(
                    "a sequence in the batch has no new tokens".into(),
                ));
            }
            let start = sequence.cache.len();
            let cache = sequence.cache.device.as_mut().ok_or_else(|| {
                EngineError::InvalidRequest("a host cache cannot be decoded on the device".into())
            })?;
            cache.reserve(start + sequence.tokens.len(), &self.device);
            for (offset, &token) in sequence.tokens.iter().enumerate() {
                crate::model::embed_token(config, &self.token_embedding, token, &mut row)?;
                embedded.extend_from_slice(&row);
                positions.push(start + offset);
            }
        }
        let tokens = positions.len();
        let mut hidden =
            Tensor::<2>::from_data(TensorData::new(embedded, [tokens, d]), &self.device);
        let masks: Vec<[Tensor<3>; 2]> = sequences
            .iter()
            .map(|sequence| {
                let start = sequence.cache.len();
                let window = config.sliding_window;
                [
                    self.mask(start, sequence.tokens.len(), None),
                    self.mask(start, sequence.tokens.len(), window),
                ]
            })
            .collect();
        for (index, layer) in self.layers.iter().enumerate() {
            let normed = self.rms_norm(hidden.clone(), &layer.attention_norm);
            let mut parts = layer.qkv.apply(normed).into_iter();
            let mut next = || parts.next().expect("three projections");
            let [mut query, mut key, mut value] = [next(), next(), next()];
            for (part, bias) in [&mut query, &mut key, &mut value]
                .into_iter()
                .zip(&layer.biases)
            {
                if let Some(bias) = bias {
                    *part = part.clone() + bias.clone();
                }
            }
            let query = self.rope_heads(
                query,
                config.head_count,
                layer.query_norm.as_ref(),
                index,
                &positions,
            );
            let key = self.rope_heads(
                key,
                config.head_count_kv,
                layer.key_norm.as_ref(),
                index,
                &positions,
            );
            let query = if config.scale_query {
                query.mul_scalar(config.attention_scale)
            } else {
                query
            };
            let sliding = config.sliding_window.is_some() && config.is_sliding(index);
            let mut attended = Vec::with_capacity(sequences.len());
            let mut first = 0;
            for (sequence, masks) in sequences.iter_mut().zip(&masks) {
                let count = sequence.tokens.len();
                let position = sequence.cache.len();
                let cache = sequence
                    .cache
                    .device
                    .as_mut()
                    .expect("checked to be a device cache above");
                let (keys, values) = cache.store(
                    index,
                    position,
                    key.clone()
                        .narrow(0, first, count)
                        .reshape([count, config.kv_dim()]),
                    value.clone().narrow(0, first, count),
                )?;
                attended.push(self.attention(
                    query.clone().narrow(0, first, count),
                    keys,
                    values,
                    &masks[usize::from(sliding)],
                ));
                first += count;
            }
            let mut projected = layer.attention_output.apply(Tensor::cat(attended, 0));
            if let Some(norm) = &layer.post_attention_norm {
                projected = self.rms_norm(projected, norm);
            }
            hidden = hidden + projected;

            let normed = self.rms_norm(hidden.clone(), &layer.ffn_norm);
            let mut parts = layer.gate_up.apply(normed).into_iter();
            let mut next = || parts.next().expect("two projections");
            let [gate, up] = [next(), next()];
            let gate = match config.activation {
                Activation::Silu => silu(gate),
                Activation::GeluTanh => gelu_approximate(gate),
            };
            let mut projected = layer.down.apply(gate * up);
            if let Some(norm) = &layer.post_ffn_norm {
                projected = self.rms_norm(projected, norm);
            }
            hidden = hidden + projected;
        }
        let new_tokens: Vec<usize> = sequences.iter().map(|s| s.tokens.len()).collect();
        for (sequence, &count) in sequences.iter_mut().zip(&new_tokens) {
            sequence.cache.commit(count);
        }
        Ok((hidden, new_tokens))
    }

    fn rms_norm<const D: usize>(&self, input: Tensor<D>, weight: &Tensor<2>) -> Tensor<D> {
        let last = D - 1;
        let scale = input
            .clone()
            .powi_scalar(2)
            .mean_dim(last)
            .add_scalar(self.config.rms_norm_epsilon)
            .sqrt()
            .recip();
        let width = weight.dims()[1];
        let mut shape = [1usize; D];
        shape[last] = width;
        input * scale * weight.clone().reshape(shape)
    }

    /// `[tokens, heads · head_dim]` to `[tokens, heads, head_dim]`, per-head RMS-normed
    /// when the layer has such a norm (Gemma 3), then rotated by RoPE.
    fn rope_heads(
        &self,
        input: Tensor<2>,
        heads: usize,
        norm: Option<&Tensor<2>>,
        layer: usize,
        positions: &[usize],
    ) -> Tensor<3> {
        let config = &self.config;
        let tokens = positions.len();
        let head_dim = config.head_dim;
        let mut heads_view = input.reshape([tokens, heads, head_dim]);
        if let Some(norm) = norm {
            heads_view = self.rms_norm(heads_view, norm);
        }
        let dimensions = config.rope_dimension_count;
        let pairs = dimensions / 2;
        let (freq_base, freq_scale) = config.layer_rope(layer);
        // ggml's angle for pair i: freq_scale · (position · base^(−2i/n) / factor_i).
        let theta_scale = freq_base.powf(-2.0 / dimensions as f32);
        let mut cos = Vec::with_capacity(tokens * pairs);
        let mut sin = Vec::with_capacity(tokens * pairs);
        for &position in positions {
            let mut theta = position as f32;
            for pair in 0..pairs {
                let factor = self
                    .rope_frequency_factors
                    .get(pair)
                    .copied()
                    .unwrap_or(1.0);
                let (s, c) = (freq_scale * (theta / factor)).sin_cos();
                sin.push(s);
                cos.push(c);
                theta *= theta_scale;
            }
        }
        let table = |values| {
            Tensor::<3>::from_data(TensorData::new(values, [tokens, 1, pairs]), &self.device)
        };
        let (cos, sin) = (table(cos), table(sin));
        let rotated = heads_view.clone().narrow(2, 0, dimensions);
        let (first, second) = match config.rope_style {
            RopeStyle::HalfSplit => (
                rotated.clone().narrow(2, 0, pairs),
                rotated.narrow(2, pairs, pairs),
            ),
            RopeStyle::Adjacent => {
                let interleaved = rotated.reshape([tokens, heads, pairs, 2]);
                (
                    interleaved
                        .clone()
                        .narrow(3, 0, 1)
                        .reshape([tokens, heads, pairs]),
                    interleaved.narrow(3, 1, 1).reshape([tokens, heads, pairs]),
                )
            }
        };
        let new_first = first.clone() * cos.clone() - second.clone() * sin.clone();
        let new_second = first * sin + second * cos;
        let rotated = match config.rope_style {
            RopeStyle::HalfSplit => Tensor::cat(vec![new_first, new_second], 2),
            RopeStyle::Adjacent => Tensor::cat(
                vec![
                    new_first.reshape([tokens, heads, pairs, 1]),
                    new_second.reshape([tokens, heads, pairs, 1]),
                ],
                3,
            )
            .reshape([tokens, heads, dimensions]),
        };
        if dimensions == head_dim {
            rotated
        } else {
            let kept = heads_view.narrow(2, dimensions, head_dim - dimensions);
            Tensor::cat(vec![rotated, kept], 2)
        }
    }

    /// `[1, tokens, start + tokens]`: 0 where new token `i` (at `start + i`) may see a
    /// cached position, −∞ where it may not (later, or `window` or more behind).
    fn mask(&self, start: usize, tokens: usize, window: Option<usize>) -> Tensor<3> {
        let total = start + tokens;
        let mut values = vec![0.0f32; tokens * total];
        for (index, row) in values.chunks_exact_mut(total).enumerate() {
            let position = start + index;
            let visible_start = window.map_or(0, |window| (position + 1).saturating_sub(window));
            for (cached, value) in row.iter_mut().enumerate() {
                if cached > position || cached < visible_start {
                    *value = f32::NEG_INFINITY;
                }
            }
        }
        Tensor::from_data(TensorData::new(values, [1, tokens, total]), &self.device)
    }

    /// Grouped-query attention of `query` (`[tokens, heads, head_dim]`) over `keys` and
    /// `values` (`[positions, kv_dim]`); returns `[tokens, heads · head_dim]`.
    fn attention(
        &self,
        query: Tensor<3>,
        keys: Tensor<2>,
        values: Tensor<2>,
        mask: &Tensor<3>,
    ) -> Tensor<2> {
        let config = &self.config;
        let tokens = query.dims()[0];
        let positions = keys.dims()[0];
        let head_dim = config.head_dim;
        let heads = config.head_count;
        let group = heads / config.head_count_kv;
        let expand = |tensor: Tensor<2>| {
            tensor
                .reshape([positions, config.head_count_kv, 1, head_dim])
                .repeat_dim(2, group)
                .reshape([positions, heads, head_dim])
                .swap_dims(0, 1)
        };
        let scale = if config.scale_query {
            1.0
        } else {
            config.attention_scale
        };
        let scores = query
            .swap_dims(0, 1)
            .matmul(expand(keys).swap_dims(1, 2))
            .mul_scalar(scale)
            + mask.clone();
        softmax(scores, 2)
            .matmul(expand(values))
            .swap_dims(0, 1)
            .reshape([tokens, heads * head_dim])
    }
}

/// Reads a tensor back to the host.
fn read<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>, EngineError> {
    tensor
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|error| EngineError::Device(format!("reading results back: {error:?}")))
}
