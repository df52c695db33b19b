//! The sync loop: one `Fleet/Sync` stream to the controller, reopened with
//! jittered backoff whenever it ends.
//!
//! Per stream: a `Hello` (applied generation, verified cache contents,
//! observed state, inventory), then concurrently
//! - controller messages: a `DesiredState` goes to the reconciler's watch
//!   (latest wins; a generation lower than one already seen is dropped, a
//!   repeated one is a no-op), a `HeartbeatAck` becomes a latency sample, a
//!   `Credential` replaces the node credential in memory and in `node.toml`
//!   (and the node certificate, signed for the hello's signing request),
//!   a `Directory` replaces the routing directory ([`Routes`]; this node's
//!   own entries left out);
//! - a `Heartbeat` every interval the latest desired state asks for (first
//!   one at a random phase, so agents started together do not beat
//!   together);
//! - an `ObservedState` whenever the reconciler publishes a new one (the
//!   watch coalesces: only the latest goes out).
//!
//! Refusals: UNAUTHENTICATED triggers `RenewCredential` with the refresh
//! secret; when that is refused too, the node must be re-enrolled and the
//! loop says so and retries at the longest backoff. PERMISSION_DENIED and
//! NOT_FOUND are logged as errors and retried at the longest backoff. While
//! disconnected the reconciler keeps its state and the node keeps serving.
//!
//! In memory only: the highest generation seen (the floor at start is the
//! reconciler's restored applied generation), the heartbeat sequence, the
//! backoff. Wire types stay in this module and [`wire`].

pub mod telemetry;
pub mod wire;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use flotilla_contract::DirectoryEntry;
use flotilla_proto::fleet::v1 as pb;
use flotilla_proto::fleet::v1::fleet_client::FleetClient;
use futures::future::BoxFuture;
use prost::Message as _;
use rand::Rng;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::backoff::{Backoff, BackoffPolicy};
use crate::cache::{ArtifactCache, CachedBlob};
use crate::credentials::Credentials;
use crate::health::{HealthProbe, HealthSample, Inventory};
use crate::reconcile::{DEFAULT_HEARTBEAT_INTERVAL, DesiredState, ObservedState, ReconcilerLink};
use crate::routing::{Peer, Routes};
use crate::serve::stats::InferenceStats;
pub use telemetry::{
    DirectoryTraffic, FleetTelemetry, LatencySummary, NodeTelemetry, ReceivedGeneration,
};

/// Heartbeats whose ack has not come back, per stream; older ones are
/// forgotten (their ack counts as lost).
const UNACKED_HEARTBEATS: usize = 64;

/// What the sync loop reports about the box it runs on.
pub trait NodeReporter: Send + Sync + 'static {
    fn inventory(&self) -> BoxFuture<'static, Inventory>;
    fn sample(&self) -> BoxFuture<'static, HealthSample>;
    /// Verified blobs in the cache, for the hello.
    fn cached_blobs(&self) -> BoxFuture<'static, Vec<CachedBlob>>;
}

/// The real box: the health probe, the artifact cache and, when the node
/// serves inference, its statistics.
pub struct LocalNode {
    probe: HealthProbe,
    cache: Arc<ArtifactCache>,
    inference: Option<&'static InferenceStats>,
}

impl LocalNode {
    pub fn new(probe: HealthProbe, cache: Arc<ArtifactCache>) -> Self {
        Self {
            probe,
            cache,
            inference: None,
        }
    }

    /// Heartbeats also carry `stats` (see [`crate::serve::stats`]).
    pub fn with_inference(mut self, stats: &'static InferenceStats) -> Self {
        self.inference = Some(stats);
        self
    }
}

