//! Choosing the next token from logits: repetition penalty, then greedy or (top-k → top-p →
//! min-p → temperature → draw), the order llama.cpp's default sampler chain uses. The
//! random source is a seeded xoshiro256** so a request with a seed is reproducible.

use crate::tokenizer::TokenId;

/// How to pick tokens. `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0 disables).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1.0 disables).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one (0.0 disables).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens (1.0 disables).
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    /// Subtracted once from the logit of every token already generated (OpenAI's
    /// `presence_penalty`, within [-2, 2]; 0 disables).
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated (OpenAI's
    /// `frequency_penalty`, within [-2, 2]; 0 disables).
    pub frequency_penalty: f32,
    /// Seed for reproducible sampling; `None` seeds from the clock.
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repetition_penalty: 1.0,
            repetition_window: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    /// Deterministic argmax decoding.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Rejects values that make no sense instead of silently clamping them.
    pub fn validate(&self) -> Result<(), String> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(format!("temperature {} must be >= 0", self.temperature));
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return Err(format!("top_p {} must be within [0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(format!("min_p {} must be within [0, 1]", self.min_p));
        }
        if !self.repetition_penalty.is_finite() || self.repetition_penalty <= 0.0 {
            return Err(format!(
                "repetition_penalty {} must be > 0",
                self.repetition_penalty
            ));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(value.is_finite() && (-2.0..=2.0).contains(&value)) {
                return Err(format!("{name} {value} must be within [-2, 2]"));
            }
        }
        Ok(())
    }
}

/// xoshiro256** seeded through splitmix64: small, fast, and stable across versions.
#[derive(Debug, Clone)]
struct Rng {
    state: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Rng {
            state: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.state[1] << 17;
        self.state[2] ^= self.state[0];
        self.state[3] ^= self.state[1];
        self.state[1] ^= self.state[2];
        self.state[0] ^= self.state[3];
        self.state[2] ^= t;
        self.state[3] = self.state[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sampler for one sequence (it owns that sequence's random state).
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        let seed = params.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos() as u64)
        });
        Sampler {
            rng: Rng::new(seed),
            params,
        }
    }

    /// Applies the presence and frequency penalties for the tokens `generated` so far
    /// (OpenAI's definition: the prompt does not count).
    pub fn penalize(&self, logits: &mut [f32], generated: &[TokenId]) {
        let (presence, frequency) = (self.params.presence_penalty, self.params.frequency_penalty);
        if (presence == 0.0 && frequency == 0.0) || generated.is_empty() {
            return;
        }
        let mut counts: std::collections::HashMap<TokenId, u32> = std::collections::HashMap::new();
        for &token in generated {
            *counts.entry(token).or_default() += 1;
        }
        for (token, count) in counts {
            if let Some(logit) = logits.get_mut(token as usize) {
                *logit -= presence + frequency * count as f32;
            }
        }
    }

    /// Picks the next token. `recent` are the tokens so far (prompt and generated).
    pub fn sample(&mut self, logits: &mut [f32], recent: &[TokenId]) -> TokenId {
        let params = &self.params;
        if params.repetition_penalty != 1.0 {
            let window = &recent[recent.len().saturating_sub(params.repetition_window)..];
            let mut seen = std::collections::HashSet::new();
            for &token in window {
                if seen.insert(token)
                    && let Some(logit) = logits.get_mut(token as usize)
                {
                    if *logit > 0.0 {
                        *logit /= params.repetition_penalty;
                    } else {
                        *logit *= params.repetition_penalty;
                    }
                }
            }
        }
        if params.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut candidates: Vec<(TokenId, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, logit)| logit.is_finite())
            .map(|(token, &logit)| (token as TokenId, logit))
            .collect();
        if candidates.is_empty() {
            return argmax(logits);
        }
        candidates.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if params.top_k > 0 {
            candidates.truncate(params.top_k);
        }
        let probabilities = softmax(&candidates, 1.0);
        if params.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = candidates.len();
            for (index, probability) in probabilities.iter().enumerate() {
                cumulative += probability;
                if cumulative >= f64::from(params.top_p) {
                    keep = index + 1;
                    break;
                }
            }
            candidates.truncate(keep.max(1));
        }
        if params.min_p > 0.0 {
            let threshold = probabilities[0] * f64::from(params.min_p);
            let keep = probabilities
                .iter()
                .take(candidates.len())
                .take_while(|&&probability| probability >= threshold)
                .count();
            candidates.truncate(keep.max(1));
        }
        let probabilities = softmax(&candidates, params.temperature);
        let mut draw = self.rng.next_f64();
        for (candidate, probability) in candidates.iter().zip(&probabilities) {
            if draw < *probability {
                return candidate.0;
            }
            draw -= probability;
        }
        candidates[candidates.len() - 1].0
    }
}

