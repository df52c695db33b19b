//! Weight matrices that stay in their GGUF encoding inside the memory-mapped file, and the
//! batched, multi-threaded matrix multiplication over them.
//!
//! Each matrix keeps the format its tensor has in the file, so a mixed file (a "Q4_K_M"
//! holds Q4_K, Q5_0, Q6_K and Q8_0 tensors side by side) runs every tensor through its own
//! kernel. The caller hands [`matmul`] f32 activations and their 32-element 8-bit blocks;
//! K-quant matrices need 256-element q8_K blocks instead, which [`matmul`] makes from the
//! f32 values into its scratch (a pass over the input, small next to the matrix).

use std::ops::Range;
use std::sync::Arc;

use flotilla_gguf::{GgmlType, GgufFile};
use rayon::prelude::*;

use crate::EngineError;
use crate::kernels::{
    ActivationBlock, ActivationKind, BatchActivations, KernelImpl, SuperBlock, WeightFormat,
    dequantize_row, quantize_super_blocks,
};

/// A 2-D weight (`rows` outputs × `columns` inputs) borrowed from the mapped model file.
#[derive(Debug, Clone)]
pub struct Matrix {
    file: Arc<GgufFile>,
    range: Range<usize>,
    pub format: WeightFormat,
    pub rows: usize,
    pub columns: usize,
}

fn weight_format(ggml_type: GgmlType) -> Option<WeightFormat> {
    Some(match ggml_type {
        GgmlType::F32 => WeightFormat::F32,
        GgmlType::F16 => WeightFormat::F16,
        GgmlType::BF16 => WeightFormat::BF16,
        GgmlType::Q8_0 => WeightFormat::Q8_0,
        GgmlType::Q4_0 => WeightFormat::Q4_0,
        GgmlType::Q4_1 => WeightFormat::Q4_1,
        GgmlType::Q5_0 => WeightFormat::Q5_0,
        GgmlType::Q5_1 => WeightFormat::Q5_1,
        GgmlType::Q2_K => WeightFormat::Q2_K,
        GgmlType::Q3_K => WeightFormat::Q3_K,
        GgmlType::Q4_K => WeightFormat::Q4_K,
        GgmlType::Q5_K => WeightFormat::Q5_K,
        GgmlType::Q6_K => WeightFormat::Q6_K,
        _ => return None,
    })
}

impl Matrix {
    /// Looks up a 2-D tensor and checks its shape is `[columns, rows]` (ggml order).
    pub fn load(
        file: &Arc<GgufFile>,
        name: &str,
        columns: usize,
        rows: usize,
    ) -> Result<Matrix, EngineError> {
        let tensor = file
            .header()
            .tensor(name)
            .ok_or_else(|| EngineError::Missing(format!("tensor {name}")))?;
        let format = weight_format(tensor.ggml_type).ok_or_else(|| {
            EngineError::Unsupported(format!(
                "tensor {name} has type {} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)",
                tensor.ggml_type
            ))
        })?;
        let expected = [columns as u64, rows as u64];
        let matches = tensor.dims == expected || (rows == 1 && tensor.dims == [columns as u64]);
        if !matches {
            return Err(EngineError::InvalidModel(format!(
                "tensor {name} has shape {:?}, expected {expected:?}",
                tensor.dims
            )));
        }
        let block = format.block_elements();
        if !columns.is_multiple_of(block) {
            return Err(EngineError::InvalidModel(format!(
                "tensor {name} ({}) rows of {columns} are not whole {block}-element blocks",
                tensor.ggml_type
            )));
        }
        let range = file.tensor_range(tensor)?;
        Ok(Matrix {
            file: Arc::clone(file),
            range,
            format,
            rows,
            columns,
        })
    }

    fn bytes(&self) -> &[u8] {
        &self.file.as_bytes()[self.range.clone()]
    }

    /// The encoded bytes of one row.
    pub fn row(&self, index: usize) -> &[u8] {
        let row_bytes = self.format.row_bytes(self.columns);
        &self.bytes()[index * row_bytes..(index + 1) * row_bytes]
    }

