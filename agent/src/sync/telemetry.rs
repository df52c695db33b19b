//! Counters the sync loop keeps for whoever watches it: the agent's own
//! summary line, the simulator, and the fleet benchmark. The same events go
//! to the `metrics` facade (`flotilla_agent_sync_*`), which the real agent
//! renders on its `/metrics`; the simulator installs no recorder, so there
//! they cost nothing.
//!
//! [`FleetTelemetry`] is shared by every sync agent of a process (one in the
//! real agent, thousands in the simulator); [`NodeTelemetry`] is one agent's.
//! Cheap under 10,000 agents heartbeating at 1 Hz: atomics, one short mutex
//! per ack, and a bounded reservoir of latencies.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How many ack latencies are kept between two reads; beyond that, a
/// uniform sample of them (reservoir sampling).
const LATENCY_RESERVOIR: usize = 65_536;

#[derive(Debug, Default)]
pub struct FleetTelemetry {
    hellos: AtomicU64,
    connected_streams: AtomicU64,
    ack_latencies: Mutex<LatencyReservoir>,
    directories: AtomicU64,
    directory_entries: AtomicU64,
    directory_bytes: AtomicU64,
    /// Woken whenever some agent receives a newer desired generation.
    pub(crate) desired_received: Notify,
}

impl FleetTelemetry {
    /// Streams opened and accepted by the controller (each began with a hello).
    pub fn hellos(&self) -> u64 {
        self.hellos.load(Ordering::Relaxed)
    }

    /// Streams open right now.
    pub fn connected_streams(&self) -> u64 {
        self.connected_streams.load(Ordering::Relaxed)
    }

    /// The ack latencies recorded since the last call, summarised; resets them.
    pub fn take_ack_latencies(&self) -> LatencySummary {
        let mut reservoir = self
            .ack_latencies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *reservoir).summary()
    }

    pub(crate) fn record_ack_latency(&self, latency: Duration) {
        metrics::histogram!("flotilla_agent_sync_ack_latency_seconds")
            .record(latency.as_secs_f64());
        self.ack_latencies
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(latency, rand::rng().random());
    }

    /// Routing directories received so far, summed over every agent: how
    /// much directory traffic the controller's per-agent views cost.
    pub fn directories_received(&self) -> DirectoryTraffic {
        DirectoryTraffic {
            messages: self.directories.load(Ordering::Relaxed),
            entries: self.directory_entries.load(Ordering::Relaxed),
            encoded_bytes: self.directory_bytes.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn record_directory(&self, entries: usize, encoded_bytes: usize) {
        metrics::counter!("flotilla_agent_sync_directories_total").increment(1);
        self.directories.fetch_add(1, Ordering::Relaxed);
        self.directory_entries
            .fetch_add(entries as u64, Ordering::Relaxed);
        self.directory_bytes
            .fetch_add(encoded_bytes as u64, Ordering::Relaxed);
    }

    /// Counts a stream as connected until the guard drops.
    pub(crate) fn stream_opened(&self) -> ConnectedStream<'_> {
        self.hellos.fetch_add(1, Ordering::Relaxed);
        self.connected_streams.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("flotilla_agent_sync_streams_opened_total").increment(1);
        metrics::gauge!("flotilla_agent_sync_streams_connected").increment(1.0);
        ConnectedStream(self)
    }
}

pub(crate) struct ConnectedStream<'a>(&'a FleetTelemetry);

impl Drop for ConnectedStream<'_> {
    fn drop(&mut self) {
        self.0.connected_streams.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("flotilla_agent_sync_streams_connected").decrement(1.0);
    }
}

/// Directory messages, their entries and their protobuf size, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectoryTraffic {
    pub messages: u64,
    pub entries: u64,
    pub encoded_bytes: u64,
}

impl std::ops::Sub for DirectoryTraffic {
    type Output = DirectoryTraffic;

