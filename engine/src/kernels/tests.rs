//! The SIMD kernels must agree with the scalar reference, and both with plain f32 maths
//! on dequantized weights (within the error activation quantization allows).

use proptest::prelude::*;

use super::*;

/// Byte offsets of the f16 scale fields in one block of each quantized format; random
/// bytes elsewhere are valid quants, but a random f16 may be NaN or huge.
fn scale_offsets(format: WeightFormat) -> &'static [usize] {
    match format {
        WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q5_0 => &[0],
        WeightFormat::Q4_1 | WeightFormat::Q5_1 | WeightFormat::Q4_K | WeightFormat::Q5_K => {
            &[0, 2]
        }
        WeightFormat::Q2_K => &[80, 82],
        WeightFormat::Q3_K => &[108],
        WeightFormat::Q6_K => &[208],
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::BF16 => &[],
    }
}

const QUANTIZED: [WeightFormat; 10] = [
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

fn random_row(format: WeightFormat, columns: usize, seed: &[u8]) -> Vec<u8> {
    let mut state = 0x9E37_79B9u32;
    let mut next = |index: usize| {
        state = state
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223 ^ u32::from(seed[index % seed.len()]));
        (state >> 13) as u8
    };
    let mut bytes: Vec<u8> = (0..format.row_bytes(columns)).map(&mut next).collect();
    for (block_index, block) in bytes.chunks_exact_mut(format.block_bytes()).enumerate() {
        for (field, &offset) in scale_offsets(format).iter().enumerate() {
            // Small scales of either sign, like real files' (K-quant minimums are positive
            // but the format allows any f16).
            let magnitude = 0.002 + f32::from(next(block_index + field)) * 1e-4;
            let sign = if next(field) % 4 == 0 { -1.0 } else { 1.0 };
            block[offset..offset + 2]
                .copy_from_slice(&f16::from_f32(sign * magnitude).to_le_bytes());
        }
    }
    bytes
}

/// Every SIMD implementation this CPU can run; the ones it cannot are reported on stderr
/// (visible with `--nocapture`) so a run on an AVX2-only machine says what it skipped.
fn simd_kernels() -> Vec<KernelImpl> {
    #[cfg(target_arch = "x86_64")]
    let candidates = [KernelImpl::Avx2, KernelImpl::Avx512];
    #[cfg(not(target_arch = "x86_64"))]
    let candidates: [KernelImpl; 0] = [];
    candidates
        .into_iter()
        .filter(|kernel| {
            let supported = kernel.is_supported();
            if !supported {
                eprintln!("skipping {kernel:?} kernels: this CPU does not support them");
            }
            supported
        })
        .collect()
}

fn quantized_forms(input: &[f32]) -> (Vec<ActivationBlock>, Vec<SuperBlock>) {
    let mut blocks = Vec::new();
    quantize_activations(input, &mut blocks);
    let mut super_blocks = Vec::new();
    quantize_super_blocks(input, &mut super_blocks);
    (blocks, super_blocks)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn simd_matches_scalar_and_float_reference(
        seed in proptest::collection::vec(any::<u8>(), 1..64),
        input in proptest::collection::vec(-4.0f32..4.0, 512),
        format_index in 0usize..QUANTIZED.len(),
    ) {
        let format = QUANTIZED[format_index];
        let row = random_row(format, input.len(), &seed);
        let (blocks, super_blocks) = quantized_forms(&input);
        let activations = TokenActivations { values: &input, blocks: &blocks, super_blocks: &super_blocks };
        let scalar = KernelImpl::Scalar.row_dot(format, &row, activations);
        for kernel in simd_kernels() {
            let simd = kernel.row_dot(format, &row, activations);
            // Integer block sums are exact in both; only the float summation order differs.
            prop_assert!((scalar - simd).abs() <= 1e-4 * (1.0 + scalar.abs()), "{kernel:?} {format:?}: {scalar} vs {simd}");
        }

        let others: Vec<(Vec<f32>, Vec<ActivationBlock>, Vec<SuperBlock>)> = (1..4)
            .map(|shift| {
                let shifted: Vec<f32> = input.iter().map(|x| x * shift as f32 - 0.5).collect();
                let (blocks, super_blocks) = quantized_forms(&shifted);
                (shifted, blocks, super_blocks)
            })
            .collect();
        let token = |index: usize| match index {
            0 => activations,
            _ => {
                let (values, blocks, super_blocks) = &others[index - 1];
                TokenActivations { values, blocks, super_blocks }
            }
        };
        for kernel in simd_kernels().into_iter().chain([KernelImpl::Scalar]) {
            let four = kernel.row_dot_x4(format, &row, [token(0), token(1), token(2), token(3)]);
            for (index, value) in four.iter().enumerate() {
                let single = kernel.row_dot(format, &row, token(index));
                prop_assert_eq!(value.to_bits(), single.to_bits(), "{:?} {:?} token {} differs", kernel, format, index);
            }
        }

        // Against f32 maths on the dequantized row: the only approximation is the 8-bit
        // activations, off by at most half a step (amax/254 per activation block) per
        // element, plus f16 rounding of the q8 scale and offset (2^-11 relative).
        let mut weights = vec![0.0f32; input.len()];
        dequantize_row(format, &row, &mut weights);
        let exact: f32 = weights.iter().zip(&input).map(|(w, x)| w * x).sum();
        let magnitude: f32 = weights.iter().zip(&input).map(|(w, x)| (w * x).abs()).sum();
        let block = if format.activation_kind() == ActivationKind::SuperBlocks { SUPER_BLOCK } else { BLOCK };
        let rounding: f32 = weights
            .chunks_exact(block)
            .zip(input.chunks_exact(block))
            .map(|(w, x)| {
                let amax = x.iter().fold(0.0f32, |max, v| max.max(v.abs()));
                w.iter().map(|w| w.abs()).sum::<f32>() * amax / 254.0
            })
            .sum();
        let tolerance = 1.01 * rounding + 2e-3 * magnitude + 1e-5;
        prop_assert!((exact - scalar).abs() <= tolerance, "{format:?}: {exact} vs {scalar} (tolerance {tolerance})");
    }
}

