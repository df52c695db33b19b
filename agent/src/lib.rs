//! Flotilla's edge agent as a library: the pieces the agent binary (and the
//! end-to-end tests) assemble.
//!
//! - [`cache`]: content-addressed artifact cache, filled from the controller's
//!   blob endpoint with resumable, verified downloads.
//! - [`health`]: hardware inventory and periodic health samples (CPU, memory,
//!   disk, NVIDIA GPUs through NVML when present).
//!
//! Enrolment and the desired-state sync loop, which drive these, come next.

#![forbid(unsafe_code)]

pub mod cache;
pub mod health;
