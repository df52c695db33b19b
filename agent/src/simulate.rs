//! Many simulated agents in one process, for scale tests and the fleet
//! benchmark: each enrols as `<prefix>-<i>` and then runs the real sync
//! client ([`SyncAgent`]) and the real reconciler over real gRPC, with an
//! instant fetcher instead of downloads and a static health sample.
//!
//! Simulated agents share one tonic `Channel` (one HTTP/2 connection) per
//! [`SimulationConfig::agents_per_channel`], enrol with bounded concurrency,
//! and keep their credentials in memory only. Failure is injectable: nodes
//! named in [`SimulationConfig::failing_nodes`] report FAILED for every
//! assignment, those in [`SimulationConfig::erroring_nodes`] report that
//! 30 of the 100 requests their model answered failed, and those in
//! [`SimulationConfig::escalating_nodes`] that 40 of 100 went to an
//! escalation policy's upstream. With
//! [`SimulationConfig::advertise`] the nodes advertise inference URLs, so
//! the controller routes between them (the URLs are never dialled).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::BackoffPolicy;
use crate::cache::{CachedBlob, Digest, Progress};
use crate::credentials::Credentials;
use crate::enrol::{self, EnrolError, EnrolRequest};
use crate::health::{HealthSample, Inventory};
use crate::reconcile::{
    Activation, Activator, ArtifactFetcher, Assignment, ObservedState, ProgressFn, Reconciler,
    ReconcilerConfig,
};
use crate::sync::{
    AdvertisedUrls, FleetTelemetry, LatencySummary, NodeReporter, NodeTelemetry,
    ReceivedGeneration, SyncAgent, SyncConfig,
};
use crate::tls::CaTrust;

#[derive(Debug, Clone)]
pub struct SimulationConfig {
    /// The controller's gRPC URL.
    pub controller: String,
    /// Used by every simulated node (it must allow that many uses).
    pub bootstrap_token: String,
    pub agents: usize,
    /// Nodes are named `<prefix>-<index>`, index from 0.
    pub name_prefix: String,
    pub labels: HashMap<String, String>,
    /// Nodes that report FAILED for every assignment.
    pub failing_nodes: HashSet<String>,
    /// Nodes whose heartbeats say 30 of the 100 requests answered by what
    /// they serve failed (what rollouts' error-rate gate reads).
    pub erroring_nodes: HashSet<String>,
    /// Nodes whose heartbeats say 40 of the 100 requests they answered
    /// since activating what they serve were escalated upstream (what
    /// rollouts' escalation-rate gate reads).
    pub escalating_nodes: HashSet<String>,
    /// RAM of named nodes, in bytes (others have 16 GiB); a quarter of it
    /// reads as used in their health samples. Rollouts size artifacts by it.
    pub node_memory_bytes: HashMap<String, u64>,
    /// Whether nodes advertise inference URLs (`http://<name>.sim.invalid`,
    /// never dialled), so that the ones serving a model enter the routing
    /// directory and every node is sent its view of it.
    pub advertise: bool,
    /// Simulated agents per HTTP/2 connection.
    pub agents_per_channel: usize,
    /// Enrolments in flight at once.
    pub enrol_concurrency: usize,
    pub backoff: BackoffPolicy,
}

impl SimulationConfig {
    pub fn new(
        controller: impl Into<String>,
        bootstrap_token: impl Into<String>,
        agents: usize,
    ) -> Self {
        Self {
            controller: controller.into(),
            bootstrap_token: bootstrap_token.into(),
            agents,
            name_prefix: "sim".to_owned(),
            labels: HashMap::new(),
            failing_nodes: HashSet::new(),
            erroring_nodes: HashSet::new(),
            escalating_nodes: HashSet::new(),
            node_memory_bytes: HashMap::new(),
            advertise: false,
            agents_per_channel: 50,
            enrol_concurrency: 64,
            backoff: BackoffPolicy::default(),
        }
    }

    pub fn node_name(&self, index: usize) -> String {
        format!("{}-{index}", self.name_prefix)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulationError {
    #[error("cannot enrol the simulated nodes")]
    Enrol(#[from] EnrolError),
    #[error(
        "{reached} of {total} simulated agents reached generation {generation} before the deadline"
    )]
    Timeout {
        generation: u64,
        reached: usize,
        total: usize,
    },
}

/// One simulated agent, as the simulation's owner sees it.
pub struct SimulatedNode {
    pub name: String,
    telemetry: Arc<NodeTelemetry>,
    observed: watch::Receiver<ObservedState>,
}

impl SimulatedNode {
    /// The newest desired generation it received, and when it last
    /// received a desired state (a repeat after a reconnect counts).
    pub fn latest_desired(&self) -> Option<ReceivedGeneration> {
        self.telemetry.latest_desired()
    }

