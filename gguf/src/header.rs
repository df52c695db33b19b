//! The parsed header and the facts derived from it that the controller shows and checks
//! (parameter count, quantization, required file size, memory estimate).

use std::collections::HashMap;

use crate::{GgmlType, Metadata};

/// A parsed GGUF header: everything before the tensor data.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufHeader {
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the tensor-data section (after padding).
    pub data_offset: u64,
}

/// Where one tensor lives and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` is the innermost (row) length.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset relative to [`GgufHeader::data_offset`].
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements. Parsed tensors are checked not to overflow.
    pub fn element_count(&self) -> u64 {
        self.checked_element_count().unwrap_or(u64::MAX)
    }

    /// Bytes of tensor data. Parsed tensors are checked not to overflow.
    pub fn byte_size(&self) -> u64 {
        self.checked_byte_size().unwrap_or(u64::MAX)
    }

    pub(crate) fn checked_element_count(&self) -> Option<u64> {
        self.dims
            .iter()
            .try_fold(1u64, |product, &dim| product.checked_mul(dim))
    }

    pub(crate) fn checked_byte_size(&self) -> Option<u64> {
        self.ggml_type.bytes_for(self.checked_element_count()?)
    }
}

/// Bytes allowed for activations and scratch buffers on top of weights and KV cache.
const COMPUTE_ALLOWANCE_BYTES: u64 = 64 << 20;

/// `general.file_type` values (llama.cpp `enum llama_ftype`) and their names.
const FILE_TYPES: &[(u64, &str)] = &[
    (0, "F32"),
    (1, "F16"),
    (2, "Q4_0"),
    (3, "Q4_1"),
    (7, "Q8_0"),
    (8, "Q5_0"),
    (9, "Q5_1"),
    (10, "Q2_K"),
    (11, "Q3_K_S"),
    (12, "Q3_K_M"),
    (13, "Q3_K_L"),
    (14, "Q4_K_S"),
    (15, "Q4_K_M"),
    (16, "Q5_K_S"),
    (17, "Q5_K_M"),
    (18, "Q6_K"),
    (19, "IQ2_XXS"),
    (20, "IQ2_XS"),
    (21, "Q2_K_S"),
    (22, "IQ3_XS"),
    (23, "IQ3_XXS"),
    (24, "IQ1_S"),
    (25, "IQ4_NL"),
    (26, "IQ3_S"),
    (27, "IQ3_M"),
    (28, "IQ2_S"),
    (29, "IQ2_M"),
    (30, "IQ4_XS"),
    (31, "IQ1_M"),
    (32, "BF16"),
    (36, "TQ1_0"),
    (37, "TQ2_0"),
    (38, "MXFP4_MOE"),
];

impl GgufHeader {
    /// `general.architecture`, e.g. `llama`.
    pub fn architecture(&self) -> Option<&str> {
        self.metadata.get_str("general.architecture")
    }

    /// `general.name`.
    pub fn name(&self) -> Option<&str> {
        self.metadata.get_str("general.name")
    }

    /// An architecture-scoped key such as `llama.context_length`.
    pub fn architecture_u64(&self, suffix: &str) -> Option<u64> {
        let architecture = self.architecture()?;
        self.metadata.get_u64(&format!("{architecture}.{suffix}"))
    }

    /// Sum of all tensors' element counts.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.iter().fold(0u64, |sum, tensor| {
            sum.saturating_add(tensor.element_count())
        })
    }

    /// Bytes from `data_offset` to the end of the last tensor.
    pub fn tensor_data_size(&self) -> u64 {
        self.tensors
            .iter()
            .map(|tensor| tensor.offset.saturating_add(tensor.byte_size()))
            .max()
            .unwrap_or(0)
    }

    /// The smallest size a complete file can have; a shorter file is truncated.
    pub fn required_file_size(&self) -> u64 {
        self.data_offset.saturating_add(self.tensor_data_size())
    }

    /// `{arch}.context_length`: the context the model was trained for.
    pub fn context_length(&self) -> Option<u64> {
        self.architecture_u64("context_length")
    }

    /// A quantization label such as `Q4_1` or `Q4_K_M`: from `general.file_type` when
    /// present, else the most common type among the 2-D tensors (the weight matrices).
    pub fn quantization(&self) -> Option<String> {
        if let Some(file_type) = self.metadata.get_u64("general.file_type")
            && let Some((_, name)) = FILE_TYPES.iter().find(|(id, _)| *id == file_type)
        {
            return Some((*name).to_string());
        }
        let mut counts: HashMap<GgmlType, (usize, usize)> = HashMap::new();
        for (position, tensor) in self.tensors.iter().enumerate() {
            if tensor.dims.len() == 2 {
                counts.entry(tensor.ggml_type).or_insert((0, position)).0 += 1;
            }
        }
        // Ties go to the type seen first so the answer does not depend on hash order.
        counts
            .into_iter()
            .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
            .map(|(ggml_type, _)| ggml_type.name().to_string())
    }

    /// Rough resident memory to serve `context` tokens: tensor bytes, an f16 KV cache and a
    /// compute-buffer allowance. `None` when the attention hyper-parameters are missing.
    pub fn memory_estimate(&self, context: u64) -> Option<u64> {
        let block_count = self.architecture_u64("block_count")?;
        let embedding_length = self.architecture_u64("embedding_length")?;
        let head_count = self.architecture_u64("attention.head_count")?;
        if head_count == 0 {
            return None;
        }
        let head_count_kv = self
            .architecture_u64("attention.head_count_kv")
            .unwrap_or(head_count);
        let head_dim = self
            .architecture_u64("attention.key_length")
            .unwrap_or(embedding_length / head_count);
        let kv_cache = block_count
            .checked_mul(context)?
            .checked_mul(2)?
            .checked_mul(head_count_kv)?
            .checked_mul(head_dim)?
            .checked_mul(2)?;
        let activations = context.checked_mul(embedding_length)?.checked_mul(16)?;
        self.tensor_data_size()
            .checked_add(kv_cache)?
            .checked_add(COMPUTE_ALLOWANCE_BYTES)?
            .checked_add(activations)
    }

    /// Finds a tensor by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|tensor| tensor.name == name)
    }
}
