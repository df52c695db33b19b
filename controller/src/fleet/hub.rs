//! The controller's in-memory side of the sync streams, behind one façade,
//! [`SyncHub`], in four parts:
//!
//! - `streams`: the stream registry. Which nodes have a stream open here,
//!   the latest desired state pushed to each (fan-out: one `watch` send per
//!   changed node), and what each stream's hello and certificate say about
//!   reaching the node.
//! - `reports`: the report buffer. What each agent reported (observed
//!   state, latest health sample, last heartbeat) until it is written, and
//!   the health minute being folded.
//! - `routing`: the routing index. Which ready node serves which offering,
//!   kept up to date from the other two parts' changes, and the routing
//!   [`Directory`] published from it to every stream, merged with the other
//!   replicas' entries.
//! - `flusher` ([`Flusher`]): the periodic work. Writes the reports in
//!   batches, exchanges routes with the other replicas through the store
//!   and publishes the directory, once a second.
//!
//! Nothing here is written per heartbeat, and everything here lives only in
//! memory: a restarted controller learns it again from the agents, which
//! reconnect and send their hello (with their observed state and inference
//! URLs) and heartbeats.
//!
//! Locks: the registry and the buffer each shard their nodes over their own
//! mutexes; a heartbeat locks one shard of the buffer, a fan-out one shard
//! of the registry per node. Both hand the routing index their changes over
//! a bounded channel while they hold the node's shard, and never take the
//! index's lock, so building the directory cannot hold up a heartbeat's
//! acknowledgement. Where an operation touches both (connect, disconnect,
//! evict), the registry's shard is locked first.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::domain::{
    DesiredState, HealthPoint, HealthSample, NodeDesired, NodeName, NodeStatus, ObservedState,
};
use streams::Connection;

mod flusher;
mod reports;
mod routing;
mod shards;
mod streams;

#[cfg(test)]
mod fixtures;

pub use crate::domain::DirectoryEntry;
pub use flusher::Flusher;

/// How often observed states are written, and routes exchanged and the
/// directory published.
pub const OBSERVED_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often heartbeat times, latest health and finished minutes are
/// written. Readiness seen from another replica lags by up to this much.
pub const HEALTH_FLUSH_EVERY: Duration = Duration::from_secs(15);
/// Heartbeats a node may miss before it counts as not ready.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Health history kept.
pub const HEALTH_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Granularity of [`DirectoryEntry::load`], in percent.
pub const LOAD_STEP: u32 = 10;

/// Another replica's routes count while it refreshed them this recently; a
/// live replica does every [`OBSERVED_FLUSH_EVERY`], so only a dead or cut
/// off one falls behind, and its nodes are soon streaming elsewhere.
pub const ROUTES_FRESH_FOR: Duration = Duration::from_secs(10);

/// What a stream sends its agent: the node's status and desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedState {
    pub status: NodeStatus,
    pub desired: DesiredState,
}

impl PushedState {
    /// Whether `self` should replace `current`: a higher generation, or a
    /// status change at the same generation (cordoning changes no desired
    /// state). A lower generation never replaces a higher one, so a stale
    /// read can race a fresh publish safely.
    fn supersedes(&self, current: &Self) -> bool {
        self.desired.generation > current.desired.generation
            || (self.desired.generation == current.desired.generation
                && self.status != current.status)
    }
}

/// Where peers reach a node's inference APIs, from its hello.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// `http://host:port` of the OpenAI/Ollama HTTP API (empty: none).
    pub http_url: String,
    /// `http://host:port` of the gRPC inference API (empty: none).
    pub grpc_url: String,
}

/// Which ready nodes serve which model, at most
/// [`POOL_PER_OFFERING`](crate::domain::POOL_PER_OFFERING) per offering (the least
/// busy), sorted by model then node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Directory {
    pub entries: Vec<DirectoryEntry>,
}

/// What the ready nodes streaming to this replica report for one model,
/// summed (the first-token time: the worst), for the controller's own
/// `/metrics` (computed at each scrape, so a model no node serves has no
/// series): per model, not per node, so that its series stay few.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ModelLoad {
    pub nodes: u32,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub tokens_per_second: f64,
    pub time_to_first_token_max_ms: Option<u32>,
}

/// An open stream's link to the hub.
pub struct Session {
    pub id: u64,
    pub node: NodeName,
    pub desired: watch::Receiver<Arc<PushedState>>,
}

