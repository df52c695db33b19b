//! Quantization of an artifact's weights, and the policy a rollout or a
//! resolution uses to pick one artifact among a version's several.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// How an artifact's weights are stored. The names are llama.cpp's file-type
/// names, which operators already know; anything else is kept verbatim (in
/// upper case) as [`Quantization::Other`] so a new GGUF type never blocks an
/// upload.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Quantization {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q6K,
    Q5_1,
    Q5KM,
    Q5_0,
    Q5KS,
    Q4_1,
    Q4KM,
    Q4KS,
    Q4_0,
    Q3KL,
    Q3KM,
    Q3KS,
    Q2K,
    Other(String),
}

const KNOWN: &[(Quantization, &str, u32)] = &[
    // (variant, canonical name, approximate bits per weight × 1000)
    (Quantization::F32, "F32", 32_000),
    (Quantization::F16, "F16", 16_000),
    (Quantization::Bf16, "BF16", 16_000),
    (Quantization::Q8_0, "Q8_0", 8_500),
    (Quantization::Q6K, "Q6_K", 6_560),
    (Quantization::Q5_1, "Q5_1", 6_000),
    (Quantization::Q5KM, "Q5_K_M", 5_690),
    (Quantization::Q5_0, "Q5_0", 5_500),
    (Quantization::Q5KS, "Q5_K_S", 5_540),
    (Quantization::Q4_1, "Q4_1", 5_000),
    (Quantization::Q4KM, "Q4_K_M", 4_890),
    (Quantization::Q4KS, "Q4_K_S", 4_580),
    (Quantization::Q4_0, "Q4_0", 4_500),
    (Quantization::Q3KL, "Q3_K_L", 4_270),
    (Quantization::Q3KM, "Q3_K_M", 3_910),
    (Quantization::Q3KS, "Q3_K_S", 3_500),
    (Quantization::Q2K, "Q2_K", 2_630),
];

impl Quantization {
    pub fn name(&self) -> &str {
        match self {
            Self::Other(name) => name,
            known => KNOWN
                .iter()
                .find(|(variant, _, _)| variant == known)
                .map_or("UNKNOWN", |(_, name, _)| name),
        }
    }

    /// Approximate bits per weight × 1000; unknown types rank lowest, so that
    /// `auto` never prefers a format it cannot reason about.
    pub fn millibits_per_weight(&self) -> u32 {
        KNOWN
            .iter()
            .find(|(variant, _, _)| variant == self)
            .map_or(0, |(_, _, bits)| *bits)
    }

    /// Orders by precision, highest first, with the name as a tie-breaker so
    /// the order is total and stable.
    pub fn cmp_by_precision_desc(&self, other: &Self) -> Ordering {
        other
            .millibits_per_weight()
            .cmp(&self.millibits_per_weight())
            .then_with(|| self.name().cmp(other.name()))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid quantization {0:?}: expected a name such as Q4_1, Q8_0, F16 or Q4_K_M")]
pub struct InvalidQuantization(String);

impl FromStr for Quantization {
    type Err = InvalidQuantization;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let upper = input.trim().to_ascii_uppercase();
        let plausible = !upper.is_empty()
            && upper.len() <= 32
            && upper
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !plausible {
            return Err(InvalidQuantization(input.chars().take(40).collect()));
        }
        Ok(KNOWN
            .iter()
            .find(|(_, name, _)| *name == upper)
            .map_or(Self::Other(upper), |(variant, _, _)| variant.clone()))
    }
}

impl fmt::Display for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Debug for Quantization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which artifact of a version to pick.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum QuantizationPolicy {
    /// The highest precision that fits the memory budget (if one is given).
    #[default]
    Auto,
    /// The first of these that the version has, in this order.
    Preferred(Vec<Quantization>),
}

impl FromStr for QuantizationPolicy {
    type Err = InvalidQuantization;

    /// Parses `auto` or a comma-separated preference list such as `Q8_0,Q4_1`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input.trim().eq_ignore_ascii_case("auto") || input.trim().is_empty() {
            return Ok(Self::Auto);
        }
        input
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map(Self::Preferred)
    }
}

impl fmt::Display for QuantizationPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Preferred(list) => {
                let names: Vec<&str> = list.iter().map(Quantization::name).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (variant, name, _) in KNOWN {
            assert_eq!(variant.name(), *name);
            assert_eq!(name.parse::<Quantization>().as_ref(), Ok(variant));
        }
        assert_eq!("q4_1".parse::<Quantization>(), Ok(Quantization::Q4_1));
        assert_eq!(
            "IQ2_XXS".parse::<Quantization>(),
            Ok(Quantization::Other("IQ2_XXS".into()))
        );
        assert!("Q4-1".parse::<Quantization>().is_err());
        assert!("".parse::<Quantization>().is_err());
    }

    #[test]
    fn precision_order_puts_q8_before_q4() {
        let mut list = vec![Quantization::Q4_1, Quantization::F16, Quantization::Q8_0];
        list.sort_by(Quantization::cmp_by_precision_desc);
        assert_eq!(
            list,
            vec![Quantization::F16, Quantization::Q8_0, Quantization::Q4_1]
        );
    }

    #[test]
    fn policy_parses_auto_and_lists() {
        assert_eq!(
            "auto".parse::<QuantizationPolicy>(),
            Ok(QuantizationPolicy::Auto)
        );
        assert_eq!(
            "Q8_0,q4_1".parse::<QuantizationPolicy>(),
            Ok(QuantizationPolicy::Preferred(vec![
                Quantization::Q8_0,
                Quantization::Q4_1
            ]))
        );
        assert!("Q8_0,,Q4_1".parse::<QuantizationPolicy>().is_err());
    }
}
