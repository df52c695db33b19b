//! Conversions between the Sync stream's wire types and the agent's domain
//! types. Validation happens here, once: a desired state that does not
//! convert is refused (the sync loop logs it and keeps the previous one).

use std::time::Duration;

use flotilla_contract::AssignedPolicy;
use flotilla_proto::fleet::v1 as pb;

use crate::cache::{CachedBlob, Digest};
use crate::reconcile::{
    Assignment, DesiredState, NodeStatus, ObservedState, Phase, SystemPrompt, SystemPromptPolicy,
};

/// Heartbeats are never sent more often than this, whatever the controller says.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0} is missing")]
    Missing(&'static str),
    #[error("{field} is invalid: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl TryFrom<pb::DesiredState> for DesiredState {
    type Error = ProtocolError;

    fn try_from(wire: pb::DesiredState) -> Result<Self, ProtocolError> {
        let status = match wire.status() {
            pb::NodeStatus::Pending => NodeStatus::Pending,
            pb::NodeStatus::Active => NodeStatus::Active,
            pb::NodeStatus::Cordoned => NodeStatus::Cordoned,
            pb::NodeStatus::Unspecified => return Err(ProtocolError::Missing("desired.status")),
        };
        let heartbeat_interval = match wire.heartbeat_interval_ms {
            0 => crate::reconcile::DEFAULT_HEARTBEAT_INTERVAL,
            millis => Duration::from_millis(u64::from(millis)).max(MIN_HEARTBEAT_INTERVAL),
        };
        Ok(DesiredState {
            generation: wire.generation,
            status,
            assignment: wire.assignment.map(Assignment::try_from).transpose()?,
            heartbeat_interval,
        })
    }
}

/// Aliases kept per assignment; the controller allows fewer.
const MAX_ALIASES: usize = 32;

impl TryFrom<pb::Assignment> for Assignment {
    type Error = ProtocolError;

    fn try_from(wire: pb::Assignment) -> Result<Self, ProtocolError> {
        let digest = wire
            .digest
            .parse::<Digest>()
            .map_err(|error| ProtocolError::Invalid {
                field: "assignment.digest",
                reason: error.to_string(),
            })?;
        if wire.blob_base_url.is_empty() {
            return Err(ProtocolError::Missing("assignment.blob_base_url"));
        }
        // An unknown policy (from a newer controller) fails closed rather
        // than silently applying another one.
        let system_prompt_policy = match pb::SystemPromptPolicy::try_from(wire.system_prompt_policy)
        {
            Ok(pb::SystemPromptPolicy::Unspecified | pb::SystemPromptPolicy::Prepend) => {
                SystemPromptPolicy::Prepend
            }
            Ok(pb::SystemPromptPolicy::Replace) => SystemPromptPolicy::Replace,
            Ok(pb::SystemPromptPolicy::Forbid) => SystemPromptPolicy::Forbid,
            Err(_) => {
                return Err(ProtocolError::Invalid {
                    field: "assignment.system_prompt_policy",
                    reason: format!("unknown policy {}", wire.system_prompt_policy),
                });
            }
        };
        Ok(Assignment {
            model: wire.model,
            version: wire.version,
            quantization: wire.quantization,
            digest,
            size_bytes: wire.size_bytes,
            blob_base_url: wire.blob_base_url,
            system_prompt: wire.system_prompt.map(|prompt| SystemPrompt {
                name: prompt.name,
                version: prompt.version,
                text: prompt.text,
                chat_template: Some(prompt.chat_template).filter(|text| !text.is_empty()),
            }),
            system_prompt_policy,
            aliases: wire
                .aliases
                .into_iter()
                .filter(|alias| !alias.is_empty())
                .take(MAX_ALIASES)
                .collect(),
            // A policy this agent cannot accept fails the desired state
            // closed, as the controller's own check would have.
            escalation_policy: wire
                .escalation_policy
                .map(AssignedPolicy::try_from)
                .transpose()
                .map_err(|error| ProtocolError::Invalid {
                    field: "assignment.escalation_policy",
                    reason: error.to_string(),
                })?,
            assignment_generation: wire.assignment_generation,
        })
    }
}

impl From<&ObservedState> for pb::ObservedState {
    fn from(observed: &ObservedState) -> Self {
        let (phase, bytes_done, bytes_total, reason) = match &observed.phase {
            Phase::Idle => (pb::AssignmentPhase::Idle, 0, 0, String::new()),
            Phase::Pending => (pb::AssignmentPhase::Pending, 0, 0, String::new()),
            Phase::Downloading {
                bytes_done,
                bytes_total,
            } => (
                pb::AssignmentPhase::Downloading,
                *bytes_done,
                *bytes_total,
                String::new(),
            ),
            Phase::Verifying => (pb::AssignmentPhase::Verifying, 0, 0, String::new()),
            Phase::Loading => (pb::AssignmentPhase::Loading, 0, 0, String::new()),
            Phase::Ready => (pb::AssignmentPhase::Ready, 0, 0, String::new()),
            Phase::Failed { reason } => (pb::AssignmentPhase::Failed, 0, 0, reason.clone()),
        };
        pb::ObservedState {
            generation: observed.generation,
            digest: observed
                .digest
                .map(|digest| digest.to_hex())
                .unwrap_or_default(),
            phase: phase.into(),
            bytes_done,
            bytes_total,
            reason,
            serving_digest: observed
                .serving_digest
                .map(|digest| digest.to_hex())
                .unwrap_or_default(),
        }
    }
}

