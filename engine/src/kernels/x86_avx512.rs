//! AVX-512 (F, BW, VL) + VNNI dot products of the quantized formats with 8-bit activations.
//!
//! Same contracts as the AVX2 kernels in `x86` and `x86_kquants`, same integer sums, so the
//! results differ from the scalar reference only in float summation order. What AVX-512
//! buys here:
//!
//! * `vpdpbusd` (VNNI) does the unsigned×signed byte dot product into i32 lanes in one
//!   instruction, where AVX2 needs `maddubs` + `madd` (and a constant of ones);
//!   `vpdpwssd` fuses the K-quants' `madd` of the per-16 scales with the accumulation.
//! * Mask registers (BW + VL): a Q5 block's 32 high bits are used directly as a byte mask,
//!   instead of being expanded to bytes with a shuffle, an OR and a compare.
//! * Q4_K/Q5_K/Q6_K scales are decoded with a few integer and vector operations instead of
//!   sixteen scalar inserts, which matters for decoding (one token per weight block).
//!
//! The kernels stay 256 bits wide (one 32-element block per vector): on the Zen 4 cores
//! this was written on, 512-bit integer instructions issue as two 256-bit halves, and two
//! blocks per register would need a lane shuffle and a two-scale vector per pair.
//!
//! Every kernel is generic over the number of tokens `N` that share one pass over the
//! weight row; a single token is `N = 1`, so batching cannot change a token's answer.
//! This module, like `x86`, is allowed `unsafe` for the intrinsics.
#![allow(unsafe_code)]

use std::arch::x86_64::*;

use super::x86::{broadcast_f16, broadcast_f16_pair, horizontal_sum, read_f16, rows_shape};
use super::x86_kquants::{Unpacked, unpack};
use super::{ActivationBlock, SuperBlock, WeightFormat};

/// Whether this CPU has every feature the kernels below are compiled for (detected once;
/// the entry points check it on every row).
pub(super) fn supported() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(detect)
}

fn detect() -> bool {
    std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("fma")
        && std::is_x86_feature_detected!("f16c")
        && std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512vl")
        && std::is_x86_feature_detected!("avx512vnni")
}

fn assert_supported() {
    assert!(
        supported(),
        "avx-512 kernels selected on a cpu without avx512f/bw/vl/vnni (and avx2/fma/f16c)"
    );
}

/// One token's dot product with a row of a 32-element block format.
pub(super) fn dot_blocks(format: WeightFormat, row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    dot_blocks_n(format, row, [blocks])[0]
}

/// Four tokens' dot products with one row, each weight block decoded once; bit-identical
/// to four [`dot_blocks`] calls.
pub(super) fn dot_blocks_x4(
    format: WeightFormat,
    row: &[u8],
    blocks: [&[ActivationBlock]; 4],
) -> [f32; 4] {
    dot_blocks_n(format, row, blocks)
}

