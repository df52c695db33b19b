//! Flotilla's edge agent as a library: the pieces the agent binary (and the
//! end-to-end tests) assemble.
//!
//! - [`cache`]: content-addressed artifact cache, filled from the controller's
//!   blob endpoint with resumable, verified downloads.
//! - [`enrol`]: exchanging a bootstrap token for a node identity over
//!   `flotilla.fleet.v1.Fleet/Enroll`, and keeping it in `DATA_DIR/node.toml`.
//! - [`health`]: hardware inventory and periodic health samples (CPU, memory,
//!   disk, NVIDIA GPUs through NVML when present).
//!
//! The desired-state sync loop, which drives these, comes next.

#![forbid(unsafe_code)]

pub mod cache;
pub mod enrol;
pub mod health;
