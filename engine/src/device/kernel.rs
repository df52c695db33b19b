//! The quantized matrix product as one CubeCL kernel (feature `gpu`): `input · Wᵀ` read
//! straight from [`super::matrix`]'s packed codes, dequantized in registers as each word
//! is loaded, so the weight never exists as f32 in device memory.
//!
//! Decoding is bound by reading the weights: the generic form (dequantize with burn's
//! tensor operations into a transient f32 matrix, then burn's matmul) reads and writes
//! about 9× the weight's own bytes per product, and launches nine kernels. This one reads
//! each code once per tile of tokens and launches once.
//!
//! Layout: one cube (workgroup) per output row. Its units take the row's words in turn
//! (neighbouring units read neighbouring words, so a GPU coalesces the loads), each
//! keeping one partial sum per token of its tile, and the cube adds the partial sums up in
//! shared memory. Tokens come in tiles of up to [`MAX_TILE`]; each tile is a third grid
//! dimension, reading the row again, which is why long prompts keep burn's matmul instead
//! (see [`is_worth_it`]).
//!
//! Only burn's CubeCL backend (wgpu here) runs it; `flex`, the CPU backend the tests use
//! without a GPU, keeps the generic form. Both compute the same products: the parity
//! tests compare each with the CPU kernels.

use burn::backend::{Cube, DispatchDevice};
use burn::tensor::{DType, Int, Shape, Tensor};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;

/// Most tokens one cube computes at once (its partial sums live in registers).
const MAX_TILE: usize = 8;

/// Above this many tokens, dequantizing once and running burn's tiled matmul reads less
/// than re-reading each row once per tile of [`MAX_TILE`] tokens.
const MAX_TOKENS: usize = 64;

/// Whether the kernel serves a product of `tokens` rows of `input`'s device.
pub(super) fn is_worth_it(input: &Tensor<2>) -> bool {
    input.dims()[0] <= MAX_TOKENS && matches!(input.device().as_dispatch(), DispatchDevice::Cube(_))
}

/// The packed weight of one chunk, as [`super::matrix`] uploads it.
pub(super) struct PackedWeight<'a> {
    /// `[rows, words]`, the codes of `32 / bits` consecutive columns per word.
    pub codes: &'a Tensor<2, Int>,
    /// `[rows, groups, 1]`.
    pub scales: &'a Tensor<3>,
    pub offsets: &'a Tensor<3>,
    pub bits: u32,
    pub group: usize,
    /// The code that means zero before scaling (`value = (code − zero) · scale + offset`).
    pub zero: f32,
}

/// `input · Wᵀ`: `[tokens, columns]` to `[tokens, rows]`. `None` when a tensor is not on
/// a CubeCL device after all (the caller then takes the generic path).
pub(super) fn product(input: Tensor<2>, weight: &PackedWeight<'_>) -> Option<Tensor<2>> {
    let input: CubeTensor = input.try_into_primitive::<Cube>().ok()?;
    let codes: CubeTensor = weight.codes.clone().try_into_primitive::<Cube>().ok()?;
    let scales: CubeTensor = weight.scales.clone().try_into_primitive::<Cube>().ok()?;
    let offsets: CubeTensor = weight.offsets.clone().try_into_primitive::<Cube>().ok()?;
    let input = burn_cubecl::kernel::into_contiguous(input);
    let tokens = input.meta.shape()[0];
    let rows = codes.meta.shape()[0];
    let words = codes.meta.shape()[1];
    let client = input.client.clone();
    let output = empty_device_contiguous_dtype(
        client.clone(),
        input.device.clone(),
        Shape::new([tokens, rows]),
        DType::F32,
    );
    let hardware = &client.properties().hardware;
    // A power of two (the reduction halves it), about as many as the row has words, and
    // at least one per token of the tile (each writes one token's sum).
    let tile = tokens.clamp(1, MAX_TILE).next_power_of_two();
    let most_units = hardware.max_units_per_cube.clamp(MAX_TILE as u32, 128);
    let units = (words.next_power_of_two() as u32)
        .clamp(tile as u32, 64)
        .min(most_units);
    let units = 1u32 << (31 - units.leading_zeros());
    // Rows over x (and y beyond the per-dimension limit), token tiles over z.
    let most_cubes = hardware.max_cube_count.0.max(1) as usize;
    let across = rows.min(most_cubes);
    let down = rows.div_ceil(across);
    let tiles = tokens.div_ceil(tile);
    cube::affine_product_kernel::launch(
        &client,
        CubeCount::Static(across as u32, down as u32, tiles as u32),
        CubeDim::new_1d(units),
        input.into_tensor_arg(),
        codes.into_tensor_arg(),
        scales.into_tensor_arg(),
        offsets.into_tensor_arg(),
        output.clone().into_tensor_arg(),
        weight.zero,
        weight.bits,
        weight.group,
        tile,
        units as usize,
    );
    Some(Tensor::<2>::from_primitive::<Cube>(output))
}

