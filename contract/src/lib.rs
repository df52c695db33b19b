//! The fleet contract: the records that both the agent and the controller
//! hold, defined once in domain types, with their protobuf conversions
//! beside them (linkerd2-proxy's `server-policy` crate is the model). The
//! agent builds them and encodes them for the Sync stream; the controller
//! decodes them (here, once, with the checks an untrusted agent's values
//! need), keeps them in its store as JSON, and the REST API shows them as
//! they are.
//!
//! Their serde shape is what the controller's store holds (the `health`
//! columns, the replicas' `replica_routes` rows, and for the escalation
//! policy `escalation_policies.spec` and the agent's `state.json`):
//! renaming or retyping a field needs a migration, or a reader for the old
//! shape.

mod directory;
mod health;
mod inventory;
mod names;
mod policy;

pub use directory::{DirectoryEntry, InvalidDirectoryEntry};
/// The scrubber's kinds of personal data, which a policy chooses from.
pub use flotilla_scrub::Kind as ScrubKind;
pub use health::{GpuHealth, HealthPoint, HealthSample, InferenceHealth, InferenceMinute};
pub use inventory::{NodeAdapter, NodeGpu, NodeInventory};
pub use names::{InvalidName, ModelName, NameKind, NodeName, PolicyName, PromptName, RolloutName};
pub use policy::{
    AssignedPolicy, ESCALATE_HEADER, Egress, Feature, InvalidPolicy, MAX_TRIGGER_MODEL_NAMES,
    PolicyDocument, PolicySpec, SecretRef, Triggers, TriggersDocument, Upstream, UpstreamDocument,
};
