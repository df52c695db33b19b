//! Portable reference implementations of the row dot products.

use half::{bf16, f16};

use super::dequantize::{q5_quants, unpack_k_block};
use super::{ActivationBlock, BLOCK, SuperBlock, WeightFormat, read_f16};

pub(super) fn dot_f32(row: &[u8], input: &[f32]) -> f32 {
    row.chunks_exact(4)
        .zip(input)
        .map(|(bytes, x)| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) * x)
        .sum()
}

pub(super) fn dot_f16(row: &[u8], input: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(input)
        .map(|(bytes, x)| f16::from_le_bytes([bytes[0], bytes[1]]).to_f32() * x)
        .sum()
}

pub(super) fn dot_bf16(row: &[u8], input: &[f32]) -> f32 {
    row.chunks_exact(2)
        .zip(input)
        .map(|(bytes, x)| bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32() * x)
        .sum()
}

/// Block dot product, mirroring ggml's `vec_dot_q{8_0,4_0,4_1,5_0,5_1}_q8_{0,1}` reference
/// code: an exact integer dot per block, scaled once.
pub(super) fn dot_blocks(format: WeightFormat, row: &[u8], blocks: &[ActivationBlock]) -> f32 {
    let mut sum = 0.0f32;
    match format {
        WeightFormat::Q8_0 => {
            for (block, activation) in row.chunks_exact(34).zip(blocks) {
                let d = read_f16(block, 0);
                let integer: i32 = block[2..]
                    .iter()
                    .zip(&activation.qs)
                    .map(|(&w, &a)| i32::from(w as i8) * i32::from(a))
                    .sum();
                sum += integer as f32 * d * activation.d;
            }
        }
        WeightFormat::Q4_0 => {
            for (block, activation) in row.chunks_exact(18).zip(blocks) {
                let d = read_f16(block, 0);
                let mut integer = 0i32;
                for (index, &byte) in block[2..].iter().enumerate() {
                    integer += (i32::from(byte & 0x0F) - 8) * i32::from(activation.qs[index]);
                    integer += (i32::from(byte >> 4) - 8) * i32::from(activation.qs[index + 16]);
                }
                sum += integer as f32 * d * activation.d;
            }
        }
        WeightFormat::Q4_1 => {
            for (block, activation) in row.chunks_exact(20).zip(blocks) {
                let d = read_f16(block, 0);
                let m = read_f16(block, 2);
                let mut integer = 0i32;
                for (index, &byte) in block[4..].iter().enumerate() {
                    integer += i32::from(byte & 0x0F) * i32::from(activation.qs[index]);
                    integer += i32::from(byte >> 4) * i32::from(activation.qs[index + BLOCK / 2]);
                }
                sum += integer as f32 * d * activation.d + m * activation.s;
            }
        }
        WeightFormat::Q5_0 => {
            for (block, activation) in row.chunks_exact(22).zip(blocks) {
                let d = read_f16(block, 0);
                let quants = q5_quants(&block[2..6], &block[6..22]);
                let integer: i32 = quants
                    .iter()
                    .zip(&activation.qs)
                    .map(|(&w, &a)| (i32::from(w) - 16) * i32::from(a))
                    .sum();
                sum += integer as f32 * d * activation.d;
            }
        }
        WeightFormat::Q5_1 => {
            for (block, activation) in row.chunks_exact(24).zip(blocks) {
                let d = read_f16(block, 0);
                let m = read_f16(block, 2);
                let quants = q5_quants(&block[4..8], &block[8..24]);
                let integer: i32 = quants
                    .iter()
                    .zip(&activation.qs)
                    .map(|(&w, &a)| i32::from(w) * i32::from(a))
                    .sum();
                sum += integer as f32 * d * activation.d + m * activation.s;
            }
        }
        _ => unreachable!("{format:?} is not a 32-element block format"),
    }
    sum
}

/// K-quant dot product against q8_K activations (ggml's `vec_dot_q{2,3,4,5,6}_K_q8_K`):
/// per super-block, `d · Σ scale·(q·a) − dmin · Σ min·bsum` with exact integer sums.
pub(super) fn dot_super_blocks(format: WeightFormat, row: &[u8], blocks: &[SuperBlock]) -> f32 {
    let mut sum = 0.0f32;
    for (block, activation) in row.chunks_exact(format.block_bytes()).zip(blocks) {
        let unpacked = unpack_k_block(format, block);
        let mut scaled = 0i32;
        let mut offsets = 0i32;
        for sub in 0..16 {
            let range = sub * 16..(sub + 1) * 16;
            let integer: i32 = unpacked.q[range.clone()]
                .iter()
                .zip(&activation.qs[range])
                .map(|(&w, &a)| i32::from(w) * i32::from(a))
                .sum();
            scaled += i32::from(unpacked.scales[sub]) * integer;
            offsets += i32::from(unpacked.mins[sub]) * i32::from(activation.bsums[sub]);
        }
        sum += unpacked.d * activation.d * scaled as f32
            - unpacked.dmin * activation.d * offsets as f32;
    }
    sum
}
