//! The stream registry: which nodes have a `Sync` stream open here, and the
//! latest state pushed to each.
//!
//! Each open stream has a `watch` of its [`PushedState`]. Fan-out of a
//! desired-state change costs one `watch` send per changed node that has a
//! stream here; each stream's task wakes and sends the complete state. A
//! `watch` keeps only the latest value, so a slow agent skips intermediate
//! states instead of queueing them (level-triggered).
//!
//! A stream also holds what its hello and its certificate say about
//! reaching the node: the advertised inference URLs and when the node
//! certificate issued on the stream expires. Both belong to the stream and
//! go with it (a reconnect sends them again). Only in memory.
//!
//! Every change the routing index cares about is handed to it
//! ([`RouteChanges`]) while the node's shard is still locked, so that the
//! index sees one node's changes in the order they were made.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use time::OffsetDateTime;
use tokio::sync::watch;

use super::routing::{RouteChange, RouteChanges, RouteSource, StreamRoute};
use super::shards::{SHARDS, ShardedMap};
use super::{Endpoints, PushedState, Session};
use crate::domain::{NodeDesired, NodeName};

struct OpenStream {
    session: u64,
    desired: watch::Sender<Arc<PushedState>>,
    /// Advertised in the node's latest hello.
    endpoints: Option<Arc<Endpoints>>,
    /// When the node certificate issued on this stream expires; each stream
    /// is issued its own.
    certificate_expires_at: Option<OffsetDateTime>,
}

impl OpenStream {
    fn route(&self) -> StreamRoute {
        StreamRoute {
            pushed: self.desired.borrow().clone(),
            endpoints: self.endpoints.clone(),
            certificate_expires_at: self.certificate_expires_at,
        }
    }
}

/// Whether a node streams to this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connection {
    Open,
    /// Its stream here ended at this time (and no newer one opened here).
    Ended(OffsetDateTime),
    /// It never streamed here since this replica started.
    Never,
}

/// See the module docs.
pub(super) struct StreamRegistry {
    streams: ShardedMap<OpenStream>,
    /// When each node's last stream here ended; a node is here or in
    /// `streams`, never both.
    ended: ShardedMap<OffsetDateTime>,
    next_session: AtomicU64,
    open: AtomicUsize,
    routes: RouteChanges,
}

impl StreamRegistry {
    pub(super) fn new(routes: RouteChanges) -> Self {
        Self {
            streams: ShardedMap::new(),
            ended: ShardedMap::new(),
            next_session: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            routes,
        }
    }

    fn route_changed(&self, node: &NodeName, stream: Option<&OpenStream>) {
        self.routes.send(RouteChange::Stream {
            node: node.clone(),
            stream: stream.map(OpenStream::route),
        });
    }

    /// Registers a stream for `node`, replacing (and so ending) any older
    /// stream of the same node; `also` runs while the node's stream is
    /// still locked, so that another part can follow the registry in the
    /// same order.
    pub(super) fn connect(
        &self,
        node: &NodeName,
        initial: PushedState,
        also: impl FnOnce(),
    ) -> Session {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (sender, receiver) = watch::channel(Arc::new(initial));
        let replaced = {
            let mut shard = self.streams.lock(node);
            let replaced = shard.remove(node);
            let stream = OpenStream {
                session: id,
                desired: sender,
                // Until this stream's hello is read, where the node said it
                // serves on its previous stream.
                endpoints: replaced
                    .as_ref()
                    .and_then(|stream| stream.endpoints.clone()),
                // A new stream is listed once it was issued its own
                // certificate.
                certificate_expires_at: None,
            };
            self.route_changed(node, Some(&stream));
            shard.insert(node.clone(), stream);
            self.ended.lock(node).remove(node);
            also();
            // Dropping the old stream's sender ends that stream.
            replaced.is_some()
        };
        metrics::gauge!("flotilla_fleet_streams").increment(1.0);
        if replaced {
            metrics::gauge!("flotilla_fleet_streams").decrement(1.0);
            tracing::info!(node = %node, "a newer stream replaced the node's previous one");
        } else {
            self.open.fetch_add(1, Ordering::Relaxed);
        }
        Session {
            id,
            node: node.clone(),
            desired: receiver,
        }
    }

    /// Forgets a stream that ended, unless a newer one replaced it; `also`
    /// runs (with the stream locked) only when it was forgotten.
    pub(super) fn disconnect(&self, session: &Session, also: impl FnOnce()) {
        let mut shard = self.streams.lock(&session.node);
        if shard
            .get(&session.node)
            .is_some_and(|stream| stream.session == session.id)
        {
            shard.remove(&session.node);
            self.mark_ended(&session.node);
            self.route_changed(&session.node, None);
            also();
            self.open.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("flotilla_fleet_streams").decrement(1.0);
        }
    }

