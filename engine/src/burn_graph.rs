//! The same Llama graph expressed with burn tensor operations (feature `burn`; with `gpu`
//! it runs on burn's wgpu backend).
//!
//! Why both this and `model/`: on CPU, burn's quantized tensors are symmetric-only and a
//! quantized matmul on the `flex` backend dequantizes the whole weight every call, so the
//! fast CPU path is our own kernels over weights that stay in GGUF block format. Dense
//! devices are where burn shines, so this module dequantizes the weights once onto a burn
//! `Device` (f32, ~4 bytes per parameter) and runs the graph there: a GPU backend for the
//! fleet's GPU nodes, and on CPU an independent implementation the kernel path is tested
//! against. It recomputes the whole sequence per call (no KV cache yet); decoding on the
//! GPU path with a device-resident cache is future work (see PERFORMANCE.md).

use burn::tensor::activation::{silu, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::EngineError;
use crate::model::{LlamaConfig, LlamaModel, Matrix};

struct BurnLayer {
    attention_norm: Tensor<2>,
    query: Tensor<2>,
    key: Tensor<2>,
    value: Tensor<2>,
    attention_output: Tensor<2>,
    ffn_norm: Tensor<2>,
    gate: Tensor<2>,
    up: Tensor<2>,
    down: Tensor<2>,
}

/// A dense f32 copy of a [`LlamaModel`] on a burn device.
pub struct BurnLlama {
    device: Device,
    config: LlamaConfig,
    token_embedding: Matrix,
    layers: Vec<BurnLayer>,
    output_norm: Tensor<2>,
    output: Tensor<2>,
}

/// Uploads a weight as `[columns, rows]` so that `activations.matmul(weight)` applies it.
fn dense(matrix: &Matrix, device: &Device) -> Tensor<2> {
    let mut values = vec![0.0f32; matrix.rows * matrix.columns];
    for (row, chunk) in values.chunks_exact_mut(matrix.columns).enumerate() {
        matrix.dequantize_row_into(row, chunk);
    }
    Tensor::<2>::from_data(
        TensorData::new(values, [matrix.rows, matrix.columns]),
        device,
    )
    .transpose()
}

fn vector(values: &[f32], device: &Device) -> Tensor<2> {
    Tensor::<2>::from_data(TensorData::new(values.to_vec(), [1, values.len()]), device)
}

impl BurnLlama {
    /// Dequantizes every weight of `model` onto `device`.
    pub fn from_model(model: &LlamaModel, device: Device) -> Result<BurnLlama, EngineError> {
        let config = model.config().clone();
        if config.rope_dimension_count != config.head_dim {
            return Err(EngineError::Unsupported(
                "partial rotary embeddings in the burn graph".into(),
            ));
        }
        let weights = model.weights()?;
        let layers = weights
            .layers
            .iter()
            .map(|layer| BurnLayer {
                attention_norm: vector(layer.attention_norm, &device),
                query: dense(layer.query, &device),
                key: dense(layer.key, &device),
                value: dense(layer.value, &device),
                attention_output: dense(layer.attention_output, &device),
                ffn_norm: vector(layer.ffn_norm, &device),
                gate: dense(layer.gate, &device),
                up: dense(layer.up, &device),
                down: dense(layer.down, &device),
            })
            .collect();
        Ok(BurnLlama {
            output_norm: vector(weights.output_norm, &device),
            output: dense(weights.output, &device),
            token_embedding: weights.token_embedding.clone(),
            layers,
            config,
            device,
        })
    }

    /// Runs the whole sequence and returns the logits after its last token.
    pub fn forward(&self, tokens: &[u32]) -> Result<Vec<f32>, EngineError> {
        let config = &self.config;
        let n = tokens.len();
        let d = config.embedding_length;
        if n == 0 {
            return Err(EngineError::InvalidRequest("no tokens".into()));
        }
        let mut embedded = vec![0.0f32; n * d];
        for (&token, row) in tokens.iter().zip(embedded.chunks_exact_mut(d)) {
            if token as usize >= config.vocab_size {
                return Err(EngineError::InvalidRequest(format!(
                    "token id {token} is outside the vocabulary"
                )));
            }
            self.token_embedding
                .dequantize_row_into(token as usize, row);
        }
        let mut hidden = Tensor::<2>::from_data(TensorData::new(embedded, [n, d]), &self.device);
        let (cos, sin) = self.rope_tables(n);
        let mask = self.causal_mask(n);
        for layer in &self.layers {
            let normed = self.rms_norm(hidden.clone(), &layer.attention_norm);
            let query = self.rope(
                normed.clone().matmul(layer.query.clone()),
                config.head_count,
                &cos,
                &sin,
            );
            let key = self.rope(
                normed.clone().matmul(layer.key.clone()),
                config.head_count_kv,
                &cos,
                &sin,
            );
            let value = normed.matmul(layer.value.clone());
            let attended = self.attention(query, key, value, &mask);
            hidden = hidden + attended.matmul(layer.attention_output.clone());

            let normed = self.rms_norm(hidden.clone(), &layer.ffn_norm);
            let gate = silu(normed.clone().matmul(layer.gate.clone()));
            let up = normed.matmul(layer.up.clone());
            hidden = hidden + (gate * up).matmul(layer.down.clone());
        }
        let last = hidden.narrow(0, n - 1, 1);
        let logits = self
            .rms_norm(last, &self.output_norm)
            .matmul(self.output.clone());
        logits
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|error| EngineError::InvalidModel(format!("reading logits back: {error:?}")))
    }

    fn rms_norm(&self, input: Tensor<2>, weight: &Tensor<2>) -> Tensor<2> {
        let mean_square = input.clone().powi_scalar(2).mean_dim(1);
        let scale = mean_square
            .add_scalar(self.config.rms_norm_epsilon)
            .sqrt()
            .recip();
        input * scale * weight.clone()
    }

    /// cos/sin tables `[n, 1, head_dim / 2, 1]` for adjacent-pair ("normal") RoPE.
    fn rope_tables(&self, n: usize) -> (Tensor<4>, Tensor<4>) {
        let config = &self.config;
        let pairs = config.head_dim / 2;
        let theta_scale = config
            .rope_freq_base
            .powf(-2.0 / config.rope_dimension_count as f32);
        let mut cos = Vec::with_capacity(n * pairs);
        let mut sin = Vec::with_capacity(n * pairs);
        for position in 0..n {
            let mut theta = position as f32 * config.rope_freq_scale;
            for _ in 0..pairs {
                cos.push(theta.cos());
                sin.push(theta.sin());
                theta *= theta_scale;
            }
        }
        let table = |values| {
            Tensor::<4>::from_data(TensorData::new(values, [n, 1, pairs, 1]), &self.device)
        };
        (table(cos), table(sin))
    }

    fn rope(&self, input: Tensor<2>, heads: usize, cos: &Tensor<4>, sin: &Tensor<4>) -> Tensor<3> {
        let n = input.dims()[0];
        let head_dim = self.config.head_dim;
        let pairs = input.reshape([n, heads, head_dim / 2, 2]);
        let even = pairs.clone().narrow(3, 0, 1);
        let odd = pairs.narrow(3, 1, 1);
        let rotated_even = even.clone() * cos.clone() - odd.clone() * sin.clone();
        let rotated_odd = even * sin.clone() + odd * cos.clone();
        Tensor::cat(vec![rotated_even, rotated_odd], 3).reshape([n, heads, head_dim])
    }

    fn causal_mask(&self, n: usize) -> Tensor<3> {
        let mut values = vec![0.0f32; n * n];
        for row in 0..n {
            for column in row + 1..n {
                values[row * n + column] = f32::NEG_INFINITY;
            }
        }
        Tensor::<3>::from_data(TensorData::new(values, [1, n, n]), &self.device)
    }

    /// Grouped-query causal attention; `query` is `[n, heads, head_dim]`, `key` `[n, kv, head_dim]`.
    fn attention(
        &self,
        query: Tensor<3>,
        key: Tensor<3>,
        value: Tensor<2>,
        mask: &Tensor<3>,
    ) -> Tensor<2> {
        let config = &self.config;
        let n = query.dims()[0];
        let head_dim = config.head_dim;
        let group = config.head_count / config.head_count_kv;
        let expand = |tensor: Tensor<3>| {
            tensor
                .reshape([n, config.head_count_kv, 1, head_dim])
                .repeat_dim(2, group)
                .reshape([n, config.head_count, head_dim])
                .swap_dims(0, 1)
        };
        let key = expand(key);
        let value = expand(value.reshape([n, config.head_count_kv, head_dim]));
        let query = query.swap_dims(0, 1);
        let scores = query
            .matmul(key.swap_dims(1, 2))
            .mul_scalar(1.0 / (head_dim as f32).sqrt())
            + mask.clone();
        softmax(scores, 2)
            .matmul(value)
            .swap_dims(0, 1)
            .reshape([n, config.embedding_length])
    }
}
