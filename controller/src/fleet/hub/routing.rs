//! The routing index: which of the nodes streaming here can take routed
//! requests, per offering, kept up to date as nodes change; and the routing
//! [`Directory`] published from it to every stream.
//!
//! The stream registry and the report buffer hand every change that can
//! move a node in or out of the directory to the index as a [`RouteChange`]
//! (the node's stream, its observed state, its latest heartbeat) over a
//! bounded channel, while they still hold the node's shard lock: so the
//! index sees one node's changes in their order, and neither a heartbeat
//! nor a fan-out ever waits for the index's own lock. The index applies the
//! changes in batches (every [`ROUTE_CHANGES_APPLIED_EVERY`], and before
//! anything reads it), each in O(log nodes): a node's entry is rebuilt only
//! when something it shows changed, and time (a heartbeat growing old, a
//! certificate expiring) is one timer per listed node. If the channel ever
//! fills because nothing applied it for a while, senders note that changes
//! were lost and the index rebuilds itself once from the registry and the
//! buffer ([`RouteSource`]), instead of queueing without bound.
//!
//! Listed nodes are kept per offering (model, version and aliases: what a
//! client can ask for), least busy first in the order `domain::pool` cuts
//! by, so the published directory (the [`POOL_PER_OFFERING`] least busy
//! per offering, merged with the other replicas' entries) is built from
//! O(offerings × pool + remote entries), and only when something changed.
//! Publishing goes through one shared `watch` that every stream selects on,
//! and only when the directory differs from the last one: publishing is
//! O(1), a stream that lags skips to the latest, and each stream sends its
//! agent its own small view (`domain::view_for`).
//!
//! Replicas exchange their local entries, all of them, through the store
//! (`Store::exchange_routes`, driven by the flusher); the index numbers each
//! change of them ([`RoutingIndex::local_routes_version`]) so that the
//! flusher copies them out only when they changed. Everything here is in
//! memory.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use tokio::sync::watch;

use super::{
    Directory, Endpoints, LOAD_STEP, MISSED_HEARTBEATS, ModelLoad, PushedState, ROUTES_FRESH_FOR,
};
use crate::domain::{
    AssignmentPhase, DesiredAssignment, Digest, DirectoryEntry, HealthSample, ModelName, NodeName,
    NodeStatus, ObservedState, POOL_PER_OFFERING, merge_routes, pool,
};

/// How often queued changes are applied even when nobody reads the index,
/// so that the queue stays short.
pub(super) const ROUTE_CHANGES_APPLIED_EVERY: Duration = Duration::from_millis(100);

/// Changes the channel holds before senders count them as lost: over six
/// seconds of heartbeats from 10,000 nodes, where one
/// [`ROUTE_CHANGES_APPLIED_EVERY`] brings a tenth of a second's. Its slots
/// are allocated up front (about 5 MiB).
pub(super) const ROUTE_CHANGES_QUEUED_AT_MOST: usize = 1 << 16;

/// Other replicas' routes are dropped when they could not be re-read for
/// this long (the store is unreachable): better no route than a dead one.
const REMOTE_ROUTES_EXPIRE: Duration = ROUTES_FRESH_FOR;

/// One change of what the index knows about a node. Each carries the whole
/// of its part (the stream, the observed state, the latest heartbeat), so
/// the latest one of each kind is the truth.
pub(super) enum RouteChange {
    /// The node's stream here (`None`: it has none).
    Stream {
        node: NodeName,
        stream: Option<StreamRoute>,
    },
    Observed {
        node: NodeName,
        observed: Option<ObservedRoute>,
    },
    Heartbeat {
        node: NodeName,
        liveness: Option<Liveness>,
    },
    /// The report buffer dropped the node's reports (it left and they were
    /// written): no observed state and no heartbeat any more.
    Forgotten { node: NodeName },
}

/// What the index needs of an open stream.
#[derive(Debug, Clone)]
pub(super) struct StreamRoute {
    pub(super) pushed: Arc<PushedState>,
    pub(super) endpoints: Option<Arc<Endpoints>>,
    /// When the certificate issued on this stream expires, if it was
    /// issued one.
    pub(super) certificate_expires_at: Option<OffsetDateTime>,
}

/// What the index needs of an observed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ObservedRoute {
    /// The artifact the report is about.
    digest: Option<String>,
    /// READY and serving it.
    serving: bool,
}