    pub fn observed(&self) -> ObservedState {
        self.observed.borrow().clone()
    }
}

pub struct Simulation {
    nodes: Vec<SimulatedNode>,
    fleet: Arc<FleetTelemetry>,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl Simulation {
    /// Enrols every node (replacing earlier identities of the same names)
    /// and starts their sync loops. Returns once all are enrolled; their
    /// streams open in the background.
    pub async fn start(config: SimulationConfig) -> Result<Simulation, SimulationError> {
        let per_channel = config.agents_per_channel.max(1);
        let mut channels = Vec::new();
        for _ in 0..config.agents.div_ceil(per_channel) {
            channels.push(enrol::connect(&config.controller, &CaTrust::system()).await?);
        }
        let channel_for = |index: usize| channels[index / per_channel].clone();
        let inventory = synthetic_inventory();
        let identities: Vec<_> = futures::stream::iter(0..config.agents)
            .map(|index| {
                let request = EnrolRequest {
                    controller: config.controller.clone(),
                    bootstrap_token: config.bootstrap_token.clone(),
                    name: config.node_name(index),
                    labels: config.labels.clone(),
                    replace_existing: true,
                    certificates: None,
                };
                let mut inventory = inventory.clone();
                if let Some(memory) = config.node_memory_bytes.get(&config.node_name(index)) {
                    inventory.memory_total_bytes = *memory;
                }
                let channel = channel_for(index);
                async move { enrol::enrol_over(channel, request, &inventory).await }
            })
            .buffered(config.enrol_concurrency.max(1))
            .try_collect()
            .await?;

        let fleet = Arc::new(FleetTelemetry::default());
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut nodes = Vec::with_capacity(identities.len());
        let reporter: Arc<dyn NodeReporter> = Arc::new(SyntheticNode {
            inventory: inventory.clone(),
        });
        for (index, identity) in identities.into_iter().enumerate() {
            let name = identity.name.clone();
            let reporter = match config.node_memory_bytes.get(&name) {
                Some(memory) => {
                    let mut inventory = inventory.clone();
                    inventory.memory_total_bytes = *memory;
                    Arc::new(SyntheticNode { inventory }) as Arc<dyn NodeReporter>
                }
                None => reporter.clone(),
            };
            let fetcher = Arc::new(InstantFetcher {
                fail: config.failing_nodes.contains(&name),
            });
            let (reconciler, link) = Reconciler::new(
                fetcher,
                Arc::new(AcceptAnything),
                ReconcilerConfig::new(None),
                None,
            );
            let served = if config.erroring_nodes.contains(&name) {
                Some(ServedFigures::ERRORING)
            } else if config.escalating_nodes.contains(&name) {
                Some(ServedFigures::ESCALATING)
            } else {
                None
            };
            let reporter = match served {
                Some(figures) => Arc::new(ServingNode {
                    inner: reporter,
                    observed: link.observed.clone(),
                    figures,
                }) as Arc<dyn NodeReporter>,
                None => reporter,
            };
            let telemetry = Arc::new(NodeTelemetry::default());
            let advertised = if config.advertise {
                AdvertisedUrls {
                    http: format!("http://{name}.sim.invalid:11434"),
                    grpc: format!("http://{name}.sim.invalid:50052"),
                }
            } else {
                AdvertisedUrls::default()
            };
            let sync = SyncConfig {
                backoff: config.backoff,
                advertised,
                fleet_telemetry: fleet.clone(),
                node_telemetry: telemetry.clone(),
                ..SyncConfig::new(
                    channel_for(index),
                    Arc::new(Credentials::new(identity, None)),
                    reporter,
                    link.clone(),
                )
            };
            tasks.spawn(reconciler.run(shutdown.clone()));
            tasks.spawn(SyncAgent::run(sync, shutdown.clone()));
            nodes.push(SimulatedNode {
                name,
                telemetry,
                observed: link.observed,
            });
        }
        Ok(Simulation {
            nodes,
            fleet,
            shutdown,
            tasks,
        })
    }

    pub fn nodes(&self) -> &[SimulatedNode] {
        &self.nodes
    }

    pub fn telemetry(&self) -> &FleetTelemetry {
        &self.fleet
    }

    /// Streams open right now.
    pub fn connected_streams(&self) -> u64 {
        self.fleet.connected_streams()
    }

    /// Streams accepted since start (reconnects count again).
    pub fn hellos(&self) -> u64 {
        self.fleet.hellos()
    }

    /// Heartbeat ack latencies since the last call; resets them.
    pub fn take_ack_latencies(&self) -> LatencySummary {
        self.fleet.take_ack_latencies()
    }

    /// How many agents have received a desired generation ≥ `generation`.
    pub fn count_at_generation(&self, generation: u64) -> usize {
        self.nodes
            .iter()
            .filter(|node| {
                node.latest_desired()
                    .is_some_and(|received| received.generation >= generation)
            })
            .count()
    }

    /// Waits until every agent has received a desired generation ≥
    /// `generation`, or `deadline` passes.
    pub async fn wait_for_generation(
        &self,
        generation: u64,
        deadline: Instant,
    ) -> Result<(), SimulationError> {
        loop {
            // Registered before the check, so no update can slip between.
            let notified = self.fleet.desired_received.notified();
            let reached = self.count_at_generation(generation);
            if reached == self.nodes.len() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(SimulationError::Timeout {
                    generation,
                    reached: self.count_at_generation(generation),
                    total: self.nodes.len(),
                });
            }
        }
    }

