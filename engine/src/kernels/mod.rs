//! Quantized matrix-vector kernels: the hot path of decoding.
//!
//! Weights stay in their GGUF block formats and are never dequantized wholesale: the
//! 32-element formats (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), the 256-element "K-quant" super-blocks
//! (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), and F32/F16/BF16 for small tensors. A mixed file such as a
//! "Q4_K_M" picks a format per tensor, so every matrix carries its own [`WeightFormat`].
//!
//! Activations are quantized the way llama.cpp's CPU backend does, per weight format: to
//! 32-element 8-bit blocks with an f16 scale ([`ActivationBlock`], ggml's `block_q8_0` /
//! `block_q8_1`) for the 32-element formats, and to 256-element blocks with an f32 scale and
//! 16-element sums ([`SuperBlock`], ggml's `block_q8_K`) for K-quants. Each weight row is then
//! consumed with integer block dot products; this both cuts memory traffic against an f32
//! path and keeps our logits numerically close to llama.cpp's, which the greedy-decoding
//! reference tests rely on. The implementation is chosen at runtime with
//! `is_x86_feature_detected!` ([`KernelImpl::detect`]): AVX-512 (F, BW, VL) with VNNI where
//! the CPU has all of them, else AVX2+FMA+F16C, else the scalar implementation, which is
//! the portable fallback and the reference the SIMD code is tested against.
//! [`KernelImpl::rows_dot`] is the matrix multiplication's entry point: a run of weight
//! rows against every token of a batch, tokens sharing each pass over a row in fours (up to
//! sixteen for the AVX2 K-quants, whose super-blocks are costly to unpack), bit-identical
//! to one [`KernelImpl::row_dot`] per row and token; the SIMD implementations run the whole
//! run inside one call (`x86_tiles`, `x86_kquants`, `x86_avx512`).

mod dequantize;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_kquants;
#[cfg(target_arch = "x86_64")]
mod x86_tiles;

use half::f16;

pub use dequantize::{AffineLayout, affine_groups, dequantize_row};

/// Elements per quantization block of the 32-element block formats (and of
/// [`ActivationBlock`]).
pub const BLOCK: usize = 32;

/// Elements per K-quant super-block (ggml's `QK_K`) and per [`SuperBlock`].
pub const SUPER_BLOCK: usize = 256;

/// The storage format of a weight matrix row.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
}

/// Which quantized form of the activations a weight format is dotted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationKind {
    /// Plain f32 values (F32, F16, BF16 weights).
    Float,
    /// 32-element [`ActivationBlock`]s (ggml's q8_0 / q8_1).
    Blocks,
    /// 256-element [`SuperBlock`]s (ggml's q8_K).
    SuperBlocks,
}