impl ObservedRoute {
    pub(super) fn of(observed: &ObservedState) -> Self {
        Self {
            digest: observed.digest.clone(),
            serving: observed.phase == AssignmentPhase::Ready && observed.serving_digest.is_some(),
        }
    }
}

/// What the index needs of a node's latest heartbeat: when it came, and
/// the load figures the directory and the per-model gauges show.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Liveness {
    heard_at: OffsetDateTime,
    /// CPU utilisation in percent, rounded down to a [`LOAD_STEP`].
    load: u32,
    inference: Option<InferenceLoad>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct InferenceLoad {
    queue_depth: u32,
    queue_capacity: u32,
    tokens_per_second: f32,
    time_to_first_token_max_ms: Option<u32>,
}

impl Liveness {
    pub(super) fn of(heard_at: OffsetDateTime, sample: &HealthSample) -> Self {
        // Finite and within 0..=100 once converted from the wire.
        let percent = sample.cpu_utilisation_percent.clamp(0.0, 100.0) as u32;
        Self {
            heard_at,
            load: percent - percent % LOAD_STEP,
            inference: sample.inference.as_ref().map(|inference| InferenceLoad {
                queue_depth: inference.queue_depth,
                queue_capacity: inference.queue_capacity,
                tokens_per_second: inference.tokens_per_second,
                time_to_first_token_max_ms: inference.time_to_first_token_max_ms,
            }),
        }
    }

    fn queue_depth(&self) -> u32 {
        self.inference.map_or(0, |inference| inference.queue_depth)
    }

    /// What of the heartbeat a directory entry shows.
    fn shown(&self) -> (u32, u32) {
        (self.queue_depth(), self.load)
    }
}

/// The sending half of the index's changes; see the module docs.
#[derive(Clone)]
pub(super) struct RouteChanges {
    sender: SyncSender<RouteChange>,
    lost: Arc<AtomicBool>,
}

impl RouteChanges {
    /// Queues `change` for the index, without waiting: when the queue is
    /// full, marks changes lost so the index rebuilds itself.
    pub(super) fn send(&self, change: RouteChange) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            self.sender.try_send(change)
        {
            self.lost.store(true, Ordering::Release);
        }
    }
}

/// Where the index re-reads everything when it lost changes: each source
/// hands it its current facts of every node, as changes.
pub(super) trait RouteSource: Send + Sync {
    fn replay(&self, sink: &mut dyn FnMut(RouteChange));
}

/// The receiving half, before it is joined to the index.
pub(super) struct QueuedRouteChanges {
    receiver: Receiver<RouteChange>,
    lost: Arc<AtomicBool>,
}

/// A channel of route changes holding up to `capacity`.
pub(super) fn route_changes(capacity: usize) -> (RouteChanges, QueuedRouteChanges) {
    let (sender, receiver) = std::sync::mpsc::sync_channel(capacity);
    let lost = Arc::new(AtomicBool::new(false));
    (
        RouteChanges {
            sender,
            lost: lost.clone(),
        },
        QueuedRouteChanges { receiver, lost },
    )
}

/// See the module docs.
pub(super) struct RoutingIndex {
    index: Mutex<Index>,
    lost: Arc<AtomicBool>,
    sources: Vec<Arc<dyn RouteSource>>,
    /// The latest routing directory; every stream holds a receiver.
    directory: watch::Sender<Arc<Directory>>,
}

impl RoutingIndex {
    pub(super) fn new(
        changes: QueuedRouteChanges,
        sources: Vec<Arc<dyn RouteSource>>,
        heartbeat_interval: Duration,
    ) -> Self {
        let window = time::Duration::try_from(heartbeat_interval * MISSED_HEARTBEATS)
            .unwrap_or(time::Duration::MAX);
        Self {
            index: Mutex::new(Index::new(changes.receiver, window)),
            lost: changes.lost,
            sources,
            directory: watch::Sender::new(Arc::new(Directory::default())),
        }
    }

