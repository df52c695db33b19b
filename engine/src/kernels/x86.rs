//! AVX2 + FMA block dot products (the layout tricks follow ggml's `ggml-cpu/arch/x86`).
//! This is the only module of the engine allowed to use `unsafe`, for the intrinsics.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::{ActivationBlock, WeightFormat};

/// Safe entry point: callers reach it only through `KernelImpl::Avx2`, which is
/// constructed after `is_x86_feature_detected!` confirmed AVX2 and FMA.
pub(super) fn dot_blocks(format: WeightFormat, row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    assert!(
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c"),
        "avx2 kernels selected on a cpu without avx2/fma/f16c"
    );
    // SAFETY: the assertion above proves the CPU supports AVX2, FMA and F16C (the check is a
    // cached atomic load, cheap next to a row of blocks). The functions only read `row` and
    // `blocks` through bounds-checked `chunks_exact` slices, with unaligned loads.
    unsafe {
        match format {
            WeightFormat::Q8_0 => dot_q8_0(row, blocks),
            WeightFormat::Q4_0 => dot_q4_0(row, blocks),
            WeightFormat::Q4_1 => dot_q4_1(row, blocks),
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
                unreachable!("plain formats are not block quantized")
            }
        }
    }
}

/// Reads a little-endian f16 with the F16C instruction (a software conversion per block
/// scale costs more than the block's integer dot product).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn read_f16(bytes: &[u8], at: usize) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(
        u16::from_le_bytes([bytes[at], bytes[at + 1]]),
    ))))
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
fn unpack_nibbles(packed: &[u8]) -> __m256i {
    debug_assert_eq!(packed.len(), 16);
    // SAFETY: `packed` is exactly 16 bytes (the caller slices a block's quant field) and
    // `_mm_loadu_si128` has no alignment requirement.
    let bytes = unsafe { _mm_loadu_si128(packed.as_ptr().cast()) };
    let mask = _mm_set1_epi8(0x0F);
    let low = _mm_and_si128(bytes, mask);
    let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
    _mm256_set_m128i(high, low)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_activations(block: &ActivationBlock) -> __m256i {
    // SAFETY: `qs` is a 32-byte array; the load is unaligned.
    unsafe { _mm256_loadu_si256(block.qs.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn horizontal_sum(vector: __m256) -> f32 {
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
        let scale = _mm256_set1_ps(read_f16(block, 0) * activation.d);
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
        let scale = _mm256_set1_ps(read_f16(block, 0) * activation.d);
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
        let d = read_f16(block, 0);
        let m = read_f16(block, 2);
        offsets += m * activation.s;
        let weights = unpack_nibbles(&block[4..20]);
        // Nibbles are unsigned already, so maddubs takes them directly.
        let pairs = _mm256_maddubs_epi16(weights, load_activations(activation));
        let products = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
        accumulator = _mm256_fmadd_ps(_mm256_set1_ps(d * activation.d), products, accumulator);
    }
    horizontal_sum(accumulator) + offsets
}
