//! Versioned system prompts. Every change makes a new, immutable version
//! (1, 2, 3, …), so a rollout can pin exactly the text it was tested with.

use std::fmt;
use std::str::FromStr;

use time::OffsetDateTime;

use super::{InvalidName, PromptName};
use flotilla_contract::NameKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPrompt {
    pub name: PromptName,
    pub version: u32,
    pub text: String,
    /// A Jinja chat template that replaces the model's own, when set.
    pub chat_template: Option<String>,
    pub created_at: OffsetDateTime,
}

/// A prompt and how many versions it has, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptSummary {
    pub name: PromptName,
    pub latest_version: u32,
    pub updated_at: OffsetDateTime,
}

/// `NAME@VERSION` (or `NAME` for the latest) of a versioned registry
/// object, as the CLI, assignments and rollouts write it: a system prompt
/// here, an escalation policy in `policy.rs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionedRef<N> {
    pub name: N,
    pub version: Option<u32>,
}

/// A system prompt as an assignment or rollout names it.
pub type PromptRef = VersionedRef<PromptName>;

impl<N: FromStr<Err = InvalidName> + NameKind> FromStr for VersionedRef<N> {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let (name, version) = match input.split_once('@') {
            Some((name, version)) => {
                let version = version
                    .parse::<u32>()
                    .ok()
                    .filter(|v| *v > 0)
                    .ok_or_else(|| {
                        format!(
                            "invalid {} version in {input:?}: expected NAME@N with N ≥ 1",
                            N::KIND
                        )
                    })?;
                (name, Some(version))
            }
            None => (input, None),
        };
        let name = name.parse::<N>().map_err(|e| e.to_string())?;
        Ok(Self { name, version })
    }
}

impl<N: fmt::Display> fmt::Display for VersionedRef<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(version) => write!(f, "{}@{version}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_refs_parse() {
        let pinned: PromptRef = "support@3".parse().expect("valid ref");
        assert_eq!(pinned.version, Some(3));
        assert_eq!(pinned.to_string(), "support@3");
        let latest: PromptRef = "support".parse().expect("valid ref");
        assert_eq!(latest.version, None);
        assert!("support@0".parse::<PromptRef>().is_err());
        assert!("support@x".parse::<PromptRef>().is_err());
        assert!("Bad@1".parse::<PromptRef>().is_err());
    }
}