/// `rows_dot` (the matmul path) equals one `row_dot` per row and token, bit for bit, for
/// every implementation, token count (fours and a remainder) and format.
#[test]
fn rows_dot_equals_row_dot_per_row_and_token() {
    let columns = 512;
    let row_count = 7;
    for tokens in [1usize, 3, 4, 6, 9, 29] {
        let values: Vec<f32> = (0..tokens * columns)
            .map(|i| ((i * 7919) % 1013) as f32 / 127.0 - 4.0)
            .collect();
        let mut blocks = Vec::new();
        let mut super_blocks = Vec::new();
        for token in values.chunks_exact(columns) {
            let (token_blocks, token_super_blocks) = quantized_forms(token);
            blocks.extend(token_blocks);
            super_blocks.extend(token_super_blocks);
        }
        let batch = BatchActivations {
            tokens,
            columns,
            values: &values,
            blocks: &blocks,
            super_blocks: &super_blocks,
        };
        for format in WeightFormat::ALL {
            let rows: Vec<u8> = (0..row_count)
                .flat_map(|row| match format.activation_kind() {
                    ActivationKind::Float => vec![0x3C; format.row_bytes(columns)],
                    _ => random_row(format, columns, &[row as u8, tokens as u8]),
                })
                .collect();
            for kernel in simd_kernels().into_iter().chain([KernelImpl::Scalar]) {
                let mut output = vec![f32::NAN; row_count * tokens];
                kernel.rows_dot(format, &rows, batch, &mut output);
                for (row_index, row) in rows.chunks_exact(format.row_bytes(columns)).enumerate() {
                    for token in 0..tokens {
                        let single = kernel.row_dot(format, row, batch.token(token));
                        assert_eq!(
                            output[row_index * tokens + token].to_bits(),
                            single.to_bits(),
                            "{kernel:?} {format:?} row {row_index} token {token} of {tokens}"
                        );
                    }
                }
            }
        }
    }
}

/// No rows, or no tokens, is an empty multiplication for every implementation.
#[test]
fn rows_dot_with_no_rows_or_no_tokens_does_nothing() {
    let columns = 256;
    let values = vec![0.5f32; columns];
    let (blocks, super_blocks) = quantized_forms(&values);
    for format in WeightFormat::ALL {
        let row = vec![0u8; format.row_bytes(columns)];
        for kernel in simd_kernels().into_iter().chain([KernelImpl::Scalar]) {
            let one = BatchActivations {
                tokens: 1,
                columns,
                values: &values,
                blocks: &blocks,
                super_blocks: &super_blocks,
            };
            kernel.rows_dot(format, &[], one, &mut []);
            let none = BatchActivations {
                tokens: 0,
                values: &[],
                blocks: &[],
                super_blocks: &[],
                ..one
            };
            kernel.rows_dot(format, &row, none, &mut []);
        }
    }
}

