//! Resolution: "model X, requirement ^1.2, quantization policy [Q8_0, Q4_1]"
//! → the exact version and artifact. A pure function over what the store
//! returns, so the rollout engine and the REST API share one definition and
//! it is tested without a database.

use super::{Artifact, ModelVersion, QuantizationPolicy};

/// The outcome of a successful resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub version: ModelVersion,
    pub artifact: Artifact,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("no published version of model {model} matches {requirement}")]
    NoMatchingVersion { model: String, requirement: String },
    #[error(
        "version {version} of model {model} has no artifact matching quantization policy {policy} (it has: {available})"
    )]
    NoMatchingArtifact {
        model: String,
        version: String,
        policy: String,
        available: String,
    },
    #[error(
        "the {quantization} artifact of model {model} {version} cannot be served by this release's engine: {reason}"
    )]
    Unservable {
        model: String,
        version: String,
        quantization: String,
        reason: String,
    },
    #[error(
        "no artifact of model {model} {version} fits in {budget_bytes} bytes (smallest needs {smallest_bytes} bytes)"
    )]
    NothingFits {
        model: String,
        version: String,
        budget_bytes: u64,
        smallest_bytes: u64,
    },
}

/// Picks the highest version that matches `requirement` and is resolvable
/// (published, or deprecated), then the artifact the policy prefers.
///
/// With [`QuantizationPolicy::Auto`] the highest precision whose memory
/// estimate fits `memory_budget_bytes` wins (the highest precision when no
/// budget is given). Versions without an artifact are skipped, so a
/// half-uploaded draft can never be picked.
pub fn resolve(
    model: &str,
    candidates: &[(ModelVersion, Vec<Artifact>)],
    requirement: &semver::VersionReq,
    policy: &QuantizationPolicy,
    memory_budget_bytes: Option<u64>,
) -> Result<Resolution, ResolveError> {
    let best = candidates
        .iter()
        .filter(|(version, artifacts)| {
            version.state.is_resolvable()
                && !artifacts.is_empty()
                && requirement.matches(&version.version)
        })
        .max_by(|(a, _), (b, _)| a.version.cmp(&b.version))
        .ok_or_else(|| ResolveError::NoMatchingVersion {
            model: model.to_owned(),
            requirement: requirement.to_string(),
        })?;
    let (version, artifacts) = best;
    let artifact = pick_artifact(model, version, artifacts, policy, memory_budget_bytes)?;
    Ok(Resolution {
        version: version.clone(),
        artifact: artifact.clone(),
    })
}

fn pick_artifact<'a>(
    model: &str,
    version: &ModelVersion,
    artifacts: &'a [Artifact],
    policy: &QuantizationPolicy,
    memory_budget_bytes: Option<u64>,
) -> Result<&'a Artifact, ResolveError> {
    let fits = |artifact: &&Artifact| {
        memory_budget_bytes.is_none_or(|budget| artifact.memory_estimate_bytes <= budget)
    };
    let servable = |artifact: &&Artifact| artifact.servability.unservable_reason().is_none();
    let picked = choose(artifacts.iter().filter(fits).filter(servable), policy);
    // What the policy would have picked but for the engine's verdict is the
    // error worth reporting: the operator's policy was right, the file is not.
    if picked.is_none()
        && let Some(refused) = choose(artifacts.iter().filter(fits), policy)
        && let Some(reason) = refused.servability.unservable_reason()
    {
        return Err(ResolveError::Unservable {
            model: model.to_owned(),
            version: version.version.to_string(),
            quantization: refused.quantization.to_string(),
            reason: reason.to_owned(),
        });
    }
    if let Some(artifact) = picked {
        return Ok(artifact);
    }
    let smallest = artifacts
        .iter()
        .filter(servable)
        .map(|a| a.memory_estimate_bytes)
        .min();
    match (memory_budget_bytes, smallest) {
        (Some(budget), Some(smallest)) if smallest > budget => Err(ResolveError::NothingFits {
            model: model.to_owned(),
            version: version.version.to_string(),
            budget_bytes: budget,
            smallest_bytes: smallest,
        }),
        _ => {
            let available: Vec<&str> = artifacts.iter().map(|a| a.quantization.name()).collect();
            Err(ResolveError::NoMatchingArtifact {
                model: model.to_owned(),
                version: version.version.to_string(),
                policy: policy.to_string(),
                available: available.join(", "),
            })
        }
    }
}

