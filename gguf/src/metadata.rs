//! GGUF key/value metadata. Keys keep their file order (the tokenizer arrays are large and
//! the order is useful when printing a header), lookups go through a side index.

use std::collections::HashMap;

/// One metadata value, typed as in the file.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<MetadataValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl MetadataValue {
    /// The value as an unsigned integer, when it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(value) => Some(u64::from(value)),
            MetadataValue::U16(value) => Some(u64::from(value)),
            MetadataValue::U32(value) => Some(u64::from(value)),
            MetadataValue::U64(value) => Some(value),
            MetadataValue::I8(value) => u64::try_from(value).ok(),
            MetadataValue::I16(value) => u64::try_from(value).ok(),
            MetadataValue::I32(value) => u64::try_from(value).ok(),
            MetadataValue::I64(value) => u64::try_from(value).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetadataValue::I8(value) => Some(i64::from(value)),
            MetadataValue::I16(value) => Some(i64::from(value)),
            MetadataValue::I32(value) => Some(i64::from(value)),
            MetadataValue::I64(value) => Some(value),
            _ => self.as_u64().and_then(|value| i64::try_from(value).ok()),
        }
    }

    /// The value as a float, when it is a float (f64 is narrowed).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            MetadataValue::F32(value) => Some(value),
            MetadataValue::F64(value) => Some(value as f32),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetadataValue::Bool(value) => Some(value),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(value) => Some(value),
            _ => None,
        }
    }

    /// The elements of an array value.
    pub fn as_array(&self) -> Option<&[MetadataValue]> {
        match self {
            MetadataValue::Array(values) => Some(values),
            _ => None,
        }
    }

    /// The GGUF value type id of this value.
    pub fn type_id(&self) -> u32 {
        match self {
            MetadataValue::U8(_) => 0,
            MetadataValue::I8(_) => 1,
            MetadataValue::U16(_) => 2,
            MetadataValue::I16(_) => 3,
            MetadataValue::U32(_) => 4,
            MetadataValue::I32(_) => 5,
            MetadataValue::F32(_) => 6,
            MetadataValue::Bool(_) => 7,
            MetadataValue::String(_) => 8,
            MetadataValue::Array(_) => 9,
            MetadataValue::U64(_) => 10,
            MetadataValue::I64(_) => 11,
            MetadataValue::F64(_) => 12,
        }
    }
}

/// Ordered key/value metadata of a GGUF file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    entries: Vec<(String, MetadataValue)>,
    index: HashMap<String, usize>,
}

impl Metadata {
    /// Looks a key up.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.index
            .get(key)
            .map(|&position| &self.entries[position].1)
    }

    /// Iterates over the entries in file order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.entries
            .iter()
            .map(|(key, value)| (key.as_str(), value))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inserts an entry; returns `false` (and keeps the first value) if the key exists.
    pub(crate) fn insert(&mut self, key: String, value: MetadataValue) -> bool {
        if self.index.contains_key(&key) {
            return false;
        }
        self.index.insert(key.clone(), self.entries.len());
        self.entries.push((key, value));
        true
    }

    /// Convenience: a string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetadataValue::as_str)
    }

    /// Convenience: an unsigned integer value.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(MetadataValue::as_u64)
    }

    /// Convenience: a float value.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key).and_then(MetadataValue::as_f32)
    }
}
