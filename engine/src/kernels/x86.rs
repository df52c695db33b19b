//! AVX2 + FMA block dot products (the layout tricks follow ggml's `ggml-cpu/arch/x86`).
//! This is the only module of the engine allowed to use `unsafe`, for the intrinsics.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use half::f16;

use super::{ActivationBlock, WeightFormat};

/// Safe entry point: callers reach it only through `KernelImpl::Avx2`, which is
/// constructed after `is_x86_feature_detected!` confirmed AVX2 and FMA.
pub(super) fn dot_blocks(format: WeightFormat, row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    assert_supported();
    // SAFETY: the assertion above proves the CPU supports AVX2, FMA and F16C (the check is a
    // cached atomic load, cheap next to a row of blocks). The functions only read `row` and
    // `blocks` through bounds-checked `chunks_exact` slices, with unaligned loads.
    unsafe {
        match format {
            WeightFormat::Q8_0 => dot_q8_0(row, blocks),
            WeightFormat::Q4_0 => dot_q4_0(row, blocks),
            WeightFormat::Q4_1 => dot_q4_1(row, blocks),
            WeightFormat::Q5_0 => dot_q5_0(row, blocks),
            WeightFormat::Q5_1 => dot_q5_1(row, blocks),
            _ => unreachable!("{format:?} is not a 32-element block format"),
        }
    }
}

pub(super) fn assert_supported() {
    assert!(
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"),
        "avx2 kernels selected on a cpu without avx2/fma/f16c"
    );
}

/// Checks the shapes of a `*_rows` call and returns (rows, tokens): `rows` is whole rows
/// of `row_bytes` (whole blocks of `block_bytes`), `output` one value per row and token,
/// and each of the tokens has `per_token` activation blocks in `activations`, at least as
/// many as a row has weight blocks.
pub(super) fn rows_shape(
    rows: &[u8],
    row_bytes: usize,
    block_bytes: usize,
    activations: usize,
    per_token: usize,
    output: usize,
) -> (usize, usize) {
    assert!(
        row_bytes > 0 && row_bytes.is_multiple_of(block_bytes),
        "rows are whole blocks"
    );
    let row_count = rows.len() / row_bytes;
    assert_eq!(rows.len(), row_count * row_bytes, "whole rows");
    let tokens = output / row_count.max(1);
    assert_eq!(output, row_count * tokens, "one output per row and token");
    assert!(
        per_token >= row_bytes / block_bytes && activations >= tokens * per_token,
        "fewer activation blocks than weight blocks"
    );
    (row_count, tokens)
}