    fn sub(self, earlier: DirectoryTraffic) -> DirectoryTraffic {
        DirectoryTraffic {
            messages: self.messages.saturating_sub(earlier.messages),
            entries: self.entries.saturating_sub(earlier.entries),
            encoded_bytes: self.encoded_bytes.saturating_sub(earlier.encoded_bytes),
        }
    }
}

/// The newest desired generation an agent received, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceivedGeneration {
    pub generation: u64,
    pub at: Instant,
}

#[derive(Debug, Default)]
pub struct NodeTelemetry {
    latest_desired: Mutex<Option<ReceivedGeneration>>,
}

impl NodeTelemetry {
    pub fn latest_desired(&self) -> Option<ReceivedGeneration> {
        *self
            .latest_desired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn record_desired(&self, generation: u64, at: Instant) {
        metrics::gauge!("flotilla_agent_desired_generation").set(generation as f64);
        *self
            .latest_desired
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(ReceivedGeneration { generation, at });
    }
}

#[derive(Debug, Default)]
struct LatencyReservoir {
    samples: Vec<Duration>,
    /// Every latency offered, kept or not.
    seen: u64,
}

impl LatencyReservoir {
    /// Keeps every sample until the reservoir is full, then each new one
    /// replaces a random kept one with probability capacity/seen, so the
    /// kept ones stay a uniform sample. `unit_random` is in [0, 1).
    fn record(&mut self, latency: Duration, unit_random: f64) {
        self.seen += 1;
        if self.samples.len() < LATENCY_RESERVOIR {
            self.samples.push(latency);
            return;
        }
        let slot = (unit_random * self.seen as f64) as u64;
        if let Some(kept) = usize::try_from(slot)
            .ok()
            .and_then(|slot| self.samples.get_mut(slot))
        {
            *kept = latency;
        }
    }

    fn summary(mut self) -> LatencySummary {
        self.samples.sort_unstable();
        let quantile = |q: f64| -> Duration {
            if self.samples.is_empty() {
                return Duration::ZERO;
            }
            let index = ((self.samples.len() - 1) as f64 * q).round() as usize;
            self.samples[index.min(self.samples.len() - 1)]
        };
        let total: Duration = self.samples.iter().sum();
        LatencySummary {
            count: self.seen,
            mean: u32::try_from(self.samples.len())
                .ok()
                .filter(|&kept| kept > 0)
                .map_or(Duration::ZERO, |kept| total / kept),
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
            max: self.samples.last().copied().unwrap_or_default(),
        }
    }
}

/// Heartbeat ack latencies over some period (the quantiles come from a
/// uniform sample when there were more than 65,536).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub mean: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_summarise_and_reset() {
        let telemetry = FleetTelemetry::default();
        for millis in 1..=100 {
            telemetry.record_ack_latency(Duration::from_millis(millis));
        }
        let summary = telemetry.take_ack_latencies();
        assert_eq!(summary.count, 100);
        assert_eq!(summary.max, Duration::from_millis(100));
        assert_eq!(summary.p50, Duration::from_millis(51));
        assert_eq!(summary.p99, Duration::from_millis(99));
        assert_eq!(telemetry.take_ack_latencies(), LatencySummary::default());
    }

    #[test]
    fn the_reservoir_stays_bounded() {
        let mut reservoir = LatencyReservoir::default();
        for index in 0..(LATENCY_RESERVOIR as u64 * 2) {
            reservoir.record(Duration::from_micros(index), (index % 97) as f64 / 97.0);
        }
        assert_eq!(reservoir.samples.len(), LATENCY_RESERVOIR);
        assert_eq!(reservoir.summary().count, LATENCY_RESERVOIR as u64 * 2);
    }

    #[test]
    fn connected_streams_count_down_when_dropped() {
        let telemetry = FleetTelemetry::default();
        let first = telemetry.stream_opened();
        let second = telemetry.stream_opened();
        assert_eq!(telemetry.connected_streams(), 2);
        drop(first);
        drop(second);
        assert_eq!(telemetry.connected_streams(), 0);
        assert_eq!(telemetry.hellos(), 2);
    }
}