    /// Dequantizes one row (embedding lookup).
    pub fn dequantize_row_into(&self, index: usize, output: &mut [f32]) {
        dequantize_row(self.format, self.row(index), output);
    }

    /// Dequantizes a 1-D tensor (norm weights) into a vector.
    pub fn to_vec(&self) -> Vec<f32> {
        let mut values = vec![0.0; self.columns * self.rows];
        for (index, chunk) in values.chunks_exact_mut(self.columns).enumerate() {
            self.dequantize_row_into(index, chunk);
        }
        values
    }

    /// Bytes of weight data.
    pub fn byte_size(&self) -> usize {
        self.range.len()
    }
}

/// Inputs to a batched matrix multiplication: `tokens` rows of `columns` activations and,
/// for block-quantized weights, their 8-bit blocks (quantized once, reused by every weight).
pub struct Activations<'a> {
    pub values: &'a [f32],
    pub blocks: &'a [ActivationBlock],
    pub columns: usize,
}

impl Activations<'_> {
    fn token_count(&self) -> usize {
        self.values.len() / self.columns
    }
}

/// Scratch for [`matmul`]: the row-major (`rows × tokens`) result before transposition,
/// and the q8_K form of the input for K-quant weights.
#[derive(Default)]
pub struct MatmulScratch {
    transposed: Vec<f32>,
    super_blocks: Vec<SuperBlock>,
    token_super_blocks: Vec<SuperBlock>,
}

/// `output[t][r] = Σ_c weights[r][c] · input[t][c]` for every token `t`.
///
/// Rows are split across the rayon pool; each weight row is read once for all tokens of
/// the batch, which is what makes batching sequences and prompt tokens pay off.
pub fn matmul(
    kernel: KernelImpl,
    weights: &Matrix,
    input: &Activations<'_>,
    scratch: &mut MatmulScratch,
    output: &mut [f32],
) {
    let tokens = input.token_count();
    debug_assert_eq!(input.columns, weights.columns);
    debug_assert_eq!(output.len(), tokens * weights.rows);
    let kind = weights.format.activation_kind();
    scratch.super_blocks.clear();
    if kind == ActivationKind::SuperBlocks {
        for values in input.values.chunks_exact(input.columns) {
            quantize_super_blocks(values, &mut scratch.token_super_blocks);
            scratch
                .super_blocks
                .extend_from_slice(&scratch.token_super_blocks);
        }
    }
    let batch = BatchActivations {
        tokens,
        columns: input.columns,
        values: input.values,
        blocks: match kind {
            ActivationKind::Blocks => input.blocks,
            _ => &[],
        },
        super_blocks: &scratch.super_blocks,
    };
    scratch.transposed.resize(weights.rows * tokens, 0.0);
    let rows_per_task = (weights.rows / (rayon::current_num_threads() * 8)).clamp(16, 256);
    let row_bytes = weights.format.row_bytes(weights.columns);
    let bytes = weights.bytes();
    scratch
        .transposed
        .par_chunks_mut(rows_per_task * tokens)
        .enumerate()
        .for_each(|(task, chunk)| {
            // Each weight row is read once for all tokens of the batch (in fours).
            let first_row = task * rows_per_task;
            let rows = &bytes[first_row * row_bytes..][..chunk.len() / tokens * row_bytes];
            kernel.rows_dot(weights.format, rows, batch, chunk);
        });
    // Transposed back to token-major in the pool too, eight tokens per item: each item
    // reads 32 contiguous bytes per row and writes eight sequential streams. On one thread
    // the strided writes were ~4% of prefill.
    let transposed = &scratch.transposed;
    if tokens == 1 {
        output.copy_from_slice(transposed);
        return;
    }
    const TOKENS_PER_ITEM: usize = 8;
    output
        .par_chunks_mut(weights.rows * TOKENS_PER_ITEM)
        .enumerate()
        .for_each(|(item, item_output)| {
            let first = item * TOKENS_PER_ITEM;
            let count = item_output.len() / weights.rows;
            for (row, values) in transposed.chunks_exact(tokens).enumerate() {
                for (offset, &value) in values[first..first + count].iter().enumerate() {
                    item_output[offset * weights.rows + row] = value;
                }
            }
        });
}
