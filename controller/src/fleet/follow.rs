//! Keeps the streams held by this replica current with changes of desired
//! state committed by *other* controller replicas sharing the database
//! (DESIGN.md §3: Postgres `LISTEN`/`NOTIFY`).
//!
//! Every transaction that takes a fleet generation announces it; the
//! announcement carries nothing. On each one (and every [`RESCAN_EVERY`],
//! in case one was lost with the listening connection) the follower reads
//! the nodes whose desired generation is above the highest it has seen and
//! hands them to [`SyncHub::publish`], which pushes to the streams open
//! here and ignores anything not newer than what a stream already has. So
//! a replica's own changes coming back are no-ops, and a lost announcement
//! delays a push by at most [`RESCAN_EVERY`] but never loses it.
//!
//! Generations are taken under the generation row's lock, held until
//! commit, so they commit in order: once generation G is visible, every
//! change below it is too, and "above the highest seen" misses nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::SyncHub;
use crate::store::{ChangeFeed, Store};

/// Re-read even without an announcement this often.
pub const RESCAN_EVERY: Duration = Duration::from_secs(5);
/// Wait after a failure to listen or read before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

pub struct ChangeFollower {
    hub: Arc<SyncHub>,
    store: Arc<dyn Store>,
    rescan_every: Duration,
}

impl ChangeFollower {
    pub fn new(hub: Arc<SyncHub>, store: Arc<dyn Store>) -> Self {
        Self {
            hub,
            store,
            rescan_every: RESCAN_EVERY,
        }
    }

    /// Re-reads every `interval` even without announcements.
    pub fn rescan_every(mut self, interval: Duration) -> Self {
        self.rescan_every = interval;
        self
    }

    /// Follows changes until `shutdown`. Returns at once where the store
    /// has no other replicas (SQLite).
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(mut feed) = self.open_feed(&shutdown).await else {
            return;
        };
        // Where to start: what is committed now. Streams opening later read
        // their own state from the store, so nothing before this matters.
        let mut seen = loop {
            match self.store.desired_changed_since(0).await {
                Ok(all) => break highest_generation(&all).unwrap_or(0),
                Err(error) => {
                    tracing::warn!(%error, "cannot read desired states; retrying");
                    if pause(&shutdown, RETRY_AFTER).await.is_err() {
                        return;
                    }
                }
            }
        };
        tracing::info!(
            generation = seen,
            "following desired-state changes of other replicas"
        );
        self.hub.set_following_changes(true);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                announced = feed.next() => {
                    if let Err(error) = announced {
                        tracing::warn!(%error, "listening for changes failed; retrying");
                        self.hub.set_following_changes(false);
                        if pause(&shutdown, RETRY_AFTER).await.is_err() {
                            return;
                        }
                    }
                }
                () = tokio::time::sleep(self.rescan_every) => {}
            }
            match self.store.desired_changed_since(seen).await {
                Ok(changes) => {
                    self.hub.set_following_changes(true);
                    if let Some(highest) = highest_generation(&changes) {
                        seen = highest;
                        metrics::counter!("flotilla_fleet_followed_changes_total")
                            .increment(changes.len() as u64);
                        self.hub.publish(&changes);
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot read changed desired states"),
            }
        }
    }

    async fn open_feed(&self, shutdown: &CancellationToken) -> Option<Box<dyn ChangeFeed>> {
        loop {
            match self.store.change_feed().await {
                Ok(feed) => return feed,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for changes of other replicas; retrying");
                    pause(shutdown, RETRY_AFTER).await.ok()?;
                }
            }
        }
    }
}

fn highest_generation(changes: &[crate::domain::NodeDesired]) -> Option<u64> {
    changes.iter().map(|change| change.desired.generation).max()
}

/// Sleeps for `duration`; `Err` if `shutdown` fired first.
async fn pause(shutdown: &CancellationToken, duration: Duration) -> Result<(), ()> {
    tokio::select! {
        () = shutdown.cancelled() => Err(()),
        () = tokio::time::sleep(duration) => Ok(()),
    }
}
