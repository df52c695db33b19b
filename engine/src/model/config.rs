//! Decoder hyper-parameters read from GGUF metadata (`{arch}.*` keys), and the per-family
//! differences of the graph expressed as data (rope style, activation, scales, sliding
//! window), so one forward pass serves every supported architecture.

use flotilla_gguf::GgufHeader;

use crate::EngineError;

/// The decoder families this engine runs, by their GGUF `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// llama.cpp's `LLM_ARCH_LLAMA` graph (Llama 2/3.x, Mistral, TinyLlama, SmolLM, Granite).
    Llama,
    /// Qwen2 / Qwen2.5: the Llama graph with q/k/v biases and NEOX-style rope.
    Qwen2,
    /// Gemma 3: q/k RMS norms, post-attention and post-FFN norms, GeGLU, scaled embeddings,
    /// sliding-window layers with their own rope base.
    Gemma3,
    /// Phi-3: fused qkv and gate/up projections, NEOX-style rope.
    Phi3,
}

/// Architectures whose tensors and graph the engine knows.
const SUPPORTED_ARCHITECTURES: &[(&str, Family)] = &[
    ("llama", Family::Llama),
    ("mistral", Family::Llama),
    ("granite", Family::Llama),
    ("qwen2", Family::Qwen2),
    ("gemma3", Family::Gemma3),
    ("phi3", Family::Phi3),
];

/// Which elements RoPE rotates together (llama.cpp `LLAMA_ROPE_TYPE_NORM` / `_NEOX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Adjacent pairs `(2i, 2i+1)`: llama.cpp's converter permutes Llama's Q/K for this.
    Adjacent,
    /// Pairs `(i, i + n_rot/2)`: the Hugging Face layout, kept by Qwen2, Gemma and Phi-3.
    HalfSplit,
}

/// The gate activation of the gated feed-forward network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SwiGLU: `silu(gate) * up`.
    Silu,
    /// GeGLU with the tanh approximation of GELU (Gemma).
    GeluTanh,
}

/// The shape and numerics of a decoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub architecture: String,
    pub family: Family,
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
    pub rope_style: RopeStyle,
    pub rms_norm_epsilon: f32,
    pub context_length: usize,
    pub vocab_size: usize,
    pub activation: Activation,
    /// Multiplies attention scores (`1/sqrt(head_dim)` for most models).
    pub attention_scale: f32,
    /// Whether the scale multiplies the query before the dot product (Gemma, Phi-3) rather
    /// than the scores (Llama, Qwen2); only matters for rounding, kept as llama.cpp does.
    pub scale_query: bool,
    /// Multiplies the token embeddings (Gemma: `sqrt(embedding_length)`).
    pub embedding_scale: Option<f32>,
    /// `cap * tanh(logits / cap)` on the output logits, when the file declares it.
    pub final_logit_softcap: Option<f32>,
    /// Attention window of the sliding-window layers, and which layers slide.
    pub sliding_window: Option<usize>,
    pub sliding_layers: Vec<bool>,
    /// RoPE base and position scale of the sliding-window layers.
    pub rope_freq_base_sliding: f32,
    pub rope_freq_scale_sliding: f32,
    /// `<arch>.pooling_type` as the file declares it (llama.cpp's numbering: 0 none,
    /// 1 mean, 2 cls, 3 last, 4 rank); `None` when absent. Only embeddings read it.
    pub pooling_type: Option<u64>,
}