    /// The index with every change queued so far applied and its timers
    /// run up to now.
    fn current(&self) -> MutexGuard<'_, Index> {
        let mut index = self.index.lock().unwrap_or_else(PoisonError::into_inner);
        let now = OffsetDateTime::now_utc();
        if self.lost.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                "the routing index fell behind its changes; rebuilding it from the open streams and reports"
            );
            index.rebuild(&self.sources, now);
        }
        index.apply_queued(now);
        index.expire(now);
        index
    }

    /// Applies the changes queued so far.
    pub(super) fn apply_changes(&self) {
        drop(self.current());
    }

    /// Lists nodes only while the certificate issued on their stream is
    /// valid (where the fleet has TLS: peers verify each other's node
    /// certificates there; without TLS nobody could).
    pub(super) fn set_require_certificates(&self, required: bool) {
        self.current()
            .set_require_certificates(required, OffsetDateTime::now_utc());
    }

    /// A receiver of the routing directory, marked changed so that the
    /// first `changed()` returns at once.
    pub(super) fn subscribe(&self) -> watch::Receiver<Arc<Directory>> {
        let mut receiver = self.directory.subscribe();
        receiver.mark_changed();
        receiver
    }

    /// Publishes the directory (this replica's least busy nodes per
    /// offering with the other replicas' entries) when it changed. Remote
    /// entries older than `REMOTE_ROUTES_EXPIRE` (the store could not be
    /// read since) are dropped rather than routed to for ever.
    pub(super) fn publish(&self) {
        self.current().publish(&self.directory);
    }

    /// Records the other replicas' entries, read from the store just now.
    pub(super) fn set_remote_routes(&self, remote: Vec<DirectoryEntry>) {
        self.index
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set_remote_routes(remote);
    }

    /// The directory entries of the nodes streaming here, sorted.
    pub(super) fn local_routes(&self) -> Vec<DirectoryEntry> {
        self.current().local_routes()
    }

    /// A number that changes whenever [`RoutingIndex::local_routes`] does.
    pub(super) fn local_routes_version(&self) -> u64 {
        self.current().listing.version
    }

    /// [`RoutingIndex::local_routes`] with its version.
    pub(super) fn versioned_local_routes(&self) -> (u64, Vec<DirectoryEntry>) {
        let index = self.current();
        (index.listing.version, index.local_routes())
    }

    /// See [`ModelLoad`]: summed over the listed nodes.
    pub(super) fn model_load(&self) -> BTreeMap<String, ModelLoad> {
        self.current().model_load()
    }
}

/// When a listed node stops being listed unless something changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Lapse {
    At(OffsetDateTime),
    Never,
}

/// What client requests a node's entry can serve: entries of one offering
/// are interchangeable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Offering {
    model: ModelName,
    version: String,
    aliases: Vec<ModelName>,
}

impl Offering {
    fn of(entry: &DirectoryEntry) -> Self {
        Self {
            model: entry.model.clone(),
            version: entry.version.clone(),
            aliases: entry.aliases.clone(),
        }
    }
}

/// Where a listed node stands in its offering: least busy first, equally
/// busy ones by a hash of the name. The same order as `domain::pool`'s cut,
/// so that an offering's first [`POOL_PER_OFFERING`] are the ones it keeps.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    queue_depth: u32,
    load: u32,
    tie: u64,
    node: NodeName,
}

impl Rank {
    fn of(entry: &DirectoryEntry) -> Self {
        // The hash `domain::pool` splits ties by: the same `DefaultHasher`
        // over the same one-element slice.
        let mut hasher = DefaultHasher::new();
        let parts: &[&str] = &[entry.node.as_str()];
        parts.hash(&mut hasher);
        Self {
            queue_depth: entry.queue_depth,
            load: entry.load,
            tie: hasher.finish(),
            node: entry.node.clone(),
        }
    }
}

/// What the index knows of one node, from the changes it was handed.
#[derive(Debug, Default)]
struct NodeFacts {
    stream: Option<StreamRoute>,
    observed: Option<ObservedRoute>,
    liveness: Option<Liveness>,
}

impl NodeFacts {
    fn is_empty(&self) -> bool {
        self.stream.is_none() && self.observed.is_none() && self.liveness.is_none()
    }

