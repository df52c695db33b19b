//! AVX2 dot products of K-quant rows (Q2_K … Q6_K) with q8_K activations.
//!
//! Every K-quant super-block is first brought to one shape: eight vectors of 32 *unsigned*
//! quants (element order), an i16 scale per 16 elements, and an integer offset per 16
//! elements that is multiplied by the activations' 16-element sums (`bsums`). Signed formats
//! (Q3_K: −4…3, Q6_K: −32…31) are stored biased to unsigned and the bias comes back through
//! that offset, the trick ggml uses for Q6_K; affine formats (Q2_K, Q4_K, Q5_K) put their
//! minimums there. One dot routine then serves every format, and the x4 variant unpacks a
//! weight block once for four tokens. Integer sums are exact, so results differ from the
//! scalar reference only in float summation order.
//! This module, like `x86`, is allowed `unsafe` for the intrinsics.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::dequantize::{q3_k_scales, scale_min_k4};
use super::x86::{assert_supported, horizontal_sum, read_f16};
use super::{SuperBlock, WeightFormat};

/// One token's dot product with a K-quant row.
pub(super) fn dot_super_blocks(format: WeightFormat, row: &[u8], blocks: &[SuperBlock]) -> f32 {
    assert_supported();
    assert_eq!(
        row.len() % format.block_bytes(),
        0,
        "a {format:?} row is whole super-blocks"
    );
    assert!(
        blocks.len() >= row.len() / format.block_bytes(),
        "fewer activation super-blocks than weight super-blocks"
    );
    // SAFETY: CPU features asserted above; the row is whole blocks and every activation
    // slice covers it (checked above); all reads go through bounds-checked slices.
    unsafe { dot_n(format, row, [blocks])[0] }
}

/// Four tokens' dot products with one K-quant row; bit-identical to four
/// [`dot_super_blocks`] calls.
pub(super) fn dot_super_blocks_x4(
    format: WeightFormat,
    row: &[u8],
    blocks: [&[SuperBlock]; 4],
) -> [f32; 4] {
    assert_supported();
    assert_eq!(
        row.len() % format.block_bytes(),
        0,
        "a {format:?} row is whole super-blocks"
    );
    let needed = row.len() / format.block_bytes();
    assert!(
        blocks.iter().all(|token| token.len() >= needed),
        "fewer activation super-blocks than weight super-blocks"
    );
    // SAFETY: as in `dot_super_blocks`.
    unsafe { dot_n(format, row, blocks) }
}

/// Every token's dot product with each of several K-quant rows: `output[r * tokens + t]`,
/// where `blocks` holds the tokens' super-blocks, `per_token` a token, one token after
/// another. Each super-block is unpacked once per eight tokens (then four, then one), and
/// the whole run is one call; bit-identical to [`dot_super_blocks`] per row and token.
pub(super) fn dot_super_blocks_rows(
    format: WeightFormat,
    rows: &[u8],
    row_bytes: usize,
    blocks: &[SuperBlock],
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
    let row_blocks = row_bytes / format.block_bytes();
    let token = |index: usize| &blocks[index * per_token..][..row_blocks];
    for (row, row_output) in rows
        .chunks_exact(row_bytes)
        .zip(output.chunks_exact_mut(tokens))
    {
        let mut first = 0;
        while tokens - first >= 16 {
            // SAFETY: as below.
            let results =
                unsafe { dot_n::<16>(format, row, std::array::from_fn(|t| token(first + t))) };
            row_output[first..first + 16].copy_from_slice(&results);
            first += 16;
        }
        // SAFETY (all three calls): CPU features asserted above; the row is whole
        // super-blocks and every token's slice covers it (`rows_shape`); all reads go
        // through bounds-checked slices.
        while tokens - first >= 8 {
            let results =
                unsafe { dot_n::<8>(format, row, std::array::from_fn(|t| token(first + t))) };
            row_output[first..first + 8].copy_from_slice(&results);
            first += 8;
        }
        if tokens - first >= 4 {
            let results =
                unsafe { dot_n::<4>(format, row, std::array::from_fn(|t| token(first + t))) };
            row_output[first..first + 4].copy_from_slice(&results);
            first += 4;
        }
        for (index, value) in row_output.iter_mut().enumerate().skip(first) {
            *value = unsafe { dot_n::<1>(format, row, [token(index)]) }[0];
        }
    }
}