impl NodeReporter for LocalNode {
    fn inventory(&self) -> BoxFuture<'static, Inventory> {
        let probe = self.probe.clone();
        Box::pin(async move { probe.inventory().await })
    }

    fn sample(&self) -> BoxFuture<'static, HealthSample> {
        let probe = self.probe.clone();
        let inference = self.inference;
        Box::pin(async move {
            let mut sample = probe.sample().await;
            sample.inference = inference.map(InferenceStats::snapshot);
            sample
        })
    }

    fn cached_blobs(&self) -> BoxFuture<'static, Vec<CachedBlob>> {
        let cache = self.cache.clone();
        Box::pin(async move {
            cache.list().await.unwrap_or_else(|error| {
                tracing::warn!(%error, "cannot list the cache for the hello");
                Vec::new()
            })
        })
    }
}

/// Everything one sync agent needs.
pub struct SyncConfig {
    /// A channel to the controller's gRPC endpoint; may be shared by many
    /// agents (each stream is one HTTP/2 stream on it).
    pub channel: Channel,
    pub credentials: Arc<Credentials>,
    pub node: Arc<dyn NodeReporter>,
    pub reconciler: ReconcilerLink,
    pub backoff: BackoffPolicy,
    /// A stream that lasted this long (or brought a desired state) resets
    /// the backoff.
    pub healthy_after: Duration,
    /// Renew the credential before opening a stream when it expires sooner.
    pub renew_margin: Duration,
    pub fleet_telemetry: Arc<FleetTelemetry>,
    pub node_telemetry: Arc<NodeTelemetry>,
    /// Where peers reach this node's inference APIs, said in the hello.
    pub advertised: AdvertisedUrls,
    /// Filled from the controller's directory messages.
    pub routes: Arc<Routes>,
}

/// `http://host:port` of this node's inference APIs (empty: not reachable).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdvertisedUrls {
    pub http: String,
    pub grpc: String,
}

impl SyncConfig {
    /// Production defaults for everything but the parts.
    pub fn new(
        channel: Channel,
        credentials: Arc<Credentials>,
        node: Arc<dyn NodeReporter>,
        reconciler: ReconcilerLink,
    ) -> Self {
        Self {
            channel,
            credentials,
            node,
            reconciler,
            backoff: BackoffPolicy::default(),
            healthy_after: Duration::from_secs(30),
            renew_margin: Duration::from_secs(60),
            fleet_telemetry: Arc::default(),
            node_telemetry: Arc::default(),
            advertised: AdvertisedUrls::default(),
            routes: Arc::default(),
        }
    }
}

/// How one stream ended.
enum StreamEnd {
    Shutdown,
    Ended {
        /// It lasted a while or brought a desired state.
        healthy: bool,
        /// `None`: the controller closed it cleanly.
        status: Option<tonic::Status>,
    },
}

pub struct SyncAgent {
    config: SyncConfig,
    /// Desired generations below this are stale (the applied one at start).
    generation_floor: u64,
    /// The highest desired generation this process has received.
    last_seen_generation: Option<u64>,
    heartbeat_interval: Duration,
}

impl SyncAgent {
    /// Runs the sync loop until `shutdown`; then closes the stream and returns.
    pub async fn run(config: SyncConfig, shutdown: CancellationToken) {
        let generation_floor = config.reconciler.observed.borrow().generation;
        let mut agent = SyncAgent {
            config,
            generation_floor,
            last_seen_generation: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        };
        agent.run_until(shutdown).await;
    }