    /// When the node can take routed requests, until when: a stream open
    /// here, approved (a pending node is not a peer, whatever it claims), a
    /// heartbeat within `window`, its assignment READY and serving, an
    /// advertised URL, and, when `require_certificate`, a node certificate
    /// issued on this stream that has not expired.
    fn lapse(
        &self,
        now: OffsetDateTime,
        window: time::Duration,
        require_certificate: bool,
    ) -> Option<Lapse> {
        let stream = self.stream.as_ref()?;
        if stream.pushed.status == NodeStatus::Pending {
            return None;
        }
        let assignment = stream.pushed.desired.assignment.as_ref()?;
        let observed = self.observed.as_ref()?;
        // A report about an older desired state may describe another model.
        if !observed.serving || observed.digest.as_deref() != Some(assignment.digest.as_str()) {
            return None;
        }
        let endpoints = stream.endpoints.as_ref()?;
        if endpoints.http_url.is_empty() && endpoints.grpc_url.is_empty() {
            return None;
        }
        let liveness = self.liveness.as_ref()?;
        if now - liveness.heard_at > window {
            return None;
        }
        // Listed while `now - heard_at <= window`: up to the nanosecond after.
        let mut lapse = liveness
            .heard_at
            .checked_add(window)
            .and_then(|at| at.checked_add(time::Duration::NANOSECOND))
            .map_or(Lapse::Never, Lapse::At);
        if require_certificate {
            let expires_at = stream.certificate_expires_at?;
            if expires_at <= now {
                return None;
            }
            lapse = lapse.min(Lapse::At(expires_at));
        }
        Some(lapse)
    }

    /// The node's directory entry, when it has everything one shows.
    fn entry(&self, node: &NodeName) -> Option<DirectoryEntry> {
        let stream = self.stream.as_ref()?;
        let assignment = stream.pushed.desired.assignment.as_ref()?;
        let endpoints = stream.endpoints.as_ref()?;
        let liveness = self.liveness.as_ref()?;
        directory_entry(
            node,
            assignment,
            endpoints,
            liveness.load,
            liveness.queue_depth(),
            liveness
                .inference
                .map_or(0, |inference| inference.queue_capacity),
        )
    }
}