impl WeightFormat {
    /// Every format, in a fixed order (tests iterate over it).
    pub const ALL: [WeightFormat; 13] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::BF16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::Q2_K,
        WeightFormat::Q3_K,
        WeightFormat::Q4_K,
        WeightFormat::Q5_K,
        WeightFormat::Q6_K,
    ];

    /// Elements per block: 1 for plain formats, 32 or 256 for quantized ones.
    pub fn block_elements(self) -> usize {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => 1,
            WeightFormat::Q8_0
            | WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1 => BLOCK,
            WeightFormat::Q2_K
            | WeightFormat::Q3_K
            | WeightFormat::Q4_K
            | WeightFormat::Q5_K
            | WeightFormat::Q6_K => SUPER_BLOCK,
        }
    }

    /// Bytes per block (ggml's `type_size`).
    pub fn block_bytes(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::BF16 => 2,
            WeightFormat::Q8_0 => 34,
            WeightFormat::Q4_0 => 18,
            WeightFormat::Q4_1 => 20,
            WeightFormat::Q5_0 => 22,
            WeightFormat::Q5_1 => 24,
            WeightFormat::Q2_K => 84,
            WeightFormat::Q3_K => 110,
            WeightFormat::Q4_K => 144,
            WeightFormat::Q5_K => 176,
            WeightFormat::Q6_K => 210,
        }
    }

    /// Bytes used by a row of `columns` elements (a whole number of blocks).
    pub fn row_bytes(self, columns: usize) -> usize {
        columns / self.block_elements() * self.block_bytes()
    }

    /// Whether rows are consumed through quantized activations.
    pub fn is_block_quantized(self) -> bool {
        self.activation_kind() != ActivationKind::Float
    }

    /// The activation form this format's dot products take (llama.cpp's `vec_dot_type`).
    pub fn activation_kind(self) -> ActivationKind {
        match self {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => ActivationKind::Float,
            WeightFormat::Q8_0
            | WeightFormat::Q4_0
            | WeightFormat::Q4_1
            | WeightFormat::Q5_0
            | WeightFormat::Q5_1 => ActivationKind::Blocks,
            WeightFormat::Q2_K
            | WeightFormat::Q3_K
            | WeightFormat::Q4_K
            | WeightFormat::Q5_K
            | WeightFormat::Q6_K => ActivationKind::SuperBlocks,
        }
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

/// Quantizes one activation vector (length a multiple of 32) into blocks, with AVX2 where
/// the CPU has it (bit-identical to [`quantize_activations_scalar`]: the same IEEE
/// operations, 8 lanes at a time).
pub fn quantize_activations(input: &[f32], output: &mut Vec<ActivationBlock>) {
    #[cfg(target_arch = "x86_64")]
    if KernelImpl::Avx2.is_supported() {
        output.clear();
        output.extend(
            input
                .chunks_exact(BLOCK)
                .map(|chunk| x86::quantize_block(chunk.try_into().expect("32-value chunks"))),
        );
        return;
    }
    quantize_activations_scalar(input, output);
}

/// The portable form of [`quantize_activations`], and its reference.
pub fn quantize_activations_scalar(input: &[f32], output: &mut Vec<ActivationBlock>) {
    output.clear();
    for chunk in input.chunks_exact(BLOCK) {
        let max_abs = chunk.iter().fold(0.0f32, |max, value| max.max(value.abs()));
        let inverse = if max_abs != 0.0 { 127.0 / max_abs } else { 0.0 };
        let mut qs = [0i8; BLOCK];
        let mut sum = 0i32;
        for (quantized, &value) in qs.iter_mut().zip(chunk) {
            // Values are within [-127, 127] by construction of `inverse`.
            let rounded = round_ties_even_small(value * inverse) as i8;
            *quantized = rounded;
            sum += i32::from(rounded);
        }
        output.push(activation_block(max_abs, qs, sum));
    }
}

/// A block from its largest magnitude, quants and quant sum: `d` and `s` rounded through
/// f16 exactly as llama.cpp stores them.
fn activation_block(max_abs: f32, qs: [i8; BLOCK], sum: i32) -> ActivationBlock {
    let d = max_abs / 127.0;
    ActivationBlock {
        d: f16::from_f32(d).to_f32(),
        s: f16::from_f32(d * sum as f32).to_f32(),
        qs,
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

/// One block of 256 8-bit quantized activations (llama.cpp's `block_q8_K`): `value ≈ d * q`
/// with an f32 `d`, and the sum of each 16 consecutive `q` (the K-quants' offset terms).
#[derive(Debug, Clone, Copy)]
pub struct SuperBlock {
    pub d: f32,
    pub qs: [i8; SUPER_BLOCK],
    pub bsums: [i16; SUPER_BLOCK / 16],
}

/// Quantizes one activation vector (length a multiple of 256) into super-blocks, exactly as
/// ggml's `quantize_row_q8_K_ref` does (which its x86 build uses): the scale comes from the
/// first element of largest magnitude, *with its sign*, so `d` may be negative.
pub fn quantize_super_blocks(input: &[f32], output: &mut Vec<SuperBlock>) {
    output.clear();
    for chunk in input.chunks_exact(SUPER_BLOCK) {
        let mut max = 0.0f32;
        let mut max_abs = 0.0f32;
        for &value in chunk {
            if value.abs() > max_abs {
                max_abs = value.abs();
                max = value;
            }
        }
        let mut block = SuperBlock {
            d: 0.0,
            qs: [0; SUPER_BLOCK],
            bsums: [0; SUPER_BLOCK / 16],
        };
        if max_abs != 0.0 {
            let inverse_scale = -127.0 / max;
            for (quantized, &value) in block.qs.iter_mut().zip(chunk) {
                // |value · inverse_scale| <= 127 by construction; ggml clamps the top anyway.
                *quantized = round_ties_even_small(inverse_scale * value).min(127.0) as i8;
            }
            for (sum, group) in block.bsums.iter_mut().zip(block.qs.chunks_exact(16)) {
                *sum = group.iter().map(|&q| i16::from(q)).sum();
            }
            block.d = 1.0 / inverse_scale;
        }
        output.push(block);
    }
}

/// One token's activations in every form a weight format may need; a form that the weight
/// format does not use may be empty.
#[derive(Debug, Clone, Copy)]
pub struct TokenActivations<'a> {
    pub values: &'a [f32],
    pub blocks: &'a [ActivationBlock],
    pub super_blocks: &'a [SuperBlock],
}

/// Every token's activations of one matrix multiplication, token after token: token `t`'s
/// values are `values[t * columns..][..columns]`, and likewise its blocks and super-blocks
/// (`columns / 32` and `columns / 256` per token). A form the weight format does not use
/// may be empty.
#[derive(Debug, Clone, Copy)]
pub struct BatchActivations<'a> {
    pub tokens: usize,
    pub columns: usize,
    pub values: &'a [f32],
    pub blocks: &'a [ActivationBlock],
    pub super_blocks: &'a [SuperBlock],
}

impl<'a> BatchActivations<'a> {
    /// One token's activations; forms left empty stay empty.
    pub fn token(&self, index: usize) -> TokenActivations<'a> {
        fn part<T>(all: &[T], per_token: usize, index: usize) -> &[T] {
            all.get(index * per_token..(index + 1) * per_token)
                .unwrap_or(&[])
        }
        TokenActivations {
            values: part(self.values, self.columns, index),
            blocks: part(self.blocks, self.columns / BLOCK, index),
            super_blocks: part(self.super_blocks, self.columns / SUPER_BLOCK, index),
        }
    }
}

