//! A map keyed by node name, split into shards behind their own mutexes, so
//! that work on different nodes (heartbeats, fan-out) rarely waits on the
//! same lock. The stream registry and the report buffer each have one; only
//! in memory.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::domain::NodeName;

/// Shards per map: heartbeats of different nodes rarely contend.
pub(super) const SHARDS: usize = 32;

pub(super) type Shard<V> = HashMap<NodeName, V>;

pub(super) struct ShardedMap<V> {
    shards: Vec<Mutex<Shard<V>>>,
    hasher: RandomState,
}

impl<V> ShardedMap<V> {
    pub(super) fn new() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
        }
    }

    /// The shard holding `node`, locked.
    pub(super) fn lock(&self, node: &NodeName) -> MutexGuard<'_, Shard<V>> {
        self.lock_shard(self.shard_of(node))
    }

    /// Which shard holds `node` (`0..SHARDS`).
    pub(super) fn shard_of(&self, node: &NodeName) -> usize {
        (self.hasher.hash_one(node) as usize) % SHARDS
    }

    /// Shard `index`, locked.
    pub(super) fn lock_shard(&self, index: usize) -> MutexGuard<'_, Shard<V>> {
        // A panic while holding a shard leaves plain data behind; keep going.
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}
