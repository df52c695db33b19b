//! Quantized matrix-vector kernels: the hot path of decoding.
//!
//! Weights stay in their GGUF block formats (Q8_0, Q4_0, Q4_1; F32/F16/BF16 for small
//! tensors) and are never dequantized wholesale. Activations are quantized to 8-bit blocks
//! the way llama.cpp's CPU backend does (`quantize_row_q8_1`), so each weight row is consumed
//! with integer block dot products; this both halves memory traffic against an f32 path and
//! keeps our logits numerically close to llama.cpp's, which the greedy-decoding reference
//! test relies on. An AVX2+FMA implementation is chosen at runtime with
//! `is_x86_feature_detected!`; the scalar implementation is the portable fallback and the
//! reference the SIMD code is tested against.

mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

use half::{bf16, f16};

/// Elements per quantization block of every supported block format.
pub const BLOCK: usize = 32;

/// The storage format of a weight matrix row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl WeightFormat {
    /// Bytes used by a row of `columns` elements.
    pub fn row_bytes(self, columns: usize) -> usize {
        match self {
            WeightFormat::F32 => columns * 4,
            WeightFormat::F16 | WeightFormat::BF16 => columns * 2,
            WeightFormat::Q8_0 => columns / BLOCK * 34,
            WeightFormat::Q4_0 => columns / BLOCK * 18,
            WeightFormat::Q4_1 => columns / BLOCK * 20,
        }
    }

    /// Whether rows are consumed through quantized activations.
    pub fn is_block_quantized(self) -> bool {
        matches!(
            self,
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1
        )
    }
}

/// One block of 8-bit quantized activations (llama.cpp's `block_q8_1`): `value ≈ d * q`,
/// and `s = d * Σq` for the Q4_1 offset term. `d` and `s` are rounded through f16 exactly
/// as llama.cpp stores them, so both engines see the same activations.
#[derive(Debug, Clone, Copy)]
pub struct ActivationBlock {
    pub d: f32,
    pub s: f32,
    pub qs: [i8; BLOCK],
}

/// Quantizes one activation vector (length a multiple of 32) into blocks.
pub fn quantize_activations(input: &[f32], output: &mut Vec<ActivationBlock>) {
    output.clear();
    for chunk in input.chunks_exact(BLOCK) {
        let max_abs = chunk.iter().fold(0.0f32, |max, value| max.max(value.abs()));
        let d = max_abs / 127.0;
        let inverse = if max_abs != 0.0 { 127.0 / max_abs } else { 0.0 };
        let mut qs = [0i8; BLOCK];
        let mut sum = 0i32;
        for (quantized, &value) in qs.iter_mut().zip(chunk) {
            // Values are within [-127, 127] by construction of `inverse`.
            let rounded = round_ties_even_small(value * inverse) as i8;
            *quantized = rounded;
            sum += i32::from(rounded);
        }
        output.push(ActivationBlock {
            d: f16::from_f32(d).to_f32(),
            s: f16::from_f32(d * sum as f32).to_f32(),
            qs,
        });
    }
}

/// Round-half-to-even for |x| < 2^22 without a libm call: adding and subtracting 1.5·2^23
/// leaves no fraction bits, so the FPU's default rounding (to nearest, ties to even) does
/// the work. Equal to `f32::round_ties_even` on that range (tested below).
#[inline(always)]
fn round_ties_even_small(value: f32) -> f32 {
    const SHIFT: f32 = 12_582_912.0; // 1.5 * 2^23
    (value + SHIFT) - SHIFT
}

/// Which implementation the dot products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImpl {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
}

