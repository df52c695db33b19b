//! Flotilla's controller: the model registry, fleet inventory, rollouts,
//! authentication, and the REST (axum) and gRPC (tonic) APIs over them.
//!
//! Layout follows the architecture: `domain` holds plain types, `store`
//! persists them, `objects` holds blob bytes, `registry` is the business
//! logic of models and artifacts, `fleet` that of nodes and enrolment, `auth` verifies callers, `api` and `grpc`
//! are the edges that convert wire types to domain types and back, `server`
//! assembles them.

pub mod api;
pub mod auth;
pub mod config;
pub mod domain;
pub mod error;
pub mod fleet;
pub mod grpc;
pub mod objects;
pub mod registry;
pub mod rollout;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
