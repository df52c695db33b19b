//! Llama-family hyper-parameters read from GGUF metadata (`{arch}.*` keys).

use flotilla_gguf::GgufHeader;

use crate::EngineError;

/// Architectures whose GGUF tensors follow llama.cpp's `LLM_ARCH_LLAMA` graph.
const SUPPORTED_ARCHITECTURES: &[&str] = &["llama", "mistral", "granite"];

/// The shape and numerics of a Llama-family decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub block_count: usize,
    pub embedding_length: usize,
    pub feed_forward_length: usize,
    pub head_count: usize,
    pub head_count_kv: usize,
    pub head_dim: usize,
    pub rope_dimension_count: usize,
    pub rope_freq_base: f32,
    /// Position scale for linear RoPE scaling (1.0 when unscaled).
    pub rope_freq_scale: f32,
    pub rms_norm_epsilon: f32,
    pub context_length: usize,
    pub vocab_size: usize,
}

impl LlamaConfig {
    /// Reads and validates the hyper-parameters.
    pub fn from_header(header: &GgufHeader) -> Result<LlamaConfig, EngineError> {
        let architecture = header
            .architecture()
            .ok_or_else(|| EngineError::Missing("metadata general.architecture".into()))?
            .to_string();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(EngineError::Unsupported(format!(
                "architecture {architecture:?} (supported: {SUPPORTED_ARCHITECTURES:?})"
            )));
        }
        let key = |suffix: &str| format!("{architecture}.{suffix}");
        let required = |suffix: &str| -> Result<usize, EngineError> {
            header
                .metadata
                .get_u64(&key(suffix))
                .and_then(|value| usize::try_from(value).ok())
                .ok_or_else(|| EngineError::Missing(format!("metadata {}", key(suffix))))
        };
        let block_count = required("block_count")?;
        let embedding_length = required("embedding_length")?;
        let feed_forward_length = required("feed_forward_length")?;
        let head_count = required("attention.head_count")?;
        let head_count_kv = required("attention.head_count_kv").unwrap_or(head_count);
        // Bounds far above any real model keep later size arithmetic free of overflow.
        for (what, value, limit) in [
            ("block_count", block_count, 4096),
            ("embedding_length", embedding_length, 1 << 17),
            ("feed_forward_length", feed_forward_length, 1 << 20),
            ("attention.head_count", head_count, 1 << 12),
            ("attention.head_count_kv", head_count_kv, 1 << 12),
        ] {
            if value > limit {
                return Err(EngineError::InvalidModel(format!(
                    "{architecture}.{what} = {value} exceeds the supported maximum {limit}"
                )));
            }
        }
        if head_count == 0 || head_count_kv == 0 || !head_count.is_multiple_of(head_count_kv) {
            return Err(EngineError::InvalidModel(format!(
                "{head_count} attention heads cannot share {head_count_kv} key/value heads"
            )));
        }
        if !embedding_length.is_multiple_of(head_count) {
            return Err(EngineError::InvalidModel(format!(
                "embedding length {embedding_length} is not divisible by {head_count} heads"
            )));
        }
        let head_dim = embedding_length / head_count;
        let rope_dimension_count = required("rope.dimension_count").unwrap_or(head_dim);
        if rope_dimension_count > head_dim || !rope_dimension_count.is_multiple_of(2) {
            return Err(EngineError::InvalidModel(format!(
                "rope dimension count {rope_dimension_count} does not fit head dimension {head_dim}"
            )));
        }
        let rope_freq_scale = match header.metadata.get_str(&key("rope.scaling.type")) {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = header
                    .metadata
                    .get_f32(&key("rope.scaling.factor"))
                    .unwrap_or(1.0);
                if factor > 0.0 { 1.0 / factor } else { 1.0 }
            }
            Some(other) => {
                return Err(EngineError::Unsupported(format!(
                    "rope scaling type {other:?}"
                )));
            }
        };
        let vocab_size = match required("vocab_size") {
            Ok(size) => size,
            Err(_) => header
                .tensor("token_embd.weight")
                .and_then(|tensor| tensor.dims.get(1).copied())
                .and_then(|size| usize::try_from(size).ok())
                .ok_or_else(|| EngineError::Missing("tensor token_embd.weight".into()))?,
        };
        if vocab_size > 1 << 22 {
            return Err(EngineError::InvalidModel(format!(
                "vocabulary of {vocab_size} tokens exceeds the supported maximum"
            )));
        }
        Ok(LlamaConfig {
            block_count,
            embedding_length,
            feed_forward_length,
            head_count,
            head_count_kv,
            head_dim,
            rope_dimension_count,
            rope_freq_base: header
                .metadata
                .get_f32(&key("rope.freq_base"))
                .unwrap_or(10_000.0),
            rope_freq_scale,
            rms_norm_epsilon: header
                .metadata
                .get_f32(&key("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            context_length: required("context_length").unwrap_or(2048),
            vocab_size,
            architecture,
        })
    }

    /// Width of the key (and value) projection: `head_count_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.head_count_kv * self.head_dim
    }
}