impl From<&CachedBlob> for pb::CachedBlob {
    fn from(blob: &CachedBlob) -> Self {
        pb::CachedBlob {
            digest: blob.digest.to_hex(),
            size_bytes: blob.size_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire_desired() -> pb::DesiredState {
        pb::DesiredState {
            generation: 4,
            status: pb::NodeStatus::Active.into(),
            assignment: Some(pb::Assignment {
                model: "tiny".to_owned(),
                version: "1.0.0".to_owned(),
                quantization: "q4_1".to_owned(),
                digest: Digest::of(b"tiny").to_hex(),
                size_bytes: 4,
                blob_base_url: "http://127.0.0.1:8080".to_owned(),
                system_prompt: None,
                assignment_generation: 2,
                system_prompt_policy: pb::SystemPromptPolicy::Unspecified.into(),
                aliases: vec!["chat".to_owned(), String::new()],
                escalation_policy: None,
            }),
            heartbeat_interval_ms: 0,
        }
    }

    #[test]
    fn desired_state_converts_and_defaults_the_heartbeat() {
        let desired = DesiredState::try_from(wire_desired()).expect("valid");
        assert_eq!(desired.generation, 4);
        assert_eq!(desired.heartbeat_interval, Duration::from_millis(5000));
        let assignment = desired.assignment.expect("assigned");
        assert_eq!(assignment.digest, Digest::of(b"tiny"));
        assert_eq!(assignment.assignment_generation, 2);
        assert_eq!(assignment.aliases, ["chat"], "empty aliases are dropped");
    }

    #[test]
    fn invalid_desired_states_are_refused() {
        let mut bad_digest = wire_desired();
        if let Some(assignment) = bad_digest.assignment.as_mut() {
            assignment.digest = "not-a-digest".to_owned();
        }
        assert!(matches!(
            DesiredState::try_from(bad_digest),
            Err(ProtocolError::Invalid {
                field: "assignment.digest",
                ..
            })
        ));
        let mut no_status = wire_desired();
        no_status.status = pb::NodeStatus::Unspecified.into();
        assert_eq!(
            DesiredState::try_from(no_status),
            Err(ProtocolError::Missing("desired.status"))
        );
    }

    fn wire_policy() -> pb::EscalationPolicy {
        pb::EscalationPolicy {
            name: "hybrid".to_owned(),
            version: 2,
            egress: "allowed".to_owned(),
            upstream: Some(pb::Upstream {
                base_url: "https://llm.example.com/v1".to_owned(),
                model: "big".to_owned(),
                credential: "file:/etc/flotilla/upstream.key".to_owned(),
            }),
            triggers: Some(pb::EscalationTriggers {
                model_names: vec!["auto".to_owned()],
                ..pb::EscalationTriggers::default()
            }),
            scrub: None,
        }
    }

    #[test]
    fn an_assignments_policy_arrives_checked() {
        let mut with_policy = wire_desired();
        if let Some(assignment) = with_policy.assignment.as_mut() {
            assignment.escalation_policy = Some(wire_policy());
        }
        let desired = DesiredState::try_from(with_policy).expect("valid");
        let policy = desired
            .assignment
            .and_then(|assignment| assignment.escalation_policy)
            .expect("the policy arrived");
        assert_eq!(policy.to_string(), "hybrid@2");
        assert_eq!(
            policy
                .spec
                .upstream()
                .map(|upstream| upstream.credential.to_string()),
            Some("file:/etc/flotilla/upstream.key".to_owned())
        );
        assert_eq!(
            policy.spec.scrub.len(),
            flotilla_contract::ScrubKind::PATTERNS.len(),
            "no scrub settings on the wire reads as scrubbing every pattern kind"
        );

        // A literal key where the reference belongs fails the state closed.
        let mut with_key = wire_desired();
        if let Some(assignment) = with_key.assignment.as_mut() {
            let mut policy = wire_policy();
            if let Some(upstream) = policy.upstream.as_mut() {
                upstream.credential = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789".to_owned();
            }
            assignment.escalation_policy = Some(policy);
        }
        assert!(matches!(
            DesiredState::try_from(with_key),
            Err(ProtocolError::Invalid {
                field: "assignment.escalation_policy",
                ..
            })
        ));
    }

    #[test]
    fn observed_state_goes_out_with_its_phase_data() {
        let observed = ObservedState {
            generation: 3,
            digest: Some(Digest::of(b"a")),
            phase: Phase::Downloading {
                bytes_done: 5,
                bytes_total: 9,
            },
            serving_digest: None,
        };
        let wire = pb::ObservedState::from(&observed);
        assert_eq!(wire.phase(), pb::AssignmentPhase::Downloading);
        assert_eq!((wire.bytes_done, wire.bytes_total), (5, 9));
        assert_eq!(wire.serving_digest, "");
        let failed = ObservedState {
            phase: Phase::Failed {
                reason: "gone".to_owned(),
            },
            ..observed
        };
        assert_eq!(pb::ObservedState::from(&failed).reason, "gone");
    }
}