/// Four tokens' dot products with one weight row, unpacking each weight block once. The
/// per-token arithmetic is exactly that of [`dot_blocks`], so results are bit-identical
/// to four separate calls (batching must not change answers).
pub(super) fn dot_blocks_x4(
    format: WeightFormat,
    row: &[u8],
    blocks: [&[ActivationBlock]; 4],
) -> [f32; 4] {
    assert_supported();
    let needed = row.len() / format.row_bytes(super::BLOCK).max(1);
    assert!(
        blocks.iter().all(|token| token.len() >= needed),
        "fewer activation blocks than weight blocks"
    );
    // SAFETY: CPU features asserted above; every activation slice has at least as many
    // blocks as the row (checked above) and all reads go through bounds-checked slices.
    unsafe {
        match format {
            WeightFormat::Q4_1 => dot_q4_1_x4(row, blocks),
            WeightFormat::Q8_0 => dot_q8_0_x4(row, blocks),
            WeightFormat::Q5_0 => dot_q5_0_x4(row, blocks),
            _ => [0, 1, 2, 3].map(|token| dot_blocks(format, row, blocks[token])),
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1_x4(row: &[u8], blocks: [&[ActivationBlock]; 4]) -> [f32; 4] {
    let mut accumulators = [_mm256_setzero_ps(); 4];
    let mut offsets = [0.0f32; 4];
    let ones = _mm256_set1_epi16(1);
    for (index, block) in row.chunks_exact(20).enumerate() {
        let (d, m) = broadcast_f16_pair(block);
        let weights = unpack_nibbles(&block[4..20]);
        for token in 0..4 {
            let activation = &blocks[token][index];
            offsets[token] += m * activation.s;
            let pairs = _mm256_maddubs_epi16(weights, load_activations(activation));
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            accumulators[token] = _mm256_fmadd_ps(
                _mm256_mul_ps(d, _mm256_set1_ps(activation.d)),
                products,
                accumulators[token],
            );
        }
    }
    [
        horizontal_sum(accumulators[0]) + offsets[0],
        horizontal_sum(accumulators[1]) + offsets[1],
        horizontal_sum(accumulators[2]) + offsets[2],
        horizontal_sum(accumulators[3]) + offsets[3],
    ]
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0_x4(row: &[u8], blocks: [&[ActivationBlock]; 4]) -> [f32; 4] {
    let mut accumulators = [_mm256_setzero_ps(); 4];
    for (index, block) in row.chunks_exact(34).enumerate() {
        let d = broadcast_f16(block, 0);
        let quants = &block[2..34];
        // SAFETY: `quants` is exactly 32 bytes; unaligned load.
        let weights = unsafe { _mm256_loadu_si256(quants.as_ptr().cast()) };
        for token in 0..4 {
            let activation = &blocks[token][index];
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(activation.d));
            let products = signed_dot(weights, load_activations(activation));
            accumulators[token] = _mm256_fmadd_ps(scale, products, accumulators[token]);
        }
    }
    [
        horizontal_sum(accumulators[0]),
        horizontal_sum(accumulators[1]),
        horizontal_sum(accumulators[2]),
        horizontal_sum(accumulators[3]),
    ]
}

/// One block of [`super::quantize_activations`] with AVX2: the largest magnitude, `v ·
/// (127 / max)` rounded to nearest-even by the conversion (the default rounding mode, as
/// the scalar `round_ties_even_small` relies on too), and the quants' sum. Bit-identical to
/// the scalar code; it ran serially between the parallel matmuls.
pub(super) fn quantize_block(chunk: &[f32; super::BLOCK]) -> ActivationBlock {
    assert_supported();
    // SAFETY: CPU features asserted above; the loads read exactly the 32 values of `chunk`
    // and the store writes exactly the 32 bytes of `qs`.
    let (max_abs, qs, sum) = unsafe { quantize_block_avx2(chunk) };
    super::activation_block(max_abs, qs, sum)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn quantize_block_avx2(chunk: &[f32; super::BLOCK]) -> (f32, [i8; super::BLOCK], i32) {
    // SAFETY: four loads of eight f32 within the 32-value array; unaligned.
    let values: [__m256; 4] =
        std::array::from_fn(|part| unsafe { _mm256_loadu_ps(chunk.as_ptr().add(8 * part)) });
    let sign = _mm256_set1_ps(-0.0);
    let mut max = _mm256_setzero_ps();
    for value in values {
        max = _mm256_max_ps(max, _mm256_andnot_ps(sign, value));
    }
    let folded = _mm_max_ps(_mm256_castps256_ps128(max), _mm256_extractf128_ps(max, 1));
    let folded = _mm_max_ps(folded, _mm_movehl_ps(folded, folded));
    let max_abs = _mm_cvtss_f32(_mm_max_ss(folded, _mm_movehdup_ps(folded)));
    let inverse = _mm256_set1_ps(if max_abs != 0.0 { 127.0 / max_abs } else { 0.0 });
    let [a, b, c, d] = values.map(|value| _mm256_cvtps_epi32(_mm256_mul_ps(value, inverse)));
    // Packing works within 128-bit lanes: the bytes come out in groups of four values as
    // a0-3 b0-3 c0-3 d0-3 | a4-7 b4-7 c4-7 d4-7; one dword permutation restores the order.
    let bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
    let bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; super::BLOCK];
    // SAFETY: `qs` is 32 bytes; unaligned store.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), bytes) };
    let sums = _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d));
    let sums = _mm_add_epi32(
        _mm256_castsi256_si128(sums),
        _mm256_extracti128_si256(sums, 1),
    );
    let sums = _mm_add_epi32(sums, _mm_shuffle_epi32(sums, 0b01_00_11_10));
    let sums = _mm_add_epi32(sums, _mm_shuffle_epi32(sums, 0b10_11_00_01));
    (max_abs, qs, _mm_cvtsi128_si32(sums))
}

/// `Σ key[i] · query[i]` with 8-wide F16C conversion.
pub(super) fn dot_f16_f32(key: &[f16], query: &[f32]) -> f32 {
    assert_supported();
    assert_eq!(
        key.len(),
        query.len(),
        "attention key and query lengths differ"
    );
    // SAFETY: CPU features asserted above; the lengths are equal, and the function only
    // loads whole chunks of 8 within both slices (the tail is handled in scalar code).
    unsafe { dot_f16_f32_avx2(key, query) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_f16_f32_avx2(key: &[f16], query: &[f32]) -> f32 {
    let mut accumulator = _mm256_setzero_ps();
    let chunks = key.len() / 8;
    for chunk in 0..chunks {
        // SAFETY: `chunk * 8 + 8 <= len` for both slices; unaligned loads.
        let (k, q) = unsafe {
            (
                _mm256_cvtph_ps(_mm_loadu_si128(key.as_ptr().add(chunk * 8).cast())),
                _mm256_loadu_ps(query.as_ptr().add(chunk * 8)),
            )
        };
        accumulator = _mm256_fmadd_ps(k, q, accumulator);
    }
    let mut sum = horizontal_sum(accumulator);
    for index in chunks * 8..key.len() {
        sum += key[index].to_f32() * query[index];
    }
    sum
}

/// `output[i] += weight · value[i]` with 8-wide F16C conversion.
pub(super) fn add_scaled_f16(output: &mut [f32], weight: f32, value: &[f16]) {
    assert_supported();
    assert_eq!(
        output.len(),
        value.len(),
        "attention output and value lengths differ"
    );
    // SAFETY: CPU features asserted above; equal lengths, whole chunks of 8 only.
    unsafe { add_scaled_f16_avx2(output, weight, value) }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn add_scaled_f16_avx2(output: &mut [f32], weight: f32, value: &[f16]) {
    let scale = _mm256_set1_ps(weight);
    let chunks = value.len() / 8;
    for chunk in 0..chunks {
        // SAFETY: `chunk * 8 + 8 <= len` for both slices; unaligned loads and stores.
        unsafe {
            let v = _mm256_cvtph_ps(_mm_loadu_si128(value.as_ptr().add(chunk * 8).cast()));
            let out = output.as_mut_ptr().add(chunk * 8);
            _mm256_storeu_ps(out, _mm256_fmadd_ps(scale, v, _mm256_loadu_ps(out)));
        }
    }
    for index in chunks * 8..value.len() {
        output[index] += weight * value[index].to_f32();
    }
}

/// Reads a little-endian f16 with the F16C instruction (a software conversion per block
/// scale costs more than the block's integer dot product).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn read_f16(bytes: &[u8], at: usize) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes([bytes[at], bytes[at + 1]]),
    ))))
}

