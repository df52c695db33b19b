//! A download rate limit shared by every download of one cache: edge boxes
//! on thin links must not let a model download starve everything else on
//! the link. Only in memory; nothing is persisted.
//!
//! A token bucket that may go into debt: each chunk is charged as it
//! arrives and the caller then sleeps until the bucket is out of debt. While
//! the download loop sleeps it does not read the socket, so TCP's own flow
//! control holds the sender back: the limit is on the wire, not only on disk.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How much of the limit may be spent in one go after a quiet spell.
const BURST: Duration = Duration::from_millis(100);

pub(crate) struct RateLimiter {
    bytes_per_second: u64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// May be negative: bytes received but not yet paid for.
    tokens: f64,
    refilled_at: Instant,
}

impl RateLimiter {
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        let bytes_per_second = bytes_per_second.max(1);
        Self {
            bytes_per_second,
            bucket: Mutex::new(Bucket {
                tokens: burst_bytes(bytes_per_second),
                refilled_at: Instant::now(),
            }),
        }
    }

    /// Charges `bytes` and waits until the rate allows them.
    pub(crate) async fn consume(&self, bytes: usize) {
        let wait = {
            let mut bucket = self
                .bucket
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            bucket.charge(self.bytes_per_second, bytes as u64, Instant::now())
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

fn burst_bytes(bytes_per_second: u64) -> f64 {
    bytes_per_second as f64 * BURST.as_secs_f64()
}

impl Bucket {
    /// Refills for the time since the last charge, takes `bytes`, and
    /// returns how long the caller must wait to pay off any debt.
    fn charge(&mut self, bytes_per_second: u64, bytes: u64, now: Instant) -> Duration {
        let rate = bytes_per_second as f64;
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens =
            (self.tokens + elapsed.as_secs_f64() * rate).min(burst_bytes(bytes_per_second));
        self.refilled_at = now;
        self.tokens -= bytes as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_beyond_the_burst_wait_in_proportion() {
        let start = Instant::now();
        let rate = 1_000_000;
        let mut bucket = Bucket {
            tokens: burst_bytes(rate),
            refilled_at: start,
        };
        // The first 100 kB (the burst) are free.
        assert_eq!(bucket.charge(rate, 100_000, start), Duration::ZERO);
        // The next 500 kB at the same instant cost half a second.
        let wait = bucket.charge(rate, 500_000, start);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-6, "{wait:?}");
        // After waiting that out, the bucket is even again and the next
        // chunk costs exactly its own time.
        let later = start + wait;
        let wait = bucket.charge(rate, 10_000, later);
        assert!((wait.as_secs_f64() - 0.01).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn a_quiet_spell_refills_only_up_to_the_burst() {
        let start = Instant::now();
        let rate = 1_000;
        let mut bucket = Bucket {
            tokens: 0.0,
            refilled_at: start,
        };
        let much_later = start + Duration::from_secs(3600);
        // An hour of silence does not buy an hour's worth of bytes.
        let wait = bucket.charge(rate, 1_100, much_later);
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
    }

    #[test]
    fn the_long_run_rate_holds_over_many_chunks() {
        let start = Instant::now();
        let rate = 2_000_000;
        let mut bucket = Bucket {
            tokens: burst_bytes(rate),
            refilled_at: start,
        };
        let mut now = start;
        for _ in 0..1_000 {
            now += bucket.charge(rate, 16_384, now);
        }
        let expected = (1_000.0 * 16_384.0 - burst_bytes(rate)) / rate as f64;
        let took = (now - start).as_secs_f64();
        assert!((took - expected).abs() < 1e-3, "{took} vs {expected}");
    }
}
