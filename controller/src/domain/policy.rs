//! Versioned escalation policies (issue 20): whether and when a node may
//! send a request to an OpenAI-compatible upstream, and what it scrubs
//! first. Versioned like system prompts: every change makes a new,
//! immutable version (1, 2, 3, …), which assignments and rollouts pin.
//!
//! The content ([`PolicySpec`]) is the fleet contract's type, validated
//! there once for both the controller and the agent. It holds the
//! upstream's credential only as a reference (`env:NAME`, `file:/path`)
//! that the node resolves; the key itself never reaches the controller.

use time::OffsetDateTime;

pub use flotilla_contract::{AssignedPolicy, InvalidPolicy, PolicySpec};

use super::PolicyName;
use super::prompt::VersionedRef;

/// One version of an escalation policy, as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscalationPolicy {
    pub name: PolicyName,
    pub version: u32,
    pub spec: PolicySpec,
    pub created_at: OffsetDateTime,
}

impl EscalationPolicy {
    /// This version as an assignment carries it to nodes.
    pub fn assigned(&self) -> AssignedPolicy {
        AssignedPolicy {
            name: self.name.to_string(),
            version: self.version,
            spec: self.spec.clone(),
        }
    }
}

/// A policy and how many versions it has, for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    pub name: PolicyName,
    pub latest_version: u32,
    pub updated_at: OffsetDateTime,
}

/// An escalation policy as an assignment or rollout names it: `NAME@N`, or
/// `NAME` for the latest version.
pub type PolicyRef = VersionedRef<PolicyName>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refs_parse() {
        let pinned: PolicyRef = "hybrid-eu@2".parse().expect("valid ref");
        assert_eq!(pinned.version, Some(2));
        assert_eq!(pinned.to_string(), "hybrid-eu@2");
        let latest: PolicyRef = "hybrid-eu".parse().expect("valid ref");
        assert_eq!(latest.version, None);
        let zero = "hybrid@0".parse::<PolicyRef>().expect_err("no version 0");
        assert!(zero.contains("invalid policy version"), "{zero}");
        assert!("hybrid@x".parse::<PolicyRef>().is_err());
        assert!("Hybrid@1".parse::<PolicyRef>().is_err());
    }
}
