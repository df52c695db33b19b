//! Element-wise pieces of the forward pass (norms, RoPE, activations), each computed the
//! way ggml's CPU backend computes it so logits stay close to llama.cpp's.

use half::f16;

use super::config::{Activation, RopeStyle};

/// RMSNorm per row of `weight.len()` values, accumulating the sum of squares in f64 as
/// ggml does.
pub(super) fn rms_norm(input: &[f32], weight: &[f32], epsilon: f32, output: &mut [f32]) {
    let d = weight.len();
    for (row, out) in input.chunks_exact(d).zip(output.chunks_exact_mut(d)) {
        let scale = rms_scale(row, epsilon);
        for ((o, &x), &w) in out.iter_mut().zip(row).zip(weight) {
            *o = x * scale * w;
        }
    }
}

/// RMSNorm of every `weight.len()`-wide row of `values`, in place (per-head q/k norms and
/// Gemma's post-norms).
pub(super) fn rms_norm_in_place(values: &mut [f32], weight: &[f32], epsilon: f32) {
    for row in values.chunks_exact_mut(weight.len()) {
        let scale = rms_scale(row, epsilon);
        for (x, &w) in row.iter_mut().zip(weight) {
            *x = *x * scale * w;
        }
    }
}

fn rms_scale(row: &[f32], epsilon: f32) -> f32 {
    let sum: f64 = row.iter().map(|&x| f64::from(x * x)).sum();
    let mean = (sum / row.len() as f64) as f32;
    1.0 / (mean + epsilon).sqrt()
}

/// Adds a bias to every row.
pub(super) fn add_bias(values: &mut [f32], bias: &[f32]) {
    for row in values.chunks_exact_mut(bias.len()) {
        add_in_place(row, bias);
    }
}

pub(super) fn add_in_place(target: &mut [f32], addend: &[f32]) {
    for (t, a) in target.iter_mut().zip(addend) {
        *t += a;
    }
}

/// The rotary position embedding of one layer.
pub(super) struct Rope<'a> {
    pub style: RopeStyle,
    pub dimensions: usize,
    pub head_dim: usize,
    pub freq_base: f32,
    pub freq_scale: f32,
    /// Per-pair divisors of the angle (Llama 3.1's `rope_freqs`), or ones.
    pub factors: &'a [f32],
}

impl Rope<'_> {
    /// Rotates every head of `vector` for `position` (ggml's `rope_f32`: the angle of pair
    /// `i` is `freq_scale * (position * base^(-2i/n) / factor_i)`).
    pub fn apply(&self, vector: &mut [f32], position: usize) {
        let theta_scale = self.freq_base.powf(-2.0 / self.dimensions as f32);
        let pairs = self.dimensions / 2;
        let mut angles = Vec::with_capacity(pairs);
        let mut theta = position as f32;
        for pair in 0..pairs {
            let factor = self.factors.get(pair).copied().unwrap_or(1.0);
            angles.push((self.freq_scale * (theta / factor)).sin_cos());
            theta *= theta_scale;
        }
        for head in vector.chunks_exact_mut(self.head_dim) {
            for (pair, &(sin, cos)) in angles.iter().enumerate() {
                let (first, second) = match self.style {
                    RopeStyle::Adjacent => (2 * pair, 2 * pair + 1),
                    RopeStyle::HalfSplit => (pair, pair + pairs),
                };
                let x0 = head[first];
                let x1 = head[second];
                head[first] = x0 * cos - x1 * sin;
                head[second] = x0 * sin + x1 * cos;
            }
        }
    }
}

/// `gate = act(gate) * up`, element-wise.
pub(super) fn gated_activation(activation: Activation, gate: &mut [f32], up: &[f32]) {
    match activation {
        Activation::Silu => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
        }
        Activation::GeluTanh => {
            for (g, &u) in gate.iter_mut().zip(up) {
                *g = gelu_tanh_f16_table(*g) * u;
            }
        }
    }
}

/// GELU (tanh approximation) as ggml's CPU backend computes it: looked up in a table
/// indexed by the f16 input and holding f16 results, exact past ±10.
fn gelu_tanh_f16_table(x: f32) -> f32 {
    const SQRT_2_OVER_PI: f32 = 0.797_884_6;
    const COEF_A: f32 = 0.044_715;
    if x <= -10.0 {
        return 0.0;
    }
    if x >= 10.0 {
        return x;
    }
    let x = f16::from_f32(x).to_f32();
    let y = 0.5 * x * (1.0 + (SQRT_2_OVER_PI * x * (1.0 + COEF_A * x * x)).tanh());
    f16::from_f32(y).to_f32()
}

/// `cap * tanh(x / cap)` (Gemma's final logit soft-capping).
pub(super) fn soft_cap(values: &mut [f32], cap: f32) {
    for value in values {
        *value = (*value / cap).tanh() * cap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_split_rope_rotates_first_and_second_halves_together() {
        let factors = [1.0; 2];
        let rope = Rope {
            style: RopeStyle::HalfSplit,
            dimensions: 4,
            head_dim: 4,
            freq_base: 10_000.0,
            freq_scale: 1.0,
            factors: &factors,
        };
        let mut vector = [1.0, 0.0, 0.0, 0.0];
        rope.apply(&mut vector, 1);
        // Pair 0 is (0, 2) with angle 1 radian; element 1 and 3 stay zero.
        assert!((vector[0] - 1f32.cos()).abs() < 1e-6);
        assert!((vector[2] - 1f32.sin()).abs() < 1e-6);
        assert_eq!((vector[1], vector[3]), (0.0, 0.0));
    }

    #[test]
    fn gelu_matches_the_closed_form_within_f16_rounding() {
        for x in [-12.0f32, -3.0, -0.5, 0.0, 0.3, 1.0, 2.5, 11.0] {
            let exact = 0.5 * x * (1.0 + (0.797_884_6 * x * (1.0 + 0.044_715 * x * x)).tanh());
            assert!(
                (gelu_tanh_f16_table(x) - exact).abs() <= exact.abs() * 2e-3 + 1e-3,
                "{x}"
            );
        }
    }
}