/// A little-endian f16 converted and broadcast to eight f32 lanes.
///
/// Block loops should take their scales this way rather than through [`read_f16`]: for a
/// scalar conversion LLVM moves the half into lane 0 with `vpinsrw` on top of whatever
/// register is free, often the loop's accumulator, which chains every block's scale to
/// the previous block's FMA. A broadcast writes the whole register and depends on nothing.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn broadcast_f16(bytes: &[u8], at: usize) -> __m256 {
    let bits = u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    _mm256_cvtph_ps(_mm_set1_epi16(bits as i16))
}

/// A block's leading f16 pair `d`, `m` (Q4_1, Q5_1): `d` broadcast to eight lanes and `m`
/// as a scalar, both from one conversion of the pair broadcast, so that neither is the
/// lone scalar conversion [`broadcast_f16`] warns about.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn broadcast_f16_pair(block: &[u8]) -> (__m256, f32) {
    let pair = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
    let both = _mm256_cvtph_ps(_mm_set1_epi32(pair as i32)); // [d, m, d, m, …]
    (
        _mm256_moveldup_ps(both),
        _mm256_cvtss_f32(_mm256_movehdup_ps(both)),
    )
}

/// Sum of signed×signed byte products, 32 lanes, into 8 i32 lanes as f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn signed_dot(weights: __m256i, activations: __m256i) -> __m256 {
    // maddubs needs an unsigned left operand: move the weight signs onto the activations.
    let absolute = _mm256_sign_epi8(weights, weights);
    let signed = _mm256_sign_epi8(activations, weights);
    let pairs = _mm256_maddubs_epi16(absolute, signed);
    _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
}

