//! The controller's in-memory side of the sync streams: which nodes have a
//! stream open here, the latest desired state pushed to each, and what each
//! agent reported (observed state, latest health sample, last heartbeat).
//!
//! Nothing here is written per heartbeat. The [`Flusher`] takes what
//! changed every second (observed states) or every [`HEALTH_FLUSH_EVERY`]
//! (heartbeats and health), and writes it in one transaction per batch; a
//! heartbeat only touches one shard's mutex. Health is also folded into one
//! [`HealthPoint`] per node and minute, the down-sampled history.
//!
//! Fan-out of a desired-state change costs one `watch` send per changed node
//! that has a stream here; each stream's task wakes and sends the complete
//! state. A `watch` keeps only the latest value, so a slow agent skips
//! intermediate states instead of queueing them (level-triggered).
//!
//! The routing [`Directory`] (which ready node serves which model, and where
//! peers reach it) is rebuilt from the hub once per flusher tick, never per
//! heartbeat, cut to each offering's least busy nodes (`domain::pool`), and
//! published through one shared `watch` that every stream selects on:
//! publishing is O(1), a stream that lags skips to the latest, and each
//! stream sends its agent its own small view of it (`domain::view_for`).
//! Each node's advertised inference URLs come from its hello and live in
//! memory (a reconnect re-sends them); replicas exchange their nodes'
//! entries through the store (`Store::exchange_routes`), so a directory
//! spans the replicas.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::domain::{
    AssignmentPhase, DesiredState, HealthPoint, HealthSample, MinuteAccumulator, NodeDesired,
    NodeName, NodeStatus, ObservedState,
};
use crate::store::{NodeReport, Store};

pub use crate::domain::DirectoryEntry;

/// Shards of the node map: heartbeats of different nodes rarely contend.
const SHARDS: usize = 32;
/// How often observed states are written.
pub const OBSERVED_FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How often heartbeat times, latest health and finished minutes are
/// written. Readiness seen from another replica lags by up to this much.
pub const HEALTH_FLUSH_EVERY: Duration = Duration::from_secs(15);
/// Heartbeats a node may miss before it counts as not ready.
pub const MISSED_HEARTBEATS: u32 = 3;
/// Health history kept.
pub const HEALTH_RETENTION: Duration = Duration::from_secs(24 * 3600);

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

/// Granularity of [`DirectoryEntry::load`], in percent.
pub const LOAD_STEP: u32 = 10;

/// Another replica's routes count while it refreshed them this recently; a
/// live replica does every [`OBSERVED_FLUSH_EVERY`], so only a dead or cut
/// off one falls behind, and its nodes are soon streaming elsewhere.
pub const ROUTES_FRESH_FOR: Duration = Duration::from_secs(10);

/// Other replicas' routes are dropped when they could not be re-read for
/// this long (the store is unreachable): better no route than a dead one.
const REMOTE_ROUTES_EXPIRE: Duration = ROUTES_FRESH_FOR;

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
    /// Advertised in the node's latest hello (in memory only).
    pub endpoints: Option<Endpoints>,
    pub last_heartbeat_at: Option<OffsetDateTime>,
    pub observed: Option<ObservedState>,
    pub health: Option<HealthSample>,
    /// The minute being folded, for views of the history.
    pub current_minute: Option<HealthPoint>,
}

#[derive(Default)]
struct Entry {
    session: Option<(u64, watch::Sender<Arc<PushedState>>)>,
    endpoints: Option<Endpoints>,
    /// When the node certificate issued on the open stream expires (in
    /// memory only; each stream is issued its own).
    certificate_expires_at: Option<OffsetDateTime>,
    last_heartbeat_at: Option<OffsetDateTime>,
    observed: Option<ObservedState>,
    health: Option<HealthSample>,
    minute: Option<MinuteAccumulator>,
    finished_minutes: Vec<HealthPoint>,
    observed_dirty: bool,
    health_dirty: bool,
}

/// See the module docs. Shared by the gRPC service, the fleet operations
/// and the flusher.
pub struct SyncHub {
    shards: Vec<Mutex<HashMap<NodeName, Entry>>>,
    hasher: RandomState,
    next_session: AtomicU64,
    heartbeat_interval: Duration,
    /// False while other replicas may commit changes this one would not
    /// hear of (its change follower is not listening yet, or lost the
    /// connection). Always true where no other replica can exist.
    following_changes: AtomicBool,
    /// The latest routing directory; every stream holds a receiver.
    directory: watch::Sender<Arc<Directory>>,
    /// Other replicas' entries, as last read from the store (empty where
    /// there are none), with when they were read.
    remote_routes: Mutex<(Vec<DirectoryEntry>, Option<Instant>)>,
    /// This replica's key for its routes in the store: random per process,
    /// so a restarted replica never takes over a dead one's stale slice.
    replica: String,
    /// Whether a node is listed only while the certificate issued on its
    /// stream is valid: set where the fleet has TLS (peers verify each
    /// other's node certificates there; without TLS nobody could).
    require_certificates: AtomicBool,
}