#[test]
fn super_block_quantization_follows_ggml() {
    // The scale comes from the signed extreme: a negative extreme gives a positive
    // inverse scale and vice versa, and the extreme itself maps to -127.
    let mut input = vec![0.25f32; 256];
    input[7] = -2.0;
    input[100] = 1.0;
    let mut blocks = Vec::new();
    quantize_super_blocks(&input, &mut blocks);
    let block = &blocks[0];
    assert_eq!(block.qs[7], -127);
    assert_eq!(block.d, 1.0 / (-127.0 / -2.0));
    assert_eq!(block.qs[100], 64); // 63.5 rounds to even
    assert_eq!(block.bsums[0], i16::from(block.qs[7]) + 15 * 16);
    assert_eq!(
        block.bsums.iter().map(|&sum| i32::from(sum)).sum::<i32>(),
        block.qs.iter().map(|&q| i32::from(q)).sum::<i32>()
    );
    quantize_super_blocks(&[0.0; 256], &mut blocks);
    assert!(blocks[0].d == 0.0 && blocks[0].qs == [0; 256]);
}

#[test]
fn zero_activations_quantize_to_zero() {
    let mut blocks = Vec::new();
    quantize_activations(&[0.0; 64], &mut blocks);
    assert_eq!(blocks.len(), 2);
    assert!(
        blocks
            .iter()
            .all(|block| block.d == 0.0 && block.qs == [0; 32])
    );
}

#[test]
fn fast_rounding_matches_round_ties_even() {
    for step in -260_000..=260_000 {
        let value = step as f32 / 1000.0;
        assert_eq!(
            round_ties_even_small(value),
            value.round_ties_even(),
            "{value}"
        );
    }
    for value in [
        0.5f32, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5, 127.0, -127.0,
    ] {
        assert_eq!(
            round_ties_even_small(value),
            value.round_ties_even(),
            "{value}"
        );
    }
}

/// The AVX2 activation quantization gives the scalar reference's blocks bit for bit.
#[test]
fn activation_quantization_matches_the_scalar_reference() {
    let mut input: Vec<f32> = (0..32 * 64)
        .map(|i| ((i * 7919) % 2003) as f32 / 97.0 - 10.0)
        .collect();
    // Ties at the rounding step, an all-zero block and a block of one large value.
    input[..32].copy_from_slice(&[0.0; 32]);
    for (i, value) in input[32..64].iter_mut().enumerate() {
        *value = (i as f32 - 16.0) * 0.5;
    }
    input[64..96].fill(0.0);
    input[70] = -1e30;
    let mut fast = Vec::new();
    let mut reference = Vec::new();
    quantize_activations(&input, &mut fast);
    quantize_activations_scalar(&input, &mut reference);
    assert_eq!(fast.len(), reference.len());
    for (index, (a, b)) in fast.iter().zip(&reference).enumerate() {
        assert_eq!(
            (a.d.to_bits(), a.s.to_bits(), a.qs),
            (b.d.to_bits(), b.s.to_bits(), b.qs),
            "block {index}"
        );
    }
}

/// Every implementation this CPU has is exercised by the property test above; this says
/// which, so a CI log shows whether the AVX-512 path ran.
#[test]
fn simd_kernels_under_test_are_reported() {
    let kernels = simd_kernels();
    eprintln!(
        "kernels compared with the scalar reference: {kernels:?} (detected: {:?})",
        KernelImpl::detect()
    );
    assert!(kernels.iter().all(|kernel| kernel.is_supported()));
    assert!(KernelImpl::detect().is_supported());
}

/// Edge values the random rows rarely hit: Q8_0 weights of −128 and activations of ±127,
/// all-ones high bits in Q5 blocks, and the largest 6-bit K-quant scales and minimums.
#[test]
fn simd_kernels_match_scalar_on_extreme_blocks() {
    let input: Vec<f32> = (0..512)
        .map(|i| {
            if i % 3 == 0 {
                -4.0
            } else {
                4.0 - i as f32 / 256.0
            }
        })
        .collect();
    let (blocks, super_blocks) = quantized_forms(&input);
    let activations = TokenActivations {
        values: &input,
        blocks: &blocks,
        super_blocks: &super_blocks,
    };
    for format in QUANTIZED {
        for fill in [0x00u8, 0x80, 0xFF] {
            let mut row = random_row(format, input.len(), &[fill]);
            for block in row.chunks_exact_mut(format.block_bytes()) {
                let scales = scale_offsets(format);
                for (offset, byte) in block.iter_mut().enumerate() {
                    if !scales.iter().any(|&s| offset == s || offset == s + 1) {
                        *byte = fill;
                    }
                }
            }
            let scalar = KernelImpl::Scalar.row_dot(format, &row, activations);
            for kernel in simd_kernels() {
                let simd = kernel.row_dot(format, &row, activations);
                assert!(
                    (scalar - simd).abs() <= 1e-4 * (1.0 + scalar.abs()),
                    "{kernel:?} {format:?} fill {fill:#x}: {scalar} vs {simd}"
                );
            }
        }
    }
}