/// What the hub knows about a node right now.
#[derive(Debug, Clone, Default)]
pub struct NodeRuntime {
    pub connected: bool,
    /// Advertised in the hello of the node's open stream (in memory only).
    pub endpoints: Option<Endpoints>,
    pub last_heartbeat_at: Option<OffsetDateTime>,
    pub observed: Option<ObservedState>,
    pub health: Option<HealthSample>,
    /// The minute being folded, for views of the history.
    pub current_minute: Option<HealthPoint>,
}

/// See the module docs. Shared by the gRPC service, the fleet operations
/// and the flusher.
pub struct SyncHub {
    streams: Arc<streams::StreamRegistry>,
    reports: Arc<reports::ReportBuffer>,
    routing: routing::RoutingIndex,
    heartbeat_interval: Duration,
    /// False while other replicas may commit changes this one would not
    /// hear of (its change follower is not listening yet, or lost the
    /// connection). Always true where no other replica can exist.
    following_changes: AtomicBool,
    /// This replica's key for its routes in the store: random per process,
    /// so a restarted replica never takes over a dead one's stale slice.
    replica: String,
}

impl SyncHub {
    pub fn new(heartbeat_interval: Duration) -> Self {
        Self::with_route_queue(heartbeat_interval, routing::ROUTE_CHANGES_QUEUED_AT_MOST)
    }