/// The artifact `policy` prefers among `candidates`.
fn choose<'a>(
    candidates: impl Iterator<Item = &'a Artifact>,
    policy: &QuantizationPolicy,
) -> Option<&'a Artifact> {
    let candidates: Vec<&Artifact> = candidates.collect();
    match policy {
        QuantizationPolicy::Preferred(order) => order.iter().find_map(|wanted| {
            candidates
                .iter()
                .find(|artifact| &artifact.quantization == wanted)
                .copied()
        }),
        QuantizationPolicy::Auto => candidates
            .into_iter()
            .min_by(|a, b| a.quantization.cmp_by_precision_desc(&b.quantization)),
    }
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;
    use crate::domain::{
        ArtifactFormat, Digest, ModelName, Quantization, Servability, VersionState,
    };

    fn version(v: &str, state: VersionState) -> ModelVersion {
        ModelVersion {
            model: "m".parse().expect("valid name"),
            version: v.parse().expect("valid semver"),
            state,
            notes: String::new(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            published_at: None,
        }
    }

    fn artifact(v: &str, quant: Quantization, memory: u64) -> Artifact {
        let model: ModelName = "m".parse().expect("valid name");
        Artifact {
            model,
            version: v.parse().expect("valid semver"),
            digest: Digest::from(blake3::hash(format!("{v}{quant}").as_bytes())),
            size_bytes: memory / 2,
            format: ArtifactFormat::Gguf,
            quantization: quant,
            architecture: "llama".into(),
            parameter_count: 135_000_000,
            context_length: Some(2048),
            memory_estimate_bytes: memory,
            servability: Servability::Unchecked,
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn unservable(mut artifact: Artifact) -> Artifact {
        artifact.servability = Servability::judged(Err("tensor x has type IQ4_NL".into()));
        artifact
    }

    fn catalogue() -> Vec<(ModelVersion, Vec<Artifact>)> {
        vec![
            (
                version("1.2.0", VersionState::Published),
                vec![
                    artifact("1.2.0", Quantization::Q4_1, 100),
                    artifact("1.2.0", Quantization::Q8_0, 200),
                ],
            ),
            (
                version("1.3.0", VersionState::Published),
                vec![
                    artifact("1.3.0", Quantization::Q4_1, 100),
                    artifact("1.3.0", Quantization::Q8_0, 200),
                    artifact("1.3.0", Quantization::F16, 400),
                ],
            ),
            (
                version("1.4.0", VersionState::Yanked),
                vec![artifact("1.4.0", Quantization::Q8_0, 200)],
            ),
            (
                version("1.5.0", VersionState::Draft),
                vec![artifact("1.5.0", Quantization::Q8_0, 200)],
            ),
            (
                version("2.0.0", VersionState::Published),
                vec![artifact("2.0.0", Quantization::Q8_0, 200)],
            ),
        ]
    }

    fn req(s: &str) -> semver::VersionReq {
        s.parse().expect("valid requirement")
    }

    #[test]
    fn picks_highest_matching_published_version_and_preferred_quant() {
        let policy = "Q8_0,Q4_1".parse().expect("valid policy");
        let resolved = resolve("m", &catalogue(), &req("^1.2"), &policy, None).expect("resolves");
        assert_eq!(resolved.version.version.to_string(), "1.3.0");
        assert_eq!(resolved.artifact.quantization, Quantization::Q8_0);
    }

    #[test]
    fn yanked_and_draft_versions_are_never_resolved() {
        let policy = QuantizationPolicy::Auto;
        let err = resolve("m", &catalogue(), &req("=1.4.0"), &policy, None).expect_err("yanked");
        assert!(matches!(err, ResolveError::NoMatchingVersion { .. }));
        let err = resolve("m", &catalogue(), &req("=1.5.0"), &policy, None).expect_err("draft");
        assert!(matches!(err, ResolveError::NoMatchingVersion { .. }));
    }

    #[test]
    fn an_artifact_the_engine_cannot_serve_is_never_picked() {
        let mut catalogue = catalogue();
        let (_, artifacts) = &mut catalogue[1];
        artifacts[2] = unservable(artifacts[2].clone());
        let auto = QuantizationPolicy::Auto;
        let next_best = resolve("m", &catalogue, &req("^1"), &auto, None).expect("resolves");
        assert_eq!(next_best.artifact.quantization, Quantization::Q8_0);

        let only_f16 = "F16".parse().expect("valid policy");
        let refused = resolve("m", &catalogue, &req("^1"), &only_f16, None)
            .expect_err("the one F16 artifact is unservable");
        assert_eq!(
            refused.to_string(),
            "the F16 artifact of model m 1.3.0 cannot be served by this release's engine: \
             tensor x has type IQ4_NL"
        );
    }

    #[test]
    fn auto_takes_highest_precision_that_fits() {
        let auto = QuantizationPolicy::Auto;
        let big = resolve("m", &catalogue(), &req("^1"), &auto, None).expect("resolves");
        assert_eq!(big.artifact.quantization, Quantization::F16);
        let mid = resolve("m", &catalogue(), &req("^1"), &auto, Some(250)).expect("resolves");
        assert_eq!(mid.artifact.quantization, Quantization::Q8_0);
        let small = resolve("m", &catalogue(), &req("^1"), &auto, Some(150)).expect("resolves");
        assert_eq!(small.artifact.quantization, Quantization::Q4_1);
        let none = resolve("m", &catalogue(), &req("^1"), &auto, Some(50)).expect_err("too small");
        assert!(matches!(
            none,
            ResolveError::NothingFits {
                smallest_bytes: 100,
                ..
            }
        ));
    }

    #[test]
    fn explicit_policy_without_match_names_what_exists() {
        let policy = "Q2_K".parse().expect("valid policy");
        let err = resolve("m", &catalogue(), &req("^2"), &policy, None).expect_err("no Q2_K");
        assert_eq!(
            err.to_string(),
            "version 2.0.0 of model m has no artifact matching quantization policy Q2_K (it has: Q8_0)"
        );
    }
}