/// Expands 16 bytes of packed nibbles into 32 bytes: low nibbles first, then high nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn unpack_nibbles(packed: &[u8]) -> __m256i {
    let packed: &[u8; 16] = packed
        .try_into()
        .expect("a block's nibble field is 16 bytes");
    // SAFETY: `packed` is exactly 16 bytes and `_mm_loadu_si128` needs no alignment.
    let bytes = unsafe { _mm_loadu_si128(packed.as_ptr().cast()) };
    let mask = _mm_set1_epi8(0x0F);
    let low = _mm_and_si128(bytes, mask);
    let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    _mm256_set_m128i(high, low)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_activations(block: &ActivationBlock) -> __m256i {
    // SAFETY: `qs` is a 32-byte array; the load is unaligned.
    unsafe { _mm256_loadu_si256(block.qs.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn horizontal_sum(vector: __m256) -> f32 {
    let folded = _mm_add_ps(
        _mm256_castps256_ps128(vector),
        _mm256_extractf128_ps(vector, 1),
    );
    let folded = _mm_add_ps(folded, _mm_movehl_ps(folded, folded));
    let folded = _mm_add_ss(folded, _mm_movehdup_ps(folded));
    _mm_cvtss_f32(folded)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q8_0(row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    let mut accumulator = _mm256_setzero_ps();
    for (block, activation) in row.chunks_exact(34).zip(blocks) {
        let scale = _mm256_mul_ps(broadcast_f16(block, 0), _mm256_set1_ps(activation.d));
        let quants = &block[2..34];
        // SAFETY: `quants` is exactly 32 bytes; unaligned load.
        let weights = unsafe { _mm256_loadu_si256(quants.as_ptr().cast()) };
        let products = signed_dot(weights, load_activations(activation));
        accumulator = _mm256_fmadd_ps(scale, products, accumulator);
    }
    horizontal_sum(accumulator)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_0(row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    let mut accumulator = _mm256_setzero_ps();
    let eight = _mm256_set1_epi8(8);
    for (block, activation) in row.chunks_exact(18).zip(blocks) {
        let scale = _mm256_mul_ps(broadcast_f16(block, 0), _mm256_set1_ps(activation.d));
        let weights = _mm256_sub_epi8(unpack_nibbles(&block[2..18]), eight);
        let products = signed_dot(weights, load_activations(activation));
        accumulator = _mm256_fmadd_ps(scale, products, accumulator);
    }
    horizontal_sum(accumulator)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q4_1(row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    let mut accumulator = _mm256_setzero_ps();
    let mut offsets = 0.0f32;
    let ones = _mm256_set1_epi16(1);
    for (block, activation) in row.chunks_exact(20).zip(blocks) {
        let (d, m) = broadcast_f16_pair(block);
        offsets += m * activation.s;
        let weights = unpack_nibbles(&block[4..20]);
        // Nibbles are unsigned already, so maddubs takes them directly.
        let pairs = _mm256_maddubs_epi16(weights, load_activations(activation));
        let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        accumulator = _mm256_fmadd_ps(
            _mm256_mul_ps(d, _mm256_set1_ps(activation.d)),
            products,
            accumulator,
        );
    }
    horizontal_sum(accumulator) + offsets
}

/// Expands the 32 high bits of a Q5 block into 32 bytes: 0xFF where bit `i` is set
/// (ggml's `bytes_from_bits_32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn bytes_from_bits(qh: &[u8]) -> __m256i {
    let bits = i32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let shuffle = _mm256_set_epi64x(
        0x0303_0303_0303_0303,
        0x0202_0202_0202_0202,
        0x0101_0101_0101_0101,
        0,
    );
    let bytes = _mm256_shuffle_epi8(_mm256_set1_epi32(bits), shuffle);
    let bytes = _mm256_or_si256(bytes, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(bytes, _mm256_set1_epi64x(-1))
}

/// Q5_0 quants as signed bytes `q − 16`: a clear fifth bit means the value is below 16,
/// so OR-ing 0xF0 into the nibble yields its two's-complement `nibble − 16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn q5_0_weights(block: &[u8]) -> __m256i {
    let nibbles = unpack_nibbles(&block[6..22]);
    let high = _mm256_andnot_si256(
        bytes_from_bits(&block[2..6]),
        _mm256_set1_epi8(0xF0u8 as i8),
    );
    _mm256_or_si256(nibbles, high)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0(row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    let mut accumulator = _mm256_setzero_ps();
    for (block, activation) in row.chunks_exact(22).zip(blocks) {
        let scale = _mm256_mul_ps(broadcast_f16(block, 0), _mm256_set1_ps(activation.d));
        let products = signed_dot(q5_0_weights(block), load_activations(activation));
        accumulator = _mm256_fmadd_ps(scale, products, accumulator);
    }
    horizontal_sum(accumulator)
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_0_x4(row: &[u8], blocks: [&[ActivationBlock]; 4]) -> [f32; 4] {
    let mut accumulators = [_mm256_setzero_ps(); 4];
    for (index, block) in row.chunks_exact(22).enumerate() {
        let d = broadcast_f16(block, 0);
        let weights = q5_0_weights(block);
        let absolute = _mm256_sign_epi8(weights, weights);
        for token in 0..4 {
            let activation = &blocks[token][index];
            let scale = _mm256_mul_ps(d, _mm256_set1_ps(activation.d));
            // The same operations as `signed_dot`, with the weight magnitudes shared.
            let signed = _mm256_sign_epi8(load_activations(activation), weights);
            let pairs = _mm256_maddubs_epi16(absolute, signed);
            let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
            accumulators[token] = _mm256_fmadd_ps(scale, products, accumulators[token]);
        }
    }
    accumulators.map(|accumulator| horizontal_sum(accumulator))
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_q5_1(row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    let mut accumulator = _mm256_setzero_ps();
    let mut offsets = 0.0f32;
    let ones = _mm256_set1_epi16(1);
    for (block, activation) in row.chunks_exact(24).zip(blocks) {
        let (d, m) = broadcast_f16_pair(block);
        offsets += m * activation.s;
        let high = _mm256_and_si256(bytes_from_bits(&block[4..8]), _mm256_set1_epi8(0x10));
        let weights = _mm256_or_si256(unpack_nibbles(&block[8..24]), high);
        // Quants are unsigned (0..31), so maddubs takes them directly.
        let pairs = _mm256_maddubs_epi16(weights, load_activations(activation));
        let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        accumulator = _mm256_fmadd_ps(
            _mm256_mul_ps(d, _mm256_set1_ps(activation.d)),
            products,
            accumulator,
        );
    }
    horizontal_sum(accumulator) + offsets
}