    async fn run_until(&mut self, shutdown: CancellationToken) {
        let node = self.config.credentials.node_name().to_owned();
        let mut backoff = Backoff::new(self.config.backoff);
        loop {
            let mut delay = None;
            if self
                .config
                .credentials
                .expires_within(self.config.renew_margin)
            {
                delay = self.renew_credential(&mut backoff).await;
            }
            if delay.is_none() {
                match self.stream_once(&shutdown).await {
                    StreamEnd::Shutdown => return,
                    StreamEnd::Ended { healthy, status } => {
                        if healthy {
                            backoff.reset();
                        }
                        delay = Some(self.delay_after(&node, status, &mut backoff).await);
                    }
                }
            }
            let delay = delay.unwrap_or_else(|| backoff.next_delay());
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Renews the credential; on failure returns how long to wait.
    async fn renew_credential(&self, backoff: &mut Backoff) -> Option<Duration> {
        match self
            .config
            .credentials
            .renew(self.config.channel.clone())
            .await
        {
            Ok(()) => {
                tracing::info!(
                    node = self.config.credentials.node_name(),
                    "node credential renewed"
                );
                None
            }
            Err(error) if error.needs_reenrolment() => {
                tracing::error!(%error, "cannot sync until the node is re-enrolled; still serving what is cached");
                Some(backoff.longest_delay())
            }
            Err(error) => {
                tracing::warn!(%error, "credential renewal failed; will retry");
                Some(backoff.next_delay())
            }
        }
    }

    /// How long to wait after a stream ended with `status`.
    async fn delay_after(
        &self,
        node: &str,
        status: Option<tonic::Status>,
        backoff: &mut Backoff,
    ) -> Duration {
        let code = status
            .as_ref()
            .map_or("closed", |status| grpc_code_label(status.code()));
        metrics::counter!("flotilla_agent_sync_streams_ended_total", "code" => code).increment(1);
        let Some(status) = status else {
            tracing::info!(node, "controller closed the sync stream; reconnecting");
            return backoff.next_delay();
        };
        match status.code() {
            tonic::Code::Unauthenticated => {
                // The credential may have expired or been rotated: renew it
                // (whatever its expiry says, since clocks drift) and retry.
                tracing::warn!(
                    node,
                    message = status.message(),
                    "sync stream refused the credential; renewing it"
                );
                match self.renew_credential(backoff).await {
                    None => backoff.next_delay(),
                    Some(delay) => delay,
                }
            }
            tonic::Code::PermissionDenied | tonic::Code::NotFound => {
                tracing::error!(node, code = ?status.code(), message = status.message(),
                    "the controller refuses this node's sync stream; an operator must act (was the node removed or its identity replaced?)");
                backoff.longest_delay()
            }
            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => {
                tracing::error!(node, code = ?status.code(), message = status.message(),
                    "the controller rejected the sync stream as malformed; retrying at the longest backoff");
                backoff.longest_delay()
            }
            code => {
                tracing::info!(
                    node,
                    ?code,
                    message = status.message(),
                    "sync stream ended; reconnecting"
                );
                backoff.next_delay()
            }
        }
    }

    async fn hello(&mut self) -> pb::AgentMessage {
        let observed = self.config.reconciler.observed.borrow_and_update().clone();
        let (inventory, cache) = tokio::join!(
            self.config.node.inventory(),
            self.config.node.cached_blobs()
        );
        pb::AgentMessage {
            body: Some(pb::agent_message::Body::Hello(pb::Hello {
                node_name: self.config.credentials.node_name().to_owned(),
                applied_generation: observed.generation,
                cache: cache.iter().map(pb::CachedBlob::from).collect(),
                observed: Some(pb::ObservedState::from(&observed)),
                inventory: Some(crate::enrol::inventory_to_wire(&inventory)),
                agent_version: env!("CARGO_PKG_VERSION").to_owned(),
                inference_http_url: self.config.advertised.http.clone(),
                inference_grpc_url: self.config.advertised.grpc.clone(),
                certificate_signing_request: self.config.credentials.csr_pem(),
            })),
        }
    }

    /// Opens one stream and serves it until it ends or `shutdown`.
    #[tracing::instrument(name = "sync", skip_all, fields(otel.kind = "client"))]
    async fn stream_once(&mut self, shutdown: &CancellationToken) -> StreamEnd {
        let started = Instant::now();
        let (outbound, outbound_receiver) = mpsc::channel::<pb::AgentMessage>(32);
        let hello = self.hello().await;
        // Cannot fail: the receiver is held just below.
        let _ = outbound.send(hello).await;
        let mut request = tonic::Request::new(ReceiverStream::new(outbound_receiver));
        let bearer = format!("Bearer {}", self.config.credentials.token().current());
        match bearer.parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => {
                return StreamEnd::Ended {
                    healthy: false,
                    status: Some(tonic::Status::unauthenticated(
                        "the stored node credential is not a valid header value",
                    )),
                };
            }
        }
        let mut client = FleetClient::with_interceptor(
            self.config.channel.clone(),
            crate::telemetry::propagate::grpc_interceptor,
        );
        let response = tokio::select! {
            _ = shutdown.cancelled() => return StreamEnd::Shutdown,
            response = client.sync(request) => response,
        };
        let mut inbound = match response {
            Ok(response) => response.into_inner(),
            Err(status) => {
                return StreamEnd::Ended {
                    healthy: false,
                    status: Some(status),
                };
            }
        };
        let fleet_telemetry = self.config.fleet_telemetry.clone();
        let _connected = fleet_telemetry.stream_opened();
        tracing::debug!(
            node = self.config.credentials.node_name(),
            "sync stream open"
        );

        let mut observed = self.config.reconciler.observed.clone();
        let mut got_desired = false;
        let mut sequence = 0u64;
        let mut unacked: VecDeque<(u64, Instant)> = VecDeque::new();
        let phase = rand::rng().random::<f64>();
        let mut next_heartbeat = Instant::now() + self.heartbeat_interval.mul_f64(phase);
        let healthy_after = self.config.healthy_after;
        let end = |got_desired: bool, status: Option<tonic::Status>| StreamEnd::Ended {
            healthy: got_desired || started.elapsed() >= healthy_after,
            status,
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Dropping the outbound sender ends our half of the stream.
                    return StreamEnd::Shutdown;
                }
                message = inbound.message() => match message {
                    Ok(Some(message)) => {
                        let interval_before = self.heartbeat_interval;
                        got_desired |= self.on_controller_message(message, &mut unacked).await;
                        if self.heartbeat_interval != interval_before {
                            next_heartbeat = Instant::now() + self.heartbeat_interval.mul_f64(phase);
                        }
                    }
                    Ok(None) => return end(got_desired, None),
                    Err(status) => return end(got_desired, Some(status)),
                },
                _ = tokio::time::sleep_until(next_heartbeat) => {
                    sequence += 1;
                    let mut sample = self.config.node.sample().await;
                    sample.state_write_error =
                        self.config.reconciler.state_write_error.borrow().clone();
                    unacked.push_back((sequence, Instant::now()));
                    if unacked.len() > UNACKED_HEARTBEATS {
                        unacked.pop_front();
                    }
                    let heartbeat = pb::AgentMessage {
                        body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {
                            sequence,
                            sample: Some(pb::HealthSample::from(&sample)),
                        })),
                    };
                    next_heartbeat += self.heartbeat_interval;
                    // Behind by more than one beat (a long pause): skip ahead.
                    let now = Instant::now();
                    if next_heartbeat < now {
                        next_heartbeat = now + self.heartbeat_interval;
                    }
                    if outbound.send(heartbeat).await.is_err() {
                        return end(got_desired, None);
                    }
                }
                changed = observed.changed() => {
                    if changed.is_err() {
                        // The reconciler is gone: only shutdown does that.
                        return StreamEnd::Shutdown;
                    }
                    let state: ObservedState = observed.borrow_and_update().clone();
                    let message = pb::AgentMessage {
                        body: Some(pb::agent_message::Body::Observed(pb::ObservedState::from(&state))),
                    };
                    if outbound.send(message).await.is_err() {
                        return end(got_desired, None);
                    }
                }
            }
        }
    }

    /// Handles one controller message; true when it was a newer desired state.
    async fn on_controller_message(
        &mut self,
        message: pb::ControllerMessage,
        unacked: &mut VecDeque<(u64, Instant)>,
    ) -> bool {
        let node = self.config.credentials.node_name().to_owned();
        let node = node.as_str();
        match message.body {
            Some(pb::controller_message::Body::Desired(wire)) => {
                let desired = match DesiredState::try_from(wire) {
                    Ok(desired) => desired,
                    Err(error) => {
                        // Fail closed: keep converging towards the last valid one.
                        tracing::warn!(node, %error, "ignoring an invalid desired state");
                        return false;
                    }
                };
                self.accept_desired(desired)
            }
            Some(pb::controller_message::Body::HeartbeatAck(ack)) => {
                while let Some(&(sequence, sent_at)) = unacked.front() {
                    if sequence > ack.sequence {
                        break;
                    }
                    unacked.pop_front();
                    if sequence == ack.sequence {
                        self.config
                            .fleet_telemetry
                            .record_ack_latency(sent_at.elapsed());
                    }
                }
                false
            }
            Some(pb::controller_message::Body::Credential(mut credential)) => {
                if let Some(certificate) = credential.certificate.take() {
                    self.config
                        .credentials
                        .install_certificate(certificate.into())
                        .await;
                }
                if let Err(error) = self
                    .config
                    .credentials
                    .replace(credential.credential, credential.expires_at_unix, None)
                    .await
                {
                    // The new credential is in use; only the copy on disk is stale.
                    tracing::warn!(node, %error, "cannot persist the renewed credential");
                } else {
                    tracing::debug!(node, "node credential replaced by the controller");
                }
                false
            }
            Some(pb::controller_message::Body::Directory(directory)) => {
                self.config
                    .fleet_telemetry
                    .record_directory(directory.entries.len(), directory.encoded_len());
                let peers: Vec<Peer> = directory
                    .entries
                    .into_iter()
                    .filter_map(|entry| match DirectoryEntry::try_from(entry) {
                        Ok(entry) => Some(entry),
                        // One entry no controller could have sent costs
                        // only itself: the rest of the directory routes.
                        Err(error) => {
                            tracing::warn!(node, %error, "ignoring a directory entry");
                            None
                        }
                    })
                    .filter(|entry| entry.node.as_str() != node)
                    .map(Peer::from)
                    .collect();
                tracing::debug!(node, peers = peers.len(), "routing directory replaced");
                self.config.routes.replace(peers);
                false
            }
            None => {
                tracing::warn!(node, "ignoring an empty controller message");
                false
            }
        }
    }

    /// Hands a desired state to the reconciler unless it is stale or a
    /// repeat; true when it was handed over.
    fn accept_desired(&mut self, desired: DesiredState) -> bool {
        // Every receipt counts for telemetry (a resync after a reconnect
        // repeats the generation), with the newest generation seen.
        let newest = self
            .last_seen_generation
            .map_or(desired.generation, |seen| seen.max(desired.generation));
        self.config
            .node_telemetry
            .record_desired(newest, Instant::now());
        self.config
            .fleet_telemetry
            .desired_received
            .notify_waiters();
        let stale = match self.last_seen_generation {
            Some(seen) => desired.generation <= seen,
            None => desired.generation < self.generation_floor,
        };
        if stale {
            if self
                .last_seen_generation
                .is_none_or(|seen| desired.generation < seen)
            {
                tracing::warn!(
                    node = self.config.credentials.node_name(),
                    generation = desired.generation,
                    seen = self.last_seen_generation.unwrap_or(self.generation_floor),
                    "ignoring a desired state older than one already seen"
                );
            }
            return false;
        }
        self.last_seen_generation = Some(desired.generation);
        self.heartbeat_interval = desired.heartbeat_interval;
        self.config.reconciler.desired.send_replace(Some(desired));
        true
    }
}

/// A gRPC code as a metric label (snake case, a fixed set).
fn grpc_code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}