/// Every token's dot product with each of several rows: `output[r * tokens + t]`, where
/// `blocks` holds the tokens' activation blocks, `per_token` a token, one token after
/// another. Bit-identical to [`dot_blocks`] per row and token.
pub(super) fn dot_blocks_rows(
    format: WeightFormat,
    rows: &[u8],
    row_bytes: usize,
    blocks: &[ActivationBlock],
    per_token: usize,
    output: &mut [f32],
) {
    assert_supported();
    let (row_count, tokens) = rows_shape(
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
    // SAFETY: the CPU features were asserted above; the functions read `rows` and `blocks`
    // only through bounds-checked slices, with unaligned loads of exactly the bytes sliced.
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

/// The row and token loops of [`dot_blocks_rows`]: tokens in fours, then one at a time,
/// through the same kernel as [`dot_blocks_x4`] and [`dot_blocks`].
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn rows_generic<const FORMAT: u8>(
    rows: &[u8],
    row_bytes: usize,
    blocks: &[ActivationBlock],
    per_token: usize,
    output: &mut [f32],
) {
    let row_count = rows.len() / row_bytes;
    let tokens = output.len() / row_count;
    let token = |index: usize| &blocks[index * per_token..(index + 1) * per_token];
    let grouped = tokens / 4 * 4;
    let row_blocks = row_bytes / format_bytes(FORMAT);
    // Per group of four tokens and per block, the four tokens' activation scales side by
    // side (for `scale_products`), and for Q4_1/Q5_1 their sums `s`: read as one vector,
    // where the scattered `s` fields made LLVM gather them with `vgatherqps` (slow).
    let side_by_side = |field: fn(&ActivationBlock) -> f32| -> Vec<[f32; 4]> {
        (0..grouped / 4)
            .flat_map(|group| {
                (0..row_blocks).map(move |block| {
                    std::array::from_fn(|offset| {
                        field(&blocks[(4 * group + offset) * per_token + block])
                    })
                })
            })
            .collect()
    };
    let token_scales = side_by_side(|activation| activation.d);
    let token_sums = if FORMAT == Q4_1 || FORMAT == Q5_1 {
        side_by_side(|activation| activation.s)
    } else {
        Vec::new()
    };
    let mut products = vec![[0.0f32; 4]; row_blocks];
    for (row, row_output) in rows
        .chunks_exact(row_bytes)
        .zip(output.chunks_exact_mut(tokens))
    {
        for (group, first) in (0..grouped).step_by(4).enumerate() {
            scale_products::<FORMAT>(
                row,
                &token_scales[group * row_blocks..(group + 1) * row_blocks],
                &mut products,
            );
            let results = dot_blocks_generic::<FORMAT, 4, true>(
                row,
                [
                    token(first),
                    token(first + 1),
                    token(first + 2),
                    token(first + 3),
                ],
                &products,
                token_sums
                    .get(group * row_blocks..(group + 1) * row_blocks)
                    .unwrap_or(&[]),
            );
            row_output[first..first + 4].copy_from_slice(&results);
        }
        for (index, value) in row_output.iter_mut().enumerate().skip(grouped) {
            *value = dot_blocks_generic::<FORMAT, 1, false>(row, [token(index)], &[], &[])[0];
        }
    }
}

/// `products[b][t] = d_w(b) · d_a(t, b)` for one row and four tokens: one multiplication
/// per block instead of one per block and token inside the dot loop, where the
/// multiplications compete with `vpdpbusd` and the FMAs for the same two ports (measured
/// with `kernel_throughput`: Q5_0 and Q8_0 `rows_dot` 8-9% faster). The same IEEE products
/// as the ungrouped path, so the same results.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn scale_products<const FORMAT: u8>(
    row: &[u8],
    token_scales: &[[f32; 4]],
    products: &mut [[f32; 4]],
) {
    for ((block, scales), product) in row
        .chunks_exact(format_bytes(FORMAT))
        .zip(token_scales)
        .zip(products.iter_mut())
    {
        let d = _mm256_castps256_ps128(broadcast_f16(block, 0));
        // SAFETY: both arrays are four f32; unaligned load and store.
        unsafe {
            _mm_storeu_ps(
                product.as_mut_ptr(),
                _mm_mul_ps(d, _mm_loadu_ps(scales.as_ptr())),
            );
        }
    }
}

fn dot_blocks_n<const N: usize>(
    format: WeightFormat,
    row: &[u8],
    blocks: [&[ActivationBlock]; N],
) -> [f32; N] {
    assert_supported();
    let block_bytes = format.block_bytes();
    assert_eq!(
        row.len() % block_bytes,
        0,
        "a {format:?} row is whole blocks"
    );
    let needed = row.len() / block_bytes;
    assert!(
        blocks.iter().all(|token| token.len() >= needed),
        "fewer activation blocks than weight blocks"
    );
    // SAFETY: the CPU features the functions are compiled for were asserted above (a cached
    // atomic load per row). They read `row` and `blocks` only through bounds-checked
    // slices and `chunks_exact`, with unaligned loads of exactly the bytes sliced.
    unsafe {
        match format {
            WeightFormat::Q8_0 => dot_blocks_generic::<Q8_0, N, false>(row, blocks, &[], &[]),
            WeightFormat::Q4_0 => dot_blocks_generic::<Q4_0, N, false>(row, blocks, &[], &[]),
            WeightFormat::Q4_1 => dot_blocks_generic::<Q4_1, N, false>(row, blocks, &[], &[]),
            WeightFormat::Q5_0 => dot_blocks_generic::<Q5_0, N, false>(row, blocks, &[], &[]),
            WeightFormat::Q5_1 => dot_blocks_generic::<Q5_1, N, false>(row, blocks, &[], &[]),
            _ => unreachable!("{format:?} is not a 32-element block format"),
        }
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn load32(bytes: &[u8]) -> __m256i {
    let bytes: &[u8; 32] = bytes.try_into().expect("a 32-byte slice");
    // SAFETY: exactly 32 readable bytes; unaligned load.
    unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn load_i8x32(values: &[i8; 32]) -> __m256i {
    // SAFETY: a 32-byte array; unaligned load.
    unsafe { _mm256_loadu_si256(values.as_ptr().cast()) }
}

/// Expands 16 bytes of packed nibbles into 32 bytes: low nibbles first, then high nibbles
/// (element order of the 32-element formats).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn unpack_nibbles(packed: &[u8]) -> __m256i {
    let packed: &[u8; 16] = packed
        .try_into()
        .expect("a block's nibble field is 16 bytes");
    // SAFETY: exactly 16 readable bytes; unaligned load.
    let bytes = unsafe { _mm_loadu_si128(packed.as_ptr().cast()) };
    let both = _mm256_set_m128i(_mm_srli_epi16(bytes, 4), bytes);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The 32 high bits of a Q5 block, bit `i` belonging to element `i`: a ready-made byte mask.
#[inline(always)]
fn high_bits(bytes: &[u8]) -> __mmask32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

// The 32-element formats, as `const` parameters of the generic kernel below.
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

/// Per token, a running vector sum of scaled block products and a scalar sum of the
/// minimum terms (Q4_1 and Q5_1 only).
#[derive(Clone, Copy)]
struct Chain<const N: usize> {
    sums: [__m256; N],
    offsets: [f32; N],
}

/// `N` tokens' dot products with one row of a 32-element format.
///
/// Blocks alternate between two independent accumulator chains (even and odd blocks):
/// with one chain a row runs at the latency of the FMA, not its throughput. Every `N`
/// uses the same two chains in the same order, so batching does not change the answer.
/// With `GROUPED` (`N` ≤ 4), `products` holds each block's `d_w · d_a` per token
/// ([`scale_products`]) and, for Q4_1/Q5_1, `sums` the tokens' `s`; otherwise both are
/// empty and the loop reads the activation blocks.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_blocks_generic<const FORMAT: u8, const N: usize, const GROUPED: bool>(
    row: &[u8],
    blocks: [&[ActivationBlock]; N],
    products: &[[f32; 4]],
    sums: &[[f32; 4]],
) -> [f32; N] {
    let bytes = format_bytes(FORMAT);
    let empty = Chain {
        sums: [_mm256_setzero_ps(); N],
        offsets: [0.0; N],
    };
    let (mut even, mut odd) = (empty, empty);
    let mut pairs = row.chunks_exact(2 * bytes);
    for (pair_index, pair) in pairs.by_ref().enumerate() {
        let (first, second) = pair.split_at(bytes);
        accumulate_block::<FORMAT, N, GROUPED>(
            first,
            2 * pair_index,
            &blocks,
            products,
            sums,
            &mut even,
        );
        accumulate_block::<FORMAT, N, GROUPED>(
            second,
            2 * pair_index + 1,
            &blocks,
            products,
            sums,
            &mut odd,
        );
    }
    let last = pairs.remainder();
    if !last.is_empty() {
        let index = row.len() / bytes - 1;
        accumulate_block::<FORMAT, N, GROUPED>(last, index, &blocks, products, sums, &mut even);
    }
    std::array::from_fn(|token| {
        horizontal_sum(_mm256_add_ps(even.sums[token], odd.sums[token]))
            + (even.offsets[token] + odd.offsets[token])
    })
}

/// Adds block `index` (the bytes of one weight block) of every token to `chain`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn accumulate_block<const FORMAT: u8, const N: usize, const GROUPED: bool>(
    block: &[u8],
    index: usize,
    blocks: &[&[ActivationBlock]; N],
    products: &[[f32; 4]],
    sums: &[[f32; 4]],
    chain: &mut Chain<N>,
) {
    let sixteen = _mm256_set1_epi8(16);
    let (products, sums) = if GROUPED {
        (Some(&products[index]), sums.get(index))
    } else {
        (None, None)
    };
    match FORMAT {
        Q8_0 => {
            let weights = load32(&block[2..34]);
            accumulate_signed(
                weights,
                broadcast_f16(block, 0),
                index,
                blocks,
                products,
                chain,
            );
        }
        Q4_0 => {
            let weights = _mm256_sub_epi8(unpack_nibbles(&block[2..18]), _mm256_set1_epi8(8));
            accumulate_signed(
                weights,
                broadcast_f16(block, 0),
                index,
                blocks,
                products,
                chain,
            );
        }
        Q5_0 => {
            let nibbles = unpack_nibbles(&block[6..22]);
            // The stored value is `nibble + 16·bit − 16`: subtract 16 where the bit is clear.
            let weights = _mm256_mask_sub_epi8(nibbles, !high_bits(&block[2..6]), nibbles, sixteen);
            accumulate_signed(
                weights,
                broadcast_f16(block, 0),
                index,
                blocks,
                products,
                chain,
            );
        }
        Q4_1 => {
            let weights = unpack_nibbles(&block[4..20]);
            accumulate_unsigned(weights, block, index, blocks, products, sums, chain);
        }
        _ => {
            let nibbles = unpack_nibbles(&block[8..24]);
            // Quants are `nibble + 16·bit` (0..31), unsigned: add 16 where the bit is set.
            let weights = _mm256_mask_add_epi8(nibbles, high_bits(&block[4..8]), nibbles, sixteen);
            accumulate_unsigned(weights, block, index, blocks, products, sums, chain);
        }
    }
}

/// A block's `d_w · d_a` for one token, broadcast: precomputed by [`scale_products`]
/// (loaded as a broadcast, which the FMA takes from memory) or multiplied here.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn block_scale(
    d: __m256,
    products: Option<&[f32; 4]>,
    token: usize,
    activation: &ActivationBlock,
) -> __m256 {
    match products {
        Some(products) => _mm256_broadcast_ss(&products[token]),
        None => _mm256_mul_ps(d, _mm256_set1_ps(activation.d)),
    }
}

/// Accumulates `d · activation.d · Σ weights·activations` of block `index` for `N` tokens,
/// for formats whose quants are signed. `vpdpbusd` wants an unsigned left operand, so the
/// weight signs move onto the activations (`|w|·sign(w)·a`; a −128 weight becomes the
/// unsigned 128, still exact).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn accumulate_signed<const N: usize>(
    weights: __m256i,
    d: __m256,
    index: usize,
    blocks: &[&[ActivationBlock]; N],
    products: Option<&[f32; 4]>,
    chain: &mut Chain<N>,
) {
    let absolute = _mm256_abs_epi8(weights);
    for (token, activations) in blocks.iter().enumerate() {
        let activation = &activations[index];
        let signed = _mm256_sign_epi8(load_i8x32(&activation.qs), weights);
        let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), absolute, signed);
        chain.sums[token] = _mm256_fmadd_ps(
            block_scale(d, products, token, activation),
            _mm256_cvtepi32_ps(dot),
            chain.sums[token],
        );
    }
}

