//! A tiny GGUF writer for tests and fixtures (feature `writer`). It writes exactly the
//! layout the reader expects (v3, aligned tensor data) so other crates' tests can create
//! valid model files, and truncated or corrupted variants of them, without real weights.

use crate::{GgmlType, MetadataValue};

/// Builds an in-memory GGUF file.
///
/// ```
/// # use flotilla_gguf::{GgufBuilder, GgmlType, read_header};
/// let bytes = GgufBuilder::new()
///     .metadata_str("general.architecture", "llama")
///     .tensor("w", &[4, 2], GgmlType::F32, &[0u8; 32])
///     .build();
/// let header = read_header(&bytes[..]).unwrap();
/// assert_eq!(header.parameter_count(), 8);
/// ```
#[derive(Debug, Clone)]
pub struct GgufBuilder {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetadataValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
}

impl Default for GgufBuilder {
    fn default() -> Self {
        GgufBuilder::new()
    }
}

impl GgufBuilder {
    /// An empty version-3 file with the default alignment of 32.
    pub fn new() -> GgufBuilder {
        GgufBuilder {
            version: 3,
            alignment: crate::DEFAULT_ALIGNMENT,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Sets the version field (2 or 3 are valid; others make invalid files for tests).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Sets the data alignment and writes `general.alignment` when it is not the default.
    pub fn alignment(mut self, alignment: u32) -> Self {
        self.alignment = u64::from(alignment);
        self.metadata
            .retain(|(key, _)| key.as_str() != "general.alignment");
        self.metadata.push((
            "general.alignment".to_string(),
            MetadataValue::U32(alignment),
        ));
        self
    }

    /// Adds any metadata value.
    pub fn metadata(mut self, key: &str, value: MetadataValue) -> Self {
        self.metadata.push((key.to_string(), value));
        self
    }

    pub fn metadata_str(self, key: &str, value: &str) -> Self {
        self.metadata(key, MetadataValue::String(value.to_string()))
    }

    pub fn metadata_u32(self, key: &str, value: u32) -> Self {
        self.metadata(key, MetadataValue::U32(value))
    }

    pub fn metadata_i32(self, key: &str, value: i32) -> Self {
        self.metadata(key, MetadataValue::I32(value))
    }

    pub fn metadata_u64(self, key: &str, value: u64) -> Self {
        self.metadata(key, MetadataValue::U64(value))
    }

    pub fn metadata_f32(self, key: &str, value: f32) -> Self {
        self.metadata(key, MetadataValue::F32(value))
    }

    pub fn metadata_bool(self, key: &str, value: bool) -> Self {
        self.metadata(key, MetadataValue::Bool(value))
    }

    /// An array of strings (e.g. `tokenizer.ggml.tokens`).
    pub fn metadata_str_array<S: AsRef<str>>(self, key: &str, values: &[S]) -> Self {
        let values = values
            .iter()
            .map(|value| MetadataValue::String(value.as_ref().to_string()))
            .collect();
        self.metadata(key, MetadataValue::Array(values))
    }

    /// An array of f32 (e.g. `tokenizer.ggml.scores`).
    pub fn metadata_f32_array(self, key: &str, values: &[f32]) -> Self {
        let values = values.iter().copied().map(MetadataValue::F32).collect();
        self.metadata(key, MetadataValue::Array(values))
    }

    /// An array of i32 (e.g. `tokenizer.ggml.token_type`).
    pub fn metadata_i32_array(self, key: &str, values: &[i32]) -> Self {
        let values = values.iter().copied().map(MetadataValue::I32).collect();
        self.metadata(key, MetadataValue::Array(values))
    }

    /// Adds a tensor. `dims` are in ggml order (row length first).
    ///
    /// # Panics
    /// When `bytes` does not have the size `dims` and `ggml_type` imply: fixtures must be
    /// written deliberately (corrupt the built bytes to test bad files).
    pub fn tensor(mut self, name: &str, dims: &[u64], ggml_type: GgmlType, bytes: &[u8]) -> Self {
        let elements: u64 = dims.iter().product();
        let expected = ggml_type.bytes_for(elements);
        assert_eq!(
            expected,
            Some(bytes.len() as u64),
            "tensor {name:?} {dims:?} of type {ggml_type} needs {expected:?} bytes, got {}",
            bytes.len()
        );
        self.tensors
            .push((name.to_string(), dims.to_vec(), ggml_type, bytes.to_vec()));
        self
    }

    /// A tiny Llama-style file for registry and fleet tests, complete enough that the
    /// engine would load it (so the controller records it as servable): 2 blocks, 64 wide,
    /// 4 query and 2 key/value heads, context 2048, a 35-token SentencePiece vocabulary,
    /// F32 norms of ones and all-zero weight matrices (it answers with zero logits). The
    /// matrices are Q8_0 when `file_type` is 7 (ggml's "mostly Q8_0"), F16 when it is 1,
    /// F32 when it is 0, Q4_1 otherwise. `seed` is written into `general.name`, so
    /// different seeds give different digests.
    pub fn tiny_llama(file_type: u32, seed: u8) -> Vec<u8> {
        const WIDTH: u64 = 64;
        const KEY_VALUE: u64 = 32;
        const FEED_FORWARD: u64 = 64;
        const BLOCKS: u32 = 2;
        let matrix_type = match file_type {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            7 => GgmlType::Q8_0,
            _ => GgmlType::Q4_1,
        };
        let mut tokens = vec!["<unk>".to_string(), "<s>".into(), "</s>".into(), "▁".into()];
        tokens.extend(('a'..='z').map(String::from));
        tokens.extend([".", ",", "?", "!", "'"].map(String::from));
        let mut kinds = vec![2, 3, 3];
        kinds.resize(tokens.len(), 1);
        let vocabulary = tokens.len() as u64;
        let ones =
            |length: u64| -> Vec<u8> { (0..length).flat_map(|_| 1.0f32.to_le_bytes()).collect() };
        let zeros = |columns: u64, rows: u64| -> Vec<u8> {
            let bytes = matrix_type.bytes_for(columns * rows).unwrap_or(0);
            vec![0; bytes as usize]
        };
        let mut builder = GgufBuilder::new()
            .metadata_str("general.architecture", "llama")
            .metadata_str("general.name", &format!("fixture-{seed}"))
            .metadata_u32("general.file_type", file_type)
            .metadata_u32("llama.context_length", 2048)
            .metadata_u32("llama.block_count", BLOCKS)
            .metadata_u32("llama.embedding_length", WIDTH as u32)
            .metadata_u32("llama.feed_forward_length", FEED_FORWARD as u32)
            .metadata_u32("llama.attention.head_count", 4)
            .metadata_u32("llama.attention.head_count_kv", 2)
            .metadata_f32("llama.rope.freq_base", 10_000.0)
            .metadata_f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
            .metadata_str("tokenizer.ggml.model", "llama")
            .metadata_str_array("tokenizer.ggml.tokens", &tokens)
            .metadata_i32_array("tokenizer.ggml.token_type", &kinds)
            .metadata_u32("tokenizer.ggml.bos_token_id", 1)
            .metadata_u32("tokenizer.ggml.eos_token_id", 2)
            .tensor(
                "token_embd.weight",
                &[WIDTH, vocabulary],
                matrix_type,
                &zeros(WIDTH, vocabulary),
            )
            .tensor("output_norm.weight", &[WIDTH], GgmlType::F32, &ones(WIDTH));
        for block in 0..BLOCKS {
            let name = |part: &str| format!("blk.{block}.{part}.weight");
            for (part, columns, rows) in [
                ("attn_q", WIDTH, WIDTH),
                ("attn_k", WIDTH, KEY_VALUE),
                ("attn_v", WIDTH, KEY_VALUE),
                ("attn_output", WIDTH, WIDTH),
                ("ffn_gate", WIDTH, FEED_FORWARD),
                ("ffn_up", WIDTH, FEED_FORWARD),
                ("ffn_down", FEED_FORWARD, WIDTH),
            ] {
                builder = builder.tensor(
                    &name(part),
                    &[columns, rows],
                    matrix_type,
                    &zeros(columns, rows),
                );
            }
            for norm in ["attn_norm", "ffn_norm"] {
                builder = builder.tensor(&name(norm), &[WIDTH], GgmlType::F32, &ones(WIDTH));
            }
        }
        builder.build()
    }

    /// Writes the file: header, padding, tensor data (each tensor aligned).
    pub fn build(&self) -> Vec<u8> {
        let (mut out, offsets) = self.header_bytes();
        pad_to(&mut out, self.alignment);
        let data_start = out.len();
        for ((_, _, _, bytes), offset) in self.tensors.iter().zip(offsets) {
            let position = data_start + offset as usize;
            out.resize(position, 0);
            out.extend_from_slice(bytes);
        }
        out
    }

    /// Writes only the header (metadata and tensor infos, no padding or data): the bytes a
    /// streaming reader sees first, and a truncated file for size checks.
    pub fn build_header_only(&self) -> Vec<u8> {
        self.header_bytes().0
    }

    fn header_bytes(&self) -> (Vec<u8>, Vec<u64>) {
        let mut out = Vec::new();
        out.extend_from_slice(&crate::GGUF_MAGIC.to_le_bytes());
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_string(&mut out, key);
            out.extend_from_slice(&value.type_id().to_le_bytes());
            write_value(&mut out, value);
        }
        let mut offsets = Vec::new();
        let mut next_offset = 0u64;
        for (name, dims, ggml_type, bytes) in &self.tensors {
            write_string(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for dim in dims {
                out.extend_from_slice(&dim.to_le_bytes());
            }
            out.extend_from_slice(&ggml_type.id().to_le_bytes());
            out.extend_from_slice(&next_offset.to_le_bytes());
            offsets.push(next_offset);
            next_offset = (next_offset + bytes.len() as u64).next_multiple_of(self.alignment);
        }
        (out, offsets)
    }
}

fn pad_to(out: &mut Vec<u8>, alignment: u64) {
    let target = (out.len() as u64).next_multiple_of(alignment) as usize;
    out.resize(target, 0);
}

fn write_string(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u64).to_le_bytes());
    out.extend_from_slice(value.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetadataValue) {
    match value {
        MetadataValue::U8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I8(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::Bool(v) => out.push(u8::from(*v)),
        MetadataValue::String(v) => write_string(out, v),
        MetadataValue::Array(values) => {
            // An empty array has no element to take the type from; u8 is as good as any.
            let element_type = values.first().map_or(0, MetadataValue::type_id);
            out.extend_from_slice(&element_type.to_le_bytes());
            out.extend_from_slice(&(values.len() as u64).to_le_bytes());
            for element in values {
                write_value(out, element);
            }
        }
        MetadataValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetadataValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
    }
}
