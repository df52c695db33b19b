//! Flotilla's controller: the model registry, fleet inventory, rollouts,
//! authentication, and the REST (axum) and gRPC (tonic) APIs over them.
//!
//! Layout follows the architecture: `domain` holds plain types, `store`
//! persists them, `objects` holds blob bytes, `registry` is the business
//! logic of models and artifacts, `fleet` that of nodes and enrolment, `auth` verifies callers, `api` and `grpc`
//! are the edges that convert wire types to domain types and back, `server`
//! assembles them.
//!
//! A module is public only where something outside the library uses it:
//! the `flotilla-controller` binary, this crate's integration tests, or
//! another crate's tests. `error`, `grpc`, `registry` and `rollout` are
//! reached only through `api` and `server`; `testing` exists only for tests
//! (the `testing` feature).

pub mod api;
pub mod auth;
pub mod config;
pub mod domain;
mod error;
pub mod fleet;
mod grpc;
pub mod objects;
mod registry;
mod rollout;
pub mod server;
pub mod store;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
