//! The fleet contract: the records that both the agent and the controller
//! hold, defined once in domain types, with their protobuf conversions
//! beside them (linkerd2-proxy's `server-policy` crate is the model). The
//! agent builds them and encodes them for the Sync stream; the controller
//! decodes them (here, once, with the checks an untrusted agent's values
//! need), keeps them in its store as JSON, and the REST API shows them as
//! they are.
//!
//! Their serde shape is what the controller's store holds (the `health`
//! columns, the replicas' `replica_routes` rows): renaming or retyping a
//! field needs a migration, or a reader for the old shape.

mod directory;
mod health;
mod inventory;
mod names;

pub use directory::{DirectoryEntry, InvalidDirectoryEntry};
pub use health::{GpuHealth, HealthPoint, HealthSample, InferenceHealth, InferenceMinute};
pub use inventory::{NodeGpu, NodeInventory};
pub use names::{InvalidName, ModelName, NodeName, PromptName, RolloutName};
