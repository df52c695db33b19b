//! Models, their versions and the artifacts (files) of each version.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use super::{Digest, ModelName, Quantization};

/// A named model, e.g. `smollm2-135m-instruct`. Versions hang off it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Model {
    pub name: ModelName,
    pub description: String,
    pub created_at: OffsetDateTime,
}

/// Lifecycle of a version. Artifacts can be added only while a version is a
/// draft; once published the version is immutable, and only its state moves
/// on (deprecated, yanked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VersionState {
    Draft,
    Published,
    /// Still resolvable, but operators are told to move on.
    Deprecated,
    /// Never resolvable again (a broken or withdrawn release).
    Yanked,
}

impl VersionState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Published => "published",
            Self::Deprecated => "deprecated",
            Self::Yanked => "yanked",
        }
    }

    /// Whether the lifecycle allows moving from `self` to `next`.
    pub fn can_become(self, next: Self) -> bool {
        use VersionState::*;
        matches!(
            (self, next),
            (Draft, Published)
                | (Published, Deprecated)
                | (Deprecated, Published)
                | (Published | Deprecated, Yanked)
        )
    }

    /// Whether a semver requirement may resolve to a version in this state.
    pub fn is_resolvable(self) -> bool {
        matches!(self, Self::Published | Self::Deprecated)
    }
}

impl fmt::Display for VersionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid version state {0:?}: expected draft, published, deprecated or yanked")]
pub struct InvalidVersionState(String);

impl FromStr for VersionState {
    type Err = InvalidVersionState;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "draft" => Ok(Self::Draft),
            "published" => Ok(Self::Published),
            "deprecated" => Ok(Self::Deprecated),
            "yanked" => Ok(Self::Yanked),
            other => Err(InvalidVersionState(other.chars().take(40).collect())),
        }
    }
}

/// One semver version of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelVersion {
    pub model: ModelName,
    pub version: semver::Version,
    pub state: VersionState,
    pub notes: String,
    pub created_at: OffsetDateTime,
    pub published_at: Option<OffsetDateTime>,
}

/// File format of an artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArtifactFormat {
    Gguf,
}

impl ArtifactFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gguf => "gguf",
        }
    }
}

impl FromStr for ArtifactFormat {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        match input {
            "gguf" => Ok(Self::Gguf),
            other => Err(format!("unknown artifact format {other:?}")),
        }
    }
}

/// What the registry learnt about an artifact's file while it was uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    pub digest: Digest,
    pub size_bytes: u64,
    pub format: ArtifactFormat,
    pub quantization: Quantization,
    pub architecture: String,
    pub parameter_count: u64,
    pub context_length: Option<u64>,
    /// Bytes of memory needed to run it: weights plus a KV cache for the
    /// serving context (the model's, capped at
    /// `registry::SERVING_CONTEXT_TOKENS`), plus working buffers. Drives
    /// hardware-fit decisions.
    pub memory_estimate_bytes: u64,
    pub servability: Servability,
}

/// Whether the engine of this release can serve an artifact, judged from its header at
/// upload (`flotilla_engine::Engine::check`): resolution never picks an unservable
/// artifact, so a rollout of a file no node can load is refused when it is planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Servability {
    /// Uploaded before the controller checked; resolution treats it as servable, as it
    /// always did.
    Unchecked,
    Servable {
        engine: String,
    },
    Unservable {
        engine: String,
        reason: String,
    },
}

impl Servability {
    /// The verdict of the engine linked into this controller.
    pub fn judged(verdict: Result<(), String>) -> Servability {
        let engine = format!("flotilla-engine {}", env!("CARGO_PKG_VERSION"));
        match verdict {
            Ok(()) => Servability::Servable { engine },
            Err(reason) => Servability::Unservable { engine, reason },
        }
    }

    /// The engine that judged it, once checked.
    pub fn checked_by(&self) -> Option<&str> {
        match self {
            Servability::Servable { engine } | Servability::Unservable { engine, .. } => {
                Some(engine)
            }
            Servability::Unchecked => None,
        }
    }

    /// Why no node can serve it, when the check said so.
    pub fn unservable_reason(&self) -> Option<&str> {
        match self {
            Servability::Unservable { reason, .. } => Some(reason),
            Servability::Unchecked | Servability::Servable { .. } => None,
        }
    }
}

/// One file of a model version, addressed by its blake3 digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub model: ModelName,
    pub version: semver::Version,
    pub digest: Digest,
    pub size_bytes: u64,
    pub format: ArtifactFormat,
    pub quantization: Quantization,
    pub architecture: String,
    pub parameter_count: u64,
    pub context_length: Option<u64>,
    pub memory_estimate_bytes: u64,
    pub servability: Servability,
    pub created_at: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_only_moves_forward() {
        use VersionState::*;
        assert!(Draft.can_become(Published));
        assert!(Published.can_become(Yanked));
        assert!(Deprecated.can_become(Published));
        assert!(!Yanked.can_become(Published));
        assert!(!Published.can_become(Draft));
        assert!(!Draft.can_become(Yanked));
        for state in [Draft, Published, Deprecated, Yanked] {
            assert_eq!(state.as_str().parse::<VersionState>(), Ok(state));
        }
    }
}
