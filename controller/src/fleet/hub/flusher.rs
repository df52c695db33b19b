//! The flusher: the hub's periodic work. Every [`OBSERVED_FLUSH_EVERY`] it
//! exchanges routes with the other replicas, publishes the routing
//! directory, and writes the agents' reports in one transaction per batch
//! (health one slice of the shards at a time, so that every node's is
//! written once per [`HEALTH_FLUSH_EVERY`]); beside that it applies the
//! routing index's queued changes every `ROUTE_CHANGES_APPLIED_EVERY`.

use std::sync::Arc;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::routing::ROUTE_CHANGES_APPLIED_EVERY;
use super::{
    DirectoryEntry, HEALTH_FLUSH_EVERY, HEALTH_RETENTION, OBSERVED_FLUSH_EVERY, ROUTES_FRESH_FOR,
    SyncHub,
};
use crate::store::Store;

/// This replica's routes as last stored, with the routing index's version
/// of them.
struct StoredRoutes {
    version: u64,
    entries: Vec<DirectoryEntry>,
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
        tokio::join!(
            self.write_until(shutdown.clone()),
            self.apply_route_changes_until(shutdown)
        );
    }

    async fn write_until(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(OBSERVED_FLUSH_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let health_every =
            (HEALTH_FLUSH_EVERY.as_millis() / OBSERVED_FLUSH_EVERY.as_millis()).max(1);
        let prune_every = 600 * health_every / 15;
        let mut tick: u128 = 0;
        let mut stored_routes = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = shutdown.cancelled() => break,
            }
            tick += 1;
            self.exchange_routes(&mut stored_routes).await;
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

    /// Keeps the routing index's queue short between directory builds.
    async fn apply_route_changes_until(&self, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(ROUTE_CHANGES_APPLIED_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    self.off_the_workers(|hub| hub.routing.apply_changes()).await;
                }
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Runs `work` on the hub on a blocking thread: applying a fan-out's
    /// worth of changes to the routing index, or building a directory, may
    /// take milliseconds that a tokio worker would owe the streams'
    /// heartbeats.
    async fn off_the_workers(&self, work: impl FnOnce(&SyncHub) + Send + 'static) {
        let hub = self.hub.clone();
        if let Err(error) = tokio::task::spawn_blocking(move || work(&hub)).await {
            tracing::error!(%error, "routing index work failed");
        }
    }

    /// Publishes this replica's routes to the other replicas (when they
    /// changed since the last successful publish; otherwise only marks them
    /// fresh), takes theirs, and publishes the merged directory to the
    /// streams here. Where the store has no other replicas (SQLite) the
    /// directory is this replica's own.
    async fn exchange_routes(&self, stored: &mut Option<StoredRoutes>) {
        let version = self.hub.routing.local_routes_version();
        // Copied out of the index only when they changed.
        let (local, changed) = match stored.take() {
            Some(last) if last.version == version => (last, false),
            last => {
                let (version, entries) = self.hub.routing.versioned_local_routes();
                let changed = last.is_none_or(|last| last.entries != entries);
                (StoredRoutes { version, entries }, changed)
            }
        };
        match self
            .store
            .exchange_routes(
                self.hub.replica(),
                &local.entries,
                changed,
                ROUTES_FRESH_FOR,
            )
            .await
        {
            Ok(remote) => {
                if let Some(remote) = remote {
                    self.hub.set_remote_routes(remote);
                }
                *stored = Some(local);
            }
            Err(error) => {
                tracing::warn!(%error, "could not exchange routes with the other controller replicas; will retry");
                // Whether it committed is unknown: publish in full next
                // time (`stored` stays empty).
            }
        }
        self.off_the_workers(SyncHub::refresh_directory).await;
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