/// Rough kernel throughput, for comparing implementations on one machine:
/// `cargo test --release -p flotilla-engine --lib kernel_throughput -- --ignored --nocapture`.
#[test]
#[ignore = "a timing report, not a check"]
fn kernel_throughput() {
    use std::time::Instant;
    let columns = std::env::var("KT_COLUMNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4864); // Qwen2.5-0.5B's ffn_down width: whole super-blocks and blocks
    let rows = 64; // stays in L2: this measures the kernels, not memory
    let input: Vec<f32> = (0..columns)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    let (blocks, super_blocks) = quantized_forms(&input);
    let activations = TokenActivations {
        values: &input,
        blocks: &blocks,
        super_blocks: &super_blocks,
    };
    // The fastest of several trials: the machine this runs on is usually shared.
    let fastest = |run: &mut dyn FnMut() -> f32| {
        (0..15)
            .map(|_| {
                let start = Instant::now();
                std::hint::black_box(run());
                start.elapsed().as_secs_f64() / rows as f64
            })
            .fold(f64::INFINITY, f64::min)
    };
    for format in QUANTIZED {
        let matrix: Vec<Vec<u8>> = (0..rows)
            .map(|r| random_row(format, columns, &[r as u8, 7]))
            .collect();
        for kernel in simd_kernels() {
            let one = fastest(&mut || {
                matrix
                    .iter()
                    .map(|row| kernel.row_dot(format, row, activations))
                    .sum()
            });
            let four = fastest(&mut || {
                matrix
                    .iter()
                    .map(|row| kernel.row_dot_x4(format, row, [activations; 4])[3])
                    .sum()
            });
            // The matmul path: all rows in one call, eight tokens (or `KT_TOKENS`; `KT_COLUMNS`
            // sets the row width, 896 for most of Qwen2.5-0.5B's rows).
            let tokens = std::env::var("KT_TOKENS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(8);
            let values = input.repeat(tokens);
            let batch_blocks = blocks.repeat(tokens);
            let batch_super_blocks = super_blocks.repeat(tokens);
            let batch = BatchActivations {
                tokens,
                columns,
                values: &values,
                blocks: &batch_blocks,
                super_blocks: &batch_super_blocks,
            };
            let all_rows = matrix.concat();
            let mut output = vec![0.0f32; rows * tokens];
            let eight = fastest(&mut || {
                kernel.rows_dot(format, &all_rows, batch, &mut output);
                output[0]
            });
            // The decoding path: all rows in one call, one token.
            let single_batch = BatchActivations {
                tokens: 1,
                columns,
                values: &input,
                blocks: &blocks,
                super_blocks: &super_blocks,
            };
            let mut single_output = vec![0.0f32; rows];
            let single = fastest(&mut || {
                kernel.rows_dot(format, &all_rows, single_batch, &mut single_output);
                single_output[0]
            });
            eprintln!(
                "{format:?} {kernel:?}: {:.0} ns/row (1 token), {:.0} ns/row (4 tokens), {:.0} ns/row (rows_dot, 1 token), {:.0} ns/row (rows_dot, {tokens} tokens)",
                one * 1e9,
                four * 1e9,
                single * 1e9,
                eight * 1e9
            );
        }
    }
}

proptest! {
    /// The affine rewrite the device graph uploads gives the same values as
    /// `dequantize_row`, bit for bit, in every block format.
    #[test]
    fn affine_groups_rebuild_the_dequantized_row(
        format_index in 0..QUANTIZED.len(),
        seed in proptest::collection::vec(any::<u8>(), 1..16),
    ) {
        let format = QUANTIZED[format_index];
        let columns = 512;
        let row = random_row(format, columns, &seed);
        let mut expected = vec![0.0f32; columns];
        dequantize_row(format, &row, &mut expected);
        let layout = AffineLayout::of(format).expect("a block format");
        let (mut codes, mut groups) = (Vec::new(), Vec::new());
        affine_groups(format, &row, &mut codes, &mut groups);
        prop_assert_eq!(codes.len(), columns);
        prop_assert_eq!(groups.len(), columns / layout.group);
        prop_assert!(codes.iter().all(|&code| u32::from(code) < 1 << layout.bits));
        for (index, (&code, &want)) in codes.iter().zip(&expected).enumerate() {
            let (scale, offset) = groups[index / layout.group];
            let value = scale * (f32::from(code) - f32::from(layout.zero)) + offset;
            prop_assert_eq!(value.to_bits(), want.to_bits(), "{:?} element {}", format, index);
        }
    }
}
