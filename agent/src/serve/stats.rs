//! The inference figures the agent sends with every heartbeat (queue depth,
//! outcomes, requests escalated upstream, tokens per second, time to first
//! token), so that the controller's node view, its routing directory and
//! the rollouts' gates know how busy and how healthy serving is without
//! scraping each node's `/metrics`.
//!
//! Process-wide, like the Prometheus recorder beside it ([`super::metrics`]
//! feeds both): an agent process serves one node. Counters only grow;
//! [`InferenceStats::snapshot`] turns the time since the previous snapshot
//! into a rate and a latency summary, so it has one caller, the heartbeat.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cache::Digest;
use crate::health::InferenceHealth;

/// Time-to-first-token samples kept between two snapshots; beyond it the
/// newest are dropped (the summary then covers the first ones).
const MAX_LATENCY_SAMPLES: usize = 4096;

/// How a request ended, as the heartbeat counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Completed,
    Rejected,
    Failed,
    Cancelled,
    /// The client's own mistake (bad parameters, unknown model): counted
    /// on `/metrics` only, as it says nothing about the node's health.
    ClientError,
}

/// The counters; see the module docs.
#[derive(Debug)]
pub struct InferenceStats {
    in_flight: AtomicU32,
    /// Most in flight at once since the previous snapshot: the depth alone,
    /// sampled at the heartbeat, misses a burst between two of them.
    in_flight_peak: AtomicU32,
    capacity: AtomicU32,
    completed: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    cancelled: AtomicU64,
    /// Answered by the escalation policy's upstream instead of the local
    /// model. Not an [`Outcome`]: the serving path counts such a request
    /// here only, never through [`InferenceStats::finished`], so the
    /// escalation rate is `escalated / (completed + escalated)`, the share
    /// of answered requests that left the box.
    escalated: AtomicU64,
    generated_tokens: AtomicU64,
    window: Mutex<Window>,
    activation: Mutex<SinceActivation>,
    /// Where the model served now runs ("gpu (vulkan …)", "cpu (avx2 kernels, …)").
    device: Mutex<Option<String>>,
}

/// Outcomes of the model served now. Counted process-wide, so a request
/// the previous model finishes after a swap counts for the new one: a
/// slight blur, bounded by the queue, that keeps the counting in one place.
#[derive(Debug, Default, Clone, Copy)]
struct SinceActivation {
    serving: Option<Digest>,
    completed: u64,
    failed: u64,
    escalated: u64,
}

#[derive(Debug)]
struct Window {
    since: Instant,
    tokens_at_start: u64,
    first_token_latencies: Vec<Duration>,
}

impl Default for InferenceStats {
    fn default() -> Self {
        InferenceStats {
            in_flight: AtomicU32::new(0),
            in_flight_peak: AtomicU32::new(0),
            capacity: AtomicU32::new(0),
            completed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            escalated: AtomicU64::new(0),
            generated_tokens: AtomicU64::new(0),
            window: Mutex::new(Window {
                since: Instant::now(),
                tokens_at_start: 0,
                first_token_latencies: Vec::new(),
            }),
            activation: Mutex::new(SinceActivation::default()),
            device: Mutex::new(None),
        }
    }
}

/// The process's statistics.
pub fn global() -> &'static InferenceStats {
    static STATS: OnceLock<InferenceStats> = OnceLock::new();
    STATS.get_or_init(InferenceStats::default)
}

impl InferenceStats {
    pub fn admitted(&self) {
        let now = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.in_flight_peak.fetch_max(now, Ordering::Relaxed);
    }

