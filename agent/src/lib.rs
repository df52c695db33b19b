//! Flotilla's edge agent as a library: the pieces the agent binary (and the
//! end-to-end tests and the fleet benchmark) assemble.
//!
//! - [`enrol`]: exchanging a bootstrap token for a node identity over
//!   `Fleet/Enroll`, and keeping it in `DATA_DIR/node.toml`.
//! - [`credentials`]: the node credential while the agent runs (shared with
//!   the blob downloads, rewritten to `node.toml` on renewal,
//!   `Fleet/RenewCredential` with the refresh secret).
//! - [`node_cert`]: this node's key (`DATA_DIR/node.key`) and the
//!   short-lived certificate the controller's node CA issues for it,
//!   renewed with the credential; its mutual-TLS identity among peers.
//! - [`sync`]: the `Fleet/Sync` stream: hello, desired state in, observed
//!   state and heartbeats out, reconnect with [`backoff`].
//! - [`reconcile`]: drives the node towards the desired state through two
//!   seams, an [`reconcile::ArtifactFetcher`] (the cache) and an
//!   [`reconcile::Activator`] ([`serve::EngineActivator`] in the binary);
//!   persists `DATA_DIR/state.json`.
//! - [`cache`]: content-addressed artifact cache, filled from the controller's
//!   blob endpoint with resumable, verified, optionally rate-limited downloads.
//! - [`health`]: hardware inventory and periodic health samples.
//! - [`serve`]: inference serving: the served model (loaded, warmed up and
//!   swapped in by [`serve::EngineActivator`]) behind gRPC, OpenAI- and
//!   Ollama-compatible HTTP APIs.
//! - [`routing`]: the directory of peers the controller pushes, the choice
//!   of peer for a model this node does not serve, the hop rule.
//! - [`simulate`]: N simulated agents in one process over real gRPC.
//!
//! # Entry points for tests and benchmarks
//! - One real agent in-process: build a [`reconcile::Reconciler`] (with a
//!   [`reconcile::CacheFetcher`] and [`reconcile::AcceptVerifiedBlob`]),
//!   spawn `reconciler.run(shutdown.clone())`, and run
//!   [`sync::SyncAgent::run`]`(`[`sync::SyncConfig::new`]`(channel,
//!   credentials, node, link), shutdown)`; to serve inference, pass
//!   [`serve::Serving::activator`] instead and run [`serve::serve_http`] and
//!   [`serve::serve_grpc`] on pre-bound listeners. Cancelling the
//!   `CancellationToken` closes the stream and returns. The binary's
//!   `main.rs` does exactly this.
//! - Many simulated agents: [`simulate::Simulation::start`] with a
//!   [`simulate::SimulationConfig`]; then `wait_for_generation`,
//!   `take_ack_latencies`, `connected_streams`, `hellos`, `nodes()`.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod cache;
pub mod credentials;
pub mod enrol;
pub mod health;
pub mod node_cert;
pub mod reconcile;
pub mod routing;
pub mod serve;
pub mod simulate;
pub mod sync;
pub mod telemetry;
pub mod tls;