/// The kernel, apart: CubeCL's prelude names its own `Tensor`.
mod cube {
    use burn_cubecl::cubecl;
    use cubecl::prelude::*;

    /// One cube per output row (`CUBE_POS_Y · CUBE_COUNT_X + CUBE_POS_X`), one tile of
    /// tokens per `CUBE_POS_Z`. The codes tensor is burn's i32 integer tensor, read as u32
    /// (the same 4 bytes; the shift that unpacks is then a logical one).
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn affine_product_kernel(
        input: &Tensor<f32>,
        codes: &Tensor<u32>,
        scales: &Tensor<f32>,
        offsets: &Tensor<f32>,
        output: &mut Tensor<f32>,
        zero: f32,
        #[comptime] bits: u32,
        #[comptime] group: usize,
        #[comptime] tile: usize,
        #[comptime] units: usize,
    ) {
        let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
        // The whole cube shares the row, so it leaves together (no unit waits at a barrier
        // another left).
        if row >= output.shape(1) {
            terminate!();
        }
        let tokens = input.shape(0);
        let first_token = CUBE_POS_Z as usize * tile;
        let unit = UNIT_POS as usize;
        let per_word = comptime!((32 / bits) as usize);
        let mask = comptime!((1u32 << bits) - 1);
        let words = codes.shape(1);
        let input_stride = input.stride(0);
        let code_row = row * codes.stride(0);
        let group_row = row * scales.stride(0);

        let mut sums = Array::<f32>::new(tile);
        #[unroll]
        for j in 0..tile {
            sums[j] = 0.0;
        }
        let mut word_index = unit;
        while word_index < words {
            let mut word = codes[code_row + word_index];
            let column = word_index * per_word;
            // A word's codes never straddle two groups (groups of 16 or 32, words of 4 or 8).
            let group_index = group_row + column / group;
            let scale = scales[group_index];
            let offset = offsets[group_index];
            #[unroll]
            for k in 0..per_word {
                let value = (f32::cast_from(word & mask) - zero) * scale + offset;
                word >>= bits;
                #[unroll]
                for j in 0..tile {
                    let token = first_token + j;
                    if token < tokens {
                        sums[j] += input[token * input_stride + column + k] * value;
                    }
                }
            }
            word_index += units;
        }

        let mut partial = Shared::<[f32]>::new_slice(tile * units);
        #[unroll]
        for j in 0..tile {
            partial[j * units + unit] = sums[j];
        }
        sync_cube();
        let mut active = CUBE_DIM / 2;
        while active > 0 {
            if UNIT_POS < active {
                let other = unit + active as usize;
                #[unroll]
                for j in 0..tile {
                    let value = partial[j * units + other];
                    partial[j * units + unit] += value;
                }
            }
            sync_cube();
            active /= 2;
        }
        if unit < tile {
            let token = first_token + unit;
            if token < tokens {
                let at = token * output.stride(0) + row;
                output[at] = partial[unit * units];
            }
        }
    }
}