/// `node`'s entry, serving `assignment` at `endpoints` with these figures.
/// The assignment holds its names and digest as text, checked when it was
/// made; one that does not parse is a corrupt record, and its node is not
/// routed to rather than sent to peers with a half-empty entry.
pub(super) fn directory_entry(
    node: &NodeName,
    assignment: &DesiredAssignment,
    endpoints: &Endpoints,
    load: u32,
    queue_depth: u32,
    queue_capacity: u32,
) -> Option<DirectoryEntry> {
    let parsed = assignment.model.parse::<ModelName>().and_then(|model| {
        let aliases = assignment
            .aliases
            .iter()
            .map(|alias| alias.parse::<ModelName>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok((model, aliases))
    });
    let (model, aliases) = match parsed {
        Ok(names) => names,
        Err(error) => {
            tracing::warn!(node = %node, %error, "not routing to a node whose assignment names do not parse");
            return None;
        }
    };
    let digest = match assignment.digest.parse::<Digest>() {
        Ok(digest) => digest,
        Err(error) => {
            tracing::warn!(node = %node, %error, "not routing to a node whose assignment digest does not parse");
            return None;
        }
    };
    Some(DirectoryEntry {
        model,
        version: assignment.version.clone(),
        node: node.clone(),
        http_url: endpoints.http_url.clone(),
        grpc_url: endpoints.grpc_url.clone(),
        load,
        queue_depth,
        queue_capacity,
        aliases,
        digest: Some(digest),
        size_bytes: assignment.size_bytes,
        quantization: assignment.quantization.clone(),
    })
}

#[derive(Debug, Default)]
struct NodeRoute {
    facts: NodeFacts,
    listed: Option<Listed>,
    /// When this node's live timer is due; the heap's other timers of the
    /// node are stale and skipped.
    timer_due: Option<OffsetDateTime>,
}

/// A listed node's entry and where it is filed.
#[derive(Debug)]
struct Listed {
    entry: Arc<DirectoryEntry>,
    offering: Offering,
    rank: Rank,
}

/// The listed entries, by offering and in directory order.
#[derive(Debug, Default)]
struct Listing {
    offerings: BTreeMap<Offering, BTreeSet<Rank>>,
    /// Sorted like the directory (by model, version, then node; a node has
    /// one entry here).
    local: BTreeSet<Arc<DirectoryEntry>>,
    /// Bumped by every change of `local`.
    version: u64,
}

impl Listing {
    fn list(&mut self, entry: DirectoryEntry) -> Listed {
        let entry = Arc::new(entry);
        let offering = Offering::of(&entry);
        let rank = Rank::of(&entry);
        self.offerings
            .entry(offering.clone())
            .or_default()
            .insert(rank.clone());
        self.local.insert(entry.clone());
        self.version += 1;
        Listed {
            entry,
            offering,
            rank,
        }
    }

    fn unlist(&mut self, listed: Listed) {
        if let Some(ranks) = self.offerings.get_mut(&listed.offering) {
            ranks.remove(&listed.rank);
            if ranks.is_empty() {
                self.offerings.remove(&listed.offering);
            }
        }
        self.local.remove(&listed.entry);
        self.version += 1;
    }

    fn clear(&mut self) {
        self.offerings.clear();
        self.local.clear();
        self.version += 1;
    }
}

struct Index {
    changes: Receiver<RouteChange>,
    /// How long a heartbeat keeps a node listed.
    window: time::Duration,
    require_certificates: bool,
    nodes: HashMap<NodeName, NodeRoute>,
    listing: Listing,
    /// When listed nodes may lapse, earliest first.
    timers: BinaryHeap<Reverse<(OffsetDateTime, NodeName)>>,
    /// Other replicas' entries, as last read from the store (empty where
    /// there are none), and when they were read.
    remote: Vec<DirectoryEntry>,
    remote_read_at: Option<Instant>,
    remote_changed: bool,
    /// `listing.version` when the directory was last built.
    published_version: Option<u64>,
}

impl Index {
    fn new(changes: Receiver<RouteChange>, window: time::Duration) -> Self {
        Self {
            changes,
            window,
            require_certificates: false,
            nodes: HashMap::new(),
            listing: Listing::default(),
            timers: BinaryHeap::new(),
            remote: Vec::new(),
            remote_read_at: None,
            remote_changed: false,
            published_version: None,
        }
    }

    /// Applies what is queued now (not what keeps arriving meanwhile).
    fn apply_queued(&mut self, now: OffsetDateTime) {
        for _ in 0..ROUTE_CHANGES_QUEUED_AT_MOST {
            match self.changes.try_recv() {
                Ok(change) => self.apply(change, now),
                Err(_) => break,
            }
        }
    }

    /// Starts over from what `sources` hold now. The queued changes are
    /// older than that, so they go; a change made while the sources are
    /// read is queued after their reading and applied on top.
    fn rebuild(&mut self, sources: &[Arc<dyn RouteSource>], now: OffsetDateTime) {
        while self.changes.try_recv().is_ok() {}
        self.nodes.clear();
        self.listing.clear();
        self.timers.clear();
        for source in sources {
            source.replay(&mut |change| self.apply(change, now));
        }
    }

    fn apply(&mut self, change: RouteChange, now: OffsetDateTime) {
        let (node, shown_changed) = match change {
            RouteChange::Stream { node, stream } => {
                self.route_mut(&node).facts.stream = stream;
                (node, true)
            }
            RouteChange::Observed { node, observed } => {
                let facts = &mut self.route_mut(&node).facts;
                let changed = facts.observed != observed;
                facts.observed = observed;
                (node, changed)
            }
            RouteChange::Heartbeat { node, liveness } => {
                let facts = &mut self.route_mut(&node).facts;
                // A heartbeat with the same loads only moves the lapse.
                let changed =
                    facts.liveness.map(|live| live.shown()) != liveness.map(|live| live.shown());
                facts.liveness = liveness;
                (node, changed)
            }
            RouteChange::Forgotten { node } => {
                let facts = &mut self.route_mut(&node).facts;
                facts.observed = None;
                facts.liveness = None;
                (node, true)
            }
        };
        self.reevaluate(&node, now, shown_changed);
    }

    fn route_mut(&mut self, node: &NodeName) -> &mut NodeRoute {
        self.nodes.entry(node.clone()).or_default()
    }

    /// Lists, re-files or unlists `node` after its facts changed or one of
    /// its timers came due. `shown_changed`: something its entry shows may
    /// have changed (otherwise a listed node's entry is kept as it is).
    fn reevaluate(&mut self, node: &NodeName, now: OffsetDateTime, shown_changed: bool) {
        let Some(route) = self.nodes.get_mut(node) else {
            return;
        };
        let lapse = route
            .facts
            .lapse(now, self.window, self.require_certificates);
        // Listable facts have everything an entry shows.
        let entry = lapse
            .filter(|_| route.listed.is_none() || shown_changed)
            .and_then(|_| route.facts.entry(node));
        let Some(lapse) = lapse else {
            if let Some(listed) = route.listed.take() {
                self.listing.unlist(listed);
            }
            if route.facts.is_empty() {
                self.nodes.remove(node);
            }
            return;
        };
        if let Some(entry) = entry
            && route
                .listed
                .as_ref()
                .is_none_or(|listed| *listed.entry != entry)
        {
            if let Some(listed) = route.listed.take() {
                self.listing.unlist(listed);
            }
            route.listed = Some(self.listing.list(entry));
        }
        if let Lapse::At(at) = lapse
            && route.timer_due.is_none_or(|due| at < due)
        {
            // A later timer already queued fires early and is re-armed then.
            self.timers.push(Reverse((at, node.clone())));
            route.timer_due = Some(at);
        }
    }

    /// Unlists the nodes whose heartbeat grew old or whose certificate
    /// expired by `now`.
    fn expire(&mut self, now: OffsetDateTime) {
        while let Some(Reverse((due, _))) = self.timers.peek()
            && *due <= now
        {
            let Some(Reverse((due, node))) = self.timers.pop() else {
                break;
            };
            if let Some(route) = self.nodes.get_mut(&node)
                && route.timer_due == Some(due)
            {
                route.timer_due = None;
                self.reevaluate(&node, now, false);
            }
        }
    }

    fn set_require_certificates(&mut self, required: bool, now: OffsetDateTime) {
        if self.require_certificates == required {
            return;
        }
        self.require_certificates = required;
        let nodes: Vec<NodeName> = self.nodes.keys().cloned().collect();
        for node in nodes {
            self.reevaluate(&node, now, false);
        }
    }

    fn set_remote_routes(&mut self, remote: Vec<DirectoryEntry>) {
        if self.remote != remote {
            self.remote = remote;
            self.remote_changed = true;
        }
        self.remote_read_at = Some(Instant::now());
    }

    fn publish(&mut self, directory: &watch::Sender<Arc<Directory>>) {
        if self
            .remote_read_at
            .is_some_and(|read_at| read_at.elapsed() > REMOTE_ROUTES_EXPIRE)
        {
            self.remote_changed |= !self.remote.is_empty();
            self.remote = Vec::new();
            self.remote_read_at = None;
        }
        if self.published_version == Some(self.listing.version) && !self.remote_changed {
            return;
        }
        let fresh = Directory {
            entries: self.build_directory(),
        };
        self.published_version = Some(self.listing.version);
        self.remote_changed = false;
        directory.send_if_modified(|current| {
            if **current == fresh {
                false
            } else {
                *current = Arc::new(fresh);
                true
            }
        });
    }

    /// `pool(merge_routes(all local entries, remote), POOL_PER_OFFERING)`,
    /// from each offering's least busy local entries: the others could not
    /// make the cut.
    fn build_directory(&self) -> Vec<DirectoryEntry> {
        let least_busy_local: Vec<DirectoryEntry> = self
            .listing
            .offerings
            .values()
            .flat_map(|ranks| ranks.iter().take(POOL_PER_OFFERING))
            .filter_map(|rank| self.nodes.get(&rank.node)?.listed.as_ref())
            .map(|listed| (*listed.entry).clone())
            .collect();
        // A node streaming here is described best here, even when it did
        // not make its offering's cut.
        let remote: Vec<DirectoryEntry> = self
            .remote
            .iter()
            .filter(|entry| {
                self.nodes
                    .get(&entry.node)
                    .is_none_or(|route| route.listed.is_none())
            })
            .cloned()
            .collect();
        pool(merge_routes(least_busy_local, &remote), POOL_PER_OFFERING)
    }

    fn local_routes(&self) -> Vec<DirectoryEntry> {
        self.listing
            .local
            .iter()
            .map(|entry| (**entry).clone())
            .collect()
    }

    fn model_load(&self) -> BTreeMap<String, ModelLoad> {
        let mut loads = BTreeMap::<String, ModelLoad>::new();
        for route in self.nodes.values() {
            let Some(listed) = &route.listed else {
                continue;
            };
            let load = loads.entry(listed.entry.model.to_string()).or_default();
            load.nodes += 1;
            let Some(inference) = route.facts.liveness.and_then(|live| live.inference) else {
                continue;
            };
            load.queue_depth += u64::from(inference.queue_depth);
            load.queue_capacity += u64::from(inference.queue_capacity);
            load.tokens_per_second += f64::from(inference.tokens_per_second);
            load.time_to_first_token_max_ms = load
                .time_to_first_token_max_ms
                .max(inference.time_to_first_token_max_ms);
        }
        loads
    }
}

#[cfg(test)]
mod tests;
