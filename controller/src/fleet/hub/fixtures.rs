//! Builders of the hub's inputs for its parts' tests.

use time::OffsetDateTime;

use super::PushedState;
use crate::domain::{
    AssignmentPhase, DesiredAssignment, DesiredState, Digest, HealthSample, InferenceHealth,
    NodeStatus, ObservedState, PromptPolicy,
};

/// A state without an assignment.
pub(super) fn state(generation: u64, status: NodeStatus) -> PushedState {
    PushedState {
        status,
        desired: DesiredState {
            generation,
            assignment: None,
        },
    }
}

/// A sample at `now` with `cpu` percent and 3 of 20 requests queued.
pub(super) fn sample(now: OffsetDateTime, cpu: f32) -> HealthSample {
    HealthSample {
        taken_at: now,
        cpu_utilisation_percent: cpu,
        memory_used_bytes: 1,
        memory_total_bytes: 2,
        disk_available_bytes: None,
        cpu_temperature_celsius: None,
        gpus: Vec::new(),
        inference: Some(InferenceHealth {
            queue_depth: 3,
            queue_capacity: 20,
            completed_total: 0,
            rejected_total: 0,
            failed_total: 0,
            cancelled_total: 0,
            generated_tokens_total: 0,
            tokens_per_second: 0.0,
            time_to_first_token_p50_ms: None,
            time_to_first_token_max_ms: None,
            serving_digest: None,
            serving_device: None,
            completed_since_activation: 0,
            failed_since_activation: 0,
            queue_depth_peak: 3,
            escalated_total: 0,
            escalated_since_activation: 0,
        }),
        state_write_error: None,
    }
}

/// An active node's state assigning `model` v1 (the artifact that
/// `digest` stands for, [`digest_of`]), alias `chat`.
pub(super) fn assigned(generation: u64, model: &str, digest: &str) -> PushedState {
    PushedState {
        status: NodeStatus::Active,
        desired: DesiredState {
            generation,
            assignment: Some(DesiredAssignment {
                model: model.to_owned(),
                version: "v1".to_owned(),
                quantization: "Q4_1".to_owned(),
                digest: digest_of(digest).to_hex(),
                size_bytes: 1,
                prompt: None,
                prompt_policy: PromptPolicy::default(),
                aliases: vec!["chat".to_owned()],
                escalation_policy: None,
                assignment_generation: 1,
                target: "node=a".to_owned(),
            }),
        },
    }
}

/// The artifact a fixture's short `label` ("aa") stands for: the directory
/// carries real digests.
pub(super) fn digest_of(label: &str) -> Digest {
    Digest::of(label.as_bytes())
}

/// A report about the artifact `digest` stands for in `phase` (serving it
/// when READY).
pub(super) fn observed(digest: &str, phase: AssignmentPhase) -> ObservedState {
    ObservedState {
        generation: 1,
        digest: Some(digest_of(digest).to_hex()),
        phase,
        bytes_done: 0,
        bytes_total: 0,
        reason: None,
        serving_digest: (phase == AssignmentPhase::Ready).then(|| digest_of(digest).to_hex()),
    }
}