impl SyncHub {
    pub fn new(heartbeat_interval: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            next_session: AtomicU64::new(1),
            heartbeat_interval,
            following_changes: AtomicBool::new(true),
            directory: watch::Sender::new(Arc::new(Directory::default())),
            remote_routes: Mutex::new((Vec::new(), None)),
            replica: format!("{:016x}", rand::random::<u64>()),
            require_certificates: AtomicBool::new(false),
        }
    }

    /// Lists nodes only while the certificate issued on their stream is
    /// valid (see the field).
    pub fn set_require_certificates(&self, required: bool) {
        self.require_certificates.store(required, Ordering::Relaxed);
    }

    /// Records that `node`'s open stream was issued a certificate valid
    /// until `expires_at`; it stays listed until then (renewals move it).
    pub fn certify(&self, session: &Session, expires_at: OffsetDateTime) {
        let mut shard = self.shard(&session.node);
        if let Some(entry) = shard.get_mut(&session.node)
            && entry
                .session
                .as_ref()
                .is_some_and(|(id, _)| *id == session.id)
        {
            entry.certificate_expires_at = Some(expires_at);
        }
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

    fn shard(&self, node: &NodeName) -> MutexGuard<'_, HashMap<NodeName, Entry>> {
        let index = (self.hasher.hash_one(node) as usize) % SHARDS;
        // A panic while holding a shard leaves plain data behind; keep going.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers a stream for `node`, replacing (and so ending) any older
    /// stream of the same node. Starts from `initial`; a concurrent
    /// [`SyncHub::publish`] of a newer state wins over it.
    pub fn connect(&self, node: &NodeName, initial: PushedState) -> Session {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(Arc::new(initial));
        let replaced = {
            let mut shard = self.shard(node);
            let entry = shard.entry(node.clone()).or_default();
            // A new stream is listed once it was issued its own certificate.
            entry.certificate_expires_at = None;
            entry.session.replace((id, sender)).is_some()
        };
        metrics::gauge!("flotilla_fleet_streams").increment(1.0);
        if replaced {
            metrics::gauge!("flotilla_fleet_streams").decrement(1.0);
            tracing::info!(node = %node, "a newer stream replaced the node's previous one");
        }
        Session {
            id,
            node: node.clone(),
            desired: receiver,
        }
    }

    /// Ends `node`'s stream here, if one is open, and forgets where it
    /// said it serves: the node was replaced or removed, and whatever held
    /// its old credential must reconnect (and fail its generation check).
    pub fn evict(&self, node: &NodeName) {
        let mut shard = self.shard(node);
        if let Some(entry) = shard.get_mut(node) {
            entry.endpoints = None;
            entry.observed = None;
            entry.certificate_expires_at = None;
            if entry.session.take().is_some() {
                metrics::gauge!("flotilla_fleet_streams").decrement(1.0);
                tracing::info!(node = %node, "ended the stream of a replaced or removed node");
            }
        }
    }

    fn certificates_required(&self) -> bool {
        self.require_certificates.load(Ordering::Relaxed)
    }

    /// Records where peers reach `node`'s inference APIs (from its hello).
    pub fn advertise(&self, node: &NodeName, endpoints: Endpoints) {
        let mut shard = self.shard(node);
        shard.entry(node.clone()).or_default().endpoints = Some(endpoints);
    }

    /// A receiver of the routing directory, marked changed so that the
    /// first `changed()` returns at once.
    pub fn subscribe_directory(&self) -> watch::Receiver<Arc<Directory>> {
        let mut receiver = self.directory.subscribe();
        receiver.mark_changed();
        receiver
    }

    /// Rebuilds the directory from what the hub knows (its own nodes and
    /// the other replicas' last entries) and publishes it when it changed.
    /// Cost: one pass over the nodes, once per call.
    pub fn refresh_directory(&self) {
        self.publish_routes(self.local_routes());
    }

    /// Records the other replicas' entries, read from the store just now.
    pub fn set_remote_routes(&self, remote: Vec<DirectoryEntry>) {
        *self.lock_remote_routes() = (remote, Some(Instant::now()));
    }

    /// Publishes `local` (from [`SyncHub::local_routes`]) with the other
    /// replicas' entries, when that changes the directory. Remote entries
    /// older than `REMOTE_ROUTES_EXPIRE` (the store could not be read since)
    /// are dropped rather than routed to for ever.
    pub fn publish_routes(&self, local: Vec<DirectoryEntry>) {
        let entries = {
            let mut remote = self.lock_remote_routes();
            if remote
                .1
                .is_some_and(|read_at| read_at.elapsed() > REMOTE_ROUTES_EXPIRE)
            {
                *remote = (Vec::new(), None);
            }
            crate::domain::pool(
                crate::domain::merge_routes(local, &remote.0),
                crate::domain::POOL_PER_OFFERING,
            )
        };
        let fresh = Directory { entries };
        self.directory.send_if_modified(|current| {
            if **current == fresh {
                false
            } else {
                *current = Arc::new(fresh);
                true
            }
        });
    }

    fn lock_remote_routes(&self) -> MutexGuard<'_, (Vec<DirectoryEntry>, Option<Instant>)> {
        self.remote_routes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The directory entries of the nodes streaming to this replica, sorted.
    pub fn local_routes(&self) -> Vec<DirectoryEntry> {
        let now = OffsetDateTime::now_utc();
        let window = time::Duration::try_from(self.heartbeat_interval * MISSED_HEARTBEATS)
            .unwrap_or(time::Duration::MAX);
        let mut entries = Vec::new();
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            entries.extend(shard.iter().filter_map(|(name, entry)| {
                directory_entry(name, entry, now, window, self.certificates_required())
            }));
        }
        entries.sort();
        entries
    }

    /// Offers a state read from the store after [`SyncHub::connect`]; kept
    /// only if it is newer than what the session has.
    pub fn offer(&self, session: &Session, state: PushedState) {
        let shard = self.shard(&session.node);
        if let Some(entry) = shard.get(&session.node)
            && let Some((id, sender)) = &entry.session
            && *id == session.id
        {
            send_if_newer(sender, state);
        }
    }

    /// Forgets a stream that ended, unless a newer one replaced it.
    pub fn disconnect(&self, session: &Session) {
        let mut shard = self.shard(&session.node);
        if let Some(entry) = shard.get_mut(&session.node)
            && entry
                .session
                .as_ref()
                .is_some_and(|(id, _)| *id == session.id)
        {
            entry.session = None;
            entry.certificate_expires_at = None;
            metrics::gauge!("flotilla_fleet_streams").decrement(1.0);
        }
    }

    /// Pushes changed desired states to the streams that are open here.
    pub fn publish(&self, changes: &[NodeDesired]) {
        let mut pushed = 0u64;
        for change in changes {
            let shard = self.shard(&change.name);
            if let Some(entry) = shard.get(&change.name)
                && let Some((_, sender)) = &entry.session
            {
                send_if_newer(
                    sender,
                    PushedState {
                        status: change.status,
                        desired: change.desired.clone(),
                    },
                );
                pushed += 1;
            }
        }
        metrics::counter!("flotilla_fleet_desired_pushes_total").increment(pushed);
    }

    /// Records a heartbeat and its health sample.
    pub fn heartbeat(&self, node: &NodeName, sample: HealthSample, now: OffsetDateTime) {
        let mut shard = self.shard(node);
        let entry = shard.entry(node.clone()).or_default();
        entry.last_heartbeat_at = Some(now);
        let minute = MinuteAccumulator::minute_of(sample.taken_at);
        match &mut entry.minute {
            Some(current) if current.minute() == minute => current.add(&sample),
            // Samples from a clock that went backwards join the current
            // minute rather than rewriting history.
            Some(current) if current.minute() > minute => current.add(&sample),
            slot => {
                let mut fresh = match slot.take() {
                    Some(finished) => {
                        entry.finished_minutes.push(finished.finish());
                        finished.next(sample.taken_at)
                    }
                    None => MinuteAccumulator::new(sample.taken_at),
                };
                fresh.add(&sample);
                *slot = Some(fresh);
            }
        }
        entry.health = Some(sample);
        entry.health_dirty = true;
    }

    /// Records an agent's report of its observed state.
    pub fn observe(&self, node: &NodeName, observed: ObservedState) {
        let mut shard = self.shard(node);
        let entry = shard.entry(node.clone()).or_default();
        entry.observed = Some(observed);
        entry.observed_dirty = true;
    }

    pub fn runtime(&self, node: &NodeName) -> Option<NodeRuntime> {
        let shard = self.shard(node);
        shard.get(node).map(|entry| NodeRuntime {
            connected: entry.session.is_some(),
            endpoints: entry.endpoints.clone(),
            last_heartbeat_at: entry.last_heartbeat_at,
            observed: entry.observed.clone(),
            health: entry.health.clone(),
            current_minute: entry.minute.as_ref().map(MinuteAccumulator::finish),
        })
    }

    /// Whether a node counts as ready: a stream open here and a heartbeat
    /// within [`MISSED_HEARTBEATS`] intervals; for nodes streaming to
    /// another replica, a persisted heartbeat that recent (allowing for
    /// the flush delay).
    pub fn is_ready(&self, node: &NodeName, persisted_heartbeat: Option<OffsetDateTime>) -> bool {
        let window = self.heartbeat_interval * MISSED_HEARTBEATS;
        let now = OffsetDateTime::now_utc();
        let recent = |at: OffsetDateTime, window: Duration| {
            (now - at) <= time::Duration::try_from(window).unwrap_or(time::Duration::MAX)
        };
        match self.runtime(node) {
            Some(runtime) if runtime.connected => runtime
                .last_heartbeat_at
                .is_some_and(|at| recent(at, window)),
            _ => persisted_heartbeat.is_some_and(|at| recent(at, window + HEALTH_FLUSH_EVERY)),
        }
    }

    /// [`ModelLoad`] per model served by a node that is in the directory
    /// (ready, heartbeating, reachable), by the assignment's model name.
    pub fn model_load(&self) -> BTreeMap<String, ModelLoad> {
        let now = OffsetDateTime::now_utc();
        let window = time::Duration::try_from(self.heartbeat_interval * MISSED_HEARTBEATS)
            .unwrap_or(time::Duration::MAX);
        let mut loads = BTreeMap::<String, ModelLoad>::new();
        for shard in &self.shards {
            let shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, entry) in shard.iter() {
                let Some(route) =
                    directory_entry(name, entry, now, window, self.certificates_required())
                else {
                    continue;
                };
                let load = loads.entry(route.model).or_default();
                load.nodes += 1;
                let Some(inference) = entry
                    .health
                    .as_ref()
                    .and_then(|health| health.inference.as_ref())
                else {
                    continue;
                };
                load.queue_depth += u64::from(inference.queue_depth);
                load.queue_capacity += u64::from(inference.queue_capacity);
                load.tokens_per_second += f64::from(inference.tokens_per_second);
                load.time_to_first_token_max_ms = load
                    .time_to_first_token_max_ms
                    .max(inference.time_to_first_token_max_ms);
            }
        }
        loads
    }

    /// Nodes with a stream open here.
    pub fn stream_count(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .values()
                    .filter(|entry| entry.session.is_some())
                    .count()
            })
            .sum()
    }

    /// Takes what changed since the last take: observed states always;
    /// heartbeats, health and finished minutes of the shards `health_of`
    /// selects (by index).
    fn take_dirty(&self, health_of: impl Fn(usize) -> bool) -> Batch {
        let mut batch = Batch::default();
        for (index, shard) in self.shards.iter().enumerate() {
            let with_health = health_of(index);
            let mut shard = shard
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, entry) in shard.iter_mut() {
                let observed = entry
                    .observed_dirty
                    .then(|| entry.observed.clone())
                    .flatten();
                let health_due = with_health && entry.health_dirty;
                if observed.is_none() && !health_due {
                    continue;
                }
                entry.observed_dirty = false;
                let mut report = NodeReport {
                    name: name.clone(),
                    observed,
                    health: None,
                    last_heartbeat_unix_ms: None,
                };
                if health_due {
                    entry.health_dirty = false;
                    report.health = entry.health.clone();
                    report.last_heartbeat_unix_ms = entry
                        .last_heartbeat_at
                        .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64);
                    batch.minutes.extend(
                        entry
                            .finished_minutes
                            .drain(..)
                            .map(|point| (name.clone(), point)),
                    );
                }
                batch.reports.push(report);
            }
            // Entries of nodes that left and were written can go.
            shard.retain(|_, entry| {
                entry.session.is_some()
                    || entry.observed_dirty
                    || entry.health_dirty
                    || !entry.finished_minutes.is_empty()
            });
        }
        batch
    }

    /// Marks a batch dirty again after its write failed, unless newer
    /// reports arrived meanwhile.
    fn restore(&self, batch: Batch) {
        for report in batch.reports {
            let mut shard = self.shard(&report.name);
            let entry = shard.entry(report.name.clone()).or_default();
            if report.observed.is_some() && entry.observed.is_none() {
                entry.observed = report.observed;
            }
            entry.observed_dirty |= entry.observed.is_some();
            if report.health.is_some() {
                entry.health_dirty = true;
                if entry.health.is_none() {
                    entry.health = report.health;
                }
            }
        }
        for (name, point) in batch.minutes {
            self.shard(&name)
                .entry(name)
                .or_default()
                .finished_minutes
                .push(point);
        }
    }
}

