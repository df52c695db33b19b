//! Block layouts of every weight format, as ggml defines them (`ggml-common.h`), and their
//! dequantization to f32.
//!
//! The K-quant formats are unpacked through one intermediate form, [`KBlock`]: 256 small
//! integers with one integer scale (and, for the "affine" formats, one integer minimum) per
//! 16 elements. The scalar dot products use the same unpacking, so the layout knowledge lives
//! in one place, and both are tested block for block against an independent dequantizer
//! (the `gguf` Python package) in `tests/kernel_dequantize.rs`.
//!
//! Float expressions follow ggml's `dequantize_row_*` term by term (`(d · scale) · q − dmin ·
//! min`), so the results are equal to ggml's and gguf-py's, not merely close.

use half::{bf16, f16};

use super::{BLOCK, SUPER_BLOCK, WeightFormat, read_f16};

/// A K-quant super-block unpacked to integers: element `e` is
/// `d · scales[e / 16] · q[e] − dmin · mins[e / 16]`.
pub(super) struct KBlock {
    pub d: f32,
    pub dmin: f32,
    pub q: [i8; SUPER_BLOCK],
    pub scales: [i16; 16],
    pub mins: [i16; 16],
}

/// Q4_K's and Q5_K's 6-bit scale and minimum of sub-block `j` (of 8) from the 12 packed
/// bytes (ggml's `get_scale_min_k4`).
#[inline(always)]
pub(super) fn scale_min_k4(j: usize, packed: &[u8]) -> (u8, u8) {
    if j < 4 {
        (packed[j] & 63, packed[j + 4] & 63)
    } else {
        (
            (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
            (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
        )
    }
}

/// Q3_K's 16 signed 6-bit scales from their 12 packed bytes: the low nibbles of bytes 0-7
/// give scales 0-7, their high nibbles scales 8-15, and bytes 8-11 hold the top two bits.
pub(super) fn q3_k_scales(packed: &[u8]) -> [i16; 16] {
    std::array::from_fn(|s| {
        let low = if s < 8 {
            packed[s] & 0x0F
        } else {
            packed[s - 8] >> 4
        };
        let high = (packed[8 + s % 4] >> (2 * (s / 4))) & 3;
        i16::from(low | (high << 4)) - 32
    })
}

/// Unpacks one K-quant super-block (`block` is exactly `format.block_bytes()` long).
pub(super) fn unpack_k_block(format: WeightFormat, block: &[u8]) -> KBlock {
    let mut unpacked = KBlock {
        d: 0.0,
        dmin: 0.0,
        q: [0; SUPER_BLOCK],
        scales: [0; 16],
        mins: [0; 16],
    };
    match format {
        WeightFormat::Q2_K => {
            // scales[16] (low nibble scale, high nibble min), qs[64], d, dmin.
            let (scales, qs) = (&block[0..16], &block[16..80]);
            unpacked.d = read_f16(block, 80);
            unpacked.dmin = read_f16(block, 82);
            for (e, q) in unpacked.q.iter_mut().enumerate() {
                let (half, shift, l) = (e / 128, 2 * ((e % 128) / 32), e % 32);
                *q = ((qs[half * 32 + l] >> shift) & 3) as i8;
            }
            for (s, &packed) in scales.iter().enumerate() {
                unpacked.scales[s] = i16::from(packed & 0x0F);
                unpacked.mins[s] = i16::from(packed >> 4);
            }
        }
        WeightFormat::Q3_K => {
            // hmask[32], qs[64], scales[12], d.
            let (hmask, qs) = (&block[0..32], &block[32..96]);
            unpacked.d = read_f16(block, 108);
            for (e, q) in unpacked.q.iter_mut().enumerate() {
                let (half, j, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = ((qs[half * 32 + l] >> (2 * j)) & 3) as i8;
                let high_set = hmask[l] & (1 << (half * 4 + j)) != 0;
                *q = low - if high_set { 0 } else { 4 };
            }
            unpacked.scales = q3_k_scales(&block[96..108]);
        }
        WeightFormat::Q4_K | WeightFormat::Q5_K => {
            // d, dmin, scales[12], (Q5_K: qh[32]), qs[128].
            unpacked.d = read_f16(block, 0);
            unpacked.dmin = read_f16(block, 2);
            let packed = &block[4..16];
            let (qh, qs) = if format == WeightFormat::Q5_K {
                (Some(&block[16..48]), &block[48..176])
            } else {
                (None, &block[16..144])
            };
            for (e, q) in unpacked.q.iter_mut().enumerate() {
                let (j, l) = (e / 32, e % 32);
                let mut value = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0F;
                if let Some(qh) = qh {
                    value |= ((qh[l] >> j) & 1) << 4;
                }
                *q = value as i8;
            }
            for j in 0..8 {
                let (scale, min) = scale_min_k4(j, packed);
                unpacked.scales[2 * j] = i16::from(scale);
                unpacked.scales[2 * j + 1] = i16::from(scale);
                unpacked.mins[2 * j] = i16::from(min);
                unpacked.mins[2 * j + 1] = i16::from(min);
            }
        }
        WeightFormat::Q6_K => {
            // ql[128], qh[64], scales[16] (i8), d.
            let (ql, qh, scales) = (&block[0..128], &block[128..192], &block[192..208]);
            unpacked.d = read_f16(block, 208);
            for (e, q) in unpacked.q.iter_mut().enumerate() {
                let (half, quarter, l) = (e / 128, (e % 128) / 32, e % 32);
                let low = (ql[half * 64 + (quarter % 2) * 32 + l] >> (4 * (quarter / 2))) & 0x0F;
                let high = (qh[half * 32 + l] >> (2 * quarter)) & 3;
                *q = (low | (high << 4)) as i8 - 32;
            }
            for (scale, &packed) in unpacked.scales.iter_mut().zip(scales) {
                *scale = i16::from(packed as i8);
            }
        }
        _ => unreachable!("{format:?} is not a K-quant format"),
    }
    unpacked
}

/// The 32 integer quants of a Q5_0/Q5_1 block: nibble `j` of `qs` plus bit `j` of `qh`
/// as the fifth bit (element `j` and `j + 16` share byte `j`).
pub(super) fn q5_quants(qh: &[u8], qs: &[u8]) -> [u8; BLOCK] {
    let high = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    std::array::from_fn(|e| {
        let nibble = if e < 16 {
            qs[e] & 0x0F
        } else {
            qs[e - 16] >> 4
        };
        nibble | ((((high >> e) & 1) as u8) << 4)
    })
}

/// Dequantizes one row into `output` (embedding lookups, norms and tests).
pub fn dequantize_row(format: WeightFormat, row: &[u8], output: &mut [f32]) {
    let chunk = format.block_elements();
    let blocks = row
        .chunks_exact(format.block_bytes())
        .zip(output.chunks_exact_mut(chunk));
    match format {
        WeightFormat::F32 => {
            for (bytes, value) in blocks {
                value[0] = f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
        WeightFormat::F16 => {
            for (bytes, value) in blocks {
                value[0] = f16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
            }
        }
        WeightFormat::BF16 => {
            for (bytes, value) in blocks {
                value[0] = bf16::from_le_bytes([bytes[0], bytes[1]]).to_f32();
            }
        }
        WeightFormat::Q8_0 => {
            for (block, values) in blocks {
                let d = read_f16(block, 0);
                for (value, &quantized) in values.iter_mut().zip(&block[2..]) {
                    *value = d * f32::from(quantized as i8);
                }
            }
        }
        WeightFormat::Q4_0 => {
            for (block, values) in blocks {
                let d = read_f16(block, 0);
                for (index, &byte) in block[2..].iter().enumerate() {
                    values[index] = d * (f32::from(byte & 0x0F) - 8.0);
                    values[index + 16] = d * (f32::from(byte >> 4) - 8.0);
                }
            }
        }
        WeightFormat::Q4_1 => {
            for (block, values) in blocks {
                let d = read_f16(block, 0);
                let m = read_f16(block, 2);
                for (index, &byte) in block[4..].iter().enumerate() {
                    values[index] = d * f32::from(byte & 0x0F) + m;
                    values[index + 16] = d * f32::from(byte >> 4) + m;
                }
            }
        }
        WeightFormat::Q5_0 => {
            for (block, values) in blocks {
                let d = read_f16(block, 0);
                let quants = q5_quants(&block[2..6], &block[6..22]);
                for (value, &q) in values.iter_mut().zip(&quants) {
                    *value = d * f32::from(q as i8 - 16);
                }
            }
        }
        WeightFormat::Q5_1 => {
            for (block, values) in blocks {
                let d = read_f16(block, 0);
                let m = read_f16(block, 2);
                let quants = q5_quants(&block[4..8], &block[8..24]);
                for (value, &q) in values.iter_mut().zip(&quants) {
                    *value = d * f32::from(q) + m;
                }
            }
        }
        WeightFormat::Q2_K
        | WeightFormat::Q3_K
        | WeightFormat::Q4_K
        | WeightFormat::Q5_K
        | WeightFormat::Q6_K => {
            for (block, values) in blocks {
                let unpacked = unpack_k_block(format, block);
                for (index, value) in values.iter_mut().enumerate() {
                    let sub = index / 16;
                    let scale = unpacked.d * f32::from(unpacked.scales[sub]);
                    let min = unpacked.dmin * f32::from(unpacked.mins[sub]);
                    *value = scale * f32::from(unpacked.q[index]) - min;
                }
            }
        }
    }
}

/// A row of a block-quantized format rewritten as groups of small unsigned integers with
/// one f32 scale and one f32 offset per group: element `e` is
/// `scale[g] · (code[e] − zero) + offset[g]`, `g = e / group`. Every GGUF block format has
/// this shape (the K-quants once their packed scales are multiplied out), which lets an
/// executor that cannot read ggml's byte layouts (the burn device graph) keep the weights
/// as 4- or 8-bit codes and dequantize them with plain integer and float operations.
/// The float expressions are the ones [`dequantize_row`] evaluates, so both give the same
/// values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AffineLayout {
    /// Elements sharing one scale and offset.
    pub group: usize,
    /// Bits per code: 4 or 8.
    pub bits: u32,
    /// Subtracted from every code before scaling.
    pub zero: u8,
}

impl AffineLayout {
    /// The layout `format` is rewritten to, or `None` for the float formats.
    pub fn of(format: WeightFormat) -> Option<AffineLayout> {
        let (group, bits, zero) = match format {
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => return None,
            WeightFormat::Q4_0 => (BLOCK, 4, 8),
            WeightFormat::Q4_1 => (BLOCK, 4, 0),
            WeightFormat::Q5_0 => (BLOCK, 8, 16),
            WeightFormat::Q5_1 => (BLOCK, 8, 0),
            WeightFormat::Q8_0 => (BLOCK, 8, 128),
            WeightFormat::Q2_K => (16, 4, 0),
            WeightFormat::Q3_K => (16, 4, 4),
            WeightFormat::Q4_K => (32, 4, 0),
            WeightFormat::Q5_K => (32, 8, 0),
            WeightFormat::Q6_K => (16, 8, 32),
        };
        Some(AffineLayout { group, bits, zero })
    }
}

/// The offset of formats without one: `x + -0.0` is `x` for every `x`, signed zeros too.
const NO_OFFSET: f32 = -0.0;

/// Rewrites one row of `format` (see [`AffineLayout`]), appending one code per element to
/// `codes` and one `(scale, offset)` per group to `groups`. `format` must be a block
/// format (one for which [`AffineLayout::of`] is `Some`).
pub fn affine_groups(
    format: WeightFormat,
    row: &[u8],
    codes: &mut Vec<u8>,
    groups: &mut Vec<(f32, f32)>,
) {
    let blocks = row.chunks_exact(format.block_bytes());
    match format {
        WeightFormat::Q8_0 => {
            for block in blocks {
                groups.push((read_f16(block, 0), NO_OFFSET));
                codes.extend(block[2..].iter().map(|&q| (q as i8 as i16 + 128) as u8));
            }
        }
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
            let affine = format == WeightFormat::Q4_1;
            for block in blocks {
                let offset = if affine {
                    read_f16(block, 2)
                } else {
                    NO_OFFSET
                };
                groups.push((read_f16(block, 0), offset));
                let quants = &block[if affine { 4 } else { 2 }..];
                codes.extend(quants.iter().map(|&byte| byte & 0x0F));
                codes.extend(quants.iter().map(|&byte| byte >> 4));
            }
        }
        WeightFormat::Q5_0 => {
            for block in blocks {
                groups.push((read_f16(block, 0), NO_OFFSET));
                codes.extend_from_slice(&q5_quants(&block[2..6], &block[6..22]));
            }
        }
        WeightFormat::Q5_1 => {
            for block in blocks {
                groups.push((read_f16(block, 0), read_f16(block, 2)));
                codes.extend_from_slice(&q5_quants(&block[4..8], &block[8..24]));
            }
        }
        WeightFormat::Q2_K
        | WeightFormat::Q3_K
        | WeightFormat::Q4_K
        | WeightFormat::Q5_K
        | WeightFormat::Q6_K => {
            let layout = AffineLayout::of(format).expect("a K-quant has an affine layout");
            for block in blocks {
                let unpacked = unpack_k_block(format, block);
                // Sub-blocks of 16 share a scale; Q4_K and Q5_K repeat theirs in pairs.
                for group in 0..SUPER_BLOCK / layout.group {
                    let sub = group * layout.group / 16;
                    let scale = unpacked.d * f32::from(unpacked.scales[sub]);
                    let min = unpacked.dmin * f32::from(unpacked.mins[sub]);
                    groups.push((scale, -min));
                }
                codes.extend(
                    unpacked
                        .q
                        .iter()
                        .map(|&q| (i16::from(q) + i16::from(layout.zero)) as u8),
                );
            }
        }
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => {
            unreachable!("{format:?} is not a block format")
        }
    }
}
