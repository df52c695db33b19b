//! Per-sequence key/value cache. Keys and values are stored as f16, as llama.cpp does by
//! default: it halves cache memory and keeps attention numerics close to the reference.
//! The cache lives only in memory and belongs to one sequence. A sequence the device
//! graph runs keeps its keys and values in device memory instead (`device`); the host
//! vectors then stay empty and only the length is shared.

use half::f16;

/// Cached keys and values of one sequence, for every layer.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Vec<f16>>,
    values: Vec<Vec<f16>>,
    kv_dim: usize,
    length: usize,
    #[cfg(feature = "burn")]
    pub(crate) device: Option<crate::device::DeviceCache>,
}

impl KvCache {
    pub(crate) fn new(block_count: usize, kv_dim: usize) -> KvCache {
        KvCache {
            keys: vec![Vec::new(); block_count],
            values: vec![Vec::new(); block_count],
            kv_dim,
            length: 0,
            #[cfg(feature = "burn")]
            device: None,
        }
    }

    /// An empty cache whose keys and values live on a burn device.
    #[cfg(feature = "burn")]
    pub(crate) fn on_device(device: crate::device::DeviceCache) -> KvCache {
        KvCache {
            keys: Vec::new(),
            values: Vec::new(),
            kv_dim: 0,
            length: 0,
            device: Some(device),
        }
    }

    /// Whether the keys and values are on the host (the CPU kernels' cache).
    pub(crate) fn is_on_host(&self) -> bool {
        #[cfg(feature = "burn")]
        if self.device.is_some() {
            return false;
        }
        true
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

    /// Bytes held by the cache (device memory included).
    pub fn byte_size(&self) -> usize {
        #[cfg(feature = "burn")]
        if let Some(device) = &self.device {
            return device.byte_size();
        }
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
            !self.is_on_host()
                || self
                    .keys
                    .iter()
                    .all(|layer| layer.len() == self.length * self.kv_dim)
        );
    }

    pub(crate) fn layer(&self, layer: usize) -> (&[f16], &[f16]) {
        (&self.keys[layer], &self.values[layer])
    }
}
