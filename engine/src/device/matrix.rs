//! Weight matrices in device memory, still quantized.
//!
//! A GGUF block format cannot be read by burn's tensor operations as it is (fields of 2,
//! 12 or 34 bytes, bits spread over several arrays), so each row is rewritten once at load
//! into [`AffineLayout`]'s groups: 4- or 8-bit codes packed into 32-bit words, and one f32
//! scale and offset per group of 16 or 32. Each matrix product dequantizes its weight
//! with integer shifts and masks and two float operations, into a transient f32 matrix
//! that the product then reads. The values are those of the CPU dequantizer, bit for bit
//! (`kernels::tests`), so the device and CPU graphs differ only in how they add up.
//!
//! Why not a CubeCL kernel that reads the codes inside the product: it would save the
//! transient matrix's memory traffic, which is what decoding on a GPU is bound by, and it
//! is the next step (PERFORMANCE.md); this form runs on every burn backend today, the CPU
//! `flex` one included, which is how the graph is tested without a GPU.
//!
//! Matrices are cut into chunks of rows of at most [`CHUNK_ELEMENTS`], because a device
//! binds at most so much of one buffer to a shader (128 MiB on Mesa's lavapipe and on many
//! GPUs); Qwen2.5's 151,936 × 896 output head is 545 MB as f32.

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::kernels::{AffineLayout, affine_groups};
use crate::model::Matrix;

/// Most elements per chunk: 64 MiB as the transient f32 matrix.
const CHUNK_ELEMENTS: usize = 1 << 24;

/// One chunk of rows, as uploaded.
enum Chunk {
    /// Float formats (F32, F16, BF16), uploaded as f32. (Both variants are boxed: a
    /// burn tensor handle is some 600 bytes.)
    Dense(Box<Tensor<2>>),
    /// Block formats, as packed codes with per-group scales and offsets.
    Codes(Box<Codes>),
}

struct Codes {
    /// `[rows, columns · bits / 32]`: code `k` of a word in bits `k · bits ..`.
    codes: Tensor<2, Int>,
    /// `[rows, groups, 1]`.
    scales: Tensor<3>,
    offsets: Tensor<3>,
    layout: AffineLayout,
    rows: usize,
}

/// A `rows × columns` weight on a device.
pub(crate) struct DeviceMatrix {
    chunks: Vec<Chunk>,
    rows: usize,
    columns: usize,
    bytes: usize,
}

impl DeviceMatrix {
    /// Uploads `matrix` (read from the mapped file) to `device`.
    pub(crate) fn upload(matrix: &Matrix, device: &Device) -> DeviceMatrix {
        let columns = matrix.columns;
        let rows_per_chunk = (CHUNK_ELEMENTS / columns.max(1)).max(1);
        let mut chunks = Vec::new();
        let mut bytes = 0;
        let mut start = 0;
        while start < matrix.rows {
            let rows = rows_per_chunk.min(matrix.rows - start);
            let chunk = match AffineLayout::of(matrix.format) {
                None => {
                    let mut values = vec![0.0f32; rows * columns];
                    for (row, output) in values.chunks_exact_mut(columns).enumerate() {
                        matrix.dequantize_row_into(start + row, output);
                    }
                    bytes += values.len() * 4;
                    Chunk::Dense(Box::new(Tensor::from_data(
                        TensorData::new(values, [rows, columns]),
                        device,
                    )))
                }
                Some(layout) => {
                    let (mut codes, mut groups) = (Vec::new(), Vec::new());
                    for row in start..start + rows {
                        affine_groups(matrix.format, matrix.row(row), &mut codes, &mut groups);
                    }
                    let words = pack(&codes, layout.bits);
                    let group_count = columns / layout.group;
                    let (scales, offsets): (Vec<f32>, Vec<f32>) = groups.into_iter().unzip();
                    bytes += words.len() * 4 + scales.len() * 8;
                    let words_per_row = words.len() / rows;
                    Chunk::Codes(Box::new(Codes {
                        codes: Tensor::from_data(
                            TensorData::new(words, [rows, words_per_row]),
                            device,
                        ),
                        scales: Tensor::from_data(
                            TensorData::new(scales, [rows, group_count, 1]),
                            device,
                        ),
                        offsets: Tensor::from_data(
                            TensorData::new(offsets, [rows, group_count, 1]),
                            device,
                        ),
                        layout,
                        rows,
                    }))
                }
            };
            chunks.push(chunk);
            start += rows;
        }
        DeviceMatrix {
            chunks,
            rows: matrix.rows,
            columns,
            bytes,
        }
    }