impl KernelImpl {
    /// The fastest implementation this CPU supports.
    pub fn detect() -> KernelImpl {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
            {
                return KernelImpl::Avx2;
            }
        }
        KernelImpl::Scalar
    }

    /// Dot product of one weight row with an activation vector.
    ///
    /// `row` must hold `format.row_bytes(input.len())` bytes and `blocks` the quantized
    /// form of `input` (only used for block formats).
    pub fn row_dot(
        self,
        format: WeightFormat,
        row: &[u8],
        input: &[f32],
        blocks: &[ActivationBlock],
    ) -> f32 {
        debug_assert_eq!(row.len(), format.row_bytes(input.len()));
        match format {
            WeightFormat::F32 => scalar::dot_f32(row, input),
            WeightFormat::F16 => scalar::dot_f16(row, input),
            WeightFormat::BF16 => scalar::dot_bf16(row, input),
            WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1 => match self {
                KernelImpl::Scalar => scalar::dot_blocks(format, row, blocks),
                #[cfg(target_arch = "x86_64")]
                KernelImpl::Avx2 => x86::dot_blocks(format, row, blocks),
            },
        }
    }
}

impl KernelImpl {
    /// Dot products of one weight row with four tokens' activations at once (the weight
    /// row is decoded once); equal to four [`KernelImpl::row_dot`] calls.
    pub fn row_dot_x4(
        self,
        format: WeightFormat,
        row: &[u8],
        inputs: [&[f32]; 4],
        blocks: [&[ActivationBlock]; 4],
    ) -> [f32; 4] {
        match self {
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2 if format.is_block_quantized() => {
                x86::dot_blocks_x4(format, row, blocks)
            }
            _ => [0, 1, 2, 3].map(|token| self.row_dot(format, row, inputs[token], blocks[token])),
        }
    }

    /// `Σ key[i] · query[i]` over an f16 key (attention scores).
    pub fn dot_f16_f32(self, key: &[f16], query: &[f32]) -> f32 {
        debug_assert_eq!(key.len(), query.len());
        match self {
            KernelImpl::Scalar => key.iter().zip(query).map(|(k, q)| k.to_f32() * q).sum(),
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2 => x86::dot_f16_f32(key, query),
        }
    }

    /// `output[i] += weight · value[i]` over an f16 value (attention output).
    pub fn add_scaled_f16(self, output: &mut [f32], weight: f32, value: &[f16]) {
        debug_assert_eq!(output.len(), value.len());
        match self {
            KernelImpl::Scalar => {
                for (out, v) in output.iter_mut().zip(value) {
                    *out += weight * v.to_f32();
                }
            }
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2 => x86::add_scaled_f16(output, weight, value),
        }
    }
}

/// Dequantizes one row into `output` (used for embedding lookups and tests).
pub fn dequantize_row(format: WeightFormat, row: &[u8], output: &mut [f32]) {
    match format {
        WeightFormat::F32 => {
            for (value, bytes) in output.iter_mut().zip(row.chunks_exact(4)) {
                *value = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        WeightFormat::F16 => {
            for (value, bytes) in output.iter_mut().zip(row.chunks_exact(2)) {
                *value = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
            }
        }
        WeightFormat::BF16 => {
            for (value, bytes) in output.iter_mut().zip(row.chunks_exact(2)) {
                *value = bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
            }
        }
        WeightFormat::Q8_0 => {
            for (values, block) in output.chunks_exact_mut(BLOCK).zip(row.chunks_exact(34)) {
                let d = read_f16(block, 0);
                for (value, &quantized) in values.iter_mut().zip(&block[2..]) {
                    *value = d * f32::from(quantized as i8);
                }
            }
        }
        WeightFormat::Q4_0 => {
            for (values, block) in output.chunks_exact_mut(BLOCK).zip(row.chunks_exact(18)) {
                let d = read_f16(block, 0);
                for (index, &byte) in block[2..].iter().enumerate() {
                    values[index] = d * (f32::from(byte & 0x0F) - 8.0);
                    values[index + 16] = d * (f32::from(byte >> 4) - 8.0);
                }
            }
        }
        WeightFormat::Q4_1 => {
            for (values, block) in output.chunks_exact_mut(BLOCK).zip(row.chunks_exact(20)) {
                let d = read_f16(block, 0);
                let m = read_f16(block, 2);
                for (index, &byte) in block[4..].iter().enumerate() {
                    values[index] = d * f32::from(byte & 0x0F) + m;
                    values[index + 16] = d * f32::from(byte >> 4) + m;
                }
            }
        }
    }
}

#[inline(always)]
pub(crate) fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests;
