//! One decoder layer's weights, found by llama.cpp's tensor names. Which tensors a family
//! needs is data here (fused or separate projections, optional biases and norms), so the
//! forward pass stays one function for every architecture.

use std::sync::Arc;

use flotilla_gguf::GgufFile;

use super::Matrix;
use super::config::{Family, LlamaConfig};
use crate::EngineError;

/// The query/key/value projections: three matrices, or Phi-3's one fused matrix whose
/// output rows are `[query | key | value]`.
pub(crate) enum QkvProjection {
    Separate {
        query: Matrix,
        key: Matrix,
        value: Matrix,
    },
    Fused(Matrix),
}

/// The input side of the gated feed-forward network: gate and up, or Phi-3's fused matrix
/// whose output rows are `[gate | up]`.
pub(crate) enum GateUpProjection {
    Separate { gate: Matrix, up: Matrix },
    Fused(Matrix),
}

pub(crate) struct Layer {
    pub attention_norm: Vec<f32>,
    pub qkv: QkvProjection,
    /// Qwen2's projection biases (any family may carry them; llama.cpp adds them if present).
    pub query_bias: Option<Vec<f32>>,
    pub key_bias: Option<Vec<f32>>,
    pub value_bias: Option<Vec<f32>>,
    /// Gemma 3's per-head RMSNorm of queries and keys (before RoPE).
    pub query_norm: Option<Vec<f32>>,
    pub key_norm: Option<Vec<f32>>,
    pub attention_output: Matrix,
    /// Gemma's RMSNorm of the attention output before the residual add.
    pub post_attention_norm: Option<Vec<f32>>,
    pub ffn_norm: Vec<f32>,
    pub gate_up: GateUpProjection,
    pub down: Matrix,
    /// Gemma's RMSNorm of the feed-forward output before the residual add.
    pub post_ffn_norm: Option<Vec<f32>>,
}

/// Names the architecture in load errors: "model is missing tensor blk.0.attn_q_norm.weight
/// (required by gemma3)".
pub(super) fn with_architecture(architecture: &str) -> impl Fn(EngineError) -> EngineError + '_ {
    move |error| match error {
        EngineError::Missing(what) => {
            EngineError::Missing(format!("{what} (required by {architecture})"))
        }
        EngineError::Unsupported(what) => {
            EngineError::Unsupported(format!("{architecture}: {what}"))
        }
        other => other,
    }
}

impl Layer {
    pub fn load(
        file: &Arc<GgufFile>,
        config: &LlamaConfig,
        index: usize,
    ) -> Result<Layer, EngineError> {
        let d = config.embedding_length;
        let q = config.query_dim();
        let kv = config.kv_dim();
        let ff = config.feed_forward_length;
        let name = |part: &str| format!("blk.{index}.{part}");
        let has = |part: &str| file.header().tensor(&name(part)).is_some();
        let matrix = |part: &str, columns, rows| Matrix::load(file, &name(part), columns, rows);
        let vector = |part: &str, length| matrix(part, length, 1).map(|m| m.to_vec());
        let optional_vector = |part: &str, length| -> Result<Option<Vec<f32>>, EngineError> {
            if has(part) {
                vector(part, length).map(Some)
            } else {
                Ok(None)
            }
        };
        let required_vector = |part: &str, length, required: bool| {
            if required {
                vector(part, length).map(Some)
            } else {
                optional_vector(part, length)
            }
        };
        let gemma = config.family == Family::Gemma3;
        let qkv = if has("attn_qkv.weight") {
            QkvProjection::Fused(matrix("attn_qkv.weight", d, q + 2 * kv)?)
        } else {
            QkvProjection::Separate {
                query: matrix("attn_q.weight", d, q)?,
                key: matrix("attn_k.weight", d, kv)?,
                value: matrix("attn_v.weight", d, kv)?,
            }
        };
        let gate_up = if config.family == Family::Phi3 && !has("ffn_gate.weight") {
            GateUpProjection::Fused(matrix("ffn_up.weight", d, 2 * ff)?)
        } else {
            GateUpProjection::Separate {
                gate: matrix("ffn_gate.weight", d, ff)?,
                up: matrix("ffn_up.weight", d, ff)?,
            }
        };
        if has("attn_output.bias") || has("ffn_down.bias") || has("attn_qkv.bias") {
            return Err(EngineError::Unsupported(format!(
                "layer {index} has output or fused-projection biases"
            )));
        }
        Ok(Layer {
            attention_norm: vector("attn_norm.weight", d)?,
            qkv,
            query_bias: required_vector("attn_q.bias", q, config.family == Family::Qwen2)?,
            key_bias: required_vector("attn_k.bias", kv, config.family == Family::Qwen2)?,
            value_bias: required_vector("attn_v.bias", kv, config.family == Family::Qwen2)?,
            query_norm: required_vector("attn_q_norm.weight", config.head_dim, gemma)?,
            key_norm: required_vector("attn_k_norm.weight", config.head_dim, gemma)?,
            attention_output: matrix("attn_output.weight", q, d)?,
            post_attention_norm: required_vector("post_attention_norm.weight", d, gemma)?,
            ffn_norm: vector("ffn_norm.weight", d)?,
            gate_up,
            down: matrix("ffn_down.weight", ff, d)?,
            post_ffn_norm: required_vector("post_ffw_norm.weight", d, gemma)?,
        })
    }

    /// Bytes of the layer's matrices.
    pub fn byte_size(&self) -> usize {
        let qkv = match &self.qkv {
            QkvProjection::Separate { query, key, value } => {
                query.byte_size() + key.byte_size() + value.byte_size()
            }
            QkvProjection::Fused(fused) => fused.byte_size(),
        };
        let gate_up = match &self.gate_up {
            GateUpProjection::Separate { gate, up } => gate.byte_size() + up.byte_size(),
            GateUpProjection::Fused(fused) => fused.byte_size(),
        };
        qkv + gate_up + self.attention_output.byte_size() + self.down.byte_size()
    }
}
