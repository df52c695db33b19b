//! The report buffer: what each agent last reported (its observed state,
//! latest health sample and last heartbeat time) and the health minute
//! being folded, held in memory until the flusher writes it.
//!
//! Nothing is written per heartbeat: a heartbeat touches one shard's mutex
//! here, marks the node's health dirty, and hands the routing index its
//! load figures (`RouteChanges`, without waiting). The flusher takes what
//! changed ([`ReportBuffer::take_dirty`]) and puts it back if the write
//! failed ([`ReportBuffer::restore`]). Health is also folded into one
//! [`HealthPoint`] per node and minute, the down-sampled history.
//!
//! A node's reports stay here while it has a stream open (the stream
//! registry says so, [`ReportBuffer::set_streaming`]) and, after it left,
//! until they were written.

use time::OffsetDateTime;

use super::routing::{Liveness, ObservedRoute, RouteChange, RouteChanges, RouteSource};
use super::shards::{SHARDS, ShardedMap};
use crate::domain::{HealthPoint, HealthSample, MinuteAccumulator, NodeName, ObservedState};
use crate::store::NodeReport;

#[derive(Default)]
struct NodeReports {
    /// Whether the node has a stream open here.
    streaming: bool,
    last_heartbeat_at: Option<OffsetDateTime>,
    observed: Option<ObservedState>,
    health: Option<HealthSample>,
    minute: Option<MinuteAccumulator>,
    finished_minutes: Vec<HealthPoint>,
    observed_dirty: bool,
    health_dirty: bool,
}

impl NodeReports {
    fn liveness(&self) -> Option<Liveness> {
        Some(Liveness::of(self.last_heartbeat_at?, self.health.as_ref()?))
    }
}

/// What the buffer holds about one node, for views of it.
pub(super) struct ReportSnapshot {
    pub(super) last_heartbeat_at: Option<OffsetDateTime>,
    pub(super) observed: Option<ObservedState>,
    pub(super) health: Option<HealthSample>,
    /// The minute being folded.
    pub(super) current_minute: Option<HealthPoint>,
}

/// Reports taken for one write.
#[derive(Default)]
pub(super) struct Batch {
    pub(super) reports: Vec<NodeReport>,
    pub(super) minutes: Vec<(NodeName, HealthPoint)>,
}

/// See the module docs.
pub(super) struct ReportBuffer {
    reports: ShardedMap<NodeReports>,
    routes: RouteChanges,
}

impl ReportBuffer {
    pub(super) fn new(routes: RouteChanges) -> Self {
        Self {
            reports: ShardedMap::new(),
            routes,
        }
    }

    /// Records whether `node` has a stream open here (called by the stream
    /// registry's owner while it holds the node's stream, so the two agree).
    pub(super) fn set_streaming(&self, node: &NodeName, streaming: bool) {
        let mut shard = self.reports.lock(node);
        if streaming {
            shard.entry(node.clone()).or_default().streaming = true;
        } else if let Some(reports) = shard.get_mut(node) {
            reports.streaming = false;
        }
    }

    /// The node was replaced or removed: its stream is gone, and so is
    /// what it said it runs.
    pub(super) fn evict(&self, node: &NodeName) {
        let mut shard = self.reports.lock(node);
        if let Some(reports) = shard.get_mut(node) {
            reports.streaming = false;
            if reports.observed.take().is_some() {
                self.routes.send(RouteChange::Observed {
                    node: node.clone(),
                    observed: None,
                });
            }
        }
    }

    /// Records a heartbeat and its health sample.
    pub(super) fn heartbeat(&self, node: &NodeName, sample: HealthSample, now: OffsetDateTime) {
        let mut shard = self.reports.lock(node);
        let reports = shard.entry(node.clone()).or_default();
        reports.last_heartbeat_at = Some(now);
        let minute = MinuteAccumulator::minute_of(sample.taken_at);
        match &mut reports.minute {
            Some(current) if current.minute() == minute => current.add(&sample),
            // Samples from a clock that went backwards join the current
            // minute rather than rewriting history.
            Some(current) if current.minute() > minute => current.add(&sample),
            slot => {
                let mut fresh = match slot.take() {
                    Some(finished) => {
                        reports.finished_minutes.push(finished.finish());
                        finished.next(sample.taken_at)
                    }
                    None => MinuteAccumulator::new(sample.taken_at),
                };
                fresh.add(&sample);
                *slot = Some(fresh);
            }
        }
        self.routes.send(RouteChange::Heartbeat {
            node: node.clone(),
            liveness: Some(Liveness::of(now, &sample)),
        });
        reports.health = Some(sample);
        reports.health_dirty = true;
    }

    /// Records an agent's report of its observed state.
    pub(super) fn observe(&self, node: &NodeName, observed: ObservedState) {
        let mut shard = self.reports.lock(node);
        self.routes.send(RouteChange::Observed {
            node: node.clone(),
            observed: Some(ObservedRoute::of(&observed)),
        });
        let reports = shard.entry(node.clone()).or_default();
        reports.observed = Some(observed);
        reports.observed_dirty = true;
    }

    pub(super) fn snapshot(&self, node: &NodeName) -> Option<ReportSnapshot> {
        let shard = self.reports.lock(node);
        shard.get(node).map(|reports| ReportSnapshot {
            last_heartbeat_at: reports.last_heartbeat_at,
            observed: reports.observed.clone(),
            health: reports.health.clone(),
            current_minute: reports.minute.as_ref().map(MinuteAccumulator::finish),
        })
    }