/// As [`accumulate_signed`] for unsigned quants with a minimum (Q4_1, Q5_1, whose blocks
/// start with the f16 pair `d`, `m`): the quants feed `vpdpbusd` directly and the minimum
/// comes back through the activations' `s = d·Σq`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn accumulate_unsigned<const N: usize>(
    weights: __m256i,
    block: &[u8],
    index: usize,
    blocks: &[&[ActivationBlock]; N],
    products: Option<&[f32; 4]>,
    sums: Option<&[f32; 4]>,
    chain: &mut Chain<N>,
) {
    let (d, m) = broadcast_f16_pair(block);
    for (token, activations) in blocks.iter().enumerate() {
        let activation = &activations[index];
        let sum = sums.map_or(activation.s, |sums| sums[token]);
        chain.offsets[token] += m * sum;
        let dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), weights, load_i8x32(&activation.qs));
        chain.sums[token] = _mm256_fmadd_ps(
            block_scale(d, products, token, activation),
            _mm256_cvtepi32_ps(dot),
            chain.sums[token],
        );
    }
}

/// One token's dot product with a K-quant row.
pub(super) fn dot_super_blocks(format: WeightFormat, row: &[u8], blocks: &[SuperBlock]) -> f32 {
    dot_super_blocks_n(format, row, [blocks])[0]
}

