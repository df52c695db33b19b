//! AVX2 matrix multiplication of 32-element block rows (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) by a
//! batch of tokens, in tiles of rows × tokens (llamafile's tinyBLAS idea) walked inside one
//! `target_feature` function, so short rows pay no dispatch per row and token.
//!
//! Inside a tile every weight block is decoded once for all its tokens, every activation
//! block is loaded once for all its rows, and each (row, token) pair keeps its own
//! accumulator in a register. A tile's arithmetic per (row, token) is exactly that of
//! [`super::x86::dot_blocks`] (same products, same FMA chain in block order, same horizontal
//! sum), so results are bit-identical to one `row_dot` per row and token whatever the tile
//! shape; batching must not change answers.
//! This module, like `x86`, is allowed `unsafe` for the intrinsics.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::x86::{
    assert_supported, broadcast_f16, broadcast_f16_pair, bytes_from_bits, horizontal_sum,
    load_activations, q5_0_weights, unpack_nibbles,
};
use super::{ActivationBlock, WeightFormat};

// The 32-element formats, as `const` parameters of the generic tile below.
const Q8_0: u8 = 0;
const Q4_0: u8 = 1;
const Q4_1: u8 = 2;
const Q5_0: u8 = 3;
const Q5_1: u8 = 4;

const fn format_bytes(format: u8) -> usize {
    match format {
        Q8_0 => 34,
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        _ => 24,
    }
}

/// Whether a format's quants are unsigned with a minimum (`d·q + m`), whose blocks start
/// with the f16 pair `d`, `m`.
const fn is_affine(format: u8) -> bool {
    format == Q4_1 || format == Q5_1
}

/// Every token's dot product with each of several rows: `output[r * tokens + t]`, where
/// `blocks` holds the tokens' activation blocks, `per_token` a token, one token after
/// another. Bit-identical to [`super::x86::dot_blocks`] per row and token.
pub(super) fn dot_blocks_rows(
    format: WeightFormat,
    rows: &[u8],
    row_bytes: usize,
    blocks: &[ActivationBlock],
    per_token: usize,
    output: &mut [f32],
) {
    assert_supported();
    let (row_count, tokens) = super::x86::rows_shape(
        rows,
        row_bytes,
        format.block_bytes(),
        blocks.len(),
        per_token,
        output.len(),
    );
    if row_count == 0 || tokens == 0 {
        return;
    }
    // SAFETY: the CPU features were asserted above. The tiles read `rows` and `blocks` only
    // through bounds-checked slices, with unaligned loads of exactly the bytes sliced.
    unsafe {
        match format {
            WeightFormat::Q8_0 => rows_generic::<Q8_0>(rows, row_bytes, blocks, per_token, output),
            WeightFormat::Q4_0 => rows_generic::<Q4_0>(rows, row_bytes, blocks, per_token, output),
            WeightFormat::Q4_1 => rows_generic::<Q4_1>(rows, row_bytes, blocks, per_token, output),
            WeightFormat::Q5_0 => rows_generic::<Q5_0>(rows, row_bytes, blocks, per_token, output),
            WeightFormat::Q5_1 => rows_generic::<Q5_1>(rows, row_bytes, blocks, per_token, output),
            _ => unreachable!("{format:?} is not a 32-element block format"),
        }
    }
}

/// Walks the output in tiles of one row × four tokens, then the leftover tokens one at a
/// time. Larger tiles were slower here (`kernel_throughput`, Zen 2): two rows × four tokens
/// by 5% (the loop is bound by the integer multiplies, not by loading activations, and
/// eight accumulators spill), and four rows × one token cut decoding on Qwen2.5-0.5B from
/// ~12-15 to ~9-12 tokens/s although it was faster on rows in cache.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_generic<const FORMAT: u8>(
    rows: &[u8],
    row_bytes: usize,
    blocks: &[ActivationBlock],
    per_token: usize,
    output: &mut [f32],
) {
    let row_count = rows.len() / row_bytes;
    let tokens = output.len() / row_count;
    let row_blocks = row_bytes / format_bytes(FORMAT);
    let row = |index: usize| &rows[index * row_bytes..(index + 1) * row_bytes];
    let token = |index: usize| &blocks[index * per_token..][..row_blocks];
    let grouped = tokens / 4 * 4;
    for row_index in 0..row_count {
        for first in (0..grouped).step_by(4) {
            let [values] = tile::<FORMAT, 1, 4>(
                [row(row_index)],
                std::array::from_fn(|offset| token(first + offset)),
            );
            output[row_index * tokens + first..][..4].copy_from_slice(&values);
        }
        for index in grouped..tokens {
            let [[value]] = tile::<FORMAT, 1, 1>([row(row_index)], [token(index)]);
            output[row_index * tokens + index] = value;
        }
    }
}