    pub(super) fn last_heartbeat_at(&self, node: &NodeName) -> Option<OffsetDateTime> {
        self.reports
            .lock(node)
            .get(node)
            .and_then(|reports| reports.last_heartbeat_at)
    }

    /// Takes what changed since the last take: observed states always;
    /// heartbeats, health and finished minutes of the shards `health_of`
    /// selects (by index, `0..SHARDS`).
    pub(super) fn take_dirty(&self, health_of: impl Fn(usize) -> bool) -> Batch {
        let mut batch = Batch::default();
        for index in 0..SHARDS {
            let with_health = health_of(index);
            let mut shard = self.reports.lock_shard(index);
            for (name, reports) in shard.iter_mut() {
                let observed = reports
                    .observed_dirty
                    .then(|| reports.observed.clone())
                    .flatten();
                let health_due = with_health && reports.health_dirty;
                if observed.is_none() && !health_due {
                    continue;
                }
                reports.observed_dirty = false;
                let mut report = NodeReport {
                    name: name.clone(),
                    observed,
                    health: None,
                    last_heartbeat_unix_ms: None,
                };
                if health_due {
                    reports.health_dirty = false;
                    report.health = reports.health.clone();
                    report.last_heartbeat_unix_ms = reports
                        .last_heartbeat_at
                        .map(|at| (at.unix_timestamp_nanos() / 1_000_000) as i64);
                    batch.minutes.extend(
                        reports
                            .finished_minutes
                            .drain(..)
                            .map(|point| (name.clone(), point)),
                    );
                }
                batch.reports.push(report);
            }
            // Reports of nodes that left and were written can go.
            shard.retain(|name, reports| {
                let keep = reports.streaming
                    || reports.observed_dirty
                    || reports.health_dirty
                    || !reports.finished_minutes.is_empty();
                if !keep {
                    self.routes
                        .send(RouteChange::Forgotten { node: name.clone() });
                }
                keep
            });
        }
        batch
    }

    /// Marks a batch dirty again after its write failed, unless newer
    /// reports arrived meanwhile.
    pub(super) fn restore(&self, batch: Batch) {
        for report in batch.reports {
            let mut shard = self.reports.lock(&report.name);
            let reports = shard.entry(report.name.clone()).or_default();
            if let Some(observed) = report.observed
                && reports.observed.is_none()
            {
                self.routes.send(RouteChange::Observed {
                    node: report.name.clone(),
                    observed: Some(ObservedRoute::of(&observed)),
                });
                reports.observed = Some(observed);
            }
            reports.observed_dirty |= reports.observed.is_some();
            if report.health.is_some() {
                reports.health_dirty = true;
                if reports.health.is_none() {
                    reports.health = report.health;
                }
            }
        }
        for (name, point) in batch.minutes {
            self.reports
                .lock(&name)
                .entry(name)
                .or_default()
                .finished_minutes
                .push(point);
        }
    }
}

impl RouteSource for ReportBuffer {
    fn replay(&self, sink: &mut dyn FnMut(RouteChange)) {
        for index in 0..SHARDS {
            let shard = self.reports.lock_shard(index);
            for (node, reports) in shard.iter() {
                sink(RouteChange::Observed {
                    node: node.clone(),
                    observed: reports.observed.as_ref().map(ObservedRoute::of),
                });
                sink(RouteChange::Heartbeat {
                    node: node.clone(),
                    liveness: reports.liveness(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use time::OffsetDateTime;

    use super::super::SyncHub;
    use super::super::fixtures::state;
    use crate::domain::{HealthSample, NodeName, NodeStatus};

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
                state_write_error: None,
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

    /// Issue 19: a killed agent's stream ends at once, and so does its
    /// readiness; its own last persisted heartbeat (seconds old, within the
    /// window) no longer keeps it ready. A heartbeat persisted after the
    /// end, by the replica it moved to, does.
    #[test]
    fn a_node_whose_stream_ended_here_is_not_ready_on_its_old_heartbeat() {
        let hub = SyncHub::new(Duration::from_secs(5));
        let node: NodeName = "edge-1".parse().expect("valid");
        let never: NodeName = "edge-2".parse().expect("valid");
        let session = hub.connect(&node, state(0, NodeStatus::Active));
        let before = OffsetDateTime::now_utc();
        hub.heartbeat(&node, sample(before), before);
        assert!(hub.is_ready(&node, Some(before)));

        hub.disconnect(&session);
        assert!(
            !hub.is_ready(&node, Some(before)),
            "the heartbeat persisted before the stream ended"
        );
        let elsewhere = OffsetDateTime::now_utc() + time::Duration::milliseconds(1);
        assert!(hub.is_ready(&node, Some(elsewhere)));
        // A node that never streamed here is judged by what is persisted.
        assert!(hub.is_ready(&never, Some(before)));
        assert!(!hub.is_ready(&never, None));
        // Streaming here again: its own heartbeats count.
        let _again = hub.connect(&node, state(1, NodeStatus::Active));
        let now = OffsetDateTime::now_utc();
        hub.heartbeat(&node, sample(now), now);
        assert!(hub.is_ready(&node, Some(before)));
    }

    fn sample(now: OffsetDateTime) -> HealthSample {
        super::super::fixtures::sample(now, 5.0)
    }
}