    /// A hub whose routing index queues at most `route_changes` changes.
    fn with_route_queue(heartbeat_interval: Duration, route_changes: usize) -> Self {
        let (changes, queued) = routing::route_changes(route_changes);
        let streams = Arc::new(streams::StreamRegistry::new(changes.clone()));
        let reports = Arc::new(reports::ReportBuffer::new(changes));
        let sources: Vec<Arc<dyn routing::RouteSource>> = vec![streams.clone(), reports.clone()];
        Self {
            routing: routing::RoutingIndex::new(queued, sources, heartbeat_interval),
            streams,
            reports,
            heartbeat_interval,
            following_changes: AtomicBool::new(true),
            replica: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// Lists nodes only while the certificate issued on their stream is
    /// valid: set where the fleet has TLS (peers verify each other's node
    /// certificates there; without TLS nobody could).
    pub fn set_require_certificates(&self, required: bool) {
        self.routing.set_require_certificates(required);
    }

    /// Records that `node`'s open stream was issued a certificate valid
    /// until `expires_at`; it stays listed until then (renewals move it).
    pub fn certify(&self, session: &Session, expires_at: OffsetDateTime) {
        self.streams.certify(session, expires_at);
    }

    /// Whether changes committed by other replicas reach this one's
    /// streams promptly (part of the controller's readiness).
    pub fn following_changes(&self) -> bool {
        self.following_changes.load(Ordering::Relaxed)
    }

    pub(crate) fn set_following_changes(&self, following: bool) {
        self.following_changes.store(following, Ordering::Relaxed);
    }

    /// This replica's key for its routes in the store.
    pub fn replica(&self) -> &str {
        &self.replica
    }

    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// Registers a stream for `node`, replacing (and so ending) any older
    /// stream of the same node. Starts from `initial`; a concurrent
    /// [`SyncHub::publish`] of a newer state wins over it.
    pub fn connect(&self, node: &NodeName, initial: PushedState) -> Session {
        self.streams.connect(node, initial, || {
            self.reports.set_streaming(node, true);
        })
    }

    /// Ends `node`'s stream here, if one is open, and forgets where it
    /// said it serves and what it runs: the node was replaced or removed,
    /// and whatever held its old credential must reconnect (and fail its
    /// generation check).
    pub fn evict(&self, node: &NodeName) {
        self.streams.evict(node, || self.reports.evict(node));
    }

    /// Records where peers reach `node`'s inference APIs (from the hello of
    /// its open stream).
    pub fn advertise(&self, node: &NodeName, endpoints: Endpoints) {
        self.streams.advertise(node, endpoints);
    }

    /// A receiver of the routing directory, marked changed so that the
    /// first `changed()` returns at once.
    pub fn subscribe_directory(&self) -> watch::Receiver<Arc<Directory>> {
        self.routing.subscribe()
    }

    /// Publishes the directory (this replica's nodes and the other
    /// replicas' last entries) when it changed. Cost: the changes since the
    /// last call, and a build of O(offerings × pool + remote entries) only
    /// when one of them moved the directory.
    pub fn refresh_directory(&self) {
        self.routing.publish();
    }

    /// Records the other replicas' entries, read from the store just now.
    pub fn set_remote_routes(&self, remote: Vec<DirectoryEntry>) {
        self.routing.set_remote_routes(remote);
    }

    /// The directory entries of the nodes streaming to this replica, sorted.
    pub fn local_routes(&self) -> Vec<DirectoryEntry> {
        self.routing.local_routes()
    }

    /// Offers a state read from the store after [`SyncHub::connect`]; kept
    /// only if it is newer than what the session has.
    pub fn offer(&self, session: &Session, state: PushedState) {
        self.streams.offer(session, state);
    }

    /// Forgets a stream that ended, unless a newer one replaced it.
    pub fn disconnect(&self, session: &Session) {
        self.streams.disconnect(session, || {
            self.reports.set_streaming(&session.node, false);
        });
    }

    /// Pushes changed desired states to the streams that are open here.
    pub fn publish(&self, changes: &[NodeDesired]) {
        self.streams.publish(changes);
    }

    /// Records a heartbeat and its health sample.
    pub fn heartbeat(&self, node: &NodeName, sample: HealthSample, now: OffsetDateTime) {
        self.reports.heartbeat(node, sample, now);
    }

    /// Records an agent's report of its observed state.
    pub fn observe(&self, node: &NodeName, observed: ObservedState) {
        self.reports.observe(node, observed);
    }

    pub fn runtime(&self, node: &NodeName) -> Option<NodeRuntime> {
        // A node with a stream open here always has reports (maybe empty).
        let reports = self.reports.snapshot(node)?;
        Some(NodeRuntime {
            connected: self.streams.is_connected(node),
            endpoints: self.streams.endpoints(node),
            last_heartbeat_at: reports.last_heartbeat_at,
            observed: reports.observed,
            health: reports.health,
            current_minute: reports.current_minute,
        })
    }

    /// Whether a node counts as ready: a stream open here and a heartbeat
    /// within [`MISSED_HEARTBEATS`] intervals; for nodes streaming to
    /// another replica, a persisted heartbeat that recent (allowing for
    /// the flush delay). A node whose stream ended here is not ready until
    /// a heartbeat newer than that end is persisted (by the replica it
    /// moved to): before, a killed agent stayed ready for the whole window,
    /// about 20 s, on its own last persisted heartbeat.
    pub fn is_ready(&self, node: &NodeName, persisted_heartbeat: Option<OffsetDateTime>) -> bool {
        let window = self.heartbeat_interval * MISSED_HEARTBEATS;
        let now = OffsetDateTime::now_utc();
        let recent = |at: OffsetDateTime, window: Duration| {
            (now - at) <= time::Duration::try_from(window).unwrap_or(time::Duration::MAX)
        };
        let persisted_recent = |at: OffsetDateTime| recent(at, window + HEALTH_FLUSH_EVERY);
        match self.streams.connection(node) {
            Connection::Open => self
                .reports
                .last_heartbeat_at(node)
                .is_some_and(|at| recent(at, window)),
            Connection::Ended(ended) => persisted_heartbeat
                .filter(|at| *at > ended)
                .is_some_and(persisted_recent),
            Connection::Never => persisted_heartbeat.is_some_and(persisted_recent),
        }
    }

    /// [`ModelLoad`] per model served by a node that is in the directory
    /// (ready, heartbeating, reachable), by the assignment's model name.
    pub fn model_load(&self) -> BTreeMap<String, ModelLoad> {
        self.routing.model_load()
    }

    /// Nodes with a stream open here.
    pub fn stream_count(&self) -> usize {
        self.streams.open_count()
    }

    /// Takes what changed since the last take: observed states always;
    /// heartbeats, health and finished minutes of the shards `health_of`
    /// selects (by index).
    fn take_dirty(&self, health_of: impl Fn(usize) -> bool) -> reports::Batch {
        self.reports.take_dirty(health_of)
    }

    /// Marks a batch dirty again after its write failed, unless newer
    /// reports arrived meanwhile.
    fn restore(&self, batch: reports::Batch) {
        self.reports.restore(batch);
    }
}