/// Which implementation the dot products use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelImpl {
    Scalar,
    /// AVX2 + FMA + F16C.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-512 F/BW/VL with VNNI for the quantized dot products (AVX2 for the f16
    /// attention helpers); needs everything `Avx2` does as well.
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

impl KernelImpl {
    /// The fastest implementation this CPU supports, or the one `FLOTILLA_KERNEL` names
    /// (`scalar`, `avx2`, `avx512`; for comparing implementations on one machine) when
    /// this CPU supports it. An unknown or unsupported name is ignored.
    pub fn detect() -> KernelImpl {
        let fastest = [
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx512,
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2,
        ]
        .into_iter()
        .find(|kernel| kernel.is_supported())
        .unwrap_or(KernelImpl::Scalar);
        std::env::var("FLOTILLA_KERNEL")
            .ok()
            .and_then(|name| KernelImpl::named(&name))
            .filter(|kernel| kernel.is_supported())
            .unwrap_or(fastest)
    }

    /// The implementation a `FLOTILLA_KERNEL` value names, if any.
    fn named(name: &str) -> Option<KernelImpl> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(KernelImpl::Scalar),
            #[cfg(target_arch = "x86_64")]
            "avx2" => Some(KernelImpl::Avx2),
            #[cfg(target_arch = "x86_64")]
            "avx512" => Some(KernelImpl::Avx512),
            _ => None,
        }
    }

    /// Whether this CPU can run the implementation (the SIMD ones assert it on use).
    pub fn is_supported(self) -> bool {
        match self {
            KernelImpl::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx512 => x86_avx512::supported(),
        }
    }

    /// Dot product of one weight row with one token's activations.
    ///
    /// `row` must hold `format.row_bytes(input.values.len())` bytes, and `input` the form of
    /// the activations that `format.activation_kind()` names, with at least as many blocks
    /// as the row.
    pub fn row_dot(self, format: WeightFormat, row: &[u8], input: TokenActivations<'_>) -> f32 {
        match format.activation_kind() {
            ActivationKind::Float => match format {
                WeightFormat::F32 => scalar::dot_f32(row, input.values),
                WeightFormat::F16 => scalar::dot_f16(row, input.values),
                _ => scalar::dot_bf16(row, input.values),
            },
            ActivationKind::Blocks => match self {
                KernelImpl::Scalar => scalar::dot_blocks(format, row, input.blocks),
                #[cfg(target_arch = "x86_64")]
                KernelImpl::Avx2 => x86::dot_blocks(format, row, input.blocks),
                #[cfg(target_arch = "x86_64")]
                KernelImpl::Avx512 => x86_avx512::dot_blocks(format, row, input.blocks),
            },
            ActivationKind::SuperBlocks => match self {
                KernelImpl::Scalar => scalar::dot_super_blocks(format, row, input.super_blocks),
                #[cfg(target_arch = "x86_64")]
                KernelImpl::Avx2 => x86_kquants::dot_super_blocks(format, row, input.super_blocks),
                #[cfg(target_arch = "x86_64")]
                KernelImpl::Avx512 => x86_avx512::dot_super_blocks(format, row, input.super_blocks),
            },
        }
    }

    /// Dot products of one weight row with four tokens' activations at once (the weight
    /// row is decoded once where a kernel supports it); equal to four
    /// [`KernelImpl::row_dot`] calls, bit for bit.
    pub fn row_dot_x4(
        self,
        format: WeightFormat,
        row: &[u8],
        inputs: [TokenActivations<'_>; 4],
    ) -> [f32; 4] {
        match self {
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2 if format.activation_kind() == ActivationKind::Blocks => {
                x86::dot_blocks_x4(format, row, inputs.map(|input| input.blocks))
            }
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2 if format.activation_kind() == ActivationKind::SuperBlocks => {
                x86_kquants::dot_super_blocks_x4(
                    format,
                    row,
                    inputs.map(|input| input.super_blocks),
                )
            }
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx512 if format.activation_kind() == ActivationKind::Blocks => {
                x86_avx512::dot_blocks_x4(format, row, inputs.map(|input| input.blocks))
            }
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx512 if format.activation_kind() == ActivationKind::SuperBlocks => {
                x86_avx512::dot_super_blocks_x4(format, row, inputs.map(|input| input.super_blocks))
            }
            _ => inputs.map(|input| self.row_dot(format, row, input)),
        }
    }

    /// Dot products of several consecutive weight rows with every token of a batch:
    /// `output[r * batch.tokens + t] = row r · token t`, where `rows` holds whole rows of
    /// `format.row_bytes(batch.columns)` bytes. Equal, bit for bit, to one
    /// [`KernelImpl::row_dot`] per row and token; tokens share each pass over a row in
    /// fours ([`KernelImpl::row_dot_x4`]), and the SIMD implementations run the whole loop
    /// inside one call, so short rows do not pay a dispatch per row and token.
    pub fn rows_dot(
        self,
        format: WeightFormat,
        rows: &[u8],
        batch: BatchActivations<'_>,
        output: &mut [f32],
    ) {
        let row_bytes = format.row_bytes(batch.columns);
        assert!(
            row_bytes > 0 && rows.len().is_multiple_of(row_bytes),
            "rows are whole {format:?} rows of {} columns",
            batch.columns
        );
        assert_eq!(
            output.len(),
            rows.len() / row_bytes * batch.tokens,
            "one output per row and token"
        );
        let covered = match format.activation_kind() {
            ActivationKind::Float => batch.values.len() >= batch.tokens * batch.columns,
            ActivationKind::Blocks => batch.blocks.len() >= batch.tokens * (batch.columns / BLOCK),
            ActivationKind::SuperBlocks => {
                batch.super_blocks.len() >= batch.tokens * (batch.columns / SUPER_BLOCK)
            }
        };
        assert!(
            covered,
            "the batch lacks the {format:?} activations of its {} tokens",
            batch.tokens
        );
        if batch.tokens == 0 || rows.is_empty() {
            return;
        }
        match (self, format.activation_kind()) {
            #[cfg(target_arch = "x86_64")]
            (KernelImpl::Avx2, ActivationKind::Blocks) => x86_tiles::dot_blocks_rows(
                format,
                rows,
                row_bytes,
                batch.blocks,
                batch.columns / BLOCK,
                output,
            ),
            #[cfg(target_arch = "x86_64")]
            (KernelImpl::Avx2, ActivationKind::SuperBlocks) => x86_kquants::dot_super_blocks_rows(
                format,
                rows,
                row_bytes,
                batch.super_blocks,
                batch.columns / SUPER_BLOCK,
                output,
            ),
            #[cfg(target_arch = "x86_64")]
            (KernelImpl::Avx512, ActivationKind::Blocks) => x86_avx512::dot_blocks_rows(
                format,
                rows,
                row_bytes,
                batch.blocks,
                batch.columns / BLOCK,
                output,
            ),
            #[cfg(target_arch = "x86_64")]
            (KernelImpl::Avx512, ActivationKind::SuperBlocks) => x86_avx512::dot_super_blocks_rows(
                format,
                rows,
                row_bytes,
                batch.super_blocks,
                batch.columns / SUPER_BLOCK,
                output,
            ),
            _ => {
                for (row, row_output) in rows
                    .chunks_exact(row_bytes)
                    .zip(output.chunks_exact_mut(batch.tokens))
                {
                    let grouped = batch.tokens / 4 * 4;
                    for first in (0..grouped).step_by(4) {
                        let results = self.row_dot_x4(
                            format,
                            row,
                            std::array::from_fn(|offset| batch.token(first + offset)),
                        );
                        row_output[first..first + 4].copy_from_slice(&results);
                    }
                    for (index, value) in row_output.iter_mut().enumerate().skip(grouped) {
                        *value = self.row_dot(format, row, batch.token(index));
                    }
                }
            }
        }
    }

    /// `Σ key[i] · query[i]` over an f16 key (attention scores).
    pub fn dot_f16_f32(self, key: &[f16], query: &[f32]) -> f32 {
        debug_assert_eq!(key.len(), query.len());
        match self {
            KernelImpl::Scalar => key.iter().zip(query).map(|(k, q)| k.to_f32() * q).sum(),
            #[cfg(target_arch = "x86_64")]
            KernelImpl::Avx2 | KernelImpl::Avx512 => x86::dot_f16_f32(key, query),
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
            KernelImpl::Avx2 | KernelImpl::Avx512 => x86::add_scaled_f16(output, weight, value),
        }
    }
}

#[inline(always)]
pub(crate) fn read_f16(bytes: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([bytes[at], bytes[at + 1]]).to_f32()
}

#[cfg(test)]
mod tests;
