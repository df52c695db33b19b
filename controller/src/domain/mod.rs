//! Domain types of the control plane, in plain Rust: no prost, sqlx or HTTP
//! types here. Conversion happens at the edges (`api/`, `grpc/`, `store/`).
//! Every type that carries a name or identifier validates it once, when it is
//! constructed, so the rest of the controller can trust it.

mod assignment;
mod model;
mod node;
mod page;
mod policy;
mod prompt;
mod quantization;
mod resolve;
mod rollout;
mod routing;

pub use assignment::{
    Assignment, AssignmentPhase, AssignmentTarget, DesiredAssignment, DesiredPrompt, DesiredState,
    GpuHealth, HealthPoint, HealthSample, InferenceHealth, InferenceMinute, MAX_ALIASES,
    MinuteAccumulator, NewAssignment, NodeDesired, ObservedState, Placement, PromptPolicy, place,
    source_generation,
};
pub use flotilla_contract::{
    InvalidName, ModelName, NodeName, PolicyName, PromptName, RolloutName,
};
pub use flotilla_digest::{Digest, DigestParseError};
pub use model::{
    Artifact, ArtifactFormat, Model, ModelVersion, NewArtifact, Servability, VersionState,
};
pub use node::{
    BootstrapSecret, BootstrapToken, InvalidLabels, InvalidNodePattern, InvalidNodeStatus, Labels,
    MalformedBootstrapToken, NewNode, Node, NodeChange, NodeGpu, NodeInventory, NodePattern,
    NodeStatus, SecretHash, TokenRejection,
};
pub use page::{Page, PageRequest};
pub use policy::{
    AssignedPolicy, EscalationPolicy, InvalidPolicy, PolicyRef, PolicySpec, PolicySummary,
};
pub use prompt::{PromptRef, PromptSummary, SystemPrompt};
pub use quantization::{InvalidQuantization, Quantization, QuantizationPolicy};
pub use resolve::{Resolution, ResolveError, resolve};
pub use rollout::{
    CommandOutcome, DEFAULT_MIN_REQUESTS_FOR_ERROR_RATE, DEFAULT_SAFETY_MARGIN_PERCENT, Decision,
    Event, Fit, GateThresholds, GateTrip, InvalidRolloutState, InvalidWaves, MAX_BAKE, MAX_WAVES,
    NewEvent, NodeObservation, NodeProgress, Rollout, RolloutCommand, RolloutNode,
    RolloutNodeState, RolloutSpec, RolloutState, ServedRequests, Transition, WaveSize, Waves,
    apply_command, decide, evaluate_gates, fit_node, memory_budget, plan_waves,
};
pub use routing::{
    DirectoryEntry, InvalidPeerUrl, LOAD_RESEND_AFTER, PEERS_PER_OFFERING, POOL_PER_OFFERING,
    Resend, merge_routes, peer_base_url, pool, resend, view_for,
};