/// `entry` as a directory entry when the node can take routed requests: a
/// stream open here, approved (a pending node is not a peer, whatever it
/// claims), a heartbeat within `window`, its assignment READY and serving,
/// an advertised URL, and, when `require_certificate`, a node certificate
/// issued on this stream that has not expired.
fn directory_entry(
    name: &NodeName,
    entry: &Entry,
    now: OffsetDateTime,
    window: time::Duration,
    require_certificate: bool,
) -> Option<DirectoryEntry> {
    let (_, sender) = entry.session.as_ref()?;
    if require_certificate && entry.certificate_expires_at.is_none_or(|at| at <= now) {
        return None;
    }
    let recent = entry.last_heartbeat_at.is_some_and(|at| now - at <= window);
    let observed = entry.observed.as_ref()?;
    let endpoints = entry.endpoints.as_ref()?;
    if !recent
        || observed.phase != AssignmentPhase::Ready
        || observed.serving_digest.is_none()
        || (endpoints.http_url.is_empty() && endpoints.grpc_url.is_empty())
    {
        return None;
    }
    let pushed = sender.borrow();
    if pushed.status == NodeStatus::Pending {
        return None;
    }
    let assignment = pushed.desired.assignment.as_ref()?;
    // A report about an older desired state may describe another model.
    if observed.digest.as_deref() != Some(assignment.digest.as_str()) {
        return None;
    }
    let queue_depth = entry
        .health
        .as_ref()
        .and_then(|health| health.inference.as_ref())
        .map_or(0, |inference| inference.queue_depth);
    let load = entry.health.as_ref().map_or(0, |health| {
        // Finite and within 0..=100 once converted from the wire.
        let percent = health.cpu_utilisation_percent.clamp(0.0, 100.0) as u32;
        percent - percent % LOAD_STEP
    });
    Some(DirectoryEntry {
        model: assignment.model.clone(),
        version: assignment.version.clone(),
        node: name.clone(),
        http_url: endpoints.http_url.clone(),
        grpc_url: endpoints.grpc_url.clone(),
        load,
        queue_depth,
        aliases: assignment.aliases.clone(),
        digest: assignment.digest.clone(),
        size_bytes: assignment.size_bytes,
        quantization: assignment.quantization.clone(),
    })
}