    /// Closes every stream and waits for the agents to stop.
    pub async fn shutdown(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

impl Drop for Simulation {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// "Downloads" at once: DOWNLOADING, then the blob is there (or fails).
struct InstantFetcher {
    fail: bool,
}

impl ArtifactFetcher for InstantFetcher {
    fn fetch(
        &self,
        assignment: &Assignment,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<PathBuf, String>> {
        let (digest, size_bytes, fail) = (assignment.digest, assignment.size_bytes, self.fail);
        Box::pin(async move {
            progress(Progress {
                bytes_done: 0,
                bytes_total: size_bytes.max(1),
            });
            if fail {
                return Err(format!(
                    "simulated failure fetching blob blake3:{}",
                    digest.short()
                ));
            }
            progress(Progress {
                bytes_done: size_bytes,
                bytes_total: size_bytes,
            });
            Ok(PathBuf::from(format!("/simulated/{}", digest.to_hex())))
        })
    }

    fn after_ready(&self, _keep: HashSet<Digest>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

struct AcceptAnything;

impl Activator for AcceptAnything {
    fn activate(&self, _activation: Activation) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    fn deactivate(&self) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

struct SyntheticNode {
    inventory: Inventory,
}

impl NodeReporter for SyntheticNode {
    fn inventory(&self) -> BoxFuture<'static, Inventory> {
        let inventory = self.inventory.clone();
        Box::pin(async move { inventory })
    }

    fn sample(&self) -> BoxFuture<'static, HealthSample> {
        let memory_total_bytes = self.inventory.memory_total_bytes;
        Box::pin(async move {
            HealthSample {
                taken_at: time::OffsetDateTime::now_utc(),
                cpu_utilisation_percent: 12.5,
                memory_used_bytes: memory_total_bytes / 4,
                memory_total_bytes,
                disk_available_bytes: Some(200 << 30),
                cpu_temperature_celsius: Some(45.0),
                gpus: Vec::new(),
                inference: None,
                state_write_error: None,
            }
        })
    }

    fn cached_blobs(&self) -> BoxFuture<'static, Vec<CachedBlob>> {
        Box::pin(async { Vec::new() })
    }
}

/// How the requests a [`ServingNode`] answered ended, as its heartbeats
/// say: the same figures since start and since activation.
#[derive(Debug, Clone, Copy)]
struct ServedFigures {
    completed: u64,
    failed: u64,
    escalated: u64,
}

impl ServedFigures {
    /// 30 of 100 requests failed.
    const ERRORING: Self = Self {
        completed: 70,
        failed: 30,
        escalated: 0,
    };
    /// 40 of 100 answered requests escalated upstream, none failed.
    const ESCALATING: Self = Self {
        completed: 60,
        failed: 0,
        escalated: 40,
    };
}

/// A node whose heartbeats report fixed [`ServedFigures`] for the model it
/// serves.
struct ServingNode {
    inner: Arc<dyn NodeReporter>,
    observed: watch::Receiver<ObservedState>,
    figures: ServedFigures,
}

impl NodeReporter for ServingNode {
    fn inventory(&self) -> BoxFuture<'static, Inventory> {
        self.inner.inventory()
    }

    fn sample(&self) -> BoxFuture<'static, HealthSample> {
        let sample = self.inner.sample();
        let serving = self.observed.borrow().serving_digest;
        let figures = self.figures;
        Box::pin(async move {
            let mut sample = sample.await;
            sample.inference = serving.map(|digest| crate::health::InferenceHealth {
                serving_digest: Some(digest.to_hex()),
                completed_total: figures.completed,
                failed_total: figures.failed,
                escalated_total: figures.escalated,
                completed_since_activation: figures.completed,
                failed_since_activation: figures.failed,
                escalated_since_activation: figures.escalated,
                ..crate::health::InferenceHealth::default()
            });
            sample
        })
    }

    fn cached_blobs(&self) -> BoxFuture<'static, Vec<CachedBlob>> {
        self.inner.cached_blobs()
    }
}

fn synthetic_inventory() -> Inventory {
    Inventory {
        hostname: Some("simulated".to_owned()),
        os: Some("simulated".to_owned()),
        kernel_version: None,
        cpu_arch: std::env::consts::ARCH.to_owned(),
        cpu_model: "simulated cpu".to_owned(),
        cpu_logical_cores: 8,
        cpu_physical_cores: Some(4),
        memory_total_bytes: 16 << 30,
        data_disk: None,
        gpus: Vec::new(),
        adapters: Vec::new(),
    }
}