    /// `input · Wᵀ`: `[tokens, columns]` to `[tokens, rows]`.
    pub(crate) fn apply(&self, input: Tensor<2>) -> Tensor<2> {
        let mut outputs: Vec<Tensor<2>> = self
            .chunks
            .iter()
            .map(|chunk| {
                #[cfg(feature = "gpu")]
                if let Some(output) = self.kernel_product(chunk, &input) {
                    return output;
                }
                input.clone().matmul(self.dequantize(chunk).transpose())
            })
            .collect();
        if outputs.len() == 1 {
            outputs.pop().expect("one chunk")
        } else {
            Tensor::cat(outputs, 1)
        }
    }

    /// The product by [`super::kernel`], where it serves (a CubeCL device, few tokens).
    #[cfg(feature = "gpu")]
    fn kernel_product(&self, chunk: &Chunk, input: &Tensor<2>) -> Option<Tensor<2>> {
        let Chunk::Codes(codes) = chunk else {
            return None;
        };
        if !super::kernel::is_worth_it(input) {
            return None;
        }
        let weight = super::kernel::PackedWeight {
            codes: &codes.codes,
            scales: &codes.scales,
            offsets: &codes.offsets,
            bits: codes.layout.bits,
            group: codes.layout.group,
            zero: f32::from(codes.layout.zero),
        };
        super::kernel::product(input.clone(), &weight)
    }

    fn dequantize(&self, chunk: &Chunk) -> Tensor<2> {
        let Codes {
            codes,
            scales,
            offsets,
            layout,
            rows,
        } = match chunk {
            Chunk::Dense(weight) => return weight.as_ref().clone(),
            Chunk::Codes(codes) => codes.as_ref(),
        };
        let rows = *rows;
        let device = codes.device();
        let per_word = (32 / layout.bits) as usize;
        let words = codes.dims()[1];
        let shifts = Tensor::<1, Int>::arange(0..per_word as i64, &device)
            .mul_scalar(i64::from(layout.bits))
            .reshape([1, 1, per_word])
            .expand([rows, words, per_word]);
        let groups = self.columns / layout.group;
        codes
            .clone()
            .unsqueeze_dim::<3>(2)
            .expand([rows, words, per_word])
            .bitwise_right_shift(shifts)
            .bitwise_and_scalar((1i64 << layout.bits) - 1)
            .float()
            .reshape([rows, groups, layout.group])
            .sub_scalar(f32::from(layout.zero))
            .mul(scales.clone())
            .add(offsets.clone())
            .reshape([rows, self.columns])
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Device bytes the weight occupies (codes, scales and offsets, or f32 values).
    pub(crate) fn byte_size(&self) -> usize {
        self.bytes
    }
}

/// Packs codes of `bits` bits into little-endian 32-bit words, `32 / bits` per word, as
/// the i32 values burn's integer tensors hold (a top bit set reads negative; the shifts
/// that unpack are masked, so sign extension does not matter).
fn pack(codes: &[u8], bits: u32) -> Vec<i32> {
    let per_word = (32 / bits) as usize;
    codes
        .chunks(per_word)
        .map(|word| {
            word.iter()
                .enumerate()
                .fold(0u32, |packed, (index, &code)| {
                    packed | (u32::from(code) << (index as u32 * bits))
                }) as i32
        })
        .collect()
}
