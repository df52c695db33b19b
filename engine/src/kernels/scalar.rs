//! Portable reference implementations of the row dot products.

use half::{bf16, f16};

use super::{ActivationBlock, BLOCK, WeightFormat, read_f16};

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

/// Block dot product, mirroring ggml's `vec_dot_q{8_0,4_0,4_1}_q8_{0,1}` reference code.
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
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            unreachable!("plain formats are not block quantized")
        }
    }
    sum
}
