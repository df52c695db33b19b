//! Reconnect backoff for the sync stream: jittered and exponential, so a
//! fleet cut off from its controller together does not come back together.
//! In memory only.

use std::time::Duration;

use rand::Rng;

/// The schedule: the `n`th consecutive failure (from 0) waits a random time
/// between `floor_fraction` and all of `min(first_ceiling · 2ⁿ, cap)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffPolicy {
    pub first_ceiling: Duration,
    pub cap: Duration,
    /// The share of the ceiling that is always waited, 0–1.
    pub floor_fraction: f64,
}

impl Default for BackoffPolicy {
    /// 200–500 ms after the first failure, doubling up to 12–30 s.
    fn default() -> Self {
        Self {
            first_ceiling: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            floor_fraction: 0.4,
        }
    }
}

impl BackoffPolicy {
    /// The delay after `failures` consecutive failures (0: the first), with
    /// `unit_random` in [0, 1) choosing where in the jitter window it lands.
    pub fn delay(&self, failures: u32, unit_random: f64) -> Duration {
        let ceiling = self
            .first_ceiling
            .saturating_mul(1u32 << failures.min(20))
            .min(self.cap);
        self.jittered(ceiling, unit_random)
    }

    /// The longest delay: for refusals that retrying soon will not fix.
    pub fn longest(&self, unit_random: f64) -> Duration {
        self.jittered(self.cap, unit_random)
    }

    fn jittered(&self, ceiling: Duration, unit_random: f64) -> Duration {
        let floor_fraction = self.floor_fraction.clamp(0.0, 1.0);
        let fraction = floor_fraction + (1.0 - floor_fraction) * unit_random.clamp(0.0, 1.0);
        ceiling.mul_f64(fraction)
    }
}

/// A [`BackoffPolicy`] with its failure count.
#[derive(Debug, Clone)]
pub struct Backoff {
    policy: BackoffPolicy,
    failures: u32,
}

impl Backoff {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            failures: 0,
        }
    }

    /// The next delay; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.policy.delay(self.failures, rand::rng().random());
        self.failures = self.failures.saturating_add(1);
        delay
    }

    /// The longest delay, without counting a failure.
    pub fn longest_delay(&self) -> Duration {
        self.policy.longest(rand::rng().random())
    }

    /// After a connection that worked: the next failure starts small again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_starts_between_200_and_500_ms_and_doubles_to_the_cap() {
        let policy = BackoffPolicy::default();
        assert_eq!(policy.delay(0, 0.0), Duration::from_millis(200));
        assert_eq!(policy.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(policy.delay(1, 1.0), Duration::from_millis(1000));
        assert_eq!(policy.delay(3, 1.0), Duration::from_millis(4000));
        assert_eq!(policy.delay(10, 1.0), Duration::from_secs(30));
        assert_eq!(policy.delay(u32::MAX, 0.0), Duration::from_secs(12));
        assert_eq!(policy.longest(1.0), Duration::from_secs(30));
    }

    #[test]
    fn delays_stay_inside_their_window_and_reset_starts_over() {
        let mut backoff = Backoff::new(BackoffPolicy::default());
        for failures in 0..30u32 {
            let ceiling = Duration::from_millis(500)
                .saturating_mul(1 << failures.min(20))
                .min(Duration::from_secs(30));
            let delay = backoff.next_delay();
            assert!(
                delay >= ceiling.mul_f64(0.4) && delay <= ceiling,
                "{failures}: {delay:?}"
            );
        }
        assert_eq!(backoff.failures(), 30);
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(500));
    }
}
