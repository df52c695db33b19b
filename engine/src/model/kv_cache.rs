//! Per-sequence key/value cache. Keys and values are stored as f16, as llama.cpp does by
//! default: it halves cache memory and keeps attention numerics close to the reference.
//! The cache lives only in memory and belongs to one sequence.

use half::f16;

/// Cached keys and values of one sequence, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    kv_dim: usize,
    length: usize,
}

impl KvCache {
    pub(crate) fn new(block_count: usize, kv_dim: usize) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); block_count],
            values: vec![Vec::new(); block_count],
            kv_dim,
            length: 0,
        }
    }

    /// Number of positions cached (the next token's position).
    pub fn len(&self) -> usize {
        self.length
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Forgets everything after the first `length` positions (prefix reuse, rollback).
    pub fn truncate(&mut self, length: usize) {
        let length = length.min(self.length);
        for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
            layer.truncate(length * self.kv_dim);
        }
        self.length = length;
    }

    /// Bytes held by the cache.
    pub fn byte_size(&self) -> usize {
        self.keys
            .iter()
            .chain(&self.values)
            .map(|layer| layer.capacity() * 2)
            .sum()
    }

    pub(crate) fn append(&mut self, layer: usize, key: &[f32], value: &[f32]) {
        self.keys[layer].extend(key.iter().map(|&x| f16::from_f32(x)));
        self.values[layer].extend(value.iter().map(|&x| f16::from_f32(x)));
    }

    /// Marks `count` appended positions as complete (after the last layer stored them).
    pub(crate) fn commit(&mut self, count: usize) {
        self.length += count;
        debug_assert!(
            self.keys
                .iter()
                .all(|layer| layer.len() == self.length * self.kv_dim)
        );
    }

    pub(crate) fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        (&self.keys[layer], &self.values[layer])
    }
}