/// The signed quants of one block of a format with signed quants (Q8_0, Q4_0, Q5_0), or
/// the unsigned quants of an affine one (Q4_1: 0..15, Q5_1: 0..31).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn decode<const FORMAT: u8>(block: &[u8]) -> __m256i {
    match FORMAT {
        Q8_0 => {
            let quants: &[u8; 32] = block[2..34].try_into().expect("a q8_0 block's quants");
            // SAFETY: exactly 32 readable bytes; unaligned load.
            unsafe { _mm256_loadu_si256(quants.as_ptr().cast()) }
        }
        Q4_0 => _mm256_sub_epi8(unpack_nibbles(&block[2..18]), _mm256_set1_epi8(8)),
        Q5_0 => q5_0_weights(block),
        Q4_1 => unpack_nibbles(&block[4..20]),
        _ => {
            let high = _mm256_and_si256(bytes_from_bits(&block[4..8]), _mm256_set1_epi8(0x10));
            _mm256_or_si256(unpack_nibbles(&block[8..24]), high)
        }
    }
}

/// `R` rows × `N` tokens of dot products, each weight block decoded once per tile and each
/// activation block loaded once per tile. Per (row, token) the operations of
/// `x86::dot_blocks` in the same order: `acc = fma(d_w·d_a, Σ w·a, acc)` block after block,
/// a horizontal sum, and for the affine formats `+ Σ m·s` summed in block order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const FORMAT: u8, const R: usize, const N: usize>(
    rows: [&[u8]; R],
    tokens: [&[ActivationBlock]; N],
) -> [[f32; N]; R] {
    let bytes = format_bytes(FORMAT);
    let ones = _mm256_set1_epi16(1);
    let mut sums = [[_mm256_setzero_ps(); N]; R];
    let mut offsets = [[0.0f32; N]; R];
    let row_blocks = rows[0].len() / bytes;
    // Plain loops over `R` and `N` rather than `array::from_fn`: closures do not inherit
    // the target features, so LLVM called them out of line with vectors through memory.
    for index in 0..row_blocks {
        let mut scales = [_mm256_setzero_ps(); R];
        let mut minimums = [0.0f32; R];
        let mut weights = [_mm256_setzero_si256(); R];
        let mut magnitudes = [_mm256_setzero_si256(); R];
        for r in 0..R {
            let block = &rows[r][index * bytes..][..bytes];
            if is_affine(FORMAT) {
                (scales[r], minimums[r]) = broadcast_f16_pair(block);
            } else {
                scales[r] = broadcast_f16(block, 0);
            }
            weights[r] = decode::<FORMAT>(block);
            // maddubs needs an unsigned left operand: signed formats move the weight signs
            // onto the activations.
            magnitudes[r] = if is_affine(FORMAT) {
                weights[r]
            } else {
                _mm256_sign_epi8(weights[r], weights[r])
            };
        }
        for t in 0..N {
            let activation = &tokens[t][index];
            let quants = load_activations(activation);
            let activation_scale = _mm256_set1_ps(activation.d);
            for r in 0..R {
                let scale = _mm256_mul_ps(scales[r], activation_scale);
                let operand = if is_affine(FORMAT) {
                    offsets[r][t] += minimums[r] * activation.s;
                    quants
                } else {
                    _mm256_sign_epi8(quants, weights[r])
                };
                let pairs = _mm256_maddubs_epi16(magnitudes[r], operand);
                let dot = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
                sums[r][t] = _mm256_fmadd_ps(scale, dot, sums[r][t]);
            }
        }
    }
    let mut results = [[0.0f32; N]; R];
    for r in 0..R {
        for t in 0..N {
            let sum = horizontal_sum(sums[r][t]);
            // Not `+ 0.0` for the other formats: that would turn a −0.0 into +0.0.
            results[r][t] = if is_affine(FORMAT) {
                sum + offsets[r][t]
            } else {
                sum
            };
        }
    }
    results
}