/// A super-block in the common shape described in the module comment.
pub(super) struct Unpacked {
    /// Unsigned quants, 32 elements per vector.
    pub(super) quants: [__m256i; 8],
    /// Per vector: the scale of elements 0-15 in the low 8 i16 lanes, of 16-31 in the high.
    pub(super) scales: [__m256i; 8],
    /// Per 16-element group, subtracted as `Σ offset·bsum` from the scaled sum (times `d`).
    pub(super) bias: __m256i,
    /// Per 16-element group, the minimum (times `dmin`); zero for non-affine formats.
    pub(super) mins: __m256i,
    pub(super) d: f32,
    pub(super) dmin: f32,
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load32(bytes: &[u8]) -> __m256i {
    let bytes: &[u8; 32] = bytes.try_into().expect("a 32-byte slice");
    // SAFETY: exactly 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i16x16(values: &[i16; 16]) -> __m256i {
    // SAFETY: 16 i16 are 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_vectors(scales: &[i16; 16]) -> [__m256i; 8] {
    std::array::from_fn(|v| {
        _mm256_set_m128i(
            _mm_set1_epi16(scales[2 * v + 1]),
            _mm_set1_epi16(scales[2 * v]),
        )
    })
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn unpack(format: WeightFormat, block: &[u8]) -> Unpacked {
    let low2 = _mm256_set1_epi8(3);
    let low4 = _mm256_set1_epi8(0x0F);
    let one = _mm256_set1_epi8(1);
    let zero = _mm256_setzero_si256();
    match format {
        WeightFormat::Q2_K => {
            let packed = &block[0..16];
            let halves = [load32(&block[16..48]), load32(&block[48..80])];
            let quants = std::array::from_fn(|v| {
                let shifted =
                    _mm256_srl_epi16(halves[v / 4], _mm_cvtsi32_si128(2 * (v % 4) as i32));
                _mm256_and_si256(shifted, low2)
            });
            let scales: [i16; 16] = std::array::from_fn(|s| i16::from(packed[s] & 0x0F));
            let mins: [i16; 16] = std::array::from_fn(|s| i16::from(packed[s] >> 4));
            Unpacked {
                quants,
                scales: scale_vectors(&scales),
                bias: zero,
                mins: load_i16x16(&mins),
                d: read_f16(block, 80),
                dmin: read_f16(block, 82),
            }
        }
        WeightFormat::Q3_K => {
            let hmask = load32(&block[0..32]);
            let halves = [load32(&block[32..64]), load32(&block[64..96])];
            let quants = std::array::from_fn(|v| {
                let (half, j) = (v / 4, v % 4);
                let low = _mm256_and_si256(
                    _mm256_srl_epi16(halves[half], _mm_cvtsi32_si128(2 * j as i32)),
                    low2,
                );
                let bit = (half * 4 + j) as i32;
                let high = _mm256_and_si256(_mm256_srl_epi16(hmask, _mm_cvtsi32_si128(bit)), one);
                // q + 4 = low + 4·high: the stored value is q = low − 4·(1 − high).
                _mm256_or_si256(low, _mm256_slli_epi16(high, 2))
            });
            let scales = q3_k_scales(&block[96..108]);
            let bias: [i16; 16] = std::array::from_fn(|s| 4 * scales[s]);
            Unpacked {
                quants,
                scales: scale_vectors(&scales),
                bias: load_i16x16(&bias),
                mins: zero,
                d: read_f16(block, 108),
                dmin: 0.0,
            }
        }
        WeightFormat::Q4_K | WeightFormat::Q5_K => {
            let packed = &block[4..16];
            let (high_bits, nibbles) = if format == WeightFormat::Q5_K {
                (Some(load32(&block[16..48])), &block[48..176])
            } else {
                (None, &block[16..144])
            };
            let pairs = [
                load32(&nibbles[0..32]),
                load32(&nibbles[32..64]),
                load32(&nibbles[64..96]),
                load32(&nibbles[96..128]),
            ];
            let quants = std::array::from_fn(|v| {
                let shifted = _mm256_srl_epi16(pairs[v / 2], _mm_cvtsi32_si128(4 * (v % 2) as i32));
                let low = _mm256_and_si256(shifted, low4);
                match high_bits {
                    Some(bits) => {
                        let high = _mm256_and_si256(
                            _mm256_srl_epi16(bits, _mm_cvtsi32_si128(v as i32)),
                            one,
                        );
                        _mm256_or_si256(low, _mm256_slli_epi16(high, 4))
                    }
                    None => low,
                }
            });
            let mut scales = [0i16; 16];
            let mut mins = [0i16; 16];
            for j in 0..8 {
                let (scale, min) = scale_min_k4(j, packed);
                scales[2 * j] = i16::from(scale);
                scales[2 * j + 1] = i16::from(scale);
                mins[2 * j] = i16::from(min);
                mins[2 * j + 1] = i16::from(min);
            }
            Unpacked {
                quants,
                scales: scale_vectors(&scales),
                bias: zero,
                mins: load_i16x16(&mins),
                d: read_f16(block, 0),
                dmin: read_f16(block, 2),
            }
        }
        WeightFormat::Q6_K => {
            let mut quants = [zero; 8];
            for half in 0..2 {
                let first = load32(&block[half * 64..half * 64 + 32]);
                let second = load32(&block[half * 64 + 32..half * 64 + 64]);
                let high = load32(&block[128 + half * 32..128 + half * 32 + 32]);
                let nibble_low = |bits: __m256i| _mm256_and_si256(bits, low4);
                let nibble_high =
                    |bits: __m256i| _mm256_and_si256(_mm256_srli_epi16(bits, 4), low4);
                let two_bits = |shift: i32| {
                    let bits =
                        _mm256_and_si256(_mm256_srl_epi16(high, _mm_cvtsi32_si128(shift)), low2);
                    _mm256_slli_epi16(bits, 4)
                };
                quants[half * 4] = _mm256_or_si256(nibble_low(first), two_bits(0));
                quants[half * 4 + 1] = _mm256_or_si256(nibble_low(second), two_bits(2));
                quants[half * 4 + 2] = _mm256_or_si256(nibble_high(first), two_bits(4));
                quants[half * 4 + 3] = _mm256_or_si256(nibble_high(second), two_bits(6));
            }
            let scales: [i16; 16] = std::array::from_fn(|s| i16::from(block[192 + s] as i8));
            let bias: [i16; 16] = std::array::from_fn(|s| 32 * scales[s]);
            Unpacked {
                quants,
                scales: scale_vectors(&scales),
                bias: load_i16x16(&bias),
                mins: zero,
                d: read_f16(block, 208),
                dmin: 0.0,
            }
        }
        _ => unreachable!("{format:?} is not a K-quant format"),
    }
}

/// `N` tokens' dot products with one row, each weight super-block unpacked once.
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_n<const N: usize>(format: WeightFormat, row: &[u8], blocks: [&[SuperBlock]; N]) -> [f32; N] {
    let mut accumulators = [_mm256_setzero_ps(); N];
    for (index, block) in row.chunks_exact(format.block_bytes()).enumerate() {
        let unpacked = unpack(format, block);
        for token in 0..N {
            let activation = &blocks[token][index];
            let mut sum = _mm256_setzero_si256();
            for v in 0..8 {
                let a = load_i8x32(&activation.qs[v * 32..(v + 1) * 32]);
                let pairs = _mm256_maddubs_epi16(unpacked.quants[v], a);
                sum = _mm256_add_epi32(sum, _mm256_madd_epi16(unpacked.scales[v], pairs));
            }
            let bsums = load_i16x16(&activation.bsums);
            sum = _mm256_sub_epi32(sum, _mm256_madd_epi16(unpacked.bias, bsums));
            accumulators[token] = _mm256_fmadd_ps(
                _mm256_set1_ps(unpacked.d * activation.d),
                _mm256_cvtepi32_ps(sum),
                accumulators[token],
            );
            if unpacked.dmin != 0.0 {
                let offsets = _mm256_madd_epi16(unpacked.mins, bsums);
                accumulators[token] = _mm256_fmadd_ps(
                    _mm256_set1_ps(-unpacked.dmin * activation.d),
                    _mm256_cvtepi32_ps(offsets),
                    accumulators[token],
                );
            }
        }
    }
    accumulators.map(|accumulator| horizontal_sum(accumulator))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_i8x32(values: &[i8]) -> __m256i {
    let values: &[i8; 32] = values.try_into().expect("a 32-element slice");
    // SAFETY: exactly 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}