/// Four tokens' dot products with one K-quant row, each super-block unpacked once;
/// bit-identical to four [`dot_super_blocks`] calls.
pub(super) fn dot_super_blocks_x4(
    format: WeightFormat,
    row: &[u8],
    blocks: [&[SuperBlock]; 4],
) -> [f32; 4] {
    dot_super_blocks_n(format, row, blocks)
}

/// [`dot_blocks_rows`] for K-quant rows and q8_K activations.
pub(super) fn dot_super_blocks_rows(
    format: WeightFormat,
    rows: &[u8],
    row_bytes: usize,
    blocks: &[SuperBlock],
    per_token: usize,
    output: &mut [f32],
) {
    assert_supported();
    let (row_count, tokens) = rows_shape(
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
    // SAFETY: as in `dot_blocks_rows`.
    unsafe { k_rows(format, rows, row_bytes, blocks, per_token, output) }
}

#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn k_rows(
    format: WeightFormat,
    rows: &[u8],
    row_bytes: usize,
    blocks: &[SuperBlock],
    per_token: usize,
    output: &mut [f32],
) {
    let row_count = rows.len() / row_bytes;
    let tokens = output.len() / row_count;
    let token = |index: usize| &blocks[index * per_token..(index + 1) * per_token];
    for (row, row_output) in rows
        .chunks_exact(row_bytes)
        .zip(output.chunks_exact_mut(tokens))
    {
        let grouped = tokens / 4 * 4;
        for first in (0..grouped).step_by(4) {
            let results = dot_k_n(
                format,
                row,
                [
                    token(first),
                    token(first + 1),
                    token(first + 2),
                    token(first + 3),
                ],
            );
            row_output[first..first + 4].copy_from_slice(&results);
        }
        for (index, value) in row_output.iter_mut().enumerate().skip(grouped) {
            *value = dot_k_n(format, row, [token(index)])[0];
        }
    }
}

