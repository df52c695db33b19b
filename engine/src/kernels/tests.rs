//! The SIMD kernels must agree with the scalar reference, and both with plain f32 maths
//! on dequantized weights (within the error activation quantization allows).

use proptest::prelude::*;

use super::*;

fn random_row(format: WeightFormat, columns: usize, seed: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut state = 0x9E37_79B9u32;
    let mut next = |index: usize| {
        state = state
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223 ^ u32::from(seed[index % seed.len()]));
        (state >> 13) as u8
    };
    let scale = |value: f32| f16::from_f32(value).to_le_bytes();
    for block in 0..columns / BLOCK {
        match format {
            WeightFormat::Q8_0 => {
                bytes.extend_from_slice(&scale(0.01 + block as f32 * 0.001));
                bytes.extend((0..32).map(&mut next));
            }
            WeightFormat::Q4_0 => {
                bytes.extend_from_slice(&scale(0.02));
                bytes.extend((0..16).map(&mut next));
            }
            WeightFormat::Q4_1 => {
                bytes.extend_from_slice(&scale(0.03));
                bytes.extend_from_slice(&scale(-0.2));
                bytes.extend((0..16).map(&mut next));
            }
            _ => unreachable!("block formats only"),
        }
    }
    bytes
}

proptest! {
    #[test]
    fn simd_matches_scalar_and_float_reference(
        seed in proptest::collection::vec(any::<u8>(), 1..64),
        input in proptest::collection::vec(-4.0f32..4.0, 128),
        format_index in 0usize..3,
    ) {
        let format = [WeightFormat::Q8_0, WeightFormat::Q4_0, WeightFormat::Q4_1][format_index];
        let row = random_row(format, input.len(), &seed);
        let mut blocks = Vec::new();
        quantize_activations(&input, &mut blocks);
        let scalar = KernelImpl::Scalar.row_dot(format, &row, &input, &blocks);
        let detected = KernelImpl::detect().row_dot(format, &row, &input, &blocks);
        prop_assert!((scalar - detected).abs() <= 1e-3 * (1.0 + scalar.abs()), "{scalar} vs {detected}");

        let others: Vec<Vec<ActivationBlock>> = (1..4)
            .map(|shift| {
                let shifted: Vec<f32> = input.iter().map(|x| x * shift as f32 - 0.5).collect();
                let mut blocks = Vec::new();
                quantize_activations(&shifted, &mut blocks);
                blocks
            })
            .collect();
        let all = [&blocks[..], &others[0][..], &others[1][..], &others[2][..]];
        let four = KernelImpl::detect().row_dot_x4(format, &row, [&input[..]; 4], all);
        for (token, value) in four.iter().enumerate() {
            let single = KernelImpl::detect().row_dot(format, &row, &input, all[token]);
            prop_assert_eq!(value.to_bits(), single.to_bits(), "token {} differs", token);
        }

        let mut weights = vec![0.0f32; input.len()];
        dequantize_row(format, &row, &mut weights);
        let exact: f32 = weights.iter().zip(&input).map(|(w, x)| w * x).sum();
        let magnitude: f32 = weights.iter().zip(&input).map(|(w, x)| (w * x).abs()).sum();
        prop_assert!((exact - scalar).abs() <= 0.02 * magnitude + 1e-3, "{exact} vs {scalar}");
    }
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