fn send_if_newer(sender: &watch::Sender<Arc<PushedState>>, state: PushedState) {
    sender.send_if_modified(|current| {
        if state.supersedes(current) {
            *current = Arc::new(state);
            true
        } else {
            false
        }
    });
}

#[derive(Default)]
struct Batch {
    reports: Vec<NodeReport>,
    minutes: Vec<(NodeName, HealthPoint)>,
}

/// Writes the hub's reports to the store in batches until cancelled, then
/// once more so that a clean shutdown loses nothing.
pub struct Flusher {
    hub: Arc<SyncHub>,
    store: Arc<dyn Store>,
}

impl Flusher {
    pub fn new(hub: Arc<SyncHub>, store: Arc<dyn Store>) -> Self {
        Self { hub, store }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(OBSERVED_FLUSH_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let health_every =
            (HEALTH_FLUSH_EVERY.as_millis() / OBSERVED_FLUSH_EVERY.as_millis()).max(1);
        let prune_every = 600 * health_every / 15;
        let mut tick: u128 = 0;
        let mut published_routes = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => break,
            }
            tick += 1;
            self.exchange_routes(&mut published_routes).await;
            // Each round writes the health of one slice of the shards, so
            // every node's is written once per HEALTH_FLUSH_EVERY without a
            // burst of the whole fleet at once.
            let phase = tick % health_every;
            self.flush(|shard| (shard as u128) % health_every == phase)
                .await;
            if tick.is_multiple_of(prune_every.max(1)) {
                self.prune().await;
            }
            metrics::gauge!("flotilla_fleet_streams_open").set(self.hub.stream_count() as f64);
        }
        self.flush(|_| true).await;
        // The other replicas stop routing here at once, not after
        // ROUTES_FRESH_FOR; the agents streaming here reconnect elsewhere.
        if let Err(error) = self
            .store
            .exchange_routes(self.hub.replica(), &[], true, ROUTES_FRESH_FOR)
            .await
        {
            tracing::warn!(%error, "could not withdraw this replica's routes");
        }
    }

    /// Publishes this replica's routes to the other replicas (when they
    /// changed since the last successful publish; otherwise only marks them
    /// fresh), takes theirs, and publishes the merged directory to the
    /// streams here. Where the store has no other replicas (SQLite) the
    /// directory is this replica's own.
    async fn exchange_routes(&self, published: &mut Option<Vec<DirectoryEntry>>) {
        let local = self.hub.local_routes();
        let changed = published.as_ref() != Some(&local);
        match self
            .store
            .exchange_routes(self.hub.replica(), &local, changed, ROUTES_FRESH_FOR)
            .await
        {
            Ok(Some(remote)) => {
                if changed {
                    *published = Some(local.clone());
                }
                self.hub.set_remote_routes(remote);
            }
            Ok(None) => {}
            Err(error) => {
                tracing::warn!(%error, "could not exchange routes with the other controller replicas; will retry");
                // Whether it committed is unknown: publish in full next time.
                *published = None;
            }
        }
        self.hub.publish_routes(local);
    }

    /// Writes what changed (health only for the shards `health_of`
    /// selects); on failure keeps it for the next round.
    pub async fn flush(&self, health_of: impl Fn(usize) -> bool) {
        let batch = self.hub.take_dirty(health_of);
        if batch.reports.is_empty() && batch.minutes.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let mut failed = false;
        if !batch.reports.is_empty()
            && let Err(error) = self.store.write_reports(&batch.reports).await
        {
            tracing::warn!(%error, reports = batch.reports.len(), "could not write agent reports; will retry");
            failed = true;
        }
        if !failed
            && !batch.minutes.is_empty()
            && let Err(error) = self.store.write_health_minutes(&batch.minutes).await
        {
            tracing::warn!(%error, "could not write health history; will retry");
            failed = true;
        }
        metrics::histogram!("flotilla_fleet_flush_seconds").record(started.elapsed().as_secs_f64());
        if failed {
            self.hub.restore(batch);
        } else {
            metrics::counter!("flotilla_fleet_reports_written_total")
                .increment(batch.reports.len() as u64);
        }
    }

    async fn prune(&self) {
        let cutoff = OffsetDateTime::now_utc().unix_timestamp() - HEALTH_RETENTION.as_secs() as i64;
        match self.store.prune_health_minutes(cutoff).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "pruned old health history"),
            Err(error) => tracing::warn!(%error, "could not prune health history"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(generation: u64, status: NodeStatus) -> PushedState {
        PushedState {
            status,
            desired: DesiredState {
                generation,
                assignment: None,
            },
        }
    }

    #[test]
    fn newer_states_replace_older_and_stale_ones_are_ignored() {
        let hub = SyncHub::new(Duration::from_secs(5));
        let node: NodeName = "edge-1".parse().expect("valid");
        let session = hub.connect(&node, state(0, NodeStatus::Active));
        hub.publish(&[NodeDesired {
            name: node.clone(),
            status: NodeStatus::Active,
            desired: DesiredState {
                generation: 7,
                assignment: None,
            },
        }]);
        // A read from the store that raced the publish is older: ignored.
        hub.offer(&session, state(5, NodeStatus::Active));
        assert_eq!(session.desired.borrow().desired.generation, 7);
        hub.offer(&session, state(7, NodeStatus::Cordoned));
        assert_eq!(session.desired.borrow().status, NodeStatus::Cordoned);

        // A second stream of the node ends the first.
        let newer = hub.connect(&node, state(7, NodeStatus::Active));
        assert!(session.desired.has_changed().is_err());
        hub.disconnect(&session);
        assert!(hub.runtime(&node).expect("known").connected);
        hub.disconnect(&newer);
        assert!(!hub.runtime(&node).expect("known").connected);
    }

    fn sample(now: OffsetDateTime, cpu: f32) -> HealthSample {
        HealthSample {
            taken_at: now,
            cpu_utilisation_percent: cpu,
            memory_used_bytes: 1,
            memory_total_bytes: 2,
            disk_available_bytes: None,
            cpu_temperature_celsius: None,
            gpus: Vec::new(),
            inference: Some(crate::domain::InferenceHealth {
                queue_depth: 3,
                queue_capacity: 20,
                completed_total: 0,
                rejected_total: 0,
                failed_total: 0,
                cancelled_total: 0,
                generated_tokens_total: 0,
                tokens_per_second: 0.0,
                time_to_first_token_p50_ms: None,
                time_to_first_token_max_ms: None,
                serving_digest: None,
                completed_since_activation: 0,
                failed_since_activation: 0,
            }),
        }
    }

    fn assigned(generation: u64, model: &str, digest: &str) -> PushedState {
        PushedState {
            status: NodeStatus::Active,
            desired: DesiredState {
                generation,
                assignment: Some(crate::domain::DesiredAssignment {
                    model: model.to_owned(),
                    version: "v1".to_owned(),
                    quantization: "Q4_1".to_owned(),
                    digest: digest.to_owned(),
                    size_bytes: 1,
                    prompt: None,
                    prompt_policy: crate::domain::PromptPolicy::default(),
                    aliases: vec!["chat".to_owned()],
                    assignment_generation: 1,
                    target: "node=a".to_owned(),
                }),
            },
        }
    }

    fn observed(digest: &str, phase: AssignmentPhase) -> ObservedState {
        ObservedState {
            generation: 1,
            digest: Some(digest.to_owned()),
            phase,
            bytes_done: 0,
            bytes_total: 0,
            reason: None,
            serving_digest: (phase == AssignmentPhase::Ready).then(|| digest.to_owned()),
        }
    }

    #[test]
    fn pending_and_evicted_nodes_are_no_peers() {
        let hub = SyncHub::new(Duration::from_secs(5));
        let now = OffsetDateTime::now_utc();
        let a: NodeName = "a".parse().expect("valid");
        let pending = PushedState {
            status: NodeStatus::Pending,
            ..assigned(1, "smollm2", "aa")
        };
        let session = hub.connect(&a, pending);
        hub.advertise(
            &a,
            Endpoints {
                http_url: "http://127.0.0.1:1000".to_owned(),
                grpc_url: String::new(),
            },
        );
        hub.observe(&a, observed("aa", AssignmentPhase::Ready));
        hub.heartbeat(&a, sample(now, 1.0), now);
        // Claims READY with a matching digest, but is not approved.
        assert!(hub.local_routes().is_empty());
        hub.offer(
            &session,
            PushedState {
                status: NodeStatus::Active,
                ..assigned(2, "smollm2", "aa")
            },
        );
        assert_eq!(hub.local_routes().len(), 1);
        // Replaced or removed: gone, and its stream's watch is closed.
        hub.evict(&a);
        assert!(hub.local_routes().is_empty());
        assert!(session.desired.has_changed().is_err());
    }

    #[test]
    fn where_certificates_are_required_a_node_is_listed_only_while_its_certificate_is_valid() {
        let hub = SyncHub::new(Duration::from_secs(5));
        hub.set_require_certificates(true);
        let now = OffsetDateTime::now_utc();
        let a: NodeName = "a".parse().expect("valid");
        let session = hub.connect(&a, assigned(1, "smollm2", "aa"));
        hub.advertise(
            &a,
            Endpoints {
                http_url: "https://127.0.0.1:1000".to_owned(),
                grpc_url: String::new(),
            },
        );
        hub.observe(&a, observed("aa", AssignmentPhase::Ready));
        hub.heartbeat(&a, sample(now, 1.0), now);
        // Ready and heartbeating, but never issued a certificate.
        assert!(hub.local_routes().is_empty());
        hub.certify(&session, now + time::Duration::hours(1));
        assert_eq!(hub.local_routes().len(), 1);
        // Expired: gone until a renewal certifies it again.
        hub.certify(&session, now - time::Duration::seconds(1));
        assert!(hub.local_routes().is_empty());
        assert!(hub.model_load().is_empty());
        hub.certify(&session, now + time::Duration::hours(1));
        assert_eq!(hub.local_routes().len(), 1);
        // A new stream of the node (a replacement, say) starts uncertified,
        // and an older session cannot certify it.
        let newer = hub.connect(&a, assigned(1, "smollm2", "aa"));
        hub.observe(&a, observed("aa", AssignmentPhase::Ready));
        hub.certify(&session, now + time::Duration::hours(1));
        assert!(hub.local_routes().is_empty());
        hub.certify(&newer, now + time::Duration::hours(1));
        assert_eq!(hub.local_routes().len(), 1);
    }

    #[test]
    fn the_directory_lists_ready_streaming_nodes_and_publishes_only_changes() {
        let hub = SyncHub::new(Duration::from_secs(5));
        let mut directory = hub.subscribe_directory();
        assert!(directory.has_changed().expect("open"));
        directory.borrow_and_update();
        let now = OffsetDateTime::now_utc();
        let endpoints = |port: u16| Endpoints {
            http_url: format!("http://127.0.0.1:{port}"),
            grpc_url: format!("http://127.0.0.1:{}", port + 1),
        };
        let a: NodeName = "a".parse().expect("valid");
        let b: NodeName = "b".parse().expect("valid");
        let c: NodeName = "c".parse().expect("valid");
        let _a = hub.connect(&a, assigned(1, "smollm2", "aa"));
        hub.advertise(&a, endpoints(1000));
        hub.observe(&a, observed("aa", AssignmentPhase::Ready));
        hub.heartbeat(&a, sample(now, 37.5), now);
        // Still loading: not listed.
        let _b = hub.connect(&b, assigned(1, "smollm2", "bb"));
        hub.advertise(&b, endpoints(2000));
        hub.observe(&b, observed("bb", AssignmentPhase::Loading));
        hub.heartbeat(&b, sample(now, 1.0), now);
        // Ready but never heartbeated: not listed.
        let _c = hub.connect(&c, assigned(1, "smollm2", "cc"));
        hub.advertise(&c, endpoints(3000));
        hub.observe(&c, observed("cc", AssignmentPhase::Ready));

        hub.refresh_directory();
        assert!(directory.has_changed().expect("open"));
        let listed = directory.borrow_and_update().clone();
        assert_eq!(
            listed.entries,
            vec![DirectoryEntry {
                model: "smollm2".to_owned(),
                version: "v1".to_owned(),
                node: a.clone(),
                http_url: "http://127.0.0.1:1000".to_owned(),
                grpc_url: "http://127.0.0.1:1001".to_owned(),
                load: 30,
                queue_depth: 3,
                aliases: vec!["chat".to_owned()],
                digest: "aa".to_owned(),
                size_bytes: 1,
                quantization: "Q4_1".to_owned(),
            }]
        );
        // Nothing changed (a load wobble within one step): nothing is sent.
        hub.heartbeat(&a, sample(now, 39.0), now);
        hub.refresh_directory();
        assert!(!directory.has_changed().expect("open"));

        hub.observe(&b, observed("bb", AssignmentPhase::Ready));
        hub.refresh_directory();
        assert!(directory.has_changed().expect("open"));
        let nodes: Vec<_> = directory
            .borrow_and_update()
            .entries
            .iter()
            .map(|entry| entry.node.to_string())
            .collect();
        assert_eq!(nodes, ["a", "b"]);
        // The per-model figures sum the listed nodes (c is not listed).
        assert_eq!(
            hub.model_load().into_iter().collect::<Vec<_>>(),
            [(
                "smollm2".to_owned(),
                ModelLoad {
                    nodes: 2,
                    queue_depth: 6,
                    queue_capacity: 40,
                    tokens_per_second: 0.0,
                    time_to_first_token_max_ms: None,
                }
            )]
        );

        // A closed stream drops the node.
        hub.disconnect(&_a);
        hub.refresh_directory();
        let nodes: Vec<_> = directory
            .borrow_and_update()
            .entries
            .iter()
            .map(|entry| entry.node.to_string())
            .collect();
        assert_eq!(nodes, ["b"]);
    }

    #[test]
    fn dirty_reports_are_taken_once_and_restored_on_failure() {
        let hub = SyncHub::new(Duration::from_secs(1));
        let node: NodeName = "edge-1".parse().expect("valid");
        let _session = hub.connect(&node, state(0, NodeStatus::Active));
        let now = OffsetDateTime::now_utc();
        hub.heartbeat(
            &node,
            HealthSample {
                taken_at: now,
                cpu_utilisation_percent: 5.0,
                memory_used_bytes: 1,
                memory_total_bytes: 2,
                disk_available_bytes: None,
                cpu_temperature_celsius: None,
                gpus: Vec::new(),
                inference: None,
            },
            now,
        );
        assert!(hub.is_ready(&node, None));
        let batch = hub.take_dirty(|_| false);
        assert!(
            batch.reports.is_empty(),
            "health waits for its shard's round"
        );
        let batch = hub.take_dirty(|_| true);
        assert_eq!(batch.reports.len(), 1);
        assert!(hub.take_dirty(|_| true).reports.is_empty());
        hub.restore(batch);
        assert_eq!(hub.take_dirty(|_| true).reports.len(), 1);
    }
}