fn dot_super_blocks_n<const N: usize>(
    format: WeightFormat,
    row: &[u8],
    blocks: [&[SuperBlock]; N],
) -> [f32; N] {
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
    // SAFETY: CPU features asserted above; the row is whole blocks and every activation
    // slice covers it (checked above); all reads go through bounds-checked slices.
    unsafe { dot_k_n(format, row, blocks) }
}

/// Q4_K's and Q5_K's eight 6-bit scales and eight 6-bit minimums (one per 32 elements)
/// from their 12 packed bytes, as two little-endian words of bytes each. Scale and minimum
/// `j < 4` are the low six bits of bytes `j` and `j + 4`; for `j >= 4` the low four bits
/// come from byte `j + 4` (low nibble: scale, high nibble: minimum) and the top two from
/// the spare top bits of bytes `j − 4` (scale) and `j` (minimum).
#[inline(always)]
fn k4_scales_and_mins(packed: &[u8]) -> (u64, u64) {
    let word = |at: usize| {
        u32::from_le_bytes([packed[at], packed[at + 1], packed[at + 2], packed[at + 3]])
    };
    let (first, second, third) = (word(0), word(4), word(8));
    let low6 = 0x3F3F_3F3F;
    let top2 = 0x0303_0303;
    let nibble = 0x0F0F_0F0F;
    let scales_low = first & low6;
    let mins_low = second & low6;
    let scales_high = (third & nibble) | (((first >> 6) & top2) << 4);
    let mins_high = ((third >> 4) & nibble) | (((second >> 6) & top2) << 4);
    (
        u64::from(scales_low) | (u64::from(scales_high) << 32),
        u64::from(mins_low) | (u64::from(mins_high) << 32),
    )
}

/// Per 32-element vector `v`: a vector of sixteen i16 lanes, the first eight holding the
/// scale of elements `32v..32v+16` and the last eight that of `32v+16..32v+32`, picked from
/// the sixteen per-16 scales in `scales` (i16 lanes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn spread_scales(scales: __m256i) -> [__m256i; 8] {
    std::array::from_fn(|v| {
        let (low, high) = (2 * v as i16, 2 * v as i16 + 1);
        let index = _mm256_set_epi16(
            high, high, high, high, high, high, high, high, low, low, low, low, low, low, low, low,
        );
        _mm256_permutexvar_epi16(index, scales)
    })
}

