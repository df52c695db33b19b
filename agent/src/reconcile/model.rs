//! The reconciler's domain types: what the controller wants this node to
//! do ([`DesiredState`]) and what the node reports it has done
//! ([`ObservedState`]). No wire types here; `crate::sync::wire` converts.

use std::time::Duration;

use flotilla_contract::AssignedPolicy;

use crate::cache::Digest;

/// How often to heartbeat until the controller says otherwise.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(5000);

/// The node's complete desired state, as the controller last sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// Strictly increases with every change for this node.
    pub generation: u64,
    pub status: NodeStatus,
    /// `None`: serve nothing.
    pub assignment: Option<Assignment>,
    pub heartbeat_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    Pending,
    Active,
    Cordoned,
}

/// One model artifact to fetch, verify and serve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub model: String,
    pub version: String,
    pub quantization: String,
    pub digest: Digest,
    pub size_bytes: u64,
    /// The controller's REST root that serves the blob.
    pub blob_base_url: String,
    pub system_prompt: Option<SystemPrompt>,
    /// What a chat request's own system message does to `system_prompt`.
    pub system_prompt_policy: SystemPromptPolicy,
    /// Other names clients may ask for the model by.
    pub aliases: Vec<String>,
    /// The escalation policy in force with this assignment (`None`: never
    /// call out); published by the reconciler (`policy.rs`).
    pub escalation_policy: Option<AssignedPolicy>,
    /// The generation of the operator's assignment this came from.
    pub assignment_generation: u64,
}

impl Assignment {
    /// Whether `other` serves the same thing: everything but the escalation
    /// policy, which changes without reloading the model.
    pub fn serves_the_same_as(&self, other: &Assignment) -> bool {
        Assignment {
            escalation_policy: None,
            ..self.clone()
        } == Assignment {
            escalation_policy: None,
            ..other.clone()
        }
    }
}

/// How the assigned system prompt combines with a chat request's own system
/// message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SystemPromptPolicy {
    /// The assigned prompt first, then the request's system message.
    #[default]
    Prepend,
    /// The request's system message replaces the assigned prompt.
    Replace,
    /// Requests that carry a system message are refused.
    Forbid,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemPrompt {
    pub name: String,
    pub version: u32,
    pub text: String,
    /// `None`: the model's own chat template.
    pub chat_template: Option<String>,
}

/// Where the node stands on its assignment. Byte counts live with the phase
/// they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Nothing assigned and nothing served.
    Idle,
    /// Assigned; the download has not started yet.
    Pending,
    Downloading {
        bytes_done: u64,
        bytes_total: u64,
    },
    /// All bytes are in; the digest is being checked.
    Verifying,
    /// Verified; being loaded into the inference engine.
    Loading,
    Ready,
    Failed {
        reason: String,
    },
}

impl Phase {
    /// Whether this phase ends a reconcile attempt (no further transition
    /// happens until the desired state changes or a retry is due).
    pub fn is_settled(&self) -> bool {
        matches!(self, Phase::Idle | Phase::Ready | Phase::Failed { .. })
    }
}

/// What the node has done about one desired state; complete, the latest
/// replaces the previous one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedState {
    /// The desired generation this reports on (0: none received yet).
    pub generation: u64,
    /// The assigned artifact; `None` when nothing is assigned.
    pub digest: Option<Digest>,
    pub phase: Phase,
    /// What the node serves right now, possibly still the previous artifact
    /// while a new one downloads.
    pub serving_digest: Option<Digest>,
}

impl Default for ObservedState {
    fn default() -> Self {
        Self {
            generation: 0,
            digest: None,
            phase: Phase::Idle,
            serving_digest: None,
        }
    }
}