impl LlamaConfig {
    /// Reads and validates the hyper-parameters.
    pub fn from_header(header: &GgufHeader) -> Result<LlamaConfig, EngineError> {
        let architecture = header
            .architecture()
            .ok_or_else(|| EngineError::Missing("metadata general.architecture".into()))?
            .to_string();
        let family = SUPPORTED_ARCHITECTURES
            .iter()
            .find(|(name, _)| *name == architecture)
            .map(|&(_, family)| family)
            .ok_or_else(|| {
                let names: Vec<&str> = SUPPORTED_ARCHITECTURES.iter().map(|(n, _)| *n).collect();
                EngineError::Unsupported(format!(
                    "architecture {architecture:?} (supported: {names:?})"
                ))
            })?;
        let key = |suffix: &str| format!("{architecture}.{suffix}");
        let optional = |suffix: &str| {
            header
                .metadata
                .get_u64(&key(suffix))
                .and_then(|value| usize::try_from(value).ok())
        };
        let required = |suffix: &str| -> Result<usize, EngineError> {
            optional(suffix)
                .ok_or_else(|| EngineError::Missing(format!("metadata {}", key(suffix))))
        };
        let block_count = required("block_count")?;
        let embedding_length = required("embedding_length")?;
        let feed_forward_length = required("feed_forward_length")?;
        let head_count = required("attention.head_count")?;
        let head_count_kv = optional("attention.head_count_kv").unwrap_or(head_count);
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
        // Gemma declares its head width (256) apart from embedding_length / head_count.
        let head_dim = match optional("attention.key_length") {
            Some(length) => length,
            None if embedding_length.is_multiple_of(head_count) => embedding_length / head_count,
            None => {
                return Err(EngineError::InvalidModel(format!(
                    "embedding length {embedding_length} is not divisible by {head_count} heads"
                )));
            }
        };
        if head_dim == 0 || head_dim > 1 << 12 {
            return Err(EngineError::InvalidModel(format!(
                "attention head width {head_dim} is out of range"
            )));
        }
        if let Some(value_length) = optional("attention.value_length")
            && value_length != head_dim
        {
            return Err(EngineError::Unsupported(format!(
                "{architecture}: value heads of {value_length} differ from key heads of {head_dim}"
            )));
        }
        let rope_dimension_count = optional("rope.dimension_count").unwrap_or(head_dim);
        if rope_dimension_count > head_dim || !rope_dimension_count.is_multiple_of(2) {
            return Err(EngineError::InvalidModel(format!(
                "rope dimension count {rope_dimension_count} does not fit head dimension {head_dim}"
            )));
        }
        // llama.cpp reads a scaling factor whenever one is declared and treats an absent
        // type as linear; YaRN and LongRoPE change the angles themselves and are refused.
        let factor = header
            .metadata
            .get_f32(&key("rope.scaling.factor"))
            .or_else(|| header.metadata.get_f32(&key("rope.scale_linear")))
            .filter(|factor| *factor > 0.0);
        let rope_freq_scale = match header.metadata.get_str(&key("rope.scaling.type")) {
            None | Some("linear") => factor.map_or(1.0, |factor| 1.0 / factor),
            Some("none") => 1.0,
            Some(other) => {
                return Err(EngineError::Unsupported(format!(
                    "{architecture}: rope scaling type {other:?} (supported: none, linear)"
                )));
            }
        };
        let vocab_size = match optional("vocab_size") {
            Some(size) => size,
            None => header
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
        let float = |suffix: &str| header.metadata.get_f32(&key(suffix));
        let rope_freq_base = float("rope.freq_base").unwrap_or(10_000.0);

        let mut config = LlamaConfig {
            family,
            block_count,
            embedding_length,
            feed_forward_length,
            head_count,
            head_count_kv,
            head_dim,
            rope_dimension_count,
            rope_freq_base,
            rope_freq_scale,
            rope_style: RopeStyle::Adjacent,
            rms_norm_epsilon: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            context_length: optional("context_length").unwrap_or(2048),
            vocab_size,
            activation: Activation::Silu,
            attention_scale: 1.0 / (head_dim as f32).sqrt(),
            scale_query: false,
            embedding_scale: None,
            final_logit_softcap: None,
            sliding_window: None,
            sliding_layers: vec![false; block_count],
            rope_freq_base_sliding: rope_freq_base,
            rope_freq_scale_sliding: rope_freq_scale,
            pooling_type: optional("pooling_type").map(|value| value as u64),
            architecture: architecture.clone(),
        };
        match family {
            Family::Llama => {
                if head_dim * head_count != embedding_length {
                    return Err(EngineError::InvalidModel(format!(
                        "{} heads of {head_dim} do not make the embedding length {embedding_length}",
                        head_count
                    )));
                }
            }
            Family::Qwen2 => config.rope_style = RopeStyle::HalfSplit,
            Family::Phi3 => {
                config.rope_style = RopeStyle::HalfSplit;
                config.scale_query = true;
                // llama.cpp disables Phi-3's declared sliding window (its converters wrote
                // wrong values), so full attention everywhere is what the reference computes.
            }
            Family::Gemma3 => {
                config.rope_style = RopeStyle::HalfSplit;
                config.activation = Activation::GeluTanh;
                config.scale_query = true;
                config.embedding_scale = Some((embedding_length as f32).sqrt());
                config.final_logit_softcap = float("final_logit_softcapping").filter(|c| *c > 0.0);
                // Gemma 3 27B scales by the model width per head, the others by the head width
                // (gemma_pytorch's config, as llama.cpp follows it).
                if block_count == 62 {
                    config.attention_scale = 1.0 / ((embedding_length / head_count) as f32).sqrt();
                }
                if let Some(window) = optional("attention.sliding_window").filter(|w| *w > 0) {
                    config.sliding_window = Some(window);
                    // Every sixth layer attends globally unless the file says otherwise.
                    let pattern = optional("attention.sliding_window_pattern").unwrap_or(6);
                    config.sliding_layers = (0..block_count)
                        .map(|layer| pattern == 0 || layer % pattern < pattern - 1)
                        .collect();
                    // Local layers keep the original rope (base 10,000, no scaling); the
                    // declared base and scaling apply to the global layers.
                    config.rope_freq_base_sliding = float("rope.freq_base_swa").unwrap_or(10_000.0);
                    config.rope_freq_scale_sliding = 1.0;
                }
            }
        }
        Ok(config)
    }

    /// Width of the key (and value) projection: `head_count_kv * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.head_count_kv * self.head_dim
    }

    /// Width of the query projection and of the attention output: `head_count * head_dim`.
    pub fn query_dim(&self) -> usize {
        self.head_count * self.head_dim
    }

    /// Whether `layer` attends only to the last `sliding_window` positions.
    pub fn is_sliding(&self, layer: usize) -> bool {
        self.sliding_window.is_some() && self.sliding_layers.get(layer).copied().unwrap_or(false)
    }

    /// RoPE base and position scale of `layer`.
    pub fn layer_rope(&self, layer: usize) -> (f32, f32) {
        if self.is_sliding(layer) {
            (self.rope_freq_base_sliding, self.rope_freq_scale_sliding)
        } else {
            (self.rope_freq_base, self.rope_freq_scale)
        }
    }
}