/// Unpacks a K-quant super-block into the shape of `x86_kquants` (unsigned quants, i16
/// scales per 16 elements, bias and minimum per 16), with the scale decoding of Q4_K, Q5_K
/// and Q6_K vectorised; Q2_K and Q3_K use the AVX2 unpacking as it is.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn unpack_k(format: WeightFormat, block: &[u8]) -> Unpacked {
    let low4 = _mm256_set1_epi8(0x0F);
    let zero = _mm256_setzero_si256();
    match format {
        WeightFormat::Q4_K | WeightFormat::Q5_K => {
            let (high_bits, nibbles) = if format == WeightFormat::Q5_K {
                (Some(load32(&block[16..48])), &block[48..176])
            } else {
                (None, &block[16..144])
            };
            let pairs: [__m256i; 4] = std::array::from_fn(|p| load32(&nibbles[32 * p..][..32]));
            let quants = std::array::from_fn(|v| {
                let shifted = _mm256_srl_epi16(pairs[v / 2], _mm_cvtsi32_si128(4 * (v % 2) as i32));
                let low = _mm256_and_si256(shifted, low4);
                match high_bits {
                    // Bit `v` of each byte is the fifth bit of element `32v + byte`.
                    Some(bits) => {
                        let set = _mm256_test_epi8_mask(bits, _mm256_set1_epi8(1 << v));
                        _mm256_mask_add_epi8(low, set, low, _mm256_set1_epi8(16))
                    }
                    None => low,
                }
            });
            let (scales, mins) = k4_scales_and_mins(&block[4..16]);
            // Each per-32 value serves two 16-element groups: duplicate every byte.
            let duplicate = |packed: u64| {
                let bytes = _mm_cvtsi64_si128(packed as i64);
                _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(bytes, bytes))
            };
            let scales = duplicate(scales);
            Unpacked {
                quants,
                scales: spread_scales(scales),
                bias: zero,
                mins: duplicate(mins),
                d: read_f16(block, 0),
                dmin: read_f16(block, 2),
            }
        }
        WeightFormat::Q6_K => {
            let low2 = _mm256_set1_epi8(3);
            let mut quants = [zero; 8];
            for half in 0..2 {
                let first = load32(&block[half * 64..][..32]);
                let second = load32(&block[half * 64 + 32..][..32]);
                let high = load32(&block[128 + half * 32..][..32]);
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
            let packed: &[u8; 16] = block[192..208].try_into().expect("Q6_K has 16 scale bytes");
            // SAFETY: exactly 16 readable bytes; unaligned load.
            let scales = _mm256_cvtepi8_epi16(unsafe { _mm_loadu_si128(packed.as_ptr().cast()) });
            // Quants are stored biased by 32: Σ scale·(u − 32)·a = Σ scale·u·a − 32·Σ scale·bsum.
            Unpacked {
                quants,
                scales: spread_scales(scales),
                bias: _mm256_slli_epi16(scales, 5),
                mins: zero,
                d: read_f16(block, 208),
                dmin: 0.0,
            }
        }
        _ => unpack(format, block),
    }
}

/// `N` tokens' dot products with one K-quant row, each super-block unpacked once.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn dot_k_n<const N: usize>(
    format: WeightFormat,
    row: &[u8],
    blocks: [&[SuperBlock]; N],
) -> [f32; N] {
    let mut accumulators = [_mm256_setzero_ps(); N];
    for (index, block) in row.chunks_exact(format.block_bytes()).enumerate() {
        let unpacked = unpack_k(format, block);
        for token in 0..N {
            let activation = &blocks[token][index];
            // Four partial sums: one `vpdpwssd` chain through all eight vectors would run
            // at that instruction's latency.
            let mut partial = [_mm256_setzero_si256(); 4];
            for v in 0..8 {
                let a = load_i8x32(
                    activation.qs[v * 32..(v + 1) * 32]
                        .try_into()
                        .expect("32 activations"),
                );
                // Unsigned quants (< 64) times signed bytes: pair sums fit i16 unsaturated.
                let pairs = _mm256_maddubs_epi16(unpacked.quants[v], a);
                partial[v % 4] = _mm256_dpwssd_epi32(partial[v % 4], unpacked.scales[v], pairs);
            }
            let mut sum = _mm256_add_epi32(
                _mm256_add_epi32(partial[0], partial[1]),
                _mm256_add_epi32(partial[2], partial[3]),
            );
            // SAFETY: 16 i16 are 32 readable bytes; unaligned load.
            let bsums = unsafe { _mm256_loadu_si256(activation.bsums.as_ptr().cast()) };
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
