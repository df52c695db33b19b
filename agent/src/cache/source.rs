//! Where blobs come from: the controller's `GET /api/v1/blobs/{digest}`
//! endpoint, reached with a bearer token that the sync loop renews over time.
//! Nothing here is persisted; the token lives only in memory.

use std::fmt;
use std::sync::{Arc, RwLock};

use super::{CacheError, Digest};

/// A bearer token shared between whoever renews it (the sync loop) and
/// whoever uses it (downloads). Cloning shares the same slot.
#[derive(Clone, Default)]
pub struct SharedToken(Arc<RwLock<String>>);

impl SharedToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(Arc::new(RwLock::new(token.into())))
    }

    /// Replaces the token; requests started afterwards use the new one.
    pub fn replace(&self, token: impl Into<String>) {
        // A poisoned lock only means a writer panicked mid-assignment of a
        // String, which cannot leave it half-written; keep going.
        let mut slot = self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = token.into();
    }

    pub fn current(&self) -> String {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

impl fmt::Debug for SharedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets are never logged.
        f.write_str("SharedToken(<redacted>)")
    }
}

/// A controller (or, later, a peer agent) that serves blobs by digest.
#[derive(Clone, Debug)]
pub struct BlobSource {
    base_url: reqwest::Url,
    token: SharedToken,
}

impl BlobSource {
    /// `base_url` is the controller's REST root, e.g. `http://10.0.0.1:8080`.
    pub fn new(base_url: &str, token: SharedToken) -> Result<Self, CacheError> {
        let base_url =
            reqwest::Url::parse(base_url).map_err(|error| CacheError::InvalidSource {
                url: base_url.to_owned(),
                reason: error.to_string(),
            })?;
        if base_url.cannot_be_a_base() || !matches!(base_url.scheme(), "http" | "https") {
            return Err(CacheError::InvalidSource {
                url: base_url.to_string(),
                reason: "expected an http or https url".to_owned(),
            });
        }
        Ok(Self { base_url, token })
    }

    pub fn token(&self) -> &SharedToken {
        &self.token
    }

    pub(crate) fn blob_url(&self, digest: &Digest) -> String {
        format!(
            "{}/api/v1/blobs/{}",
            self.base_url.as_str().trim_end_matches('/'),
            digest.to_hex()
        )
    }
}