    /// Ends `node`'s stream here, if one is open, and with it where the
    /// node said it serves; `also` runs with the stream locked, open or not.
    pub(super) fn evict(&self, node: &NodeName, also: impl FnOnce()) {
        let mut shard = self.streams.lock(node);
        if shard.remove(node).is_some() {
            self.mark_ended(node);
            self.route_changed(node, None);
            self.open.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!("flotilla_fleet_streams").decrement(1.0);
            tracing::info!(node = %node, "ended the stream of a replaced or removed node");
        }
        also();
    }

    /// Records where peers reach `node`'s inference APIs (from the hello
    /// of its open stream; without one there is nothing to record).
    pub(super) fn advertise(&self, node: &NodeName, endpoints: Endpoints) {
        let mut shard = self.streams.lock(node);
        if let Some(stream) = shard.get_mut(node) {
            stream.endpoints = Some(Arc::new(endpoints));
            self.route_changed(node, Some(stream));
        }
    }

    /// Records that `session` was issued a certificate valid until
    /// `expires_at`, if it is still the node's open stream.
    pub(super) fn certify(&self, session: &Session, expires_at: OffsetDateTime) {
        let mut shard = self.streams.lock(&session.node);
        if let Some(stream) = shard.get_mut(&session.node)
            && stream.session == session.id
        {
            stream.certificate_expires_at = Some(expires_at);
            self.route_changed(&session.node, Some(stream));
        }
    }

    /// Offers `state` to `session`; kept only if it is newer than what the
    /// session has.
    pub(super) fn offer(&self, session: &Session, state: PushedState) {
        let shard = self.streams.lock(&session.node);
        if let Some(stream) = shard.get(&session.node)
            && stream.session == session.id
            && send_if_newer(&stream.desired, state)
        {
            self.route_changed(&session.node, Some(stream));
        }
    }

    /// Pushes changed desired states to the streams that are open here.
    pub(super) fn publish(&self, changes: &[NodeDesired]) {
        let mut pushed = 0u64;
        for change in changes {
            let shard = self.streams.lock(&change.name);
            if let Some(stream) = shard.get(&change.name) {
                let state = PushedState {
                    status: change.status,
                    desired: change.desired.clone(),
                };
                if send_if_newer(&stream.desired, state) {
                    self.route_changed(&change.name, Some(stream));
                }
                pushed += 1;
            }
        }
        metrics::counter!("flotilla_fleet_desired_pushes_total").increment(pushed);
    }

    pub(super) fn is_connected(&self, node: &NodeName) -> bool {
        self.streams.lock(node).contains_key(node)
    }

    /// Whether `node` streams here, or when its stream here ended. The
    /// stream's shard is held while the end time is read, so a stream that
    /// opens or ends meanwhile is seen in one state or the other.
    pub(super) fn connection(&self, node: &NodeName) -> Connection {
        let streams = self.streams.lock(node);
        if streams.contains_key(node) {
            return Connection::Open;
        }
        match self.ended.lock(node).get(node) {
            Some(&ended) => Connection::Ended(ended),
            None => Connection::Never,
        }
    }

    /// Called with the node's stream shard locked (lock order: streams,
    /// then ended).
    fn mark_ended(&self, node: &NodeName) {
        self.ended
            .lock(node)
            .insert(node.clone(), OffsetDateTime::now_utc());
    }

    /// Where the node's open stream said it serves.
    pub(super) fn endpoints(&self, node: &NodeName) -> Option<Endpoints> {
        self.streams
            .lock(node)
            .get(node)
            .and_then(|stream| stream.endpoints.as_deref().cloned())
    }

    /// Streams open here.
    pub(super) fn open_count(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl RouteSource for StreamRegistry {
    fn replay(&self, sink: &mut dyn FnMut(RouteChange)) {
        for index in 0..SHARDS {
            let shard = self.streams.lock_shard(index);
            for (node, stream) in shard.iter() {
                sink(RouteChange::Stream {
                    node: node.clone(),
                    stream: Some(stream.route()),
                });
            }
        }
    }
}

/// Sends `state` when it supersedes the current one; whether it did.
fn send_if_newer(sender: &watch::Sender<Arc<PushedState>>, state: PushedState) -> bool {
    sender.send_if_modified(|current| {
        if state.supersedes(current) {
            *current = Arc::new(state);
            true
        } else {
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::SyncHub;
    use super::super::fixtures::state;
    use crate::domain::{DesiredState, NodeDesired, NodeName, NodeStatus};

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
        assert_eq!(hub.stream_count(), 1);
        hub.disconnect(&session);
        assert!(hub.runtime(&node).expect("known").connected);
        hub.disconnect(&newer);
        assert!(!hub.runtime(&node).expect("known").connected);
        assert_eq!(hub.stream_count(), 0);
    }
}