    pub fn released(&self) {
        // Never below zero, even if a release raced a reset.
        let _ = self
            .in_flight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Where the model served now runs, or `None` when none is served.
    pub fn serving_on(&self, device: Option<String>) {
        *lock(&self.device) = device;
    }

    /// A model began serving (`serving`, admitting `capacity` requests at
    /// once), or none (`None`, 0): the since-activation counts restart.
    pub fn activated(&self, serving: Option<Digest>, capacity: usize) {
        self.capacity.store(
            u32::try_from(capacity).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        *lock(&self.activation) = SinceActivation {
            serving,
            ..SinceActivation::default()
        };
    }

    pub fn finished(&self, outcome: Outcome) {
        if matches!(outcome, Outcome::Completed | Outcome::Failed) {
            let mut since = lock(&self.activation);
            match outcome {
                Outcome::Completed => since.completed += 1,
                _ => since.failed += 1,
            }
        }
        let counter = match outcome {
            Outcome::Completed => &self.completed,
            Outcome::Rejected => &self.rejected,
            Outcome::Failed => &self.failed,
            Outcome::Cancelled => &self.cancelled,
            Outcome::ClientError => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered by the escalation policy's upstream: counted
    /// here once, in place of [`InferenceStats::finished`], so that the
    /// rollouts' escalation-rate gate reads `escalated / (completed +
    /// escalated)` for the artifact served now.
    pub fn escalated(&self) {
        lock(&self.activation).escalated += 1;
        self.escalated.fetch_add(1, Ordering::Relaxed);
    }

    pub fn tokens_generated(&self, tokens: u64) {
        self.generated_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    pub fn first_token(&self, latency: Duration) {
        let mut window = self.lock_window();
        if window.first_token_latencies.len() < MAX_LATENCY_SAMPLES {
            window.first_token_latencies.push(latency);
        }
    }

    /// The figures now; the rate and latencies cover the time since the
    /// previous call, which starts a new interval.
    pub fn snapshot(&self) -> InferenceHealth {
        let generated_tokens_total = self.generated_tokens.load(Ordering::Relaxed);
        let (tokens_per_second, mut latencies) = {
            let mut window = self.lock_window();
            let elapsed = window.since.elapsed().as_secs_f64();
            let tokens = generated_tokens_total.saturating_sub(window.tokens_at_start);
            let rate = if elapsed > 0.0 {
                (tokens as f64 / elapsed) as f32
            } else {
                0.0
            };
            window.since = Instant::now();
            window.tokens_at_start = generated_tokens_total;
            (rate, std::mem::take(&mut window.first_token_latencies))
        };
        latencies.sort_unstable();
        let since = *lock(&self.activation);
        let millis = |latency: &Duration| u32::try_from(latency.as_millis()).unwrap_or(u32::MAX);
        let queue_depth = self.in_flight.load(Ordering::Relaxed);
        // The next interval's peak starts from what is in flight now.
        let queue_depth_peak = self
            .in_flight_peak
            .swap(queue_depth, Ordering::Relaxed)
            .max(queue_depth);
        InferenceHealth {
            queue_depth,
            queue_depth_peak,
            queue_capacity: self.capacity.load(Ordering::Relaxed),
            completed_total: self.completed.load(Ordering::Relaxed),
            rejected_total: self.rejected.load(Ordering::Relaxed),
            failed_total: self.failed.load(Ordering::Relaxed),
            cancelled_total: self.cancelled.load(Ordering::Relaxed),
            escalated_total: self.escalated.load(Ordering::Relaxed),
            generated_tokens_total,
            tokens_per_second,
            // The lower median: with two samples, the faster one.
            time_to_first_token_p50_ms: latencies
                .get(latencies.len().saturating_sub(1) / 2)
                .map(millis),
            time_to_first_token_max_ms: latencies.last().map(millis),
            serving_digest: since.serving.map(|digest| digest.to_hex()),
            serving_device: lock(&self.device).clone(),
            completed_since_activation: since.completed,
            failed_since_activation: since.failed,
            escalated_since_activation: since.escalated,
        }
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Window> {
        lock(&self.window)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_count_outcomes_and_summarise_the_interval() {
        let stats = InferenceStats::default();
        stats.activated(Some(Digest::of(b"model")), 20);
        stats.admitted();
        stats.admitted();
        stats.released();
        stats.released();
        stats.released();
        stats.admitted();
        stats.finished(Outcome::Completed);
        stats.finished(Outcome::Rejected);
        stats.finished(Outcome::Failed);
        stats.finished(Outcome::Cancelled);
        stats.finished(Outcome::ClientError);
        stats.tokens_generated(50);
        for ms in [30, 10, 20] {
            stats.first_token(Duration::from_millis(ms));
        }
        let first = stats.snapshot();
        assert_eq!(first.queue_depth, 1, "releases never go below zero");
        assert_eq!(first.queue_depth_peak, 2, "the burst between heartbeats");
        assert_eq!(first.queue_capacity, 20);
        assert_eq!(
            (
                first.completed_total,
                first.rejected_total,
                first.failed_total,
                first.cancelled_total
            ),
            (1, 1, 1, 1)
        );
        assert_eq!(first.generated_tokens_total, 50);
        assert!(first.tokens_per_second > 0.0);
        assert_eq!(first.time_to_first_token_p50_ms, Some(20));
        assert_eq!(first.time_to_first_token_max_ms, Some(30));

        // A new interval: no tokens and no latencies since.
        let second = stats.snapshot();
        assert_eq!(second.queue_depth_peak, 1, "a peak counts for one interval");
        assert_eq!(second.tokens_per_second, 0.0);
        assert_eq!(second.time_to_first_token_p50_ms, None);
        assert_eq!(second.generated_tokens_total, 50);
        assert_eq!(second.serving_digest, Some(Digest::of(b"model").to_hex()));
        assert_eq!(
            (
                second.completed_since_activation,
                second.failed_since_activation
            ),
            (1, 1)
        );

        // Another model: its own counts start from zero.
        stats.activated(Some(Digest::of(b"next")), 20);
        stats.finished(Outcome::Failed);
        let third = stats.snapshot();
        assert_eq!(third.serving_digest, Some(Digest::of(b"next").to_hex()));
        assert_eq!(
            (
                third.completed_since_activation,
                third.failed_since_activation
            ),
            (0, 1)
        );
        assert_eq!(third.failed_total, 2);
    }

    #[test]
    fn escalations_count_apart_from_outcomes_and_restart_with_each_activation() {
        let stats = InferenceStats::default();
        stats.activated(Some(Digest::of(b"model")), 4);
        stats.finished(Outcome::Completed);
        stats.escalated();
        stats.escalated();
        let first = stats.snapshot();
        assert_eq!(
            (first.escalated_total, first.escalated_since_activation),
            (2, 2)
        );
        // An escalated request is neither completed nor failed.
        assert_eq!((first.completed_total, first.failed_total), (1, 0));
        assert_eq!(
            (
                first.completed_since_activation,
                first.failed_since_activation
            ),
            (1, 0)
        );

        // The next model's escalation rate starts from nothing; the total
        // runs on.
        stats.activated(Some(Digest::of(b"next")), 4);
        stats.escalated();
        let second = stats.snapshot();
        assert_eq!(
            (second.escalated_total, second.escalated_since_activation),
            (3, 1)
        );
    }
}
