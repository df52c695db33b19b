//! Revocation of human/API tokens by their id (`jti`), checked on every
//! REST request.
//!
//! The revoked ids live in the store (`api_tokens.revoked_at`); this cache
//! holds those not yet expired in memory and re-reads them at most every
//! [`REFRESH_EVERY`], so a request costs a hash lookup, not a query. A
//! revocation made on this controller counts at once; one made on another
//! replica within [`REFRESH_EVERY`]. When the store cannot be read, the
//! last list is used for [`MAX_STALE`] and then requests are refused (fail
//! closed): a revoked token must not come back because the database is down.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use super::{AuthError, Principal};
use crate::store::Store;

/// How often the revoked ids are re-read from the store.
pub const REFRESH_EVERY: Duration = Duration::from_secs(5);
/// How long a list that could not be refreshed is still trusted.
const MAX_STALE: Duration = Duration::from_secs(60);

pub struct Revocations {
    store: Arc<dyn Store>,
    revoked: RwLock<Arc<HashSet<String>>>,
    /// When the list was last read successfully.
    refreshed_at: std::sync::Mutex<Option<Instant>>,
    /// Held while re-reading, so that one request reads the list while the
    /// others wait for that read instead of piling on.
    refreshing: tokio::sync::Mutex<()>,
    /// Ids revoked through this controller, kept in every re-read list so
    /// that a read racing the revocation's commit cannot drop one.
    revoked_here: std::sync::Mutex<HashSet<String>>,
}

impl Revocations {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            revoked: RwLock::new(Arc::new(HashSet::new())),
            refreshed_at: std::sync::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            revoked_here: std::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Refuses a principal whose token was revoked. Node credentials carry
    /// no id: they are checked against their node's credential generation
    /// instead.
    pub async fn check(&self, principal: &Principal) -> Result<(), AuthError> {
        let Some(id) = &principal.token_id else {
            return Ok(());
        };
        let revoked = self.current().await?;
        if revoked.contains(id) {
            metrics::counter!("flotilla_auth_revoked_tokens_refused_total").increment(1);
            return Err(AuthError::Revoked(id.clone()));
        }
        Ok(())
    }

    /// Counts a revocation made here at once.
    pub fn revoked_now(&self, id: &str) {
        self.revoked_here
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id.to_owned());
        let mut revoked = self
            .revoked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = (**revoked).clone();
        next.insert(id.to_owned());
        *revoked = Arc::new(next);
    }

    fn refreshed_within(&self, age: Duration) -> bool {
        self.refreshed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < age)
    }

    fn snapshot(&self) -> Arc<HashSet<String>> {
        self.revoked
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn current(&self) -> Result<Arc<HashSet<String>>, AuthError> {
        if self.refreshed_within(REFRESH_EVERY) {
            return Ok(self.snapshot());
        }
        let _refreshing = self.refreshing.lock().await;
        // Another request may have re-read it while this one waited.
        if self.refreshed_within(REFRESH_EVERY) {
            return Ok(self.snapshot());
        }
        match self.store.revoked_api_token_ids().await {
            Ok(ids) => {
                let mut fresh: HashSet<String> = ids.into_iter().collect();
                fresh.extend(
                    self.revoked_here
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .iter()
                        .cloned(),
                );
                *self
                    .revoked
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(fresh);
                *self
                    .refreshed_at
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Instant::now());
            }
            Err(error) => {
                let usable = self.refreshed_within(MAX_STALE);
                tracing::warn!(%error, usable, "cannot re-read revoked token ids");
                if !usable {
                    return Err(AuthError::RevocationsUnavailable(
                        "the database does not answer".into(),
                    ));
                }
            }
        }
        Ok(self.snapshot())
    }
}