/// Index of the largest logit (lowest index on ties, like llama.cpp's greedy sampler).
pub fn argmax(logits: &[f32]) -> TokenId {
    let mut best = 0;
    for (index, &logit) in logits.iter().enumerate() {
        if logit > logits[best] {
            best = index;
        }
    }
    best as TokenId
}

fn softmax(candidates: &[(TokenId, f32)], temperature: f32) -> Vec<f64> {
    let max = candidates
        .iter()
        .map(|&(_, logit)| logit)
        .fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = candidates
        .iter()
        .map(|&(_, logit)| f64::from((logit - max) / temperature).exp())
        .collect();
    let total: f64 = weights.iter().sum();
    weights.iter().map(|weight| weight / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..100)
            .map(|index| ((index * 37) % 100) as f32 / 10.0)
            .collect()
    }

    #[test]
    fn greedy_takes_the_maximum() {
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let mut values = logits();
        let best = argmax(&values);
        assert_eq!(sampler.sample(&mut values, &[]), best);
    }

    #[test]
    fn same_seed_same_tokens_different_seed_differs() {
        let params = |seed| SamplingParams {
            temperature: 1.5,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: Some(seed),
            ..SamplingParams::default()
        };
        let run = |seed| {
            let mut sampler = Sampler::new(params(seed));
            (0..50)
                .map(|_| sampler.sample(&mut logits(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut sampler = Sampler::new(SamplingParams {
            top_k: 1,
            temperature: 2.0,
            seed: Some(1),
            ..SamplingParams::default()
        });
        let best = argmax(&logits());
        for _ in 0..20 {
            assert_eq!(sampler.sample(&mut logits(), &[]), best);
        }
    }

    #[test]
    fn repetition_penalty_demotes_seen_tokens() {
        let mut sampler = Sampler::new(SamplingParams {
            repetition_penalty: 100.0,
            ..SamplingParams::greedy()
        });
        let mut values = logits();
        let best = argmax(&values);
        assert_ne!(sampler.sample(&mut values, &[best]), best);
    }

    #[test]
    fn presence_and_frequency_penalties_count_generated_tokens() {
        let sampler = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy()
        });
        let mut values = vec![1.0f32; 4];
        sampler.penalize(&mut values, &[2, 2, 3]);
        assert_eq!(values, vec![1.0, 1.0, 1.0 - 0.5 - 0.5, 1.0 - 0.5 - 0.25]);
        let out_of_range = SamplingParams {
            frequency_penalty: 2.5,
            ..SamplingParams::default()
        };
        assert!(out_of_range.validate().is_err());
    }

    #[test]
    fn min_p_filters_unlikely_tokens() {
        let mut values = vec![0.0f32; 10];
        values[3] = 20.0;
        let mut sampler = Sampler::new(SamplingParams {
            min_p: 0.5,
            top_k: 0,
            temperature: 5.0,
            seed: Some(3),
            ..SamplingParams::default()
        });
        for _ in 0..20 {
            assert_eq!(sampler.sample(&mut values.clone(), &[]), 3);
        }
    }
}
